"""The JSON state object of a poll group, as published on ``<base>/<serial>/<group>``.

Pure functions of decoded readings: every field Home Assistant may show, by field key,
in the units of the tables (scale already applied by the codec), plus ``last_seen``, the
values computed from others (PV power, grid and battery power signed as Home Assistant's
Energy dashboard takes them) and each schedule period member by member
(:mod:`.schedules`).
Values Home Assistant would reject become ``None`` (published as JSON null, shown as
"unknown"): a coded value whose raw code has no label, a flag that is neither on nor
off, a time of day out of range. Energy counters pass through :class:`EnergyGuard`, so
that the Energy dashboard never sees a counter step back or a placeholder zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import structlog

from .. import homezone
from ..protocol import alarms
from ..protocol.codec import Reading, layout_of
from ..protocol.model import Field, Value, Wire, watts
from ..protocol.records import in_use as records_in_use
from . import schedules

log = structlog.get_logger(__name__)

ALARMS_GROUP = "alarms"
LAST_SEEN = "last_seen"

# Values the bridge computes from others, shown like fields: PV power is the one number a
# power-flow card or an automation needs, and the tables only have it per string. Grid and
# battery power come signed the other way round from what Home Assistant's Energy
# dashboard and the power-flow cards take (grid: positive while importing; battery:
# positive while discharging), so they are offered with that sign too.
PV_POWER = watts("pv_power", "PV power", note="PV1 + PV2, computed by the bridge")
PV_STRINGS = ("pv1_power", "pv2_power")
NEGATED = {
    "grid_active_power": watts("grid_power", "Grid power (import positive)",
                               note="minus grid active power, which is positive while "
                               "exporting"),
    "dc_power": watts("battery_power", "Battery power (discharge positive)",
                      note="minus the DC-side battery power, which is positive while "
                      "charging"),
}


def derived_fields(keys: set[str]) -> list[Field]:
    """The computed fields a state object with these keys carries."""
    out = [PV_POWER] if all(k in keys for k in PV_STRINGS) else []
    return out + [f for source, f in NEGATED.items() if source in keys]


def derived_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The computed values of a state object (None where a source is unknown)."""
    out: dict[str, Any] = {}
    if all(k in values for k in PV_STRINGS):
        strings = [values[k] for k in PV_STRINGS]
        out[PV_POWER.key] = sum(strings) if all(map(_is_number, strings)) else None
    for source, f in NEGATED.items():
        if source in values:
            out[f.key] = 0 - values[source] if _is_number(values[source]) else None
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_published(f: Field) -> bool:
    """A field whose value goes into the state object (record members aside)."""
    return not (f.hidden or f.secret or f.wire in (Wire.RESERVED, Wire.ALARMS))


def is_energy_counter(f: Field) -> bool:
    return f.device_class == "energy" and f.state_class == "total_increasing"


def clean(f: Field, value: Value) -> Value:
    """The value as Home Assistant may receive it; None where it would be rejected."""
    if f.codes is not None and not isinstance(value, str):
        lo, hi = f.limits or (0, -1)  # unnamed codes within the limits are options too
        return value if isinstance(value, int) and lo <= value <= hi else None
    if f.flag is not None and not isinstance(value, bool):
        return None  # neither the "on" nor the "off" pattern
    if f.clock and not isinstance(value, str):
        return None
    return value


def last_seen(now: datetime) -> str:
    """``now`` as ISO 8601 in UTC (a naive ``now`` is taken as local time)."""
    return now.astimezone(UTC).isoformat(timespec="seconds")


def state_payload(
    group: str,
    readings: Sequence[Reading],
    now: datetime,
    guard: EnergyGuard,
    battery_make: str | None = None,
) -> dict[str, Any]:
    """The JSON-ready state object of one poll group from its readings."""
    if group == ALARMS_GROUP:
        return alarms_payload(readings, now, battery_make)
    out: dict[str, Any] = {}
    for reading in readings:
        for name, value in _reading_values(reading, now, guard).items():
            out.setdefault(name, value)
    out.update(derived_values(out))
    out[LAST_SEEN] = last_seen(now)
    return out


def alarms_payload(
    readings: Sequence[Reading], now: datetime, battery_make: int | str | None = None
) -> dict[str, Any]:
    """``problem``, ``count`` and the list of active alarms from 0x1e and 0x1f."""
    merged: dict[str, Value] = {}
    for reading in readings:
        merged.update(reading.values)
    active = alarms.active_alarms(merged, battery_make)
    return {
        "problem": bool(active),
        "count": len(active),
        "alarms": [_alarm_json(a) for a in active],
        LAST_SEEN: last_seen(now),
    }


