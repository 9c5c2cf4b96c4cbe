"""The cloud link: inverters that dial in to the bridge, and the vendor cloud relayed.

The simulator runs in station mode (it dials the bridge's cloud listener, plain or RC4,
as a real inverter dials its cloud server), a stand-in cloud (tests/standincloud.py)
takes the relay's link and sends queries and writes, and a real Mosquitto carries what
Home Assistant sees. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from standincloud import StandInCloud

from sermatec_bridge.bridge.cloud import Listener
from sermatec_bridge.bridge.metrics import CloudStats
from sermatec_bridge.config import Settings, load_settings
from sermatec_bridge.inverter.client import InverterClient
from sermatec_bridge.protocol import codec, frame, tables
from sermatec_bridge.simulator import Fault, Simulator

from .conftest import (
    BASE,
    HOST,
    LIVE,
    SERIAL,
    TIMEOUT,
    HomeAssistant,
    Mosquitto,
    RunningBridge,
    bridge_overrides,
    deep_merge,
    eventually,
    free_port,
    topic,
    wait_ready,
)
from .test_metrics import sample, scrape
from .test_proxy import FROZEN, app_settings_write

VERSION = 609


def cloud_settings(broker: Mosquitto, listen_port: int, tmp_path: Path,
                   changes: Mapping[str, Any] | None = None) -> Settings:
    """The test bridge's settings with the cloud listener on and no inverter listed: an
    inverter that dials in is served with the timeout and retries of ``inverter``."""
    base = bridge_overrides(broker.port, 0, tmp_path)
    base["inverter"] = {"timeout": TIMEOUT, "retries": 1}
    base["cloud"] = {"listen_port": listen_port, "listen_host": HOST}
    return load_settings(overrides=deep_merge(base, changes or {}), env={})


BridgeStarter = Callable[..., RunningBridge]


@pytest.fixture
def listen_port() -> int:
    return free_port()


@pytest.fixture
async def cloud_bridge(broker: Mosquitto, listen_port: int,
                       tmp_path: Path) -> AsyncIterator[BridgeStarter]:
    """``cloud_bridge(changes)``: a bridge whose cloud listener is on ``listen_port``."""
    running: list[RunningBridge] = []

    def start(changes: Mapping[str, Any] | None = None) -> RunningBridge:
        bridge = RunningBridge(cloud_settings(broker, listen_port, tmp_path, changes)).start()
        running.append(bridge)
        return bridge

    yield start
    for bridge in running:
        await bridge.stop()


def station(listen_port: int, **kw: Any) -> Simulator:
    """A simulated inverter in station mode, dialling the bridge's cloud listener."""
    return Simulator(**{"pcu": VERSION, "seed": 11, "cloud": (HOST, listen_port),
                        "dial_interval": 0.2, **kw})


def listener(bridge: RunningBridge) -> Listener:
    assert bridge.bridge.listener is not None
    return bridge.bridge.listener


def request(code: int, values: Mapping[str, Any] | None = None) -> bytes:
    command = tables.COMMANDS[code]
    return frame.request(code, codec.build(command, VERSION, dict(values)) if values else b"")


# --------------------------------------------------------------------------------------
# Inverters that dial in
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rc4", [False, True], ids=["plain", "rc4"])
async def test_states_come_from_an_inverter_that_dials_in(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int, rc4: bool) -> None:
    """No inverter listed, no route to its port 8899: the inverter dials in, is
    identified (plain, or RC4 after the plain 0x98 got no answer) and served."""
    bridge = cloud_bridge()
    async with station(listen_port, rc4=rc4) as sim:
        await wait_ready(ha)
        device = await ha.wait_for(lambda m: m.topic == f"homeassistant/device/{SERIAL}/config",
                                   what="the device's discovery")
        assert device.retain and "battery_soc" in device.json()["cmps"]
        assert sim.clients == 0  # nobody ever connected to the inverter's own port
        assert sim.cloud_links == 1
        worker = bridge.bridge.dialling[SERIAL]
        assert worker.client.connection is not None
        assert worker.client.connection.rc4 is rc4  # the bridge's polls in its encoding
        assert not worker.relayed  # no cloud.upstream: the vendor cloud hears nothing
        assert "cloud_link" not in device.json()["cmps"]


