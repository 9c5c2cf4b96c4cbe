"""Readings as text: numbers with the decimals their scale gives."""

from __future__ import annotations

from sermatec_bridge import display
from sermatec_bridge.protocol import codec, tables


def test_energy_prints_with_the_precision_of_its_scale() -> None:
    command = tables.COMMANDS[0x9A]  # today in 0.1 kWh, total in kWh, history lists
    values = dict(codec.decode(command, 609, bytes(codec.fixed_size(command, 609) or 0)).values)
    values |= {"grid_export_today": 12.3, "grid_export_total": 1450,
               "grid_export_by_half_hour": [0.5] + [0.0] * 47}
    lines = display.lines(codec.decode(command, 609, codec.encode(command, 609, values)))
    assert "Grid export today: 12.3 kWh" in lines
    assert "Grid export total: 1450 kWh" in lines
    (half_hours,) = [f for f in command.layouts[252] if f.key == "grid_export_by_half_hour"]
    assert display.format_value(half_hours, [0.5, 0.30000000000000004]) == "0.5, 0.3"


def test_a_scale_of_a_hundredth_keeps_two_decimals() -> None:
    (frequency,) = [f for f in tables.COMMANDS[0x0B].layouts[252]
                    if f.key == "grid_frequency"]
    assert display.format_value(frequency, 50.0) == "50.00"
    assert display._decimals(0.001) == 3 and display._decimals(1) == 0


def test_switches_print_on_off_or_not_set_never_their_code() -> None:
    """0xa2's 2-bit switches: 1 on, 3 off, 0 not set, as its 0xee00 / 0x00ee flags."""
    command = tables.FORCED_SCHEDULE
    payload = bytearray(codec.fixed_size(command, 609) or 0)
    # enabled, Sunday on, Monday off, Tuesday not set, Wednesday the code 2 (no meaning)
    payload[0:2] = (1 | 1 << 2 | 3 << 4 | 2 << 8).to_bytes(2, "big")
    lines = display.lines(codec.decode(command, 609, bytes(payload)))
    assert lines[:5] == ["Forced charge enabled: on", "Forced charge on Sunday: on",
                         "Forced charge on Monday: off", "Forced charge on Tuesday: not set",
                         "Forced charge on Wednesday: unknown (code 2)"]
    assert "Forced discharge enabled: off" in lines
    switches = [line for line in lines if " enabled: " in line or " on " in line]
    assert len(switches) == 16
    assert all(line.endswith((": on", ": off", ": not set", ": unknown (code 2)"))
               for line in switches)
    params2 = codec.decode(tables.WORKING_PARAMETERS_2, 609,
                           bytes.fromhex("ee00" "00ee") + bytes(100))
    assert display.lines(params2)[:2] == ["Meter detection: on",
                                          "Three-phase unbalanced output: off"]
    running = codec.decode(tables.RUNNING_STATUS, 609, bytes.fromhex("40000000"))
    assert "Grid power down: yes" in display.lines(running), "a status bit, not a switch"


def test_records_are_shown_as_far_as_their_count_says_they_are_in_use() -> None:
    command = tables.FORCED_SCHEDULE
    values = dict(codec.decode(command, 609, bytes(60)).values)
    slots = values["forced_charge_periods"]
    values["forced_charge_periods"] = [{"start": "01:00", "end": "02:00", "reserved": None},
                                       {"start": "03:00", "end": "04:00", "reserved": None},
                                       *slots[2:]]
    for count, shown in [(0, "none"), (1, "01:00 02:00"), (2, "01:00 02:00; 03:00 04:00")]:
        payload = codec.encode(command, 609, values | {"forced_charge_period_count": count})
        lines = display.lines(codec.decode(command, 609, payload))
        assert f"Forced charge periods: {shown}" in lines, count


def test_alarm_words_are_shown_as_the_alarms_they_raise() -> None:
    faults = bytearray(12)
    faults[1] = 0b101  # word 0, bits 0 and 2: system codes 1 and 3
    lines = display.lines(codec.decode(tables.SYSTEM_FAULTS, 609, bytes(faults)))
    assert lines == ["Active alarms: Inverter 1: Output overload warning (major); "
                     "Inverter 3: AC output short-circuit fault (major)"]
    quiet = display.lines(codec.decode(tables.SYSTEM_FAULTS, 609, bytes(12)))
    assert quiet == ["Active alarms: none"]
