"""The simulator's side of a fleet that dials in: N simulated inverters in station mode.

    .venv/bin/python benchmarks/station_fleet.py [--count 1000] [--seconds 30] [--live 10]
                                                 [--rc4]

It starts ``sermatec-bridge simulate --count N --cloud 127.0.0.1:PORT`` (its own process)
and, in this process, a stand-in cloud that accepts every link, identifies it with 0x98
and then asks the live group (0x0a, 0x0b, 0x0c, 0x0d) on every link each ``--live``
seconds for ``--seconds``. Meanwhile a client on the first simulator's own port asks
0x0a every second: one inverter served on both ways in at once. It prints:

- the time from the simulator's start until all N have dialled in and answered 0x98;
- the simulator process's CPU share while polled (1.0 is one core) and its resident
  memory, per inverter;
- the reply latency over the cloud links (p50 / p95 / max) and the answers on port 8899.

Everything stays on 127.0.0.1. The later bridge benchmark (issue 17: 1,000 inverters
dialling in) needs the simulator to be cheap next to the bridge; this says how cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import HOST, cpu_seconds, free_port, free_port_range, memory_mib, percentile

from sermatec_bridge.protocol import frame

LIVE = (0x0A, 0x0B, 0x0C, 0x0D)


class Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 rc4: bool) -> None:
        self.reader, self.writer, self.rc4 = reader, writer, rc4
        self.frames = frame.FrameReader(rc4=True)
        self.pending: list[frame.Frame | frame.FrameError] = []

    async def ask(self, code: int) -> frame.Frame:
        self.writer.write(frame.request(code, rc4=self.rc4))
        await self.writer.drain()
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(4096), 10)
            if not data:
                raise ConnectionError("the inverter hung up")
            self.pending += self.frames.feed(data)
        item = self.pending.pop(0)
        if not isinstance(item, frame.Frame) or item.command != code:
            raise RuntimeError(f"asked 0x{code:02x}, got {item}")
        return item


class Cloud:
    def __init__(self, count: int, rc4: bool) -> None:
        self.count, self.rc4 = count, rc4
        self.links: list[Link] = []
        self.all_in = asyncio.Event()
        self.latencies: list[float] = []
        self.failures = 0

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(reader, writer, self.rc4)
        await link.ask(0x98)
        self.links.append(link)
        if len(self.links) == self.count:
            self.all_in.set()

    async def poll(self, link: Link, live: float, until: float) -> None:
        await asyncio.sleep(random.uniform(0, live))  # spread, as a fleet's polls are
        while time.monotonic() < until:
            for code in LIVE:
                start = time.perf_counter()
                try:
                    await link.ask(code)
                except (OSError, RuntimeError, TimeoutError):
                    self.failures += 1
                    return
                self.latencies.append(time.perf_counter() - start)
            await asyncio.sleep(live)


async def local_client(port: int, until: float) -> tuple[int, int]:
    """Ask 0x0a on the simulator's own port each second: (asked, answered)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    frames, asked, answered = frame.FrameReader(), 0, 0
    try:
        while time.monotonic() < until:
            writer.write(frame.request(0x0A))
            await writer.drain()
            asked += 1
            with contextlib.suppress(TimeoutError):
                while not frames.feed(await asyncio.wait_for(reader.read(4096), 5)):
                    pass
                answered += 1
            await asyncio.sleep(1)
    finally:
        writer.close()
    return asked, answered


async def main(count: int, seconds: float, live: float, rc4: bool) -> None:
    cloud = Cloud(count, rc4)
    cloud_port = free_port()
    server = await asyncio.start_server(cloud.accept, HOST, cloud_port, backlog=count)
    first_port = free_port_range(count)
    started = time.monotonic()
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sermatec_bridge", "simulate", "--port", str(first_port),
        "--count", str(count), "--cloud", f"{HOST}:{cloud_port}", *(["--rc4"] if rc4 else []),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.wait_for(cloud.all_in.wait(), 60 + count / 10)
        all_in = time.monotonic() - started
        memory_in = memory_mib(simulator.pid)["VmRSS"]
        cpu_before, wall_before = cpu_seconds(simulator.pid), time.monotonic()
        until = wall_before + seconds
        polls = [cloud.poll(link, live, until) for link in cloud.links]
        results = await asyncio.gather(local_client(first_port, until), *polls)
        cpu = (cpu_seconds(simulator.pid) - cpu_before) / (time.monotonic() - wall_before)
        memory = memory_mib(simulator.pid)
        asked, answered = results[0]
    finally:
        simulator.terminate()
        await simulator.wait()
        server.close()
    ms = [x * 1000 for x in cloud.latencies]
    print(f"{count} simulated inverters dialling in{' with RC4' if rc4 else ''}: all "
          f"connected and identified (0x98) {all_in:.1f} s after the simulator started")
    print(f"simulator while polled ({len(LIVE)} queries per inverter every {live:g} s, "
          f"{seconds:g} s): CPU {cpu:.2f} of a core; resident {memory['VmRSS']:.0f} MiB "
          f"({memory['VmRSS'] / count * 1024:.0f} KiB per inverter; {memory_in:.0f} MiB "
          f"when all were in, peak {memory['VmHWM']:.0f} MiB)")
    print(f"cloud-link replies: {len(ms)}, p50 {percentile(ms, 50):.1f} ms, "
          f"p95 {percentile(ms, 95):.1f} ms, max {max(ms, default=float('nan')):.1f} ms; "
          f"links lost: {cloud.failures}")
    print(f"port 8899 of the first inverter, asked each second meanwhile: {answered} of "
          f"{asked} answered")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--live", type=float, default=10.0, help="seconds between polls")
    parser.add_argument("--rc4", action="store_true", help="the links speak RC4")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.seconds, args.live, args.rc4))
