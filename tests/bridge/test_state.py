"""The JSON state objects of the poll groups, and the energy counter guard."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from sermatec_bridge.bridge.state import EnergyGuard, state_payload
from sermatec_bridge.protocol import codec, tables
from sermatec_bridge.protocol.codec import Reading
from sermatec_bridge.protocol.model import Field, Wire

V = 609


def local(*args: int) -> datetime:
    """An aware local time, as the service passes it."""
    return datetime(*args).astimezone()  # type: ignore[arg-type]


NOW = local(2024, 5, 1, 12, 0)


def sample(f: Field) -> Any:
    """A plausible value the codec can encode for a field."""
    if f.wire is Wire.TEXT:
        return "AB12345"[: f.size or 7]
    if f.wire is Wire.ALARMS:
        return []
    if f.wire is Wire.BIT or f.flag is not None:
        return True
    if f.codes is not None:
        return next(iter(f.codes.values()))
    if f.clock:
        return "08:30"
    if f.wire is Wire.BITS:
        return 1
    if f.limits is not None:
        lo, hi = f.limits
        raw = round((lo + hi) / 2 / f.scale)
    else:
        raw = 12
    value = raw * f.scale
    return int(value) if f.scale >= 1 else round(value, 6)


def reading(code: int, version: int = V, **overrides: Any) -> Reading:
    """A reply decoded from an encoded payload of plausible values (and overrides)."""
    command = tables.COMMANDS[code]
    layout = codec.layout_of(command, version)
    values: dict[str, Any] = {}
    for f in layout:
        if f.group is not None:
            if f.group not in values:
                members = [m for m in layout if m.group == f.group and m.wire is not Wire.RESERVED]
                count = f.repeat if isinstance(f.repeat, int) else 2
                values[f.group] = [{m.key: sample(m) for m in members} for _ in range(count)]
        elif f.wire is Wire.RESERVED:
            continue
        elif f.repeat is not None:
            values[f.key] = [sample(f)] * (f.repeat if isinstance(f.repeat, int) else 1)
        else:
            values[f.key] = sample(f)
    values.update(overrides)
    return codec.decode(command, version, codec.encode(command, version, values))


def test_live_group_has_every_shown_field_and_last_seen() -> None:
    readings = [reading(c) for c in (0x0A, 0x0B, 0x0C, 0x0D)]
    payload = state_payload("live", readings, NOW, EnergyGuard())
    assert payload["battery_soc"] == 12
    assert payload["battery_voltage"] == pytest.approx(1.2)
    assert payload["battery_state"] == "Charging"
    assert payload["inverter_on"] is True
    assert "inverter_status_word" not in payload  # hidden
    assert payload["last_seen"] == NOW.astimezone(UTC).isoformat(timespec="seconds")
    assert payload["last_seen"].endswith("+00:00")


def test_unknown_code_and_odd_flag_become_none() -> None:
    battery = reading(0x0A, battery_state=0x44)  # no label for 0x44
    assert battery.values["battery_state"] == 0x44
    params2 = reading(0x9D, meter_monitor=0x1234)  # neither 0xee00 nor 0x00ee
    payload = state_payload("settings", [reading(0x95), params2], NOW, EnergyGuard())
    assert payload["meter_monitor"] is None
    live = state_payload("live", [battery], NOW, EnergyGuard())
    assert live["battery_state"] is None


def test_record_groups_are_trimmed_to_the_records_in_use() -> None:
    schedule = [{"start": "06:00", "end": "09:00", "period": "Peak"}] * 16
    params = reading(0x95, tou_count=3, tou_schedule=schedule)
    forced = reading(0xA2, forced_charge_period_count=1)
    payload = state_payload("settings", [params, forced, reading(0x9D)], NOW, EnergyGuard())
    assert payload["tou_schedule"] == [{"start": "06:00", "end": "09:00", "period": "Peak"}] * 3
    assert payload["tou_count"] == 3
    assert payload["forced_charge_periods"] == [{"start": "08:30", "end": "08:30"}]
    assert len(payload["forced_discharge_periods"]) == 2
    assert not any(k.startswith("reserved") for k in payload)
    assert not any(k.startswith("custom_") for k in payload)  # hidden


def test_each_period_is_also_shown_member_by_member() -> None:
    """One key per period member for Home Assistant's entities: time-of-use periods while
    in use (0x66 writes only those), forced periods always (0x71 keeps every slot)."""
    schedule = [{"start": f"0{n}:00", "end": f"0{n}:30", "period": "Peak"} for n in range(8)]
    params = reading(0x95, tou_count=2, tou_schedule=schedule * 2)
    forced = reading(0xA2, forced_charge_period_count=1, forced_charge_periods=[
        {"start": "01:00", "end": "02:00"}, {"start": "03:00", "end": "04:00"}] * 2)
    payload = state_payload("settings", [params, forced, reading(0x9D)], NOW, EnergyGuard())
    assert (payload["tou_period_2_start"], payload["tou_period_2_end"],
            payload["tou_period_2_tariff"]) == ("01:00", "01:30", "Peak")
    assert payload["tou_period_3_start"] is None and payload["tou_period_16_tariff"] is None
    assert "tou_period_1_in_use" not in payload, "the count says it"
    assert (payload["forced_charge_period_1_start"], payload["forced_charge_period_1_in_use"]
            ) == ("01:00", True)
    assert (payload["forced_charge_period_2_start"], payload["forced_charge_period_2_end"],
            payload["forced_charge_period_2_in_use"]) == ("03:00", "04:00", False)
    assert "forced_charge_period_5_start" not in payload


def test_grid_and_battery_power_are_also_signed_as_power_flow_cards_expect() -> None:
    """Home Assistant's Energy dashboard and power-flow cards: grid positive while
    importing, battery positive while discharging."""
    exporting = state_payload("live", [reading(0x0B, grid_active_power=1500,
                                               dc_power=-800)], NOW, EnergyGuard())
    assert (exporting["grid_power"], exporting["battery_power"]) == (-1500, 800)
    importing = state_payload("live", [reading(0x0B, grid_active_power=-200, dc_power=2500)],
                              NOW, EnergyGuard())
    assert (importing["grid_power"], importing["battery_power"]) == (200, -2500)
    idle = state_payload("live", [reading(0x0B, grid_active_power=0, dc_power=0)], NOW,
                         EnergyGuard())
    assert json.dumps([idle["grid_power"], idle["battery_power"]]) == "[0, 0]"  # not -0


def test_record_with_unknown_code_shows_none() -> None:
    schedule = [{"start": "06:00", "end": "09:00", "period": 9}] + [
        {"start": "00:00", "end": "00:00", "period": "Unused"}
    ] * 15
    payload = state_payload("settings", [reading(0x95, tou_count=1, tou_schedule=schedule)],
                            NOW, EnergyGuard())
    assert payload["tou_schedule"] == [{"start": "06:00", "end": "09:00", "period": None}]


def test_energy_group_placeholder_zero_is_none() -> None:
    guard = EnergyGuard()
    first = state_payload("energy", [reading(0x99, pv_energy_total=0, pv_energy_today=0)],
                          NOW, guard)
    assert first["pv_energy_total"] is None  # lifetime 0 before any real total
    assert first["pv_energy_today"] == 0  # a daily 0 is real (night, morning)
    assert not any(k.endswith(("_by_day", "_by_half_hour")) for k in first)  # hidden
    later = state_payload("energy", [reading(0x99, pv_energy_total=1234)],
                          NOW + timedelta(minutes=1), guard)
    assert later["pv_energy_total"] == 1234


# --------------------------------------------------------------------------------------
# EnergyGuard
# --------------------------------------------------------------------------------------


def test_lifetime_counter_never_decreases_and_warns_once() -> None:
    guard = EnergyGuard()
    assert guard.check("grid_import_total", 100, NOW) == 100
    with capture_logs() as logs:
        assert guard.check("grid_import_total", 90, NOW) == 100
        assert guard.check("grid_import_total", 0, NOW) == 100  # a 0 is no reset either
    assert [e["log_level"] for e in logs] == ["warning"]
    assert logs[0]["key"] == "grid_import_total"
    assert guard.check("grid_import_total", 101, NOW) == 101
    assert guard.check("grid_import_total", 101, NOW + timedelta(days=3)) == 101


def test_lifetime_placeholder_zero_then_real_value() -> None:
    guard = EnergyGuard()
    assert guard.check("pv_energy_total", 0, NOW) is None
    assert guard.check("pv_energy_total", 0.0, NOW) is None
    assert guard.check("pv_energy_total", 5.5, NOW) == 5.5


def test_missing_reading_repeats_the_last_value_of_the_day() -> None:
    guard = EnergyGuard()
    assert guard.check("pv_energy_total", None, NOW) is None
    guard.check("pv_energy_total", 7, NOW)
    guard.check("pv_energy_today", 3.2, NOW)
    assert guard.check("pv_energy_total", None, NOW) == 7
    assert guard.check("pv_energy_today", None, NOW) == 3.2
    assert guard.check("pv_energy_today", None, NOW + timedelta(days=1)) is None


def test_daily_counter_keeps_its_value_during_the_day() -> None:
    guard = EnergyGuard()
    assert guard.check("pv_energy_today", 0, local(2024, 5, 1, 6, 0)) == 0
    assert guard.check("pv_energy_today", 4.2, local(2024, 5, 1, 12, 0)) == 4.2
    assert guard.check("pv_energy_today", 0, local(2024, 5, 1, 12, 1)) == 4.2  # glitch
    assert guard.check("pv_energy_today", 3.9, local(2024, 5, 1, 12, 2)) == 4.2
    assert guard.check("pv_energy_today", 4.5, local(2024, 5, 1, 12, 3)) == 4.5


def test_daily_counter_resets_on_a_new_local_date() -> None:
    guard = EnergyGuard()
    assert guard.check("load_energy_today", 12.3, local(2024, 5, 1, 23, 59)) == 12.3
    assert guard.check("load_energy_today", 0.1, local(2024, 5, 2, 0, 1)) == 0.1
    # and the new day's value is guarded again
    assert guard.check("load_energy_today", 0.0, local(2024, 5, 2, 0, 2)) == 0.1


def test_daily_reset_of_an_inverter_clock_running_late_is_accepted_once() -> None:
    guard = EnergyGuard()
    guard.check("pv_energy_today", 15.0, local(2024, 5, 1, 23, 50))
    # past our midnight the inverter still shows yesterday's total ...
    assert guard.check("pv_energy_today", 15.0, local(2024, 5, 2, 0, 1)) == 15.0
    # ... then resets: accepted although the date did not change since
    assert guard.check("pv_energy_today", 0.0, local(2024, 5, 2, 0, 10)) == 0.0
    assert guard.check("pv_energy_today", 2.0, local(2024, 5, 2, 9, 0)) == 2.0
    # a later drop on the same day is refused again
    assert guard.check("pv_energy_today", 0.0, local(2024, 5, 2, 9, 1)) == 2.0


def test_no_reset_allowance_when_yesterday_ended_at_zero() -> None:
    guard = EnergyGuard()
    guard.check("battery_charge_today", 0.0, local(2024, 5, 1, 23, 0))
    assert guard.check("battery_charge_today", 0.0, local(2024, 5, 2, 0, 5)) == 0.0
    assert guard.check("battery_charge_today", 5.0, local(2024, 5, 2, 12, 0)) == 5.0
    assert guard.check("battery_charge_today", 0.0, local(2024, 5, 2, 12, 1)) == 5.0


# --------------------------------------------------------------------------------------
# Alarms
# --------------------------------------------------------------------------------------


def test_alarms_group_lists_the_active_alarms() -> None:
    readings = [
        reading(0x1E, battery_alarm_bits=[1], battery_summary_alarm_bits=[]),
        reading(0x1F, fault_word_0=[7], fault_word_4=[65]),
    ]
    payload = state_payload("alarms", readings, NOW, EnergyGuard(),
                            battery_make="Pylontech high voltage")
    assert payload["problem"] is True
    assert payload["count"] == 3
    assert [a["code"] for a in payload["alarms"]] == [7, 65, 81]
    first = payload["alarms"][0]
    assert first["text"] == "Grid voltage high warning"
    assert first["severity"] == "major"
    assert first["source"] == "Inverter"
    assert payload["last_seen"] == NOW.astimezone(UTC).isoformat(timespec="seconds")


def test_alarms_group_without_alarms() -> None:
    payload = state_payload("alarms", [reading(0x1E), reading(0x1F)], NOW, EnergyGuard())
    assert payload["problem"] is False
    assert payload["count"] == 0
    assert payload["alarms"] == []


def test_alarm_of_a_battery_make_without_a_block_keeps_its_bit() -> None:
    payload = state_payload("alarms", [reading(0x1E, battery_alarm_bits=[3])], NOW,
                            EnergyGuard(), battery_make="Generic high voltage")
    [alarm] = payload["alarms"]
    assert alarm["code"] is None
    assert alarm["bit"] == 2
    assert alarm["severity"] == "unknown"
    assert "bit 2" in alarm["text"]


@pytest.fixture
def home_in_auckland() -> Any:
    from sermatec_bridge import homezone

    homezone.use(homezone.named("Pacific/Auckland", "test"))
    yield
    homezone.use(None)


@pytest.mark.usefixtures("home_in_auckland")
def test_the_daily_counters_start_over_at_the_homes_midnight_not_the_hosts() -> None:
    """Auckland's midnight in December is 11:00 UTC; the host's (UTC) midnight is not one."""
    guard = EnergyGuard()
    utc = UTC
    assert guard.check("pv_energy_today", 12.5, datetime(2026, 12, 4, 23, 50, tzinfo=utc))
    # 00:10 UTC: a new day for the host, still the afternoon of the 5th in Auckland
    assert guard.check("pv_energy_today", 0.0, datetime(2026, 12, 5, 0, 10, tzinfo=utc)) == 12.5
    assert guard.check("pv_energy_today", 12.6, datetime(2026, 12, 5, 0, 20, tzinfo=utc)) == 12.6
    # 11:05 UTC is 00:05 on the 6th in Auckland: the inverter's reset is taken
    assert guard.check("pv_energy_today", 0.0, datetime(2026, 12, 5, 11, 5, tzinfo=utc)) == 0.0
