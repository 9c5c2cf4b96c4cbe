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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import PROJECT_URL, __version__
from ..protocol import tables
from ..protocol.model import Command, Field
from .groups import BY_KEY, GROUPS, Group
from .state import LAST_SEEN, is_published

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


CONTROLS: tuple[Control, ...] = (
    Control("inverter_on", "switch", 0x64, group="live"),
    Control("operating_mode", "select", 0x66),
    Control("grid_soc_min", "number", 0x66),
    Control("grid_export_limit", "number", 0x66),
    Control("off_grid_soc_min", "number", 0x6A),
    Control("charge_power_limit", "number", 0x6A),
    Control("discharge_power_limit", "number", 0x6A),
)
CLOCK_KEY = "clock"  # set/clock, handled by the writer without a value


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

    def state_topic(self, group: str) -> str:
        return f"{self.base_topic}/{self.serial}/{group}"

    def command_topic(self, key: str) -> str:
        return f"{self.base_topic}/{self.serial}/set/{key}"

    @property
    def slug(self) -> str:
        """The serial as Home Assistant allows it in entity ids: lowercase, [a-z0-9_]."""
        return re.sub(r"[^a-z0-9_]", "_", self.serial.lower())

    @property
    def node_id(self) -> str:
        """The serial as Home Assistant allows it in a discovery topic: [a-zA-Z0-9_-]."""
        return re.sub(r"[^a-zA-Z0-9_-]", "_", self.serial)

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
    out: list[Command] = []
    for command in group.commands(version):
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
        for f in group_fields(group, ctx.version):
            if f.key not in controlled:
                out[f.key] = _read_only(ctx, group, f)
        if group.key == "live":
            out[LAST_SEEN] = _last_seen(ctx, group)
    for control, f in controls:
        out[f"set_{control.key}"] = _control(ctx, control, f)
    if clock_offered(ctx):
        out[f"set_{CLOCK_KEY}"] = _clock_button(ctx)
    if ctx.proxy:
        out[PROXY_CLIENTS] = _proxy_clients(ctx)
    return out


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
        {"topic": f"{ctx.base_topic}/bridge/state"},
        {"topic": f"{ctx.base_topic}/{ctx.serial}/availability"},
    ]


def value_of(key: str) -> str:
    """The Jinja expression for a key of the state object."""
    return f"value_json.{key}" if key.isidentifier() and key not in dir({}) else (
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


def sensor_options(f: Field) -> dict[str, Any]:
    """device_class, unit, state_class, options and precision of a sensor field."""
    if f.codes is not None:
        return {"device_class": "enum", "options": list(dict.fromkeys(f.codes.values()))}
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
            "value_template": state_template(f.key),
            "options": list(dict.fromkeys((f.codes or {}).values())),
        })
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


_SHARED = ("availability", "availability_mode")


def device_config(ctx: DiscoveryContext) -> tuple[str, dict[str, Any]]:
    """Device-based discovery (Home Assistant 2024.11+): one retained message.

    Availability is shared at device level; each component names its platform as ``p``.
    """
    components: dict[str, dict[str, Any]] = {}
    for cid, config in entities(ctx).items():
        component = {k: v for k, v in config.items() if k not in _SHARED and k != "platform"}
        components[cid] = {"p": config["platform"], **component}
    payload: dict[str, Any] = {
        "dev": device_info(ctx),
        "o": origin(ctx),
        "availability": availability(ctx),
        "availability_mode": "all",
        "qos": QOS,
        "cmps": components,
    }
    return device_topic(ctx), payload


def entity_topic(ctx: DiscoveryContext, platform: str, config: Mapping[str, Any]) -> str:
    return f"{ctx.prefix}/{platform}/{ctx.node_id}/{config['object_id']}/config"


def entity_configs(ctx: DiscoveryContext) -> list[tuple[str, dict[str, Any]]]:
    """Per-entity discovery (Home Assistant before 2024.11): one retained message each."""
    out = []
    device, source = device_info(ctx), origin(ctx)
    for config in entities(ctx).values():
        platform = config["platform"]
        payload = {k: v for k, v in config.items() if k != "platform"}
        payload.update({"device": device, "origin": source, "qos": QOS})
        out.append((entity_topic(ctx, platform, config), payload))
    return out


def _platform(component: Mapping[str, Any]) -> str | None:
    platform = component.get("p", component.get("platform"))
    return platform if isinstance(platform, str) else None


def removals(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> dict[str, dict[str, str]]:
    """The ``cmps`` entries that make Home Assistant remove components no longer offered.

    Home Assistant removes a component whose entry holds only its platform (``p``).
    Publish the device config once with these merged into ``cmps``, then the clean one.
    """
    if not previous:
        return {}
    before: Mapping[str, Any] = previous.get("cmps") or {}
    now: Mapping[str, Any] = current.get("cmps") or {}
    out: dict[str, dict[str, str]] = {}
    for cid, component in before.items():
        platform = _platform(component) if isinstance(component, Mapping) else None
        if platform is not None and cid not in now:
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
