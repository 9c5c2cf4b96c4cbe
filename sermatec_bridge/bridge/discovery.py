"""Home Assistant MQTT discovery, generated from the protocol tables.

Every field of every poll group that the inverter's PCU version offers becomes an
entity (sensor, enum sensor or binary sensor) reading the group's JSON state topic;
with writes enabled, the settings the bridge can write become controls (switch,
select, numbers, a clock button) instead of read-only sensors.

Two ways to announce them, for Home Assistant 2024.11 and later (device-based, one
retained message) and for older versions (one retained message per entity), plus
what to publish so that Home Assistant drops entities that are no longer offered.

Every combination of device class, unit and state class is one Home Assistant accepts
(see :data:`SENSOR_UNITS` and :data:`SENSOR_STATE_CLASSES`); where a table's unit does
not fit a device class, the device class is dropped rather than the entity rejected.

A new device shows only what a user looks at or automates (:data:`ENABLED_BY_DEFAULT`);
the rest is announced disabled, one click away in Home Assistant, and not recorded
until enabled. Single-phase models are not offered the fields of phases B and C.
The messages use Home Assistant's abbreviations (:data:`ABBREVIATIONS`) to stay small.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .. import PROJECT_URL, __version__
from ..protocol import tables
from ..protocol.model import Command, Field
from . import schedules
from .groups import BY_KEY, GROUPS, Group
from .state import LAST_SEEN, derived_fields, is_published

MANUFACTURER = "Sermatec"
ORIGIN_NAME = "sermatec-bridge"
QOS = 1

ON, OFF = "ON", "OFF"
PRESS = "PRESS"

DEFAULT_INTERVALS: Mapping[str, float] = {"live": 10.0, "energy": 60.0, "slow": 300.0}

# Units Home Assistant accepts per sensor device class (the classes the tables use, and
# timestamp/enum). None: no unit.
SENSOR_UNITS: dict[str, frozenset[str | None]] = {
    "apparent_power": frozenset({"VA", "mVA", "kVA"}),
    "battery": frozenset({"%"}),
    "current": frozenset({"A", "mA"}),
    "energy": frozenset({"Wh", "kWh", "MWh", "GWh", "TWh", "J", "kJ", "MJ", "GJ"}),
    "enum": frozenset({None}),
    "frequency": frozenset({"Hz", "kHz", "MHz", "GHz"}),
    "power": frozenset({"mW", "W", "kW", "MW", "GW", "TW"}),
    "power_factor": frozenset({"%", None}),
    "reactive_power": frozenset({"var", "kvar"}),
    "temperature": frozenset({"°C", "°F", "K"}),
    "timestamp": frozenset({None}),
    "voltage": frozenset({"V", "mV", "µV", "kV", "MV"}),
}

# State classes Home Assistant accepts per device class (none for enum and timestamp).
SENSOR_STATE_CLASSES: dict[str, frozenset[str | None]] = {
    "energy": frozenset({"total", "total_increasing", None}),
    "enum": frozenset({None}),
    "timestamp": frozenset({None}),
}
_MEASURED = frozenset({"measurement", None})

BINARY_SENSOR_CLASSES = frozenset({
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
    "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
    "smoke", "sound", "tamper", "update", "vibration", "window",
})

# Number device classes the controls may carry, with their units.
NUMBER_UNITS: dict[str, frozenset[str | None]] = {
    "battery": frozenset({"%"}),
    "current": frozenset({"A", "mA"}),
    "power": frozenset({"mW", "W", "kW", "MW", "GW", "TW"}),
    "voltage": frozenset({"V", "mV", "µV", "kV", "MV"}),
}


@dataclass(frozen=True)
class Control:
    """A setting written from Home Assistant: its entity platform and its write."""

    key: str
    platform: str
    write: int  # the settings command that writes it
    group: str = "settings"  # the poll group whose state shows its current value


_FORCED = tuple(f.key for f in tables.SET_FORCED_SCHEDULE.layouts[500]
                if f.group is None and not f.key.endswith("_period_count"))

CONTROLS: tuple[Control, ...] = (
    Control("inverter_on", "switch", 0x64, group="live"),
    Control("operating_mode", "select", 0x66),
    Control("grid_soc_min", "number", 0x66),
    Control("grid_export_limit", "number", 0x66),
    Control("off_grid_soc_min", "number", 0x6A),
    Control("charge_power_limit", "number", 0x6A),
    Control("discharge_power_limit", "number", 0x6A),
    *(Control(f"tariff_{name}", "number", 0x66) for name in ("tip", "peak", "flat", "valley")),
    Control("tou_count", "number", 0x66),
    # the forced schedule's switches (enabled, weekdays) and SOC limits; its periods are
    # entities of their own (schedule_entities)
    *(Control(key, "number" if key.endswith("_soc_limit") else "switch", 0x71)
      for key in _FORCED),
)
CLOCK_KEY = "clock"  # set/clock, handled by the writer without a value
LAST_WRITE = "last_write"  # the sensor showing the outcome of the last write

TIME_PATTERN = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)?$"
"""What a schedule time takes in its text form: HH:MM, 24:00 for the end of the day, or
nothing (a time-of-use period not in use shows empty)."""

# What a new device shows: the entities a user looks at or automates, by key (a control's
# component id is set_<key>). Everything else is announced with enabled_by_default false.
ENABLED_BY_DEFAULT = frozenset({
    "cloud_link",  # offered only when the vendor cloud is relayed
    "proxy_clients",  # offered only when the app proxy is on
    # battery; power signed for the Energy dashboard and power-flow cards
    "battery_soc", "battery_state", "battery_voltage", "battery_current",
    "battery_temperature", "battery_soh", "battery_power",
    # PV
    "pv_power", "pv1_power", "pv2_power", "pv1_voltage", "pv2_voltage", "pv1_current",
    "pv2_current",
    # grid, load, backup output, inverter
    "grid_power", "grid_frequency", "grid_power_down", "remote_load_power",
    *(f"grid_{phase}_{quantity}" for phase in "abc" for quantity in ("voltage", "current")),
    "backup_active_power", "backup_a_voltage", "inverter_on", "inverter_temperature",
    # energy: what the Energy dashboard needs, daily and lifetime
    *(f"{counter}_{period}" for period in ("today", "total") for counter in (
        "pv_energy", "load_energy", "grid_import", "grid_export", "battery_charge",
        "battery_discharge")),
    # settings a user changes or watches, alarms, freshness, write outcomes
    "operating_mode", "grid_soc_min", "off_grid_soc_min", "grid_export_limit",
    "charge_power_limit", "discharge_power_limit", CLOCK_KEY,
    "problem", "active_alarms", LAST_SEEN, LAST_WRITE,
    # schedules: forced charge / discharge on, its SOC limit and first period (what an
    # automation sets); whether a time-of-use table is in use
    *(f"forced_{kind}_{key}" for kind in ("charge", "discharge")
      for key in ("mode", "soc_limit", "period_1_start", "period_1_end")),
    "tou_count",
})

_OTHER_PHASES = re.compile(r"(^|_)([bc]|ab|bc|ca)_(voltage|current|power|temperature)$")


def other_phase(key: str) -> bool:
    """A field of phase B or C (or between two phases): zero on a single-phase model."""
    return _OTHER_PHASES.search(key) is not None


def topic_id(serial: str) -> str:
    """A serial number made safe as one topic level, for the bridge's topics and Home
    Assistant's discovery topics alike: [a-zA-Z0-9_-], anything else becomes ``_``.

    A serial with ``/``, ``+`` or ``#`` could otherwise split a level, make a topic
    unpublishable, or route one inverter's writes to another.
    """
    return re.sub(r"[^a-zA-Z0-9_-]", "_", serial) or "_"


def bridge_topic(base_topic: str, bridge_id: str | None = None) -> str:
    """Where a bridge says ``online`` / ``offline`` (its last will): one topic per bridge,
    ``<base>/bridge/<id>/state``, or ``<base>/bridge/state`` for the default one."""
    return f"{base_topic}/bridge/{bridge_id}/state" if bridge_id else f"{base_topic}/bridge/state"


@dataclass(frozen=True)
class DiscoveryContext:
    """Who the inverter is and how the bridge publishes it."""

    serial: str
    model: str  # the model label from 0x98, e.g. "5 kW"
    pcu_version: int  # as reported
    version: int  # the PCU version whose tables apply
    dsp_version: str | None = None
    base_topic: str = "sermatec"
    prefix: str = "homeassistant"
    writes_enabled: bool = False
    intervals: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_INTERVALS))
    timeout: float = 5.0
    sw_version: str = __version__
    proxy: bool = False  # the app proxy is on: offer its diagnostic entity
    cloud: bool = False  # the vendor cloud is relayed: offer its link's diagnostic entity
    bridge_id: str | None = None  # the bridge that serves it (None: the default one)
    time_platform: str = "time"  # schedule times as "time" (HA 2026.5+) or "text" entities
    # Seconds a command Home Assistant publishes stays on the broker (MQTT 5's message
    # expiry); None: not announced (a broker link in MQTT 3.1.1)
    command_expiry: int | None = None

    @property
    def single_phase(self) -> bool:
        """A model with one AC phase (an unknown model is offered every phase)."""
        return self.model.strip() in tables.SINGLE_PHASE_MODELS

    def state_topic(self, group: str) -> str:
        return f"{self.base_topic}/{self.node_id}/{group}"

    def command_topic(self, key: str) -> str:
        return f"{self.base_topic}/{self.node_id}/set/{key}"

    @property
    def slug(self) -> str:
        """The serial as Home Assistant allows it in entity ids: lowercase, [a-z0-9_]."""
        return re.sub(r"[^a-z0-9_]", "_", self.serial.lower())

    @property
    def node_id(self) -> str:
        """The serial as it appears in every topic (see :func:`topic_id`)."""
        return topic_id(self.serial)

    def expire_after(self, group: Group) -> int:
        """Seconds after which a state not refreshed is shown as unavailable.

        Two missed polls, each allowed its timeout, before Home Assistant gives up.
        """
        interval = self.intervals.get(group.interval, DEFAULT_INTERVALS[group.interval])
        return math.ceil(2 * interval + 2 * self.timeout)


# --------------------------------------------------------------------------------------
# What the inverter offers
# --------------------------------------------------------------------------------------


def group_commands(group: Group, version: int) -> list[Command]:
    """The commands whose replies fill a group, second frames included (0x95 → 0x9d)."""
    return reply_commands(group.commands(version), version)


def reply_commands(queries: Iterable[Command], version: int) -> list[Command]:
    """The commands whose replies these queries bring, second frames included."""
    out: list[Command] = []
    for command in queries:
        for code in tables.replies(command, version):
            reply = tables.COMMANDS[code]
            if reply.layout(version) is not None and reply not in out:
                out.append(reply)
    return out


def group_fields(group: Group, version: int) -> list[Field]:
    """The fields a group's state object shows one by one (no records, no alarm bits)."""
    seen: set[str] = set()
    out: list[Field] = []
    for command in group_commands(group, version):
        for f in command.layout(version) or ():
            if f.group is not None or not is_published(f) or f.key in seen:
                continue
            seen.add(f.key)
            out.append(f)
    return out


