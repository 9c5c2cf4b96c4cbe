"""Trust boundaries under load: an MQTT command flood, and an attempt to exhaust the proxy.

    .venv/bin/python benchmarks/trust.py flood [--messages 20000] [--seconds 10]
    .venv/bin/python benchmarks/trust.py proxy [--connections 1100] [--nofile 1024]
                                               [--seconds 20]
    .venv/bin/python benchmarks/trust.py churn [--cycles 1000]

Both run the real daemon (``sermatec-bridge run``, a separate process) against the
simulator and a Mosquitto on loopback, polling live values every 2 s, and print:

- ``flood``: writes disabled, N messages published on ``set/...`` within S seconds (500
  at a time; 0: as fast as the broker takes them). The daemon's resident memory before,
  at its peak and after; the gaps between live states from the first message until the
  last result; how many results came back and when; how much the log grew, and what its
  summary lines counted.
- ``proxy``: the app proxy on, the daemon started with a file limit of ``--nofile``. N idle
  connections to the proxy plus one client streaming garbage for S seconds. How many
  connections the bridge kept, the gaps between live states meanwhile, whether the
  health check passes, how much the log grew and whether it says "Too many open files".
- ``churn``: the app proxy on; one client connects, sends a little garbage and hangs up,
  N times in a row, as fast as it can. How long that took, and how many lines and bytes
  the log grew by.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from harness import HOST, Mosquitto, free_port, memory_mib, percentile, write_config

from sermatec_bridge.simulator import Simulator

LIVE = 2.0
Seen = list[tuple[float, str]]  # arrival time, topic


@dataclass
class Rig:
    process: asyncio.subprocess.Process  # the daemon
    base: str  # the inverter's topic prefix
    seen: Seen  # what the recorder received
    log: Path  # the daemon's log
    config: Path
    mqtt_port: int


@contextlib.asynccontextmanager
async def rig(tmp: Path, settings: dict[str, dict[str, object]],
              nofile: int | None = None) -> AsyncIterator[Rig]:
    """Simulator, Mosquitto, a client recording the inverter's topics, and the daemon."""
    mosquitto = Mosquitto(tmp / "mosquitto")
    await mosquitto.start()
    seen: Seen = []
    log = tmp / "bridge.log"

    def limit_files() -> None:  # in the daemon's process, before it starts
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    try:
        async with Simulator(pcu=609) as sim, aiomqtt.Client(
                HOST, mosquitto.port, identifier="bench-recorder") as recorder:
            base = f"sermatec/{sim.model.serial}"
            await recorder.subscribe(f"{base}/#", qos=1)
            base_settings: dict[str, dict[str, object]] = {
                "inverter": {"host": HOST, "port": sim.port},
                "mqtt": {"host": HOST, "port": mosquitto.port},
                "poll": {"live": LIVE},
                "log": {"format": "json"},
                "health": {"file": str(tmp / "health.json")}}
            for section, values in settings.items():
                base_settings.setdefault(section, {}).update(values)
            config = write_config(tmp / "config.yaml", base_settings)
            env = {k: v for k, v in os.environ.items() if not k.startswith("SERMATEC_")}
            with log.open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "sermatec_bridge", "run", "-c", str(config),
                    env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    preexec_fn=limit_files)

            async def record() -> None:
                async for message in recorder.messages:
                    seen.append((time.monotonic(), message.topic.value))

            reader = asyncio.create_task(record())
            try:
                try:
                    await until(lambda: any(t == f"{base}/alarms" for _, t in seen), 30,
                                "the daemon's first publications")
                except SystemExit:
                    print(log.read_text(errors="replace")[-3000:])
                    raise
                yield Rig(process, base, seen, log, config, mosquitto.port)
            finally:
                reader.cancel()
                if process.returncode is None:
                    process.terminate()
                    await process.wait()
    finally:
        await mosquitto.stop()


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)


def gaps(seen: Seen, topic: str, start: float, end: float) -> str:
    times = [start] + [at for at, t in seen if t == topic and start <= at <= end]
    between = [b - a for a, b in itertools.pairwise(times)]
    return (f"{len(times) - 1} live states, gaps p95 {percentile(between, 95):.2f} s, "
            f"worst {max(between, default=float('nan')):.2f} s (interval {LIVE:g} s)")


