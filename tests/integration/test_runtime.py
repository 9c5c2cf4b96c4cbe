"""The runtime under stress and faults: availability, fairness, shutdown, outages.

Real Mosquitto, the simulator over TCP (with its fault injection), the bridge in process;
every assertion is about what Home Assistant receives.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from faultproxy import FaultProxy
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.testing import capture_logs

from sermatec_bridge.bridge.groups import GROUPS as RUNTIME_GROUPS
from sermatec_bridge.bridge.service import Bridge
from sermatec_bridge.simulator import Fault, Simulator
from sermatec_bridge.simulator.model import Outcome

from .conftest import (
    HOST,
    LIVE,
    PREFIX,
    SERIAL,
    TIMEOUT,
    BridgeFactory,
    HomeAssistant,
    Mosquitto,
    RunningBridge,
    eventually,
    free_port,
    make_settings,
    retained,
    sim_port,
    topic,
    wait_ready,
)

GROUPS = ("live", "energy", "settings", "system", "alarms")
WRITES = {"writes": {"enabled": True, "min_interval": 0}}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# --------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------


async def test_an_inverter_that_answers_nine_in_ten_stays_online(
        ha: HomeAssistant, broker: Mosquitto, tmp_path: Path) -> None:
    async with Simulator(pcu=609, seed=5, silence_rate=0.1) as flaky:
        running = RunningBridge(make_settings(broker.port, sim_port(flaky), tmp_path, {
            "inverter": {"retries": 2}})).start()
        try:
            await ha.wait_text(topic("availability"), "online", within=15)
            mark = ha.mark()
            await asyncio.sleep(10)
        finally:
            await running.stop()
    availability = [m.text for m in ha.on(topic("availability"), after=mark)]
    assert "offline" not in availability[:-1], "online all along (until the goodbye)"
    assert len(ha.on(topic("live"), after=mark)) >= 4, "and the states kept coming"


async def test_offline_after_two_polls_without_answer_and_no_state_while_offline(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    start_bridge({"inverter": {"retries": 1}})  # 2 tries a request
    await wait_ready(ha)
    mark = ha.mark()
    handle, unanswered = sim.model.handle, [2]

    def two_0c_unanswered(code: int, payload: bytes) -> Outcome:
        outcome = handle(code, payload)
        if code == 0x0C and unanswered[0] > 0:  # one query of a live poll: no answer
            unanswered[0] -= 1
            outcome.replies[:] = []
        return outcome

    sim.model.handle = two_0c_unanswered  # type: ignore[method-assign]
    await eventually(lambda: unanswered[0] == 0, within=10, what="0x0c unanswered twice")
    lost = await ha.wait_json(topic("live"), lambda live: live["inverter_on"] is None,
                              after=mark, within=2 * TIMEOUT + 2 * LIVE)
    assert lost["battery_soc"] is not None, "the query's values unknown, the rest shown"
    await ha.wait_json(topic("live"), lambda live: live["inverter_on"] is True,
                       after=ha.mark(), within=2 * LIVE + 2)
    assert [m.text for m in ha.on(topic("availability"), after=mark)] == []

    sim.inject(Fault.SILENCE, 1000)  # now it is gone
    await ha.wait_text(topic("availability"), "offline", after=mark, within=30)
    sim.inject(Fault.SILENCE, -sim_faults(sim))
    back = await ha.wait_text(topic("availability"), "online", after=mark, within=15)
    after = ha.messages[mark:]
    offline = next(m for m in after if m.topic == topic("availability"))
    between = [m for m in after if offline.at <= m.at < back.at
               and m.topic.rsplit("/", 1)[-1] in GROUPS]
    assert between == [], "no state is published while the inverter is offline"


def sim_faults(sim: Simulator) -> int:
    """Injected silences still pending (to call them off)."""
    return int(sim._injected[Fault.SILENCE])


def availability_said(ha: HomeAssistant, serial: str = SERIAL) -> list[str]:
    """What the inverter's availability said, in order, the bridge's goodbye left out."""
    said = [m.text for m in ha.on(topic("availability", serial))]
    return said[:-1] if said[-1:] == ["offline"] else said


@pytest.mark.parametrize("retries", [0, 1, 2, 3])
async def test_a_query_never_answered_costs_its_group_one_try_per_poll(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path,
        retries: int) -> None:
    """0xa1 (system group) is never answered: the inverter stays online, the system group
    is published without its values, the alarms group after it is read, and 0xa1 is
    tried 1 + retries times at the first poll, then once per poll."""
    async with FaultProxy(sim_port(sim), never_answer={0xA1}) as inverter:
        running = RunningBridge(make_settings(broker.port, inverter.port, tmp_path, {
            "inverter": {"retries": retries, "timeout": 0.5}, "poll": {"slow": 1.5}})).start()
        try:
            system = await ha.wait_json(topic("system"), within=20)
            assert inverter.swallowed == 1 + retries
            mark, tried = ha.mark(), inverter.swallowed
            polls = 3
            for _ in range(polls):
                await ha.wait_json(topic("system"), after=ha.mark(), within=10)
            # once per poll after the first (the next poll may be under way already: +1);
            # with its retries at every poll it would be at least 2 per poll
            assert inverter.swallowed - tried <= polls + 1, "once per poll after the first"
            assert len(ha.on(topic("alarms"), after=mark)) >= 2
            assert len(ha.on(topic("live"), after=mark)) >= 2
        finally:
            await running.stop()
    assert system["serial_number"] == SERIAL and system["pcu_version"] == 609
    assert system["drm0"] is None, "0xa1's values: unknown"
    assert "offline" not in availability_said(ha)


async def test_a_query_answered_in_two_frames_is_unknown_in_both_when_unanswered(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """0x95 is answered by 0x95 and 0x9d: when it goes unanswered, the settings of both
    frames show as unknown, none of them vanishes from the state."""
    async with FaultProxy(sim_port(sim), never_answer={0x95}) as inverter:
        running = RunningBridge(make_settings(broker.port, inverter.port, tmp_path, {
            "inverter": {"timeout": 0.5}})).start()
        try:
            settings = await ha.wait_json(topic("settings"), within=20)
        finally:
            await running.stop()
    assert settings["meter_monitor"] is None, "a setting of 0x9d"
    assert settings["anti_backflow"] is None, "a setting of 0x95"


async def test_a_lost_reply_costs_the_wait_the_inverter_has_shown_not_the_timeout(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """With the default 5 s timeout, a reply that never comes from an inverter that
    answers in milliseconds is given up after the learnt wait (1 s, the floor, unless the
    machine is very slow), and the log says so: one lost reply does not hold the
    inverter's one slot for 5 s."""
    async with FaultProxy(sim_port(sim), never_answer={0xA1}) as inverter:
        settings = make_settings(broker.port, inverter.port, tmp_path,
                                 {"inverter": {"timeout": 5.0}})
        with capture_logs() as logs:
            running = RunningBridge(settings).start()
            try:
                await ha.wait_json(topic("system"), within=30)
            finally:
                await running.stop()
    [line] = [line for line in logs if line["event"].startswith("query not answered")]
    waited = re.fullmatch(r"no reply 0xa1 from .* within ([0-9.]+) s", line["reason"])
    assert waited is not None and float(waited[1]) < 3.0, line["reason"]