def offered_controls(ctx: DiscoveryContext) -> list[tuple[Control, Field]]:
    """The controls of this PCU version, each with the field its write carries.

    A control is offered when a command of this version writes it and a poll group
    shows its current value.
    """
    if not ctx.writes_enabled:
        return []
    out = []
    for control in CONTROLS:
        written = [f for f in tables.COMMANDS[control.write].layout(ctx.version) or ()
                   if f.key == control.key and f.group is None]
        shown = {f.key for f in group_fields(BY_KEY[control.group], ctx.version)}
        if written and control.key in shown:
            out.append((control, written[0]))
    return out


def clock_offered(ctx: DiscoveryContext) -> bool:
    return ctx.writes_enabled and tables.CLOCK.layout(ctx.version) is not None


# --------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------


def entities(ctx: DiscoveryContext) -> dict[str, dict[str, Any]]:
    """Every entity's Home Assistant config, with ``platform``, by component id.

    The component id is the field key for read-only entities and ``set_<key>`` for
    controls, so a read-only entity and the control that replaces it never share an id
    (Home Assistant identifies a component by platform and id; see :func:`removals`).
    """
    out: dict[str, dict[str, Any]] = {}
    controls = offered_controls(ctx)
    controlled = {c.key for c, _ in controls}
    for group in GROUPS:
        if group.key == "alarms":
            out.update(_alarm_entities(ctx, group))
            continue
        fields = group_fields(group, ctx.version)
        for f in fields + derived_fields({f.key for f in fields}):
            if f.key not in controlled and not (ctx.single_phase and other_phase(f.key)):
                out[f.key] = _read_only(ctx, group, f)
        if group.key == "live":
            out[LAST_SEEN] = _last_seen(ctx, group)
    for control, f in controls:
        out[f"set_{control.key}"] = _control(ctx, control, f)
    out.update(schedule_entities(ctx))
    if clock_offered(ctx):
        out[f"set_{CLOCK_KEY}"] = _clock_button(ctx)
    if ctx.writes_enabled:
        out[LAST_WRITE] = _last_write(ctx)
    if ctx.proxy:
        out[PROXY_CLIENTS] = _proxy_clients(ctx)
    if ctx.cloud:
        out[CLOUD_LINK] = _cloud_link(ctx)
    for cid, config in out.items():
        if cid.removeprefix("set_") not in ENABLED_BY_DEFAULT:
            config["enabled_by_default"] = False
        if "command_topic" in config and ctx.command_expiry is not None:
            config["message_expiry_interval"] = ctx.command_expiry
    return out


