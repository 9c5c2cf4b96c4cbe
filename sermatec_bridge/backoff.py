"""How long to wait before trying again: exponential backoff with equal jitter.

Every part that tries again (the inverter clients, the runtime reconnecting to its
inverter, the MQTT connection, the link to the vendor cloud) waits this way, each with
its own first and longest wait, named where it is used.
"""

from __future__ import annotations


def backoff(attempt: int, first: float, longest: float) -> float:
    """Seconds to wait after ``attempt`` failed tries (1, 2, ...): the step doubles from
    ``first`` up to ``longest``, and the wait is somewhere in its upper half, so that
    clients that failed together do not all try again together."""
    import random  # here: a one-shot read from the command line never backs off

    ceiling = min(longest, first * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
