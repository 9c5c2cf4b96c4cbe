"""Schedules member by member, as Home Assistant's entities write them: the writer against
the simulator over loopback TCP. Each write is one read-modify-write of 0x71 or 0x66,
checked (end after start, no overlap, periods in use in order) and read back."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from sermatec_bridge.bridge.writes import Writer, WriteResult
from sermatec_bridge.inverter.client import InverterClient
from sermatec_bridge.simulator import Simulator

OVERNIGHT = "a period over midnight is two periods, one to 24:00 and one from 00:00"
TOU = [{"start": "00:00", "end": "07:00", "period": "Valley"},
       {"start": "07:00", "end": "17:00", "period": "Flat"}]
FORCED = [{"start": "01:00", "end": "05:00"}, {"start": "13:00", "end": "14:00"},
          {"start": "22:00", "end": "06:00"}]  # an installer's period over midnight


class Rig:
    def __init__(self, sim: Simulator, writer: Writer) -> None:
        self.sim, self.writer = sim, writer

    async def write(self, request: Mapping[str, Any]) -> WriteResult:
        self.sim.received.clear()
        return await self.writer.apply(request)

    @property
    def written(self) -> list[int]:
        return [c for c in self.sim.received if c in (0x66, 0x71)]

    def forced(self) -> dict[str, Any]:
        return self.sim.model.values(0xA2)

    def periods(self, prefix: str = "forced_charge") -> list[tuple[str, str]]:
        values = self.forced()
        return [(p["start"], p["end"]) for p in values[f"{prefix}_periods"]]

    def tou(self) -> list[tuple[str, str, str]]:
        values = self.sim.model.values(0x95)
        return [(p["start"], p["end"], p["period"])
                for p in values["tou_schedule"][: values["tou_count"]]]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    settings = {"forced_charge_periods": FORCED[:2], "tou_schedule": TOU}
    async with Simulator(pcu=609, settings=settings) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            yield Rig(sim, Writer(client, min_interval=0, confirm_timeout=1))


async def test_a_period_start_from_a_time_entity_is_written_and_read_back(rig: Rig) -> None:
    # Home Assistant's time entity sends HH:MM:SS
    result = await rig.write({"forced_charge_period_1_start": "02:30:00"})
    assert result.as_json() == {"ok": True, "changed": {"forced_charge_period_1_start": "02:30"},
                                "written": True}
    assert rig.written == [0x71]
    assert rig.periods()[:2] == [("02:30", "05:00"), ("13:00", "14:00")]
    assert rig.forced()["forced_charge_period_count"] == 2
    again = await rig.write({"forced_charge_period_1_start": "02:30"})
    assert again.as_json() == {"ok": True, "unchanged": ["forced_charge_period_1_start"],
                               "written": False}
    assert rig.written == []


async def test_an_end_of_00_00_is_the_end_of_the_day(rig: Rig) -> None:
    result = await rig.write({"forced_charge_period_2_end": "00:00:00"})
    assert result.ok, result.error
    assert result.changed == {"forced_charge_period_2_end": "24:00"}
    assert "00:00 is midnight at the end of the day: written as 24:00" in str(
        result.as_json()["note"])
    assert rig.periods()[1] == ("13:00", "24:00")


@pytest.mark.parametrize(("request_", "error"), [
    ({"forced_charge_period_1_start": "06:00"},
     f"Forced charge period 1 (06:00-05:00): its end must be after its start; {OVERNIGHT}"),
    ({"forced_charge_period_2_start": "04:00"},
     "Forced charge period 2 (04:00-14:00) overlaps Forced charge period 1 (01:00-05:00)"),
    ({"forced_charge_periods": [{"start": "01:00", "end": "05:00"},
                                {"start": "04:59", "end": "06:00"}]},
     "Forced charge period 2 (04:59-06:00) overlaps Forced charge period 1 (01:00-05:00)"),
    ({"forced_charge_periods": [{"start": "22:00", "end": "06:00"}]},
     f"Forced charge period 1 (22:00-06:00): its end must be after its start; {OVERNIGHT}"),
    ({"forced_charge_period_1_end": "05:00:30"}, "has seconds"),
    ({"forced_charge_period_1_end": "noon"}, "is not a time of day"),
    ({"forced_charge_period_1_in_use": "MAYBE"}, "ON or OFF"),
    ({"forced_charge_periods": FORCED[:1], "forced_charge_period_2_end": "15:00"},
     "send either forced_charge_periods or its single settings"),
    ({"forced_charge_period_5_start": "01:00"}, "unknown setting(s) forced_charge_period_5"),
    # discharging below 10 % risks a deep discharge, as the SOC lower limits
    ({"forced_discharge_soc_limit": 5}, "forced_discharge_soc_limit: 5 is out of range"),
])
async def test_a_bad_period_is_refused_and_nothing_is_sent(
        rig: Rig, request_: dict[str, Any], error: str) -> None:
    before = rig.forced()
    result = await rig.write(request_)
    assert not result.ok and not result.sent
    assert result.error is not None and error in result.error, result.error
    assert rig.written == [] and rig.forced() == before


async def test_periods_not_in_use_are_set_then_put_in_use_in_order(rig: Rig) -> None:
    # slot 3 holds 00:00-00:00: it cannot be put in use as it is, nor skip ahead
    result = await rig.write({"forced_charge_period_3_in_use": "ON"})
    assert result.error == (f"Forced charge period 3 (00:00-00:00): its end must be after "
                            f"its start; {OVERNIGHT}")
    result = await rig.write({"forced_charge_period_4_in_use": "ON"})
    assert result.error == ("forced_charge_period_4_in_use: periods are used in order; turn "
                            "Forced charge period 3 on first")
    # a period not in use takes its times (0x71 keeps every slot), then goes in use
    result = await rig.write({"forced_charge_period_3_start": "18:00",
                              "forced_charge_period_3_end": "19:00"})
    assert result.ok and rig.written == [0x71], result.error
    assert rig.forced()["forced_charge_period_count"] == 2, "set, not yet in use"
    assert rig.periods()[2] == ("18:00", "19:00")
    result = await rig.write({"forced_charge_period_3_in_use": "ON"})
    assert result.changed == {"forced_charge_period_3_in_use": True}, result.error
    assert rig.forced()["forced_charge_period_count"] == 3
    # off in order too: the last one first
    result = await rig.write({"forced_charge_period_2_in_use": "OFF"})
    assert result.error == ("forced_charge_period_2_in_use: periods are used in order; turn "
                            "Forced charge period 3 off first")
    result = await rig.write({"forced_charge_period_3_in_use": "OFF",
                              "forced_charge_period_2_in_use": "OFF"})
    assert result.ok, result.error
    assert rig.forced()["forced_charge_period_count"] == 1
    assert rig.periods()[:3] == [("01:00", "05:00"), ("13:00", "14:00"), ("18:00", "19:00")]


async def test_a_period_the_installer_set_is_not_judged_when_another_changes(rig: Rig) -> None:
    rig.sim.model.settings["forced_charge_periods"] = copy.deepcopy(
        [*FORCED, {"start": "00:00", "end": "00:00"}])
    rig.sim.model.settings["forced_charge_period_count"] = 3
    result = await rig.write({"forced_charge_period_2_end": "15:00",
                              "forced_charge_monday": "ON", "forced_charge_mode": "ON"})
    assert result.ok, result.error
    assert rig.periods()[:3] == [("01:00", "05:00"), ("13:00", "15:00"), ("22:00", "06:00")]
    forced = rig.forced()
    assert (forced["forced_charge_monday"], forced["forced_charge_mode"]) == (True, True)


async def test_weekday_and_enabled_switches_take_on_off_and_not_set(rig: Rig) -> None:
    result = await rig.write({"forced_discharge_friday": "ON", "forced_discharge_mode": "ON"})
    assert result.ok, result.error
    assert (rig.forced()["forced_discharge_friday"], rig.forced()["forced_discharge_mode"]) == (
        True, True)
    result = await rig.write({"forced_discharge_friday": "OFF"})
    assert result.ok and rig.forced()["forced_discharge_friday"] is False
    result = await rig.write({"forced_discharge_friday": "not set"})  # as `get` prints it
    assert result.ok and rig.forced()["forced_discharge_friday"] is None
    result = await rig.write({"forced_discharge_mode": "not set"})  # 0 is "off" there
    assert result.error is not None and "forced_discharge_mode: 'not set'" in result.error
    assert rig.written == []


async def test_a_time_of_use_tariff_and_its_times(rig: Rig) -> None:
    result = await rig.write({"tou_period_2_tariff": "Peak"})
    assert result.changed == {"tou_period_2_tariff": "Peak"}, result.error
    assert rig.written == [0x66]
    assert rig.tou() == [("00:00", "07:00", "Valley"), ("07:00", "17:00", "Peak")]
    result = await rig.write({"tou_period_1_end": "06:00:00"})
    assert result.ok, result.error
    assert rig.tou()[0] == ("00:00", "06:00", "Valley")
    # 0x66 carries only the periods in use: one that is not cannot be set
    result = await rig.write({"tou_period_3_start": "17:00"})
    assert result.error == ("tou_period_3_start: Time-of-use period 3 is not in use (periods "
                            "in use: 2); raise Time-of-use periods in use (tou_count) first")
    assert rig.written == []


async def test_raising_the_time_of_use_count_adds_the_rest_of_the_day(rig: Rig) -> None:
    result = await rig.write({"tou_count": 3})
    assert result.ok, result.error
    assert "Time-of-use period 3 added as 17:00-24:00, tariff Unused" in str(
        result.as_json()["note"])
    assert rig.tou()[2] == ("17:00", "24:00", "Unused")
    result = await rig.write({"tou_count": 4})
    assert result.error == ("Time-of-use period 4: no time of the day is left after the "
                            "periods in use; shorten one first")
    result = await rig.write({"tou_count": 1})
    assert result.ok and rig.tou() == [("00:00", "07:00", "Valley")]


async def test_a_raised_count_takes_the_periods_the_inverter_still_holds(rig: Rig) -> None:
    rig.sim.model.settings["tou_schedule"] = copy.deepcopy(
        [*TOU, {"start": "17:00", "end": "21:00", "period": "Peak"}])
    result = await rig.write({"tou_count": 3})
    assert result.ok and "note" not in result.as_json(), result.as_json()
    assert rig.tou()[2] == ("17:00", "21:00", "Peak")


async def test_start_and_end_are_rate_limited_apart() -> None:
    async with Simulator(pcu=609, settings={"forced_charge_periods": FORCED[:1]}) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=60, confirm_timeout=1)
            assert (await writer.apply({"forced_charge_period_1_end": "06:00"})).ok
            assert (await writer.apply({"forced_charge_period_1_start": "02:00"})).ok
            result = await writer.apply({"forced_charge_period_1_start": "03:00"})
            assert result.error is not None and "wait 60 s more" in result.error
