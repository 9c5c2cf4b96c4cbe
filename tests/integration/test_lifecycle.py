"""What the bridge leaves on the broker across runs, and what it refuses to act on.

Each test runs the bridge more than once against one Mosquitto (whose retained store
stands for what Home Assistant finds) and asserts what a Home Assistant that connects
afterwards would get: discovery of the current configuration only, no stale
``online``, no retained command ever applied.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sermatec_bridge.bridge.discovery import MIGRATE
from sermatec_bridge.bridge.publisher import WILL_DELAY
from sermatec_bridge.bridge.retry import SETTLED
from sermatec_bridge.config import Settings
from sermatec_bridge.simulator import Simulator

from .conftest import (
    BASE,
    PREFIX,
    SERIAL,
    TIMEOUT,
    VENV_BIN,
    BridgeFactory,
    HomeAssistant,
    Mosquitto,
    clean_env,
    eventually,
    free_port,
    make_settings,
    retained,
    sim_port,
    topic,
    wait_ready,
)

DEVICE_TOPIC = f"{PREFIX}/device/{SERIAL}/config"
BRIDGE_STATE = f"{BASE}/bridge/state"
CONTROLS = {"set_grid_soc_min", "set_operating_mode", "set_inverter_on", "set_clock"}
WRITE_CODES = frozenset({0x64, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x71})


def entity_topics(on_broker: dict[str, str]) -> set[str]:
    """Per-entity discovery topics of the simulator's inverter."""
    return {t for t in on_broker if t.startswith(f"{PREFIX}/") and t.endswith("/config")
            and t.split("/")[2] == SERIAL and t != DEVICE_TOPIC}


async def ready(ha: HomeAssistant, mark: int) -> None:
    """This run polled every group (``wait_ready`` would also accept an earlier run's)."""
    for group in ("live", "energy", "settings", "system", "alarms"):
        await ha.wait_json(topic(group), after=mark, within=15)


async def run_once(start_bridge: BridgeFactory, ha: HomeAssistant,
                   changes: dict[str, Any]) -> None:
    mark = ha.mark()
    running = start_bridge(changes)
    await ready(ha, mark)
    await asyncio.sleep(0.5)  # the last discovery messages reach the broker
    await running.stop()


# --------------------------------------------------------------------------------------
# Discovery across runs
# --------------------------------------------------------------------------------------


async def test_turning_writes_off_removes_the_controls_of_the_previous_run(
        ha: HomeAssistant, start_bridge: BridgeFactory, broker: Mosquitto) -> None:
    await run_once(start_bridge, ha, {"writes": {"enabled": True}})
    assert set(json.loads((await retained(broker.port))[DEVICE_TOPIC])["cmps"]) >= CONTROLS

    mark = ha.mark()
    start_bridge({"writes": {"enabled": False}})
    await ready(ha, mark)
    sent = [m.json() for m in ha.on(DEVICE_TOPIC, after=mark) if m.payload]
    assert sent, "the device config was announced"
    removal = sent[0]["cmps"]
    for cid in CONTROLS:
        assert set(removal[cid]) == {"p"}, f"{cid} is removed as {{'p': platform}}"
    on_broker = await retained(broker.port)
    assert not CONTROLS & set(json.loads(on_broker[DEVICE_TOPIC])["cmps"])


async def test_discovery_goes_out_once_per_change(
        ha: HomeAssistant, start_bridge: BridgeFactory) -> None:
    mark = ha.mark()
    await run_once(start_bridge, ha, {})
    assert len([m for m in ha.on(DEVICE_TOPIC, after=mark) if m.payload]) == 1, \
        "one discovery message on a start"
    mark = ha.mark()
    await run_once(start_bridge, ha, {})
    assert not ha.on(DEVICE_TOPIC, after=mark), "unchanged and retained: not sent again"


async def test_per_entity_mode_clears_the_topics_no_longer_offered(
        ha: HomeAssistant, start_bridge: BridgeFactory, broker: Mosquitto) -> None:
    per_entity = {"homeassistant": {"device_discovery": False}}
    await run_once(start_bridge, ha, {**per_entity, "writes": {"enabled": True}})
    before = entity_topics(await retained(broker.port))
    controls = {t for t in before if t.split("/")[1] in {"number", "select", "switch",
                                                        "button"}}
    assert len(controls) >= 4

    await run_once(start_bridge, ha, {**per_entity, "writes": {"enabled": False}})
    after = entity_topics(await retained(broker.port))
    assert not controls & after, "the controls' configs are gone"
    assert len(after) > 50


