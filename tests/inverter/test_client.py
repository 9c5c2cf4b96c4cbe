"""The inverter clients against the simulator, over real TCP on loopback.

The tests of what both clients do (identify, retry, match and decode replies) run each
client: the asyncio one, and the command line's blocking one (driven from the event loop
through a worker thread, so the simulator in the loop keeps serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from faultproxy import FaultProxy
from ports import free_port

from sermatec_bridge.inverter.blocking import BlockingClient
from sermatec_bridge.inverter.client import (
    Connection,
    InverterBusy,
    InverterClient,
    InverterTimeout,
    InverterUnreachable,
    MalformedReply,
    NotOffered,
    identify,
)
from sermatec_bridge.log import get_logger
from sermatec_bridge.protocol import frame, tables
from sermatec_bridge.simulator import Fault, Simulator

log = get_logger(__name__)
STATIC = (0x98, 0x95, 0x9D, 0xA1, 0xA2, 0xB1, 0x1E, 0x1F)


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


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition did not hold"
        await asyncio.sleep(0.02)


async def test_reads_identity_and_every_query_through_latency_and_one_byte_chunks(
        Client: Any) -> None:
    async with Simulator(pcu=609, model="10kw", latency=0.01, chunk=1) as sim:
        async with Client("127.0.0.1", sim.port or 0, timeout=5) as client:
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


async def test_0x95_is_answered_by_two_frames_matched_to_one_request(Client: Any) -> None:
    async with Simulator(pcu=609) as sim, Client("127.0.0.1", sim.port or 0) as client:
        readings = await client.query(0x95)
        assert [r.command.code for r in readings] == [0x95, 0x9D]
        assert readings[1].values["off_grid_soc_min"] == sim.model.settings["off_grid_soc_min"]


async def test_late_reply_never_reaches_the_next_caller(Client: Any) -> None:
    # The next request goes out at once, so the late reply arrives while it waits for its
    # own: only a fresh connection keeps it away (draining stale frames would not).
    async with Simulator(pcu=609) as sim:
        client = Client("127.0.0.1", sim.port or 0, timeout=1.0, retries=0)
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


async def test_a_late_reply_that_came_before_the_next_request_is_dropped(Client: Any) -> None:
    async with Simulator(pcu=609) as sim:
        client = Client("127.0.0.1", sim.port or 0, timeout=0.3, retries=0)
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


async def test_a_hang_up_between_two_queries_costs_no_retry(Client: Any) -> None:
    async with Simulator(pcu=609) as sim:
        port = sim.port or 0
        async with Client("127.0.0.1", port, timeout=1, retries=0) as client:
            await sim.stop()  # the inverter hangs up between two requests (a power cycle)
            await sim.start(port=port)
            await eventually(lambda: not client.connected)
            sim.received.clear()
            assert (await client.query(0x0C))[0].command.code == 0x0C
            assert list(sim.received) == [0x98, 0x0C]  # a new connection, asked who it is


async def test_an_inverter_that_hangs_up_is_told_as_such(Client: Any) -> None:
    async with Simulator(pcu=609) as sim, Client("127.0.0.1", sim.port or 0, timeout=2,
                                                 retries=0) as client:
        sim.inject(Fault.DROP)
        with pytest.raises(InverterUnreachable, match=rf"127\.0\.0\.1:{sim.port} hung up"):
            await client.query(0x0C)


async def test_a_peer_that_chatters_but_never_answers_times_out_at_the_deadline(
        Client: Any) -> None:
    """Frames that keep coming, none of them the reply, do not stretch the wait."""
    from sermatec_bridge.simulator.model import InverterModel

    model = InverterModel(pcu=609)

    async def chatter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read(4096)  # the identity query, answered
            writer.write(frame.reply(0x98, model.payload(0x98)))
            await reader.read(4096)  # anything else: strays, until the client hangs up
            while not reader.at_eof():
                writer.write(frame.reply(0x0B, model.payload(0x0B)))
                await writer.drain()
                await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_server(chatter, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Client("127.0.0.1", port, timeout=0.5, retries=0) as client:
        with pytest.raises(InverterTimeout, match=r"no reply 0x0c .* within 0\.5 s"):
            await asyncio.wait_for(client.query(0x0C), 30)


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


async def test_recovers_from_garbage_bad_checksums_and_dropped_connections(Client: Any) -> None:
    async with Simulator(pcu=609, seed=1) as sim:
        async with Client("127.0.0.1", sim.port or 0, timeout=0.5, retries=3,
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


async def test_unreachable_inverter_is_a_clear_error(Client: Any) -> None:
    client = Client("127.0.0.1", free_port(), timeout=1)
    with pytest.raises(InverterUnreachable, match=r"cannot reach the inverter at 127\.0\.0\.1:"
                                                  r"\d+: Connection refused$"):
        await client.connect()


async def test_an_inverter_busy_with_another_client_is_told_apart_from_an_unreachable_one(
        Client: Any) -> None:
    # Like the Wi-Fi module, the simulator accepts a second client and never answers it.
    async with Simulator(pcu=609) as sim, Client("127.0.0.1", sim.port or 0):
        second = Client("127.0.0.1", sim.port or 0, timeout=0.3, retries=1,
                        backoff=0.01)
        with pytest.raises(InverterBusy, match=(
                rf"connected to 127\.0\.0\.1:{sim.port} but the inverter does not answer: "
                r"no reply 0x98 \(the identity query\) within 0\.3 s, 2 tries; "
                r"it is probably busy with another client")):
            await second.connect()
        assert not second.connected


async def test_an_inverter_that_stops_answering_is_told_busy_with_the_wait_it_got(
        Client: Any) -> None:
    """With the wait learnt from the round trips, the message names the wait the last
    try had (the floor, 1 s), not the longer one the miss made for the next try."""
    def busy_after_the_first(request: frame.Frame, connection: int) -> list[bytes] | None:
        if connection > 1:
            return []  # another client has it: the identity query gets no answer
        return [frame.reply(0x0C, b"\x00\x01")] if request.command == 0x0C else None

    async with FakeInverter(busy_after_the_first) as fake:
        client = Client("127.0.0.1", fake.port, timeout=5, retries=0, adaptive=True)
        await client.connect()
        with pytest.raises(MalformedReply):  # drops the connection
            await client.query(0x0C)
        with pytest.raises(InverterBusy, match=r"within 1 s, 1 tries"):
            await client.query(0x0C)


@pytest.mark.parametrize("fault", [Fault.SILENCE, Fault.DROP])
async def test_the_identity_query_is_retried_like_any_other(fault: Fault, Client: Any) -> None:
    async with Simulator(pcu=609) as sim:
        sim.inject(fault, 2)
        client = Client("127.0.0.1", sim.port or 0, timeout=0.3, retries=2,
                        backoff=0.01)
        identity = await client.connect()
        assert identity.serial == sim.model.serial
        assert list(sim.received) == [0x98, 0x98, 0x98]
        await client.close()


async def test_the_identity_query_gives_up_after_its_retries(Client: Any) -> None:
    async with Simulator(pcu=609) as sim:
        sim.inject(Fault.SILENCE, 2)
        client = Client("127.0.0.1", sim.port or 0, timeout=0.3, retries=1,
                        backoff=0.01)
        with pytest.raises(InverterBusy):
            await client.connect()
        assert list(sim.received) == [0x98, 0x98]


async def test_a_write_is_not_answered_and_takes_effect() -> None:
    async with Simulator(pcu=609) as sim, InverterClient("127.0.0.1", sim.port or 0) as client:
        await client.write(0x64, {"inverter_on": False})
        status = await client.query(0x0C)
        assert status[0].values["inverter_on"] is False


async def test_commands_the_version_lacks_are_refused_before_sending(Client: Any) -> None:
    async with Simulator(pcu=252) as sim, Client("127.0.0.1", sim.port or 0) as client:
        sent = len(sim.received)
        with pytest.raises(NotOffered, match="not offered by PCU version 252"):
            await client.query(0xA2)
        assert len(sim.received) == sent


async def test_register_query_reads_pairs(Client: Any) -> None:
    async with Simulator(pcu=609) as sim, Client("127.0.0.1", sim.port or 0) as client:
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


async def test_register_query_sends_part_2_even_when_part_1_is_not_acknowledged(
        Client: Any) -> None:
    async with Simulator(pcu=609, latency=0.4) as sim:
        sim.latency = 0
        async with Client("127.0.0.1", sim.port or 0, timeout=0.25, retries=0) as client:
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


async def test_an_echoed_request_is_never_taken_for_the_reply(Client: Any) -> None:
    """A Wi-Fi module that echoes what it gets: the echo (0x64 -> 0x14) is no reply."""
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
    async with server, Client("127.0.0.1", port, timeout=2) as client:
        assert client.identity is not None and client.identity.version == 609
        (reading,) = await client.query(0x0C)
        assert reading.values["inverter_on"] is True


async def test_a_known_identity_saves_the_identity_query_until_a_reconnection(Client: Any) -> None:
    async with Simulator() as sim:
        async with Client("127.0.0.1", sim.port or 0) as first:
            known = first.identity
        sim.received.clear()
        sim.inject(Fault.SILENCE)  # the first 0x0a goes unanswered: a new connection
        async with Client("127.0.0.1", sim.port or 0, identity=known, timeout=0.5,
                          backoff=0.01) as client:
            assert client.identity is known
            await client.query(tables.BATTERY)
        assert list(sim.received) == [0x0A, 0x98, 0x0A]  # who is it, after the break?


# --------------------------------------------------------------------------------------
# A hand-made inverter, for what the simulator never does
# --------------------------------------------------------------------------------------

class FakeInverter:
    """An inverter on loopback answering from a model; ``answer(request, connection)``
    may replace the bytes of any answer (None: the model's). Counts its connections."""

    def __init__(self, answer: Any = None, pcu: int = 609) -> None:
        from sermatec_bridge.simulator.model import InverterModel

        self.model = InverterModel(pcu=pcu)
        self.answer = answer
        self.connections = 0
        self.received: list[tuple[int, int]] = []  # (connection, command)
        self.hung_up: list[int] = []  # connections the client closed
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeInverter:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        frames = frame.FrameReader()
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                for item in frames.feed(data):
                    assert isinstance(item, frame.Frame)
                    self.received.append((number, item.command))
                    custom = self.answer(item, number) if self.answer else None
                    if custom is None:
                        codes = tables.replies(tables.COMMANDS[item.command], 609)
                        custom = [frame.reply(c, self.model.payload(c)) for c in codes]
                    for data_out in custom:
                        writer.write(data_out)
            self.hung_up.append(number)
        writer.close()


async def test_a_reply_too_short_for_its_layout_is_an_inverter_error_and_ends_the_connection(
        Client: Any) -> None:
    def short_0x0a(request: frame.Frame, connection: int) -> list[bytes] | None:
        return [frame.reply(0x0A, b"\x00\x01")] if request.command == 0x0A else None

    async with FakeInverter(short_0x0a) as fake:
        client = Client("127.0.0.1", fake.port, timeout=2, retries=2)
        await client.connect()
        with pytest.raises(MalformedReply, match=r"malformed reply 0x0a from 127\.0\.0\.1:\d+ "
                                                 r"\(2 bytes\): 0x0a payload of 2 bytes is "
                                                 "shorter than"):
            await client.query(0x0A)
        assert not client.connected
        await eventually(lambda: fake.hung_up == [1])  # the socket was closed, not left open
        assert [c for _, c in fake.received].count(0x0A) == 1  # not asked again
        assert (await client.query(0x0C))[0].command.code == 0x0C  # a new connection serves
        assert fake.connections == 2
        await client.close()


async def test_an_identity_reply_of_two_bytes_fails_the_connect_cleanly(Client: Any) -> None:
    def short_identity(request: frame.Frame, connection: int) -> list[bytes] | None:
        return [frame.reply(0x98, b"\x02\x5d")] if request.command == 0x98 else None

    async with FakeInverter(short_identity) as fake:
        client = Client("127.0.0.1", fake.port, timeout=2)
        with pytest.raises(MalformedReply, match=r"malformed reply 0x98 .*\(2 bytes\)"):
            await client.connect()
        assert not client.connected and client.identity is None
        await eventually(lambda: fake.hung_up == [1])


async def test_a_stray_network_reply_never_puts_the_router_password_in_the_log(
        capsys: pytest.CaptureFixture[str], Client: Any) -> None:
    from sermatec_bridge import log

    log.configure("debug", "json")
    secret = "correct-horse-battery"

    def with_stray_0xb1(request: frame.Frame, connection: int) -> list[bytes] | None:
        codes = tables.replies(tables.COMMANDS[request.command], 609)
        stray = frame.reply(0xB1, fake.model.payload(0xB1))
        return [stray] + [frame.reply(c, fake.model.payload(c)) for c in codes] + [stray]

    async with FakeInverter(with_stray_0xb1) as fake:
        fake.model.settings["router_password"] = secret
        assert secret.encode() in fake.model.payload(0xB1)
        async with Client("127.0.0.1", fake.port, timeout=2) as client:
            for code in (0x0A, 0x0C, 0x95):
                await client.query(code)
    err = capsys.readouterr().err
    assert "unexpected reply 0xb1" in err  # the strays are counted in the log...
    assert secret not in err and secret.encode().hex() not in err  # ...never shown


async def test_a_peer_that_floods_frames_costs_one_log_line(
        capsys: pytest.CaptureFixture[str], Client: Any) -> None:
    from sermatec_bridge import log

    log.configure("info", "json")

    def flood(request: frame.Frame, connection: int) -> list[bytes] | None:
        codes = tables.replies(tables.COMMANDS[request.command], 609)
        return [frame.reply(0x0B, b"\x00" * 40) * 200] + [
            frame.reply(c, fake.model.payload(c)) for c in codes]

    async with FakeInverter(flood) as fake:
        async with Client("127.0.0.1", fake.port, timeout=2) as client:
            for _ in range(5):
                await client.query(0x0C)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    dropped = [line for line in lines if line["event"] == "inverter frames dropped"]
    assert len(dropped) == 2  # the first, and the count of the rest when the client closed
    assert sum(d["counts"]["unexpected reply 0x0b"] for d in dropped) == 6 * 200


async def test_an_inverter_that_forces_reconnection_after_reconnection_costs_one_line(
        capsys: pytest.CaptureFixture[str], Client: Any) -> None:
    """What the connections of one inverter drop is counted across them: junk that ends
    every connection (a stray frame, then a reply too short) is not a line a connection."""
    from sermatec_bridge import log

    log.configure("info", "json")

    def junk_then_short(request: frame.Frame, connection: int) -> list[bytes] | None:
        if request.command != 0x0C:
            return None
        return [frame.reply(0x0B, b"\x00" * 40), frame.reply(0x0C, b"\x00\x01")]

    async with FakeInverter(junk_then_short) as fake:
        async with Client("127.0.0.1", fake.port, timeout=2) as client:
            for _ in range(5):
                with pytest.raises(MalformedReply):
                    await client.query(0x0C)
    assert fake.connections == 5
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    dropped = [line for line in lines if line["event"] == "inverter frames dropped"]
    assert len(dropped) == 2  # the first, and the rest when the client closed
    assert sum(d["counts"]["unexpected reply 0x0b"] for d in dropped) == 5


async def test_what_cannot_be_trusted_is_counted_by_kind_and_never_shown(
        capsys: pytest.CaptureFixture[str], Client: Any) -> None:
    """Garbage, a bad checksum, a malformed frame and one that a hang-up cut short each
    count as what they are; the malformed frame's payload is not in the log."""
    from sermatec_bridge import log
    from sermatec_bridge.simulator.model import InverterModel

    log.configure("info", "json")
    model = InverterModel(pcu=609)
    status = frame.reply(0x0C, model.payload(0x0C))
    bad_checksum = status[:-2] + bytes([status[-2] ^ 0xFF, frame.FOOTER])
    secret = b"not-for-the-log!"
    bad_pad = bytearray(frame.reply(0x0C, secret))
    bad_pad[5] = 0x01  # the byte after the command is always 0

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)  # the identity query, answered
        writer.write(frame.reply(0x98, model.payload(0x98)))
        await reader.read(4096)  # 0x0c: everything but its reply, then a hang-up
        writer.write(bytes(bad_pad) + b"garbage" + bad_checksum + status[:12])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Client("127.0.0.1", port, timeout=2, retries=0) as client:
        with pytest.raises(InverterUnreachable, match="hung up"):
            await client.query(0x0C)
    err = capsys.readouterr().err
    counts: Counter[str] = Counter()
    for line in err.splitlines():
        if (record := json.loads(line))["event"] == "inverter frames dropped":
            counts.update(record["counts"])
    assert (counts["bad checksum"], counts["malformed frame"], counts["truncated frame"]) == (
        1, 1, 1)
    assert counts["garbage bytes"] >= len(b"garbage")
    assert set(counts) == {"bad checksum", "malformed frame", "truncated frame",
                           "garbage bytes"}
    assert secret[:8].hex() not in err and b"not-for" not in err.encode()


