"""The waits before trying again, which every part that retries shares."""

from __future__ import annotations

import random

from sermatec_bridge.backoff import backoff


def test_the_wait_doubles_up_to_the_longest_and_stays_in_the_upper_half_of_its_step() -> None:
    random.seed(7)
    for attempt, step in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], start=1):
        waits = [backoff(attempt, 0.5, 4.0) for _ in range(200)]
        assert all(step / 2 <= wait <= step for wait in waits), attempt
        assert max(waits) - min(waits) > step / 4  # jittered, not one fixed wait