def schedule_entities(ctx: DiscoveryContext) -> dict[str, dict[str, Any]]:
    """Each schedule period's start, end, tariff and in-use switch as an entity of its own
    (see :mod:`.schedules`): controls where a write carries them, sensors otherwise."""
    group = BY_KEY["settings"]
    writes = {c.write for c in CONTROLS} if ctx.writes_enabled else set()
    written = {s.key for code in writes
               for s in schedules.slots(tables.COMMANDS[code].layout(ctx.version) or (),
                                        ctx.version)}
    out: dict[str, dict[str, Any]] = {}
    for command in group_commands(group, ctx.version):
        for slot in schedules.slots(command.layout(ctx.version) or (), ctx.version):
            if slot.key in written:
                out[f"set_{slot.key}"] = _slot_control(ctx, slot)
            else:
                out[slot.key] = _read_only(ctx, group, replace(
                    slot.field, key=slot.key, name=slot.name, category="config"))
    return out



def _slot_control(ctx: DiscoveryContext, slot: schedules.Slot) -> dict[str, Any]:
    f = slot.field
    platform = ("switch" if slot.in_use else "select" if f.codes is not None
                else ctx.time_platform)
    config = _base(ctx, platform, slot.key, slot.name)
    config.update({
        "state_topic": ctx.state_topic("settings"),
        "command_topic": ctx.command_topic(slot.key),
        "entity_category": "config",
    })
    v = value_of(slot.key)
    if platform == "switch":
        config.update({"value_template": on_off_template(slot.key), "payload_on": ON,
                       "payload_off": OFF})
    elif platform == "select":
        config.update({"value_template": _select_template(slot.key, f),
                       "options": writable_options(f)})
    elif platform == "time":  # no 24:00 in a time entity: the end of the day is 00:00
        config["value_template"] = (f"{{% set t = {v} %}}{{{{ 'None' if t is none else "
                                    f"'00:00' if t == '24:00' else t }}}}")
    else:
        config.update({"value_template": f"{{% set t = {v} %}}{{{{ '' if t is none else t }}}}",
                       "pattern": TIME_PATTERN, "max": 5, "icon": "mdi:clock-outline"})
    return config


