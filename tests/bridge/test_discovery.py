"""Home Assistant discovery: what Home Assistant would see, checked against its rules."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from sermatec_bridge.bridge import discovery
from sermatec_bridge.bridge.discovery import DiscoveryContext
from sermatec_bridge.bridge.groups import GROUPS
from sermatec_bridge.bridge.state import EnergyGuard, state_payload
from sermatec_bridge.bridge.writes import WriteResult
from sermatec_bridge.protocol import tables

try:  # the plausible decoded replies of the state tests
    from .test_state import reading  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # tests/bridge is not a package: pytest put its folder on sys.path
    from test_state import reading

SERIAL = "AB12345"
BASE = "sermatec"

# --------------------------------------------------------------------------------------
# What Home Assistant accepts, written from its sensor docs: per device class, the
# units and the state classes (None: no unit / no state class).
# --------------------------------------------------------------------------------------

ANY = object()
MEASURED = {"measurement", None}
ALLOWED: dict[str | None, tuple[Any, set[str | None]]] = {
    None: (ANY, {"measurement", "total", "total_increasing", None}),
    "voltage": ({"V", "mV", "kV"}, MEASURED),
    "current": ({"A", "mA"}, MEASURED),
    "power": ({"W", "kW"}, MEASURED),
    "reactive_power": ({"var", "kvar"}, MEASURED),
    "apparent_power": ({"VA"}, MEASURED),
    "energy": ({"Wh", "kWh", "MWh"}, {"total", "total_increasing"}),
    "power_factor": ({"%", None}, MEASURED),
    "temperature": ({"°C", "°F", "K"}, MEASURED),
    "frequency": ({"Hz", "kHz"}, MEASURED),
    "battery": ({"%"}, MEASURED),
    "enum": ({None}, {None}),
    "timestamp": ({None}, {None}),
}
BINARY_CLASSES = {None, "problem", "running", "connectivity", "power", "battery_charging"}
NUMBER_CLASSES: dict[str | None, Any] = {None: ANY, "power": {"W", "kW"}, "battery": {"%"}}
PLATFORMS = {"sensor", "binary_sensor", "number", "select", "switch", "button", "time"}


def ctx(version: int = 609, writes: bool = True, serial: str = SERIAL,
        time_platform: str = "time") -> DiscoveryContext:
    return DiscoveryContext(serial=serial, model="5 kW", pcu_version=version, version=version,
                            dsp_version="1.2", base_topic=BASE, writes_enabled=writes,
                            intervals={"live": 10, "energy": 60, "slow": 300}, timeout=5,
                            time_platform=time_platform)


def group_payloads(version: int) -> dict[str, dict[str, Any]]:
    """Each group's state object from plausible decoded replies, as the bridge publishes."""
    now = datetime(2024, 5, 1, 12, 0).astimezone()
    out = {}
    for group in GROUPS:
        readings = []
        for command in group.commands(version):
            for code in tables.replies(command, version):
                if tables.COMMANDS[code].layout(version) is not None:
                    readings.append(reading(code, version))
        payload = state_payload(group.key, readings, now, EnergyGuard(), "Pylontech high voltage")
        out[f"{BASE}/{SERIAL}/{group.key}"] = json.loads(json.dumps(payload))
    out[f"{BASE}/{SERIAL}/set/result"] = WriteResult(True, changed={"grid_soc_min": 25}).as_json()
    return out


@pytest.fixture(scope="module")
def full() -> dict[str, dict[str, Any]]:
    return discovery.entities(ctx())


def by_platform(entities: dict[str, dict[str, Any]], platform: str) -> dict[str, Any]:
    return {k: v for k, v in entities.items() if v["platform"] == platform}


def test_pcu_609_with_writes_offers_every_kind_of_entity(full: dict[str, Any]) -> None:
    counts = Counter(e["platform"] for e in full.values())
    assert set(counts) == PLATFORMS
    assert counts["sensor"] > 100 and counts["binary_sensor"] > 10
    # 5 limits, 4 tariffs, the time-of-use count, the two forced SOC limits
    assert counts["number"] == 12
    # the operating mode and a tariff per time-of-use period
    assert counts["select"] == 1 + 16
    # on/off; forced charge and discharge: enabled, 7 weekdays, 4 periods in use
    assert counts["switch"] == 1 + 2 * (1 + 7 + 4) and counts["button"] == 1
    assert counts["time"] == 2 * 4 * 2 + 16 * 2  # each period's start and end
    energy = [e for e in full.values() if e.get("device_class") == "energy"]
    assert len(energy) == 14
    for e in energy:
        assert (e["unit_of_measurement"], e["state_class"]) == ("kWh", "total_increasing")
    assert full["pv_energy_total"]["state_topic"] == f"{BASE}/{SERIAL}/energy"


