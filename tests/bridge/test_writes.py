"""Writes of a record group (the time-of-use schedule), Writer against the simulator."""

from __future__ import annotations

import copy

from sermatec_bridge.bridge.writes import Writer
from sermatec_bridge.inverter.client import InverterClient
from sermatec_bridge.simulator import Simulator

SCHEDULE = [{"start": "00:00", "end": "07:00", "period": "Valley"},
            {"start": "07:00", "end": "17:00", "period": "Flat"},
            {"start": "17:00", "end": "21:00", "period": "Peak"},
            {"start": "21:00", "end": "24:00", "period": "Valley"}]
NEW = [{"start": "00:00", "end": "06:00", "period": "Valley"},
       {"start": "06:00", "end": "24:00", "period": "Peak"}]


def tou(records: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(r["start"], r["end"], r["period"]) for r in records]


async def test_a_new_schedule_is_written_counted_and_confirmed() -> None:
    async with Simulator(pcu=609) as sim:
        sim.model.settings.update(tou_schedule=copy.deepcopy(SCHEDULE), tou_count=4)
        before = copy.deepcopy(sim.model.settings)
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=1)
            result = await writer.apply({"tou_schedule": NEW})  # no tou_count: it is 2
            assert result.ok, result.error
            assert sim.model.settings["tou_count"] == 2
            assert tou(sim.model.settings["tou_schedule"]) == tou(NEW)
            assert tou(result.changed["tou_schedule"]) == tou(NEW)
            assert sim.model.settings["grid_soc_min"] == before["grid_soc_min"]

            result = await writer.apply({"tou_schedule": SCHEDULE, "tou_count": 4})
            assert result.ok, result.error
            assert tou(sim.model.settings["tou_schedule"]) == tou(SCHEDULE)

            result = await writer.apply({"tou_schedule": SCHEDULE})
            assert result.ok and result.unchanged == ["tou_schedule"]


async def test_a_request_that_fails_half_way_reports_what_it_changed() -> None:
    async with Simulator(pcu=609) as sim:
        apply = sim.model.apply

        def ignore_0x6a(command: object, payload: bytes) -> bool:  # an inverter that drops it
            return False if getattr(command, "code", None) == 0x6A else apply(command, payload)

        sim.model.apply = ignore_0x6a  # type: ignore[method-assign]
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=0.5)
            result = await writer.apply({"grid_soc_min": 40, "off_grid_soc_min": 25})
        assert not result.ok
        assert result.error is not None and "not confirmed" in result.error
        assert result.changed == {"grid_soc_min": 40}  # 0x66 went through before 0x6a failed
        assert result.sent
        assert sim.model.settings["grid_soc_min"] == 40
        assert result.as_json()["changed"] == {"grid_soc_min": 40}


async def test_incomplete_records_are_refused_and_nothing_is_sent() -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0)
            sim.received.clear()
            result = await writer.apply({"tou_schedule": [{"start": "01:00", "end": "02:00"}]})
        assert not result.ok
        assert result.error == ("tou_schedule[0]: {'start': '01:00', 'end': '02:00'} lacks "
                                "period; allowed: records with start, end, period")
        assert 0x66 not in sim.received
