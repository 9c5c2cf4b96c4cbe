"""The protocol tables: layouts per PCU version, sizes, keys, units and bit views."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sermatec_bridge.protocol import codec, tables
from sermatec_bridge.protocol.model import Command, Field, Kind, Wire

# Reported PCU versions worth checking: every layout boundary, versions between them,
# and the two reported versions that behave as 601.
VERSIONS = (0, 252, 258, 259, 411, 500, 603, 609, 991, 998)

REFERENCE = Path("/work/shared/reference/osim-protocol.app-en.json")

# The payload size of each layout, by command and first PCU version of the layout
# (None: the size depends on a count or on the text carried).
SIZES: dict[int, dict[int, int | None]] = {
    0x98: {0: 50},
    0x0A: {252: 30},
    0x0B: {252: 112, 500: 140},
    0x0C: {252: 4},
    0x0D: {258: 6},
    0x1E: {252: 12, 258: 16},
    0x1F: {252: 12},
    0x64: {252: 1},
    0x66: {252: None},
    0x67: {252: 16, 500: 16},
    0x68: {252: 7},
    0x69: {252: 10},
    0x6A: {258: 46, 259: 46, 500: 46, 603: 46},
    0x70: {252: 2},
    0x71: {500: 60},
    0x94: {252: None},
    0x95: {252: 148, 258: 194, 259: 148},
    0x99: {252: 244},
    0x9A: {252: 232},
    0x9B: {252: 232},
    0x9C: {258: 20},
    0x9D: {259: 46, 500: 46, 603: 46},
    0x9E: {252: 61},
    0x9F: {252: 30},
    0xA1: {258: 2},
    0xA2: {500: 60},
    0xA3: {500: 81},
    0xB0: {500: 91},
    0xB1: {500: 91},
    0xBA: {603: None},
    0xBB: {603: None},
}


def offered(version: int) -> list[tuple[Command, int]]:
    """(command, effective version) for every command an inverter of ``version`` offers."""
    effective = tables.effective_version(version)
    return [(c, effective) for c in tables.available(effective)]


def published_names(layout: tuple[Field, ...]) -> set[str]:
    """The keys a reply publishes: field keys, or group names for record groups."""
    return {f.group or f.key for f in layout if f.wire is not Wire.RESERVED}


# --------------------------------------------------------------------------------------
# Versions and layout resolution
# --------------------------------------------------------------------------------------


def test_reported_versions_991_and_998_use_the_601_tables() -> None:
    assert tables.effective_version(991) == 601
    assert tables.effective_version(998) == 601
    for version in (0, 252, 411, 601, 609):
        assert tables.effective_version(version) == version


def test_every_command_has_a_size_expectation() -> None:
    assert set(SIZES) == set(tables.COMMANDS)
    for code, command in tables.COMMANDS.items():
        assert set(SIZES[code]) == set(command.layouts), command.label


@pytest.mark.parametrize("version", VERSIONS)
def test_layouts_resolve_to_the_newest_at_or_below_the_version(version: int) -> None:
    effective = tables.effective_version(version)
    for code, command in tables.COMMANDS.items():
        older = [v for v in SIZES[code] if v <= effective]
        if not older:
            assert command.layout(effective) is None, command.label
            assert command not in list(tables.available(effective))
            continue
        assert command.layout(effective) is command.layouts[max(older)], command.label
        assert command in list(tables.available(effective))


@pytest.mark.parametrize("version", VERSIONS)
def test_payload_sizes(version: int) -> None:
    for command, effective in offered(version):
        since = max(v for v in SIZES[command.code] if v <= effective)
        assert codec.fixed_size(command, effective) == SIZES[command.code][since], (
            f"{command.label} at PCU {version}"
        )


def test_layouts_change_where_the_firmware_changed_them() -> None:
    measurements = tables.COMMANDS[0x0B]
    assert measurements.layout(411) == measurements.layout(252)
    assert measurements.layout(609) == measurements.layout(500)
    keys_500 = {f.key for f in measurements.layouts[500]}
    assert "parallel_pv_power" in keys_500
    assert "parallel_pv_power" not in {f.key for f in measurements.layouts[252]}

    mode2 = tables.COMMANDS[0x6A]
    assert "bypass" in {f.key for f in mode2.layout(500) or ()}
    assert "generator_rated_power" in {f.key for f in mode2.layout(609) or ()}
    assert "generator_rated_power" not in {f.key for f in mode2.layout(601) or ()}

    assert tables.COMMANDS[0x9D].layout(258) is None
    assert tables.COMMANDS[0x0D].layout(252) is None
    assert tables.COMMANDS[0xBA].layout(601) is None  # 991 / 998 behave as 601
    assert tables.COMMANDS[0xBB].layout(603) is not None
    assert [c.code for c in tables.available(0)] == [0x98]


def test_0x95_is_answered_by_two_frames_from_pcu_259() -> None:
    parameters = tables.COMMANDS[0x95]
    assert tables.replies(parameters, 258) == (0x95,)
    assert tables.replies(parameters, 259) == (0x95, 0x9D)
    assert tables.replies(parameters, 609) == (0x95, 0x9D)
    assert tables.replies(tables.COMMANDS[0x0A], 609) == (0x0A,)


def test_find_by_code_or_key() -> None:
    assert tables.find("0x0A") is tables.COMMANDS[0x0A]
    assert tables.find("9d") is tables.COMMANDS[0x9D]
    assert tables.find("battery") is tables.COMMANDS[0x0A]
    assert tables.find("nonsense") is None
    assert tables.find("0x42") is None


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_keys_are_unique_within_each_layout(version: int) -> None:
    for command, effective in offered(version):
        layout = command.layout(effective) or ()
        top = [f.key for f in layout if f.group is None and f.wire is not Wire.RESERVED]
        assert len(top) == len(set(top)), command.label
        groups: dict[str, list[str]] = defaultdict(list)
        for f in layout:
            if f.group is not None:
                groups[f.group].append(f.key)
        for group, keys in groups.items():
            assert len(keys) == len(set(keys)), f"{command.label} {group}"
            assert group not in top, f"{command.label} {group}"


@pytest.mark.parametrize("version", VERSIONS)
def test_keys_are_unique_among_the_queries_of_a_version(version: int) -> None:
    owners: dict[str, list[str]] = defaultdict(list)
    for command, effective in offered(version):
        if command.kind is Kind.QUERY:
            for name in published_names(command.layout(effective) or ()):
                owners[name].append(command.label)
    shared = {name: labels for name, labels in owners.items() if len(labels) > 1}
    assert shared == {}


# Settings without a query that shows what they set, and why.
NO_READBACK = {
    0x68: "the inverter clock is not readable through any query",
    0x70: "a reset sets nothing that could be read back",
}

# Settings keys that the read-back query does not show, and why.
NOT_READ_BACK: dict[tuple[int, int], set[str]] = {
    # From PCU 259 the vendor replaced this 0x95 slot by the power factor setting, while
    # the 0x67 write keeps its PCU 252 layout until PCU 500.
    (0x67, 259): {"custom_charge_tip"},
    (0x67, 411): {"custom_charge_tip"},
}

# (write, PCU version) whose readback query is not offered yet; the query used instead.
READBACK_BEFORE_IT_EXISTS = {(0x6A, 258): 0x95}


def test_every_settings_command_has_a_readback_or_a_documented_reason() -> None:
    for command in tables.COMMANDS.values():
        if command.kind is not Kind.SETTINGS:
            continue
        if command.readback is None:
            assert command.code in NO_READBACK, command.label
        else:
            assert command.code not in NO_READBACK, command.label
            assert tables.COMMANDS[command.readback].kind is Kind.QUERY


@pytest.mark.parametrize("version", VERSIONS)
def test_settings_keys_are_shown_by_their_readback(version: int) -> None:
    for command, effective in offered(version):
        if command.kind is not Kind.SETTINGS or command.readback is None:
            continue
        readback = tables.COMMANDS[
            READBACK_BEFORE_IT_EXISTS.get((command.code, version), command.readback)
        ]
        assert readback.layout(effective) is not None, f"{command.label} at {version}"
        shown: set[str] = set()
        for code in tables.replies(readback, effective):
            shown |= published_names(tables.COMMANDS[code].layout(effective) or ())
        missing = published_names(command.layout(effective) or ()) - shown
        assert missing == NOT_READ_BACK.get((command.code, version), set()), (
            f"{command.label} at PCU {version}"
        )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_settings_key_is_shared_only_with_its_readback(version: int) -> None:
    queries = {
        c.code: published_names(c.layout(v) or ())
        for c, v in offered(version)
        if c.kind is Kind.QUERY
    }
    for command, effective in offered(version):
        if command.kind is not Kind.SETTINGS:
            continue
        names = published_names(command.layout(effective) or ())
        readback = READBACK_BEFORE_IT_EXISTS.get((command.code, version), command.readback)
        allowed = set(tables.replies(tables.COMMANDS[readback], effective)) if readback else set()
        for code, query_names in queries.items():
            if names & query_names:
                assert code in allowed, f"{command.label} shares keys with 0x{code:02x}"


# --------------------------------------------------------------------------------------
# Corrections of the vendor table
# --------------------------------------------------------------------------------------


def field(code: int, version: int, key: str) -> Field:
    for f in tables.COMMANDS[code].layout(version) or ():
        if f.key == key:
            return f
    raise AssertionError(f"no field {key} in 0x{code:02x} at PCU {version}")


@pytest.mark.parametrize(
    ("key", "unit", "device_class"),
    [
        ("grid_reactive_power", "var", "reactive_power"),
        ("grid_apparent_power", "VA", "apparent_power"),
        ("backup_active_power", "W", "power"),
        ("backup_reactive_power", "var", "reactive_power"),
        ("backup_apparent_power", "VA", "apparent_power"),
        ("grid_active_power", "W", "power"),
    ],
)
@pytest.mark.parametrize("version", [252, 500, 609])
def test_power_units_of_0x0b_are_corrected(
    key: str, unit: str, device_class: str, version: int
) -> None:
    f = field(0x0B, version, key)
    assert (f.unit, f.device_class) == (unit, device_class)


ENERGY_COUNTERS = {
    0x99: ("pv_energy_today", "pv_energy_total", "consumption_today", "consumption_total"),
    0x9A: ("grid_export_today", "grid_export_total"),
    0x9B: ("load_energy_today", "load_energy_total"),
    0x9C: ("grid_import_today", "battery_charge_today", "battery_discharge_today",
           "grid_import_total", "battery_charge_total", "battery_discharge_total"),
}


@pytest.mark.parametrize("code", sorted(ENERGY_COUNTERS))
def test_energy_counters_are_kwh_totals(code: int) -> None:
    for key in ENERGY_COUNTERS[code]:
        f = field(code, 609, key)
        assert (f.unit, f.device_class, f.state_class) == ("kWh", "energy", "total_increasing")
    counters = [
        f.key for f in tables.COMMANDS[code].layout(609) or () if f.device_class == "energy"
    ]
    assert sorted(counters) == sorted(ENERGY_COUNTERS[code])


def test_scaled_units_of_parallel_and_generator_powers_are_watts() -> None:
    pv = field(0x0B, 500, "parallel_pv_power")
    assert (pv.unit, pv.scale) == ("W", 10)  # vendor: 0.01 kW
    generator = field(0x9D, 603, "generator_rated_power")
    assert (generator.unit, generator.scale) == ("W", 100)  # vendor: 0.1 kW


# --------------------------------------------------------------------------------------
# Bit views
# --------------------------------------------------------------------------------------


def words(layout: tuple[Field, ...]) -> list[list[Field]]:
    """The fields of a layout grouped by the 16-bit word they read (``same`` chains)."""
    grouped: list[list[Field]] = []
    for f in layout:
        if f.same and grouped:
            grouped[-1].append(f)
        else:
            grouped.append([f])
    return grouped


@pytest.mark.parametrize("code", [0x0C, 0x71, 0xA2, 0xA1])
def test_bit_views_fit_their_word_and_do_not_overlap(code: int) -> None:
    command = tables.COMMANDS[code]
    for layout in command.layouts.values():
        checked = 0
        for word in words(layout):
            if all(f.bits is None for f in word):
                continue  # a plain field, not a word seen through bit views
            used = 0
            for f in word:
                if f.bits is None:
                    assert f.wire in (Wire.UINT, Wire.INT), f.key  # a whole-word view
                    assert f.size == 2, f.key
                    continue
                first, end = f.bits
                assert 0 <= first < end <= 16, f.key
                if f.wire is Wire.BIT:
                    assert end == first + 1, f.key
                mask = ((1 << (end - first)) - 1) << first
                assert used & mask == 0, f"{command.label}: {f.key} overlaps"
                used |= mask
                checked += 1
        assert checked > 0


def test_running_status_bit_ranges_exclude_their_end_bit() -> None:
    assert field(0x0C, 252, "pv_run_state").bits == (0, 2)
    assert field(0x0C, 252, "dc_run_state").bits == (2, 4)
    assert field(0x0C, 252, "ac_operation_mode").bits == (1, 4)
    assert field(0x0C, 252, "parallel_units").bits == (13, 16)
    assert field(0x0C, 252, "inverter_on").bits == (0, 1)


# --------------------------------------------------------------------------------------
# Against the vendor's field table (only where the reference material is present)
# --------------------------------------------------------------------------------------

needs_reference = pytest.mark.skipif(
    not REFERENCE.exists(),
    reason=f"{REFERENCE} is not present (reference material is not part of the project)",
)


def vendor_layouts() -> dict[int, dict[int, list[dict[str, Any]]]]:
    data = json.loads(REFERENCE.read_text(encoding="utf-8"))
    by_code: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    for entry in data["osim"]["versions"]:
        for command in entry["commands"]:
            by_code[int(command["type"], 16)][int(entry["version"])] = command["fields"]
    return by_code


def vendor_layout(
    layouts: dict[int, list[dict[str, Any]]], version: int
) -> list[dict[str, Any]] | None:
    older = [v for v in layouts if v <= version]
    return layouts[max(older)] if older else None


def vendor_size(fields: list[dict[str, Any]]) -> int | None:
    size = 0
    for f in fields:
        if f.get("same"):
            continue
        if "repeatRef" in f or int(f["byteLen"]) == 0:
            return None
        size += int(f["byteLen"]) * int(f.get("repeat", 1))
    return size


VENDOR_WIRES = {
    "int": Wire.INT, "uInt": Wire.UINT, "long": Wire.INT, "hex": Wire.HEX,
    "string": Wire.TEXT, "bit": Wire.BIT, "bitRange": Wire.BITS,
    "onePosition": Wire.ALARMS, "preserve": Wire.RESERVED,
}


@needs_reference
def test_the_same_commands_as_the_vendor_table() -> None:
    assert set(vendor_layouts()) == set(tables.COMMANDS)


@needs_reference
@pytest.mark.parametrize("version", VERSIONS)
def test_sizes_and_field_counts_match_the_vendor_table(version: int) -> None:
    vendor = vendor_layouts()
    effective = tables.effective_version(version)
    for code, command in tables.COMMANDS.items():
        theirs = vendor_layout(vendor[code], effective)
        ours = command.layout(effective)
        assert (theirs is None) == (ours is None), f"{command.label} at PCU {version}"
        if theirs is None or ours is None:
            continue
        where = f"{command.label} at PCU {version}"
        assert codec.fixed_size(command, effective) == vendor_size(theirs), where
        assert len(ours) == len(theirs), where


@needs_reference
@pytest.mark.parametrize("version", VERSIONS)
def test_fields_match_the_vendor_table_one_by_one(version: int) -> None:
    vendor = vendor_layouts()
    effective = tables.effective_version(version)
    for code, command in tables.COMMANDS.items():
        theirs = vendor_layout(vendor[code], effective) or []
        for f, v in zip(command.layout(effective) or (), theirs, strict=True):
            where = f"{command.label} {f.key} at PCU {version}"
            assert f.size == int(v["byteLen"]), where
            assert f.same == bool(v.get("same")), where
            assert f.wire is VENDOR_WIRES[v["type"]], where
            assert (f.repeat is None) == ("repeat" not in v and "repeatRef" not in v), where
            if isinstance(f.repeat, int):
                assert f.repeat == int(v["repeat"]), where
            if v["type"] == "bit":
                assert f.bits == (int(v["bitPosition"]), int(v["bitPosition"]) + 1), where
            if v["type"] == "bitRange":
                assert f.bits == (int(v["fromBit"]), int(v["endBit"])), where
            if f.wire in (Wire.INT, Wire.UINT):
                scale = float(v.get("unitValue", 1))
                if str(v.get("unitType", "")).lower() in ("kw", "kvar"):
                    scale *= 1000  # the project publishes W / var / VA
                assert f.scale == pytest.approx(scale), where


def test_which_replies_read_alike_at_every_pcu_version() -> None:
    assert tables.same_at_every_version(tables.BATTERY)
    assert not tables.same_at_every_version(tables.MEASUREMENTS)  # PCU 252 and 500 differ
    one_layout = dataclasses.replace(tables.WORKING_PARAMETERS, layouts={
        252: tables.WORKING_PARAMETERS.layouts[252]})
    assert not tables.same_at_every_version(one_layout)  # from PCU 259 0x9d comes too