def test_every_sensor_is_a_combination_home_assistant_accepts(full: dict[str, Any]) -> None:
    for cid, e in by_platform(full, "sensor").items():
        dc, unit, sc = e.get("device_class"), e.get("unit_of_measurement"), e.get("state_class")
        assert dc in ALLOWED, cid
        units, state_classes = ALLOWED[dc]
        assert units is ANY or unit in units, (cid, dc, unit)
        assert sc in state_classes, (cid, dc, sc)
        assert e.get("entity_category") in (None, "diagnostic"), cid  # "config" is refused
        if "options" in e:
            assert dc == "enum" and e["options"], cid
            assert len(set(e["options"])) == len(e["options"]), cid
        if dc == "enum":
            assert "options" in e and unit is None and sc is None, cid
        numeric = unit is not None or sc is not None or "suggested_display_precision" in e
        assert not (numeric and dc in ("enum", "timestamp")), cid
        assert isinstance(e.get("expire_after", 1), int) and e.get("expire_after", 1) > 0


def test_binary_sensors_and_controls_are_valid(full: dict[str, Any]) -> None:
    for cid, e in by_platform(full, "binary_sensor").items():
        assert e.get("device_class") in BINARY_CLASSES, cid
        assert e.get("entity_category") in (None, "diagnostic"), cid
    for cid, e in by_platform(full, "number").items():
        assert e["min"] < e["max"] and e["step"] > 0 and e["mode"] == "box", cid
        allowed = NUMBER_CLASSES[e.get("device_class")]
        assert allowed is ANY or e.get("unit_of_measurement") in allowed, cid
        assert e["entity_category"] == "config"
    soc = full["set_grid_soc_min"]
    assert (soc["min"], soc["max"], soc["step"], soc["unit_of_measurement"]) == (10, 100, 1, "%")
    export = full["set_grid_export_limit"]
    assert (export["max"], export["unit_of_measurement"], export["device_class"]) == (
        10000, "W", "power")
    select = full["set_operating_mode"]
    # Codes 0 and 6 have no name and are never written: not offered (see
    # test_a_select_shows_a_code_it_does_not_offer_as_unknown).
    assert select["options"] == list(tables.OPERATING_MODES.values())
    assert select["state_topic"] == f"{BASE}/{SERIAL}/settings"
    assert select["command_topic"] == f"{BASE}/{SERIAL}/set/operating_mode"
    switch = full["set_inverter_on"]
    assert switch["state_topic"] == f"{BASE}/{SERIAL}/live"
    assert switch["command_topic"] == f"{BASE}/{SERIAL}/set/inverter_on"
    assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")
    button = full["set_clock"]
    assert button["command_topic"] == f"{BASE}/{SERIAL}/set/clock"
    assert (button["payload_press"], button["entity_category"]) == ("PRESS", "config")
    for key in ("off_grid_soc_min", "charge_power_limit", "discharge_power_limit"):
        assert full[f"set_{key}"]["command_topic"] == f"{BASE}/{SERIAL}/set/{key}"


def test_ids_names_and_availability(full: dict[str, Any]) -> None:
    unique = [e["unique_id"] for e in full.values()]
    assert len(unique) == len(set(unique))
    for e in full.values():
        key = e["unique_id"].removeprefix(f"{SERIAL}_")
        assert e["object_id"] == f"sermatec_{SERIAL.lower()}_{key}"
        assert e["default_entity_id"] == f"{e['platform']}.{e['object_id']}"
        assert re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", e["default_entity_id"])
        assert e["name"] and "sermatec" not in e["name"].lower()
        assert e["availability_mode"] == "all"
        assert e["availability"] == [{"topic": f"{BASE}/bridge/state"},
                                     {"topic": f"{BASE}/{SERIAL}/availability"}]
    default_ids = [e["default_entity_id"] for e in full.values()]
    assert len(default_ids) == len(set(default_ids))