async def test_the_inverter_serves_the_bridge_on_its_link_and_a_client_on_its_port(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int) -> None:
    cloud_bridge()
    async with station(listen_port) as sim:
        await wait_ready(ha)
        mark = ha.mark()
        async with InverterClient(HOST, sim.port or 0, timeout=5, retries=0) as local:
            answered = [(await local.query(0x0A))[0].command.code for _ in range(20)]
        assert answered == [0x0A] * 20
        await ha.wait_json(topic("live"), after=mark)  # and the bridge kept polling
        assert sim.clients == 1 and sim.cloud_links == 1


async def test_a_listed_inverter_is_served_by_serial_with_its_writes_and_app_proxy(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int) -> None:
    """Listed by serial: a write sent before the inverter has dialled in waits for it
    and is applied once it has; its app proxy serves the app over the dialled link."""
    proxy_port = free_port()
    bridge = cloud_bridge({"inverters": [{"serial": SERIAL, "name": "garage",
                                          "proxy_port": proxy_port}],
                           "writes": {"enabled": True}, "proxy": {"host": HOST}})
    await ha.wait_text(f"{BASE}/bridge/state", "online")
    mark = ha.mark()
    await ha.publish(topic("set/grid_soc_min"), "33")  # nobody has dialled in yet
    async with station(listen_port) as sim:
        result = await ha.wait_json(topic("set/result"), after=mark, within=15)
        assert result["ok"] and result["changed"] == {"grid_soc_min": 33}, result
        assert sim.model.settings["grid_soc_min"] == 33
        reader, writer = await asyncio.open_connection(HOST, proxy_port)
        try:
            writer.write(frame.request(0x98))
            frames = frame.FrameReader()
            got: list[frame.Frame | frame.FrameError] = []
            while not got:
                got += frames.feed(await asyncio.wait_for(reader.read(4096), 5))
            assert got[0] == frame.parse_frame(frame.reply(0x98, sim.model.payload(0x98)))
        finally:
            writer.close()
    assert bridge.bridge.workers[0].config.label == "garage"


async def test_a_write_for_an_inverter_not_seen_yet_waits_for_its_first_dial(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int) -> None:
    """No inverter listed: any serial may still dial in, so its writes are held."""
    cloud_bridge({"writes": {"enabled": True}})
    await ha.wait_text(f"{BASE}/bridge/state", "online")
    mark = ha.mark()
    await ha.publish(topic("set/grid_soc_min"), "34")
    async with station(listen_port) as sim:
        result = await ha.wait_json(topic("set/result"), after=mark, within=15)
        assert result["ok"], result
        assert sim.model.settings["grid_soc_min"] == 34


async def test_an_unlisted_inverter_is_refused_when_only_listed_ones_are_accepted(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        bridge_log: Callable[[], list[dict[str, Any]]]) -> None:
    bridge = cloud_bridge({"inverters": [{"serial": SERIAL}],
                           "cloud": {"accept_unlisted": False}})
    async with station(listen_port, serial="ST5K0STRANGER0001") as stranger, \
            station(listen_port):
        await wait_ready(ha)  # the listed one
        reason = "not listed by serial (cloud.accept_unlisted is false)"
        await eventually(lambda: listener(bridge).refusals[reason] >= 2,
                         what="the stranger refused, twice")
        assert stranger.cloud_links >= 2  # it got in, said who it is, was hung up on
    assert not ha.on(topic("availability", "ST5K0STRANGER0001"))
    assert [w.serial for w in bridge.bridge.workers] == [SERIAL]
    refused = [line for line in bridge_log() if line["event"] == "cloud connections refused"]
    assert refused[0]["counts"] == {reason: 1} and refused[0]["serial"] == "ST5K0STRANGER0001"


async def test_a_dial_from_a_network_not_allowed_is_refused_at_once(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int) -> None:
    bridge = cloud_bridge({"cloud": {"allowed_networks": ["192.0.2.0/24"]}})
    async with station(listen_port) as sim:
        reason = "not in cloud.allowed_networks"
        await eventually(lambda: listener(bridge).refusals[reason] >= 3)
        assert 0x98 not in sim.received  # not even asked who it is
    assert bridge.bridge.workers == []
    assert not ha.on(topic("availability"))


async def test_a_link_that_drops_and_comes_back_keeps_the_inverter_online(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        bridge_log: Callable[[], list[dict[str, Any]]]) -> None:
    """The real inverter dials again every second: a poll that finds the link gone
    waits for the next dial, and nothing shows the gap."""
    cloud_bridge()
    async with station(listen_port) as sim:
        await wait_ready(ha)
        mark = ha.mark()
        for links in (2, 3):
            sim.inject(Fault.DROP)  # it hangs up instead of answering the next request
            await eventually(lambda n=links: sim.cloud_links == n, within=10)  # type: ignore[misc]
            await ha.wait_json(topic("live"), after=ha.mark())
    assert [m.text for m in ha.on(topic("availability"), after=mark)] == []
    said = {line["event"] for line in bridge_log()}
    assert not said & {"inverter not answering", "inverter offline"}, said