PROXY_CLIENTS = "proxy_clients"


def _proxy_clients(ctx: DiscoveryContext) -> dict[str, Any]:
    """The app proxy's clients now; its counters as attributes (bridge/proxy.py)."""
    config = _base(ctx, "sensor", PROXY_CLIENTS, "App proxy clients")
    config.update({
        "state_topic": ctx.state_topic("proxy"),
        "value_template": state_template("clients"),
        "json_attributes_topic": ctx.state_topic("proxy"),
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "icon": "mdi:cellphone-link",
    })
    return config


CLOUD_LINK = "cloud_link"


def _cloud_link(ctx: DiscoveryContext) -> dict[str, Any]:
    """The link to the vendor cloud, up or down; what the cloud asked, relayed or
    refused, as attributes (bridge/cloud.py)."""
    config = _base(ctx, "binary_sensor", CLOUD_LINK, "Cloud link")
    config.update({
        "state_topic": ctx.state_topic("cloud"),
        "value_template": f"{{% if value_json.link == 'up' %}}{ON}{{% else %}}{OFF}{{% endif %}}",
        "payload_on": ON,
        "payload_off": OFF,
        "json_attributes_topic": ctx.state_topic("cloud"),
        "device_class": "connectivity",
        "entity_category": "diagnostic",
    })
    return config


def _base(ctx: DiscoveryContext, platform: str, key: str, name: str) -> dict[str, Any]:
    object_id = f"sermatec_{ctx.slug}_{key}"
    return {
        "platform": platform,
        "name": name,
        "unique_id": f"{ctx.serial}_{key}",
        "object_id": object_id,  # Home Assistant before 2025.10
        "default_entity_id": f"{platform}.{object_id}",
        "availability": availability(ctx),
        "availability_mode": "all",
    }


def availability(ctx: DiscoveryContext) -> list[dict[str, str]]:
    """Online only while both the bridge and this inverter are."""
    return [
        {"topic": bridge_topic(ctx.base_topic, ctx.bridge_id)},
        {"topic": f"{ctx.base_topic}/{ctx.node_id}/availability"},
    ]


_DICT_ATTRIBUTES = frozenset(dir({}))  # value_json.items would be the method, not the key


def value_of(key: str) -> str:
    """The Jinja expression for a key of the state object."""
    return f"value_json.{key}" if key.isidentifier() and key not in _DICT_ATTRIBUTES else (
        f"value_json[{key!r}]"
    )


def state_template(key: str) -> str:
    return "{{ " + value_of(key) + " }}"


