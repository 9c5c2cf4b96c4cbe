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
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultproxy import FaultProxy

from sermatec_bridge.bridge import metrics
from sermatec_bridge.bridge.policy import Policy
from sermatec_bridge.bridge.proxy import Budget, Limits, ProxyServer
from sermatec_bridge.bridge.writes import Writer
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
    Mosquitto,
    RunningBridge,
    bridge_overrides,
    clean_env,
    deep_merge,
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


async def start_proxied(ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator,
                        **changes: Any) -> tuple[RunningBridge, int]:
    """A bridge with its app proxy on a free port, ready; the simulator's log cleared."""
    port = free_port()
    bridge = start_bridge(deep_merge({"inverter": {"proxy_port": port},
                                      "proxy": {"host": HOST}, "poll": {"slow": 60.0}},
                                     changes))
    await wait_ready(ha)
    sim.received.clear()
    return bridge, port


@pytest.fixture
async def proxied(ha: HomeAssistant, start_bridge: BridgeFactory,
                  sim: Simulator) -> tuple[RunningBridge, int]:
    """A bridge with its app proxy at default settings (but for its address)."""
    return await start_proxied(ha, start_bridge, sim)


@pytest.fixture
async def writable(ha: HomeAssistant, start_bridge: BridgeFactory,
                   sim: Simulator) -> tuple[RunningBridge, int]:
    """A bridge with its app proxy, and settings writes on (writes.enabled)."""
    return await start_proxied(ha, start_bridge, sim,
                               writes={"enabled": True, "min_interval": 0})


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
        writable: tuple[RunningBridge, int], ha: HomeAssistant, sim: Simulator) -> None:
    bridge, port = writable
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


async def test_with_writes_off_the_proxy_refuses_app_writes(
        proxied: tuple[RunningBridge, int], sim: Simulator) -> None:
    bridge, port = proxied
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


@pytest.fixture
async def registers(ha: HomeAssistant, start_bridge: BridgeFactory,
                    sim: Simulator) -> tuple[RunningBridge, int]:
    """A bridge whose app proxy lets the register query through (proxy.allow)."""
    return await start_proxied(ha, start_bridge, sim, proxy={"allow": ["registers"]})

async def test_vanishing_client_after_register_part1_sends_nothing(
        registers: tuple[RunningBridge, int], sim: Simulator, ha: HomeAssistant) -> None:
    _, port = registers
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
        registers: tuple[RunningBridge, int], sim: Simulator) -> None:
    _, port = registers
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


async def test_other_request_after_part1_abandons_it(registers: tuple[RunningBridge, int],
                                                     sim: Simulator) -> None:
    _, port = registers
    app = await AppClient.connect(port)
    try:
        await app.ask(0xBB, b"\x00\x01")
        assert await app.ask(0x98) == expected(sim, 0x98)
        await app.send(frame.request(0xBB, b"\x00\x05"))  # no part 1 pending: a new part 1
        assert (await app.replies(1))[0].encode() == frame.reply(0xBB, b"\x00\x05")
    finally:
        await app.close()
    assert 0xBB not in sim.received and not sim.blocked




async def test_register_query_part1_beyond_ten_registers_reaches_nothing(
        registers: tuple[RunningBridge, int], sim: Simulator) -> None:
    bridge, port = registers
    app = await AppClient.connect(port)
    try:
        await app.send(frame.request(0xBB, b"\x00\x0b"))  # 11 registers: no such exchange
        await app.send(frame.request(0xBB, bytes(22)))  # and its part 2
        await eventually(lambda: proxy_stats(bridge).dropped["bad register query"] == 2)
        assert await app.silent(0.3)
        assert await app.ask(0x98) == expected(sim, 0x98)  # then served as usual
    finally:
        await app.close()
    assert 0xBB not in sim.received and not sim.blocked


# --------------------------------------------------------------------------------------
# Bad input, floods, stalls, an unreachable inverter
# --------------------------------------------------------------------------------------


async def test_bad_input_is_dropped_and_the_client_still_served(
        writable: tuple[RunningBridge, int], sim: Simulator) -> None:
    bridge, port = writable
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
    stats = proxy_stats(bridge)
    assert stats.dropped == {"garbage": 1, "bad frame": 1, "unknown command": 1,
                             "not a request": 1}
    assert stats.writes == {"refused": 1}