async def test_an_inverter_that_stays_away_goes_offline_and_comes_back(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int) -> None:
    cloud_bridge()
    async with station(listen_port):
        await wait_ready(ha)
    mark = ha.mark()
    await ha.wait_text(topic("availability"), "offline", after=mark, within=15)
    async with station(listen_port):
        await ha.wait_text(topic("availability"), "online", after=mark, within=15)
        await ha.wait_json(topic("settings"), after=mark)  # everything read again


async def test_a_second_dial_from_the_same_serial_replaces_the_first(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        bridge_log: Callable[[], list[dict[str, Any]]]) -> None:
    """Another connection says it is the same inverter (a module that redials while its
    old link lingers, or a clone): it takes the place of the old one, which is closed.
    Five such dials cost no line each: the dials are counted, a line a minute."""
    bridge = cloud_bridge()
    async with station(listen_port, dial_interval=30.0) as sim:  # it dials once, here
        await wait_ready(ha)
        client = bridge.bridge.dialling[SERIAL].client
        first = client.connection
        clones: list[asyncio.StreamWriter] = []
        try:
            for _ in range(5):
                before = client.connection
                reader, writer = await asyncio.open_connection(HOST, listen_port)
                clones.append(writer)
                frames = frame.FrameReader(rc4=True)
                items: list[frame.Frame | frame.FrameError] = []
                while not items:  # another link that answers who it is, as the inverter
                    items += frames.feed(await asyncio.wait_for(reader.read(4096), 5))
                assert isinstance(items[0], frame.Frame) and items[0].command == 0x98
                writer.write(frame.reply(0x98, sim.model.payload(0x98)))
                await eventually(lambda: client.connection is not before,  # noqa: B023
                                 what="the link replaced")
                assert before is not None and not before.open
            assert not sim.cloud_connected, "the first link closed"
            assert first is not None and not first.open
        finally:
            for writer in clones:
                writer.close()
    await bridge.stop()
    dials = [line for line in bridge_log() if line["event"] == "inverter dialled in"]
    again = "again, its new connection replacing the open one"
    assert [line["counts"] for line in dials] == [{again: 1}, {again: 4}]
    assert len(bridge.bridge.workers) == 1


async def test_garbage_half_frames_and_silence_on_the_listener_cost_nothing(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int) -> None:
    """Whatever a stranger sends (garbage, half a frame, nothing), it is asked who it is,
    hung up on after the timeout, and counted; the inverter being served never notices."""
    bridge = cloud_bridge()
    async with station(listen_port):
        await wait_ready(ha)
        strangers = [await asyncio.open_connection(HOST, listen_port) for _ in range(3)]
        garbage, half, _ = (writer for _, writer in strangers)
        garbage.write(os.urandom(4096).replace(b"\xfe", b"\x00").replace(b"\x75", b"\x00"))
        half.write(frame.reply(0x98, b"\x00" * 40)[:20])
        started = time.monotonic()
        mark = ha.mark()
        for reader, _ in strangers:
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(reader.read(4096), 10):
                    pass  # the two 0x98 requests, then the end
        assert time.monotonic() - started < 2 * TIMEOUT + 5
        reason = "no answer to 0x98 (the identity query)"
        assert listener(bridge).refusals == {reason: 3}
        await ha.wait_json(topic("live"), after=mark)
        assert not [m for m in ha.on(topic("availability"), after=mark) if m.text != "online"]
        for _, writer in strangers:
            writer.close()


async def test_metrics_count_inverter_links_relayed_and_refused_requests(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        vendor: StandInCloud) -> None:
    metrics_port = free_port()
    bridge = cloud_bridge(relayed(vendor, health={"metrics_port": metrics_port}))
    async with station(listen_port):
        await wait_ready(ha)
        link = await vendor.link()
        await link.ask(0x98)
        link.writer.write(CLOUD_WRITES["reset"])
        await eventually(lambda: cloud_stats(bridge).dropped["not allowed"] == 1)
        await asyncio.open_connection(HOST, listen_port)  # a stranger, not identified yet
        _, body = await scrape(metrics_port)
    assert sample(body, "sermatec_cloud_inverters_connected") == 1
    assert sample(body, f'sermatec_cloud_link_up{{inverter="{SERIAL}"}}') == 1
    assert sample(body, f'sermatec_cloud_requests_relayed_total{{inverter="{SERIAL}"}}') == 1
    assert sample(body, "sermatec_cloud_requests_refused_total{"
                        f'inverter="{SERIAL}",reason="not allowed"}}') == 1


