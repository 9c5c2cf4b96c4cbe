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


class Exchange(Command):
    lane = "exchanges"


def test_each_lane_has_its_own_room() -> None:
    intake = Intake(limit=2, clock=Clock())
    assert [intake.submit(Exchange(deadline=30.0)) for _ in range(2)] == [[], []]
    late = Exchange(deadline=30.0)
    assert intake.submit(late) == [(late, FULL.format(n=2))]
    assert intake.submit(command("a")) == intake.submit(command("b")) == []  # room for writes
    assert len(intake) == 4


async def test_a_crowd_of_app_requests_never_turns_away_a_write_from_home_assistant() -> None:
    from sermatec_bridge.bridge.publisher import Broker
    from sermatec_bridge.bridge.runtime import ExchangeCommand, InverterRuntime, WriteCommand
    from sermatec_bridge.config import load_settings

    settings = load_settings(None, {"inverter": {"host": "127.0.0.1"}}, env={})
    runtime = InverterRuntime(settings.all_inverters()[0], settings, Broker(settings))

    async def job(session: object) -> None:
        return None

    crowd = [ExchangeCommand(deadline=30.0, job=job) for _ in range(40)]
    refused = [r for c in crowd for r in runtime.intake.submit(c)]
    assert len(refused) == 40 - 16
    write = WriteCommand(deadline=30.0, request={"grid_soc_min": 20})
    assert runtime.intake.submit(write) == []
