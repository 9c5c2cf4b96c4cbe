"""Readings as people read them: ``name: value unit`` lines, or one JSON object."""

from __future__ import annotations

from typing import Any

from .protocol import records
from .protocol.codec import Reading, layout_of, to_raw
from .protocol.model import Field, Value, Wire
from .protocol.tables import GROUP_NAMES

MASK = "********"


def format_value(f: Field, value: Value) -> str:
    """One value as text; a number with as many decimals as its scale gives (0.1: one).

    A switch-like setting (a flag) is on, off or not set, never its code; a code that is
    none of these says so. Other yes/no fields (status bits) are yes or no.
    """
    if f.flag is not None:
        if isinstance(value, bool) or value is None:
            return "not set" if value is None else "on" if value else "off"
        return f"unknown (code {value})"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "not set"
    if isinstance(value, list):
        return ", ".join(format_value(f, item) for item in value) or "none"
    if isinstance(value, float):
        return f"{value:.{_decimals(f.scale)}f}"
    return str(value)


def _decimals(scale: float) -> int:
    """The decimals a scale gives: 1 for 0.1, 2 for 0.01, none for 1 or 10."""
    digits = 0
    while scale < 1 and round(scale * 10**digits, 9) % 1 and digits < 6:
        digits += 1
    return digits


def lines(reading: Reading) -> list[str]:
    """The shown fields; a record group as the records its count says are in use; the
    alarm words of 0x1e / 0x1f as the alarms they raise."""
    out = []
    layout = layout_of(reading.command, reading.version)
    in_use = records.in_use(layout, reading.values)
    for f, value in reading.items():
        if f.wire is Wire.RESERVED:
            continue
        if f.group is not None:
            shown = "; ".join(" ".join(str(v) for k, v in r.items() if k != "reserved")
                              for r in in_use.get(f.group) or [])
            out.append(f"{GROUP_NAMES.get(f.group, f.group)}: {shown or 'none'}")
            continue
        text = MASK if f.secret else format_value(f, value)
        out.append(f"{f.name}: {text}" + (f" {f.unit}" if f.unit and value is not None else ""))
    if any(f.wire is Wire.ALARMS for f in layout):
        from .protocol.alarms import active_alarms  # its texts, read for 0x1e and 0x1f only

        raised = active_alarms(reading.values)
        out.append("Active alarms: " + ("; ".join(map(str, raised)) or "none"))
    if reading.extra:
        out.append(f"(extra payload bytes, not in the tables: {reading.extra.hex()})")
    return out


def as_json(reading: Reading) -> dict[str, Any]:
    """Every field (hidden ones too) with its key, display name, value, unit and raw value."""
    fields: dict[str, Any] = {}
    for f, value in reading.items(include_hidden=True):
        if f.wire is Wire.RESERVED:
            continue
        if f.group is not None:
            fields[f.group] = {"name": GROUP_NAMES.get(f.group, f.group), "value": value,
                               "unit": None}
            continue
        entry: dict[str, Any] = {"name": f.name, "value": MASK if f.secret else value,
                                 "unit": f.unit}
        if not f.secret and f.wire not in (Wire.TEXT, Wire.ALARMS) and f.repeat is None:
            entry["raw"] = to_raw(f, value)
        fields[f.key] = entry
    out: dict[str, Any] = {
        "command": reading.command.label,
        "name": reading.command.name,
        "pcu_version": reading.version,
        "fields": fields,
    }
    if reading.extra:
        out["extra"] = reading.extra.hex()
    return out