def test_no_read_only_entity_for_a_key_that_has_a_control(full: dict[str, Any]) -> None:
    controls = {e["unique_id"] for e in full.values() if "command_topic" in e}
    read_only = {e["unique_id"] for e in full.values() if "command_topic" not in e}
    # and 4 tariffs with the time-of-use count; the forced switches and SOC limits; each
    # forced period's in-use switch, start and end; each time-of-use period's 3 settings
    assert len(controls) == 8 + 5 + 2 * (1 + 7 + 1) + 2 * 4 * 3 + 16 * 3
    assert not controls & read_only


@pytest.mark.parametrize("version", [609, 500, 259, 258, 252])
def test_every_template_reads_a_key_of_its_state_object(version: int) -> None:
    entities = discovery.entities(ctx(version))
    payloads = group_payloads(version)
    for cid, e in entities.items():
        if e["platform"] == "button":
            assert "state_topic" not in e
            continue
        assert e["state_topic"] in payloads, cid
        if cid == discovery.LAST_WRITE:
            continue  # reads optional keys of a write result (test_last_write_…)
        payload = payloads[e["state_topic"]]
        keys = list(discovery.iter_state_keys(e))
        assert keys, cid
        for key in keys:
            assert key in payload, (cid, key)
        if "json_attributes_topic" in e:
            assert e["json_attributes_topic"] in payloads


def test_states_are_what_home_assistant_accepts(full: dict[str, Any]) -> None:
    payloads = group_payloads(609)
    for cid, e in full.items():
        if "state_topic" not in e or cid == discovery.LAST_WRITE:
            continue
        [key] = set(discovery.iter_state_keys(e)) - {"alarms"}
        value = payloads[e["state_topic"]][key]
        if value is None:
            continue
        if e["platform"] in ("binary_sensor", "switch"):
            assert isinstance(value, bool), cid
        elif "options" in e:
            assert value in e["options"], cid
        elif e.get("device_class") == "timestamp":
            assert datetime.fromisoformat(value).tzinfo is not None
        elif "unit_of_measurement" in e or "state_class" in e or e["platform"] == "number":
            assert isinstance(value, int | float) and not isinstance(value, bool), cid


def test_templates_render_as_home_assistant_expects(full: dict[str, Any]) -> None:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    env.filters["to_json"] = json.dumps  # Home Assistant's filter
    payloads = group_payloads(609)
    payloads[f"{BASE}/{SERIAL}/live"]["inverter_on"] = None
    for cid, e in full.items():
        if "value_template" not in e:
            continue
        payload = payloads[e["state_topic"]]
        text = env.from_string(e["value_template"]).render(value_json=payload)
        if e["platform"] in ("binary_sensor", "switch"):
            assert text in ("ON", "OFF", "None"), cid
        elif "options" in e:
            assert text in [*e["options"], "None"], cid
        elif "unit_of_measurement" in e or "state_class" in e:
            assert text == "None" or float(text) == float(text), cid
        if "json_attributes_template" in e:
            attributes = json.loads(env.from_string(e["json_attributes_template"]).render(
                value_json=payload))
            assert attributes == ({"reported": payload["operating_mode"]}
                                  if cid == "set_operating_mode"
                                  else {"alarms": payload["alarms"]})
    assert env.from_string(full["set_inverter_on"]["value_template"]).render(
        value_json=payloads[f"{BASE}/{SERIAL}/live"]) == "None"


def test_writes_disabled_means_no_command_topics() -> None:
    entities = discovery.entities(ctx(writes=False))
    assert not [e for e in entities.values() if "command_topic" in e]
    assert {e["platform"] for e in entities.values()} == {"sensor", "binary_sensor"}
    assert entities["inverter_on"]["platform"] == "binary_sensor"
    assert entities["operating_mode"]["device_class"] == "enum"
    _, payload = discovery.device_config(ctx(writes=False))
    assert "command_topic" not in json.dumps(payload)


def test_pcu_252_offers_only_what_it_has() -> None:
    entities = discovery.entities(ctx(252))
    keys = {e["unique_id"].removeprefix(f"{SERIAL}_") for e in entities.values()}
    later = {f.key for code in (0x9D, 0xA2, 0x0D, 0x9C, 0xA1)
             for f in tables.COMMANDS[code].layout(609) or ()}
    assert not keys & later
    controls = {cid for cid, e in entities.items() if "command_topic" in e}
    schedule = {f"set_tou_period_{n}_{word}" for n in range(1, 17)
                for word in ("start", "end", "tariff")}
    assert controls - schedule == {
        "set_inverter_on", "set_operating_mode", "set_grid_soc_min", "set_grid_export_limit",
        "set_clock", "set_tou_count", *(f"set_tariff_{t}" for t in ("tip", "peak", "flat",
                                                                   "valley"))}
    assert "battery_voltage" in entities and "pv_energy_total" in entities


