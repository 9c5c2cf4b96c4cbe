"""The commands waiting for one inverter: bounded, coalescing, with deadlines.

A command is anything that needs the inverter's queue slot besides the polls: a settings
write from MQTT, or an exchange of the app proxy. The intake decides which command runs
next and which are answered without running; it never runs or answers anything itself.
Every method hands back the commands it turned away, each with the reason, so that the
caller answers each exactly once:

- a new command with the same coalescing key as a queued one replaces it ("superseded");
- a command still queued at its deadline is turned away ("expired");
- a command that finds its lane full, or the intake closed, is turned away at once.

Each kind of command has its own lane, with room for ``limit`` commands, so that one
kind can never take the room of another: a crowd of app proxy clients never turns away a
write from Home Assistant. The lanes share one queue: commands run in arrival order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import ClassVar

SUPERSEDED = "superseded by a newer write of the same setting"
FULL = "refused: {n} commands are already waiting for the inverter; try again later"
STOPPING = "refused: the bridge is stopping"

Refusal = tuple["Command", str]


@dataclass(eq=False)
class Command:
    """Something to run in the inverter's queue slot before ``deadline`` (clock time)."""

    lane: ClassVar[str] = "commands"  # its kind, which has its own room in the intake
    deadline: float
    coalesce: Hashable | None = None  # queued commands with the same key: the last wins
    expired: str = "expired: it could not be applied in time"


class Intake:
    """A bounded FIFO of commands for one inverter: ``limit`` commands of each lane."""

    def __init__(self, limit: int = 16, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.closed = False
        self._queue: list[Command] = []

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, command: Command) -> list[Refusal]:
        """Queue ``command``; what is turned away (it, or the one it supersedes)."""
        if self.closed:
            return [(command, STOPPING)]
        refused: list[Refusal] = []
        if command.coalesce is not None:
            for old in [c for c in self._queue if c.coalesce == command.coalesce]:
                self._queue.remove(old)
                refused.append((old, SUPERSEDED))
        waiting = sum(c.lane == command.lane for c in self._queue)
        if waiting >= self.limit:
            return [*refused, (command, FULL.format(n=waiting))]
        self._queue.append(command)
        return refused

    def expire(self) -> list[Refusal]:
        """Take out every command whose deadline has passed."""
        now = self.clock()
        gone = [c for c in self._queue if c.deadline <= now]
        self._queue = [c for c in self._queue if c.deadline > now]
        return [(c, c.expired) for c in gone]

    def take(self) -> Command | None:
        """The oldest command still in time (call :meth:`expire` first), or None."""
        return self._queue.pop(0) if self._queue else None

    def take_where(self, wanted: Callable[[Command], bool]) -> list[Command]:
        """Take out every queued command that ``wanted`` accepts, in order."""
        out = [c for c in self._queue if wanted(c)]
        self._queue = [c for c in self._queue if not wanted(c)]
        return out

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self._queue), default=None)

    def close(self) -> list[Refusal]:
        """Accept nothing more; every queued command is turned away."""
        self.closed = True
        gone, self._queue = self._queue, []
        return [(c, STOPPING) for c in gone]