def _alarm_json(a: alarms.Alarm) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": a.code,
        "text": a.text,
        "source": a.source,
        "severity": a.severity.value,
    }
    if a.bit is not None:
        out["bit"] = a.bit
    return out


def _reading_values(reading: Reading, now: datetime, guard: EnergyGuard) -> dict[str, Any]:
    out: dict[str, Any] = {}
    layout = layout_of(reading.command, reading.version)
    for f in layout:
        if f.group is not None:
            if f.group not in out:
                out[f.group] = _records(f.group, layout, reading.values)
            continue
        if not is_published(f) or f.key not in reading.values:
            continue
        value = clean(f, reading.values[f.key])
        if is_energy_counter(f):
            value = guard.check(f.key, value, now)
        out[f.key] = value
    flat = schedules.flat(layout, reading.version, reading.values)
    out.update((slot.key, clean(slot.field, flat[slot.key]))
               for slot in schedules.slots(layout, reading.version))
    return out


def _records(group: str, layout: tuple[Field, ...], values: Mapping[str, Value]) -> list[Any]:
    """A record group as a list of dicts: shown members only, records in use only."""
    members = [f for f in layout if f.group == group and is_published(f)]
    records = records_in_use(layout, values).get(group)
    if not isinstance(records, list):
        return []
    return [
        {f.key: clean(f, record.get(f.key)) for f in members}
        for record in records
        if isinstance(record, Mapping)
    ]


@dataclass
class _Counter:
    value: float
    day: date
    reset_pending: bool = False  # a daily counter carried a non-zero total past midnight
    refusing: bool = False  # a lower reading was refused (logged once per episode)


class EnergyGuard:
    """Keeps energy counters monotonic for Home Assistant's ``total_increasing``.

    * Lifetime counters (keys not ending in ``_today``) never decrease: a lower reading
      publishes the last value instead (logged once as a warning), and a 0 before any
      non-zero value is a placeholder, published as None.
    * Daily counters (``_today``) may decrease only on a new local day: when the date
      of ``now`` differs from the date of the last accepted value (the daily reset).
      Otherwise the last value is kept. One allowance for an inverter clock that runs
      late: if the counter still carried a non-zero total past midnight (the inverter
      had not reset yet), the first decrease of that day is accepted as the reset.

    The local date is the date of ``now`` in the home's time zone (:mod:`..homezone`),
    where the inverter lives too. State is per inverter and in memory only.
    """

    def __init__(self) -> None:
        self._counters: dict[str, _Counter] = {}

    def last(self, key: str) -> float | None:
        counter = self._counters.get(key)
        return counter.value if counter else None

    def check(self, key: str, value: Value, now: datetime) -> float | None:
        """The value to publish for a counter reading (None: unknown)."""
        day = now.astimezone(homezone.current().tz).date()
        counter = self._counters.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            # No usable reading: repeat the last value, unless it is yesterday's.
            if counter is None or (key.endswith("_today") and counter.day != day):
                return None
            return counter.value
        if key.endswith("_today"):
            return self._daily(key, float(value), day, counter, value)
        return self._lifetime(key, float(value), day, counter, value)

    def _lifetime(
        self, key: str, reading: float, day: date, counter: _Counter | None, raw: int | float
    ) -> float | None:
        if counter is None:
            if reading == 0:
                return None  # a placeholder until the inverter reports a real total
            self._counters[key] = _Counter(reading, day)
            return raw
        if reading < counter.value:
            if not counter.refusing:
                log.warning(
                    "energy counter went down; publishing the last value instead",
                    key=key, reading=raw, last=counter.value,
                )
                counter.refusing = True
            return counter.value
        counter.value, counter.day, counter.refusing = reading, day, False
        return raw

    def _daily(
        self, key: str, reading: float, day: date, counter: _Counter | None, raw: int | float
    ) -> float | None:
        if counter is None:
            self._counters[key] = _Counter(reading, day)
            return raw
        if day != counter.day:
            # A new day: the reading is either the reset or a total carried over.
            counter.reset_pending = reading >= counter.value and reading > 0
        elif reading < counter.value:
            if not counter.reset_pending:
                if not counter.refusing:
                    log.info(
                        "daily energy counter went down during the day; keeping the "
                        "last value", key=key, reading=raw, last=counter.value,
                    )
                    counter.refusing = True
                return counter.value
            counter.reset_pending = False
        counter.value, counter.day, counter.refusing = reading, day, False
        return raw