async def test_flood_is_throttled_and_live_cadence_holds(
        proxied: tuple[RunningBridge, int], ha: HomeAssistant, sim: Simulator) -> None:
    bridge, port = proxied
    _, server = bridge.bridge.proxies[0]
    now = 1000.0
    server.budget = Budget(server.limits.rate, server.limits.burst, clock=lambda: now)
    sim.latency = 0.05
    flood = await AppClient.connect(port)
    phone = await AppClient.connect(port)
    mark = ha.mark()
    sent = 0
    try:
        # No token comes back while the clock stands: the flood lasts until Home
        # Assistant has seen three new live states, which the polls deliver meanwhile.
        async with asyncio.timeout(30):
            while len(ha.on(topic("live"), mark)) < 3:
                await flood.send(frame.request(0x0A) * 10)
                sent += 10
                await asyncio.sleep(0.05)
        stats = proxy_stats(bridge)
        await eventually(lambda: stats.forwarded + stats.dropped["throttled"] == sent,
                         what="every flood request answered or dropped")
        assert stats.forwarded == server.limits.burst  # the burst, then nothing
        assert len(await flood.replies(server.limits.burst)) == server.limits.burst
        await phone.send(frame.request(0x98))  # the budget is shared: the phone waits too
        await eventually(lambda: stats.dropped["throttled"] == sent - server.limits.burst + 1)
        now += 1 / server.limits.rate  # one token back
        assert await phone.ask(0x98) == expected(sim, 0x98)
    finally:
        await flood.close()
        await phone.close()


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
        await eventually(lambda: proxy_stats(bridge).dropped["inverter unavailable"] == 1,
                         what="the request dropped")
        assert await app.silent(0.5), "and no reply"
        mark = ha.mark()
        await sim.start(HOST, inverter_port)
        await ha.wait_text(topic("availability"), "online", within=10, after=mark)
        assert await app.ask(0x98) == expected(sim, 0x98)
    finally:
        await app.close()


# --------------------------------------------------------------------------------------
# What a client on the LAN may do, at default settings and with proxy.allow
# --------------------------------------------------------------------------------------

# Well-formed requests a hostile client could send, each fitting the tables.
FORBIDDEN = {
    "reset": frame.request(0x70, codec.build(COMMANDS[0x70], VERSION, {"reset": "reset"})),
    "new cloud server": frame.request(0x9F, codec.build(COMMANDS[0x9F], VERSION, {
        "cloud_server": "203.0.113.9", "cloud_port": "19042"})),
    "new router": frame.request(0x9E, codec.build(COMMANDS[0x9E], VERSION, {
        "wifi_mode": 1, "router_ssid": "evil", "router_password": "evil-pass"})),
    "new router and cloud": frame.request(0xB0, codec.build(COMMANDS[0xB0], VERSION, {
        "wifi_mode": 1, "router_ssid": "evil", "router_password": "evil-pass",
        "cloud_server": "203.0.113.9", "cloud_port": "19042"})),
    "register write": frame.request(0xBA, codec.build(COMMANDS[0xBA], VERSION, {
        "register_count": 1, "registers": [{"address": 0x1000, "value": 1}]})),
    "switch off": frame.request(0x64, codec.build(COMMANDS[0x64], VERSION,
                                                  {"inverter_on": False})),
}


@pytest.fixture
async def recorded(ha: HomeAssistant, start_bridge: BridgeFactory,
                   sim: Simulator) -> AsyncIterator[tuple[RunningBridge, int, FaultProxy]]:
    """A bridge at default settings (but for the proxy's port and address) whose inverter
    sits behind a recording proxy: every request that reaches the inverter is seen."""
    async with FaultProxy(sim.port or 0) as recorder:
        bridge, port = await start_proxied(ha, start_bridge, sim,
                                           inverter={"port": recorder.port})
        recorder.seen.clear()
        yield bridge, port, recorder


