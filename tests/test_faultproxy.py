"""The fault-injecting proxy of the tests, between the client and the simulator."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from faultproxy import FaultProxy

from sermatec_bridge.inverter.client import InverterBusy, InverterClient, InverterTimeout
from sermatec_bridge.protocol import frame
from sermatec_bridge.simulator import Simulator


async def raw_reply(port: int, code: int, times: int = 1) -> bytes:
    """Send a request over a plain socket; what comes back until 0.2 s of quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame.request(code) * times)
    data = b""
    with contextlib.suppress(TimeoutError):
        while chunk := await asyncio.wait_for(reader.read(4096), 0.2):
            data += chunk
    writer.close()
    return data


async def test_a_command_that_is_never_answered_never_reaches_the_inverter() -> None:
    async with Simulator(pcu=609) as sim, FaultProxy(sim.port or 0,
                                                     never_answer={0xA1}) as proxy:
        async with InverterClient("127.0.0.1", proxy.port, timeout=0.3, retries=1,
                                  backoff=0.01) as client:
            assert (await client.query(0x0C))[0].command.code == 0x0C
            with pytest.raises(InverterTimeout, match="no reply 0xa1"):
                await client.query(0xA1)
            assert (await client.query(0x0A))[0].command.code == 0x0A
        assert 0xA1 not in sim.received
        assert proxy.swallowed == 2


async def test_a_share_of_the_requests_is_answered() -> None:
    async with Simulator(pcu=609) as sim, FaultProxy(sim.port or 0, answer_rate=0.5,
                                                     seed=3) as proxy:
        replies = frame.FrameReader().feed(await raw_reply(proxy.port, 0x0C, times=40))
        assert proxy.requests == 40
        assert len(replies) == len(sim.received) == 40 - proxy.swallowed
        assert 10 < proxy.swallowed < 30


async def test_busy_accepts_and_never_answers() -> None:
    async with Simulator(pcu=609) as sim, FaultProxy(sim.port or 0, busy=True) as proxy:
        client = InverterClient("127.0.0.1", proxy.port, timeout=0.2, retries=0)
        with pytest.raises(InverterBusy):
            await client.connect()
        assert sim.clients == 0


async def test_replies_can_carry_a_bad_checksum_or_garbage_or_come_twice() -> None:
    async with Simulator(pcu=609) as sim, FaultProxy(sim.port or 0) as proxy:
        clean = await raw_reply(proxy.port, 0x98)
        assert frame.FrameReader().feed(clean)[0] == frame.parse_frame(clean)
        proxy.bad_checksum_rate = 1.0
        items = frame.FrameReader().feed(await raw_reply(proxy.port, 0x98))
        assert isinstance(items[0], frame.BadChecksum)
        proxy.bad_checksum_rate, proxy.garbage_rate = 0.0, 1.0
        data = await raw_reply(proxy.port, 0x98)
        assert not data.startswith(frame.HEADER) and data.endswith(clean)
        proxy.garbage_rate, proxy.duplicate_rate = 0.0, 1.0
        assert await raw_reply(proxy.port, 0x98) == clean + clean


async def test_latency_stall_and_cut() -> None:
    async with Simulator(pcu=609) as sim, FaultProxy(sim.port or 0) as proxy:
        async with InverterClient("127.0.0.1", proxy.port, timeout=0.3, retries=0) as client:
            loop = asyncio.get_running_loop()
            proxy.latency = 0.1
            started = loop.time()
            await client.query(0x0C)
            assert loop.time() - started >= 0.1
            proxy.latency = 0
            proxy.stall()
            with pytest.raises(InverterTimeout):
                await client.query(0x0C)
            proxy.resume()
            assert (await client.query(0x0C))[0].command.code == 0x0C
            before = client.reconnects
            proxy.cut()
            await asyncio.sleep(0.05)
            client.retries = 1
            assert (await client.query(0x0C))[0].command.code == 0x0C
            assert client.reconnects == before + 1
