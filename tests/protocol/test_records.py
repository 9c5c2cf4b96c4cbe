"""Record groups: which field counts them, how many slots they carry, which are in use."""

from __future__ import annotations

from sermatec_bridge.protocol import codec, records, tables

QUERY = tables.WORKING_PARAMETERS.layouts[259]  # 16 tariff slots, tou_count elsewhere
WRITE = tables.OPERATING_MODE.layouts[252]  # as many periods as tou_count says
FORCED = tables.SET_FORCED_SCHEDULE.layouts[500]  # 4 slots per group, a count each


def test_the_count_of_each_group() -> None:
    assert records.count_key(QUERY, "tou_schedule") == "tou_count"
    assert records.count_key(WRITE, "tou_schedule") == "tou_count"
    assert records.count_key(FORCED, "forced_charge_periods") == "forced_charge_period_count"
    assert records.count_key(codec.layout_of(tables.REGISTER_QUERY, 609), "registers") == (
        "register_count")
    assert records.slots(QUERY, "tou_schedule") == 16
    assert records.slots(WRITE, "tou_schedule") is None
    assert records.groups(FORCED) == ["forced_charge_periods", "forced_discharge_periods"]


def test_only_the_records_in_use() -> None:
    slots = [{"start": f"0{i}:00", "end": f"0{i + 1}:00", "period": "Flat"} for i in range(5)]
    values = {"tou_count": 2, "tou_schedule": slots, "grid_soc_min": 20}
    assert records.in_use(QUERY, values) == {**values, "tou_schedule": slots[:2]}
    assert values["tou_schedule"] == slots, "the values given are not changed"
    assert records.in_use(QUERY, {"tou_schedule": slots})["tou_schedule"] == slots  # no count


def test_a_write_of_the_records_in_use_counts_them() -> None:
    periods = [{"start": "01:00", "end": "02:00", "period": "Flat"}]
    assert records.with_counts(WRITE, {"tou_schedule": periods})["tou_count"] == 1
    assert records.with_counts(WRITE, {"tou_schedule": periods, "tou_count": 3})[
        "tou_count"] == 3
    # fixed slots: the count is a setting of its own, never taken from the slots
    assert "forced_charge_period_count" not in records.with_counts(
        FORCED, {"forced_charge_periods": []})