async def test_the_connection_is_not_used_after_a_write_that_makes_the_inverter_hang_up(
) -> None:
    # Like a Wi-Fi module that restarts its network after 0x69: the old connection is
    # still open for a while, but nothing on it is answered any more.
    def deaf_after_0x69(request: frame.Frame, connection: int) -> list[bytes] | None:
        if request.command == 0x69 or (connection, 0x69) in fake.received:
            return []
        return None

    async with FakeInverter(deaf_after_0x69) as fake:
        async with InverterClient("127.0.0.1", fake.port, timeout=0.5, retries=0) as client:
            async with client.session() as session:
                shown = (await session.query(0x95))[0].values
                block = {f.key: shown[f.key] for f in tables.GRID_BATTERY_TYPE.layouts[252]}
                await session.write(0x69, block)
            status = await client.query(0x0C)  # on a new connection, answered at once
    assert status[0].values["inverter_on"] is True
    assert fake.received[-2:] == [(2, 0x98), (2, 0x0C)]


class Listener:
    """A cloud server stand-in: the connections that simulators in station mode open."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.accepted.put((reader, writer))

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return "127.0.0.1", int(self.server.sockets[0].getsockname()[1])

    async def connection(self) -> Connection:
        """The next connection an inverter opened, not identified yet."""
        reader, writer = await asyncio.wait_for(self.accepted.get(), 10)
        return Connection(reader, writer, peer="dialled", logger=log, dialled_in=True)


@pytest.mark.parametrize("rc4", [False, True])
async def test_a_connection_the_inverter_opened_is_identified_and_serves_the_client(
        rc4: bool) -> None:
    """The inverter dials us (station mode, its cloud link): the connection is identified
    with 0x98, plain first, then RC4, and the client runs its exchanges on it in the
    encoding the inverter speaks, without asking who it is again."""
    async with Listener() as listener, Simulator(
            pcu=609, cloud=listener.address, rc4=rc4, serial="ST5K0CLOUD0000007") as sim:
        connection = await listener.connection()
        identity = await identify(connection, timeout=0.5)
        assert (identity.serial, connection.rc4) == ("ST5K0CLOUD0000007", rc4)
        client = InverterClient("ST5K0CLOUD0000007", timeout=2, dialled_in=True)
        client.attach(connection, identity)
        assert (await client.query(0x0C))[0].values["inverter_on"] is True
        assert (await client.query(0x95))[1].command.code == 0x9D
        # 0x98 answered once, then the queries: the client did not ask who it is again
        assert list(sim.received) == [0x98, 0x0C, 0x95]
        await client.close()


async def test_identify_tries_the_remembered_encoding_first() -> None:
    async with Listener() as listener, Simulator(pcu=609, cloud=listener.address, rc4=True):
        connection = await listener.connection()
        started = asyncio.get_running_loop().time()
        identity = await identify(connection, timeout=3, rc4_first=True)
        assert identity.version == 609 and connection.rc4
        # no plain try waited for its 3 s first
        assert asyncio.get_running_loop().time() - started < 3
        connection.close(InverterUnreachable("done"))


async def test_a_connection_that_never_answers_who_it_is_times_out() -> None:
    async with Listener() as listener:
        _reader, writer = await asyncio.open_connection(*listener.address)
        connection = await listener.connection()
        writer.write(b"\xfe\x55\x14\x64")  # half a frame, then nothing
        with pytest.raises(InverterTimeout, match="plain or RC4"):
            await identify(connection, timeout=0.2)
        connection.close(InverterUnreachable("done"))
        writer.close()


async def test_a_new_dial_replaces_the_connection_and_a_failed_request_goes_out_on_it(
) -> None:
    async with Listener() as listener, Simulator(pcu=609, cloud=listener.address,
                                                 dial_interval=0.05) as sim:
        client = InverterClient("dialled", timeout=2, retries=1, backoff=0.01,
                                dialled_in=True)
        first = await listener.connection()
        client.attach(first, await identify(first, timeout=1))
        sim.inject(Fault.DROP)  # the inverter hangs up instead of answering, and dials again
        asked = asyncio.create_task(client.query(0x0C))
        second = await listener.connection()
        client.attach(second, await identify(second, timeout=1))
        assert (await asked)[0].command.code == 0x0C  # sent again, answered on the new one
        assert not first.open and second.open and client.connection is second
        await client.close()


async def test_a_dial_replaces_an_open_connection_and_fails_the_exchange_waiting_on_it(
) -> None:
    async with Listener() as listener, Simulator(pcu=609, cloud=listener.address) as sim:
        client = InverterClient("dialled", timeout=2, retries=0, dialled_in=True)
        first = await listener.connection()
        client.attach(first, await identify(first, timeout=1))
        sim.latency = 1.0
        asked = asyncio.create_task(client.query(0x0C))
        await eventually(lambda: 0x0C in sim.received)
        _reader, writer = await asyncio.open_connection(*listener.address)  # a second dial
        client.attach(await listener.connection(), client.identity)  # type: ignore[arg-type]
        with pytest.raises(InverterUnreachable, match="dialled in again"):
            await asked
        assert not first.open and client.connected  # the new one stays
        await client.close()
        writer.close()


@pytest.mark.parametrize("abandoned", [False, True])
async def test_a_dial_between_the_parts_of_a_register_query_gets_no_lone_part_2(
        abandoned: bool) -> None:
    """Part 2 goes out on the connection part 1 went out on: on the inverter's new link it
    would come alone. The new link stays, for the next request, also when the requester
    gave up between the parts (``abandoned``: an app proxy client hung up)."""
    async with Listener() as listener, Simulator(pcu=609, cloud=listener.address) as sim:
        client = InverterClient("dialled", timeout=2, retries=0, dialled_in=True)
        first = await listener.connection()
        client.attach(first, await identify(first, timeout=1))
        sim.latency = 1.0
        asked = asyncio.create_task(client.read_registers([0x1000]))
        await eventually(lambda: 0xBB in sim.received)  # part 1 is out
        if abandoned:
            asked.cancel()
            await asyncio.sleep(0)  # the pair goes on, shielded
        reader, writer = await asyncio.open_connection(*listener.address)  # a second dial
        second = await listener.connection()
        client.attach(second, client.identity)  # type: ignore[arg-type]
        with pytest.raises(asyncio.CancelledError if abandoned else InverterUnreachable):
            await asked
        assert not first.open and second.open and client.connection is second
        await client.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # nothing went out on it
        writer.close()


async def test_a_client_of_an_inverter_that_dials_in_waits_for_its_dial() -> None:
    async with Listener() as listener:
        client = InverterClient("ST5K0NEVER", timeout=0.2, dialled_in=True)
        with pytest.raises(InverterUnreachable, match="ST5K0NEVER has not dialled in"):
            await client.connect()
        client = InverterClient("ST5K0LATER", timeout=5, dialled_in=True)
        async with Simulator(pcu=609, cloud=listener.address, first_dial=0.3) as sim:
            waiting = asyncio.create_task(client.connect())
            connection = await listener.connection()
            client.attach(connection, await identify(connection, timeout=1))
            assert (await waiting).version == 609
            assert list(sim.received) == [0x98]  # the listener's question, not asked again
            await client.close()