async def test_at_default_settings_a_client_can_read_and_nothing_else(
        bridge_log: Callable[[], list[dict[str, Any]]],  # first: the bridge logs into it
        recorded: tuple[RunningBridge, int, FaultProxy], sim: Simulator) -> None:
    bridge, port, recorder = recorded
    settings, network = dict(sim.model.settings), sim.model.values(0xB1)
    app = await AppClient.connect(port)
    try:
        for request in FORBIDDEN.values():
            await app.send(request)
        await app.send(frame.request(0xB1))
        await app.send(frame.request(0xBB, b"\x00\x01"))
        await eventually(lambda: proxy_stats(bridge).dropped["not allowed"] == 8)
        assert await app.silent(0.3)  # no reply to any of them: no password either
        assert await app.ask(0x0A) == expected(sim, 0x0A)  # reads pass
    finally:
        await app.close()
    await eventually(lambda: proxy_stats(bridge).clients == 0)
    assert not set(recorder.seen) - {0x0A, 0x0B, 0x0C, 0x0D, 0x98, 0x95, 0x9D, 0xA1, 0xA2,
                                     0x1E, 0x1F, 0x9C, 0x97}, recorder.seen  # queries only
    assert {0x70, 0x9F, 0x9E, 0xB0, 0xBA, 0x64, 0xB1, 0xBB}.isdisjoint(recorder.seen)
    assert sim.model.settings == settings and sim.model.values(0xB1) == network
    assert proxy_stats(bridge).forwarded == 1
    assert proxy_stats(bridge).writes == {"refused": 6}
    await bridge.stop()
    refused = [line for line in bridge_log() if line["event"] == "app requests dropped"]
    assert len(refused) == 2  # the first at once, the others counted (said at the latest
    assert refused[0]["counts"] == {"not allowed 0x70": 1}  # when the bridge stops)
    assert "only when proxy.allow names it" in refused[0]["detail"]
    assert refused[0]["client"] == HOST
    assert sum(refused[1]["counts"].values()) == 7


async def test_a_client_that_connects_again_and_again_costs_a_line_a_minute(
        bridge_log: Callable[[], list[dict[str, Any]]],
        proxied: tuple[RunningBridge, int]) -> None:
    """Connect, send garbage, hang up, 300 times: the drops of one address are counted
    over its connections, and the connections themselves are not logged at info level."""
    bridge, port = proxied
    lines = len(bridge_log())
    for _ in range(300):
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"\x00garbage" * 10)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await eventually(lambda: proxy_stats(bridge).dropped["garbage"] == 300,
                     what="every connection's garbage counted")
    await eventually(lambda: proxy_stats(bridge).clients == 0)
    await bridge.stop()
    said = bridge_log()[lines:]
    dropped = [line for line in said if line["event"] == "app requests dropped"]
    assert sum(line["counts"]["garbage bytes"] for line in dropped) == 300 * 80
    assert len(dropped) == 2, "the first at once, the rest when the bridge stopped"
    assert not [line for line in said if line["event"].startswith("app proxy client")]