def test_device_config_payload() -> None:
    topic, short = discovery.device_config(ctx())
    payload = discovery.expand(short)
    assert topic == f"homeassistant/device/{SERIAL}/config"
    assert payload["dev"] == {
        "identifiers": [SERIAL], "manufacturer": "Sermatec", "model": "5 kW hybrid inverter",
        "name": "Sermatec 5 kW", "sw_version": "PCU 609, DSP 1.2", "serial_number": SERIAL,
    }
    assert payload["o"]["name"] == "sermatec-bridge" and payload["o"]["sw_version"]
    assert payload["o"]["support_url"].startswith("https://")
    assert payload["availability_mode"] == "all" and len(payload["availability"]) == 2
    assert payload["qos"] == 1
    entities = discovery.entities(ctx())
    assert set(payload["cmps"]) == set(entities)
    for component in short["cmps"].values():
        assert "platform" not in component and "avty" not in component
    for cid, component in payload["cmps"].items():
        assert component["p"] == entities[cid]["platform"]
        inherited = {"qos": 1, "state_topic": f"{BASE}/{SERIAL}/live"}  # a button ignores it
        assert component == {"p": entities[cid]["platform"], **inherited,
                             **{k: v for k, v in entities[cid].items() if k != "platform"}}
    json.dumps(payload)  # JSON-ready


def test_entity_configs_for_older_home_assistant() -> None:
    configs = discovery.entity_configs(ctx())
    assert len(configs) == len(discovery.entities(ctx()))
    topics = [t for t, _ in configs]
    assert len(set(topics)) == len(topics)
    for topic, short in configs:
        payload = discovery.expand(short)
        match = re.fullmatch(rf"homeassistant/(\w+)/{SERIAL}/([a-z0-9_]+)/config", topic)
        # the device config's component id: what migrate_discovery matches on
        assert match and match[1] in PLATFORMS and match[2] in discovery.entities(ctx())
        assert payload["object_id"].startswith(f"sermatec_{SERIAL.lower()}_")
        assert "platform" not in payload
        assert payload["dev"]["identifiers"] == [SERIAL]
        assert payload["o"]["name"] == "sermatec-bridge"
        assert payload["availability_mode"] == "all"


def test_odd_serial_characters_stay_out_of_ids_and_discovery_topics() -> None:
    odd = ctx(serial="AB 12.3")
    topic, _ = discovery.device_config(odd)
    assert topic == "homeassistant/device/AB_12_3/config"
    e = discovery.entities(odd)["battery_soc"]
    assert e["default_entity_id"] == "sensor.sermatec_ab_12_3_battery_soc"
    assert e["state_topic"] == "sermatec/AB_12_3/live"  # every topic: one safe level
    assert e["unique_id"] == "AB 12.3_battery_soc"


def test_removals_of_components_no_longer_offered() -> None:
    _, read_only = discovery.device_config(ctx(writes=False))
    _, with_writes = discovery.device_config(ctx(writes=True))
    gone = discovery.removals(read_only, with_writes)
    assert gone["inverter_on"] == {"p": "binary_sensor"}
    assert gone["operating_mode"] == {"p": "sensor"}
    assert gone["grid_soc_min"] == {"p": "sensor"}
    assert not set(gone) & set(with_writes["cmps"])
    merged = {**with_writes["cmps"], **gone}  # published once, then the clean payload
    assert merged["set_inverter_on"]["p"] == "switch"

    back = discovery.removals(with_writes, read_only)
    assert back["set_inverter_on"] == {"p": "switch"} and back["set_clock"] == {"p": "button"}

    _, older = discovery.device_config(ctx(252, writes=False))
    dropped = discovery.removals(read_only, older)
    assert dropped["charge_power_limit"] == {"p": "sensor"}
    assert dropped["forced_charge_mode"] == {"p": "binary_sensor"}
    assert discovery.removals(None, read_only) == {}
    assert discovery.removals(read_only, read_only) == {}


