"""Settings writes from MQTT: parsed, validated, written whole and confirmed by read-back.

The inverter takes a settings block whole, so changing one setting means reading the
block's current values, changing only the requested ones and writing every field back:
a read-modify-write inside one queue slot of the inverter client, so nothing else can
interleave. Only the settings a request changes are checked against the tables' limits;
every other field goes back exactly as the inverter reported it, because an installer may
have set values this project would not offer (an operating mode 6, a 5 % SOC floor). A
write counts as done only when reading the block again shows the new values.

Everything about a request's shape (JSON, types, known settings, encodability) is checked
before the inverter is asked anything; limits are checked once the current block shows
which values really change.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import structlog

from .. import homezone
from ..inverter.client import InverterClient, InverterError, Session
from ..protocol import codec, records, tables
from ..protocol.codec import quote
from ..protocol.model import Command, Field, Value, Wire
from . import schedules

log = structlog.get_logger(__name__)

# The writes reachable from MQTT as settings: every settings write but the clock (a
# button of its own). Network writes (Wi-Fi, cloud) and the reset are not.
MQTT_WRITES = tuple(sorted(tables.SETTINGS_WRITES - {tables.CLOCK.code}))
CLOCK_KEY = "clock"
CLOCK_PRESSES = ("press", "now")  # the button's payload_press (PRESS), or "now"
FORCED_SCHEDULE = "forced_schedule"
MAX_PAYLOAD = 16 * 1024  # bytes; a full forced schedule is well under 1 KiB
MAX_NUMBER = 30  # characters of a number: enough for any setting, far from 4300 digits
RESENDS = 2  # times a write that the read-back does not show yet is sent again
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")  # ASCII only


class WriteRefused(Exception):
    """A write that is not done; the message is the reason shown to the user."""


@dataclass
class WriteResult:
    """The outcome of one request. ``sent``: something reached the inverter, so its
    settings may have changed even when ``ok`` is false (published as ``written``)."""

    ok: bool
    changed: dict[str, Value] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    error: str | None = None
    unconfirmed: str | None = None  # why a write could not be read back
    sent: bool = False
    notes: list[str] = field(default_factory=list)  # values rounded, settings not shown

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok}
        if self.changed:
            out["changed"] = self.changed
        if self.unconfirmed:
            out["confirmed"] = False
        notes = ([self.unconfirmed] if self.unconfirmed else []) + self.notes
        if notes:
            out["note"] = "; ".join(notes)
        if self.unchanged:
            out["unchanged"] = self.unchanged
        if self.error:
            out["error"] = self.error
        out["written"] = self.sent
        return out


def targets(version: int) -> dict[str, tuple[Command, Field]]:
    """Every setting an MQTT write may change at this PCU version: key -> (write, field).

    A schedule's periods are there twice: as their record group, and member by member
    (``forced_charge_period_2_start``, see :mod:`.schedules`).
    """
    out: dict[str, tuple[Command, Field]] = {}
    for code in MQTT_WRITES:
        command = tables.COMMANDS[code]
        layout = command.layout(version) or ()
        for f in layout:
            if f.wire is Wire.RESERVED:
                continue
            out.setdefault(f.group or f.key, (command, f))
        for slot in schedules.slots(layout, version):
            out.setdefault(slot.key, (command, slot.field))
    return out


# --------------------------------------------------------------------------------------
# Parsing: bytes from MQTT to a request, or a refusal
# --------------------------------------------------------------------------------------


def parse_request(payload: bytes, key: str | None = None) -> dict[str, Any]:
    """The settings asked for by a message on ``set`` (a JSON object) or ``set/<key>``.

    ``set/forced_schedule`` takes a JSON object of the 0x71 settings only; ``set/clock``
    takes the button's press (``PRESS``) or ``now``. Raises :class:`WriteRefused` only.
    """
    if len(payload) > MAX_PAYLOAD:
        raise WriteRefused(f"the payload has {len(payload)} bytes; at most {MAX_PAYLOAD} "
                           "are accepted")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise WriteRefused("the payload is not UTF-8 text") from None
    if key == CLOCK_KEY:
        return {CLOCK_KEY: _clock_press(text)}
    if key is None or key == FORCED_SCHEDULE:
        try:
            request = _loads(text)
        except json.JSONDecodeError as exc:
            raise WriteRefused(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
        if not isinstance(request, dict):
            raise WriteRefused("the payload must be a JSON object of settings")
        if key == FORCED_SCHEDULE:
            allowed = {k for version in tables.SET_FORCED_SCHEDULE.layouts
                       for k in _forced_keys(version)}
            others = sorted(k for k in request if k not in allowed)
            if others:
                raise WriteRefused(f"{_names(others)}: not part of the forced charge / "
                                   "discharge schedule; send other settings to set")
        return request
    try:
        value = _loads(text)
    except json.JSONDecodeError:
        value = text  # a bare word such as ON, OFF or an option label
    return {key: value}


def _forced_keys(version: int) -> set[str]:
    layout = tables.SET_FORCED_SCHEDULE.layout(version) or ()
    return {f.group or f.key for f in layout} | {
        s.key for s in schedules.slots(layout, version)}


class _BadNumber(ValueError):
    pass


def _loads(text: str) -> Any:
    """JSON, refusing what Python's parser takes but no setting can be: NaN, Infinity,
    numbers too long or too large for a float, nesting beyond the recursion limit."""
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except _BadNumber as exc:
        raise WriteRefused(str(exc)) from None
    except RecursionError:
        raise WriteRefused("the JSON is nested too deeply") from None


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER:
        raise _BadNumber(f"a number of {len(text)} digits is not a setting")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER:
        raise _BadNumber(f"a number of {len(text)} characters is not a setting")
    number = float(text)
    if not math.isfinite(number):
        raise _BadNumber(f"{text} is out of range for a number")
    return number


def _constant(text: str) -> Any:
    raise _BadNumber(f"{text} is not a number a setting can take")


def _clock_press(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in CLOCK_PRESSES:
        raise WriteRefused(f"clock: {quote(value)} is not a press; send PRESS (or now) to "
                           "set the inverter's clock to this computer's time")
    return value.strip()


def _names(keys: Iterable[str], most: int = 10) -> str:
    """Setting names for a message, each quoted short, at most ``most`` of them."""
    keys = list(keys)
    shown = [k if len(k) <= 60 and k.isprintable() else quote(k, 60) for k in keys[:most]]
    return ", ".join(shown) + (f" and {len(keys) - most} more" if len(keys) > most else "")


# --------------------------------------------------------------------------------------
# Coercion: what Home Assistant sends, to values the codec takes
# --------------------------------------------------------------------------------------


def coerce(command: Command, version: int, key: str, value: Any,
           notes: list[str] | None = None) -> Value:
    """Accept what Home Assistant sends (strings such as "ON" or "25.0") for a setting.

    Numbers are rounded to the setting's step (33.5 on a step-1 number is 34; the
    rounding goes to ``notes``). A record group takes the records in use only; each is
    checked for its fields. Wrong types and values the wire cannot carry are refused
    here, before the inverter is asked anything.
    """
    notes = notes if notes is not None else []
    members = [f for f in codec.layout_of(command, version)
               if f.group == key and f.wire is not Wire.RESERVED]
    if not members:
        return _checked(_field(command, version, key), key, value, notes)
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise codec.SettingRefused(key, value, "a list of records (JSON objects)")
    slots = records.slots(codec.layout_of(command, version), key)
    if slots is not None and len(value) > slots:
        raise codec.SettingRefused(key, len(value), f"at most {slots} records",
                                   "records are too many")
    names = [f.key for f in members]
    out = []
    for index, record in enumerate(value):
        missing = [k for k in names if k not in record]
        extra = [k for k in record if k not in names]
        if missing or extra:
            why = f"lacks {', '.join(missing)}" if missing else f"has {_names(extra)}"
            raise codec.SettingRefused(f"{key}[{index}]", record,
                                       "records with " + ", ".join(names), why)
        out.append({f.key: _checked(f, f"{key}[{index}].{f.key}", record[f.key], notes)
                    for f in members})
    return out


def _checked(f: Field, name: str, value: Any, notes: list[str]) -> Value:
    """One value, coerced and rounded to its step, refused if the wire cannot carry it."""
    coerced = _to_step(f, name, _coerce_field(f, name, value, notes), notes)
    try:
        codec.to_raw(f, coerced)
    except codec.SettingRefused as exc:
        raise codec.SettingRefused(name, value, exc.allowed, exc.why) from None
    return coerced


def _coerce_field(f: Field, name: str, value: Any, notes: list[str]) -> Value:
    if f.is_bool and isinstance(value, str):
        word = value.strip().lower()
        if word in ("on", "true", "1", "yes"):
            return True
        if word in ("off", "false", "0", "no"):
            return False
        if f.unset_allowed and word in ("not set", "null", "none"):
            return None
        raise codec.SettingRefused(name, value, "ON or OFF" + (
            " (or not set)" if f.unset_allowed else ""))
    if f.clock and isinstance(value, str):
        return _time_of_day(f, name, value, notes)
    if f.is_bool and isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if (f.codes is not None and isinstance(value, str) and value.strip().isascii()
            and value.strip().isdigit() and value.strip() not in f.codes.values()):
        return int(value)  # a code without a name, as the select shows it
    if isinstance(value, str) and f.codes is None and not f.clock and f.wire is not Wire.TEXT:
        text = value.strip()
        if len(text) > MAX_NUMBER or not _NUMBER.fullmatch(text):
            raise codec.SettingRefused(name, value, f.writable_values, "is not a number")
        number = float(text)
        if not math.isfinite(number):
            raise codec.SettingRefused(name, value, f.writable_values, "is out of range")
        return int(number) if number.is_integer() else number
    if isinstance(value, float) and value.is_integer() and f.scale == 1:
        return int(value)
    return value


_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]+)?)?")


def _time_of_day(f: Field, name: str, value: str, notes: list[str]) -> str:
    """A time of day as HH:MM. Home Assistant's time entities send HH:MM:SS and cannot
    show 24:00, so an end of 00:00 is midnight at the end of the day (24:00)."""
    match = _TIME.fullmatch(value.strip())
    if match is None:
        raise codec.SettingRefused(name, value, f.writable_values, "is not a time of day")
    hours, minutes, seconds = match.groups()
    if seconds is not None and int(seconds) != 0:
        raise codec.SettingRefused(name, value, "whole minutes", "has seconds")
    text = f"{int(hours):02d}:{minutes}"
    if f.key == "end" and text == "00:00":
        notes.append(f"{name} 00:00 is midnight at the end of the day: written as 24:00")
        return "24:00"
    return text


def _to_step(f: Field, name: str, value: Value, notes: list[str]) -> Value:
    """A number rounded half away from zero to the field's step (its scale)."""
    if not f.is_numeric or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if not math.isfinite(value):
        raise codec.SettingRefused(name, value, f.writable_values, "is not a finite number")
    step = Decimal(repr(f.scale))
    exact = Decimal(repr(value))
    steps = (exact / step).to_integral_value(ROUND_HALF_UP)
    rounded = steps * step
    result: Value = int(rounded) if rounded == rounded.to_integral_value() else float(rounded)
    if rounded != exact:
        notes.append(f"{name} {value} rounded to {result} (step {step})")
    return result


