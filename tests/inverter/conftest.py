"""Both inverter clients, for the tests of what they share."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sermatec_bridge.inverter.blocking import BlockingClient
from sermatec_bridge.inverter.client import InverterClient


class InThread:
    """A :class:`BlockingClient` used as an InverterClient is: ``async with``, and each
    method awaited, run in a worker thread (so that a simulator in the test's event loop
    keeps serving)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.client = BlockingClient(*args, **kw)

    async def __aenter__(self) -> InThread:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.client, name)
        if not callable(value):
            return value
        return lambda *args, **kw: asyncio.to_thread(value, *args, **kw)


@pytest.fixture(params=[InverterClient, InThread], ids=["asyncio", "blocking"])
def Client(request: pytest.FixtureRequest) -> Any:
    """Each client in turn: the asyncio one, and the command line's blocking one."""
    return request.param
