"""Faults of the simulated inverter that its own fault injection does not offer."""

from __future__ import annotations

from collections.abc import Callable

from sermatec_bridge.simulator import Simulator
from sermatec_bridge.simulator.model import Outcome

Handler = Callable[[int, bytes], Outcome]


def answer_instead(sim: Simulator, code: int, replies: list[tuple[int, bytes]]) -> Handler:
    """From now on the simulator answers ``code`` with ``replies`` ((code, payload) frames),
    whatever its model would say; every other request as before. Returns the model's own
    handler: put it back (``sim.model.handle = ...``) to end the fault."""
    handle = sim.model.handle

    def patched(request: int, payload: bytes) -> Outcome:
        outcome = handle(request, payload)
        if request == code:
            outcome.replies[:] = replies
        return outcome

    sim.model.handle = patched  # type: ignore[method-assign]
    return handle