def on_off_template(key: str) -> str:
    """ON / OFF from a JSON boolean; "None" (unknown) from null."""
    v = value_of(key)
    return f"{{% if {v} is none %}}None{{% elif {v} %}}{ON}{{% else %}}{OFF}{{% endif %}}"


def _category(f: Field) -> str | None:
    # Home Assistant refuses sensors and binary sensors in the "config" category.
    return "diagnostic" if f.category in ("diagnostic", "config") else None


def _read_only(ctx: DiscoveryContext, group: Group, f: Field) -> dict[str, Any]:
    platform = "binary_sensor" if f.is_bool else "sensor"
    config = _base(ctx, platform, f.key, f.name)
    config["state_topic"] = ctx.state_topic(group.key)
    config["expire_after"] = ctx.expire_after(group)
    if f.is_bool:
        config["value_template"] = on_off_template(f.key)
        config["payload_on"], config["payload_off"] = ON, OFF
        if f.device_class in BINARY_SENSOR_CLASSES:
            config["device_class"] = f.device_class
    else:
        config["value_template"] = state_template(f.key)
        config.update(sensor_options(f))
    if (category := _category(f)) is not None:
        config["entity_category"] = category
    return config


def writable_options(f: Field) -> list[str]:
    """The options a select offers: the named codes, the ones a write takes."""
    return list(dict.fromkeys((f.codes or {}).values()))


def _select_template(key: str, f: Field) -> str:
    """The current option; unknown ("None") for a code the select does not offer, which
    Home Assistant would otherwise log as an invalid option."""
    v = value_of(key)
    return (f"{{% set o = {v} %}}{{{{ o if o in {json.dumps(writable_options(f))} "
            "else 'None' }}")


def enum_options(f: Field) -> list[str]:
    """The options of a coded field: its labels, then the codes within its limits that
    have none (an operating mode 6 shows as "6", as the state carries it)."""
    labels = list(dict.fromkeys((f.codes or {}).values()))
    lo, hi = f.limits or (0, -1)
    return labels + [str(c) for c in range(int(lo), int(hi) + 1) if c not in (f.codes or {})]


def sensor_options(f: Field) -> dict[str, Any]:
    """device_class, unit, state_class, options and precision of a sensor field."""
    if f.codes is not None:
        return {"device_class": "enum", "options": enum_options(f)}
    if not f.is_numeric:
        return {}  # text: no class, unit, state class or precision (HA would want numbers)
    out: dict[str, Any] = {}
    device_class = f.device_class
    if device_class is not None and f.unit not in SENSOR_UNITS.get(device_class, {f.unit}):
        device_class = None  # the unit does not fit: keep the unit, drop the class
    state_class = f.state_class
    if device_class is not None and state_class not in SENSOR_STATE_CLASSES.get(
        device_class, _MEASURED
    ):
        state_class = None
    if device_class is not None:
        out["device_class"] = device_class
    if f.unit is not None:
        out["unit_of_measurement"] = f.unit
    if state_class is not None:
        out["state_class"] = state_class
    precision = f.precision if f.precision is not None else _digits(f.scale)
    if precision is not None:
        out["suggested_display_precision"] = precision
    return out


def _digits(scale: float) -> int | None:
    """Decimals a scale implies (0.1 -> 1), or None for whole numbers."""
    if scale >= 1:
        return None
    return max(0, -math.floor(math.log10(scale) + 1e-9))


def _last_seen(ctx: DiscoveryContext, group: Group) -> dict[str, Any]:
    config = _base(ctx, "sensor", LAST_SEEN, "Last seen")
    config.update({
        "state_topic": ctx.state_topic(group.key),
        "value_template": state_template(LAST_SEEN),
        "device_class": "timestamp",
        "entity_category": "diagnostic",
    })
    return config  # no expire_after: when the data stops, this shows since when


def _alarm_entities(ctx: DiscoveryContext, group: Group) -> dict[str, dict[str, Any]]:
    topic = ctx.state_topic(group.key)
    problem = _base(ctx, "binary_sensor", "problem", "Problem")
    problem.update({
        "state_topic": topic,
        "value_template": on_off_template("problem"),
        "payload_on": ON,
        "payload_off": OFF,
        "device_class": "problem",
        "expire_after": ctx.expire_after(group),
    })
    active = _base(ctx, "sensor", "active_alarms", "Active alarms")
    active.update({
        "state_topic": topic,
        "value_template": state_template("count"),
        "state_class": "measurement",
        "suggested_display_precision": 0,
        "json_attributes_topic": topic,
        "json_attributes_template": "{{ {'alarms': value_json.alarms} | to_json }}",
        "expire_after": ctx.expire_after(group),
    })
    return {"problem": problem, "active_alarms": active}