async def test_a_command_named_in_proxy_allow_passes(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    _, port = await start_proxied(ha, start_bridge, sim, proxy={"allow": ["0xb1"]})
    app = await AppClient.connect(port)
    try:
        assert await app.ask(0xB1) == expected(sim, 0xB1)  # the user asked for it
    finally:
        await app.close()


async def test_app_writes_are_checked_as_home_assistants_are(
        writable: tuple[RunningBridge, int], sim: Simulator) -> None:
    bridge, port = writable
    app = await AppClient.connect(port)
    before = dict(sim.model.settings)
    grid = frame.request(0x69, codec.encode(COMMANDS[0x69], VERSION, {
        **sim.model.values(0x95), "grid_code": 2}))
    try:
        await app.send(app_settings_write(sim, grid_soc_min=5))  # below its limit of 10
        await app.send(grid)  # grid code and battery type: only while the inverter is off
        await eventually(lambda: proxy_stats(bridge).writes["refused"] == 2)
        await app.send(FORBIDDEN["switch off"])  # a settings write within its limits
        await eventually(lambda: proxy_stats(bridge).writes["passed"] == 1)
        assert await app.ask(0x0C) == expected(sim, 0x0C)
    finally:
        await app.close()
    assert sim.model.settings["grid_soc_min"] == before["grid_soc_min"]
    assert sim.model.settings["grid_code"] == before["grid_code"]
    assert sim.received.count(0x66) == 0 and sim.received.count(0x69) == 0
    assert codec.decode(COMMANDS[0x0C], VERSION, sim.model.payload(0x0C)).values[
        "inverter_on"] is False


async def test_clients_from_networks_not_allowed_are_disconnected_at_once(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    bridge, port = await start_proxied(ha, start_bridge, sim,
                                       proxy={"allowed_networks": ["192.0.2.0/24"]})
    app = await AppClient.connect(port)
    try:
        async with asyncio.timeout(5):
            assert await app.reader.read(4096) == b""  # hung up without a word
    finally:
        await app.close()
    assert proxy_stats(bridge).clients == 0 and 0x98 not in sim.received


async def test_forty_app_clients_never_crowd_out_home_assistants_writes(
        writable: tuple[RunningBridge, int], ha: HomeAssistant, sim: Simulator) -> None:
    bridge, port = writable
    runtime = bridge.bridge.workers[0]
    writes = {"grid_soc_min": 21, "off_grid_soc_min": 22, "grid_export_limit": 2300,
              "charge_power_limit": 2400, "discharge_power_limit": 2500}
    apps = [await AppClient.connect(port) for _ in range(40)]
    mark = ha.mark()
    try:
        # While the inverter's queue slot is held (as by a long read-modify-write), the
        # crowd fills every place app requests may take, and Home Assistant writes.
        async with runtime.client.session():
            for app in apps:  # each opens a page: three reads at once
                await app.send(frame.request(0x0A) + frame.request(0x0B) +
                               frame.request(0x0C))
            await eventually(lambda: proxy_stats(bridge).dropped["queue full"] > 0,
                             what="the app requests' room full")
            assert proxy_stats(bridge).dropped["inverter unavailable"] == 0
            crowd = len(runtime.intake)
            for key, value in writes.items():
                await ha.publish(topic(f"set/{key}"), str(value))
            await eventually(lambda: len(runtime.intake) == crowd + 5, what="the writes queued")
        await ha.wait_for(lambda m: len(ha.on(topic("set/result"), mark)) == 5, after=mark,
                          within=30, what="five results")
    finally:
        for app in apps:
            await app.close()
    results = [m.json() for m in ha.on(topic("set/result"), mark)]
    assert [r["ok"] for r in results] == [True] * 5, results
    assert {k: sim.model.settings[k] for k in writes} == writes


# --------------------------------------------------------------------------------------
# Limits, on a proxy over a plain client (no bridge): stalls, the rate, the client cap
# --------------------------------------------------------------------------------------


class ClientRuntime:
    """The proxy's runtime over a bare InverterClient: one session per exchange."""

    def __init__(self, client: InverterClient) -> None:
        self.client = client
        self.writer = Writer(client)
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
    limits = Limits(rate=2.0, burst=3, idle=1.5, clients=3)
    async with InverterClient(HOST, sim.port or 0, timeout=1.0) as client:
        server = ProxyServer(ClientRuntime(client), name="test", policy=Policy(),
                             limits=limits)
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
    async with asyncio.timeout(limits.idle + 5):
        assert await app.reader.read(4096) == b""  # the proxy hung up
    assert time.monotonic() - started >= limits.idle - 0.1
    await eventually(lambda: server.stats.clients == 0, within=2)
    await app.close()


async def test_a_client_that_does_not_read_its_replies_is_disconnected(
        direct: tuple[ProxyServer, Limits]) -> None:
    server, limits = direct
    assert server.port is not None
    server.budget = Budget(rate=1e9, burst=10**6)  # as many as it asks for
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # a full buffer, soon
    sock.connect((HOST, server.port))
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        await eventually(lambda: server.stats.clients == 1)
        writer.write(frame.request(0x99) * 2000)  # 500 KB of replies, never read
        await eventually(lambda: server.stats.clients == 0, within=limits.idle + 20,
                         what="the client that reads nothing disconnected")
    finally:
        writer.close()


async def test_rate_limit_drops_the_excess(direct: tuple[ProxyServer, Limits],
                                           sim: Simulator) -> None:
    server, limits = direct
    assert server.port is not None
    now = 0.0
    server.budget = Budget(limits.rate, limits.burst, clock=lambda: now)
    app = await AppClient.connect(server.port)
    try:
        await app.send(frame.request(0x98) * 10)
        await app.replies(limits.burst)
        await eventually(lambda: server.stats.dropped["throttled"] == 10 - limits.burst)
        assert await app.silent(0.3)
        now += 1 / limits.rate  # a token comes back
        assert await app.ask(0x98) == expected(sim, 0x98)
    finally:
        await app.close()


async def test_clients_beyond_the_cap_are_disconnected_at_once(
        direct: tuple[ProxyServer, Limits], sim: Simulator) -> None:
    server, limits = direct
    assert server.port is not None
    apps = [await AppClient.connect(server.port) for _ in range(limits.clients)]
    await eventually(lambda: server.stats.clients == limits.clients)
    extra = [await AppClient.connect(server.port) for _ in range(5)]
    try:
        for app in extra:
            async with asyncio.timeout(5):
                assert await app.reader.read(4096) == b""
        assert await apps[0].ask(0x98) == expected(sim, 0x98)  # the others still served
        assert server.stats.clients == limits.clients
    finally:
        for app in apps + extra:
            await app.close()


async def test_session_relay_returns_the_inverters_frames(sim: Simulator) -> None:
    async with InverterClient(HOST, sim.port or 0, timeout=1.0) as client:
        async with client.session() as session:
            assert isinstance(session, Session)
            replies = await session.relay(frame.parse_frame(frame.request(0x95)))
    assert b"".join(f.encode() for f in replies) == expected(sim, 0x95)


async def test_a_crowd_and_a_garbage_streamer_never_exhaust_the_bridges_files(
        broker: Mosquitto, sim: Simulator, ha: HomeAssistant, tmp_path: Path) -> None:
    """The daemon with a file limit of 64 (its own files leave room for one client): a
    crowd of 150 idle clients and one streaming garbage take none of the files it needs
    to poll, publish and write its heartbeat."""
    port = free_port()
    settings = bridge_overrides(broker.port, sim.port or 0, tmp_path)
    settings["inverter"]["proxy_port"] = port
    settings["proxy"] = {"host": HOST}
    settings["log"] = {"format": "json"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    log = tmp_path / "bridge.log"

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with log.open("wb") as out:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sermatec_bridge", "run", "-c", str(config),
            env=clean_env(), stdout=out, stderr=out, preexec_fn=few_files)
    crowd: list[AppClient] = []
    try:
        await wait_ready(ha)
        garbage = await AppClient.connect(port)
        for _ in range(150):
            with contextlib.suppress(OSError):
                crowd.append(await AppClient.connect(port))
        mark = ha.mark()
        for _ in range(40):
            await garbage.send(bytes(range(0x10, 0xF0)) * 256)
        await ha.wait_for(lambda m: len(ha.on(topic("live"), mark)) >= 3, after=mark,
                          within=30, what="three live states meanwhile")
        check = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sermatec_bridge", "health", "-c", str(config),
            env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await check.communicate()
        assert check.returncode == 0, out.decode() + err.decode()
    finally:
        for app in crowd:
            await app.close()
        daemon.terminate()
        await daemon.wait()
    text = log.read_text()
    assert "Too many open files" not in text and "Traceback" not in text
    assert len(text) < 64 * 1024, len(text)  # no line per read, per refused connection
    garbage_lines = [line for line in text.splitlines() if "garbage bytes" in line]
    assert 1 <= len(garbage_lines) <= 2  # the first at once, the rest counted at the end


async def test_a_refused_network_write_never_puts_its_password_in_the_log(
        bridge_log: Callable[[], list[dict[str, Any]]],  # first: the bridge logs into it
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    bridge, port = await start_proxied(ha, start_bridge, sim, proxy={"allow": ["0x94"]})
    secret = "hunter2-hunter2-hunter2"  # longer than an access-point password may be
    app = await AppClient.connect(port)
    try:
        await app.send(frame.request(0x94, secret.encode()))
        await eventually(lambda: proxy_stats(bridge).dropped["malformed write"] == 1)
    finally:
        await app.close()
    assert 0x94 not in sim.received
    assert secret not in str(bridge_log()) and secret.encode().hex() not in str(bridge_log())
