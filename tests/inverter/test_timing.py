"""How long a reply is waited for: learnt from the inverter's round trips."""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy

from sermatec_bridge.inverter.client import InverterClient, InverterTimeout
from sermatec_bridge.inverter.timing import MIN_TIMEOUT, ReplyTimer
from sermatec_bridge.simulator import Simulator


def test_the_configured_timeout_until_the_first_reply() -> None:
    assert ReplyTimer(5.0).timeout() == 5.0


def test_a_fast_inverter_is_waited_for_the_floor_not_the_configured_timeout() -> None:
    timer = ReplyTimer(5.0)
    for _ in range(10):
        timer.answered(0.03)  # tens of milliseconds, as the inverter answers
    assert timer.timeout() == MIN_TIMEOUT


def test_a_slow_inverter_is_given_what_its_round_trips_need() -> None:
    timer = ReplyTimer(5.0)
    for seconds in (1.5, 1.8, 1.6, 1.7, 1.9, 1.6):
        timer.answered(seconds)
    assert 1.9 < timer.timeout() < 5.0


def test_an_inverter_that_always_takes_the_same_time_is_given_twice_that() -> None:
    timer = ReplyTimer(5.0)
    for _ in range(50):
        timer.answered(1.5)
    assert timer.timeout() == 3.0


def test_each_missed_reply_doubles_the_next_wait_up_to_the_configured_timeout() -> None:
    timer = ReplyTimer(5.0)
    timer.answered(0.02)
    waits = []
    for _ in range(5):
        waits.append(timer.timeout())
        timer.unanswered()
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    timer.answered(0.02)
    assert timer.timeout() == MIN_TIMEOUT, "a reply ends the doubling"


def test_a_configured_timeout_below_the_floor_wins() -> None:
    timer = ReplyTimer(0.3)
    timer.answered(0.01)
    assert timer.timeout() == 0.3


def test_fixed_is_always_the_configured_timeout() -> None:
    timer = ReplyTimer.fixed(7.0)
    timer.answered(0.01)
    assert timer.timeout() == 7.0


async def test_a_lost_reply_costs_the_learnt_wait_not_the_configured_timeout() -> None:
    async with Simulator(pcu=609) as sim, FaultProxy(sim.port or 0,
                                                     never_answer={0x0A}) as link:
        client = InverterClient("127.0.0.1", link.port, timeout=5.0, retries=0,
                                adaptive=True)
        async with client:  # its identity reply is the first round trip learnt
            with pytest.raises(InverterTimeout, match=r"no reply 0x0a .* within 1 s"):
                await client.query(0x0A)
