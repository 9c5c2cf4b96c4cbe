"""The broker goes away and comes back; a second bridge joins the broker by mistake.

What Home Assistant sees: states back at once, writes applied, and an inverter that one
bridge serves never shown offline because of another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import aiomqtt
from faultproxy import FaultProxy
from structlog.testing import capture_logs

from sermatec_bridge.bridge.retry import SETTLED
from sermatec_bridge.bridge.service import Bridge
from sermatec_bridge.simulator import Simulator

from .conftest import (
    BASE,
    HOST,
    SERIAL,
    HomeAssistant,
    Mosquitto,
    RunningBridge,
    eventually,
    make_settings,
    retained,
    sim_port,
    topic,
    wait_ready,
)

BRIDGE_STATE = f"{BASE}/bridge/state"
WRITES = {"writes": {"enabled": True, "min_interval": 0}}


async def publish_as_soon_as_it_listens(port: int, name: str, payload: str) -> None:
    """Publish from a client that tries every 10 ms: it beats the bridge to the broker."""
    while True:
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client(HOST, port, identifier="eager-writer",
                                      protocol=aiomqtt.ProtocolVersion.V5) as client:
                await client.publish(name, payload, qos=1)
                return
        await asyncio.sleep(0.01)


async def test_a_write_published_as_the_broker_returns_is_applied(
        mosquitto_bin: str, sim: Simulator, tmp_path: Path) -> None:
    """The broker restarts (keeping sessions); a write published before the bridge is back
    waits in the bridge's session and is applied: no guess about its age refuses it."""
    broker = Mosquitto(mosquitto_bin, tmp_path / "mosquitto", persistence=True)
    broker.start()
    try:
        async with HomeAssistant(broker.port) as ha:
            running = RunningBridge(make_settings(broker.port, sim_port(sim), tmp_path,
                                                  WRITES))
            # An age limit of 1 s: the old guess ("up to" the whole outage) refused this.
            running.bridge = Bridge(running.settings, command_deadline=1.0)
            running.start()
            try:
                await wait_ready(ha)
                broker.stop()
                await asyncio.sleep(2.0)
                broker.start()
                mark = ha.mark()
                await publish_as_soon_as_it_listens(broker.port, topic("set/grid_soc_min"),
                                                    "37")
                result = await ha.wait_json(topic("set/result"), after=mark, within=10)
                await ha.wait_json(topic("live"), after=mark, within=10)
            finally:
                await running.stop()
    finally:
        broker.stop()
    assert result["ok"] is True, result
    assert sim.model.settings["grid_soc_min"] == 37


@contextlib.asynccontextmanager
async def two_bridges(ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path,
                      second: dict[str, Any]) -> AsyncIterator[RunningBridge]:
    """The first bridge serves the simulator; then a second one starts, for the same
    inverter (which serves one client: the second gets no answer) and the same broker.
    Yields the second, running; stops it (if the test has not), checks that the first
    goes on, stops the first."""
    first = RunningBridge(make_settings(broker.port, sim_port(sim), tmp_path)).start()
    try:
        await wait_ready(ha)
        if "mqtt" not in second:  # the same client id: the first has been connected a while
            await asyncio.sleep(SETTLED)
        settings = make_settings(broker.port, sim_port(sim), tmp_path / "second", second)
        other = RunningBridge(settings).start()
        try:
            yield other
        finally:
            await other.stop()
        mark = ha.mark()
        await ha.wait_json(topic("live"), after=mark, within=10)  # the first goes on
    finally:
        await first.stop()


async def after_the_second_stopped(ha: HomeAssistant, broker: Mosquitto,
                                   other: RunningBridge) -> dict[str, str]:
    """Stop the second bridge; what the broker holds a moment later."""
    await other.stop()
    await asyncio.sleep(1.0)
    return await retained(broker.port)


def events(logs: list[MutableMapping[str, Any]], text: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if text in e["event"]]


