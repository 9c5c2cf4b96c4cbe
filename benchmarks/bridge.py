"""Bridge benchmarks: resident memory, time to first discovery and state, write round trip.

    .venv/bin/python benchmarks/bridge.py [--latency 0.05] [--writes 5]

Runs the real daemon (`sermatec-bridge run`, a separate process) against the simulator
with the given reply latency and a Mosquitto (or amqtt) broker on loopback, and prints:
- the time from starting the process to the first full discovery and every group's state;
- the time from an MQTT write (set/grid_soc_min) to its confirmed result on set/result
  (read-modify-write, write, read-back), median and worst of several;
- the daemon's resident memory (VmRSS, and its peak VmHWM) with one inverter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from sermatec_bridge.bridge.groups import GROUPS
from sermatec_bridge.demo import broker, free_port
from sermatec_bridge.simulator import Simulator


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))}


async def measure(latency: float, writes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        async with Simulator(pcu=609, latency=latency) as sim, broker(port, Path(tmp)) as name:
            env = {
                **os.environ,
                "SERMATEC_INVERTER__HOST": "127.0.0.1",
                "SERMATEC_INVERTER__PORT": str(sim.port),
                "SERMATEC_MQTT__HOST": "127.0.0.1",
                "SERMATEC_MQTT__PORT": str(port),
                "SERMATEC_MQTT__PROTOCOL": "5" if name.startswith("Mosquitto") else "3.1.1",
                "SERMATEC_WRITES__ENABLED": "true",
                "SERMATEC_WRITES__MIN_INTERVAL": "0",
                "SERMATEC_LOG__LEVEL": "warning",
                "SERMATEC_HEALTH__FILE": str(Path(tmp) / "health.json"),
            }
            serial = sim.model.serial
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench") as client:
                await client.subscribe("homeassistant/#")
                await client.subscribe(f"sermatec/{serial}/#")
                start = time.perf_counter()
                daemon = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "sermatec_bridge", "run", env=env)
                try:
                    seen: set[str] = set()
                    wanted = {"discovery"} | {g.key for g in GROUPS}
                    messages = aiter(client.messages)
                    while not wanted <= seen:
                        message = await asyncio.wait_for(anext(messages), 60)
                        topic = message.topic.value
                        if topic.startswith("homeassistant/device/"):
                            seen.add("discovery")
                        elif topic.rsplit("/", 1)[-1] in wanted:
                            seen.add(topic.rsplit("/", 1)[-1])
                    first = time.perf_counter() - start
                    print(f"start to first full discovery + {len(GROUPS)} group states: "
                          f"{first:.2f} s (simulator latency {latency * 1000:.0f} ms, "
                          f"broker {name})")
                    rounds = []
                    for index in range(writes):
                        value = 30 + index
                        sent = time.perf_counter()
                        await client.publish(f"sermatec/{serial}/set/grid_soc_min", str(value))
                        while True:
                            message = await asyncio.wait_for(anext(messages), 30)
                            if message.topic.value.endswith("/set/result"):
                                result = json.loads(bytes(message.payload))
                                assert result.get("ok"), result
                                break
                        rounds.append(time.perf_counter() - sent)
                    print(f"MQTT write to confirmed result ({writes} writes): median "
                          f"{statistics.median(rounds) * 1000:.0f} ms, worst "
                          f"{max(rounds) * 1000:.0f} ms (read 0x95, write 0x66, read back 0x95, "
                          f"at {latency * 1000:.0f} ms latency)")
                    await asyncio.sleep(5)
                    kib = memory_kib(daemon.pid)
                    print(f"daemon resident memory with one inverter: "
                          f"{kib['VmRSS'] / 1024:.1f} MiB (peak {kib['VmHWM'] / 1024:.1f} MiB)")
                finally:
                    daemon.terminate()
                    await daemon.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05, help="simulator reply latency")
    parser.add_argument("--writes", type=int, default=5, help="number of timed writes")
    args = parser.parse_args()
    asyncio.run(measure(args.latency, args.writes))


if __name__ == "__main__":
    main()