def test_stale_topics_of_per_entity_discovery() -> None:
    before = [t for t, _ in discovery.entity_configs(ctx(writes=False))]
    after = [t for t, _ in discovery.entity_configs(ctx(writes=True))]
    stale = discovery.stale_topics(before, after)
    assert f"homeassistant/binary_sensor/{SERIAL}/inverter_on/config" \
        in stale
    assert not set(stale) & set(after)
    assert discovery.stale_topics(None, after) == []


def test_expire_after_follows_the_group_interval(full: dict[str, Any]) -> None:
    assert full["battery_soc"]["expire_after"] == 30  # 2 x 10 s + 2 x 5 s
    assert full["pv_energy_total"]["expire_after"] == 130
    assert full["problem"]["expire_after"] == 610
    assert "expire_after" not in full["last_seen"]
    assert full["last_seen"]["device_class"] == "timestamp"


def test_proxy_diagnostic_entity_only_when_the_proxy_is_on() -> None:
    ctx = DiscoveryContext(serial=SERIAL, model="5 kW", pcu_version=609, version=609)
    assert discovery.PROXY_CLIENTS not in discovery.entities(ctx)
    entity = discovery.entities(DiscoveryContext(serial=SERIAL, model="5 kW", pcu_version=609,
                                                 version=609, proxy=True))[
        discovery.PROXY_CLIENTS]
    assert entity["platform"] == "sensor" and entity["entity_category"] == "diagnostic"
    assert entity["state_topic"] == entity["json_attributes_topic"] == f"{BASE}/{SERIAL}/proxy"
    assert entity["value_template"] == "{{ value_json.clients }}"
    assert entity.get("enabled_by_default", True), "asked for: shown at once"


# --------------------------------------------------------------------------------------
# A lean device: what a new Home Assistant device shows (issue 9)
# --------------------------------------------------------------------------------------


def announced(model: str, writes: bool = True) -> dict[str, dict[str, Any]]:
    """The components as Home Assistant reads them from the retained device config."""
    context = DiscoveryContext(serial=SERIAL, model=model, pcu_version=609, version=603,
                               base_topic=BASE, writes_enabled=writes)
    _, payload = discovery.device_config(context)
    components: dict[str, dict[str, Any]] = discovery.expand(
        json.loads(json.dumps(payload)))["cmps"]
    return components


HEADLINE = ("pv_power", "battery_soc", "battery_state", "grid_power", "battery_power",
            "remote_load_power", "pv_energy_today", "grid_export_today", "grid_import_today",
            "battery_charge_today", "battery_discharge_today", "set_operating_mode",
            "set_grid_soc_min", "problem", "last_write", "set_forced_charge_mode",
            "set_forced_charge_period_1_start", "set_forced_charge_period_1_end")


@pytest.mark.parametrize("model", ["10 kW", "5 kW"])
@pytest.mark.parametrize("writes", [True, False])
def test_at_most_80_entities_are_enabled_on_a_new_device(model: str, writes: bool) -> None:
    components = announced(model, writes)
    enabled = {cid for cid, c in components.items() if c.get("enabled_by_default", True)}
    assert 30 <= len(enabled) <= 80, len(enabled)
    assert len(components) - len(enabled) > 100  # the rest is offered, disabled
    for cid in HEADLINE:
        if writes or (not cid.startswith("set_") and cid != "last_write"):
            assert cid in enabled, cid
    rare = [cid for cid in components if cid.removeprefix("set_").startswith(
        ("parallel_", "drm", "tou_period_")) or re.fullmatch(
        r"(set_)?forced_(dis)?charge_([a-z]+day|period_[2-4]_[a-z_]+)", cid)]
    assert len(rare) >= 9 + 14 + 10 + 16 * 3 + 2 * 3 * 2
    assert not set(rare) & enabled
    assert all(c["enabled_by_default"] is False for cid, c in components.items()
               if cid not in enabled)


def test_single_phase_models_offer_no_phase_b_or_c() -> None:
    single, three = set(announced("5 kW")), set(announced("10 kW"))
    phase_bc = three - single
    assert {"grid_b_voltage", "grid_c_current", "inverter_b_current", "grid_bc_voltage",
            "backup_c_voltage", "parallel_load_b_power", "module_c_temperature"} <= phase_bc
    assert all(re.search(r"(^|_)([bc]|ab|bc|ca)_", cid) for cid in phase_bc), phase_bc
    assert {"grid_a_voltage", "grid_a_current", "backup_a_voltage"} <= single
    unknown = DiscoveryContext(serial=SERIAL, model="7", pcu_version=609, version=603)
    assert "grid_c_voltage" in discovery.entities(unknown)  # unknown model: every phase


