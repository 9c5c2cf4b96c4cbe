"""The codec: decoding replies, building settings payloads, refusing bad settings."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sermatec_bridge.protocol import codec, tables
from sermatec_bridge.protocol.model import Command, Field, Wire

VERSIONS = (0, 252, 258, 259, 411, 500, 603, 609, 991, 998)
SETTINGS = (0x64, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x70, 0x71, 0xBA)


def versions_of(command: Command) -> list[int]:
    """The reported versions (of VERSIONS) at which a command is offered, effective."""
    found = {tables.effective_version(v) for v in VERSIONS}
    return sorted(v for v in found if command.layout(v) is not None)


def cases(codes: Any) -> list[tuple[int, int]]:
    return [(code, v) for code in codes for v in versions_of(tables.COMMANDS[code])]


def ids(found: list[tuple[int, int]]) -> list[str]:
    return [f"0x{code:02x}-pcu{version}" for code, version in found]


ALL_CASES = cases(sorted(tables.COMMANDS))


def count_keys(layout: tuple[Field, ...]) -> set[str]:
    return {f.repeat for f in layout if isinstance(f.repeat, str)}


def published_names(layout: tuple[Field, ...]) -> set[str]:
    return {f.group or f.key for f in layout if f.wire is not Wire.RESERVED}


# --------------------------------------------------------------------------------------
# Payloads of the right shape, from a source of bytes and counts
# --------------------------------------------------------------------------------------


def make_payload(
    layout: tuple[Field, ...], blob: Any, count: Any, text: Any = lambda: b""
) -> bytes:
    """A payload that fits ``layout``: ``blob(n)`` gives n bytes, ``count(f)`` a count."""
    counts = count_keys(layout)
    counted: dict[str, int] = {}
    out = bytearray()
    done: set[str] = set()
    for f in layout:
        if f.same:
            continue
        if f.group is not None:
            if f.group in done:
                continue
            done.add(f.group)
            members = [g for g in layout if g.group == f.group]
            assert f.repeat is not None
            n = f.repeat if isinstance(f.repeat, int) else counted[f.repeat]
            out += blob(n * sum(g.size for g in members))
        elif f.repeat is not None:
            n = f.repeat if isinstance(f.repeat, int) else counted[f.repeat]
            out += blob(n * f.size)
        elif f.key in counts:
            counted[f.key] = count(f)
            out += counted[f.key].to_bytes(f.size, "big")
        elif f.wire is Wire.TEXT and f.size == 0:
            out += text()
        elif f.wire is Wire.TEXT:  # text ends at its first NUL: the padding is all NULs
            out += text()[: f.size].ljust(f.size, b"\0")
        else:
            out += blob(f.size)
    return bytes(out)


def zero_payload(command: Command, version: int) -> bytes:
    layout = codec.layout_of(command, version)
    return make_payload(layout, bytes, lambda f: 0)


@st.composite
def random_payloads(draw: st.DrawFn, command: Command, version: int) -> bytes:
    layout = codec.layout_of(command, version)

    def blob(n: int) -> bytes:
        return draw(st.binary(min_size=n, max_size=n))

    def count(f: Field) -> int:
        hi = int(f.limits[1]) if f.limits else 16
        return draw(st.integers(0, hi))

    def text() -> bytes:
        return draw(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"")))

    return make_payload(layout, blob, count, text)


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "version"), ALL_CASES, ids=ids(ALL_CASES))
def test_zero_payloads_decode_at_every_version(code: int, version: int) -> None:
    command = tables.COMMANDS[code]
    payload = zero_payload(command, version)
    size = codec.fixed_size(command, version)
    if size is not None:
        assert len(payload) == size
    reading = codec.decode(command, version, payload)
    assert reading.extra == b""
    assert published_names(codec.layout_of(command, version)) <= set(reading.values)


def test_zero_values_look_like_what_a_user_expects() -> None:
    values = codec.decode(tables.COMMANDS[0x0A], 609, bytes(30)).values
    assert values["battery_voltage"] == 0.0
    assert values["battery_soc"] == 0
    assert values["battery_state"] == 0  # not a known state code: the raw code is kept
    assert values["battery_link"] == "Connected"
    faults = codec.decode(tables.COMMANDS[0x1F], 609, bytes(12)).values
    assert all(faults[f"fault_word_{n}"] == [] for n in range(5))
    schedule = codec.decode(tables.COMMANDS[0x66], 609, zero_payload(tables.COMMANDS[0x66], 609))
    assert schedule.values["tou_count"] == 0
    assert schedule.values["tou_schedule"] == []
    assert schedule.values["anti_backflow"] is None  # 0x0000: neither on nor off


@pytest.mark.parametrize(("code", "version"), ALL_CASES, ids=ids(ALL_CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_payloads_decode_and_reencode(code: int, version: int, data: Any) -> None:
    command = tables.COMMANDS[code]
    payload = data.draw(random_payloads(command, version))
    reading = codec.decode(command, version, payload)
    assert reading.extra == b""
    assert published_names(codec.layout_of(command, version)) <= set(reading.values)
    again = codec.encode(command, version, reading.values)
    if code == 0xA1:  # bits 9..15 of the DRM word are not part of any field
        payload = (int.from_bytes(payload, "big") & 0x01FF).to_bytes(2, "big")
    assert again == payload


EXTRA_CASES = cases([0x0A, 0x0B, 0x95, 0x99, 0x1E])


@pytest.mark.parametrize(("code", "version"), EXTRA_CASES, ids=ids(EXTRA_CASES))
@given(extra=st.binary(min_size=1, max_size=40))
def test_trailing_bytes_are_kept_in_extra(code: int, version: int, extra: bytes) -> None:
    command = tables.COMMANDS[code]
    payload = zero_payload(command, version)
    plain = codec.decode(command, version, payload)
    longer = codec.decode(command, version, payload + extra)
    assert longer.values == plain.values
    assert longer.extra == extra


FIXED_CASES = [(c, v) for c, v in ALL_CASES if codec.fixed_size(tables.COMMANDS[c], v)]


@pytest.mark.parametrize(("code", "version"), FIXED_CASES, ids=ids(FIXED_CASES))
def test_short_payloads_are_refused_with_both_sizes(code: int, version: int) -> None:
    command = tables.COMMANDS[code]
    size = codec.fixed_size(command, version)
    assert size is not None
    for short in (size - 1, size // 2, 0):
        with pytest.raises(codec.TruncatedPayload) as caught:
            codec.decode(command, version, bytes(short))
        message = str(caught.value)
        assert command.label in message
        assert f"{short} bytes" in message
        assert f"{size} bytes" in message


def test_a_record_group_shorter_than_its_count_is_refused() -> None:
    command = tables.COMMANDS[0x66]
    payload = bytearray(zero_payload(command, 609))
    payload[24:26] = (2).to_bytes(2, "big")  # tou_count 2, then one 6-byte record
    payload += bytes(6)
    with pytest.raises(codec.TruncatedPayload) as caught:
        codec.decode(command, 609, bytes(payload))
    assert "0x66" in str(caught.value)
    assert "32 bytes" in str(caught.value)


def test_commands_not_offered_at_a_version_are_refused() -> None:
    with pytest.raises(codec.CodecError, match="not offered at PCU version 252"):
        codec.decode(tables.COMMANDS[0x9D], 252, bytes(46))
    with pytest.raises(codec.CodecError, match="unknown command 0x42"):
        codec.decode_payload(0x42, 609, b"")


def test_hidden_fields_are_only_listed_on_request() -> None:
    reading = codec.decode(tables.COMMANDS[0x0C], 609, bytes(4))
    shown = {f.key for f, _ in reading.items()}
    everything = {f.key for f, _ in reading.items(include_hidden=True)}
    assert "inverter_on" in shown
    assert "inverter_status_word" not in shown
    assert "inverter_status_word" in everything


# --------------------------------------------------------------------------------------
# Settings: valid values from the field declarations, and the round trip
# --------------------------------------------------------------------------------------


def _value(f: Field, raw: int) -> Any:
    """The value the codec shows for a raw integer of a scaled field."""
    return codec.to_value(f, raw)


def field_values(f: Field) -> st.SearchStrategy[Any]:
    """Every value a settings write accepts for ``f``, as decode shows it."""
    if f.wire is Wire.RESERVED:
        return st.binary(min_size=f.size, max_size=f.size).map(bytes.hex)
    if f.flag is not None:
        return st.sampled_from([True, False, None] if f.unset_allowed else [True, False])
    if f.codes is not None:
        lo, hi = f.limits if f.limits is not None else (-math.inf, math.inf)
        return st.sampled_from([label for code, label in f.codes.items() if lo <= code <= hi])
    if f.clock:
        return st.integers(0, 1440).map(lambda n: f"{n // 60:02d}:{n % 60:02d}")
    if f.wire is Wire.BIT:
        return st.booleans()
    assert f.limits is not None, f"{f.key}: a settings field without limits"
    lo, hi = f.limits
    raw_lo = math.ceil(round(lo / f.scale, 6))
    raw_hi = math.floor(round(hi / f.scale, 6))
    return st.integers(raw_lo, raw_hi).map(lambda raw: _value(f, raw))


@st.composite
def settings_values(draw: st.DrawFn, command: Command, version: int) -> dict[str, Any]:
    layout = codec.layout_of(command, version)
    counts = count_keys(layout)
    values: dict[str, Any] = {}
    groups: dict[str, list[Field]] = {}
    for f in layout:
        if f.group is not None:
            groups.setdefault(f.group, []).append(f)
        elif f.key not in counts:
            values[f.key] = draw(field_values(f))
    for name, members in groups.items():
        repeat = members[0].repeat
        record = st.fixed_dictionaries({g.key: field_values(g) for g in members})
        if isinstance(repeat, int):
            records = draw(st.lists(record, min_size=repeat, max_size=repeat))
        else:
            assert isinstance(repeat, str)
            count_field = next(f for f in layout if f.key == repeat)
            assert count_field.limits is not None
            lo, hi = (int(x) for x in count_field.limits)
            records = draw(st.lists(record, min_size=lo, max_size=hi))
            values[repeat] = len(records)
        values[name] = records
    return values


SETTINGS_CASES = cases(SETTINGS)


def test_every_settings_command_is_covered() -> None:
    assert {code for code, _ in SETTINGS_CASES} == set(SETTINGS)
    for code in SETTINGS:
        assert tables.COMMANDS[code].is_write


@pytest.mark.parametrize(("code", "version"), SETTINGS_CASES, ids=ids(SETTINGS_CASES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_settings_round_trip(code: int, version: int, data: Any) -> None:
    command = tables.COMMANDS[code]
    values = data.draw(settings_values(command, version))
    payload = codec.build(command, version, values)
    size = codec.fixed_size(command, version)
    if size is not None:
        assert len(payload) == size
    reading = codec.decode(command, version, payload)
    assert reading.values == values
    assert reading.extra == b""
    assert codec.build(command, version, reading.values) == payload


COUNTED_CASES = cases([0x66, 0xBA])


@pytest.mark.parametrize(("code", "version"), COUNTED_CASES, ids=ids(COUNTED_CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_build_fills_in_the_record_count(code: int, version: int, data: Any) -> None:
    command = tables.COMMANDS[code]
    values = data.draw(settings_values(command, version))
    counts = count_keys(codec.layout_of(command, version))
    without = {k: v for k, v in values.items() if k not in counts}
    assert codec.build(command, version, without) == codec.build(command, version, values)


# --------------------------------------------------------------------------------------
# Settings: refusals name the key, the value and what is allowed
# --------------------------------------------------------------------------------------

MODE = tables.COMMANDS[0x66]
# A write captured from the official app (see test_captures.py): a valid base to vary.
MODE_PAYLOAD = bytes.fromhex(
    "00000000000000002710000000010000000000000000002800010000059f0003"
)


def mode_values(**changes: Any) -> dict[str, Any]:
    values = dict(codec.decode(MODE, 609, MODE_PAYLOAD).values)
    values.update(changes)
    return values


def refusal(command: Command, values: dict[str, Any], version: int = 609) -> str:
    with pytest.raises(codec.SettingRefused) as caught:
        codec.build(command, version, values)
    return str(caught.value)


def test_the_base_values_are_valid() -> None:
    assert codec.build(MODE, 609, mode_values()) == MODE_PAYLOAD


@pytest.mark.parametrize(
    ("key", "value", "shown", "allowed", "why"),
    [
        ("grid_soc_min", 5, "5", "from 10 to 100 %", "out of range"),
        ("grid_soc_min", 101, "101", "from 10 to 100 %", "out of range"),
        ("grid_export_limit", 10001, "10001", "from 0 to 10000 W", "out of range"),
        ("operating_mode", "Turbo", "'Turbo'", "'General'", "not a known value"),
        ("operating_mode", 9, "9", "'AC coupling'", "not allowed"),
        ("grid_export_limit", "lots", "'lots'", "from 0 to 10000 W", "wrong type"),
        ("grid_export_limit", True, "True", "from 0 to 10000 W", "wrong type"),
        ("anti_backflow", 1, "1", "true, false or null", "not allowed"),
        ("anti_backflow", "on", "'on'", "true, false or null", "wrong type"),
        ("tariff_tip", 1.25, "1.25", "multiples of 0.1", "too many decimals"),
        ("tariff_tip", -0.1, "-0.1", "from 0 to 3276.7", "out of range"),
        ("tou_count", 3, "3", "the number of tou_schedule records (1)", "does not match"),
    ],
)
def test_refusals(key: str, value: Any, shown: str, allowed: str, why: str) -> None:
    message = refusal(MODE, mode_values(**{key: value}))
    assert message.startswith(f"{key}: {shown} ")
    assert why in message
    assert "allowed: " in message and allowed in message


def test_a_missing_field_is_refused() -> None:
    values = mode_values()
    del values["grid_soc_min"]
    message = refusal(MODE, values)
    assert message.startswith("grid_soc_min: None is missing")
    assert "from 10 to 100 %" in message


def test_refusals_inside_records() -> None:
    bad_time = mode_values(tou_schedule=[{"start": "25:00", "end": "26:00", "period": "Tip"}])
    message = refusal(MODE, bad_time)
    assert "start" in message and "'25:00'" in message and "00:00 to 24:00" in message
    not_a_time = mode_values(tou_schedule=[{"start": "noon", "end": "13:00", "period": "Tip"}])
    assert "'noon'" in refusal(MODE, not_a_time)
    missing = mode_values(tou_schedule=[{"start": "10:00", "period": "Tip"}])
    assert refusal(MODE, missing).startswith("tou_schedule[0].end: None is missing")
    bad_period = mode_values(tou_schedule=[{"start": "10:00", "end": "11:00", "period": 7}])
    message = refusal(MODE, bad_period)
    assert message.startswith("tou_schedule[0].period: 7 ")
    assert "'Valley'" in message
    too_many = [{"start": "10:00", "end": "11:00", "period": "Tip"}] * 17
    message = refusal(MODE, mode_values(tou_schedule=too_many, tou_count=17))
    assert message.startswith("tou_count: 17 is out of range")
    assert "from 0 to 16" in message
    assert refusal(MODE, mode_values(tou_schedule="x")).startswith("tou_schedule: 'x'")


def test_register_count_must_match_the_records() -> None:
    command = tables.COMMANDS[0xBA]
    message = refusal(command, {"register_count": 2, "registers": [{"address": 1, "value": 2}]})
    assert message.startswith("register_count: 2 does not match")
    assert "(1)" in message
    eleven = [{"address": n, "value": n} for n in range(11)]
    assert refusal(command, {"registers": eleven}).startswith("register_count: 11 is out of range")
    assert codec.build(command, 609, {"registers": [{"address": 0x1234, "value": -2}]}) == (
        bytes.fromhex("0001" "1234" "fffe")
    )


def test_fixed_record_groups_need_exactly_their_count() -> None:
    command = tables.COMMANDS[0x71]
    values = dict(codec.decode(command, 609, bytes(60)).values)
    values["forced_charge_periods"] = values["forced_charge_periods"][:3]
    with pytest.raises(codec.CodecError) as caught:
        codec.build(command, 609, values)
    assert "forced_charge_periods" in str(caught.value)
    assert "4" in str(caught.value) and "3" in str(caught.value)


def minimal_values(command: Command, version: int) -> dict[str, Any]:
    """Valid values for a whole write: the smallest each field allows."""
    return _minimal(codec.layout_of(command, version))


def _minimal_one(f: Field) -> Any:
    if f.wire is Wire.RESERVED:
        return bytes(f.size).hex()
    if f.flag is not None:
        return None if f.unset_allowed else False
    if f.codes is not None:
        return next(iter(f.codes.values()))
    if f.clock:
        return "00:00"
    assert f.limits is not None
    return codec.to_value(f, math.ceil(round(f.limits[0] / f.scale, 6)))


def _minimal(layout: tuple[Field, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in layout:
        if f.group is None:
            values[f.key] = _minimal_one(f)
    for f in layout:
        if f.group is not None and f.group not in values:
            members = [g for g in layout if g.group == f.group]
            count = f.repeat if isinstance(f.repeat, int) else values[str(f.repeat)]
            values[f.group] = [{g.key: _minimal_one(g) for g in members}] * count
    return values


def test_minimal_values_are_valid() -> None:
    for code, version in SETTINGS_CASES:
        command = tables.COMMANDS[code]
        codec.validate(command, version, minimal_values(command, version))


def limited_fields() -> list[tuple[int, int, Field]]:
    found = []
    for code, version in SETTINGS_CASES:
        for f in codec.layout_of(tables.COMMANDS[code], version):
            plain = f.codes is None and f.flag is None and not f.clock and f.group is None
            if plain and f.limits is not None and f.wire is not Wire.RESERVED:
                found.append((code, version, f))
    return found


@pytest.mark.parametrize(
    ("code", "version", "f"), limited_fields(), ids=lambda x: getattr(x, "key", str(x))
)
def test_every_limit_is_enforced(code: int, version: int, f: Field) -> None:
    command = tables.COMMANDS[code]
    assert f.limits is not None
    lo, hi = f.limits
    for outside in (lo - f.scale, hi + f.scale):
        outside = round(outside, 6)
        values = {**minimal_values(command, version), f.key: outside}
        with pytest.raises(codec.SettingRefused) as caught:
            codec.validate(command, version, values)
        assert caught.value.key == f.key
        assert caught.value.value == outside
        assert str(caught.value).startswith(f"{f.key}: {outside!r} ")


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(codec.SettingRefused, match=r"grid_export_limit: .* is out of range"):
        codec.build(MODE, 609, mode_values(grid_export_limit=value))


def test_errors_inside_records_name_the_record() -> None:
    schedule = [{"start": "25:00", "end": "26:00", "period": "Flat"}]
    with pytest.raises(codec.SettingRefused, match=r"tou_schedule\[0\]\.start: '25:00'"):
        codec.build(MODE, 609, mode_values(tou_schedule=schedule))


def test_out_of_range_numbers_name_the_range_a_user_can_set() -> None:
    with pytest.raises(codec.SettingRefused, match="allowed: from 0 to 10000 W"):
        codec.build(MODE, 609, mode_values(grid_export_limit=1e30))


def test_unknown_keys_and_wrong_record_counts_are_refused() -> None:
    with pytest.raises(codec.SettingRefused, match=r"grid_soc_minimum: .* is not a setting"):
        codec.build(MODE, 609, mode_values(grid_soc_minimum=30))
    forced = tables.SET_FORCED_SCHEDULE
    values = {k: v for k, v in codec.decode(forced, 609, bytes(76)).values.items()}
    values["forced_charge_periods"] = values["forced_charge_periods"][:3]
    with pytest.raises(codec.SettingRefused, match="exactly 4 records"):
        codec.build(forced, 609, values)


def test_the_on_off_switch_takes_on_or_off_only() -> None:
    with pytest.raises(codec.SettingRefused, match="inverter_on: None is not allowed; "
                       "allowed: true or false"):
        codec.build(tables.POWER, 609, {"inverter_on": None})
    assert codec.build(tables.POWER, 609, {"inverter_on": True}) == b"\x55"
    values = codec.decode(tables.OPERATING_MODE_2, 609, bytes(46)).values
    assert values["backup_output"] is None
    values["off_grid_soc_min"] = 10
    codec.build(tables.OPERATING_MODE_2, 609, values)  # 0x0000 ("not set") stays allowed


def test_forced_schedule_switches_keep_their_wire_codes() -> None:
    """Days: true 1, false 3, null 0 (not set); the enabled switch: true 1, false 0."""
    forced = tables.SET_FORCED_SCHEDULE
    values = dict(codec.decode(forced, 609, bytes(60)).values)
    assert values["forced_charge_monday"] is None and values["forced_charge_mode"] is False
    values |= {"forced_charge_mode": True, "forced_charge_sunday": True,
               "forced_charge_monday": False, "forced_discharge_saturday": True,
               "forced_discharge_soc_limit": 20}  # a whole block is checked: 10 % at least
    payload = codec.build(forced, 609, values)
    assert payload[0:2] == (1 | 1 << 2 | 3 << 4).to_bytes(2, "big")
    assert payload[30:32] == (1 << 14).to_bytes(2, "big")
    assert dict(codec.decode(tables.FORCED_SCHEDULE, 609, payload).values) == values
    with pytest.raises(codec.SettingRefused, match="forced_charge_monday: 2 is not allowed; "
                       r"allowed: true, false or null \(not set\)"):
        codec.build(forced, 609, values | {"forced_charge_monday": 2})


def test_custom_mode_switches_are_written_as_the_vendor_codes() -> None:
    """0x67's "charge / discharge in this period": 1 yes, 2 no, nothing else."""
    custom = tables.CUSTOM_MODE
    values = {f.key: False for f in custom.layouts[252]} | {"custom_discharge_flat": True}
    payload = codec.build(custom, 411, values)  # PCU 500 on, 0x67 carries the power factor
    assert payload == bytes.fromhex("0002" * 5 + "0001" + "0002" * 2)
    assert codec.decode(custom, 411, payload).values == values
    with pytest.raises(codec.SettingRefused, match="custom_charge_tip: None is not allowed"):
        codec.build(custom, 411, values | {"custom_charge_tip": None})


