"""Scale: one bridge process with many inverters (1, 100, 500 by default).

    .venv/bin/python benchmarks/scale.py [--sizes 1,100,500] [--seconds 60] [--live 10]
                                         [--dial-in [--rc4]] [--profile DIR]

For each size N it starts ``sermatec-bridge simulate --count N`` (its own process), a
Mosquitto on a free loopback port and the daemon (``python -m sermatec_bridge run`` with
a YAML ``inverters:`` list of N entries, live interval ``--live``), waits until every
inverter has published its live state once, then measures for ``--seconds``.

With ``--dial-in`` the inverters dial the bridge instead (issue 17): the daemon runs
with ``cloud.listen_port`` and no inverter listed, then the N simulators start in station
mode (``simulate --count N --cloud ...``, with ``--rc4`` speaking RC4), each dialling in
on its own link; "ready" counts from the simulators' start. Goal: 1,000 inverters at a
10 s live interval under half a core and 300 MB. The figures:

- CPU share: the daemon's CPU time (user + system) over the wall time of the window,
  where 1.0 is one whole core;
- resident memory: VmRSS at the end of the window, per inverter, and the peak VmHWM;
- the live cadence kept: the intervals between successive ``<serial>/live`` messages of
  each inverter as an MQTT subscriber sees them, p50 / p95 / max over all inverters, and
  how many inverters published at all in the window.

Goal (issue 7): 500 inverters at a 10 s live interval, under half a core and 300 MB.
``--profile DIR`` runs the daemon under cProfile and writes DIR/scale-N.prof. Each
inverter costs the daemon a socket (two with ``--dial-in``, the simulators' side too):
the soft limit on open files is raised to the hard one for both processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiomqtt
from harness import (
    HOST,
    Mosquitto,
    cpu_seconds,
    free_port,
    free_port_range,
    memory_mib,
    percentile,
    stop_process,
    write_config,
)


async def start_simulators(first_port: int, count: int,
                           *dialling: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sermatec_bridge", "simulate", "--port", str(first_port),
        "--count", str(count), "--seed", "1", *dialling, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    if b"listening" not in line:
        raise RuntimeError(f"the simulators did not start: {line!r}")
    return process


async def listening(port: int, within: float = 60.0) -> None:
    """Return once something accepts connections on ``port``."""
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.1)


async def measure(count: int, seconds: float, live: float, profile: Path | None,
                  dial_in: bool = False, rc4: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sermatec-scale-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "mosquitto")
        await broker.start()
        first = free_port_range(count)
        listen = free_port()
        simulators = None if dial_in else await start_simulators(first, count)
        where: dict[str, Any] = {"cloud": {"listen_port": listen, "listen_host": HOST}} \
            if dial_in else {"inverters": [{"host": HOST, "port": first + i}
                                           for i in range(count)]}
        config = write_config(workdir / "bridge.yaml", {
            **where,
            "poll": {"live": live},
            "mqtt": {"host": HOST, "port": broker.port, "client_id": "scale-bench"},
            "log": {"level": "warning"},
            "health": {"file": str(workdir / "health.json")},
        })
        arrivals: dict[str, list[float]] = defaultdict(list)
        command = [sys.executable]
        if profile is not None:
            command += ["-m", "cProfile", "-o", str(profile / f"scale-{count}.prof")]
        command += ["-m", "sermatec_bridge", "run", "-c", str(config)]
        try:
            async with aiomqtt.Client(HOST, broker.port, identifier="scale-observer") as observer:
                await observer.subscribe("sermatec/+/live", qos=0)
                log = (workdir / "bridge.log").open("ab")
                daemon = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
                log.close()
                if simulators is None:  # the inverters dial in, once the bridge listens
                    await listening(listen)
                    simulators = await start_simulators(
                        first, count, "--cloud", f"{HOST}:{listen}", *(["--rc4"] if rc4 else []))
                started = time.monotonic()
                all_live = asyncio.Event()
                collector = asyncio.create_task(collect(observer, arrivals, count, all_live))
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(all_live.wait(), max(120.0, count * 0.5))
                    ready = time.monotonic() - started
                    window_start = time.monotonic()
                    cpu_start = cpu_seconds(daemon.pid)
                    sim_cpu_start = cpu_seconds(simulators.pid)
                    await asyncio.sleep(seconds)
                    wall = time.monotonic() - window_start
                    cpu = cpu_seconds(daemon.pid) - cpu_start
                    sim_cpu = cpu_seconds(simulators.pid) - sim_cpu_start
                    memory = memory_mib(daemon.pid)
                finally:
                    collector.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await collector
                    await stop_process(daemon, 30)
        finally:
            if simulators is not None:
                await stop_process(simulators)
            await broker.stop()
        window_end = window_start + wall
        intervals = []
        publishing = 0
        for times in arrivals.values():
            inside = [t for t in times if window_start <= t <= window_end]
            publishing += bool(inside)
            # the interval that ends inside the window counts, wherever it started
            previous = [t for t in times if t < window_start][-1:]
            series = previous + inside
            intervals += [b - a for a, b in itertools.pairwise(series)]
        return {
            "inverters": count, "ready_s": ready, "announced": len(arrivals),
            "publishing": publishing, "cpu_share": cpu / wall,
            "simulator_cpu_share": sim_cpu / wall, "rss_mib": memory["VmRSS"],
            "peak_mib": memory["VmHWM"], "rss_per_inverter_mib": memory["VmRSS"] / count,
            "p50": percentile(sorted(intervals), 50), "p95": percentile(sorted(intervals), 95),
            "max": max(intervals, default=float("nan")), "window_s": wall,
        }


async def collect(observer: aiomqtt.Client, arrivals: dict[str, list[float]], count: int,
                  all_live: asyncio.Event) -> None:
    async for message in observer.messages:
        arrivals[message.topic.value.split("/")[1]].append(time.monotonic())
        if len(arrivals) >= count:
            all_live.set()


def report(row: dict[str, float], live: float) -> None:
    n = int(row["inverters"])
    how = " dialling in" if row.get("dial_in") else ""
    print(f"{n:>4} inverters{how}: ready (all live once) after {row['ready_s']:.1f} s; "
          f"{int(row['publishing'])}/{n} published in the {row['window_s']:.0f} s window")
    print(f"      CPU share {row['cpu_share']:.4f} core; RSS {row['rss_mib']:.1f} MiB "
          f"(peak {row['peak_mib']:.1f}), {row['rss_per_inverter_mib'] * 1024:.0f} KiB per "
          f"inverter (the simulators' process: {row['simulator_cpu_share']:.3f} core)")
    print(f"      live interval (target {live:g} s): p50 {row['p50']:.2f} s, "
          f"p95 {row['p95']:.2f} s, max {row['max']:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,500",
                        help="comma-separated inverter counts (default 1,100,500)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="measurement window per size, after all are live (default 60)")
    parser.add_argument("--live", type=float, default=10.0, help="live interval (default 10)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run the daemon under cProfile, one .prof file per size in DIR")
    parser.add_argument("--dial-in", action="store_true",
                        help="the inverters dial the bridge's cloud listener (station mode)")
    parser.add_argument("--rc4", action="store_true", help="with --dial-in: they speak RC4")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit it
    rows = []
    for count in (int(size) for size in args.sizes.split(",")):
        row = asyncio.run(measure(count, args.seconds, args.live, args.profile,
                                  args.dial_in, args.rc4))
        row["dial_in"] = args.dial_in
        report(row, args.live)
        rows.append(row)
    if len(rows) > 1 and rows[0]["inverters"] < rows[-1]["inverters"]:
        first, last = rows[0], rows[-1]
        extra = (last["rss_mib"] - first["rss_mib"]) / (last["inverters"] - first["inverters"])
        print(f"memory per extra inverter ({int(first['inverters'])} -> "
              f"{int(last['inverters'])}): {extra * 1024:.0f} KiB")


if __name__ == "__main__":
    main()
