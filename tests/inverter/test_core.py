"""The clients' plans, carried out by a script instead of a network: what steps they ask
for, and what they make of each outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sermatec_bridge.inverter.core import (
    Ask,
    ClientCore,
    ConnectionCore,
    InverterBusy,
    InverterError,
    InverterTimeout,
    Open,
    Plan,
    Run,
    Step,
)
from sermatec_bridge.protocol import frame, tables
from sermatec_bridge.simulator.model import InverterModel


class Closable(ConnectionCore):
    def _shut(self, error: InverterError) -> None:
        pass


def carry_out(client: ClientCore[Closable], plan: Plan[Any],
              answer: Callable[[Ask], list[frame.Frame]]) -> tuple[list[Step], Any]:
    """The steps ``plan`` asked for, and what it gave or raised: a connection for each
    Open, ``answer`` (or its error) for each Ask, nothing for each Pause."""
    steps: list[Step] = []
    run = Run(plan)
    try:
        while (step := run.next()) is not None:
            steps.append(step)
            try:
                if isinstance(step, Open):
                    run.outcome = Closable(peer=client.where, logger=client.log)
                elif isinstance(step, Ask):
                    run.outcome = answer(step)
            except InverterError as exc:
                run.error = exc
    except InverterError as exc:
        return steps, exc
    return steps, run.result


def kinds(steps: list[Step]) -> list[str]:
    return [type(step).__name__
            + (f" 0x{step.request.command:02x}" if isinstance(step, Ask) else "")
            for step in steps]


def test_an_identity_query_never_answered_is_asked_on_fresh_connections_then_busy() -> None:
    client = ClientCore[Closable]("192.0.2.1", timeout=0.5, retries=2)

    def never(step: Ask) -> list[frame.Frame]:
        raise InverterTimeout(f"no reply 0x{step.replies[0]:02x}")

    steps, outcome = carry_out(client, client._ready(), never)
    assert kinds(steps) == ["Open", "Ask 0x98", "Pause", "Open", "Ask 0x98", "Pause", "Open",
                            "Ask 0x98"]
    assert isinstance(outcome, InverterBusy)
    assert "0.5 s, 3 tries; it is probably busy with another client" in str(outcome)
    assert not client.connected and client.identity is None


def test_a_query_after_a_lost_reply_is_asked_again_after_a_new_identity() -> None:
    model = InverterModel(pcu=609)
    client = ClientCore[Closable]("192.0.2.1", retries=1)
    lost = iter([True])

    def answer(step: Ask) -> list[frame.Frame]:
        if step.request.command == 0x0C and next(lost, False):
            raise InverterTimeout("no reply 0x0c")
        return [frame.Frame(c, model.payload(c), frame.INVERTER, frame.APP)
                for c in step.replies]

    steps, readings = carry_out(client, client._exchange(tables.RUNNING_STATUS), answer)
    assert kinds(steps) == ["Open", "Ask 0x98", "Ask 0x0c", "Pause", "Open", "Ask 0x98",
                            "Ask 0x0c"]
    assert [r.command.code for r in readings] == [0x0C]
    assert client.reconnects == 2


def test_a_step_cut_short_drops_the_connection() -> None:
    client = ClientCore[Closable]("192.0.2.1")
    run = Run(client._ready())
    assert isinstance(run.next(), Open)
    run.outcome = Closable(peer=client.where, logger=client.log)
    assert isinstance(run.next(), Ask)
    run.error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        run.next()
    assert client._connection is None

