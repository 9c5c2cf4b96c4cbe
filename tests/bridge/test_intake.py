"""The command intake: bounded, coalescing, with deadlines; everything answered once."""

from __future__ import annotations

from sermatec_bridge.bridge.intake import FULL, STOPPING, SUPERSEDED, Command, Intake


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def command(key: str | None = None, deadline: float = 30.0) -> Command:
    return Command(deadline=deadline, coalesce=key)


def test_commands_run_in_order_of_arrival() -> None:
    intake = Intake(clock=Clock())
    first, second = command("a"), command("b")
    assert intake.submit(first) == intake.submit(second) == []
    assert intake.take() is first
    assert intake.take() is second
    assert intake.take() is None


def test_a_newer_write_of_the_same_setting_supersedes_the_queued_one() -> None:
    intake = Intake(clock=Clock())
    old, other, new = command("grid_soc_min"), command("mode"), command("grid_soc_min")
    intake.submit(old)
    intake.submit(other)
    assert intake.submit(new) == [(old, SUPERSEDED)]
    assert [intake.take(), intake.take(), intake.take()] == [other, new, None]


def test_a_full_intake_turns_the_newcomer_away() -> None:
    intake = Intake(limit=2, clock=Clock())
    queued = [command(str(i)) for i in range(2)]
    for c in queued:
        intake.submit(c)
    late = command("late")
    assert intake.submit(late) == [(late, FULL.format(n=2))]
    assert len(intake) == 2
    # Coalescing makes room: a storm of one setting never fills the intake.
    again = command("1")
    assert intake.submit(again) == [(queued[1], SUPERSEDED)]
    assert len(intake) == 2


def test_a_command_past_its_deadline_expires() -> None:
    clock = Clock()
    intake = Intake(clock=clock)
    soon, later = command("a", deadline=5), command("b", deadline=50)
    intake.submit(soon)
    intake.submit(later)
    assert intake.next_deadline() == 5
    clock.now = 5
    assert intake.expire() == [(soon, soon.expired)]
    assert intake.take() is later


def test_close_turns_away_what_is_queued_and_what_comes() -> None:
    intake = Intake(clock=Clock())
    queued = [command("a"), command(None), command(None)]
    for c in queued:
        intake.submit(c)
    assert intake.close() == [(c, STOPPING) for c in queued]
    late = command("b")
    assert intake.submit(late) == [(late, STOPPING)]
    assert intake.take() is None


def test_take_where_hands_over_matching_commands() -> None:
    intake = Intake(clock=Clock())
    a, b, c = command("x"), command("y"), command("x2")
    for item in (a, b, c):
        intake.submit(item)
    assert intake.take_where(lambda cmd: str(cmd.coalesce).startswith("x")) == [a, c]
    assert intake.take() is b