async def test_a_second_bridge_with_its_own_client_id_never_takes_the_inverter_offline(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    second = {"mqtt": {"client_id": "garage-bridge"}}
    with capture_logs() as logs:
        async with two_bridges(ha, broker, sim, tmp_path, second) as other:
            await eventually(lambda: events(logs, "inverter not reachable yet"), within=15,
                             what="the second bridge's inverter failure")
            # past the moment it would claim the inverter, and what it sent then arrived
            await eventually(other.bridge.broker.settled.is_set, within=SETTLED + 10,
                             what="the second bridge's connection settled")
            mark = ha.mark()
            await ha.publish("test/marker", "after the claim")
            await ha.wait_text("test/marker", "after the claim", after=mark)
            on_broker = await after_the_second_stopped(ha, broker, other)
    said = events(logs, "inverter not reachable yet")[0]
    assert "another bridge" in said["reason"] and said["other_bridges"] == "sermatec-bridge"
    assert "offline" not in [m.text for m in ha.on(topic("availability"))][:-1]
    assert "offline" not in [m.text for m in ha.on(BRIDGE_STATE)][:-1]
    assert on_broker[topic("availability")] == "online"
    assert on_broker[BRIDGE_STATE] == "online"
    assert on_broker[f"{BASE}/bridge/garage-bridge/state"] == "offline", "its own, and gone"


async def test_a_second_bridge_with_the_same_client_id_gives_way(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with two_bridges(ha, broker, sim, tmp_path, {}) as other:
            await eventually(lambda: events(logs, "mqtt.client_id"), within=20,
                             what="the log naming the client id")
            assert other.bridge.broker.client is None, "the second one gave way"
            on_broker = await after_the_second_stopped(ha, broker, other)
    said = events(logs, "mqtt.client_id")[0]
    assert said["log_level"] == "error" and said["client_id"] == "sermatec-bridge"
    assert "offline" not in [m.text for m in ha.on(topic("availability"))][:-1]
    assert "offline" not in [m.text for m in ha.on(BRIDGE_STATE)][:-1]
    assert on_broker[topic("availability")] == "online"
    assert on_broker[BRIDGE_STATE] == "online"


async def test_the_bridge_that_lost_an_inverter_to_another_never_says_it_is_offline(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """Two bridges behind one address (a load balancer, say): the inverter moves from the
    first to the second. Only the bridge that said ``online`` last may say ``offline``."""
    async with FaultProxy(sim_port(sim)) as link, Simulator(pcu=609, seed=3) as same:
        first = RunningBridge(make_settings(broker.port, link.port, tmp_path)).start()
        try:
            await wait_ready(ha)
            # The inverter (the same serial) now reaches the second bridge.
            second = RunningBridge(make_settings(broker.port, sim_port(same), tmp_path / "b", {
                "mqtt": {"client_id": "second-bridge"}})).start()
            try:
                availability = topic("availability")
                await eventually(
                    lambda: first.bridge.broker.served_elsewhere(availability) is not None,
                    within=20, what="the first bridge seeing the second serve the inverter")
                mark = ha.mark()
                link.busy = True  # and no longer the first: it gives the inverter up
                link.cut()
                await eventually(lambda: not first.bridge.workers[0].online, within=30,
                                 what="the first bridge giving the inverter up")
                await asyncio.sleep(0.5)
                said = [m.text for m in ha.on(availability, after=mark)]
                on_broker = await retained(broker.port)
            finally:
                await second.stop()
            await asyncio.sleep(0.5)
            gone = await retained(broker.port)  # the second stopped; the first still runs
        finally:
            await first.stop()
    assert "offline" not in said, "the first bridge left the inverter to the second"
    assert on_broker[availability] == "online"
    assert gone[availability] == "offline", "nobody serves it: nobody says online"


async def test_the_bridge_that_lost_an_inverter_leaves_its_discovery_and_states_alone(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """Once the inverter moved to the second bridge, neither Home Assistant's birth nor a
    broker restart makes the first re-send anything of it: a device config naming the
    first bridge's state topic would make the inverter unavailable when the first stops."""
    async with FaultProxy(sim_port(sim)) as link, Simulator(pcu=609, seed=3) as same:
        first = RunningBridge(make_settings(broker.port, link.port, tmp_path)).start()
        try:
            await wait_ready(ha)
            link.busy = True  # the inverter leaves the first bridge for the second
            link.cut()
            second = RunningBridge(make_settings(broker.port, sim_port(same), tmp_path / "b", {
                "mqtt": {"client_id": "second-bridge"}})).start()
            try:
                await eventually(lambda: first.bridge.broker.released, within=30,
                                 what="the first bridge seeing the second serve the inverter")
                await ha.wait_json(topic("live"), after=ha.mark(), within=10)
                mark = ha.mark()
                await ha.publish("homeassistant/status", "online")  # Home Assistant restarts
                await eventually(lambda: all(b.bridge._birth is not None
                                             and b.bridge._birth.done()
                                             for b in (first, second)),
                                 within=10, what="both bridges re-sent what they serve")
                restarted = ha.mark()
                broker.restart()  # both connect again, and publish what they hold
                for bridge_state in (BRIDGE_STATE, f"{BASE}/bridge/second-bridge/state"):
                    await ha.wait_text(bridge_state, "online", after=restarted, within=20)
                await ha.publish("test/marker", "after the re-sending")
                await ha.wait_text("test/marker", "after the re-sending", after=restarted)
                device = f"homeassistant/device/{SERIAL}/config"
                configs = [m.text for m in ha.on(device, after=mark)]
                await first.stop()
                await asyncio.sleep(0.5)
                on_broker = await retained(broker.port)
            finally:
                await second.stop()
        finally:
            await first.stop()
    assert configs and all(f"{BASE}/bridge/second-bridge/state" in c for c in configs)
    assert on_broker[topic("availability")] == "online", "the second serves it"
    assert f"{BASE}/bridge/second-bridge/state" in on_broker[device]


async def test_with_mqtt_3_1_1_the_bridge_serves_as_with_5(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """No session kept while away, no signatures: everything else as with MQTT 5."""
    running = RunningBridge(make_settings(broker.port, sim_port(sim), tmp_path, {
        **WRITES, "mqtt": {"protocol": "3.1.1"}})).start()
    try:
        await wait_ready(ha)
        result = await ha.write("set/grid_soc_min", "33")
    finally:
        await running.stop()
    assert result["ok"] is True, result
    said = ha.on(topic("availability"))[0]
    assert said.text == "online" and not getattr(said.properties, "UserProperty", None)
