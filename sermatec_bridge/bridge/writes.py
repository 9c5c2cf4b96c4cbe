"""Settings writes from MQTT: parsed, validated, written whole and confirmed by read-back.

The inverter takes a settings block whole, so changing one setting means reading the
block's current values, changing only the requested ones and writing every field back:
a read-modify-write inside one queue slot of the inverter client, so nothing else can
interleave. A write counts as done only when reading the block again shows the new value.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from ..inverter.client import InverterClient, InverterError, Session
from ..protocol import codec, tables
from ..protocol.model import Command, Field, Value, Wire

log = structlog.get_logger(__name__)

# The writes reachable from MQTT. Network writes (Wi-Fi, cloud) and the reset are not.
MQTT_WRITES = (0x64, 0x66, 0x67, 0x69, 0x6A, 0x71)
CLOCK_KEY = "clock"


class WriteRefused(Exception):
    """A write that is not sent; the message is the reason shown to the user."""


@dataclass
class WriteResult:
    ok: bool
    changed: dict[str, Value] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    error: str | None = None
    unconfirmed: str | None = None  # why a write could not be read back
    sent: bool = False  # something reached the inverter (the state may have changed)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok}
        if self.changed:
            out["changed"] = self.changed
        if self.unconfirmed:
            out["confirmed"] = False
            out["note"] = self.unconfirmed
        if self.unchanged:
            out["unchanged"] = self.unchanged
        if self.error:
            out["error"] = self.error
        return out


def targets(version: int) -> dict[str, tuple[Command, Field]]:
    """Every setting an MQTT write may change at this PCU version: key -> (write, field)."""
    out: dict[str, tuple[Command, Field]] = {}
    for code in MQTT_WRITES:
        command = tables.COMMANDS[code]
        for f in command.layout(version) or ():
            if f.wire is Wire.RESERVED:
                continue
            out.setdefault(f.group or f.key, (command, f))
    return out


FORCED_SCHEDULE = "forced_schedule"


def parse_request(payload: bytes, key: str | None = None) -> dict[str, Any]:
    """The settings asked for by a message on ``set`` (a JSON object) or ``set/<key>``.

    ``set/forced_schedule`` takes a JSON object of the 0x71 settings only.
    """
    text = payload.decode("utf-8", errors="replace").strip()
    if key is None or key == FORCED_SCHEDULE:
        try:
            request = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WriteRefused(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
        if not isinstance(request, dict):
            raise WriteRefused("the payload must be a JSON object of settings")
        if key == FORCED_SCHEDULE:
            allowed = {f.group or f.key for v in tables.SET_FORCED_SCHEDULE.layouts.values()
                       for f in v}
            others = sorted(k for k in request if k not in allowed)
            if others:
                raise WriteRefused(f"{', '.join(others)}: not part of the forced charge / "
                                   "discharge schedule; send other settings to set")
        return request
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # a bare word such as ON, OFF or an option label
    return {key: value}


def coerce(command: Command, version: int, key: str, value: Any) -> Value:
    """Accept what Home Assistant sends (strings such as "ON" or "25.0") for a setting.

    A record group with a fixed number of slots (the 0x71 periods) is padded with empty
    records, so a request may list only the periods in use.
    """
    members = [f for f in codec.layout_of(command, version) if f.group == key]
    if not members:
        return _coerce_field(_field(command, version, key), value)
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise codec.SettingRefused(key, value, "a list of records (JSON objects)")
    members = [f for f in members if f.wire is not Wire.RESERVED]
    for index, record in enumerate(value):
        missing = [f.key for f in members if f.key not in record]
        if missing:
            raise codec.SettingRefused(f"{key}[{index}]", record,
                                       "records with " + ", ".join(f.key for f in members),
                                       f"lacks {', '.join(missing)}")
    records = [{f.key: _coerce_field(f, r[f.key]) for f in members} for r in value]
    slots = members[0].repeat
    if isinstance(slots, int):
        if len(records) > slots:
            raise codec.SettingRefused(key, len(records), f"at most {slots} records",
                                       "records are too many")
        records += [{f.key: _EMPTY.get(f.key, 0) for f in members}
                    for _ in range(slots - len(records))]
    return records


_EMPTY: dict[str, Value] = {"start": "00:00", "end": "00:00"}  # an unused slot


def _coerce_field(f: Field, value: Any) -> Value:
    if f.is_bool and isinstance(value, str):
        word = value.strip().lower()
        if word in ("on", "true", "1", "yes"):
            return True
        if word in ("off", "false", "0", "no"):
            return False
        raise codec.SettingRefused(f.key, value, "ON or OFF")
    if f.is_bool and isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and f.codes is None and not f.clock and f.wire is not Wire.TEXT:
        try:
            number = float(value)
        except ValueError:
            raise codec.SettingRefused(f.key, value, f.writable_values,
                                       "is not a number") from None
        return int(number) if number.is_integer() else number
    if isinstance(value, float) and value.is_integer() and f.scale == 1:
        return int(value)
    return value


def same(command: Command, version: int, key: str, a: Value, b: Value) -> bool:
    """Equal on the wire (so 25 and 25.0, or "general" and "General", are the same)."""
    try:
        return bool(_wire(command, version, key, a) == _wire(command, version, key, b))
    except (codec.CodecError, TypeError, AttributeError):
        return False


def _wire(command: Command, version: int, key: str, value: Value) -> Any:
    members = [f for f in codec.layout_of(command, version)
               if f.group == key and f.wire is not Wire.RESERVED]
    if not members:
        return codec.to_raw(_field(command, version, key), value)
    return [tuple(codec.to_raw(f, r.get(f.key)) for f in members) for r in value]


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
            return await self._set_clock(result)
        async with self.client.session() as session:
            version = session.version
            known = targets(version)
            unknown = sorted(k for k in request if k not in known)
            if unknown:
                raise WriteRefused(
                    f"unknown setting(s) {', '.join(unknown)} at PCU version {version}; "
                    f"known: {', '.join(sorted(known))}"
                )
            by_command: dict[int, dict[str, Value]] = {}
            for key, value in request.items():
                command, _ = known[key]
                by_command.setdefault(command.code, {})[key] = coerce(command, version, key,
                                                                      value)
            plans = [
                await self._plan(session, tables.COMMANDS[code], changes)
                for code, changes in by_command.items()
            ]
            pendings = []
            for command, block, changes in plans:  # everything validated before any write
                pending = {k: v for k, v in changes.items()
                           if not same(command, version, k, block[k], v)}
                result.unchanged += [k for k in changes if k not in pending]
                pendings.append((command, block, pending))
            self._rate_limit([k for _, _, pending in pendings for k in pending])
            for command, block, pending in pendings:
                if not pending:
                    continue
                block.update(pending)
                await session.write(command, block)
                result.sent = True
                for key in pending:
                    self.last_write[key] = self.clock()
                await self._confirm(session, version, command, pending)
                result.changed.update(pending)
            return result

    def _rate_limit(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            waited = now - self.last_write.get(key, -self.min_interval)
            if waited < self.min_interval:
                raise WriteRefused(
                    f"{key} was written {waited:.0f} s ago; wait "
                    f"{self.min_interval - waited:.0f} s (writes.min_interval)"
                )

    async def _plan(
        self, session: Session, command: Command, changes: dict[str, Value]
    ) -> tuple[Command, dict[str, Value], dict[str, Value]]:
        """Read the block, check the whole new block against the tables, refuse if unsafe."""
        version = session.version
        if command.requires_off:
            status = await _read(session, tables.RUNNING_STATUS)
            if status.get("inverter_on"):
                raise WriteRefused(
                    f"{', '.join(changes)} can only be changed while the inverter is off"
                )
        block = await self._current(session, command)
        for f in codec.layout_of(command, version):
            # a new schedule sent without its count: the count is the number of records
            if (f.group in changes and isinstance(f.repeat, str) and f.repeat not in changes
                    and len(changes[f.group]) != block.get(f.repeat)):
                changes[f.repeat] = len(changes[f.group])
        codec.build(command, version, block | changes)  # raises SettingRefused with the reason
        return command, block, changes

    async def _current(self, session: Session, command: Command) -> dict[str, Value]:
        """The write block as the inverter has it now, from the matching query."""
        version = session.version
        query = tables.readback(command, version)
        current = _in_use(command, version, await _read(session, query)) if query else {}
        block: dict[str, Value] = {}
        for f in codec.layout_of(command, version):
            name = f.group or f.key
            if name in block:
                continue
            if f.group is not None and isinstance(f.repeat, str):
                block[name] = list(current.get(name) or [])
            elif name in current:
                block[name] = current[name]
            elif f.wire is not Wire.RESERVED:
                raise WriteRefused(f"cannot read the current {name} from the inverter")
        return block

    async def _confirm(
        self, session: Session, version: int, command: Command, expected: dict[str, Value]
    ) -> None:
        """Read back until the inverter shows every new value, or give up.

        ``version`` is the one the write was built for: after a write that makes the
        inverter hang up, the session only learns it again on the next read.
        """
        query = tables.readback(command, version)
        if query is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.confirm_timeout
        delay = 0.2
        while True:
            shown = _in_use(command, version, await _read(session, query))
            wrong = {
                k: shown.get(k) for k, v in expected.items()
                if not same(command, version, k, shown.get(k), v)
            }
            if not wrong:
                return
            if loop.time() + delay > deadline:
                raise WriteRefused(
                    "written but not confirmed: the inverter still reports "
                    + ", ".join(f"{k}={v!r}" for k, v in wrong.items())
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _set_clock(self, result: WriteResult) -> WriteResult:
        now = datetime.now().astimezone()
        values = {"year": now.year, "month": now.month, "day": now.day, "hour": now.hour,
                  "minute": now.minute, "second": now.second}
        self._rate_limit([CLOCK_KEY])
        await self.client.write(tables.CLOCK, values)
        self.last_write[CLOCK_KEY] = self.clock()
        result.sent = True
        result.changed[CLOCK_KEY] = now.isoformat(timespec="seconds")
        result.unconfirmed = "sent; the inverter has no query that shows its clock"
        return result


async def _read(session: Session, query: Command) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for reading in await session.query(query):
        values.update(reading.values)
    return values


def _in_use(command: Command, version: int, values: dict[str, Value]) -> dict[str, Value]:
    """Query values with each counted record group of ``command`` cut to its count: the
    query carries every slot (16 time-of-use periods), the write only those in use."""
    for f in codec.layout_of(command, version):
        if f.group is not None and isinstance(f.repeat, str) and f.group in values:
            values[f.group] = list(values[f.group] or [])[: int(values.get(f.repeat) or 0)]
    return values


def _field(command: Command, version: int, key: str) -> Field:
    for f in codec.layout_of(command, version):
        if f.key == key and f.group is None:
            return f
    raise WriteRefused(f"{key} is not part of {command.label}")
