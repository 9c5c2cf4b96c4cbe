"""Runtime benchmarks: the live cadence during a write storm, and the time SIGTERM takes.

    .venv/bin/python benchmarks/runtime.py [--latency 0.02] [--writes 200] [--seconds 2]

Runs the real daemon (`sermatec-bridge run`, a separate process) against the simulator and
a Mosquitto (or amqtt) broker on loopback, with a 1 s live interval, and prints:
- during a storm of N writes to set/grid_soc_min within S seconds: the gaps between live
  states (median, p95, worst), the results received (each write must get one) and how
  many were applied or superseded;
- with 8 writes to different settings queued behind a slow inverter (0.5 s a reply):
  the time from SIGTERM to the end of the process, the results received and whether
  every one of them came before the inverter's ``offline``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from sermatec_bridge.demo import broker, free_port
from sermatec_bridge.simulator import Simulator

Seen = list[tuple[float, str, str]]  # arrival time, topic, payload


@asynccontextmanager
async def daemon(sim: Simulator, port: int, protocol: str,
                 tmp: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "SERMATEC_INVERTER__HOST": "127.0.0.1",
        "SERMATEC_INVERTER__PORT": str(sim.port),
        "SERMATEC_MQTT__HOST": "127.0.0.1",
        "SERMATEC_MQTT__PORT": str(port),
        "SERMATEC_MQTT__PROTOCOL": protocol,
        "SERMATEC_POLL__LIVE": "1",
        "SERMATEC_WRITES__ENABLED": "true",
        "SERMATEC_WRITES__MIN_INTERVAL": "0",
        "SERMATEC_LOG__LEVEL": "error",
        "SERMATEC_HEALTH__FILE": str(tmp / "health.json"),
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "sermatec_bridge",
                                                   "run", env=env)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def record(client: aiomqtt.Client, seen: Seen) -> None:
    async for message in client.messages:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        seen.append((time.monotonic(), message.topic.value, payload.decode(errors="replace")))


async def until(seen: Seen, topic: str, text: str | None = None, after: int = 0,
                within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not any(t == topic and (text is None or p == text) for _, t, p in seen[after:]):
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing on {topic} within {within} s")
        await asyncio.sleep(0.05)


@dataclass
class Rig:
    sim: Simulator
    client: aiomqtt.Client  # subscribed to everything of the inverter, recorded in seen
    process: asyncio.subprocess.Process  # the daemon
    base: str  # the inverter's topic prefix
    broker: str
    seen: Seen


@asynccontextmanager
async def rig(latency: float = 0.0) -> AsyncIterator[Rig]:
    """The simulator, a broker, a client recording the inverter's topics, the daemon."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        async with Simulator(pcu=609, latency=latency) as sim, broker(port, Path(tmp)) as name:
            protocol = "5" if name.startswith("Mosquitto") else "3.1.1"
            base = f"sermatec/{sim.model.serial}"
            seen: Seen = []
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench") as client:
                await client.subscribe(f"{base}/#")
                reader = asyncio.create_task(record(client, seen))
                try:
                    async with daemon(sim, port, protocol, Path(tmp)) as process:
                        yield Rig(sim, client, process, base, name, seen)
                finally:
                    reader.cancel()


async def storm(latency: float, writes: int, seconds: float) -> None:
    async with rig(latency) as r:
        base, seen = r.base, r.seen
        await until(seen, f"{base}/live")
        mark = len(seen)
        start = time.monotonic()
        for i in range(writes):
            await r.client.publish(f"{base}/set/grid_soc_min", str(20 + i % 40), qos=1)
            await asyncio.sleep(max(0.0, start + (i + 1) * seconds / writes - time.monotonic()))
        deadline = time.monotonic() + 60
        while True:  # every write answered, or a minute passed
            answered = sum(t == f"{base}/set/result" for _, t, _ in seen[mark:])
            if answered >= writes or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        end = time.monotonic()
    results = [json.loads(p) for _, t, p in seen[mark:] if t == f"{base}/set/result"]
    live = [at for at, t, _ in seen[mark:] if t == f"{base}/live" and at <= end]
    gaps = sorted(b - a for a, b in itertools.pairwise(live))
    p95 = gaps[min(len(gaps) - 1, int(0.95 * len(gaps)))] if gaps else float("nan")
    print(f"storm: {writes} writes in {seconds:g} s, inverter latency {latency:g} s "
          f"({r.broker})")
    print(f"  live interval 1 s; gaps during the storm: median "
          f"{statistics.median(gaps) if gaps else float('nan'):.2f} s, p95 {p95:.2f} s,"
          f" worst {max(gaps, default=float('nan')):.2f} s ({len(live)} states)")
    print(f"  results: {len(results)} of {writes} "
          f"(applied {sum(result['ok'] for result in results)}, superseded "
          f"{sum('superseded' in result.get('error', '') for result in results)}), last one "
          f"{end - start:.1f} s after the first write")


async def shutdown() -> None:
    requests = [("set/grid_soc_min", "21"), ("set/off_grid_soc_min", "22"),
                ("set/grid_export_limit", "2000"), ("set/charge_power_limit", "2100"),
                ("set/discharge_power_limit", "2200"),
                ("set", json.dumps({"grid_soc_min": 23, "off_grid_soc_min": 24})),
                ("set", json.dumps({"grid_soc_min": 25, "grid_export_limit": 2300})),
                ("set", json.dumps({"off_grid_soc_min": 26, "grid_export_limit": 2400}))]
    async with rig() as r:
        base, seen = r.base, r.seen
        await until(seen, f"{base}/availability", "online")
        await until(seen, f"{base}/alarms")
        r.sim.latency = 0.5
        mark = len(seen)
        for leaf, payload in requests:
            await r.client.publish(f"{base}/{leaf}", payload, qos=1)
        await asyncio.sleep(0.5)
        start = time.monotonic()
        r.process.send_signal(signal.SIGTERM)
        await r.process.wait()
        took = time.monotonic() - start
        await until(seen, f"{base}/availability", "offline", after=mark, within=5)
    after = seen[mark:]
    offline = next(i for i, (_, t, p) in enumerate(after)
                   if t == f"{base}/availability" and p == "offline")
    results = [i for i, (_, t, _) in enumerate(after) if t == f"{base}/set/result"]
    print("SIGTERM with 8 writes queued behind a 0.5 s inverter:")
    print(f"  exit after {took:.2f} s (status {r.process.returncode}); results "
          f"{len(results)} of {len(requests)}, all before offline: "
          f"{all(i < offline for i in results)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(storm(args.latency, args.writes, args.seconds))
    asyncio.run(shutdown())


if __name__ == "__main__":
    main()