def test_pv_power_total_is_published_and_announced() -> None:
    pv = announced("5 kW")["pv_power"]
    assert (pv["p"], pv["device_class"], pv["unit_of_measurement"], pv["state_class"]) == (
        "sensor", "power", "W", "measurement")
    assert pv["state_topic"] == f"{BASE}/{SERIAL}/live"
    live = group_payloads(609)[f"{BASE}/{SERIAL}/live"]
    assert live["pv_power"] == live["pv1_power"] + live["pv2_power"]


def test_energy_counters_carry_the_energy_dashboard_names() -> None:
    components = announced("5 kW")
    export, daily = components["grid_export_total"], components["grid_export_today"]
    counters = {c["name"] for c in components.values() if c.get("device_class") == "energy"}
    # Every counter reads "<what> today" or "<what> total"; the two load counters (0x9b,
    # and 0x99's copy of it) alike
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+( [a-z]+)* (today|total)( \(summary frame\))?", n)
               for n in counters), counters
    assert {"Load energy today", "Load energy today (summary frame)",
            "Load energy total", "Load energy total (summary frame)"} <= counters
    assert (export["name"], daily["name"]) == ("Grid export total", "Grid export today")
    assert export["unique_id"] == f"{SERIAL}_grid_export_total", "renamed, same history"
    assert "grid_energy_total" not in components
    for counter in (export, daily, components["grid_import_today"]):
        assert (counter["device_class"], counter["state_class"]) == ("energy",
                                                                    "total_increasing")
    assert daily["suggested_display_precision"] == 1  # 0.1 kWh, finer than the totals
    assert daily["state_topic"] == f"{BASE}/{SERIAL}/energy"


def test_last_write_shows_the_outcome_of_the_last_write() -> None:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    env.filters["to_json"] = json.dumps  # Home Assistant's filter
    sensor = announced("5 kW")["last_write"]
    result_topic = f"{BASE}/{SERIAL}/set/result"
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == result_topic
    assert "expire_after" not in sensor and "entity_category" not in sensor
    template = env.from_string(sensor["value_template"])

    def shown(result: WriteResult) -> str:
        return str(template.render(value_json=json.loads(json.dumps(result.as_json()))))

    assert shown(WriteResult(True, changed={"grid_soc_min": 25})) == 'OK: {"grid_soc_min": 25}'
    refused = WriteResult(False, error="grid_soc_min: 5 is out of range (10 to 100 %)")
    assert shown(refused) == "Refused: grid_soc_min: 5 is out of range (10 to 100 %)"
    assert len(shown(WriteResult(False, error="x" * 400))) == 255  # a state's limit
    assert "last_write" not in announced("5 kW", writes=False)


def test_the_device_config_uses_home_assistants_abbreviations() -> None:
    context = DiscoveryContext(serial=SERIAL, model="10 kW", pcu_version=609, version=603,
                               writes_enabled=True)
    _, payload = discovery.device_config(context)
    text = json.dumps(payload)
    for long_name in ("unique_id", "value_template", "unit_of_measurement", "state_class",
                      "device_class", "entity_category", "availability", "expire_after"):
        assert f'"{long_name}"' not in text, long_name
    live = [c for c in payload["cmps"].values() if "stat_t" not in c]
    assert len(live) > 40  # the live state topic is given once, at device level
    long_form = json.dumps(discovery.expand(payload))
    assert len(text) < 0.8 * len(long_form), (len(text), len(long_form))


def test_keys_that_name_a_dict_method_are_read_by_subscript() -> None:
    # In HA's Jinja, value_json.items is the dict's method, not the state's "items" key.
    assert discovery.value_of("battery_soc") == "value_json.battery_soc"
    assert discovery.value_of("items") == "value_json['items']"
    assert discovery.value_of("values") == "value_json['values']"
    assert discovery.value_of("pv1-power") == "value_json['pv1-power']"


# --------------------------------------------------------------------------------------
# Schedules: time or text entities (issue 18)
# --------------------------------------------------------------------------------------

SCHEDULE_TIMES = {f"set_{prefix}_period_{n}_{end}" for n in range(1, 5) for end in ("start", "end")
                  for prefix in ("forced_charge", "forced_discharge")} | {
    f"set_tou_period_{n}_{end}" for n in range(1, 17) for end in ("start", "end")}