async def test_switching_discovery_mode_leaves_nothing_of_the_other_mode(
        ha: HomeAssistant, start_bridge: BridgeFactory, broker: Mosquitto) -> None:
    per_entity = {"homeassistant": {"device_discovery": False}}
    await run_once(start_bridge, ha, per_entity)
    old = entity_topics(await retained(broker.port))
    assert old and DEVICE_TOPIC not in await retained(broker.port)

    mark = ha.mark()
    await run_once(start_bridge, ha, {})  # to device discovery
    on_broker = await retained(broker.port)
    assert DEVICE_TOPIC in on_broker
    assert not entity_topics(on_broker), "no per-entity config left behind"
    # Home Assistant's migration: every entity handed over before the device config.
    first_device = next(i for i, m in enumerate(ha.messages[mark:])
                        if m.topic == DEVICE_TOPIC and m.payload)
    handed = {m.topic for m in ha.messages[mark:mark + first_device]
              if m.text == MIGRATE}
    assert handed == old

    await run_once(start_bridge, ha, per_entity)  # and back
    on_broker = await retained(broker.port)
    assert DEVICE_TOPIC not in on_broker
    assert entity_topics(on_broker) == old


async def test_turning_discovery_off_removes_the_device(
        ha: HomeAssistant, start_bridge: BridgeFactory, broker: Mosquitto) -> None:
    await run_once(start_bridge, ha, {})
    assert DEVICE_TOPIC in await retained(broker.port)
    await run_once(start_bridge, ha, {"homeassistant": {"discovery": False}})
    assert DEVICE_TOPIC not in await retained(broker.port)


async def test_a_hundred_births_cause_one_replay(
        ha: HomeAssistant, start_bridge: BridgeFactory) -> None:
    start_bridge({"homeassistant": {"birth_delay": 0.5}})
    await wait_ready(ha)
    mark = ha.mark()
    for _ in range(100):
        await ha.publish(f"{PREFIX}/status", "online")
    await ha.wait_topic(DEVICE_TOPIC, after=mark, within=5)
    await asyncio.sleep(1.5)
    assert len(ha.on(DEVICE_TOPIC, after=mark)) <= 2


# --------------------------------------------------------------------------------------
# Availability after a crash
# --------------------------------------------------------------------------------------


async def test_after_a_crash_the_inverter_is_not_left_online(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, start_bridge: BridgeFactory,
        tmp_path: Path) -> None:
    env = clean_env(
        SERMATEC_INVERTER__HOST="127.0.0.1",
        SERMATEC_INVERTER__PORT=str(sim_port(sim)),
        SERMATEC_INVERTER__TIMEOUT=str(TIMEOUT),
        SERMATEC_MQTT__HOST="127.0.0.1",
        SERMATEC_MQTT__PORT=str(broker.port),
        SERMATEC_POLL__LIVE="1",
        SERMATEC_HEALTH__FILE=str(tmp_path / "health.json"),
    )
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "sermatec-bridge"), "run", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await ha.wait_text(topic("availability"), "online", within=20)
    finally:
        mark = ha.mark()
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await sim.stop()  # and the inverter does not answer the next run
    # The broker's last will, once its delay is over, and retained for whoever comes later.
    await ha.wait_text(BRIDGE_STATE, "offline", after=mark, within=WILL_DELAY + 5)
    on_broker = await retained(broker.port)
    assert on_broker[BRIDGE_STATE] == "offline"
    assert on_broker[topic("availability")] == "online"

    from .conftest import RunningBridge

    mark = ha.mark()  # the same bridge again (same client id), its inverter silent
    running = RunningBridge(make_settings(broker.port, free_port(), tmp_path)).start()
    try:
        await ha.wait_text(topic("availability"), "offline", after=mark,
                           within=SETTLED + 5)
    finally:
        await running.stop()
    assert (await retained(broker.port))[topic("availability")] == "offline"


# --------------------------------------------------------------------------------------
# Commands the bridge refuses to act on
# --------------------------------------------------------------------------------------


