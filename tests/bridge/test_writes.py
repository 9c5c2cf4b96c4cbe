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