async def flood(messages: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as name:
        async with rig(Path(name), {"writes": {"enabled": False}}) as r:
            await asyncio.sleep(3 * LIVE)  # settled
            before, log_before = memory_mib(r.process.pid)["VmRSS"], r.log.stat().st_size
            mark = len(r.seen)

            def results() -> int:
                return sum(t == f"{r.base}/set/result" for _, t in r.seen[mark:])

            start = time.monotonic()
            async with aiomqtt.Client(HOST, r.mqtt_port, identifier="bench-flood") as client:
                client.pending_calls_threshold = 1000  # 500 at once: no warning
                for first in range(0, messages, 500):  # 500 at a time, evenly over S s
                    await asyncio.gather(*(
                        client.publish(f"{r.base}/set/grid_soc_min", str(20 + n % 50), qos=1)
                        for n in range(first, min(messages, first + 500))))
                    pause = start + (first + 500) * seconds / messages - time.monotonic()
                    await asyncio.sleep(max(0.0, pause))
            published = time.monotonic()
            last, quiet_since = -1, time.monotonic()
            while results() < messages and time.monotonic() - quiet_since < 5:
                if results() != last:
                    last, quiet_since = results(), time.monotonic()
                await asyncio.sleep(0.1)  # until every result came, or none for 5 s
            end = quiet_since if results() < messages else time.monotonic()
            await asyncio.sleep(2 * LIVE)
            memory = memory_mib(r.process.pid)
            log_growth = r.log.stat().st_size - log_before
            counted = counts(r.log, log_before)
    print(f"flood: {messages} writes on set/grid_soc_min within {seconds:g} s, writes "
          "disabled (Mosquitto)")
    print(f"  published in {published - start:.1f} s; results {results()} of {messages}, "
          f"the last {end - start:.1f} s after the first message")
    print(f"  RSS before {before:.1f} MiB, peak {memory['VmHWM']:.1f} MiB, after "
          f"{memory['VmRSS']:.1f} MiB (peak - before: {memory['VmHWM'] - before:.1f} MiB)")
    print(f"  during the flood: {gaps(r.seen, f'{r.base}/live', start, end)}")
    print(f"  log grew by {log_growth} bytes; what it counted: {counted}")


def counts(log: Path, since: int) -> dict[str, object]:
    """The counts of the daemon's summary lines (``counts=...``) written after ``since``."""
    found: dict[str, object] = {}
    for line in log.read_text(errors="replace")[since:].splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if "counts" in event:
                found[event["event"]] = event["counts"]
    return found


async def proxy(connections: int, nofile: int, seconds: float) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as name:
        settings = {"inverter": {"proxy_port": port}, "proxy": {"host": HOST}}
        async with rig(Path(name), settings, nofile) as r:
            log_before = r.log.stat().st_size
            opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            start = time.monotonic()
            garbage = asyncio.create_task(stream_garbage(port, seconds))
            await asyncio.sleep(0.5)  # connected first: the crowd cannot keep it out
            for _ in range(connections):
                with contextlib.suppress(OSError):
                    opened.append(await asyncio.open_connection(HOST, port))
            sent = await garbage
            held = [await still_open(reader) for reader, _ in opened].count(True)
            end = time.monotonic()
            health = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sermatec_bridge", "health", "-c", str(r.config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            verdict = (await health.communicate())[0].decode().strip().splitlines()
            memory = memory_mib(r.process.pid)
            for _, writer in opened:
                writer.close()
            text = r.log.read_text(errors="replace")
            log_growth = r.log.stat().st_size - log_before
    print(f"proxy: {connections} idle connections + 1 garbage streamer for {seconds:g} s, "
          f"daemon file limit {nofile}")
    print(f"  connections the bridge kept open: {held} of {len(opened)} opened; garbage "
          f"streamed: {sent / 1e6:.1f} MB")
    print(f"  meanwhile: {gaps(r.seen, f'{r.base}/live', start, end)}")
    print(f"  health check: exit {health.returncode} ({verdict[-1] if verdict else ''})")
    print(f"  log grew by {log_growth} bytes; 'Too many open files': "
          f"{text.count('Too many open files')}; RSS {memory['VmRSS']:.1f} MiB")


async def churn(cycles: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as name:
        settings = {"inverter": {"proxy_port": port}, "proxy": {"host": HOST}}
        async with rig(Path(name), settings) as r:
            await asyncio.sleep(LIVE)
            log_before = r.log.stat().st_size
            lines_before = r.log.read_text(errors="replace").count("\n")
            start = time.monotonic()
            for _ in range(cycles):
                _, writer = await asyncio.open_connection(HOST, port)
                writer.write(b"\x00garbage" * 10)
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            took = time.monotonic() - start
            await asyncio.sleep(1.0)  # the last ones handled
            log_growth = r.log.stat().st_size - log_before
            lines = r.log.read_text(errors="replace").count("\n") - lines_before
    print(f"churn: {cycles} app proxy connections, each sending 80 bytes of garbage and "
          f"hanging up, in {took:.1f} s")
    print(f"  log grew by {lines} lines, {log_growth} bytes")


async def still_open(reader: asyncio.StreamReader) -> bool:
    try:
        return bool(await asyncio.wait_for(reader.read(1), 0.01))
    except TimeoutError:
        return True  # silent, and open
    except ConnectionError:
        return False


async def stream_garbage(port: int, seconds: float) -> int:
    """Send bytes that are no frame for ``seconds``; how many went out."""
    sent = 0
    chunk = bytes(range(0x10, 0xF0)) * 64  # never 0xfe: no header
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection(HOST, port)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        writer.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("flood")
    one.add_argument("--messages", type=int, default=20000)
    one.add_argument("--seconds", type=float, default=10.0, help="0: all at once")
    two = sub.add_parser("proxy")
    two.add_argument("--connections", type=int, default=1100)
    two.add_argument("--nofile", type=int, default=1024)
    two.add_argument("--seconds", type=float, default=20.0)
    three = sub.add_parser("churn")
    three.add_argument("--cycles", type=int, default=1000)
    args = parser.parse_args()
    if args.what == "flood":
        asyncio.run(flood(args.messages, args.seconds))
    elif args.what == "proxy":
        asyncio.run(proxy(args.connections, args.nofile, args.seconds))
    else:
        asyncio.run(churn(args.cycles))


if __name__ == "__main__":
    main()