# --------------------------------------------------------------------------------------
# The vendor cloud, relayed
# --------------------------------------------------------------------------------------


@pytest.fixture
async def vendor() -> AsyncIterator[StandInCloud]:
    """The vendor cloud, stood in for: it takes the relay's link and sends requests."""
    async with StandInCloud() as stand_in:
        yield stand_in


def relayed(vendor: StandInCloud, **changes: Any) -> dict[str, Any]:
    return deep_merge({"cloud": {"upstream": f"{HOST}:{vendor.address[1]}"}}, changes)


def cloud_stats(bridge: RunningBridge) -> CloudStats:
    return bridge.bridge.dialling[SERIAL].stats.cloud


@pytest.mark.parametrize(("inverter_rc4", "cloud_rc4"),
                         [(False, False), (True, True), (False, True)],
                         ids=["plain", "rc4", "cloud-rc4-inverter-plain"])
async def test_the_relay_answers_the_clouds_queries_in_its_encoding(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        vendor: StandInCloud, inverter_rc4: bool, cloud_rc4: bool) -> None:
    bridge = cloud_bridge(relayed(vendor))
    async with station(listen_port, rc4=inverter_rc4, clock=lambda: FROZEN) as sim:
        await wait_ready(ha)
        link = await vendor.link()  # the bridge dialled the cloud for the inverter
        for code in (0x98, 0x0A, 0x95):
            reply = await link.ask(code, rc4=cloud_rc4)
            assert (reply.command, reply.rc4) == (code, cloud_rc4)
            assert reply.payload == sim.model.payload(code)
            if code == 0x95:  # and its second frame
                second = await link.next_frame()
                assert (second.command, second.rc4) == (0x9D, cloud_rc4)
        state = await ha.wait_json(topic("cloud"), lambda s: s["relayed"] == 3)
    assert state == {"link": "up", "relayed": 3, "refused": 0, "reasons": {},
                     "writes_refused": 0}
    assert cloud_stats(bridge).forwarded == 3
    device = ha.on(f"homeassistant/device/{SERIAL}/config")[-1].json()
    entity = device["cmps"]["cloud_link"]
    assert (entity["p"], entity["dev_cla"], entity["ent_cat"]) == (
        "binary_sensor", "connectivity", "diagnostic")


CLOUD_WRITES = {  # and a settings write (0x66), built from the inverter's current block
    "switch off": request(0x64, {"inverter_on": False}),
    "reset": request(0x70, {"reset": "reset"}),
    "new cloud server": request(0x9F, {"cloud_server": "203.0.113.9", "cloud_port": "19042"}),
    "new router": request(0x9E, {"wifi_mode": 1, "router_ssid": "evil",
                                 "router_password": "evil-pass"}),
    "register write": request(0xBA, {"register_count": 1,
                                     "registers": [{"address": 0x1000, "value": 1}]}),
    "register query": frame.request(0xBB, b"\x00\x01"),
    "Wi-Fi password": frame.request(0xB1),
}


async def test_the_relay_refuses_the_clouds_writes_and_changes_nothing(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        vendor: StandInCloud, bridge_log: Callable[[], list[dict[str, Any]]]) -> None:
    bridge = cloud_bridge(relayed(vendor))
    async with station(listen_port) as sim:
        await wait_ready(ha)
        settings, network = dict(sim.model.settings), sim.model.values(0xB1)
        link = await vendor.link()
        sim.received.clear()
        refused = [app_settings_write(sim, grid_soc_min=50), *CLOUD_WRITES.values()]
        for data in refused:
            link.writer.write(data)
        await eventually(lambda: cloud_stats(bridge).dropped["not allowed"] == len(refused))
        assert await link.silent(0.5)  # no reply, not the Wi-Fi password either
        assert (await link.ask(0x0A)).command == 0x0A  # queries still pass
        state = await ha.wait_json(topic("cloud"), lambda s: s["refused"] == len(refused))
    assert sim.model.settings == settings and sim.model.values(0xB1) == network
    assert {0x66, 0x64, 0x70, 0x9F, 0x9E, 0xBA, 0xBB, 0xB1}.isdisjoint(sim.received)
    assert state["reasons"] == {"not allowed": len(refused)}
    assert state["writes_refused"] == 6  # 0x66, 0x64, 0x70, 0x9f, 0x9e, 0xba
    refused = [line for line in bridge_log() if line["event"] == "cloud requests dropped"]
    assert refused[0]["counts"] == {"not allowed 0x66": 1}
    assert "only when cloud.allow names it" in refused[0]["detail"]
    logged = "\n".join(str(line) for line in bridge_log())
    assert "evil-pass" not in logged and str(sim.model.settings["router_password"]) not in logged


