"""App proxy benchmark: the latency the proxy adds to an app request while the bridge polls.

    .venv/bin/python benchmarks/proxy_latency.py [--latency 0.05] [--live 2] [--samples 100]
                                                 [--command 0x0a]

Runs the real daemon (`sermatec-bridge run`, a separate process) with its app proxy on,
polling the simulator (reply latency ``--latency``) every ``--live`` seconds, with a
Mosquitto (or amqtt) broker on loopback. A raw client then sends the same request
``--samples`` times at random moments (so that some land while a poll holds the inverter)
and times each until its last reply frame. The same is measured against a second
simulator directly, with nothing else talking to it. Prints median and p95 of both, and
what the proxy adds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from sermatec_bridge.demo import broker, free_port
from sermatec_bridge.protocol import frame, tables
from sermatec_bridge.simulator import Simulator


async def timed_requests(port: int, code: int, samples: int, version: int) -> list[float]:
    """Seconds from sending ``code`` to its last reply frame, one request at a time."""
    expect = len(tables.replies(tables.COMMANDS[code], version))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames = frame.FrameReader()
    times = []
    try:
        for _ in range(samples):
            await asyncio.sleep(random.uniform(0.05, 0.3))
            sent = time.perf_counter()
            writer.write(frame.request(code))
            await writer.drain()
            got = 0
            while got < expect:
                data = await asyncio.wait_for(reader.read(4096), 30)
                if not data:
                    raise RuntimeError("connection closed")
                got += sum(isinstance(item, frame.Frame) for item in frames.feed(data))
            times.append(time.perf_counter() - sent)
    finally:
        writer.close()
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def line(what: str, times: list[float]) -> str:
    return (f"{what:<34} median {statistics.median(times) * 1000:6.1f} ms   "
            f"p95 {p95(times) * 1000:6.1f} ms")


async def measure(latency: float, live: float, samples: int, code: int) -> None:
    async with Simulator(pcu=609, latency=latency) as alone:
        assert alone.port is not None
        direct = await timed_requests(alone.port, code, samples, alone.model.version)
    with tempfile.TemporaryDirectory() as tmp:
        mqtt_port, proxy_port = free_port(), free_port()
        async with Simulator(pcu=609, latency=latency) as sim, \
                broker(mqtt_port, Path(tmp)) as name:
            env = {
                **os.environ,
                "SERMATEC_INVERTER__HOST": "127.0.0.1",
                "SERMATEC_INVERTER__PORT": str(sim.port),
                "SERMATEC_INVERTER__PROXY_PORT": str(proxy_port),
                "SERMATEC_PROXY__HOST": "127.0.0.1",
                "SERMATEC_POLL__LIVE": str(live),
                "SERMATEC_MQTT__HOST": "127.0.0.1",
                "SERMATEC_MQTT__PORT": str(mqtt_port),
                "SERMATEC_MQTT__PROTOCOL": "5" if name.startswith("Mosquitto") else "3.1.1",
                "SERMATEC_LOG__LEVEL": "warning",
                "SERMATEC_HEALTH__FILE": str(Path(tmp) / "health.json"),
            }
            serial = sim.model.serial
            async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="bench") as client:
                await client.subscribe(f"sermatec/{serial}/availability")
                daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "sermatec_bridge", "run", env=env)
                try:
                    messages = aiter(client.messages)
                    while (await asyncio.wait_for(anext(messages), 60)).payload != b"online":
                        pass  # the proxy answers once the bridge has the inverter online
                    proxied = await timed_requests(proxy_port, code, samples,
                                                   sim.model.version)
                finally:
                    daemon.terminate()
                    await daemon.wait()
    print(f"request 0x{code:02x}, {samples} samples, simulator latency "
          f"{latency * 1000:.0f} ms, bridge polling live every {live:g} s (broker {name})")
    print(line("direct to the simulator:", direct))
    print(line("through the bridge's app proxy:", proxied))
    print(f"{'added by the proxy:':<34} median "
          f"{(statistics.median(proxied) - statistics.median(direct)) * 1000:6.1f} ms   "
          f"p95 {(p95(proxied) - p95(direct)) * 1000:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05, help="simulator reply latency")
    parser.add_argument("--live", type=float, default=2.0, help="the bridge's live interval")
    parser.add_argument("--samples", type=int, default=100, help="requests timed per path")
    parser.add_argument("--command", type=lambda text: int(text, 0), default=0x0A,
                        help="the query sent (default 0x0a)")
    args = parser.parse_args()
    asyncio.run(measure(args.latency, args.live, args.samples, args.command))


if __name__ == "__main__":
    main()
