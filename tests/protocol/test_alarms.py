"""Alarm codes: from the bits of 0x1e / 0x1f to texts a user can read."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sermatec_bridge.protocol import alarms, codec, tables
from sermatec_bridge.protocol.alarms import Severity, active_alarms, describe

PROPERTIES = Path("/work/shared/reference/alarm-codes.en.properties")


def words(*values: int) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def faults(*values: int) -> dict[str, Any]:
    """Decoded 0x1f values for five fault words (and the reserved word)."""
    return dict(codec.decode(tables.COMMANDS[0x1F], 609, words(*values, 0)).values)


def battery(*values: int, version: int = 609) -> dict[str, Any]:
    """Decoded 0x1e values: six battery words, then (PCU >= 258) the summary word."""
    return dict(codec.decode(tables.COMMANDS[0x1E], version, words(*values)).values)


def test_system_faults_from_0x1f_bits() -> None:
    found = active_alarms(faults(0x0001, 0, 0, 0x8000, 0x0400), battery_make=2)
    assert [(a.code, a.text, a.source) for a in found] == [
        (1, "Output overload warning", "Inverter"),  # word 0, bit 0
        (64, "Negative bus insulation resistance fault", "Inverter"),  # word 3, bit 15
        (75, "On-grid / off-grid switching warning", "Inverter"),  # word 4, bit 10
    ]
    assert all(a.severity is Severity.MAJOR for a in found)
    assert str(found[0]) == "Inverter 1: Output overload warning (major)"


def test_no_bits_no_alarms() -> None:
    assert active_alarms({**faults(0, 0, 0, 0, 0), **battery(0, 0, 0, 0, 0, 0, 0, 0)}, 2) == []
    assert active_alarms({}, None) == []


@pytest.mark.parametrize("make", [2, "2", "Pylontech high voltage", "pylontech HIGH voltage"])
def test_pylontech_hv_battery_bit_0_is_code_81(make: int | str) -> None:
    found = active_alarms(battery(0x0001, 0, 0, 0, 0, 0, 0, 0), make)
    assert [(a.code, a.text, a.source, a.severity) for a in found] == [
        (81, "Cell voltage low alarm", "Pylontech HV battery", Severity.MINOR)
    ]


@pytest.mark.parametrize(
    ("make", "word", "bit", "code", "source"),
    [
        (2, 1, 0, 97, "Pylontech HV battery"),  # word 1 bit 0: relative 17
        (3, 0, 0, 177, "Pylontech LV battery"),
        (30, 1, 3, 196, "Pylontech LV battery"),
        (23, 0, 0, 561, "BYD LV battery"),
        (22, 0, 0, 657, "BYD HV battery"),
        (27, 0, 8, 777, "Soluna 4K LV battery"),
    ],
)
def test_battery_blocks_by_make(make: int, word: int, bit: int, code: int, source: str) -> None:
    bits = [0] * 8
    bits[word] = 1 << bit
    (found,) = active_alarms(battery(*bits), make)
    assert (found.code, found.source) == (code, source)
    assert found.text == describe(code) != f"Unknown alarm code {code}"


def test_the_summary_word_is_read_whatever_the_make() -> None:
    readings = battery(0, 0, 0, 0, 0, 0, 0x0001 | 0x0800, 0)  # bits 0 and 11
    for make in (2, 22, None, 12):
        found = active_alarms(readings, make)
        assert [(a.code, a.text, a.source) for a in found] == [
            (753, "Discharge overcurrent warning", "Battery"),
            (764, "Battery undervoltage fault", "Battery"),
        ]


def test_pcu_252_has_no_summary_word() -> None:
    readings = battery(0x0002, 0, 0, 0, 0, 0, version=252)
    assert "battery_summary_alarm_bits" not in readings
    assert [a.code for a in active_alarms(readings, 2)] == [82]


@pytest.mark.parametrize("make", [None, 12, 99, "Generic high voltage", "nonsense"])
def test_battery_bits_of_a_make_without_a_block(make: int | str | None) -> None:
    (found,) = active_alarms(battery(0, 0x0004, 0, 0, 0, 0, 0, 0), make)
    assert found.code is None
    assert found.bit == 18  # word 1, bit 2
    assert found.text == "Battery alarm bit 18"
    assert found.severity is Severity.UNKNOWN
    expected_source = "Generic high voltage battery" if make in (12, "Generic high voltage") else (
        "Battery"
    )
    assert found.source == expected_source


def test_the_make_falls_back_to_the_readings() -> None:
    readings = {**battery(0x0001, 0, 0, 0, 0, 0, 0, 0), "battery_protocol": "BYD high voltage"}
    assert [a.code for a in active_alarms(readings)] == [657]
    readings = {**battery(0x0001, 0, 0, 0, 0, 0, 0, 0), "battery_make": 23}
    assert [a.code for a in active_alarms(readings)] == [561]


def test_codes_without_a_text() -> None:
    assert describe(4) == "Unknown alarm code 4"
    assert describe(999) == "Unknown alarm code 999"
    assert describe(0) == "Unknown alarm code 0"
    (found,) = active_alarms(faults(0x0008, 0, 0, 0, 0))  # word 0, bit 3: code 4
    assert (found.code, found.text, found.source, found.severity) == (
        4, "Unknown alarm code 4", "Inverter", Severity.UNKNOWN,
    )
    (found,) = active_alarms(battery(0x1000, 0, 0, 0, 0, 0, 0, 0), 2)  # relative 13
    assert (found.code, found.text, found.source) == (93, "Unknown alarm code 93",
                                                      "Pylontech HV battery")


def test_alarms_are_sorted_and_unknown_make_bits_come_last() -> None:
    readings = {**faults(0x8001, 0, 0, 0, 0x0001), **battery(0x0003, 0, 0, 0, 0, 0, 0x0001, 0)}
    found = active_alarms(readings, None)
    assert [(a.code, a.bit) for a in found] == [
        (1, None), (16, None), (65, None), (753, None), (None, 0), (None, 1),
    ]


def test_fan_warning_74_is_included() -> None:
    assert describe(74) == "Fan warning"
    (found,) = active_alarms(faults(0, 0, 0, 0, 1 << 9))
    assert found.code == 74


@given(st.lists(st.integers(0, 0xFFFF), min_size=5, max_size=5))
def test_every_set_fault_bit_is_one_alarm(values: list[int]) -> None:
    found = active_alarms(faults(*values))
    expected = [
        16 * w + b + 1 for w, value in enumerate(values) for b in range(16) if value >> b & 1
    ]
    assert [a.code for a in found] == expected
    assert all(a.text == describe(a.code) for a in found if a.code is not None)


@given(st.lists(st.integers(0, 0xFFFF), min_size=6, max_size=6), st.sampled_from([2, 3, 22, 23]))
def test_every_set_battery_bit_is_one_alarm_of_the_block(values: list[int], make: int) -> None:
    block = alarms.battery_block(make)
    assert block is not None
    found = active_alarms(battery(*values, 0, 0), make)
    expected = [
        block.base + 16 * w + b + 1
        for w, value in enumerate(values) for b in range(16) if value >> b & 1
    ]
    assert [a.code for a in found] == expected
    assert all(a.source == block.name for a in found)


# --------------------------------------------------------------------------------------
# The table itself
# --------------------------------------------------------------------------------------


def test_blocks_do_not_overlap_and_hold_every_text() -> None:
    spans = sorted((b.base + 1, b.base + b.size) for b in alarms.BLOCKS)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end < start
    for code in alarms.TEXTS:
        assert alarms.block_of(code) is not None, code


def test_every_make_in_the_blocks_is_a_known_make_and_in_one_block() -> None:
    makes = [make for block in alarms.BLOCKS for make in block.makes]
    assert len(makes) == len(set(makes))
    assert set(makes) <= set(tables.BATTERY_MAKES)
    assert {2, 3, 22, 23, 27, 30} <= set(makes)


def test_blocks_agree_with_the_codec_fields() -> None:
    system = tables.COMMANDS[0x1F].layout(609) or ()
    bases = [f.alarm_base for f in system if f.key.startswith("fault_word_")]
    assert bases == [0, 16, 32, 48, 64]
    assert alarms.INVERTER.size == 16 * len(bases)
    fields = {f.key: f for f in tables.COMMANDS[0x1E].layout(609) or ()}
    assert fields["battery_alarm_bits"].alarm_base == 0
    assert 8 * fields["battery_alarm_bits"].size == alarms.BATTERY_BITS
    summary = fields["battery_summary_alarm_bits"]
    assert summary.alarm_base == alarms.BATTERY_SUMMARY.base
    assert 8 * summary.size == alarms.BATTERY_SUMMARY.size


def test_texts_are_clean() -> None:
    for code, (text, severity) in alarms.TEXTS.items():
        assert text == text.strip() and "  " not in text, code
        assert text[0].isupper(), code
        assert not re.search(r"Resitance|Temerpature|Temparature", text, re.IGNORECASE), code
        assert severity in (Severity.MAJOR, Severity.MINOR), code


@pytest.mark.skipif(
    not PROPERTIES.exists(),
    reason=f"{PROPERTIES} is not present (reference material is not part of the project)",
)
def test_every_vendor_code_has_a_text_with_its_level() -> None:
    vendor: dict[int, int] = {}
    for line in PROPERTIES.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(\d+)=[^:]*:[^:]*:.*:(\d)\s*", line)
        if match:
            vendor[int(match[1])] = int(match[2])
    assert len(vendor) > 200
    levels = {1: Severity.MAJOR, 3: Severity.MINOR}
    for code, level in vendor.items():
        assert code in alarms.TEXTS, code
        assert alarms.TEXTS[code][1] is levels[level], code
    assert set(alarms.TEXTS) - set(vendor) == {74}  # commented out by the vendor


@pytest.mark.parametrize(("make", "block"), [
    (5, "Chilwee battery"), ("Chaowei", "Chilwee battery"),
    (10, "Alpha ESS battery"), ("Alpha ESS low voltage", "Alpha ESS battery"),
    (27, "Soluna 4K LV battery"), (30, "Pylontech LV battery"),
])
def test_every_alarm_block_of_a_make_with_a_code_is_reached(make: int | str, block: str) -> None:
    (found,) = active_alarms(battery(0x0001, 0, 0, 0, 0, 0, 0, 0), make)
    assert found.source == block and found.code is not None


def test_the_battery_make_of_0x98_decides_over_the_protocol_of_0x95() -> None:
    readings = {**battery(0x0001, 0, 0, 0, 0, 0, 0, 0), "battery_make": 23,
                "battery_protocol": "BYD high voltage"}
    assert [a.code for a in active_alarms(readings)] == [561]  # BYD LV, from 0x98


def test_the_labelled_battery_makes_cover_the_public_code_list() -> None:
    labelled = set(tables.BATTERY_MAKES)
    assert {4, 5, 6, 7, 10, 11, 15, 16, 17, 18, 19, 20, 21, 24} <= labelled
    assert all(not label.isdigit() for label in tables.BATTERY_MAKES.values())
