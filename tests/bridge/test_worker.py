"""One inverter's runtime against the simulator, without a broker (publishes are kept).

The broker is never connected here: what the runtime wants retained shows in
``broker.desired``, and write results are answered through the publisher.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from simfaults import answer_instead

from sermatec_bridge.bridge.publisher import Broker
from sermatec_bridge.bridge.runtime import Availability, InverterRuntime, WriteCommand
from sermatec_bridge.config import load_settings
from sermatec_bridge.inverter.client import InverterError, Session
from sermatec_bridge.simulator import Simulator


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)


class Running:
    def __init__(self, port: int | None, deadline: float = 30.0, **inverter: Any) -> None:
        settings = load_settings(None, {
            "inverter": {"host": "127.0.0.1", "port": port, "timeout": 1, "retries": 1,
                         **inverter},
            "poll": {"live": 0.2},
            "writes": {"enabled": True, "min_interval": 0},
        })
        self.broker = Broker(settings)
        self.runtime = InverterRuntime(settings.all_inverters()[0], settings, self.broker,
                                       command_deadline=deadline)
        self.results: list[dict[str, Any]] = []
        publish = self.runtime.publisher.result

        async def record(body: dict[str, Any], properties: Any) -> None:
            self.results.append(body)
            await publish(body, properties)

        self.runtime.publisher.result = record  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.runtime.run())

    def availability(self) -> str | None:
        return self.broker.desired.get(self.runtime.publisher.topic("availability"))

    def live(self) -> dict[str, Any]:
        """The live state the runtime wants on the broker (empty before the first)."""
        state = self.broker.desired.get(self.runtime.publisher.topic("live"))
        return json.loads(state) if state else {}

    async def close(self) -> None:
        await self.runtime.stop()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.runtime.client.close()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(pcu=609) as simulator:
        yield simulator


async def test_a_reply_too_short_for_the_tables_leaves_its_values_unknown(
        sim: Simulator) -> None:
    running = Running(sim.port)
    try:
        await until(lambda: running.runtime.online)
        handle = answer_instead(sim, 0x0A, [(0x0A, b"\x00\x01")])  # too short for its layout
        await until(lambda: running.live().get("battery_soc", 0) is None)
        live = running.live()
        assert live["battery_voltage"] is None, "the battery query's values are unknown"
        assert isinstance(live["grid_frequency"], float), "the other queries' are there"
        assert running.availability() == "online" and not running.task.done()
        sim.model.handle = handle  # type: ignore[method-assign]
        await until(lambda: isinstance(running.live().get("battery_soc"), float | int))
    finally:
        await running.close()


async def test_an_inverter_whose_replies_never_fit_is_asked_less_and_less_often(
        sim: Simulator) -> None:
    """Every reply but the identity too short for the tables: each costs a connection
    (it is dropped), so once offline the inverter is asked with backoff, not every live
    interval (0.2 s here: some 20 connections a second without backoff)."""
    running = Running(sim.port)
    try:
        await until(lambda: running.runtime.online)
        for code in (0x0A, 0x0B, 0x0C, 0x0D, 0x99, 0x9A, 0x9B, 0x9C, 0x95, 0xA2, 0xA1,
                     0x1E, 0x1F):
            answer_instead(sim, code, [(code, b"\x00")])
        await until(lambda: not running.runtime.online, within=10)
        assert running.availability() == "offline"
        connections = running.runtime.client.reconnects
        await asyncio.sleep(4.0)
        assert running.runtime.client.reconnects - connections <= 25
    finally:
        await running.close()


async def test_an_inverter_that_says_who_it_is_and_nothing_else_stays_offline(
        sim: Simulator) -> None:
    """The system group then brings the identity alone (0x98): no sign that the inverter
    works, so it neither brings it back online nor publishes its state."""
    running = Running(sim.port, timeout=0.3, retries=0)
    try:
        await until(lambda: running.runtime.online)
        topic = running.runtime.publisher.topic("system")
        await until(lambda: topic in running.broker.desired)
        system = running.broker.desired[topic]
        for code in (0x0A, 0x0B, 0x0C, 0x0D, 0x99, 0x9A, 0x9B, 0x9C, 0x95, 0xA2, 0xA1,
                     0x1E, 0x1F):
            answer_instead(sim, code, [])  # no answer
        await until(lambda: not running.runtime.online, within=15)
        asked = len(sim.received)
        running.runtime.refresh("system")
        await until(lambda: 0xA1 in list(sim.received)[asked:], within=10)
        after = list(sim.received)[asked:]
        await until(lambda: len(sim.received) > asked + after.index(0xA1) + 1, within=10)
        assert not running.runtime.online and running.availability() == "offline"
        assert running.broker.desired[topic] == system
    finally:
        await running.close()


def test_an_identity_answer_breaks_a_row_of_hang_ups_not_of_silent_polls() -> None:
    availability = Availability(2)
    availability.success()
    availability.failure()  # could not reach it
    availability.answered()  # a new connection: it says who it is
    assert availability.failure() is False, "the row started again"
    availability.success()
    availability.failure(silent=True)  # it was there, and answered nothing
    availability.answered()
    assert availability.failure() is True and not availability.online


@pytest.mark.parametrize(("query", "keys"), [
    (0xA2, ("forced_charge_periods", "forced_charge_period_1_start",
            "forced_charge_period_4_in_use", "forced_discharge_period_2_end")),
    (0x95, ("tou_schedule", "tou_period_1_start", "tou_period_16_tariff")),
])
async def test_a_schedule_not_answered_is_unknown_period_by_period(
        sim: Simulator, query: int, keys: tuple[str, ...]) -> None:
    """Home Assistant's period entities (start, end, in use) show unknown, not off or
    empty: every key of the schedule is in the state, null."""
    answer_instead(sim, query, [])  # never answered
    running = Running(sim.port, timeout=0.3, retries=0)
    try:
        await until(lambda: running.runtime.topic_id is not None)
        topic = running.runtime.publisher.topic("settings")
        await until(lambda: topic in running.broker.desired, within=10)
        settings = json.loads(running.broker.desired[topic])
    finally:
        await running.close()
    assert {key: settings.get(key, "absent") for key in keys} == dict.fromkeys(keys)


def test_availability_goes_offline_only_after_the_threshold_in_a_row() -> None:
    availability = Availability(3)
    assert availability.success() is True and availability.online
    for _ in range(10):  # one failure in two: never offline
        assert availability.failure() is False
        assert availability.success() is False
    assert availability.online
    assert [availability.failure() for _ in range(3)] == [False, False, True]
    assert not availability.online
    assert availability.success() is True


async def write(running: Running, key: str, value: Any) -> WriteCommand:
    command = WriteCommand(deadline=running.runtime.deadline(), request={key: value}, key=key,
                           coalesce=(key,))
    await running.runtime.submit(command)
    return command


async def test_queued_writes_of_one_setting_coalesce_and_each_gets_one_result(
        sim: Simulator) -> None:
    sim.latency = 0.05
    running = Running(sim.port)
    try:
        await until(lambda: running.runtime.online)
        for value in range(20, 60):
            await write(running, "grid_soc_min", value)
        await until(lambda: len(running.results) == 40)
        await asyncio.sleep(0.3)
        assert len(running.results) == 40, "exactly one result per write"
        superseded = [r for r in running.results if "superseded" in r.get("error", "")]
        applied = [r for r in running.results if r["ok"]]
        assert len(superseded) >= 35 and applied
        assert applied[-1]["changed"] == {"grid_soc_min": 59}, "the last one wins"
        assert sim.model.settings["grid_soc_min"] == 59
    finally:
        await running.close()


async def test_stop_answers_every_queued_write_without_applying_it(sim: Simulator) -> None:
    sim.latency = 0.3
    running = Running(sim.port)
    try:
        await until(lambda: running.runtime.online)
        before = sim.model.settings["grid_soc_min"]
        received = len(sim.received)
        keys = ["grid_soc_min", "off_grid_soc_min", "grid_export_limit"]
        for key in keys:
            await write(running, key, 40)
        await running.runtime.stop()
        assert len(running.results) >= 2
        assert all(r["ok"] is False and "stopping" in r["error"] for r in running.results)
        await asyncio.wait_for(running.task, 5)
        assert len(running.results) == 3, "a result for every write, the running one too"
        assert 0x66 not in list(sim.received)[received:] or running.results[-1]["ok"]
        assert sim.model.settings["grid_soc_min"] in (before, 40)
    finally:
        await running.close()


async def test_a_write_cut_short_by_the_shutdown_gets_its_answer(sim: Simulator) -> None:
    running = Running(sim.port)
    try:
        await until(lambda: running.runtime.online)
        sim.latency = 0.5  # the write's read takes a while
        received = len(sim.received)
        await write(running, "grid_soc_min", 41)
        await until(lambda: 0x95 in list(sim.received)[received:], within=10)
        await running.runtime.stop()
        running.task.cancel()  # the shutdown's grace is over: the write is cut short
        await asyncio.gather(running.task, return_exceptions=True)
        assert len(running.results) == 1, "the write got its one answer"
        assert running.results[0]["ok"] is False
        assert running.results[0]["error"].startswith("interrupted: the bridge stopped")
    finally:
        await running.close()


async def test_a_write_waits_for_the_inverter_until_its_deadline() -> None:
    async with Simulator(pcu=609) as sim:
        port = sim.port
    running = Running(port, deadline=0.5)  # nobody listens at that port now
    try:
        await write(running, "grid_soc_min", 40)
        await until(lambda: len(running.results) == 1, within=3)
        assert running.results[0]["ok"] is False
        assert running.results[0]["error"].startswith("expired")
    finally:
        await running.close()


async def test_exchange_takes_its_turn_and_reports_an_offline_inverter(
        sim: Simulator) -> None:
    running = Running(sim.port)
    try:
        job: Callable[[Session], Awaitable[int]]

        async def job(session: Session) -> int:
            return len(await session.query(0x98))

        with pytest.raises(InverterError, match="not identified"):
            await running.runtime.exchange(job, timeout=1)
        await until(lambda: running.runtime.online)
        assert await running.runtime.exchange(job, timeout=1) == 1
        await running.runtime.stop()
        with pytest.raises(InverterError, match="stopping"):
            await running.runtime.exchange(job, timeout=1)
    finally:
        await running.close()


async def test_exchange_gives_up_when_its_turn_does_not_come_in_time(
        sim: Simulator) -> None:
    running = Running(sim.port)
    try:
        await until(lambda: running.runtime.online)
        sim.latency = 0.3
        ran = []

        async def job(session: Session) -> None:
            ran.append(session)

        running.runtime.refresh("live")  # a poll of four slow queries goes first
        await asyncio.sleep(0.05)
        with pytest.raises(InverterError, match="no turn"):
            await running.runtime.exchange(job, timeout=0.2)
        await asyncio.sleep(1.5)
        assert ran == [], "a job whose caller gave up is never run"
    finally:
        await running.close()