async def test_retained_writes_are_answered_and_never_applied(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator,
        broker: Mosquitto) -> None:
    before = dict(sim.model.settings)
    await ha.publish(topic("set/grid_soc_min"), "31", retain=True)
    mark = ha.mark()
    start_bridge({"writes": {"enabled": True, "min_interval": 0}})
    result = await ha.wait_json(topic("set/result"), after=mark)
    assert result["ok"] is False and "retained" in result["error"]
    await wait_ready(ha)

    mark = ha.mark()  # published with the retain flag while the bridge runs
    await ha.publish(topic("set/off_grid_soc_min"), "32", retain=True)
    result = await ha.wait_json(topic("set/result"), after=mark)
    assert result["ok"] is False and "retained" in result["error"]

    mark = ha.mark()  # the broker restarts (it keeps nothing); the bridge subscribes again
    await ha.publish(topic("set/grid_soc_min"), "33", retain=True)
    await ha.wait_json(topic("set/result"), after=mark)
    broker.restart()
    await eventually(lambda: ha.connections >= 2 and ha.client is not None, within=10,
                     what="home assistant reconnected")
    await ha.publish(topic("set/grid_soc_min"), "34", retain=True)
    mark = ha.mark()
    await ha.wait_text(BRIDGE_STATE, "online", after=mark - 1, within=20)
    await asyncio.sleep(1.0)
    assert sim.model.settings == before
    assert not WRITE_CODES & set(sim.received)


async def test_a_wildcard_response_topic_is_refused(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    running = start_bridge({"writes": {"enabled": True, "min_interval": 0}})
    await wait_ready(ha)
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = "test/+/responses/#"
    mark = ha.mark()
    await ha.publish(topic("set/grid_soc_min"), "33", properties=properties)
    result = await ha.wait_json(topic("set/result"), after=mark)
    assert result["ok"] is False and "response topic" in result["error"]
    assert sim.model.settings["grid_soc_min"] != 33
    assert (await ha.write("set/grid_soc_min", "33"))["ok"] is True, "and the bridge goes on"
    assert running.task is not None and not running.task.done()


async def test_payloads_that_break_parsers_get_a_refusal_and_the_bridge_goes_on(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    running = start_bridge({"writes": {"enabled": True, "min_interval": 0}})
    await wait_ready(ha)
    for leaf, payload in [("set", "[" * 100_000 + "]" * 100_000),
                          ("set", '{"grid_soc_min": ' + "1" * 5000 + "}"),
                          ("set/grid_soc_min", "1e400"),
                          ("set/grid_soc_min", "9" * 1_000_000)]:
        result = await ha.write(leaf, payload)
        assert result["ok"] is False, leaf
        assert len(json.dumps(result)) < 1000, "a bad value is quoted, not echoed"
    assert (await ha.write("set/grid_soc_min", "33"))["ok"] is True
    assert running.task is not None and not running.task.done()


async def test_a_serial_with_topic_characters_gets_safe_topics(
        ha: HomeAssistant, broker: Mosquitto, start_bridge: BridgeFactory,
        tmp_path: Path) -> None:
    from .conftest import RunningBridge

    async with Simulator(pcu=609, serial="SIM/+#01") as odd:
        running = RunningBridge(make_settings(broker.port, sim_port(odd), tmp_path, {
            "writes": {"enabled": True, "min_interval": 0}})).start()
        try:
            await wait_ready(ha, serial="SIM___01")
            config = await ha.wait_json(f"{PREFIX}/device/SIM___01/config")
            assert config["dev"]["serial_number"] == "SIM/+#01"
            result = await ha.write("set/grid_soc_min", "27", serial="SIM___01")
            assert result["ok"] is True
            assert odd.model.settings["grid_soc_min"] == 27
        finally:
            await running.stop()


# --------------------------------------------------------------------------------------
# What the log says
# --------------------------------------------------------------------------------------


async def first_log_event(settings: Settings, event: str, within: float) -> dict[str, Any]:
    """Run a bridge until it logs ``event``; that log entry."""
    from .conftest import RunningBridge

    with structlog.testing.capture_logs() as logs:
        running = RunningBridge(settings).start()
        try:
            await eventually(lambda: any(e["event"] == event for e in logs), within=within,
                             what=event)
        finally:
            await running.stop()
    return dict(next(e for e in logs if e["event"] == event))


async def test_an_unreachable_inverter_is_reported_at_once(
        broker: Mosquitto, tmp_path: Path) -> None:
    warning = await first_log_event(make_settings(broker.port, free_port(), tmp_path),
                                    "inverter not reachable yet", within=3)
    assert warning["log_level"] == "warning" and "cannot reach" in warning["reason"]


async def test_mqtt_failure_log_has_no_empty_hint(tmp_path: Path, sim: Simulator) -> None:
    failure = await first_log_event(make_settings(free_port(), sim_port(sim), tmp_path),
                                    "mqtt connection failed, retrying", within=5)
    assert failure.get("hint", "absent") is not None