def test_text_ends_at_the_first_nul() -> None:
    payload = bytes.fromhex("019b00020001") + b"ST12\0\0AB".ljust(26, b"\0") + bytes(18)
    assert codec.decode(tables.SYSTEM_INFO, 609, payload).values["serial_number"] == "ST12"


def test_a_register_count_that_is_no_count_is_said_so() -> None:
    with pytest.raises(codec.CodecError) as caught:
        codec.decode(tables.REGISTER_QUERY, 609, bytes.fromhex("ffff00010002"))
    assert "register_count is -1 (raw 0xffff)" in str(caught.value)
    assert "shorter" not in str(caught.value)
    with pytest.raises(codec.TruncatedPayload, match="shorter than the 10 bytes that its "
                       "register_count of 2 announces"):
        codec.decode(tables.REGISTER_QUERY, 609, bytes.fromhex("0002000100020003"))


# --------------------------------------------------------------------------------------
# The compiled decoder against construct's interpreter
# --------------------------------------------------------------------------------------


def outcome(decode: Any, command: Command, version: int, payload: bytes) -> Any:
    """What a decoder makes of a payload: the reading, or the error's type and message."""
    try:
        return decode(command, version, payload)
    except codec.CodecError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize(("code", "version"), ALL_CASES, ids=ids(ALL_CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_compiled_and_interpreted_decoding_agree(code: int, version: int, data: Any) -> None:
    command = tables.COMMANDS[code]
    payload = data.draw(st.one_of(
        random_payloads(command, version),  # well formed, every value possible
        st.binary(max_size=300),  # anything: short payloads, counts that are no counts
    ))
    payload = data.draw(st.sampled_from([
        payload,
        payload + data.draw(st.binary(min_size=1, max_size=20)),  # extra bytes
        payload[: data.draw(st.integers(0, len(payload)))],  # cut anywhere
    ]))
    compiled = outcome(codec.decode, command, version, payload)
    assert compiled == outcome(codec.interpret, command, version, payload)


def test_scaled_values_are_the_interpreters_to_the_last_bit() -> None:
    """Each scale of the tables, for every 16-bit raw value and 32-bit ones sampled: the
    compiled expression (a division, not round()) gives the interpreter's float."""
    fields = {(f.scale, f.wire, f.size): f for c in tables.COMMANDS.values()
              for layout in c.layouts.values() for f in layout
              if f.scale != 1 and f.is_numeric}
    assert {scale for scale, _, _ in fields} >= {0.1, 0.01, 0.001, 10, 100}
    raws = [*range(-(1 << 15), 1 << 16), *range(-(1 << 31), 1 << 32, 65521), (1 << 32) - 1]
    for f in fields.values():
        names = codec._Names()
        compiled = eval(f"lambda x: {codec._value_source(f, 'x', names)}", names.objects)
        assert [repr(compiled(raw)) for raw in raws] == [
            repr(codec.to_value(f, raw)) for raw in raws], f.key


def test_layouts_compile_on_first_use_only() -> None:
    """Start-up stays cheap: importing compiles nothing, a decode compiles its layout."""
    script = ("from sermatec_bridge.protocol import codec, tables\n"
              "before = codec._decoder.cache_info().currsize\n"
              "codec.decode(tables.COMMANDS[0x0C], 609, bytes(8))\n"
              "print(before, codec._decoder.cache_info().currsize)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["0", "1"]


def test_construct_is_loaded_by_the_first_encode_not_by_decoding() -> None:
    """A one-shot read decodes only: construct's 8 ms of import are not spent on it."""
    script = ("import sys\n"
              "from sermatec_bridge.protocol import codec, tables\n"
              "command = tables.COMMANDS[0x0C]\n"
              "reading = codec.decode(command, 609, bytes(4))\n"
              "print('construct' in sys.modules, codec.fixed_size(command, 609))\n"
              "codec.encode(command, 609, reading.values)\n"
              "print('construct' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "4", "True"]
