"""Protocol benchmarks: frames decoded per second, and a full query sweep's time.

    .venv/bin/python benchmarks/codec_and_sweep.py [--latency 0.05] [--seconds 3]

The decode figure is one core: FrameReader reassembly plus decoding of the payload for a
mix of every query reply at PCU 609. The sweep sends every query once to the simulator
over loopback TCP with the given reply latency, and prints its time next to the sum of
the latencies (the least any client could take, one request at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sermatec_bridge.inverter.client import InverterClient
from sermatec_bridge.protocol import codec, frame, tables
from sermatec_bridge.protocol.model import Kind
from sermatec_bridge.simulator import Simulator

VERSION = 609


def sweep_commands() -> list[tables.Command]:
    """Every query of PCU 609 (the two-part register query 0xbb is left out)."""
    return [c for c in tables.available(VERSION) if c.kind is Kind.QUERY]


def decode_rate(seconds: float) -> tuple[float, float]:
    """(frames per second through reader + codec, frames per second through codec alone)."""
    from sermatec_bridge.simulator.model import InverterModel

    model = InverterModel(pcu=VERSION)
    replies = [frame.reply(c.code, model.payload(c.code)) for c in sweep_commands()]
    stream = b"".join(replies)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        reader = frame.FrameReader()
        for item in reader.feed(stream):
            assert isinstance(item, frame.Frame)
            codec.decode_payload(item.command, VERSION, item.payload)
            count += 1
    full = count / (time.perf_counter() - start)
    parsed = [frame.parse_frame(r) for r in replies]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for f in parsed:
            codec.decode_payload(f.command, VERSION, f.payload)
            count += 1
    return full, count / (time.perf_counter() - start)


async def sweep(latency: float) -> tuple[float, int, int]:
    commands = sweep_commands()
    async with Simulator(pcu=VERSION, latency=latency) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=5 + latency) as client:
            start = time.perf_counter()
            frames = 0
            for command in commands:
                frames += len(await client.query(command))
            return time.perf_counter() - start, len(commands), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05, help="simulator reply latency")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per decode figure")
    args = parser.parse_args()
    full, codec_only = decode_rate(args.seconds)
    print(f"decode, one core: {full:,.0f} frames/s (reassembly + codec), "
          f"{codec_only:,.0f} frames/s (codec alone)")
    elapsed, requests, frames = asyncio.run(sweep(args.latency))
    latencies = requests * args.latency  # the simulator waits once per request
    print(f"sweep of {requests} queries ({frames} reply frames) at {args.latency * 1000:.0f} ms "
          f"latency: {elapsed * 1000:.0f} ms; sum of latencies {latencies * 1000:.0f} ms; "
          f"overhead {(elapsed - latencies) * 1000 / requests:.1f} ms per query")


if __name__ == "__main__":
    main()
