"""When each poll group of one inverter is due.

Every group has its own next-due time. A poll that succeeds or fails moves only its own
group on by its interval, so a query the inverter never answers costs its group one
attempt per interval and delays nothing else. The interval counts from when the group was
due, not from when its poll ended: a poll slowed by a retry does not slow the cadence.
:meth:`Scheduler.refresh` makes groups due at once (after a write, or when the inverter
comes back); it never forgets a group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping


class Scheduler:
    """Next-due times of named poll groups, in a fixed order of priority."""

    def __init__(self, intervals: Mapping[str, float],
                 clock: Callable[[], float] = time.monotonic, *, start: float = 0.0) -> None:
        """``start``: seconds until the first round (the inverters of one bridge start
        apart, so that their rounds do not all fall on the same moment)."""
        self.intervals = dict(intervals)
        self.clock = clock
        first = clock() + start
        self._due = dict.fromkeys(self.intervals, first)  # everything is due at start

    def due(self) -> str | None:
        """The first group (in declaration order) whose time has come, or None."""
        now = self.clock()
        return next((g for g, at in self._due.items() if at <= now), None)

    def done(self, group: str) -> None:
        """``group`` was polled (with success or not): due one interval after it was
        due; a group that fell a whole interval behind starts afresh from now."""
        now, interval = self.clock(), self.intervals[group]
        following = self._due[group] + interval
        self._due[group] = following if following > now else now + interval

    def refresh(self, groups: Iterable[str] | None = None) -> None:
        """Make ``groups`` (all when None) due now; unknown names are ignored."""
        now = self.clock()
        for group in self._due if groups is None else groups:
            if group in self._due:
                self._due[group] = min(self._due[group], now)

    def hold(self, seconds: float) -> None:
        """No group is due for ``seconds`` (the inverter cannot be reached now)."""
        until = self.clock() + seconds
        for group, at in self._due.items():
            self._due[group] = max(at, until)

    def next_due(self) -> float:
        """The clock time at which the next group becomes due."""
        return min(self._due.values())
