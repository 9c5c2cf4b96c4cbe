"""The discovery lifecycle: from what the broker holds to what Home Assistant should see.

``discovery.plan`` is replayed here on a model of the broker's retained store, the way
Home Assistant would read it: what remains at the end, and which removals and hand-overs
went out on the way.
"""

from __future__ import annotations

import json
from typing import Any

from sermatec_bridge.bridge import discovery
from sermatec_bridge.bridge.discovery import MIGRATE, DiscoveryContext

SERIAL = "AB12345"
PREFIX = "homeassistant"
DEVICE_TOPIC = f"{PREFIX}/device/{SERIAL}/config"
CONTROLS = {"set_grid_soc_min", "set_operating_mode", "set_inverter_on", "set_clock"}


def ctx(writes: bool, serial: str = SERIAL) -> DiscoveryContext:
    return DiscoveryContext(serial=serial, model="5 kW", pcu_version=609, version=609,
                            writes_enabled=writes)


def run(context: DiscoveryContext, device_mode: bool,
        store: dict[str, str]) -> list[tuple[str, str]]:
    """Apply the plan to ``store`` (skipping what it already holds); what was sent."""
    sent = []
    for topic, text in discovery.plan(context, device_mode, store):
        if store.get(topic, "") == text:
            continue
        sent.append((topic, text))
        if text:
            store[topic] = text
        else:
            store.pop(topic, None)
    return sent


def device(store: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(store[DEVICE_TOPIC])
    return config


def test_turning_writes_off_removes_the_controls_an_earlier_run_offered() -> None:
    store: dict[str, str] = {}
    run(ctx(writes=True), True, store)
    assert set(device(store)["cmps"]) >= CONTROLS

    sent = run(ctx(writes=False), True, store)  # the next run, writes off
    removal = json.loads(sent[0][1])["cmps"]
    for cid in CONTROLS:
        assert removal[cid] == {"p": removal[cid]["p"]}, "removed as {'p': platform}"
    assert not CONTROLS & set(device(store)["cmps"]), "the clean config stays retained"
    assert [t for t, _ in sent] == [DEVICE_TOPIC, DEVICE_TOPIC]

    sent = run(ctx(writes=True), True, store)  # and on again: the sensors they replace go
    removal = json.loads(sent[0][1])["cmps"]
    assert removal["grid_soc_min"] == {"p": "sensor"}


def test_a_component_moved_to_another_platform_is_removed_from_the_old_one() -> None:
    """An upgrade that turns a sensor into a binary sensor (0xa2's day switches, once
    published as numbers) must not leave the old sensor behind in Home Assistant."""
    store: dict[str, str] = {}
    run(ctx(writes=False), True, store)
    older = device(store)
    older["cmps"]["forced_charge_monday"]["p"] = "sensor"  # as an earlier release had it
    store[DEVICE_TOPIC] = json.dumps(older)

    sent = run(ctx(writes=False), True, store)
    assert [t for t, _ in sent] == [DEVICE_TOPIC, DEVICE_TOPIC]
    assert json.loads(sent[0][1])["cmps"]["forced_charge_monday"] == {"p": "sensor"}
    assert device(store)["cmps"]["forced_charge_monday"]["p"] == "binary_sensor"


def test_an_unchanged_discovery_is_not_published_again() -> None:
    store: dict[str, str] = {}
    assert len(run(ctx(writes=False), True, store)) == 1
    assert run(ctx(writes=False), True, store) == []
    entity_store: dict[str, str] = {}
    assert len(run(ctx(writes=False), False, entity_store)) > 50
    assert run(ctx(writes=False), False, entity_store) == []


def test_per_entity_mode_clears_topics_no_longer_offered() -> None:
    store: dict[str, str] = {}
    run(ctx(writes=True), False, store)
    controls = {t for t in store if t.split("/")[1] in {"number", "select", "switch",
                                                        "button"}}
    assert controls
    sent = run(ctx(writes=False), False, store)
    assert {t for t, text in sent if not text} >= controls
    assert not controls & set(store)


def test_moving_to_device_discovery_hands_entities_over_then_clears_the_old_topics() -> None:
    store: dict[str, str] = {}
    run(ctx(writes=True), False, store)
    old = set(store)
    sent = run(ctx(writes=False), True, store)
    topics = [t for t, _ in sent]
    assert topics[-1] == DEVICE_TOPIC, "the device config comes last"
    migrated = [(i, t) for i, (t, text) in enumerate(sent) if text == MIGRATE]
    offered = {t for t, _ in discovery.entity_configs(ctx(writes=False))}
    assert {t for _, t in migrated} == old & offered, "entities that stay are handed over"
    cleared = [(i, t) for i, (t, text) in enumerate(sent) if not text]
    assert {t for _, t in cleared} == old, "then every per-entity topic is cleared"
    assert cleared[0][0] > migrated[-1][0]
    assert set(store) == {DEVICE_TOPIC}


def test_moving_back_to_per_entity_discovery_hands_over_and_clears_the_device() -> None:
    store: dict[str, str] = {}
    run(ctx(writes=True), True, store)
    sent = run(ctx(writes=False), False, store)
    on_device = [text for t, text in sent if t == DEVICE_TOPIC]
    removal = json.loads(on_device[0])["cmps"]
    assert removal["set_grid_soc_min"] == {"p": "number"}, "controls removed first"
    assert on_device[1:] == [MIGRATE, ""]
    assert [t for t, _ in sent[:3]] == [DEVICE_TOPIC] * 3, "cleared before the entities"
    assert DEVICE_TOPIC not in store
    assert len(store) > 50


def test_only_this_inverters_topics_are_touched() -> None:
    other = ctx(writes=True, serial="OTHER1")
    store: dict[str, str] = {}
    run(other, True, store)
    run(other, False, store)
    before = dict(store)
    run(ctx(writes=False), True, store)
    assert {t: v for t, v in store.items() if t in before} == before


def test_topic_id_makes_any_serial_one_safe_topic_level() -> None:
    assert discovery.topic_id("ST5K0SIM-01_a") == "ST5K0SIM-01_a"
    assert discovery.topic_id("A/B+C#D E\0") == "A_B_C_D_E_"
    assert discovery.topic_id("") == "_"
    context = ctx(writes=True, serial="X/+#")
    config = discovery.expand(discovery.device_config(context)[1])
    topics = [config["availability"][1]["topic"]] + [
        c.get("state_topic", c.get("command_topic")) for c in config["cmps"].values()]
    assert all(t.startswith("sermatec/X___/") for t in topics)
    assert config["dev"]["identifiers"] == ["X/+#"], "Home Assistant still sees the serial"