def same(command: Command, version: int, key: str, a: Value, b: Value) -> bool:
    """Equal on the wire (so 25 and 25.0, or "general" and "General", are the same)."""
    try:
        return bool(_wire(command, version, key, a) == _wire(command, version, key, b))
    except (codec.CodecError, TypeError, AttributeError):
        return False


def _wire(command: Command, version: int, key: str, value: Value) -> Any:
    layout = codec.layout_of(command, version)
    members = [f for f in layout if f.group == key and f.wire is not Wire.RESERVED]
    if not members:
        return codec.to_raw(_field(command, version, key), value)
    return [tuple(codec.to_raw(f, r.get(f.key)) for f in members) for r in value]


# --------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """One settings block to write: the block as read with the changes in, which changes
    (as asked), and which fields and record groups they touch (checked by the codec)."""

    command: Command
    block: dict[str, Value]
    pending: dict[str, Value]
    touched: set[str]


class Writer:
    """Applies settings requests to one inverter through its client."""

    def __init__(
        self,
        client: InverterClient,
        *,
        min_interval: float = 10.0,
        confirm_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.min_interval = min_interval
        self.confirm_timeout = confirm_timeout
        self.clock = clock
        self.last_write: dict[str, float] = {}

    async def apply(self, request: Mapping[str, Any]) -> WriteResult:
        """Apply a request; the result keeps what was changed even when a later part fails."""
        result = WriteResult(True)
        try:
            return await self._apply(dict(request), result)
        except (WriteRefused, codec.CodecError) as exc:
            result.ok, result.error = False, str(exc)
        except InverterError as exc:
            result.ok, result.error = False, f"inverter: {exc}"
        return result

    async def _apply(self, request: dict[str, Any], result: WriteResult) -> WriteResult:
        if not request:
            raise WriteRefused("the request names no setting")
        if CLOCK_KEY in request:
            if len(request) > 1:
                raise WriteRefused("set the clock on its own")
            _clock_press(request[CLOCK_KEY])
            return await self._set_clock(result)
        async with self.client.session() as session:
            version = session.version
            changes = self._changes(version, request, result.notes)  # before any read
            plans = [await self._plan(session, tables.COMMANDS[code], block_changes, request,
                                      result)
                     for code, block_changes in changes.items()]
            await self._write(session, version, plans, result)
            return result

    async def apply_block(self, session: Session, command: Command,
                          payload: bytes) -> WriteResult:
        """A whole settings block, as a requester other than the bridge sends it (the app
        through the proxy), applied the way an MQTT write is, in the caller's slot.

        The settings whose values differ from the inverter's are the request: they are
        checked against the tables' limits (and ``requires_off``), rate limited, written
        in a block built from the tables (reserved bytes as the inverter has them) and
        read back. The rest of the payload changes nothing.
        """
        result = WriteResult(True)
        try:
            version = session.version
            layout = codec.layout_of(command, version)
            sent = codec.decode(command, version, payload).values
            settable = {f.group or f.key for f in layout if f.wire is not Wire.RESERVED}
            request = {k: v for k, v in records.in_use(layout, sent).items() if k in settable}
            if tables.readback(command, version) is None:  # the clock: nothing to compare
                plans = [_Plan(command, request, request, set(request))]
            else:
                _count_records(layout, version, request)
                plans = [await self._plan(session, command, request, (), result)]
            await self._write(session, version, plans, result)
        except (WriteRefused, codec.CodecError) as exc:
            result.ok, result.error = False, str(exc)
        except InverterError as exc:
            result.ok, result.error = False, f"inverter: {exc}"
        return result

    async def _write(self, session: Session, version: int, plans: list[_Plan],
                     result: WriteResult) -> None:
        """Write the blocks that change something, each confirmed by reading it back."""
        self._rate_limit(k for plan in plans for k in plan.pending)
        deadline: float | None = None
        for plan in plans:
            if not plan.pending:
                continue
            await session.write(plan.command, plan.block, only=plan.touched)
            result.sent = True
            for key in plan.pending:
                self.last_write[key] = self.clock()
            if deadline is None:  # one budget for every read-back of the request
                deadline = asyncio.get_running_loop().time() + self.confirm_timeout
            await self._confirm(session, version, plan, deadline, result)
            result.changed.update(plan.pending)

    def _changes(self, version: int, request: Mapping[str, Any],
                 notes: list[str]) -> dict[int, dict[str, Value]]:
        """The request checked for shape and type, by write command; record counts added."""
        known = targets(version)
        unknown = sorted(k for k in request if k not in known)
        if unknown:
            raise WriteRefused(
                f"unknown setting(s) {_names(unknown)} at PCU version {version}; "
                f"known: {', '.join(sorted(known))}"
            )
        by_command: dict[int, dict[str, Value]] = {}
        for key, value in request.items():
            command, _ = known[key]
            by_command.setdefault(command.code, {})[key] = coerce(command, version, key,
                                                                  value, notes)
        for code, changes in by_command.items():
            _count_records(codec.layout_of(tables.COMMANDS[code], version), version, changes)
        return by_command

    def _rate_limit(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            waited = now - self.last_write.get(key, -math.inf)
            if waited < self.min_interval:
                raise WriteRefused(
                    f"{key} was written {waited:.0f} s ago; wait "
                    f"{max(1, math.ceil(self.min_interval - waited))} s more "
                    f"(writes.min_interval is {self.min_interval:g} s)"
                )

    async def _plan(self, session: Session, command: Command, changes: dict[str, Value],
                    named: Iterable[str], result: WriteResult) -> _Plan:
        """Read the block, find what really changes, check only that against the tables.

        ``named``: the settings the user asked for (``changes`` adds record counts). A
        schedule's single settings (:mod:`.schedules`) change their period in the records
        read; the periods a write changes or puts in use are checked as periods.
        """
        named = set(named)
        version = session.version
        if command.requires_off:
            status = await _read(session, tables.RUNNING_STATUS)
            if status.get("inverter_on"):
                raise WriteRefused(
                    f"{', '.join(changes)} can only be changed while the inverter is off"
                )
        layout = codec.layout_of(command, version)
        groups = records.groups(layout)
        block = await self._current(session, command, changes)
        before = records.in_use(layout, block)
        shown = before | schedules.flat(layout, version, block)
        pending = {k: v for k, v in changes.items()
                   if k not in shown or not same(command, version, k, shown[k], v)}
        result.unchanged += [k for k in changes if k not in pending and k in named]
        edits = {k: v for k, v in pending.items() if schedules.find(layout, version, k)}
        for group in groups:
            if group in pending:
                block[group] = _merge(layout, group, block.get(group), changes[group])
        block.update({k: v for k, v in pending.items() if k not in groups and k not in edits})
        touched = (set(pending) - set(edits)) | _edit_periods(layout, version, block, edits)
        for group in groups:  # a write without fixed slots carries the periods in use only
            if records.slots(layout, group) is None:
                block[group] = records.in_use(layout, block)[group]
                _add_rest_of_day(layout, group, before, block, result.notes)
        _check_periods(layout, before, records.in_use(layout, block))
        if pending:  # raises SettingRefused with the reason
            codec.build(command, version, block, only=touched)
        return _Plan(command, block, pending, touched)

    async def _current(self, session: Session, command: Command,
                       changes: Mapping[str, Value]) -> dict[str, Value]:
        """The write block as the inverter has it now, from the matching query.

        A record group keeps every slot the query shows, reserved bytes included, even
        where the write carries only the periods in use (cut to them once the changes
        are in: a raised count takes the periods the inverter still holds).
        """
        version = session.version
        layout = codec.layout_of(command, version)
        query = tables.readback(command, version)
        read = await _read(session, query) if query else {}
        block: dict[str, Value] = {}
        for f in layout:
            name = f.group or f.key
            if name in block:
                continue
            if f.group is not None:
                block[name] = [dict(r) for r in read.get(name) or []]
            elif name in read:
                block[name] = read[name]
            elif f.wire is not Wire.RESERVED and name not in changes:
                raise WriteRefused(_unread(command, version, query, name))
        return block

    async def _confirm(self, session: Session, version: int, plan: _Plan, deadline: float,
                       result: WriteResult) -> None:
        """Read back until the inverter shows every new value, within the request's
        confirmation budget (``writes.confirm_timeout``).

        A write gets no reply, so a write frame the link lost shows only here: while the
        read-back does not show the new values, the same block is sent again (at most
        :data:`RESENDS` times; the block is the one validated, so sending it twice is
        harmless). Otherwise a lost frame would hold the queue slot, and the live values,
        for the whole budget.

        ``version`` is the one the write was built for: after a write that makes the
        inverter hang up, the session only learns it again on the next read.
        """
        query = tables.readback(plan.command, version)
        if query is None:
            return
        layout = codec.layout_of(query, version)
        expected = plan.pending
        wrong: dict[str, Value] = {}
        delay = 0.2
        resends = RESENDS
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    read = await _read(session, query)
                    shown = records.in_use(layout, read) | schedules.flat(layout, version, read)
                    wrong = {k: shown[k] for k, v in expected.items()
                             if k in shown and not same(plan.command, version, k, shown[k], v)}
                    if not wrong:
                        break
                    if resends:
                        resends -= 1
                        log.info("the read-back does not show the write yet: sent again",
                                 command=plan.command.label, settings=", ".join(wrong))
                        await session.write(plan.command, plan.block, only=plan.touched)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        except TimeoutError:
            still = ("the inverter still reports "
                     + ", ".join(f"{k}={quote(v)}" for k, v in wrong.items())
                     if wrong else "the inverter did not answer the read-back in time")
            raise WriteRefused(f"written but not confirmed within {self.confirm_timeout:g} s "
                               f"(writes.confirm_timeout): {still}") from None
        except InverterError as exc:
            raise WriteRefused(f"written but not confirmed: reading it back failed: {exc}"
                               ) from None
        unseen = [k for k in expected if k not in shown]
        if unseen:
            result.notes.append(f"{', '.join(unseen)}: not shown by {query.label} at PCU "
                                f"{version}, so not confirmed")

    async def _set_clock(self, result: WriteResult) -> WriteResult:
        async with self.client.session() as session:  # the rate limit inside the slot
            self._rate_limit([CLOCK_KEY])
            zone = homezone.current()  # the inverter keeps the home's local time
            now = zone.now()
            values = {"year": now.year, "month": now.month, "day": now.day,
                      "hour": now.hour, "minute": now.minute, "second": now.second}
            await session.write(tables.CLOCK, values)
            self.last_write[CLOCK_KEY] = self.clock()
        result.sent = True
        result.changed[CLOCK_KEY] = now.isoformat(timespec="seconds")
        result.unconfirmed = "sent; the inverter has no query that shows its clock"
        result.notes.append(f"local time of {zone.label(now)}")
        return result


def _count_records(layout: tuple[Field, ...], version: int,
                   changes: dict[str, Value]) -> None:
    """The count of a record group follows the records sent (an active schedule is the
    one sent); a count that says otherwise is refused. A count sent alone puts the first
    periods the inverter holds in use (:func:`_edit_periods` checks them)."""
    for group in records.groups(layout):
        key = records.count_key(layout, group)
        if key is None or group not in changes:
            continue
        sent = len(changes[group])
        if key in changes and changes[key] != sent:
            raise codec.SettingRefused(key, changes[key], f"the number of {group} "
                                       f"records sent ({sent})", "does not match")
        changes[key] = sent
        single = [k for k in changes if (slot := schedules.find(layout, version, k))
                  and slot.schedule.group == group]
        if single:
            raise WriteRefused(f"send either {group} or its single settings "
                               f"({_names(single)}), not both")


def _edit_periods(layout: tuple[Field, ...], version: int, block: dict[str, Value],
                  edits: Mapping[str, Value]) -> set[str]:
    """Single settings of periods (``forced_charge_period_2_start``, ``..._in_use``) into
    ``block``: members into the records read, in-use switches into the counts. Returns
    the record groups and counts they touch.

    Periods are in use in order (the count says how many of the first ones are): turning
    one on that does not follow the last in use, or off one that is not the last, is
    refused. A period not in use can be set where the write keeps it (0x71).
    """
    touched: set[str] = set()
    switched: list[tuple[schedules.Slot, bool]] = []
    for key, value in edits.items():
        slot = schedules.find(layout, version, key)
        assert slot is not None  # edits are the slot keys of targets()
        group = slot.schedule.group
        count_key = records.count_key(layout, group) or ""
        touched |= {group, count_key}
        if slot.in_use:
            switched.append((slot, bool(value)))
            continue
        count = block[count_key]
        if slot.index >= count and not schedules.keeps_unused(group, version):
            field = next(f for f in layout if f.key == count_key)
            raise WriteRefused(f"{key}: {slot.schedule.name} {slot.index + 1} is not in "
                               f"use (periods in use: {count}); raise {field.name} "
                               f"({count_key}) first")
        periods = block[group]
        assert isinstance(periods, list) and slot.index < len(periods)
        periods[slot.index] = {**periods[slot.index], slot.field.key: value}
    # several in one request: on from the lowest, off from the highest
    ons = sorted((s for s, on in switched if on), key=lambda s: s.index)
    offs = sorted((s for s, on in switched if not on), key=lambda s: -s.index)
    for slot, on in [(s, True) for s in ons] + [(s, False) for s in offs]:
        count_key = records.count_key(layout, slot.schedule.group) or ""
        count, number = block[count_key], slot.index + 1
        if on and number > count + 1:
            raise WriteRefused(f"{slot.key}: periods are used in order; turn "
                               f"{slot.schedule.name} {count + 1} on first")
        if not on and number < count:
            raise WriteRefused(f"{slot.key}: periods are used in order; turn "
                               f"{slot.schedule.name} {count} off first")
        block[count_key] = number if on else number - 1
    return touched


def _add_rest_of_day(layout: tuple[Field, ...], group: str, before: Mapping[str, Value],
                     block: dict[str, Value], notes: list[str]) -> None:
    """Periods a raised count adds to a write that carries only the periods in use (the
    time-of-use schedule of 0x66): the inverter's own slot where it holds a period that
    fits, else the rest of the day after the last period, with the "no tariff" code 0
    (it changes nothing until its tariff is set); a forced period is never made up."""
    schedule = schedules.BY_GROUP.get(group)
    old, new = before.get(group) or [], block.get(group)
    if schedule is None or not isinstance(new, list) or len(new) <= len(old):
        return
    unset = {f.key: f.codes[0] for f in layout
             if f.group == group and f.codes is not None and 0 in f.codes}
    for index in range(len(old), len(new)):
        others = [s for s in map(_span, new[:index]) if s is not None]
        span = _span(new[index])
        if span is not None and span[0] < span[1] and not any(
                span[0] < o[1] and o[0] < span[1] for o in others):
            continue  # what the inverter holds
        start = max((o[1] for o in others), default=0)
        if start >= 1440:
            raise WriteRefused(f"{schedule.name} {index + 1}: no time of the day is left "
                               "after the periods in use; shorten one first")
        new[index] = {**new[index], "start": f"{start // 60:02d}:{start % 60:02d}",
                      "end": "24:00", **unset}
        notes.append(f"{schedule.name} {index + 1} added as {_shown(new[index])}"
                     + "".join(f", {schedule.words.get(k, k)} {v}" for k, v in unset.items())
                     + ": set what it should be")


def _check_periods(layout: tuple[Field, ...], before: Mapping[str, Value],
                   after: Mapping[str, Value]) -> None:
    """Refuse a period put in use or changed whose end is not after its start, or that
    overlaps another period in use of its schedule. Periods left as the inverter had
    them are not judged (an installer may have set one this bridge would not)."""
    for group in records.groups(layout):
        schedule = schedules.BY_GROUP.get(group)
        old, new = before.get(group) or [], after.get(group) or []
        if schedule is None or not isinstance(new, list):
            continue
        spans = [_span(r) for r in new]
        for i, span in enumerate(spans):
            if i < len(old) and _span(old[i]) == span:
                continue
            label = f"{schedule.name} {i + 1} ({_shown(new[i])})"
            if span is None or span[0] >= span[1]:
                raise WriteRefused(
                    f"{label}: its end must be after its start; a period over midnight is "
                    "two periods, one to 24:00 and one from 00:00")
            for j, other in enumerate(spans):
                if j != i and other is not None and span[0] < other[1] and other[0] < span[1]:
                    raise WriteRefused(f"{label} overlaps {schedule.name} {j + 1} "
                                       f"({_shown(new[j])})")


def _span(record: Any) -> tuple[int, int] | None:
    """A period's start and end in minutes, or None when it has no valid times."""
    if not isinstance(record, Mapping):
        return None
    start, end = (_minutes(record.get(k)) for k in ("start", "end"))
    return (start, end) if start is not None and end is not None else None


