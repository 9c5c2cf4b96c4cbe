"""Protocol benchmarks: frames decoded per second, and a full query sweep's time.

    .venv/bin/python benchmarks/codec_and_sweep.py [--latency 0.05] [--seconds 3]

The decode figures are one core: FrameReader reassembly plus decoding of the payload, and
decoding alone, compiled (the codec's path) and through construct's interpreter, for the
mix issue 17 measured (0x0a, 0x0b, 0x95, 0x98) and for every query reply at PCU 609.
The sweep sends every query once to the simulator over loopback TCP with the given reply
latency, and prints its time next to the sum of the latencies (the least any client
could take, one request at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence

from sermatec_bridge.inverter.client import InverterClient
from sermatec_bridge.protocol import codec, frame, tables
from sermatec_bridge.protocol.model import Kind
from sermatec_bridge.simulator import Simulator

VERSION = 609


def sweep_commands() -> list[tables.Command]:
    """Every query of PCU 609 (the two-part register query 0xbb is left out)."""
    return [c for c in tables.available(VERSION) if c.kind is Kind.QUERY]


ISSUE_MIX = (0x0A, 0x0B, 0x95, 0x98)  # the mix whose rate issue 17 quotes


def decode_rate(codes: Sequence[int], seconds: float,
                decode: Callable[..., codec.Reading] = codec.decode) -> tuple[float, float]:
    """(frames per second through reader + codec, frames per second through codec alone)."""
    from sermatec_bridge.simulator.model import InverterModel

    model = InverterModel(pcu=VERSION)
    commands = [tables.COMMANDS[code] for code in codes]
    replies = [frame.reply(c.code, model.payload(c.code)) for c in commands]
    stream = b"".join(replies)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        reader = frame.FrameReader()
        for item in reader.feed(stream):
            assert isinstance(item, frame.Frame)
            decode(tables.COMMANDS[item.command], VERSION, item.payload)
            count += 1
    full = count / (time.perf_counter() - start)
    parsed = [(c, frame.parse_frame(r).payload) for c, r in zip(commands, replies, strict=True)]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for command, payload in parsed:
            decode(command, VERSION, payload)
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
    every = [c.code for c in sweep_commands()]
    for name, codes in (("0x0a 0x0b 0x95 0x98", ISSUE_MIX), ("every query reply", every)):
        full, alone = decode_rate(codes, args.seconds)
        _, interpreted = decode_rate(codes, args.seconds, codec.interpret)
        print(f"decode, one core, {name}: {full:,.0f} frames/s (reassembly + codec), "
              f"{alone:,.0f} frames/s (codec alone); construct's interpreter "
              f"{interpreted:,.0f} frames/s (codec alone): {alone / interpreted:.1f}x")
    elapsed, requests, frames = asyncio.run(sweep(args.latency))
    latencies = requests * args.latency  # the simulator waits once per request
    print(f"sweep of {requests} queries ({frames} reply frames) at {args.latency * 1000:.0f} ms "
          f"latency: {elapsed * 1000:.0f} ms; sum of latencies {latencies * 1000:.0f} ms; "
          f"overhead {(elapsed - latencies) * 1000 / requests:.1f} ms per query")


if __name__ == "__main__":
    main()
