"""The bridge end to end: simulator over TCP, real Mosquitto, Home Assistant's view.

Each test asserts what Home Assistant (or a user with an MQTT client) would see on the
broker: discovery, states, availability, and how they come back after failures.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from sermatec_bridge.bridge import discovery
from sermatec_bridge.simulator import Simulator

from .conftest import (
    BASE,
    ENERGY,
    LIVE,
    PREFIX,
    SERIAL,
    TIMEOUT,
    VENV_BIN,
    BridgeFactory,
    HomeAssistant,
    Mosquitto,
    clean_env,
    retained,
    sim_port,
    topic,
    wait_ready,
)

DEVICE_TOPIC = f"{PREFIX}/device/{SERIAL}/config"
BRIDGE_STATE = f"{BASE}/bridge/state"
GROUPS = ("live", "energy", "settings", "system", "alarms")
ENERGY_DASHBOARD = ("pv_energy_total", "grid_import_total", "battery_charge_total",
                    "battery_discharge_total")
CONTROL_PLATFORMS = {"number", "select", "switch", "button"}
# How long a dead inverter may take to show as offline: two live polls, one timeout.
OFFLINE_WITHIN = 2 * LIVE + TIMEOUT + 3.0


async def device_config(ha: HomeAssistant, after: int = 0) -> dict[str, Any]:
    message = await ha.wait_topic(DEVICE_TOPIC, lambda m: bool(m.payload), after=after)
    assert message.retain, "the discovery message must be retained"
    config: dict[str, Any] = discovery.expand(message.json())  # as HA reads it
    return config


# --------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------


async def test_device_discovery_read_only(ha: HomeAssistant, start_bridge: BridgeFactory,
                                          broker: Mosquitto) -> None:
    start_bridge()
    await wait_ready(ha)
    config = await device_config(ha)

    assert config["dev"]["identifiers"] == [SERIAL]
    assert config["dev"]["serial_number"] == SERIAL
    assert config["dev"]["manufacturer"] == "Sermatec"
    assert "5 kW" in config["dev"]["model"]
    assert config["dev"]["sw_version"].startswith("PCU 609")
    assert config["o"]["name"] == "sermatec-bridge"
    assert {a["topic"] for a in config["availability"]} == {
        BRIDGE_STATE, topic("availability")}

    components: dict[str, dict[str, Any]] = config["cmps"]
    platforms = {c["p"] for c in components.values()}
    assert {"sensor", "binary_sensor"} <= platforms
    assert not platforms & CONTROL_PLATFORMS, "no controls while writes are disabled"
    for key in ENERGY_DASHBOARD:
        counter = components[key]
        assert counter["p"] == "sensor"
        assert counter["device_class"] == "energy"
        assert counter["state_class"] == "total_increasing"
        assert counter["unit_of_measurement"] == "kWh"
        assert counter["state_topic"] == topic("energy")
    assert components["problem"]["p"] == "binary_sensor"
    assert components["problem"]["device_class"] == "problem"
    assert components["battery_soc"]["device_class"] == "battery"

    # Every entity reads a key that its state topic actually carries.
    states = {topic(g): (await ha.wait_json(topic(g))) for g in GROUPS}
    for cid, component in components.items():
        if "state_topic" not in component:
            continue
        assert component["state_topic"] in states, cid
        for key in discovery.iter_state_keys(component):
            assert key in states[component["state_topic"]], (cid, key)

    # And Home Assistant finds it on the broker after connecting later.
    on_broker = await retained(broker.port)
    assert DEVICE_TOPIC in on_broker


async def test_device_discovery_with_writes_offers_controls(
        ha: HomeAssistant, start_bridge: BridgeFactory) -> None:
    start_bridge({"writes": {"enabled": True}})
    await wait_ready(ha)
    components = (await device_config(ha))["cmps"]

    def control(key: str, platform: str) -> dict[str, Any]:
        component: dict[str, Any] = components[f"set_{key}"]
        assert component["p"] == platform
        assert component["command_topic"] == topic(f"set/{key}")
        return component

    soc = control("grid_soc_min", "number")
    assert (soc["min"], soc["max"], soc["unit_of_measurement"]) == (10, 100, "%")
    assert soc["state_topic"] == topic("settings")
    control("off_grid_soc_min", "number")
    control("grid_export_limit", "number")
    control("charge_power_limit", "number")
    control("discharge_power_limit", "number")
    mode = control("operating_mode", "select")
    assert "General" in mode["options"] and "Energy storage" in mode["options"]
    switch = control("inverter_on", "switch")
    assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")
    assert switch["state_topic"] == topic("live")
    button = control("clock", "button")
    assert button["payload_press"] == "PRESS"
    # A control replaces the read-only sensor of the same setting.
    assert "grid_soc_min" not in components
    # Schedules: time entities by default, weekdays and periods in use as switches
    start = control("forced_charge_period_1_start", "time")
    assert start["state_topic"] == topic("settings")
    control("forced_discharge_period_4_in_use", "switch")
    control("forced_charge_saturday", "switch")
    control("tou_period_16_tariff", "select")
    control("tou_count", "number")
    # MQTT 5: a command queued on the broker while the bridge is away expires there after
    # the bridge's own deadline for a write, 30 s
    commands = [c for c in components.values() if "command_topic" in c]
    assert {c.get("message_expiry_interval") for c in commands} == {30}


async def test_per_entity_discovery(ha: HomeAssistant, start_bridge: BridgeFactory,
                                    broker: Mosquitto) -> None:
    """As for Home Assistant before 2024.11: one topic per entity, schedule times as text
    entities, and a broker link in MQTT 3.1.1 (no message expiry on command topics)."""
    start_bridge({"homeassistant": {"device_discovery": False, "time_platform": "text"},
                  "writes": {"enabled": True}, "mqtt": {"protocol": "3.1.1"}})
    await wait_ready(ha)
    energy = f"{PREFIX}/sensor/{SERIAL}/pv_energy_total/config"
    number = f"{PREFIX}/number/{SERIAL}/set_grid_soc_min/config"
    problem = f"{PREFIX}/binary_sensor/{SERIAL}/problem/config"
    end = f"{PREFIX}/text/{SERIAL}/set_tou_period_1_end/config"
    text = discovery.expand(await ha.wait_json(end))
    assert (text["command_topic"], text["pattern"]) == (topic("set/tou_period_1_end"),
                                                        discovery.TIME_PATTERN)
    assert "message_expiry_interval" not in text
    for name in (energy, number, problem):
        message = await ha.wait_topic(name)
        assert message.retain, name
        payload = discovery.expand(message.json())
        assert payload["dev"]["identifiers"] == [SERIAL]
        assert payload["o"]["name"] == "sermatec-bridge"
        assert len(payload["availability"]) == 2
    assert discovery.expand(await ha.wait_json(energy))["state_class"] == "total_increasing"
    assert discovery.expand(await ha.wait_json(number))["command_topic"] == topic(
        "set/grid_soc_min")

    on_broker = await retained(broker.port)
    assert {energy, number, problem} <= set(on_broker)
    assert DEVICE_TOPIC not in on_broker, "per-entity mode publishes no device config"
    per_entity = [t for t in on_broker if t.startswith(f"{PREFIX}/") and t.endswith("/config")]
    assert len(per_entity) > 50


# --------------------------------------------------------------------------------------
# States and availability
# --------------------------------------------------------------------------------------


async def test_states_match_the_simulator(ha: HomeAssistant, start_bridge: BridgeFactory,
                                          sim: Simulator, broker: Mosquitto) -> None:
    start_bridge()
    await wait_ready(ha)
    for group in GROUPS:
        message = await ha.wait_topic(topic(group))
        assert message.retain, group
        assert "last_seen" in message.json(), group

    model = sim.model
    settings = await ha.wait_json(topic("settings"))
    assert settings["grid_soc_min"] == model.settings["grid_soc_min"]
    assert settings["off_grid_soc_min"] == model.settings["off_grid_soc_min"]
    assert settings["operating_mode"] == model.settings["operating_mode"]
    assert settings["grid_export_limit"] == model.settings["grid_export_limit"]
    assert settings["tou_schedule"] == model.settings["tou_schedule"]
    system = await ha.wait_json(topic("system"))
    assert system["serial_number"] == SERIAL
    assert system["pcu_version"] == 609
    live = await ha.wait_json(topic("live"))
    assert live["inverter_on"] is True
    assert 0 <= live["battery_soc"] <= 100
    energy = await ha.wait_json(topic("energy"))
    assert abs(energy["pv_energy_total"] - model.counters["pv"].total) < 1.0
    alarms = await ha.wait_json(topic("alarms"))
    assert (alarms["problem"], alarms["count"], alarms["alarms"]) == (False, 0, [])

    # An alarm raised on the inverter: battery codes are read in the block of the battery
    # make that 0x98 reports (Pylontech high voltage here), system codes as they are.
    model.alarms = {"battery_alarm_bits": [3], "fault_word_0": [1]}
    mark = ha.mark()
    alarms = await ha.wait_json(topic("alarms"), lambda a: a["count"] == 2, after=mark,
                                within=3 * 3.0 + 5)
    assert alarms["problem"] is True
    assert [(a["code"], a["source"]) for a in alarms["alarms"]] == [
        (1, "Inverter"), (83, "Pylontech HV battery")]
    model.alarms = {}

    # A change on the inverter (made with the app, say) shows at the next slow poll.
    model.settings["grid_soc_min"] = 35
    mark = ha.mark()
    await ha.wait_json(topic("settings"), lambda s: s["grid_soc_min"] == 35, after=mark,
                       within=3 * 3.0 + 5)

    on_broker = await retained(broker.port)
    assert on_broker[BRIDGE_STATE] == "online"
    assert on_broker[topic("availability")] == "online"
    for group in GROUPS:
        assert topic(group) in on_broker


async def test_inverter_offline_and_back_without_restart(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    running = start_bridge()
    await wait_ready(ha)
    port = sim_port(sim)
    before = (await ha.wait_json(topic("live")))["last_seen"]

    mark = ha.mark()
    await sim.stop()
    await ha.wait_text(topic("availability"), "offline", after=mark, within=OFFLINE_WITHIN)
    assert not ha.on(BRIDGE_STATE, after=mark), "the bridge itself stays online"

    mark = ha.mark()
    await sim.start(port=port)
    await ha.wait_text(topic("availability"), "online", after=mark, within=2 * LIVE + 5)
    for group in GROUPS:  # everything is read again once it is back
        await ha.wait_json(topic(group), after=mark, within=10)
    live = ha.on(topic("live"), after=mark)[-1].json()
    assert live["last_seen"] > before and live["inverter_on"] is True
    assert running.bridge.broker.connections == 1, "the bridge was not restarted"
    assert running.task is not None and not running.task.done()


async def test_broker_restart_restores_everything(
        ha: HomeAssistant, start_bridge: BridgeFactory, broker: Mosquitto) -> None:
    running = start_bridge()
    await wait_ready(ha)
    announced = await device_config(ha)

    mark = ha.mark()
    broker.restart()  # no persistence: every retained message is gone
    await ha.wait_text(BRIDGE_STATE, "online", after=mark, within=20)
    await ha.wait_text(topic("availability"), "online", after=mark, within=10)
    # the same discovery, from what the bridge kept of it (compressed: publisher.held)
    assert await device_config(ha, after=mark) == announced
    for group in GROUPS:
        await ha.wait_json(topic(group), after=mark, within=10)

    on_broker = await retained(broker.port)
    assert on_broker[BRIDGE_STATE] == "online"
    assert on_broker[topic("availability")] == "online"
    assert DEVICE_TOPIC in on_broker
    for group in GROUPS:
        assert topic(group) in on_broker
    assert running.bridge.broker.connections == 2

    # And states keep flowing on the new connection.
    mark = ha.mark()
    await ha.wait_json(topic("live"), after=mark, within=2 * LIVE + 3)


async def test_home_assistant_birth_resends_discovery(
        ha: HomeAssistant, start_bridge: BridgeFactory) -> None:
    start_bridge({"homeassistant": {"birth_delay": 0.5}})
    await wait_ready(ha)
    await device_config(ha)

    mark = ha.mark()
    sent = time.monotonic()
    await ha.publish(f"{PREFIX}/status", "online")
    again = await ha.wait_topic(DEVICE_TOPIC, after=mark, within=0.5 + 5)
    assert again.retain and again.json()["cmps"]
    assert again.at - sent < 0.5 + 3.0, "re-sent within birth_delay (plus a margin)"
    await ha.wait_text(BRIDGE_STATE, "online", after=mark, within=3)
    await ha.wait_json(topic("settings"), after=mark, within=3)

    # Home Assistant going offline is no reason to send anything.
    mark = ha.mark()
    await ha.publish(f"{PREFIX}/status", "offline")
    await asyncio.sleep(1.0)
    assert not ha.on(DEVICE_TOPIC, after=mark)


async def test_writes_disabled_are_refused(ha: HomeAssistant, start_bridge: BridgeFactory,
                                           sim: Simulator) -> None:
    start_bridge()
    await wait_ready(ha)
    before = dict(sim.model.settings)
    sim.received.clear()

    result = await ha.write("set/grid_soc_min", "30")
    assert result["ok"] is False
    assert result["error"].startswith("writes are disabled")
    assert "SERMATEC_WRITES__ENABLED" in result["error"]
    result = await ha.write("set", '{"grid_soc_min": 30}')
    assert result["ok"] is False

    assert sim.model.settings == before
    assert not {0x64, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x71} & set(sim.received)


async def test_energy_counters_never_decrease(ha: HomeAssistant, start_bridge: BridgeFactory,
                                              sim: Simulator) -> None:
    start_bridge({"poll": {"energy": 0.3}})
    await wait_ready(ha)
    components = (await device_config(ha))["cmps"]
    counters = sorted(k for k, c in components.items()
                      if c.get("state_class") == "total_increasing")
    assert set(ENERGY_DASHBOARD) <= set(counters)

    mark = ha.mark()
    await ha.wait_for(lambda m: m.topic == topic("energy") and len(
        ha.on(topic("energy"), after=mark)) >= 3, after=mark, within=10 * ENERGY)
    # The inverter glitches: its lifetime PV counter reads lower than before.
    sim.model.counters["pv"].total -= 500.0
    glitch = ha.mark()
    await ha.wait_for(lambda m: m.topic == topic("energy") and len(
        ha.on(topic("energy"), after=glitch)) >= 3, after=glitch, within=10 * ENERGY)

    assert len(ha.on(topic("energy"))) >= 6
    for key in counters:
        state_topic = components[key]["state_topic"]
        values = [m.json().get(key) for m in ha.on(state_topic)]
        values = [v for v in values if v is not None]
        assert values, key
        assert values == sorted(values), f"{key} went down: {values}"
    # The glitch was real: the inverter itself now reports less than was published.
    published = max(m.json()["pv_energy_total"] for m in ha.on(topic("energy")))
    assert sim.model.values(0x99)["pv_energy_total"] < published


# --------------------------------------------------------------------------------------
# The daemon as a process
# --------------------------------------------------------------------------------------


async def test_sigterm_publishes_offline_and_exits_zero(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    env = clean_env(
        SERMATEC_INVERTER__HOST="127.0.0.1",
        SERMATEC_INVERTER__PORT=str(sim_port(sim)),
        SERMATEC_INVERTER__TIMEOUT=str(TIMEOUT),
        SERMATEC_MQTT__HOST="127.0.0.1",
        SERMATEC_MQTT__PORT=str(broker.port),
        SERMATEC_POLL__LIVE=str(LIVE),
        SERMATEC_LOG__FORMAT="json",
        SERMATEC_HEALTH__FILE=str(tmp_path / "health.json"),
    )
    log = tmp_path / "bridge.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "sermatec-bridge"), "run", env=env, stdout=sink, stderr=sink,
            stdin=asyncio.subprocess.DEVNULL,
        )
    try:
        await ha.wait_text(BRIDGE_STATE, "online", within=20)
        await ha.wait_text(topic("availability"), "online", within=10)
        mark = ha.mark()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output[-2000:]
    await ha.wait_text(topic("availability"), "offline", after=mark, within=5)
    await ha.wait_text(BRIDGE_STATE, "offline", after=mark, within=5)
    on_broker = await retained(broker.port)
    assert on_broker[BRIDGE_STATE] == "offline"
    assert on_broker[topic("availability")] == "offline"
    assert '"event": "stopping"' in output