async def test_a_settings_write_named_in_cloud_allow_is_checked_and_applied(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        vendor: StandInCloud) -> None:
    bridge = cloud_bridge(relayed(vendor, cloud={"allow": ["0x66"]},
                                  writes={"enabled": True}))
    async with station(listen_port) as sim:
        await wait_ready(ha)
        link = await vendor.link()
        link.writer.write(app_settings_write(sim, grid_soc_min=42))
        await eventually(lambda: sim.model.settings["grid_soc_min"] == 42, within=10)
        # below the tables' limit (10 %): refused as one from Home Assistant would be
        link.writer.write(app_settings_write(sim, grid_soc_min=5))
        await eventually(lambda: cloud_stats(bridge).writes["refused"] == 1, within=10)
    assert sim.model.settings["grid_soc_min"] == 42
    assert cloud_stats(bridge).writes["passed"] == 1


async def test_a_flooding_cloud_is_throttled_and_the_live_cadence_holds(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        vendor: StandInCloud) -> None:
    bridge = cloud_bridge(relayed(vendor, writes={"enabled": True}))
    async with station(listen_port):
        await wait_ready(ha)
        link = await vendor.link()
        stats = cloud_stats(bridge)
        mark = ha.mark()
        sent = 0

        async def flood() -> None:  # 400 requests a second, for four live intervals
            nonlocal sent
            until = time.monotonic() + 4 * LIVE
            while time.monotonic() < until:
                link.writer.write(frame.request(0x0A) * 20)
                sent += 20
                await asyncio.sleep(0.05)

        flooding = asyncio.create_task(flood())
        result = await ha.write("set/grid_soc_min", "31")  # Home Assistant keeps its room
        await flooding
        await eventually(lambda: stats.forwarded + stats.dropped["throttled"] == sent,
                         within=30, what="every flood request answered or dropped")
        lives = [m.at for m in ha.on(topic("live"), after=mark)]
    assert result["ok"], result
    assert stats.forwarded <= 10 + 2 * 4 * LIVE + 4  # the burst, then 2 a second
    gaps = [b - a for a, b in itertools.pairwise(lives)]
    assert len(lives) >= 3 and max(gaps) < 2.5 * LIVE, gaps


async def test_an_upstream_that_refuses_appears_vanishes_and_goes_with_the_inverter(
        cloud_bridge: BridgeStarter, ha: HomeAssistant, listen_port: int,
        bridge_log: Callable[[], list[dict[str, Any]]]) -> None:
    upstream = free_port()  # nothing listens there yet: the cloud refuses
    bridge = cloud_bridge({"cloud": {"upstream": f"{HOST}:{upstream}"}})
    sim = station(listen_port)
    await sim.start()
    try:
        await wait_ready(ha)
        await eventually(lambda: any(line["event"] == "vendor cloud not reachable"
                                     for line in bridge_log()))
        async with StandInCloud(upstream) as vendor:
            first = await asyncio.wait_for(vendor.links.get(), 20)  # tried again, got in
            assert (await first.ask(0x98)).command == 0x98
            first.close()  # the cloud vanishes: the relay dials again
            second = await asyncio.wait_for(vendor.links.get(), 20)
            assert (await second.ask(0x0A)).command == 0x0A
            await ha.wait_json(topic("cloud"), lambda s: s["link"] == "up")
            await sim.stop()  # the inverter goes: so does its link to the cloud
            gone = time.monotonic()
            await second.wait_closed_by_inverter()
            assert time.monotonic() - gone < TIMEOUT + 3
    finally:
        await sim.stop()
    assert cloud_stats(bridge).clients == 0
    events = [line["event"] for line in bridge_log()]
    assert events.count("vendor cloud link up") == 2
    assert events.count("vendor cloud link down") == 2