def _last_write(ctx: DiscoveryContext) -> dict[str, Any]:
    """The outcome of the last write: "OK: …" or "Refused: <reason>", details as attributes.

    Home Assistant shows a write as done once it is sent; this shows what the bridge
    and the inverter made of it.
    """
    topic = ctx.command_topic("result")
    config = _base(ctx, "sensor", LAST_WRITE, "Last write")
    ok = "'OK: ' ~ (value_json.changed | default({}) | to_json)"
    refused = "'Refused: ' ~ value_json.error | default('no reason given')"
    config.update({
        "state_topic": topic,
        "value_template": "{{ ((" + ok + ") if value_json.ok else (" + refused + "))[:255] }}",
        "json_attributes_topic": topic,
        "icon": "mdi:playlist-check",
    })
    return config  # no expire_after: the last outcome stays true until the next write


def _control(ctx: DiscoveryContext, control: Control, f: Field) -> dict[str, Any]:
    config = _base(ctx, control.platform, f.key, f.name)
    config["state_topic"] = ctx.state_topic(control.group)
    config["command_topic"] = ctx.command_topic(f.key)
    if control.platform == "switch":
        config.update({
            "value_template": on_off_template(f.key),
            "payload_on": ON,
            "payload_off": OFF,
        })
    elif control.platform == "select":
        config.update({
            "value_template": _select_template(f.key, f),
            "options": writable_options(f),
        })
        if enum_options(f) != writable_options(f):  # a code without a name shows here
            config["json_attributes_topic"] = config["state_topic"]
            config["json_attributes_template"] = (
                "{{ {'reported': " + value_of(f.key) + "} | to_json }}")
    else:
        config.update(_number_options(f))
        config["value_template"] = state_template(f.key)
    if control.platform == "number" or f.category == "config":
        config["entity_category"] = "config"
    return config


def _number_options(f: Field) -> dict[str, Any]:
    lo, hi = f.limits or (0, 100)
    out: dict[str, Any] = {
        "min": _plain(lo),
        "max": _plain(hi),
        "step": _plain(f.scale),
        "mode": "box",
    }
    if f.unit is not None:
        out["unit_of_measurement"] = f.unit
    if f.device_class is not None and f.unit in NUMBER_UNITS.get(f.device_class, ()):
        out["device_class"] = f.device_class
    return out


