"""Poll groups: which queries are read together, how often, and where their state goes.

Each group is one retained JSON object at ``<base>/<serial>/<group>``, refreshed at the
group's interval. Queries the inverter's PCU version lacks are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.model import Command
from ..protocol.tables import COMMANDS


@dataclass(frozen=True)
class Group:
    key: str
    name: str
    interval: str  # which interval setting paces it: "live", "energy" or "slow"
    queries: tuple[int, ...]

    def commands(self, version: int) -> list[Command]:
        """The queries of this group that an inverter of this PCU version offers."""
        return [COMMANDS[c] for c in self.queries if COMMANDS[c].layout(version) is not None]


GROUPS: tuple[Group, ...] = (
    Group("live", "Power, battery and status", "live", (0x0A, 0x0B, 0x0C, 0x0D)),
    Group("energy", "Energy counters", "energy", (0x99, 0x9A, 0x9B, 0x9C)),
    Group("settings", "Settings", "slow", (0x95, 0xA2)),  # 0x95 brings 0x9d along
    Group("system", "System information", "slow", (0x98, 0xA1)),
    Group("alarms", "Alarms", "slow", (0x1E, 0x1F)),
)

BY_KEY = {g.key: g for g in GROUPS}
