"""`simulate --set`: a simulated inverter that starts with given settings."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from sermatec_bridge import cli
from sermatec_bridge.simulator import InverterModel
from sermatec_bridge.simulator.model import SettingsError


def test_settings_in_the_units_of_the_state_and_raw_codes() -> None:
    model = InverterModel(pcu=609, settings={
        "operating_mode": 6, "grid_soc_min": 5, "grid_export_limit": 12000,
        "tariff_peak": -0.5, "inverter_on": False, "dc_battery_type": 2,
        "forced_charge_periods": [{"start": "01:00", "end": "02:00"}]})
    shown = model.values(0x95)
    assert (shown["operating_mode"], shown["grid_soc_min"], shown["grid_export_limit"],
            shown["tariff_peak"], shown["dc_battery_type"]) == (6, 5, 12000, -0.5, "Lead-acid")
    assert model.values(0x0C)["inverter_on"] is False
    forced = model.values(0xA2)
    assert forced["forced_charge_period_count"] == 1, "the periods given are in use"
    assert forced["forced_charge_periods"][0]["start"] == "01:00"
    assert InverterModel(settings={"operating_mode": 2}).settings["operating_mode"] == (
        "Energy storage")


@pytest.mark.parametrize(("settings", "reason"), [
    ({"turbo": 1}, "unknown setting(s) turbo at PCU 609"),
    ({"grid_soc_min": "lots"}, "grid_soc_min: 'lots' has the wrong type"),
    ({"grid_export_limit": 70000}, "grid_export_limit: 70000 does not fit"),
    ({"tou_schedule": 3}, "tou_schedule: a list of records"),
    ({"bypass": 1}, "unknown setting(s) bypass at PCU 609"),  # 0x9d has it from PCU 500 to 602
])
def test_settings_the_inverter_could_not_hold_are_refused(settings: dict[str, object],
                                                          reason: str) -> None:
    with pytest.raises(SettingsError) as refused:
        InverterModel(pcu=609, settings=settings)
    assert str(refused.value).startswith(reason)


def test_simulate_set_refuses_an_unknown_setting() -> None:
    run = subprocess.run([sys.executable, "-m", "sermatec_bridge", "simulate", "--port", "1",
                          "--set", "turbo=1"], capture_output=True, text=True, timeout=30)
    assert run.returncode == cli.Exit.USAGE
    assert run.stderr.startswith("sermatec-bridge: --set: unknown setting(s) turbo at PCU")
    assert run.stderr.count("\n") == 1, "one line"


def test_simulate_set_parses_json_values() -> None:
    args = cli.parser("sermatec-bridge").parse_args(
        ["simulate", "--set", "operating_mode=6", "--set", "grid_code=Italy",
         "--set", 'forced_charge_periods=[{"start": "01:00", "end": "02:00"}]'])
    assert args.settings == [("operating_mode", 6), ("grid_code", "Italy"),
                             ("forced_charge_periods", [{"start": "01:00", "end": "02:00"}])]


@pytest.mark.parametrize(("monday", "forced"), [(1, True), (3, False), (0, False)])
def test_forced_charge_runs_on_the_days_switched_on(monday: int, forced: bool) -> None:
    """Day codes as on the wire (1 on, 3 off, 0 not set): on a Monday night, a forced
    charge period makes the battery charge from the grid at full power."""
    now = [datetime(2024, 6, 17, 2, 0)]  # a Monday, no sun
    model = InverterModel(pcu=609, seed=1, clock=lambda: now[0], settings={
        "forced_charge_mode": 1, "forced_charge_monday": monday,
        "forced_charge_periods": [{"start": "01:00", "end": "05:00"}]})
    assert model.values(0xA2)["forced_charge_monday"] is {1: True, 3: False, 0: None}[monday]
    now[0] += timedelta(minutes=1)
    model.update()
    assert (model.live.battery == model.rated) is forced
    assert (model.live.grid < -model.rated) is forced, "the grid pays for the charge"
