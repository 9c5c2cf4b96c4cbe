"""How long to wait for the inverter's reply, learnt from the round trips it shows.

The inverter answers in tens of milliseconds, so waiting the whole ``inverter.timeout``
for a reply that was lost would cost every lost reply seconds of the poll schedule.
:class:`ReplyTimer` estimates the wait as TCP does for its retransmissions (RFC 6298): a
smoothed round trip plus four times its variation, and at least twice the round trip (an
inverter that always takes the same time has no variation to speak of), never below
:data:`MIN_TIMEOUT` and never above the configured timeout. Until the first reply it
waits the configured timeout. Each reply that does not come doubles the next wait (up to
the configured timeout), so an inverter that became slow is given the time it needs again.
"""

from __future__ import annotations

MIN_TIMEOUT = 1.0  # seconds; RFC 6298's lower bound too: a Wi-Fi hiccup is not a loss


class ReplyTimer:
    """The wait for the next reply: an estimate between a floor and ``cap``."""

    def __init__(self, cap: float, floor: float = MIN_TIMEOUT) -> None:
        self.cap = cap
        self.floor = min(floor, cap)
        self.smoothed: float | None = None  # seconds; None until the first reply
        self.variation = 0.0
        self.misses = 0  # replies missed since the last one that came

    @classmethod
    def fixed(cls, timeout: float) -> ReplyTimer:
        """Always ``timeout`` (the command line: one exchange, no history to learn from)."""
        return cls(timeout, floor=timeout)

    def timeout(self) -> float:
        """Seconds to wait for the reply to what is sent now."""
        if self.smoothed is None:
            return self.cap
        estimate = max(self.floor, 2 * self.smoothed, self.smoothed + 4 * self.variation)
        return min(self.cap, estimate * 2.0 ** min(self.misses, 16))

    def answered(self, seconds: float) -> None:
        """A reply came ``seconds`` after its request was sent."""
        self.misses = 0
        if self.smoothed is None:
            self.smoothed, self.variation = seconds, seconds / 2
            return
        self.variation = 0.75 * self.variation + 0.25 * abs(self.smoothed - seconds)
        self.smoothed = 0.875 * self.smoothed + 0.125 * seconds

    def unanswered(self) -> None:
        """A reply did not come in time."""
        self.misses += 1