def _minutes(text: Any) -> int | None:
    match = _TIME.fullmatch(text) if isinstance(text, str) else None
    return int(match[1]) * 60 + int(match[2]) if match else None


def _shown(record: Any) -> str:
    return f"{record.get('start')}-{record.get('end')}" if isinstance(record, Mapping) else "?"


def _merge(layout: tuple[Field, ...], group: str, read: Value,
           sent: list[dict[str, Value]]) -> list[dict[str, Value]]:
    """The records sent over the records read, slot by slot: what the request does not
    carry (reserved bytes, the slots after the ones in use) stays as read."""
    old = [r for r in read or [] if isinstance(r, dict)]
    merged = [{**(old[i] if i < len(old) else {}), **record} for i, record in enumerate(sent)]
    slots = records.slots(layout, group)
    if slots is not None:
        members = [f for f in layout if f.group == group]
        merged += old[len(sent):slots]
        merged += [{f.key: _EMPTY.get(f.key, 0) if f.wire is not Wire.RESERVED else None
                    for f in members} for _ in range(slots - len(merged))]
    return merged


_EMPTY: dict[str, Value] = {"start": "00:00", "end": "00:00"}  # an unused slot


def _unread(command: Command, version: int, query: Command | None, name: str) -> str:
    shown_by = f"{query.label} at PCU {version} does not show it" if query else "no query shows it"
    return (f"cannot keep {name} as it is: {shown_by}, and a {command.label} write carries "
            f"it; send {name} in the same request to write {command.label}")


async def _read(session: Session, query: Command) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for reading in await session.query(query):
        values.update(reading.values)
    return values


def _field(command: Command, version: int, key: str) -> Field:
    """The field of ``key``: one of the layout, or a schedule's period member."""
    layout = codec.layout_of(command, version)
    for f in layout:
        if f.key == key and f.group is None:
            return f
    slot = schedules.find(layout, version, key)
    if slot is not None:
        return slot.field
    raise WriteRefused(f"{key} is not part of {command.label}")
