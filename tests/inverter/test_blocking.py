"""What only the blocking client does (what it shares with the asyncio one is tested with
it, in test_client.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sermatec_bridge.inverter.blocking import BlockingClient
from sermatec_bridge.simulator import Simulator


def test_ctrl_c_during_a_blocking_register_query_waits_for_part_2() -> None:
    """The blocking client in the main thread, where Ctrl-C (SIGINT) strikes; it comes
    while part 1's acknowledgement is awaited, and takes effect once part 2 is answered."""
    with simulator_in_a_thread(pcu=609) as sim:
        answer = sim.model.handle

        def interrupted_at_part_1(code: int, payload: bytes) -> Any:
            if code == 0xBB and sim.model.pending_registers is None:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            return answer(code, payload)

        sim.model.handle = interrupted_at_part_1
        with BlockingClient("127.0.0.1", sim.port or 0, timeout=2) as client:
            with pytest.raises(KeyboardInterrupt):
                client.read_registers([0x1000, 0x1001])
            assert list(sim.received).count(0xBB) == 2
            assert client.query(0x0C)[0].command.code == 0x0C
        assert not sim.blocked


@contextlib.contextmanager
def simulator_in_a_thread(**kw: Any) -> Iterator[Simulator]:
    """A simulator serving from an event loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sim = Simulator(**kw)
    try:
        asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)
        yield sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
