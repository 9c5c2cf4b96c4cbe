"""Schedule periods as single settings: one key per member of each period.

The inverter carries its schedules as record groups: the forced charge and discharge
periods of 0x71 / 0xa2 (4 slots each) and the time-of-use tariff periods of 0x66 / 0x95
(16 slots). Home Assistant shows each period's start, end and tariff as an entity of its
own, so the MQTT state carries them flat (``forced_charge_period_2_start``) beside the
record lists, and a write of one of them changes that member in the block the writer
reads from the inverter (:mod:`.writes`).

Where the write keeps the slots after the ones in use (0x71 carries all four), those
slots are shown and can be set, and each period has an ``in_use`` switch: turning it on
puts the period in use (the count follows). The 0x66 write carries only the periods in
use, so time-of-use periods show values only while in use, and their count is a setting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..protocol import records, tables
from ..protocol.model import Field, Kind, Value, Wire

IN_USE = "in_use"


@dataclass(frozen=True)
class Schedule:
    group: str  # the record group of the tables
    prefix: str  # of its flat keys: <prefix>_<n>_<word>
    name: str  # of its entities: "<name> <n> <word>"
    words: Mapping[str, str]  # record member -> the word naming it in keys and names


SCHEDULES: tuple[Schedule, ...] = (
    Schedule("forced_charge_periods", "forced_charge_period", "Forced charge period",
             {"start": "start", "end": "end"}),
    Schedule("forced_discharge_periods", "forced_discharge_period", "Forced discharge period",
             {"start": "start", "end": "end"}),
    Schedule("tou_schedule", "tou_period", "Time-of-use period",
             {"start": "start", "end": "end", "period": "tariff"}),
)
BY_GROUP = {s.group: s for s in SCHEDULES}

IN_USE_FIELD = Field(IN_USE, "In use", Wire.BIT)
"""What an ``in_use`` key takes and shows: on or off."""


@dataclass(frozen=True)
class Slot:
    """One flat key: a member of one period, or whether the period is in use."""

    key: str
    schedule: Schedule
    index: int  # from 0; the entity names count from 1
    field: Field  # the record member, or IN_USE_FIELD

    @property
    def in_use(self) -> bool:
        return self.field is IN_USE_FIELD

    @property
    def name(self) -> str:
        word = "in use" if self.in_use else self.schedule.words[self.field.key]
        return f"{self.schedule.name} {self.index + 1} {word}"


def keeps_unused(group: str, version: int) -> bool:
    """Whether the settings write of ``group`` carries the slots after the ones in use."""
    for command in tables.COMMANDS.values():
        layout = command.layout(version) if command.kind is Kind.SETTINGS else None
        if layout is not None and group in records.groups(layout):
            return records.slots(layout, group) is not None
    return False


def capacity(layout: tuple[Field, ...], group: str) -> int:
    """How many periods ``group`` holds: its fixed slots, or what its count allows."""
    fixed = records.slots(layout, group)
    if fixed is not None:
        return fixed
    key = records.count_key(layout, group)
    limit = next((f.limits for f in layout if f.key == key), None)
    return int(limit[1]) if limit else 0


def slots(layout: tuple[Field, ...], version: int) -> Iterator[Slot]:
    """The flat keys of the schedules in ``layout``, period by period."""
    for group in records.groups(layout):
        schedule = BY_GROUP.get(group)
        if schedule is None:
            continue
        members = {f.key: f for f in layout if f.group == group}
        kept = keeps_unused(group, version)
        for index in range(capacity(layout, group)):
            for member, word in schedule.words.items():
                yield Slot(f"{schedule.prefix}_{index + 1}_{word}", schedule, index,
                           members[member])
            if kept:
                yield Slot(f"{schedule.prefix}_{index + 1}_{IN_USE}", schedule, index,
                           IN_USE_FIELD)


_KEY = re.compile(r"(?P<prefix>[a-z_]+)_(?P<number>[1-9][0-9]?)_(?P<word>[a-z_]+)")


def find(layout: tuple[Field, ...], version: int, key: str) -> Slot | None:
    """The slot a flat key names in ``layout``, if it is one."""
    if _KEY.fullmatch(key) is None:
        return None
    return next((s for s in slots(layout, version) if s.key == key), None)


def flat(layout: tuple[Field, ...], version: int,
         values: Mapping[str, Value]) -> dict[str, Value]:
    """The flat keys' values: a period not in use shows its members only where the write
    keeps it (None otherwise), and whether it is in use."""
    out: dict[str, Value] = {}
    for slot in slots(layout, version):
        group = slot.schedule.group
        count = values.get(records.count_key(layout, group) or "")
        periods = values.get(group)
        used = isinstance(count, int) and not isinstance(count, bool) and slot.index < count
        if slot.in_use:
            out[slot.key] = used if isinstance(count, int) else None
            continue
        shown = used or keeps_unused(group, version)
        record = (periods[slot.index] if isinstance(periods, list)
                  and slot.index < len(periods) else None)
        value = record.get(slot.field.key) if isinstance(record, Mapping) else None
        out[slot.key] = value if shown else None
    return out
