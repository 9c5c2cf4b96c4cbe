"""The app proxy, end to end: clients written for the inverter talk to the bridge's port.

The simulator's clock is frozen here, so every reply it gives is the same bytes each
time: a reply through the proxy can be compared byte for byte with what the simulated
inverter sends. The stand-in for the vendor's app is the third-party package
``sermatec-inverter`` (its CLI, in a subprocess), plus :class:`AppClient`, a raw-frame
client for exact checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sermatec_bridge.bridge import metrics
from sermatec_bridge.bridge.proxy import Limits, ProxyServer
from sermatec_bridge.inverter.client import InverterClient, InverterError, Session
from sermatec_bridge.protocol import codec, frame, tables
from sermatec_bridge.protocol.tables import COMMANDS
from sermatec_bridge.simulator import Simulator

from .conftest import (
    HOST,
    LIVE,
    SERIAL,
    BridgeFactory,
    HomeAssistant,
    RunningBridge,
    eventually,
    free_port,
    topic,
    wait_ready,
)

FROZEN = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
VERSION = 609
WRITE_CODES = frozenset(c for c, cmd in COMMANDS.items() if cmd.is_write)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(pcu=VERSION, seed=11, clock=lambda: FROZEN) as simulator:
        yield simulator


def expected(sim: Simulator, code: int) -> bytes:
    """The bytes the simulated inverter answers ``code`` with."""
    replies = tables.replies(COMMANDS[code], VERSION)
    return b"".join(frame.reply(r, sim.model.payload(r)) for r in replies)


class AppClient:
    """A raw client written for the inverter: sends bytes, collects whole reply frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = frame.FrameReader()
        self.received: list[frame.Frame] = []

    @classmethod
    async def connect(cls, port: int) -> AppClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def replies(self, count: int, within: float = 5.0) -> list[frame.Frame]:
        """The next ``count`` reply frames (fails when they do not come in time)."""
        async with asyncio.timeout(within):
            while len(self.received) < count:
                data = await self.reader.read(4096)
                if not data:
                    raise AssertionError("the proxy hung up")
                for item in self.frames.feed(data):
                    assert isinstance(item, frame.Frame), item
                    self.received.append(item)
        out, self.received = self.received[:count], self.received[count:]
        return out

    async def ask(self, code: int, payload: bytes = b"", count: int = 1) -> bytes:
        await self.send(frame.request(code, payload))
        return b"".join(f.encode() for f in await self.replies(count))

    async def silent(self, seconds: float) -> bool:
        """True when nothing arrives for ``seconds`` (and the connection stays open)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                data = await self.reader.read(4096)
                return not data
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def app_cli(port: int, *groups: str) -> str:
    """Run the third-party client's CLI against the proxy; its standard output."""
    args = [a for g in groups for a in ("-g", g)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sermatec_inverter", HOST, "--port", str(port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.fixture
async def proxied(ha: HomeAssistant, start_bridge: BridgeFactory,
                  sim: Simulator) -> AsyncIterator[tuple[RunningBridge, int]]:
    """A bridge with its app proxy on a free port, ready; the simulator's log cleared."""
    port = free_port()
    bridge = start_bridge({"inverter": {"proxy_port": port, "proxy_host": HOST},
                           "poll": {"slow": 60.0}})
    await wait_ready(ha)
    sim.received.clear()
    yield bridge, port


def proxy_stats(bridge: RunningBridge) -> metrics.ProxyStats:
    return bridge.bridge.workers[0].stats.proxy


# --------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------


async def test_reads_are_the_inverters_bytes(proxied: tuple[RunningBridge, int],
                                             sim: Simulator) -> None:
    bridge, port = proxied
    app = await AppClient.connect(port)
    try:
        for code in (0x98, 0x0A, 0x0B):
            assert await app.ask(code) == expected(sim, code), f"0x{code:02x}"
        assert await app.ask(0x95, count=2) == expected(sim, 0x95)  # 0x95 + 0x9d
    finally:
        await app.close()
    assert proxy_stats(bridge).forwarded == 4
    assert 0x95 in sim.received



async def test_home_assistant_gets_the_proxy_entity(proxied: tuple[RunningBridge, int],
                                                   ha: HomeAssistant) -> None:
    _, port = proxied
    app = await AppClient.connect(port)
    try:
        mark = ha.mark()
        state = await ha.wait_json(topic("proxy"), lambda s: s["clients"] == 1, after=mark)
    finally:
        await app.close()
    assert state == {"clients": 1, "forwarded": 0, "writes_passed": 0, "writes_refused": 0,
                     "dropped": 0}
    found = await ha.wait_for(lambda m: m.topic.startswith("homeassistant/")
                              and "proxy_clients" in m.text, what="the proxy entity")
    assert found.retain


async def test_third_party_app_reads_through_the_proxy(proxied: tuple[RunningBridge, int],
                                                       sim: Simulator) -> None:
    _, port = proxied
    out = await app_cli(port, "serial", "battery", "grid")
    lines = out.splitlines()
    assert lines[0] == SERIAL
    battery, grid = eval(lines[1]), eval(lines[2])  # the CLI prints Python dicts
    assert battery["battery_SOC"] == round(sim.model.values(0x0A)["battery_soc"])
    assert battery["battery_state"] in ("charging", "discharging", "stand-by")
    assert grid["grid_frequency"] == pytest.approx(sim.model.values(0x0B)["grid_frequency"])
    parameters = eval((await app_cli(port, "parameters")).strip())  # 0x95 alone: see README
    assert parameters["lower_limit_ongrid_soc"] == sim.model.settings["grid_soc_min"]


async def test_two_clients_at_once_each_answered_in_order(
        proxied: tuple[RunningBridge, int], sim: Simulator) -> None:
    _, port = proxied
    phone, tablet = await AppClient.connect(port), await AppClient.connect(port)
    try:
        phone_asks = [0x98, 0x0A, 0x0B, 0x0C, 0x0A]
        tablet_asks = [0x0B, 0x98, 0x0D, 0x0A, 0x98]
        await phone.send(b"".join(frame.request(c) for c in phone_asks))
        await tablet.send(b"".join(frame.request(c) for c in tablet_asks))
        cli = asyncio.create_task(app_cli(port, "serial", "battery"))
        got_phone = await phone.replies(len(phone_asks))
        got_tablet = await tablet.replies(len(tablet_asks))
        assert [f.encode() for f in got_phone] == [expected(sim, c) for c in phone_asks]
        assert [f.encode() for f in got_tablet] == [expected(sim, c) for c in tablet_asks]
        assert (await cli).splitlines()[0] == SERIAL
    finally:
        await phone.close()
        await tablet.close()


# --------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------


def app_settings_write(sim: Simulator, **changes: Any) -> bytes:
    """A 0x66 write as the app builds it: the current 0x95 block with ``changes``."""
    current = dict(codec.decode_payload(0x95, VERSION, sim.model.payload(0x95)).values)
    current["tou_schedule"] = current["tou_schedule"][:current["tou_count"]]  # slots in use
    return frame.request(0x66, codec.encode(COMMANDS[0x66], VERSION, {**current, **changes}))


async def test_app_write_passes_and_the_bridge_publishes_the_new_state(
        proxied: tuple[RunningBridge, int], ha: HomeAssistant, sim: Simulator) -> None:
    bridge, port = proxied
    assert sim.model.settings["grid_soc_min"] != 35
    mark = ha.mark()
    app = await AppClient.connect(port)
    try:
        await app.send(app_settings_write(sim, grid_soc_min=35))
        # slow groups are polled once a minute here: this state comes from the refresh
        state = await ha.wait_json(topic("settings"), lambda s: s.get("grid_soc_min") == 35,
                                   after=mark, within=5)
    finally:
        await app.close()
    assert state["grid_soc_min"] == 35 and sim.model.settings["grid_soc_min"] == 35
    assert proxy_stats(bridge).writes["passed"] == 1
    diagnostic = await ha.wait_json(topic("proxy"), lambda s: s["writes_passed"] == 1,
                                    after=mark, within=5)
    assert diagnostic["forwarded"] == 1
    text = metrics.exposition(bridge.bridge)
    assert f'sermatec_proxy_writes_total{{inverter="{SERIAL}",result="passed"}} 1' in text


async def test_read_only_proxy_refuses_writes(ha: HomeAssistant, start_bridge: BridgeFactory,
                                              sim: Simulator) -> None:
    port = free_port()
    bridge = start_bridge({"inverter": {"proxy_port": port, "proxy_host": HOST,
                                        "proxy_writes": False}})
    await wait_ready(ha)
    sim.received.clear()
    before = sim.model.settings["grid_soc_min"]
    app = await AppClient.connect(port)
    try:
        await app.send(app_settings_write(sim, grid_soc_min=35))
        assert await app.silent(0.5)
        assert await app.ask(0x98) == expected(sim, 0x98)  # reads still pass
    finally:
        await app.close()
    assert not WRITE_CODES & set(sim.received)
    assert sim.model.settings["grid_soc_min"] == before
    assert proxy_stats(bridge).writes["refused"] == 1
    assert proxy_stats(bridge).writes["passed"] == 0


# --------------------------------------------------------------------------------------
# The register query 0xbb
# --------------------------------------------------------------------------------------


async def test_vanishing_client_after_register_part1_sends_nothing(
        proxied: tuple[RunningBridge, int], sim: Simulator, ha: HomeAssistant) -> None:
    _, port = proxied
    app = await AppClient.connect(port)
    part1 = b"\x00\x02"
    assert await app.ask(0xBB, part1) == frame.reply(0xBB, part1)  # acknowledged locally
    await app.close()
    await asyncio.sleep(0.2)
    assert 0xBB not in sim.received
    assert not sim.blocked
    other = await AppClient.connect(port)
    try:
        assert await other.ask(0x98) == expected(sim, 0x98)  # the inverter still answers
    finally:
        await other.close()
    mark = ha.mark()
    await ha.wait_json(topic("live"), after=mark, within=3 * LIVE)


async def test_whole_register_query_goes_through_in_one_slot(
        proxied: tuple[RunningBridge, int], sim: Simulator) -> None:
    _, port = proxied
    sim.model.registers[0x1234] = 77
    app = await AppClient.connect(port)
    try:
        await app.ask(0xBB, b"\x00\x02")
        await asyncio.sleep(0.3)  # polls run meanwhile: part 1 must not be on the wire yet
        assert 0xBB not in sim.received
        reply = await app.ask(0xBB, b"\x12\x34\x00\x01")
    finally:
        await app.close()
    values = codec.decode(COMMANDS[0xBB], VERSION, frame.parse_frame(reply).payload).values
    assert [(r["address"], r["value"]) for r in values["registers"]] == [(0x1234, 77), (1, 0)]
    at = [i for i, c in enumerate(sim.received) if c == 0xBB]
    assert len(at) == 2 and at[1] == at[0] + 1  # back to back
    assert not sim.blocked


async def test_other_request_after_part1_abandons_it(proxied: tuple[RunningBridge, int],
                                                     sim: Simulator) -> None:
    _, port = proxied
    app = await AppClient.connect(port)
    try:
        await app.ask(0xBB, b"\x00\x01")
        assert await app.ask(0x98) == expected(sim, 0x98)
        await app.send(frame.request(0xBB, b"\x00\x05"))  # no part 1 pending: a new part 1
        assert (await app.replies(1))[0].encode() == frame.reply(0xBB, b"\x00\x05")
    finally:
        await app.close()
    assert 0xBB not in sim.received and not sim.blocked


# --------------------------------------------------------------------------------------
# Bad input, floods, stalls, an unreachable inverter
# --------------------------------------------------------------------------------------


async def test_bad_input_is_dropped_and_the_client_still_served(
        proxied: tuple[RunningBridge, int], sim: Simulator) -> None:
    bridge, port = proxied
    bad_checksum = bytearray(frame.request(0x0A))
    bad_checksum[-2] ^= 0xFF
    app = await AppClient.connect(port)
    try:
        await app.send(b"\x01\x02garbage\x03")
        await eventually(lambda: proxy_stats(bridge).dropped["garbage"] == 1)
        await app.send(bytes(bad_checksum))
        await eventually(lambda: proxy_stats(bridge).dropped["bad frame"] == 1)
        await app.send(frame.request(0x42))  # a command the tables do not know
        await app.send(frame.reply(0x0A, b""))  # a reply, not a request
        await app.send(frame.request(0x66, b"\x01"))  # a write that does not fit the tables
        assert await app.silent(0.5)
        assert await app.ask(0x98) == expected(sim, 0x98)
    finally:
        await app.close()
    assert sim.received.count(0x0A) == sim.received.count(0x0B)  # only the bridge's polls
    assert not {0x42, 0x66} & set(sim.received)
    dropped = proxy_stats(bridge).dropped
    assert dropped == {"garbage": 1, "bad frame": 1, "unknown command": 1,
                       "not a request": 1, "malformed write": 1}


async def test_flood_is_throttled_and_live_cadence_holds(
        proxied: tuple[RunningBridge, int], ha: HomeAssistant, sim: Simulator) -> None:
    bridge, port = proxied
    sim.latency = 0.05
    flood = await AppClient.connect(port)
    phone = await AppClient.connect(port)
    mark = ha.mark()
    started = time.monotonic()
    try:
        for _ in range(40):  # 400 requests in 4 s: 100 per second
            await flood.send(frame.request(0x0A) * 10)
            await asyncio.sleep(0.1)
        assert await phone.ask(0x98) == expected(sim, 0x98)  # other clients still served
        elapsed = time.monotonic() - started
        await ha.wait_json(topic("live"), after=mark)
    finally:
        await flood.close()
        await phone.close()
    stats, limits = proxy_stats(bridge), Limits()
    await eventually(lambda: stats.forwarded + stats.dropped["throttled"] == 401,
                     what="every flood request answered or dropped")
    answered = stats.forwarded - 1  # the phone's
    assert answered <= limits.burst + limits.rate * (time.monotonic() - started) + 2
    lives = [m.at for m in ha.on(topic("live"), mark)]
    assert len(lives) >= int(elapsed / LIVE) - 1
    gaps = [b - a for a, b in itertools.pairwise([started, *lives])]
    assert max(gaps) < 2 * LIVE + 0.5, gaps


async def test_proxy_gives_no_reply_while_the_inverter_is_unreachable(
        proxied: tuple[RunningBridge, int], ha: HomeAssistant, sim: Simulator) -> None:
    bridge, port = proxied
    inverter_port = sim.port
    assert inverter_port is not None
    mark = ha.mark()
    await sim.stop()
    await ha.wait_text(topic("availability"), "offline", within=10, after=mark)
    app = await AppClient.connect(port)
    try:
        await app.send(frame.request(0x98))
        assert await app.silent(1.0)
        assert proxy_stats(bridge).dropped["inverter unavailable"] == 1
        mark = ha.mark()
        await sim.start(HOST, inverter_port)
        await ha.wait_text(topic("availability"), "online", within=10, after=mark)
        assert await app.ask(0x98) == expected(sim, 0x98)
    finally:
        await app.close()


# --------------------------------------------------------------------------------------
# Limits, on a proxy over a plain client (no bridge): stalls and the rate
# --------------------------------------------------------------------------------------


class ClientRuntime:
    """The proxy's runtime over a bare InverterClient: one session per exchange."""

    def __init__(self, client: InverterClient) -> None:
        self.client = client
        self.refreshed: list[tuple[str, ...]] = []

    async def exchange(self, job: Any, *, timeout: float) -> Any:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                async with self.client.session() as session:
                    return await job(session)
        except TimeoutError:
            raise InverterError("no turn") from None

    def refresh(self, *groups: str) -> None:
        self.refreshed.append(groups)


@pytest.fixture
async def direct(sim: Simulator) -> AsyncIterator[tuple[ProxyServer, Limits]]:
    limits = Limits(rate=2.0, burst=3, idle=1.5)
    async with InverterClient(HOST, sim.port or 0, timeout=1.0) as client:
        server = ProxyServer(ClientRuntime(client), name="test", limits=limits)
        task = asyncio.create_task(server.serve(HOST, 0))
        await asyncio.wait_for(server.listening.wait(), 5)
        yield server, limits
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_stalled_client_is_disconnected(direct: tuple[ProxyServer, Limits]) -> None:
    server, limits = direct
    assert server.port is not None
    app = await AppClient.connect(server.port)
    await eventually(lambda: server.stats.clients == 1, within=2)
    await app.send(frame.request(0x98)[:4])  # half a frame, then nothing
    started = time.monotonic()
    async with asyncio.timeout(limits.idle + 2):
        assert await app.reader.read(4096) == b""  # the proxy hung up
    assert limits.idle - 0.1 <= time.monotonic() - started < limits.idle + 1.0
    await eventually(lambda: server.stats.clients == 0, within=2)
    await app.close()


async def test_rate_limit_drops_the_excess(direct: tuple[ProxyServer, Limits],
                                           sim: Simulator) -> None:
    server, limits = direct
    assert server.port is not None
    app = await AppClient.connect(server.port)
    try:
        await app.send(frame.request(0x98) * 10)
        await app.replies(limits.burst)
        assert await app.silent(0.3)
        assert server.stats.dropped["throttled"] == 10 - limits.burst
        await asyncio.sleep(1 / limits.rate)  # a token comes back
        assert await app.ask(0x98) == expected(sim, 0x98)
    finally:
        await app.close()


async def test_session_relay_returns_the_inverters_frames(sim: Simulator) -> None:
    async with InverterClient(HOST, sim.port or 0, timeout=1.0) as client:
        async with client.session() as session:
            assert isinstance(session, Session)
            replies = await session.relay(frame.parse_frame(frame.request(0x95)))
    assert b"".join(f.encode() for f in replies) == expected(sim, 0x95)