async def test_hang_ups_with_an_identity_answer_between_do_not_take_it_offline(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    """No retries: the inverter hangs up on two live polls in a row, but it answers the
    reconnection between them (its identity), so that is no row of two failures."""
    start_bridge({"inverter": {"retries": 0}})
    await wait_ready(ha)
    handle, hang_ups = sim.model.handle, [2]

    def hang_up_on_0x0a(code: int, payload: bytes) -> Outcome:
        if code == 0x0A and hang_ups[0] > 0:
            hang_ups[0] -= 1
            sim.inject(Fault.DROP)  # this answer: the connection closed instead
        return handle(code, payload)

    sim.model.handle = hang_up_on_0x0a  # type: ignore[method-assign]
    await eventually(lambda: hang_ups[0] == 0, within=15, what="two hang-ups")
    await ha.wait_json(topic("live"), after=ha.mark(), within=10)
    assert "offline" not in availability_said(ha)


async def test_an_inverter_that_says_who_it_is_and_nothing_else_goes_offline(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """Every query but the identity goes unanswered. Neither the queries already known to
    go unanswered (the second live poll's) nor the identity it gives each new connection
    keep it online: Home
    Assistant shows it unavailable, with no state."""
    async with FaultProxy(sim_port(sim)) as inverter:
        running = RunningBridge(make_settings(broker.port, inverter.port, tmp_path, {
            "inverter": {"retries": 0, "timeout": 0.5},
            "poll": {"energy": 60, "slow": 60}})).start()  # live polls, one after another
        try:
            await wait_ready(ha)
            mark = ha.mark()
            inverter.never_answer = {c for g in RUNTIME_GROUPS for c in g.queries} - {0x98}
            offline = await ha.wait_text(topic("availability"), "offline", after=mark,
                                         within=30)
            asked = inverter.swallowed
            await eventually(lambda: inverter.swallowed >= asked + 3, within=30,
                             what="the inverter asked again")
        finally:
            await running.stop()
    after = [m for m in ha.messages[mark:] if m.at > offline.at]
    assert [m.topic for m in after if m.topic.rsplit("/", 1)[-1] in GROUPS] == []
    assert [m.text for m in after if m.topic == topic("availability")] in ([], ["offline"])


async def test_when_the_inverter_is_back_the_other_groups_are_read_at_once(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """The alarms group gets no answer at all; the inverter goes away and comes back: the
    other groups are read again at once, the alarms group only at its own interval."""
    slow = {"poll": {"energy": 60, "slow": 60}, "inverter": {"retries": 0}}
    async with FaultProxy(sim_port(sim), never_answer={0x1E, 0x1F}) as inverter:
        running = RunningBridge(make_settings(broker.port, inverter.port, tmp_path,
                                              slow)).start()
        try:
            await eventually(lambda: inverter.swallowed >= 2, within=15,
                             what="0x1e and 0x1f sent")
            await ha.wait_json(topic("live"), after=ha.mark(), within=10)  # polled after
            assert "offline" not in availability_said(ha), "one group without answer: online"
            inverter.stall()  # no answer any more, on this connection or a new one
            connections = inverter.connections
            await ha.wait_text(topic("availability"), "offline", within=30)
            # A poll stops at the first sign that the inverter is gone (its identity query
            # unanswered on a new connection); the next try waits for the backoff.
            assert inverter.connections - connections <= 3
            tried, mark = inverter.swallowed, ha.mark()
            inverter.resume()
            await ha.wait_text(topic("availability"), "online", after=mark, within=20)
            for group in ("energy", "settings", "system"):
                await ha.wait_json(topic(group), after=mark, within=10)
        finally:
            await running.stop()
    assert inverter.swallowed == tried, "the alarms group keeps its own interval"
    assert not ha.on(topic("alarms"))


async def test_an_inverter_that_stays_away_is_tried_less_and_less_often(
        broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """Backoff 1, 2, 4, 8 ... s (each in its upper half, at random), reset once it answers."""
    async with FaultProxy(free_port()) as inverter:  # accepts, then hangs up: nobody there
        running = RunningBridge(make_settings(broker.port, inverter.port, tmp_path, {
            "inverter": {"retries": 0}})).start()
        try:
            tries: list[float] = []

            def count() -> bool:
                if inverter.connections > len(tries):
                    tries.append(time.monotonic())
                return len(tries) >= 3

            await eventually(count, within=30, what="three tries")
            inverter.target = (HOST, sim_port(sim))  # the fourth finds it
            await eventually(lambda: running.bridge.workers[0].online, within=30,
                             what="online again")
            tries.append(time.monotonic())
            first, _, third = gaps(tries)
            assert third >= 1.5 and third > first, f"waits between tries: {gaps(tries)}"
            inverter.target = (HOST, free_port())  # and goes away again
            before = inverter.connections
            inverter.cut()
            await eventually(lambda: inverter.connections - before >= 2, within=4,
                             what="the backoff starting afresh")
        finally:
            await running.stop()


async def test_another_serial_at_the_address_takes_the_old_one_offline(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    start_bridge()
    await wait_ready(ha)
    sim.model.serial = "ST5K0REPLACEMENT02"
    sim.inject(Fault.DROP)  # the next answer hangs up: the bridge connects again
    await ha.wait_text(topic("availability", "ST5K0REPLACEMENT02"), "online", within=15)
    await ha.wait_json(topic("live", "ST5K0REPLACEMENT02"), within=10)
    on_broker = await retained(ha.port)
    assert on_broker[topic("availability")] == "offline", "the old serial: not alive"
    assert on_broker[topic("availability", "ST5K0REPLACEMENT02")] == "online"


async def test_discovery_does_not_wait_for_the_energy_counters(
        ha: HomeAssistant, broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    """The device is announced with the first live values, whatever the other groups do."""
    async with FaultProxy(sim_port(sim), never_answer={0x99, 0x9A, 0x9B, 0x9C}) as inverter:
        running = RunningBridge(make_settings(broker.port, inverter.port, tmp_path)).start()
        try:
            await ha.wait_json(f"{PREFIX}/device/{SERIAL}/config", within=15)
            await ha.wait_json(topic("live"), within=5)
        finally:
            await running.stop()
    assert not ha.on(topic("energy")), "an energy group with no answer is not published"


# --------------------------------------------------------------------------------------
# Writes: fairness, deadlines, shutdown, outages
# --------------------------------------------------------------------------------------


async def test_a_storm_of_writes_keeps_the_live_cadence_and_answers_each(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    start_bridge(WRITES)
    await wait_ready(ha)
    sim.latency = 0.02
    mark = ha.mark()
    started = time.monotonic()
    for i in range(200):
        await ha.publish(topic("set/grid_soc_min"), str(20 + i % 40))
        await asyncio.sleep(max(0.0, started + (i + 1) * 0.01 - time.monotonic()))
    await eventually(lambda: len(ha.on(topic("set/result"), after=mark)) >= 200, within=30,
                     what="200 results")
    storm_end = time.monotonic()
    await asyncio.sleep(1.0)
    results = [m.json() for m in ha.on(topic("set/result"), after=mark)]
    assert len(results) == 200, "exactly one result per write"
    assert any(r["ok"] for r in results)
    assert all(r["ok"] or "superseded" in r["error"] for r in results), results
    live = [m.at for m in ha.on(topic("live"), after=mark) if m.at <= storm_end]
    assert len(live) >= 2
    assert max(gaps(live)) <= 2 * LIVE + 0.5, f"live states stalled: {gaps(live)}"


async def test_a_write_before_the_inverter_answers_gets_a_result(
        ha: HomeAssistant, broker: Mosquitto, tmp_path: Path) -> None:
    running = RunningBridge(make_settings(broker.port, free_port(), tmp_path, WRITES))
    running.bridge = Bridge(running.settings, command_deadline=1.0)
    running.start()
    try:
        await ha.wait_text(f"{topic('availability').rsplit('/', 2)[0]}/bridge/state",
                           "online", within=10)
        result = await ha.write("set/grid_soc_min", "30", within=5)
    finally:
        await running.stop()
    assert result["ok"] is False and result["error"].startswith("expired")


async def test_a_write_is_never_applied_after_its_message_expiry(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    """MQTT 5: what is left of a command's message expiry when it reaches the bridge (the
    broker counts it down while it holds it) bounds its wait, as the bridge's 30 s do."""
    start_bridge(WRITES)
    await wait_ready(ha)
    mark = ha.mark()
    await sim.stop()  # the write waits for an inverter that does not come back in time
    await ha.wait_text(topic("availability"), "offline", after=mark, within=15)
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = 2
    mark = ha.mark()
    await ha.publish(topic("set/grid_soc_min"), "31", properties=properties)
    result = await ha.wait_json(topic("set/result"), after=mark, within=10)
    assert result == {"ok": False, "written": False, "error": "expired: not applied within "
                      "2 s (the inverter is offline or busy)", "topic": "set/grid_soc_min"}


async def test_sigterm_answers_queued_writes_before_offline_within_5_s(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator) -> None:
    running = start_bridge(WRITES)
    await wait_ready(ha)
    sim.latency = 0.5  # a slow inverter: each write takes a few seconds
    requests = [("set/grid_soc_min", "21"), ("set/off_grid_soc_min", "22"),
                ("set/grid_export_limit", "2000"), ("set/charge_power_limit", "2100"),
                ("set/discharge_power_limit", "2200"),
                ("set", json.dumps({"grid_soc_min": 23, "off_grid_soc_min": 24})),
                ("set", json.dumps({"grid_soc_min": 25, "grid_export_limit": 2300})),
                ("set", json.dumps({"off_grid_soc_min": 26, "grid_export_limit": 2400}))]
    mark = ha.mark()
    for leaf, payload in requests:
        await ha.publish(topic(leaf), payload)
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await running.stop(within=5)
    assert time.monotonic() - started < 5
    await ha.wait_text(topic("availability"), "offline", after=mark, within=3)
    after = ha.messages[mark:]
    offline = next(i for i, m in enumerate(after)
                   if m.topic == topic("availability") and m.text == "offline")
    results = [m for m in after if m.topic == topic("set/result")]
    assert len(results) == len(requests), "one result per write"
    assert all(after.index(m) < offline for m in results), "every result before offline"


async def test_a_write_sent_while_the_bridge_is_cut_off_is_applied_on_return(
        ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator,
        broker: Mosquitto) -> None:
    running = start_bridge(WRITES)
    await wait_ready(ha)
    # Someone takes the bridge's session over for a moment: the broker drops the bridge
    # and keeps the session (and what arrives for it) until the bridge is back.
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 300
    async with aiomqtt.Client(HOST, broker.port, identifier=running.settings.mqtt.client_id,
                              protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                              properties=properties):
        pass
    result = await ha.write("set/grid_soc_min", "37", within=15)
    assert result["ok"] is True, result
    assert sim.model.settings["grid_soc_min"] == 37
    assert running.bridge.broker.connections >= 2


async def test_an_unknown_inverter_gets_a_refusal(
        ha: HomeAssistant, start_bridge: BridgeFactory) -> None:
    start_bridge(WRITES)
    await wait_ready(ha)
    result: dict[str, Any] = await ha.write("set/grid_soc_min", "30", serial="NOSUCH")
    assert result["ok"] is False and SERIAL in result["error"]