def _plain(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _clock_button(ctx: DiscoveryContext) -> dict[str, Any]:
    config = _base(ctx, "button", f"set_{CLOCK_KEY}", "Set clock")
    config.update({
        "command_topic": ctx.command_topic(CLOCK_KEY),
        "payload_press": PRESS,
        "entity_category": "config",
    })
    return config


# --------------------------------------------------------------------------------------
# Discovery messages
# --------------------------------------------------------------------------------------


def device_info(ctx: DiscoveryContext) -> dict[str, Any]:
    known = ctx.model.strip().endswith("kW")
    sw = f"PCU {ctx.pcu_version}" + (f", DSP {ctx.dsp_version}" if ctx.dsp_version else "")
    return {
        "identifiers": [ctx.serial],
        "manufacturer": MANUFACTURER,
        "model": f"{ctx.model} hybrid inverter" if known else (
            f"Hybrid inverter (model code {ctx.model})"
        ),
        "name": f"{MANUFACTURER} {ctx.model}" if known else f"{MANUFACTURER} inverter",
        "sw_version": sw,
        "serial_number": ctx.serial,
    }


def origin(ctx: DiscoveryContext) -> dict[str, Any]:
    return {"name": ORIGIN_NAME, "sw_version": ctx.sw_version, "support_url": PROJECT_URL}


def device_topic(ctx: DiscoveryContext) -> str:
    return f"{ctx.prefix}/device/{ctx.node_id}/config"


# Home Assistant's abbreviations of the options this bridge uses (its discovery code
# expands them back: homeassistant/components/mqtt/abbreviations.py).
ABBREVIATIONS: dict[str, str] = {
    "availability": "avty",
    "availability_mode": "avty_mode",
    "command_topic": "cmd_t",
    "default_entity_id": "def_ent_id",
    "device": "dev",
    "device_class": "dev_cla",
    "enabled_by_default": "en",
    "entity_category": "ent_cat",
    "expire_after": "exp_aft",
    "icon": "ic",
    "json_attributes_template": "json_attr_tpl",
    "json_attributes_topic": "json_attr_t",
    "message_expiry_interval": "msg_exp_int",
    "object_id": "obj_id",
    "options": "ops",
    "origin": "o",
    "payload_off": "pl_off",
    "payload_on": "pl_on",
    "payload_press": "pl_prs",
    "pattern": "ptrn",
    "state_class": "stat_cla",
    "state_topic": "stat_t",
    "suggested_display_precision": "sug_dsp_prc",
    "unique_id": "uniq_id",
    "unit_of_measurement": "unit_of_meas",
    "value_template": "val_tpl",
}
DEVICE_ABBREVIATIONS = {"identifiers": "ids", "manufacturer": "mf", "model": "mdl",
                        "sw_version": "sw"}
ORIGIN_ABBREVIATIONS = {"sw_version": "sw", "support_url": "url"}
AVAILABILITY_ABBREVIATIONS = {"topic": "t"}
_NESTED = {"device": DEVICE_ABBREVIATIONS, "origin": ORIGIN_ABBREVIATIONS}
# Options a device config may give once for all its components (Home Assistant's
# shared options): a component that does not set them inherits them.
SHARED_OPTIONS = ("availability", "availability_mode", "state_topic", "qos")


def abbreviate(config: Mapping[str, Any]) -> dict[str, Any]:
    """An entity or device config with Home Assistant's short option names."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _NESTED:
            value = _renamed(value, _NESTED[key])
        elif key == "availability":
            value = [_renamed(a, AVAILABILITY_ABBREVIATIONS) for a in value]
        out[ABBREVIATIONS.get(key, key)] = value
    return out


def expand(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A discovery payload as Home Assistant reads it: long names, shared options merged.

    The inverse of :func:`abbreviate`, applied to a device config's components too;
    ``dev`` and ``o`` keep the short names the device discovery docs use.
    """
    long_names = {short: long for long, short in ABBREVIATIONS.items()}
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key in ("dev", "o"):  # kept short, as the device discovery docs write them
            value = _renamed(value, {v: k for k, v in _NESTED[long_names[key]].items()})
        elif key in _NESTED:
            value = _renamed(value, {v: k for k, v in _NESTED[key].items()})
        key = long_names.get(key, key) if key not in ("dev", "o") else key
        if key == "availability":
            value = [_renamed(a, {"t": "topic"}) for a in value]
        out[key] = value
    if isinstance(out.get("cmps"), Mapping):
        shared = {k: out[k] for k in SHARED_OPTIONS if k in out}
        out["cmps"] = {
            cid: (shared | expand(c)) if len(c) > 1 else dict(c)  # {"p": …} is a removal
            for cid, c in out["cmps"].items()
        }
    return out


def _renamed(mapping: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in mapping.items()}


def device_config(ctx: DiscoveryContext) -> tuple[str, dict[str, Any]]:
    """Device-based discovery (Home Assistant 2024.11+): one retained message.

    Availability and the live state topic are shared at device level; each component
    names its platform as ``p``. Options are abbreviated (:func:`expand` reverses it).
    """
    live = ctx.state_topic("live")
    components: dict[str, dict[str, Any]] = {}
    for cid, config in entities(ctx).items():
        component = {k: v for k, v in config.items() if k not in SHARED_OPTIONS
                     and k != "platform"}
        if config.get("state_topic", live) != live:
            component["state_topic"] = config["state_topic"]
        components[cid] = {"p": config["platform"], **abbreviate(component)}
    payload: dict[str, Any] = abbreviate({
        "device": device_info(ctx),
        "origin": origin(ctx),
        "availability": availability(ctx),
        "availability_mode": "all",
        "state_topic": live,
        "qos": QOS,
    })
    payload["cmps"] = components
    return device_topic(ctx), payload


def entity_topic(ctx: DiscoveryContext, platform: str, component_id: str) -> str:
    """``<prefix>/<platform>/<node>/<component id>/config``: the same discovery id as the
    component of the device config, which Home Assistant's ``migrate_discovery`` needs to
    hand an entity over from one mode to the other."""
    return f"{ctx.prefix}/{platform}/{ctx.node_id}/{component_id}/config"


def entity_configs(ctx: DiscoveryContext) -> list[tuple[str, dict[str, Any]]]:
    """Per-entity discovery (Home Assistant before 2024.11): one retained message each."""
    out = []
    device, source = device_info(ctx), origin(ctx)
    for component_id, config in entities(ctx).items():
        platform = config["platform"]
        payload = {k: v for k, v in config.items() if k != "platform"}
        payload.update({"device": device, "origin": source, "qos": QOS})
        out.append((entity_topic(ctx, platform, component_id), abbreviate(payload)))
    return out


def _platform(component: Mapping[str, Any]) -> str | None:
    platform = component.get("p", component.get("platform"))
    return platform if isinstance(platform, str) else None


def removals(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> dict[str, dict[str, str]]:
    """The ``cmps`` entries that make Home Assistant remove components no longer offered,
    or offered on another platform (a setting that became a switch).

    Home Assistant removes a component whose entry holds only its platform (``p``), and
    never on its own: a component left out, or moved to another platform, stays as it
    was. Publish the device config once with these merged into ``cmps``, then the clean
    one.
    """
    if not previous:
        return {}
    before: Mapping[str, Any] = previous.get("cmps") or {}
    now: Mapping[str, Any] = current.get("cmps") or {}
    out: dict[str, dict[str, str]] = {}
    for cid, component in before.items():
        platform = _platform(component) if isinstance(component, Mapping) else None
        if platform is not None and platform != _platform(now.get(cid) or {}):
            out[cid] = {"p": platform}
    return out


def stale_topics(previous_topics: Sequence[str] | None, current_topics: Sequence[str]) -> list[str]:
    """Per-entity discovery topics published before and not now: clear them (empty)."""
    keep = set(current_topics)
    return [t for t in dict.fromkeys(previous_topics or ()) if t not in keep]


def iter_state_keys(config: Mapping[str, Any]) -> Iterator[str]:
    """The state-object keys an entity config's templates read (the demo shows the first)."""
    for option in ("value_template", "json_attributes_template"):
        template = config.get(option)
        if isinstance(template, str):
            for dotted, quoted in _STATE_KEY.findall(template):
                yield dotted or quoted


_STATE_KEY = re.compile(r"value_json(?:\.([A-Za-z_]\w*)|\['([^']+)'\])")


# --------------------------------------------------------------------------------------
# Lifecycle: what to publish, given what the broker already holds
# --------------------------------------------------------------------------------------

MIGRATE = '{"migrate_discovery": true}'
"""Hands an entity over between per-entity and device discovery without removing it."""


T = TypeVar("T")  # a payload, as the caller keeps it


def owned_topics(ctx: DiscoveryContext, on_broker: Mapping[str, T]) -> dict[str, T]:
    """The discovery topics of this inverter among ``on_broker`` (topic -> payload)."""
    return {topic: text for topic, text in on_broker.items()
            if text and is_discovery_of(topic, ctx.prefix, ctx.node_id)}


def is_discovery_of(topic: str, prefix: str, node_id: str) -> bool:
    """Whether ``topic`` is a discovery topic of the inverter ``node_id``: its device's,
    or one of its entities'."""
    start = f"{prefix}/"
    if not topic.startswith(start):
        return False
    levels = topic[len(start):].split("/")
    device = len(levels) == 3 and levels[0] == "device"
    entity = len(levels) == 4 and levels[0] != "device"
    return (device or entity) and levels[1] == node_id and levels[-1] == "config"


def plan(ctx: DiscoveryContext, device_mode: bool,
         on_broker: Mapping[str, str]) -> list[tuple[str, str]]:
    """The retained messages (topic, payload; ``""`` clears) that make the broker hold
    exactly this inverter's current discovery, in the order to publish them.

    ``on_broker`` is what the broker holds now, learned before the first announce: an
    earlier run may have offered other entities, or used the other discovery mode.
    Entities no longer offered are removed (a device component as ``{"p": platform}``,
    a per-entity topic by clearing it); switching modes hands the entities that stay over
    with Home Assistant's ``migrate_discovery`` and clears the other mode's topics.
    Messages equal to what the broker holds are left for the caller to skip.

    The old mode's topics are cleared right after their ``migrate_discovery``, before the
    new mode's configs: Home Assistant queues the messages of one entity while it unloads
    it, so the clearing finds nothing to remove. Cleared after the new configs, it would
    reach the new entities, and Home Assistant logs a "conflicting MQTT discovery message"
    warning for each. (Clearing a device topic whose entities are already unloaded makes
    Home Assistant 2025.4 log one "No device components to cleanup" warning instead.)
    """
    found = owned_topics(ctx, on_broker)
    dev_topic, dev_payload = device_config(ctx)
    entity = {t: json.dumps(p) for t, p in entity_configs(ctx)}
    previous_device = _json(found.pop(dev_topic, None))
    out: list[tuple[str, str]] = []
    gone = removals(previous_device, dev_payload)
    if gone:
        out.append((dev_topic, json.dumps(
            {**dev_payload, "cmps": {**dev_payload["cmps"], **gone}})))
    if device_mode:
        out += [(t, MIGRATE) for t in found if t in entity]
        out += [(t, "") for t in found]
        out.append((dev_topic, json.dumps(dev_payload)))
        return out
    if previous_device is not None:
        out += [(dev_topic, MIGRATE), (dev_topic, "")]
    out += list(entity.items())
    out += [(t, "") for t in stale_topics(list(found), list(entity))]
    return out


def _json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
