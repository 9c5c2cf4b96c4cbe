"""The poll schedule: every group on its own clock."""

from __future__ import annotations

from sermatec_bridge.bridge.schedule import Scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_everything_is_due_at_start_in_declaration_order() -> None:
    clock = Clock()
    scheduler = Scheduler({"live": 10, "energy": 60, "alarms": 300}, clock)
    seen = []
    while (group := scheduler.due()) is not None:
        seen.append(group)
        scheduler.done(group)
    assert seen == ["live", "energy", "alarms"]
    assert scheduler.next_due() == clock.now + 10


def test_a_failing_group_moves_only_itself_on() -> None:
    clock = Clock()
    scheduler = Scheduler({"live": 10, "system": 300, "alarms": 300}, clock)
    for group in ("live", "system"):  # system fails: done all the same
        assert scheduler.due() == group
        scheduler.done(group)
    assert scheduler.due() == "alarms", "the group after a failing one is still read"
    scheduler.done("alarms")
    clock.now += 300
    assert scheduler.due() == "live"
    scheduler.done("live")
    assert scheduler.due() == "system", "the failing group is tried again at its interval"


def test_refresh_makes_groups_due_and_never_forgets_one() -> None:
    clock = Clock()
    scheduler = Scheduler({"live": 10, "settings": 300}, clock)
    for _ in range(2):
        scheduler.done(str(scheduler.due()))
    assert scheduler.due() is None
    scheduler.refresh(["settings", "no such group"])
    assert scheduler.due() == "settings"
    scheduler.done("settings")
    scheduler.refresh(["settings"])
    scheduler.refresh(["settings"])  # twice in a row: still one entry, due now
    assert scheduler.due() == "settings"
    scheduler.done("settings")
    clock.now += 10
    assert scheduler.due() == "live"
    scheduler.done("live")
    clock.now += 289
    assert scheduler.due() == "live"
    scheduler.done("live")
    assert scheduler.due() is None
    clock.now += 1
    assert scheduler.due() == "settings", "refreshed groups keep their own interval"
    scheduler.refresh()
    assert scheduler.due() == "live"


def test_hold_delays_every_group_but_keeps_later_ones_later() -> None:
    clock = Clock()
    scheduler = Scheduler({"live": 10, "slow": 300}, clock)
    scheduler.done("slow")
    scheduler.hold(10)
    assert scheduler.due() is None
    clock.now += 10
    assert scheduler.due() == "live"
    scheduler.done("live")
    assert scheduler.due() is None
    assert scheduler.next_due() == clock.now + 10


def test_a_slow_poll_keeps_the_cadence_and_a_late_one_starts_afresh() -> None:
    clock = Clock()
    scheduler = Scheduler({"live": 10}, clock)
    clock.now += 6  # the poll took 6 s (a retry)
    scheduler.done("live")
    assert scheduler.next_due() == 1010, "due 10 s after it was due, not after it ended"
    clock.now = 1035  # a whole interval late
    scheduler.done("live")
    assert scheduler.next_due() == 1045, "no burst of polls to catch up"


def test_the_first_round_can_start_later() -> None:
    clock = Clock()
    scheduler = Scheduler({"live": 10, "energy": 60}, clock, start=2.5)
    assert scheduler.due() is None
    clock.now += 2.5
    assert scheduler.due() == "live"
