"""Writes from Home Assistant, end to end: MQTT in, the simulated inverter changed.

Every write path the discovery offers (numbers, select, switch, button), the schedule and
multi-setting writes, and every refusal: each refusal answers with a reason on
``set/result`` and leaves the inverter untouched (no write frame reaches it at all).
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sermatec_bridge.bridge import discovery
from sermatec_bridge.simulator import Simulator

from .conftest import (
    PREFIX,
    SERIAL,
    BridgeFactory,
    HomeAssistant,
    eventually,
    topic,
    wait_ready,
)

# The settings writes and the clock write: none may reach the inverter on a refusal.
WRITE_CODES = frozenset({0x64, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x71})
# Slow groups are polled once a minute here, so a state seen right after a write comes
# from the bridge's immediate re-publication, not from the schedule.
WRITES = {"writes": {"enabled": True, "min_interval": 0}, "poll": {"slow": 60.0}}


def writes_sent(sim: Simulator) -> list[int]:
    return [code for code in sim.received if code in WRITE_CODES]


@pytest.fixture
async def bridge(ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    start_bridge(WRITES)
    await wait_ready(ha)
    sim.received.clear()


async def settings_state(ha: HomeAssistant, after: int, key: str, value: Any,
                         group: str = "settings") -> dict[str, Any]:
    """The next state of ``group`` that shows ``key == value``."""
    state: dict[str, Any] = await ha.wait_json(
        topic(group), lambda s: s.get(key) == value, after=after, within=5)
    return state


# --------------------------------------------------------------------------------------
# Every write path
# --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("bridge")
@pytest.mark.parametrize(("key", "payload", "value"), [
    ("grid_soc_min", "30", 30),
    ("grid_soc_min", "35.0", 35),  # what a number entity may send
    ("off_grid_soc_min", "25", 25),
    ("grid_export_limit", "3000", 3000),
    ("charge_power_limit", "2500", 2500),
    ("discharge_power_limit", "2000", 2000),
])
async def test_number(ha: HomeAssistant, sim: Simulator, key: str, payload: str,
                      value: int) -> None:
    mark = ha.mark()
    result = await ha.write(f"set/{key}", payload)
    assert result == {"ok": True, "changed": {key: value}, "topic": f"set/{key}",
                      "written": True}
    assert sim.model.settings[key] == value
    await settings_state(ha, mark, key, value)


@pytest.mark.usefixtures("bridge")
async def test_select_operating_mode_by_label(ha: HomeAssistant, sim: Simulator) -> None:
    mark = ha.mark()
    result = await ha.write("set/operating_mode", "Energy storage")
    assert result["ok"] is True, result
    assert result["changed"] == {"operating_mode": "Energy storage"}
    assert sim.model.settings["operating_mode"] == "Energy storage"
    await settings_state(ha, mark, "operating_mode", "Energy storage")


@pytest.mark.usefixtures("bridge")
async def test_switch_inverter_off_and_on(ha: HomeAssistant, sim: Simulator) -> None:
    mark = ha.mark()
    result = await ha.write("set/inverter_on", "OFF")
    assert result == {"ok": True, "changed": {"inverter_on": False},
                      "topic": "set/inverter_on", "written": True}
    assert sim.model.settings["inverter_on"] is False
    assert sim.model.values(0x0C)["inverter_on"] is False
    await settings_state(ha, mark, "inverter_on", False, group="live")

    mark = ha.mark()
    result = await ha.write("set/inverter_on", "ON")
    assert result["ok"] is True and result["changed"] == {"inverter_on": True}
    assert sim.model.values(0x0C)["inverter_on"] is True
    await settings_state(ha, mark, "inverter_on", True, group="live")


@pytest.mark.usefixtures("bridge")
async def test_button_sets_the_clock(ha: HomeAssistant, sim: Simulator) -> None:
    sim.model.clock_offset = timedelta(hours=-3, minutes=-17)  # the inverter's clock is off
    result = await ha.write("set/clock", "PRESS")
    assert result["ok"] is True, result
    assert "clock" in result["changed"]
    assert result["confirmed"] is False and "no query that shows its clock" in result["note"]
    # The clock write has no read-back: the result may come before the inverter applied it.
    await eventually(lambda: abs(sim.model.clock_offset.total_seconds()) < 5,
                     what="the inverter's clock set")
    assert 0x68 in sim.received


@pytest.mark.usefixtures("bridge")
async def test_forced_schedule(ha: HomeAssistant, sim: Simulator) -> None:
    schedule = {
        "forced_charge_mode": True,
        "forced_charge_monday": True,
        "forced_charge_tuesday": False,
        "forced_charge_saturday": "ON",
        "forced_charge_soc_limit": 90,
        "forced_charge_period_count": 2,
        "forced_charge_periods": [{"start": "01:00", "end": "05:00"},
                                  {"start": "13:30", "end": "14:00"}],
    }
    mark = ha.mark()
    result = await ha.write("set/forced_schedule", json.dumps(schedule))
    assert result["ok"] is True, result
    assert result["topic"] == "set/forced_schedule"
    model = sim.model.settings
    assert model["forced_charge_mode"] is True
    assert model["forced_charge_soc_limit"] == 90
    assert model["forced_charge_period_count"] == 2
    assert [(p["start"], p["end"]) for p in model["forced_charge_periods"][:2]] == [
        ("01:00", "05:00"), ("13:30", "14:00")]
    assert model["forced_discharge_soc_limit"] == 20, "the discharge half is kept"
    # 0xa2 reads it back into the settings state.
    state = await settings_state(ha, mark, "forced_charge_soc_limit", 90)
    assert (state["forced_charge_monday"], state["forced_charge_tuesday"],
            state["forced_charge_saturday"], state["forced_charge_sunday"]) == (
        True, False, True, None), "switched on, off, and left as the inverter had them"
    assert sim.model.values(0xA2)["forced_charge_tuesday"] is False
    assert [(p["start"], p["end"]) for p in state["forced_charge_periods"]] == [
        ("01:00", "05:00"), ("13:30", "14:00")]


@pytest.mark.usefixtures("bridge")
async def test_schedule_entities_round_trip(ha: HomeAssistant, sim: Simulator) -> None:
    """What Home Assistant's time, switch and select entities send, one setting a message:
    each reaches the inverter and comes back in the settings state."""
    for leaf, payload, key, shown in [
        ("set/forced_charge_period_1_end", "06:30:00", "forced_charge_period_1_end", "06:30"),
        ("set/forced_charge_period_1_start", "01:15:00", "forced_charge_period_1_start",
         "01:15"),
        ("set/forced_charge_period_1_in_use", "ON", "forced_charge_period_1_in_use", True),
        ("set/forced_charge_wednesday", "ON", "forced_charge_wednesday", True),
        ("set/forced_charge_mode", "ON", "forced_charge_mode", True),
        ("set/tou_period_1_tariff", "Valley", "tou_period_1_tariff", "Valley"),
    ]:
        mark = ha.mark()
        result = await ha.write(leaf, payload)
        assert result == {"ok": True, "changed": {key: shown}, "topic": leaf,
                          "written": True}, result
        await settings_state(ha, mark, key, shown)
    forced = sim.model.values(0xA2)
    assert forced["forced_charge_periods"][0]["start"] == "01:15"
    assert (forced["forced_charge_period_count"], forced["forced_charge_wednesday"],
            forced["forced_charge_mode"]) == (1, True, True)
    assert sim.model.values(0x95)["tou_schedule"][0]["period"] == "Valley"
    assert writes_sent(sim) == [0x71] * 5 + [0x66]


def tou(settings: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    return [(p["start"], p["end"], p["period"]) for p in settings["tou_schedule"]]


SCHEDULE = [{"start": "00:00", "end": "07:00", "period": "Valley"},
            {"start": "07:00", "end": "17:00", "period": "Flat"},
            {"start": "17:00", "end": "21:00", "period": "Peak"},
            {"start": "21:00", "end": "24:00", "period": "Valley"}]


async def test_one_setting_keeps_the_time_of_use_schedule(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    sim.model.settings.update(tou_schedule=copy.deepcopy(SCHEDULE), tou_count=4,
                              tariff_peak=0.7)
    start_bridge(WRITES)
    await wait_ready(ha)
    before = copy.deepcopy(sim.model.settings)
    sim.received.clear()

    result = await ha.write("set/grid_soc_min", "45")
    assert result["ok"] is True, result
    after = sim.model.settings
    assert after["grid_soc_min"] == 45
    assert tou(after) == tou(before) and after["tou_count"] == 4
    assert after["tariff_peak"] == 0.7
    unchanged = {k: v for k, v in after.items() if k not in ("grid_soc_min", "tou_schedule")}
    assert unchanged == {k: v for k, v in before.items()
                         if k not in ("grid_soc_min", "tou_schedule")}
    assert writes_sent(sim) == [0x66]


async def test_several_settings_in_one_message(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    sim.model.settings.update(tou_schedule=copy.deepcopy(SCHEDULE), tou_count=4)
    start_bridge(WRITES)
    await wait_ready(ha)
    before = copy.deepcopy(sim.model.settings)
    sim.received.clear()

    mark = ha.mark()
    request = {"grid_soc_min": 40, "operating_mode": "Peak-valley",
               "grid_export_limit": 4000, "charge_power_limit": 3500}
    result = await ha.write("set", json.dumps(request))
    assert result == {"ok": True, "changed": request, "written": True}
    after = sim.model.settings
    for key, value in request.items():
        assert after[key] == value, key
    assert tou(after) == tou(before), "the time-of-use schedule survives"
    assert after["tariff_flat"] == before["tariff_flat"]
    assert after["off_grid_soc_min"] == before["off_grid_soc_min"]
    assert after["discharge_power_limit"] == before["discharge_power_limit"]
    # One read-modify-write per settings block: 0x66 once, 0x6a once.
    assert sorted(writes_sent(sim)) == [0x66, 0x6A]
    state = await settings_state(ha, mark, "charge_power_limit", 3500)
    assert state["grid_soc_min"] == 40 and state["operating_mode"] == "Peak-valley"
    assert [(p["start"], p["end"], p["period"]) for p in state["tou_schedule"]] == tou(before)


# --------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("bridge")
@pytest.mark.parametrize(("leaf", "payload", "reason"), [
    ("set/grid_soc_min", "5", "grid_soc_min"),  # below the 10 % floor
    ("set/grid_soc_min", "101", "grid_soc_min"),
    ("set/grid_export_limit", "20000", "grid_export_limit"),
    ("set", '{"grid_soc_min": 30', "invalid JSON"),
    ("set", "[30]", "must be a JSON object"),
    ("set", '"grid_soc_min"', "must be a JSON object"),
    ("set", "{}", "names no setting"),
    ("set", '{"turbo_boost": 1}', "unknown setting(s) turbo_boost"),
    ("set/turbo_boost", "1", "unknown setting(s) turbo_boost"),
    ("set", '{"grid_soc_min": 30, "turbo_boost": 1}', "unknown setting(s) turbo_boost"),
    ("set/grid_soc_min", "abc", "not a number"),
    ("set/operating_mode", "Turbo", "operating_mode"),
    ("set/inverter_on", "MAYBE", "ON or OFF"),
    ("set/forced_schedule", "not json", "invalid JSON"),
    ("set", '{"grid_export_limit": true}', "grid_export_limit"),
    ("set", '{"grid_soc_min": "abc"}', "not a number"),
    ("set", '{"grid_soc_min": [30]}', "grid_soc_min"),
    ("set/grid_soc_min", '{"value": 30}', "grid_soc_min"),
    ("set/grid_soc_min", "", "grid_soc_min"),
    ("set", '{"operating_mode": 99}', "operating_mode"),
    ("set", '{"forced_charge_periods": [{"start": "25:00", "end": "26:00"}]}', "forced"),
    ("set/forced_schedule", '{"forced_charge_periods": "none"}', "list of records"),
    ("set/forced_schedule", '{"grid_soc_min": 30}', "not part of the forced charge"),
    ("set/forced_charge_period_1_in_use", "ON", "its end must be after its start"),
    ("set/tou_period_2_start", "01:00:00", "is not in use"),
    ("set/forced_charge_period_1_start", "01:00:30", "has seconds"),
])
async def test_refused_with_a_reason(ha: HomeAssistant, sim: Simulator, leaf: str,
                                     payload: str, reason: str) -> None:
    before = copy.deepcopy(sim.model.settings)
    result = await ha.write(leaf, payload)
    assert result["ok"] is False, result
    assert reason in result["error"], result
    assert sim.model.settings == before
    assert writes_sent(sim) == [], "nothing may be sent to the inverter"


@pytest.mark.usefixtures("bridge")
async def test_value_already_set_is_not_written(ha: HomeAssistant, sim: Simulator) -> None:
    current = sim.model.settings["grid_soc_min"]
    result = await ha.write("set/grid_soc_min", str(current))
    assert result == {"ok": True, "unchanged": ["grid_soc_min"], "topic": "set/grid_soc_min",
                      "written": False}
    result = await ha.write("set/operating_mode", "general")  # same option, other case
    assert result["ok"] is True and result["unchanged"] == ["operating_mode"]
    assert writes_sent(sim) == []
    assert 0x95 in sim.received, "the current value was read"


async def test_rate_limit(ha: HomeAssistant, start_bridge: BridgeFactory,
                          sim: Simulator) -> None:
    start_bridge({**WRITES, "writes": {"enabled": True, "min_interval": 60}})
    await wait_ready(ha)
    result = await ha.write("set/grid_soc_min", "30")
    assert result["ok"] is True, result
    sim.received.clear()

    result = await ha.write("set/grid_soc_min", "40")
    assert result["ok"] is False
    assert "writes.min_interval" in result["error"] and "wait" in result["error"]
    assert sim.model.settings["grid_soc_min"] == 30
    assert writes_sent(sim) == []
    # Other settings are limited on their own.
    result = await ha.write("set/off_grid_soc_min", "30")
    assert result["ok"] is True, result


async def test_setting_that_needs_the_inverter_off(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    start_bridge(WRITES)
    await wait_ready(ha)
    sim.received.clear()

    result = await ha.write("set", '{"grid_code": "Italy"}')
    assert result["ok"] is False
    assert "only be changed while the inverter is off" in result["error"]
    assert sim.model.settings["grid_code"] == "Germany"
    assert writes_sent(sim) == []

    result = await ha.write("set/inverter_on", "OFF")
    assert result["ok"] is True, result
    result = await ha.write("set", '{"grid_code": "Italy"}')
    assert result == {"ok": True, "changed": {"grid_code": "Italy"}, "written": True}
    assert sim.model.settings["grid_code"] == "Italy"
    assert sim.model.settings["dc_battery_type"] == "Lithium", "the rest of 0x69 is kept"

    # The inverter hangs up after a 0x69 write; the bridge carries on.
    result = await ha.write("set/inverter_on", "ON")
    assert result["ok"] is True, result
    mark = ha.mark()
    await ha.wait_text(topic("availability"), "online", after=0)
    await ha.wait_json(topic("live"), lambda s: s["inverter_on"] is True, after=mark)


# --------------------------------------------------------------------------------------
# MQTT 5 request / response
# --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("bridge")
async def test_mqtt5_response_topic_and_correlation_data(ha: HomeAssistant,
                                                         sim: Simulator) -> None:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = "test/responses/caller-1"
    properties.CorrelationData = b"request-42"
    mark = ha.mark()
    await ha.publish(topic("set/grid_soc_min"), "33", properties=properties)

    response = await ha.wait_topic("test/responses/caller-1", after=mark)
    assert response.json() == {"ok": True, "changed": {"grid_soc_min": 33},
                               "topic": "set/grid_soc_min", "written": True}
    assert response.properties is not None
    assert getattr(response.properties, "CorrelationData", None) == b"request-42"
    assert not response.retain
    # The plain result topic gets it too, not retained.
    result = await ha.wait_topic(topic("set/result"), after=mark)
    assert result.json()["ok"] is True and not result.retain
    assert sim.model.settings["grid_soc_min"] == 33

    # A refusal goes to the response topic as well.
    properties.CorrelationData = b"request-43"
    mark = ha.mark()
    await ha.publish(topic("set/grid_soc_min"), "abc", properties=properties)
    response = await ha.wait_topic("test/responses/caller-1", after=mark)
    assert response.json()["ok"] is False
    assert response.properties is not None
    assert getattr(response.properties, "CorrelationData", None) == b"request-43"


# --------------------------------------------------------------------------------------
# Settings an installer made, outside this project's policy (issue 8)
# --------------------------------------------------------------------------------------

INSTALLER = {"operating_mode": 6, "grid_soc_min": 5, "grid_export_limit": 12000,
             "tariff_peak": -0.5}


async def test_settings_outside_the_policy_do_not_block_a_write(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    sim.model.configure(INSTALLER)  # as `simulate --set operating_mode=6 ...` does
    start_bridge(WRITES)
    await wait_ready(ha)
    state = await ha.wait_json(topic("settings"))
    assert state["operating_mode"] == 6, "a mode without a name shows as its code"
    config = discovery.expand(await ha.wait_json(f"{PREFIX}/device/{SERIAL}/config"))
    mode = config["cmps"]["set_operating_mode"]
    # The select offers only modes a write takes: it shows this one as unknown (not an
    # invalid option, which Home Assistant logs as an error), its code as an attribute.
    assert mode["options"] == ["General", "Energy storage", "Micro-grid", "Peak-valley",
                               "AC coupling"]
    assert "reported" in mode["json_attributes_template"]
    sim.received.clear()

    mark = ha.mark()
    result = await ha.write("set/command_power", "1500")
    assert result == {"ok": True, "changed": {"command_power": 1500},
                      "topic": "set/command_power", "written": True}
    for key, value in INSTALLER.items():
        assert sim.model.settings[key] == value, key
    assert writes_sent(sim) == [0x66]
    await settings_state(ha, mark, "command_power", 1500)

    result = await ha.write("set/grid_soc_min", "5")  # the value as it is: nothing to do
    assert result["ok"] is True and result["unchanged"] == ["grid_soc_min"]
    result = await ha.write("set/grid_soc_min", "6")  # a change: the policy applies
    assert result["ok"] is False and "grid_soc_min: 6 is out of range" in result["error"]
    assert writes_sent(sim) == [0x66]


@pytest.mark.usefixtures("bridge")
async def test_forced_periods_sent_are_active_and_keep_reserved_bytes(
        ha: HomeAssistant, sim: Simulator) -> None:
    sim.model.configure({"forced_charge_periods": [
        {"start": "01:00", "end": "02:00", "reserved": "abcd"}]})
    mark = ha.mark()
    periods = [{"start": "03:00", "end": "04:00"}, {"start": "13:00", "end": "14:00"}]
    result = await ha.write("set/forced_schedule", json.dumps(
        {"forced_charge_mode": True, "forced_charge_periods": periods}))
    assert result["ok"] is True, result
    assert result["changed"]["forced_charge_period_count"] == 2
    shown = sim.model.values(0xA2)
    assert shown["forced_charge_period_count"] == 2
    assert shown["forced_charge_periods"][0]["reserved"] == "abcd"
    state = await settings_state(ha, mark, "forced_charge_mode", True)
    assert state["forced_charge_periods"] == periods


# --------------------------------------------------------------------------------------
# The clock button, bad input, rounding (issues 7 and 9)
# --------------------------------------------------------------------------------------


async def test_three_clock_presses_send_one_frame(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    start_bridge({**WRITES, "writes": {"enabled": True, "min_interval": 60}})
    await wait_ready(ha)
    sim.received.clear()
    sim.latency = 0.4  # polls hold the queue slot while the presses come in
    await eventually(lambda: len(sim.received) > 0, what="a poll under way")
    mark = ha.mark()
    for _ in range(3):
        await ha.publish(topic("set/clock"), "PRESS")
    await eventually(lambda: len(ha.on(topic("set/result"), after=mark)) == 3,
                     what="three results")
    results = [m.json() for m in ha.on(topic("set/result"), after=mark)]
    assert [r["ok"] for r in results].count(True) == 1, results
    assert list(sim.received).count(0x68) == 1


@pytest.mark.usefixtures("bridge")
@pytest.mark.parametrize(("leaf", "payload", "reason"), [
    ("set", b"[" * 8000 + b"]" * 8000, "nested too deeply"),
    ("set", b'{"grid_soc_min": ' + b"3" * 5000 + b"}", "a number of 5000 digits"),
    ("set/grid_soc_min", b"3" * 5000, "a number of 5000 digits"),
    ("set", b'{"grid_soc_min": 1e400}', "1e400 is out of range"),
    ("set/grid_soc_min", b"1e400", "1e400 is out of range"),
    ("set", b'{"grid_soc_min": NaN}', "NaN is not a number"),
    ("set/grid_soc_min", "٣٠".encode(), "is not a number"),
    ("set/grid_soc_min", b"1_5", "is not a number"),
    ("set/operating_mode", b"x" * 10_000, "is not a known value"),
    ("set", b"x" * 1_000_000, "the payload has 1000000 bytes"),
    ("set/clock", b"1", "is not a press"),
    ("set/clock", b'{"year": 2020}', "is not a press"),
])
async def test_bad_input_gets_a_short_refusal(ha: HomeAssistant, sim: Simulator, leaf: str,
                                              payload: bytes, reason: str) -> None:
    mark = ha.mark()
    result = await ha.write(leaf, payload)
    assert result["ok"] is False and result["written"] is False, result
    assert reason in result["error"], result
    raw = ha.on(topic("set/result"), after=mark)[0].payload
    assert len(raw) < 1000, f"a result of {len(raw)} bytes"
    assert writes_sent(sim) == [] and 0x95 not in sim.received, "nothing asked of the inverter"
    # The bridge goes on taking writes.
    result = await ha.write("set/grid_soc_min", "31")
    assert result["ok"] is True, result


@pytest.mark.usefixtures("bridge")
async def test_a_number_is_rounded_to_its_step(ha: HomeAssistant, sim: Simulator) -> None:
    result = await ha.write("set/grid_soc_min", "33.5")
    assert result == {"ok": True, "changed": {"grid_soc_min": 34},
                      "note": "grid_soc_min 33.5 rounded to 34 (step 1)",
                      "topic": "set/grid_soc_min", "written": True}
    assert sim.model.settings["grid_soc_min"] == 34