@pytest.mark.parametrize("platform", ["time", "text"])
def test_schedule_times_render_what_either_platform_takes(platform: str) -> None:
    jinja2 = pytest.importorskip("jinja2")
    entities = discovery.entities(ctx(time_platform=platform))
    times = {cid: e for cid, e in entities.items() if e["platform"] == platform}
    assert set(times) == SCHEDULE_TIMES
    for cid, e in times.items():
        key = cid.removeprefix("set_")
        assert e["command_topic"] == f"{BASE}/{SERIAL}/set/{key}"
        assert e["default_entity_id"] == f"{platform}.sermatec_{SERIAL.lower()}_{key}"
        template = jinja2.Environment().from_string(e["value_template"])
        shown = {value: template.render(value_json={key: value})
                 for value in ("07:45", "00:00", "24:00", None)}
        if platform == "time":  # parsed as a time of day; None is "unknown"
            assert shown == {"07:45": "07:45", "00:00": "00:00", "24:00": "00:00",
                             None: "None"}, cid
        else:  # the text entity refuses a state its pattern does not match (a ValueError)
            assert shown == {"07:45": "07:45", "00:00": "00:00", "24:00": "24:00",
                             None: ""}, cid
            assert all(re.compile(e["pattern"]).match(text) and len(text) <= e["max"]
                       for text in shown.values()), cid
            assert not re.compile(e["pattern"]).match("24:01")


def test_switching_the_time_platform_hands_the_entities_over() -> None:
    _, as_time = discovery.device_config(ctx(time_platform="time"))
    _, as_text = discovery.device_config(ctx(time_platform="text"))
    gone = discovery.removals(as_time, as_text)
    assert gone == {cid: {"p": "time"} for cid in SCHEDULE_TIMES}
    assert discovery.removals(as_text, as_time) == {cid: {"p": "text"} for cid in SCHEDULE_TIMES}
    # the same unique ids: Home Assistant keeps each entity's settings per platform
    assert {c["uniq_id"] for c in as_time["cmps"].values()} == {
        c["uniq_id"] for c in as_text["cmps"].values()}
    time_topics = [t for t, _ in discovery.entity_configs(ctx(time_platform="time"))]
    text_topics = [t for t, _ in discovery.entity_configs(ctx(time_platform="text"))]
    stale = discovery.stale_topics(time_topics, text_topics)
    assert stale == [t for t in time_topics if "/time/" in t] and len(stale) == 48


def test_a_select_shows_a_code_it_does_not_offer_as_unknown(full: dict[str, Any]) -> None:
    """Home Assistant logs an error for a select state outside its options and keeps the
    old one; an operating mode an installer set (6) shows as unknown, and as an attribute."""
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    env.filters["to_json"] = json.dumps
    select = full["set_operating_mode"]
    for mode, shown in (("Peak-valley", "Peak-valley"), (6, "None"), (None, "None")):
        state = {"operating_mode": mode}
        assert env.from_string(select["value_template"]).render(value_json=state) == shown
        assert json.loads(env.from_string(select["json_attributes_template"]).render(
            value_json=state)) == {"reported": mode}
    discharge = full["set_forced_discharge_soc_limit"]
    assert (discharge["min"], discharge["max"], discharge["unit_of_measurement"]) == (
        10, 100, "%")
    tariff = full["set_tou_period_1_tariff"]
    assert tariff["options"] == list(tables.TARIFF_PERIODS.values())
    assert "json_attributes_template" not in tariff  # every code has a name


def test_command_topics_carry_a_message_expiry() -> None:
    expiring = DiscoveryContext(serial=SERIAL, model="5 kW", pcu_version=609, version=609,
                                writes_enabled=True, command_expiry=30)
    _, payload = discovery.device_config(expiring)
    commands = [c for c in payload["cmps"].values() if "cmd_t" in c]
    assert len(commands) > 100
    assert all(c["msg_exp_int"] == 30 for c in commands)
    assert not [c for c in payload["cmps"].values() if "cmd_t" not in c and "msg_exp_int" in c]
    assert "msg_exp_int" not in payload, "at device level Home Assistant 2025.4 refuses it"
    for _, config in discovery.entity_configs(expiring):
        assert ("msg_exp_int" in config) == ("cmd_t" in config)
    assert "msg_exp_int" not in json.dumps(discovery.device_config(ctx())[1])
