"""The daemon's own supervision: a part that dies stops the bridge with a failure."""

from __future__ import annotations

import asyncio
import itertools
import socket
from pathlib import Path

from sermatec_bridge.bridge.service import Bridge
from sermatec_bridge.config import load_settings
from sermatec_bridge.simulator import Simulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_part_that_dies_stops_the_bridge_with_a_failure(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    async with Simulator(pcu=609) as sim:
        settings = load_settings(overrides={
            "inverter": {"host": "127.0.0.1", "port": sim.port},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # nobody there: retried
            "health": {"file": str(tmp_path / "health.json"), "metrics_host": "127.0.0.1",
                       "metrics_port": taken.getsockname()[1]},  # in use: metrics dies
        }, env={})
        clean = await asyncio.wait_for(Bridge(settings).run(), 20)
    taken.close()
    assert clean is False


async def test_the_inverters_of_one_bridge_start_their_rounds_apart() -> None:
    """500 inverters must not all poll and publish in the same instant, every round."""
    settings = load_settings(overrides={
        "inverters": [{"host": "127.0.0.1", "port": 10000 + i} for i in range(4)],
        "poll": {"live": 8},
    }, env={})
    firsts = [w.scheduler.next_due() for w in Bridge(settings).workers]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(firsts)]
    assert gaps == [2.0, 2.0, 2.0], "spread evenly over one live interval"
