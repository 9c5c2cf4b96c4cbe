"""What goes wrong with one inverter stays with that inverter.

Two simulated inverters behind one bridge; one of them misbehaves (a reply too short for
its layout) or its runtime fails outright. The other one must keep publishing, the bridge
must keep running, and the misbehaving one must be retried.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from simfaults import answer_instead

from sermatec_bridge.simulator import Simulator

from .conftest import (
    HOST,
    SERIAL,
    TIMEOUT,
    BridgeFactory,
    HomeAssistant,
    eventually,
    topic,
    wait_ready,
)

OTHER = "ST5K0SIMULATOR0002"


@pytest.fixture
async def other() -> AsyncIterator[Simulator]:
    """A second inverter, with its own serial."""
    async with Simulator(pcu=609, seed=12, serial=OTHER) as simulator:
        yield simulator


def second_inverter(simulator: Simulator) -> dict[str, Any]:
    return {"inverters": [{"host": HOST, "port": simulator.port, "timeout": TIMEOUT,
                           "retries": 1, "name": "other"}]}


Log = Callable[[], list[dict[str, Any]]]


async def live_states(ha: HomeAssistant, serial: str, count: int, after: int) -> None:
    await ha.wait_for(lambda m: len(ha.on(topic("live", serial), after)) >= count,
                      after=after, within=30, what=f"{count} live states of {serial}")


async def test_an_identity_reply_of_two_bytes_stays_with_its_inverter(
        ha: HomeAssistant, start_bridge: BridgeFactory, other: Simulator,
        bridge_log: Log) -> None:
    answer_instead(other, 0x98, [(0x98, b"\x02\x5d")])  # two bytes: short of its layout
    bridge = start_bridge(second_inverter(other))
    await wait_ready(ha)
    mark = ha.mark()
    await eventually(lambda: other.received.count(0x98) >= 3, within=30,
                     what="the bad inverter asked again")
    await live_states(ha, SERIAL, 3, mark)
    assert bridge.task is not None and not bridge.task.done()
    assert not bridge.bridge.workers[1].online
    assert not ha.on(topic("availability", OTHER))  # never announced
    lines = bridge_log()
    reasons = [line.get("reason", "") for line in lines if line.get("inverter") == "other"]
    assert any("malformed reply 0x98" in r and "(2 bytes)" in r for r in reasons), reasons
    assert not [line for line in lines if line["level"] in ("error", "critical")]


async def test_a_runtime_that_fails_is_restarted_and_the_other_inverter_never_notices(
        ha: HomeAssistant, start_bridge: BridgeFactory, other: Simulator,
        bridge_log: Log) -> None:
    bridge = start_bridge(second_inverter(other))
    await wait_ready(ha)
    await wait_ready(ha, serial=OTHER)
    failing = bridge.bridge.workers[1]
    publish = failing.publisher.state
    failed = []

    async def fail_once(group: str, payload: Any) -> None:
        if not failed:
            failed.append(group)
            raise RuntimeError("a bug in the runtime")
        await publish(group, payload)

    failing.publisher.state = fail_once  # type: ignore[method-assign]
    mark = ha.mark()
    await ha.wait_text(topic("availability", OTHER), "offline", after=mark, within=10)
    await ha.wait_text(topic("availability", OTHER), "online", after=mark, within=10)
    await ha.wait_json(topic("live", OTHER), after=mark, within=10)
    assert "offline" not in [m.text for m in ha.on(topic("availability"), mark)]
    await live_states(ha, SERIAL, 2, mark)
    assert bridge.task is not None and not bridge.task.done()
    crash = [line for line in bridge_log()
             if line["event"] == "inverter runtime failed: restarting it"]
    assert len(crash) == 1 and crash[0]["inverter"] == "other"
    assert "RuntimeError: a bug in the runtime" in crash[0]["exception"]  # the traceback
