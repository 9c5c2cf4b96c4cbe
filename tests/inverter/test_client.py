"""The inverter client against the simulator, over real TCP on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest
from faultproxy import FaultProxy

from sermatec_bridge.inverter.client import (
    InverterBusy,
    InverterClient,
    InverterTimeout,
    InverterUnreachable,
    NotOffered,
)
from sermatec_bridge.protocol import tables
from sermatec_bridge.simulator import Fault, Simulator

STATIC = (0x98, 0x95, 0x9D, 0xA1, 0xA2, 0xB1, 0x1E, 0x1F)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reads_identity_and_every_query_through_latency_and_one_byte_chunks() -> None:
    async with Simulator(pcu=609, model="10kw", latency=0.01, chunk=1) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=5) as client:
            assert client.identity is not None
            assert client.identity.version == 609
            assert client.identity.model == "10 kW"
            for command in tables.available(609):
                if command.kind is not tables.Kind.QUERY or command.code == 0xBB:
                    continue
                readings = await client.query(command)
                assert [r.command.code for r in readings] == list(
                    tables.replies(command, 609)
                )
                expected = sim.model.values(command.code)
                if command.code in STATIC:
                    assert readings[0].values == expected
                else:  # live values move between the two reads
                    assert readings[0].values.keys() == expected.keys()


async def test_0x95_is_answered_by_two_frames_matched_to_one_request() -> None:
    async with Simulator(pcu=609) as sim, InverterClient("127.0.0.1", sim.port or 0) as client:
        readings = await client.query(0x95)
        assert [r.command.code for r in readings] == [0x95, 0x9D]
        assert readings[1].values["off_grid_soc_min"] == sim.model.settings["off_grid_soc_min"]


async def test_late_reply_never_reaches_the_next_caller() -> None:
    # The next request goes out at once, so the late reply arrives while it waits for its
    # own: only a fresh connection keeps it away (draining stale frames would not).
    async with Simulator(pcu=609) as sim:
        client = InverterClient("127.0.0.1", sim.port or 0, timeout=1.0, retries=0)
        await client.connect()
        sim.model.settings["grid_soc_min"] = 11
        sim.latency = 1.5  # the reply to this request comes after the client gave up
        with pytest.raises(InverterTimeout):
            await client.query(0x95)
        sim.model.settings["grid_soc_min"] = 77
        sim.latency = 0
        readings = await client.query(0x95)  # the late reply (11) arrives meanwhile
        assert readings[0].values["grid_soc_min"] == 77
        await client.close()


async def test_a_late_reply_that_came_before_the_next_request_is_dropped() -> None:
    async with Simulator(pcu=609) as sim:
        client = InverterClient("127.0.0.1", sim.port or 0, timeout=0.3, retries=0)
        await client.connect()
        sim.model.settings["grid_soc_min"] = 11
        sim.latency = 0.5
        with pytest.raises(InverterTimeout):
            await client.query(0x95)
        sim.model.settings["grid_soc_min"] = 77
        sim.latency = 0
        await asyncio.sleep(0.6)  # the late reply has now been written by the simulator
        readings = await client.query(0x95)
        assert readings[0].values["grid_soc_min"] == 77
        await client.close()


async def test_a_write_after_the_inverter_hung_up_goes_out_on_a_new_connection() -> None:
    async with Simulator(pcu=609) as sim:
        port = sim.port or 0
        async with InverterClient("127.0.0.1", port, timeout=1, retries=1,
                                  backoff=0.01) as client:
            await sim.stop()  # the inverter hangs up between two requests (a power cycle)
            await sim.start(port=port)
            await asyncio.sleep(0.1)  # the hang-up has reached the client
            await client.write(0x64, {"inverter_on": False})  # no reply: nothing else tells
            status = await client.query(0x0C)
            assert status[0].values["inverter_on"] is False


async def test_a_duplicated_reply_never_answers_a_later_request() -> None:
    async with Simulator(pcu=609) as sim, FaultProxy(sim.port or 0) as proxy:
        async with InverterClient("127.0.0.1", proxy.port) as client:
            proxy.duplicate_rate = 1.0
            status = await client.query(0x0C)  # its reply comes twice, in one piece
            assert status[0].values["inverter_on"] is True
            proxy.duplicate_rate = 0.0
            await client.write(0x64, {"inverter_on": False})
            status = await client.query(0x0C)
            assert status[0].values["inverter_on"] is False


async def test_exchanges_outside_a_queue_slot_are_refused() -> None:
    async with Simulator(pcu=609) as sim, InverterClient("127.0.0.1", sim.port or 0) as client:
        sent = len(sim.received)
        with pytest.raises(RuntimeError, match="outside a queue slot"):
            await client.exchange(tables.RUNNING_STATUS)
        assert len(sim.received) == sent
        async with client.session() as session:
            assert (await client.exchange(tables.RUNNING_STATUS))[0].command.code == 0x0C
            assert session.version == 609


async def test_concurrent_callers_each_get_their_own_reply() -> None:
    codes = [0x0A, 0x0C, 0x0D, 0x95, 0x98, 0x1F, 0xA2, 0x9C] * 3
    async with Simulator(pcu=609, latency=0.005) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            results = await asyncio.gather(*(client.query(c) for c in codes))
    assert [r[0].command.code for r in results] == codes


async def test_recovers_from_garbage_bad_checksums_and_dropped_connections() -> None:
    async with Simulator(pcu=609, seed=1) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=0.5, retries=3,
                                  backoff=0.01) as client:
            sim.inject(Fault.GARBAGE, 2)
            assert (await client.query(0x0C))[0].command.code == 0x0C
            sim.inject(Fault.BAD_CHECKSUM)
            assert (await client.query(0x0D))[0].command.code == 0x0D
            before = client.reconnects
            sim.inject(Fault.DROP)
            assert (await client.query(0x0A))[0].command.code == 0x0A
            assert client.reconnects > before
            sim.inject(Fault.SILENCE)
            assert (await client.query(0x98))[0].values["serial_number"] == sim.model.serial


async def test_unreachable_inverter_is_a_clear_error() -> None:
    client = InverterClient("127.0.0.1", free_port(), timeout=1)
    with pytest.raises(InverterUnreachable, match=r"cannot reach the inverter at 127\.0\.0\.1"):
        await client.connect()


async def test_an_inverter_busy_with_another_client_is_told_apart_from_an_unreachable_one(
) -> None:
    # Like the Wi-Fi module, the simulator accepts a second client and never answers it.
    async with Simulator(pcu=609) as sim, InverterClient("127.0.0.1", sim.port or 0):
        second = InverterClient("127.0.0.1", sim.port or 0, timeout=0.3, retries=1,
                                backoff=0.01)
        with pytest.raises(InverterBusy, match=(
                rf"connected to 127\.0\.0\.1:{sim.port} but the inverter does not answer: "
                r"no reply 0x98 \(the identity query\) within 0\.3 s, 2 tries; "
                r"it is probably busy with another client")):
            await second.connect()
        assert not second.connected


@pytest.mark.parametrize("fault", [Fault.SILENCE, Fault.DROP])
async def test_the_identity_query_is_retried_like_any_other(fault: Fault) -> None:
    async with Simulator(pcu=609) as sim:
        sim.inject(fault, 2)
        client = InverterClient("127.0.0.1", sim.port or 0, timeout=0.3, retries=2,
                                backoff=0.01)
        identity = await client.connect()
        assert identity.serial == sim.model.serial
        assert list(sim.received) == [0x98, 0x98, 0x98]
        await client.close()


async def test_the_identity_query_gives_up_after_its_retries() -> None:
    async with Simulator(pcu=609) as sim:
        sim.inject(Fault.SILENCE, 2)
        client = InverterClient("127.0.0.1", sim.port or 0, timeout=0.3, retries=1,
                                backoff=0.01)
        with pytest.raises(InverterBusy):
            await client.connect()
        assert list(sim.received) == [0x98, 0x98]


async def test_a_write_is_not_answered_and_takes_effect() -> None:
    async with Simulator(pcu=609) as sim, InverterClient("127.0.0.1", sim.port or 0) as client:
        await client.write(0x64, {"inverter_on": False})
        status = await client.query(0x0C)
        assert status[0].values["inverter_on"] is False


async def test_commands_the_version_lacks_are_refused_before_sending() -> None:
    async with Simulator(pcu=252) as sim, InverterClient("127.0.0.1", sim.port or 0) as client:
        sent = len(sim.received)
        with pytest.raises(NotOffered, match="not offered by PCU version 252"):
            await client.query(0xA2)
        assert len(sim.received) == sent


async def test_register_query_reads_pairs() -> None:
    async with Simulator(pcu=609) as sim, InverterClient("127.0.0.1", sim.port or 0) as client:
        values = await client.read_registers([0x1000, 0x1003])
        assert values == {0x1000: sim.model.registers[0x1000], 0x1003: sim.model.registers[0x1003]}
        assert not sim.blocked


@pytest.mark.parametrize("cancel_after", [0.0, 0.005, 0.02, 0.05, 0.08, 0.12, 0.2])
async def test_register_query_cancelled_at_any_step_never_blocks_the_inverter(
    cancel_after: float,
) -> None:
    async with Simulator(pcu=609, latency=0.05) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=2) as client:
            task = asyncio.create_task(client.read_registers([0x1000, 0x1001]))
            await asyncio.sleep(cancel_after)
            task.cancel()
            try:
                await task  # late cancels find the exchange already done
            except asyncio.CancelledError:
                assert cancel_after < 0.2
            await asyncio.sleep(0.3)
            assert not sim.blocked
            # and the inverter still answers, on this connection
            assert (await client.query(0x0C))[0].command.code == 0x0C


async def test_register_query_sends_part_2_even_when_part_1_is_not_acknowledged() -> None:
    async with Simulator(pcu=609, latency=0.4) as sim:
        sim.latency = 0
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=0.25, retries=0) as client:
            sim.latency = 0.4
            with pytest.raises(InverterTimeout):
                await client.read_registers([0x1000])
            await asyncio.sleep(1.0)
            assert not sim.blocked
            sim.latency = 0
            assert (await client.query(0x0C))[0].command.code == 0x0C


async def test_a_cancelled_query_never_hands_its_late_reply_to_the_next_caller() -> None:
    async with Simulator(pcu=609) as sim:
        client = InverterClient("127.0.0.1", sim.port or 0, timeout=2, retries=0)
        await client.connect()
        sim.model.settings["grid_soc_min"] = 11
        sim.latency = 0.5
        task = asyncio.create_task(client.query(0x95))
        await asyncio.sleep(0.1)  # the request is out, its reply not yet in
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sim.model.settings["grid_soc_min"] = 77
        await asyncio.sleep(0.25)
        readings = await client.query(0x95)  # sent before the late reply arrives
        assert readings[0].values["grid_soc_min"] == 77
        await client.close()


async def test_a_connect_cancelled_half_way_leaves_no_connection_behind() -> None:
    # The simulator serves one client at a time, like the Wi-Fi module: a connection
    # left open by the cancelled connect would keep the next one waiting forever.
    async with Simulator(pcu=609, latency=0.5) as sim:
        client = InverterClient("127.0.0.1", sim.port or 0, timeout=2, retries=0)
        task = asyncio.create_task(client.connect())
        await asyncio.sleep(0.1)  # connected, 0x98 asked, not yet answered
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not client.connected
        sim.latency = 0
        identity = await client.connect()
        assert identity.serial == sim.model.serial
        await client.close()


async def test_an_echoed_request_is_never_taken_for_the_reply() -> None:
    """A Wi-Fi module that echoes what it gets: the echo (0x64 -> 0x14) is no reply."""
    from sermatec_bridge.protocol import frame
    from sermatec_bridge.simulator.model import InverterModel

    model = InverterModel(pcu=609)

    async def echo_then_answer(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        frames = frame.FrameReader()
        while data := await reader.read(4096):
            for item in frames.feed(data):
                assert isinstance(item, frame.Frame)
                writer.write(item.encode())  # the echo comes first
                writer.write(frame.reply(item.command, model.payload(item.command)))
        writer.close()

    server = await asyncio.start_server(echo_then_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, InverterClient("127.0.0.1", port, timeout=2) as client:
        assert client.identity is not None and client.identity.version == 609
        (reading,) = await client.query(0x0C)
        assert reading.values["inverter_on"] is True


async def test_a_known_identity_saves_the_identity_query_until_a_reconnection() -> None:
    async with Simulator() as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as first:
            known = first.identity
        sim.received.clear()
        sim.inject(Fault.SILENCE)  # the first 0x0a goes unanswered: a new connection
        async with InverterClient("127.0.0.1", sim.port or 0, identity=known, timeout=0.5,
                                  backoff=0.01) as client:
            assert client.identity is known
            await client.query(tables.BATTERY)
        assert list(sim.received) == [0x0A, 0x98, 0x0A]  # who is it, after the break?
