"""Tables to bytes and back, both ways.

Reply payloads decode into a :class:`Reading`; settings payloads are built from values,
after validation against the tables. A layout is seen as a row of elements (its
:func:`shape`): fields, 16-bit words read through bit views (``same`` fields), arrays of
repeated fields and record groups.

Decoding, the hot path of a bridge serving many inverters, runs compiled: on its first
use each layout becomes the source of one Python function (``struct`` unpacks the raw
quantities, one expression per field turns them into values), which is about ten times
as fast as construct's interpreter. Encoding goes through construct
(:mod:`.structures`), and so does :func:`interpret`, the reference decoder that the
tests hold the compiled one equal to for every command and PCU version. construct is
imported by the first of them only: a one-shot read from the command line never loads it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from . import records
from .model import Command, Field, Value, Wire
from .tables import COMMANDS

EXTRA = "extra"


class CodecError(ValueError):
    """A payload that does not fit the tables; the message names what and why."""


class TruncatedPayload(CodecError):
    pass


class SettingRefused(CodecError):
    """A settings value the tables do not allow (or that cannot be encoded)."""

    def __init__(self, key: str, value: Any, allowed: str, reason: str | None = None) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        self.why = reason or "is not allowed"
        super().__init__(f"{key}: {quote(value)} {self.why}; allowed: {allowed}")


QUOTE_LIMIT = 200


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to about ``limit`` characters: a bad value may be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


@dataclass(frozen=True)
class Reading:
    """A decoded payload: values by field key (record groups by group name)."""

    command: Command
    version: int
    values: dict[str, Value]
    extra: bytes = b""

    def items(self, include_hidden: bool = False) -> Iterator[tuple[Field, Value]]:
        """(field, value) in wire order; a record group yields its first field and the list."""
        seen: set[str] = set()
        for f in layout_of(self.command, self.version):
            name = f.group or f.key
            if name in seen or (f.hidden and not include_hidden and f.group is None):
                continue
            seen.add(name)
            yield f, self.values.get(name)


def layout_of(command: Command, version: int) -> tuple[Field, ...]:
    layout = command.layout(version)
    if layout is None:
        raise _not_offered(command, version)
    return layout


def _not_offered(command: Command, version: int) -> CodecError:
    return CodecError(
        f"command {command.label} ({command.name}) is not offered at PCU version {version}"
    )


# --------------------------------------------------------------------------------------
# Conversions between raw integers (or bytes) and values
# --------------------------------------------------------------------------------------

@cache  # a handful of scales, asked for every decoded value
def _digits(scale: float) -> int:
    return max(0, -math.floor(math.log10(scale) + 1e-9)) if scale < 1 else 0


def to_value(f: Field, raw: Any) -> Value:
    """The value a raw wire quantity stands for."""
    if f.wire is Wire.TEXT:
        return _text(bytes(raw))
    if f.wire is Wire.RESERVED:
        return bytes(raw).hex()
    if f.wire is Wire.ALARMS:
        return _alarm_codes(f, bytes(raw))
    if f.wire is Wire.BIT:
        return bool(raw)
    if f.flag is not None:
        on, off = f.flag
        return True if raw == on else False if raw == off else None if raw == 0 else raw
    if f.codes is not None:
        return f.codes.get(raw, raw)
    if f.clock:
        return _clock(raw)
    if f.scale != 1:
        scaled = raw * f.scale
        return round(scaled, _digits(f.scale)) if f.scale < 1 else round(scaled)
    return int(raw)


def _text(raw: bytes) -> str:
    """The text ends at the first NUL, as the vendor's app reads it."""
    return raw.split(b"\x00", 1)[0].decode("latin-1")


def _clock(raw: int) -> str | int:
    return f"{raw // 60:02d}:{raw % 60:02d}" if 0 <= raw <= 1440 else raw


def to_raw(f: Field, value: Value) -> Any:
    """The raw wire quantity for a value; :class:`SettingRefused` if it has none."""
    if f.wire is Wire.TEXT:
        return _text_raw(f, value)
    if f.wire is Wire.RESERVED:
        kept = bytes(f.size) if value is None else (
            bytes.fromhex(value) if isinstance(value, str) else bytes(value)
        )
        if len(kept) != f.size:
            raise SettingRefused(f.key, value, f"{f.size} bytes")
        return kept
    if f.wire is Wire.ALARMS:
        return _alarm_bytes(f, value)
    if f.wire is Wire.BIT:
        if not isinstance(value, bool):
            raise SettingRefused(f.key, value, "true or false")
        return int(value)
    if f.flag is not None and isinstance(value, bool | None):
        on, off = f.flag
        return 0 if value is None else on if value else off
    if f.codes is not None and isinstance(value, str):
        for code, label in f.codes.items():
            if label.lower() == value.strip().lower():
                return code
        raise SettingRefused(f.key, value, f.writable_values, "is not a known value")
    if f.clock and isinstance(value, str):
        return _minutes(f, value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingRefused(f.key, value, f.writable_values, "has the wrong type")
    if not math.isfinite(value):
        raise SettingRefused(f.key, value, f.writable_values, "is not a finite number")
    raw = value / f.scale
    if not math.isclose(raw, round(raw), abs_tol=1e-6):
        raise SettingRefused(f.key, value, f"multiples of {f.scale:g}", "has too many decimals")
    return _fit(f, round(raw), value)


def _fit(f: Field, raw: int, value: Value) -> int:
    if f.wire in (Wire.BIT, Wire.BITS):
        assert f.bits is not None
        lo, hi = 0, (1 << (f.bits[1] - f.bits[0])) - 1
    elif f.wire is Wire.INT:
        lo, hi = -(1 << (8 * f.size - 1)), (1 << (8 * f.size - 1)) - 1
    else:
        lo, hi = 0, (1 << (8 * f.size)) - 1
    if not lo <= raw <= hi:
        raise SettingRefused(f.key, value, f"a raw value from {lo} to {hi}", "does not fit")
    return raw


def _minutes(f: Field, value: str) -> int:
    try:
        hours, minutes = (int(part) for part in value.split(":"))
    except ValueError:
        raise SettingRefused(f.key, value, "a time as HH:MM", "is not a time") from None
    if not (0 <= minutes < 60 and 0 <= hours * 60 + minutes <= 1440):
        raise SettingRefused(f.key, value, "00:00 to 24:00", "is not a time of day")
    return hours * 60 + minutes


def _text_raw(f: Field, value: Value) -> bytes:
    if not isinstance(value, str):
        raise SettingRefused(f.key, value, "text", "has the wrong type")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise SettingRefused(f.key, value, "plain ASCII text", "has characters that") from None
    if f.size and len(raw) > f.size:
        raise SettingRefused(f.key, value, f"at most {f.size} characters", "is too long")
    return raw.ljust(f.size, b"\x00") if f.size else raw


def _alarm_codes(f: Field, raw: bytes) -> list[int]:
    codes = []
    for index in range(len(raw) // 2):
        word = int.from_bytes(raw[2 * index : 2 * index + 2], "big")
        codes += [f.alarm_base + 16 * index + b + 1 for b in range(16) if word >> b & 1]
    return codes


def _alarm_bytes(f: Field, codes: Value) -> bytes:
    words = [0] * (f.size // 2)
    for code in codes or ():
        index, position = divmod(int(code) - f.alarm_base - 1, 16)
        if not 0 <= index < len(words):
            raise SettingRefused(f.key, code, f"codes {f.alarm_base + 1}.."
                                 f"{f.alarm_base + 8 * f.size}", "is out of this field")
        words[index] |= 1 << position
    return b"".join(w.to_bytes(2, "big") for w in words)


# --------------------------------------------------------------------------------------
# The shape of a layout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """Bytes of a layout read as one: a field, a 16-bit word and its views, an array, or
    a record group. The name keys the decoded values, but for a word's: each view is a
    key of its own."""

    name: str
    fields: tuple[Field, ...]
    kind: str  # "field", "word", "array", "records"


@cache
def shape(code: int, since: int) -> tuple[Element, ...]:
    """The elements of the layout of command ``code`` that PCU ``since`` introduced."""
    elements: list[Element] = []
    for f in COMMANDS[code].layouts[since]:
        last = elements[-1] if elements else None
        if f.same and last is not None:
            name = last.name if last.kind == "word" else f"_word_{last.fields[0].key}"
            elements[-1] = Element(name, (*last.fields, f), "word")
        elif f.group is not None:
            if last is not None and last.kind == "records" and last.name == f.group:
                elements[-1] = Element(f.group, (*last.fields, f), "records")
            else:
                elements.append(Element(f.group, (f,), "records"))
        elif f.repeat is not None:
            elements.append(Element(f.key, (f,), "array"))
        elif f.wire in (Wire.BIT, Wire.BITS):
            elements.append(Element(f"_word_{f.key}", (f,), "word"))
        else:
            elements.append(Element(f.key, (f,), "field"))
    return tuple(elements)


def _since(command: Command, version: int) -> int:
    """The PCU version whose layout of ``command`` applies at ``version`` (one look at
    the layouts: every decode asks)."""
    since = max((v for v in command.layouts if v <= version), default=None)
    if since is None:
        raise _not_offered(command, version)
    return since


def fixed_size(command: Command, version: int) -> int | None:
    """The payload size of a layout, or None when it depends on a count."""
    size = 0
    for e in shape(command.code, _since(command, version)):
        f = e.fields[0]
        if e.kind == "word":
            size += 2
        elif e.kind == "field":
            if f.wire is Wire.TEXT and f.size == 0:
                return None
            size += f.size
        elif isinstance(f.repeat, int):
            size += f.repeat * sum(x.size for x in e.fields)
        else:
            return None
    return size


# --------------------------------------------------------------------------------------
# The compiled decoder
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decoder:
    """One layout's decoder: ``run(payload)`` gives (values, extra bytes) or raises
    ``struct.error`` when the payload is too short for the layout (or a count is
    negative); ``source`` is its Python source, for reading and debugging."""

    source: str
    run: Callable[[bytes], tuple[dict[str, Value], bytes]]


class _Names:
    """The objects that generated source refers to, each under a short name."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self._names: dict[int, str] = {}

    def __call__(self, obj: Any) -> str:
        name = self._names.setdefault(id(obj), f"_{len(self.objects)}")
        self.objects[name] = obj
        return name


def _format(f: Field) -> str:
    """The ``struct`` format of a field's raw quantity (as :mod:`.structures` reads it)."""
    if f.wire in (Wire.TEXT, Wire.RESERVED, Wire.ALARMS):
        return f"{f.size}s"
    return ("bhi" if f.wire is Wire.INT else "BHI")[(1, 2, 4).index(f.size)]


def _value_source(f: Field, raw: str, names: _Names) -> str:
    """A Python expression equal to ``to_value(f, raw)``, where ``raw`` is an expression."""
    if f.wire is Wire.TEXT:
        return f"{names(_text)}({raw})"
    if f.wire is Wire.RESERVED:
        return f"{raw}.hex()"
    if f.wire is Wire.ALARMS:
        return f"{names(partial(_alarm_codes, f))}({raw})"
    if f.wire is Wire.BIT:
        return f"({raw} != 0)"
    if f.flag is not None:
        on, off = f.flag
        return f"(True if {raw} == {on} else False if {raw} == {off} else None if {raw} == 0 " \
               f"else {raw})"
    if f.codes is not None:
        return f"{names(f.codes)}.get({raw}, {raw})"
    if f.clock:
        return f"{names(_clock)}({raw})"
    if f.scale == 1:
        return raw
    if f.scale > 1 and float(f.scale).is_integer():
        return f"{raw} * {int(f.scale)}"
    tens = 10 ** _digits(f.scale)
    if f.scale < 1 and math.isclose(round(f.scale * tens) / tens, f.scale, rel_tol=1e-12):
        # round(raw * scale, digits) is the float nearest to raw * m / 10**digits, and
        # so is the correctly rounded division (the differential tests hold them equal)
        m = round(f.scale * tens)
        return f"{raw} / {tens}" if m == 1 else f"{raw} * {m} / {tens}"
    return f"{names(partial(to_value, f))}({raw})"


def _record_source(fields: tuple[Field, ...], raw: str, names: _Names) -> str:
    """A record as a dict expression; ``raw`` formats a field's position in it."""
    items = ", ".join(f"{f.key!r}: {_value_source(f, raw.format(m), names)}"
                      for m, f in enumerate(fields))
    return f"{{{items}}}"


def _fixed_count(e: Element) -> int:
    repeat = e.fields[0].repeat
    return repeat if isinstance(repeat, int) else 1


def _is_fixed(e: Element) -> bool:
    f = e.fields[0]
    return not isinstance(f.repeat, str) and not (f.wire is Wire.TEXT and f.size == 0)


def _fixed_run(run: list[Element], names: _Names) -> list[str]:
    """Statements that decode consecutive fixed-size elements with one ``unpack_from``."""
    parser = struct.Struct(">" + "".join(
        "H" if e.kind == "word" else "".join(map(_format, e.fields)) * _fixed_count(e)
        for e in run))
    lines = [f"r = {names(parser.unpack_from)}(payload, at)"]
    index = 0
    for e in run:
        f = e.fields[0]
        if e.kind == "word":
            for view in e.fields:
                word = f"r[{index}]"
                if view.bits is not None:
                    first, end = view.bits
                    word = f"(r[{index}] >> {first} & {(1 << (end - first)) - 1})"
                lines.append(f"v[{view.key!r}] = {_value_source(view, word, names)}")
            index += 1
            continue
        if e.kind == "field":
            value = _value_source(f, f"r[{index}]", names)
        elif e.kind == "array":
            end = index + _fixed_count(e)
            value = f"[{_value_source(f, 'x', names)} for x in r[{index}:{end}]]"
        else:
            width = len(e.fields)
            end = index + width * _fixed_count(e)
            record = _record_source(e.fields, "r[j + {}]", names)
            value = f"[{record} for j in range({index}, {end}, {width})]"
        lines.append(f"v[{e.name!r}] = {value}")
        index += len(e.fields) * _fixed_count(e)
    return [*lines, f"at += {parser.size}"]


def _counted(e: Element, names: _Names) -> list[str]:
    """Statements that decode an array or record group counted by an earlier field."""
    parser = struct.Struct(">" + "".join(_format(f) for f in e.fields))
    if e.kind == "array":
        value = f"[{_value_source(e.fields[0], 'x[0]', names)} for x in records]"
    else:
        value = f"[{_record_source(e.fields, 'x[{}]', names)} for x in records]"
    return [
        f"n = v[{e.fields[0].repeat!r}] * {parser.size}",
        "if n < 0 or len(payload) - at < n:",
        "    raise struct.error('the payload is shorter than its count says')",
        f"records = {names(parser.iter_unpack)}(payload[at:at + n])",
        f"v[{e.name!r}] = {value}",
        "at += n",
    ]


@cache
def _decoder(code: int, since: int) -> _Decoder:
    names = _Names()
    body = ["at = 0", "v = {}"]
    run: list[Element] = []
    for e in shape(code, since):
        if _is_fixed(e):
            run.append(e)
            continue
        if run:
            body += _fixed_run(run, names)
            run = []
        if e.kind == "field":  # text to the end of the payload
            body += [f"v[{e.name!r}] = {_value_source(e.fields[0], 'payload[at:]', names)}",
                     "at = len(payload)"]
        else:
            body += _counted(e, names)
    if run:
        body += _fixed_run(run, names)
    source = "def run(payload):\n" + "".join(f"    {line}\n" for line in body) + \
        "    return v, payload[at:]\n"
    scope = {"struct": struct, **names.objects}
    exec(compile(source, f"<decoder 0x{code:02x} PCU {since}>", "exec"), scope)
    return _Decoder(source, scope["run"])


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def decode(command: Command, version: int, payload: bytes) -> Reading:
    """Decode a reply payload. Bytes past the layout are kept in ``extra``, never an error."""
    since = _since(command, version)
    payload = bytes(payload)
    try:
        values, extra = _decoder(command.code, since).run(payload)
    except struct.error:
        raise _why_not(command, version, payload) from None
    return Reading(command, version, values, extra)


def interpret(command: Command, version: int, payload: bytes) -> Reading:
    """:func:`decode` through construct's interpreter: the reference for the compiled path."""
    from .structures import ConstructError, structure

    since = _since(command, version)
    try:
        parsed = structure(command.code, since).parse(payload)
    except ConstructError as exc:
        raise _why_not(command, version, payload) from exc
    values: dict[str, Value] = {}
    for e in shape(command.code, since):
        item = parsed[e.name]
        if e.kind == "word":
            values.update(item)
        elif e.kind == "records":
            values[e.name] = [{f.key: r[f.key] for f in e.fields} for r in item]
        elif e.kind == "array":
            values[e.name] = list(item)
        else:
            values[e.name] = item
    return Reading(command, version, values, bytes(parsed[EXTRA]))


def _why_not(command: Command, version: int, payload: bytes) -> CodecError:
    """Why a payload did not parse: too short for its layout, or a count that is no count."""
    since = _since(command, version)
    size, counts = 0, {}
    for e in shape(command.code, since):
        f = e.fields[0]
        if e.kind in ("field", "word") and f.wire in (Wire.INT, Wire.UINT):
            raw = payload[size : size + f.size]
            if len(raw) == f.size:
                counts[f.key] = int.from_bytes(raw, "big", signed=f.wire is Wire.INT)
        if e.kind == "word":
            size += 2
        elif e.kind == "field":
            size += f.size
        elif isinstance(f.repeat, int):
            size += f.repeat * sum(x.size for x in e.fields)
        else:
            count = counts.get(str(f.repeat))
            if count is None:
                break
            if count < 0:
                return CodecError(f"{command.label} payload: {f.repeat} is {count} (raw "
                                  f"0x{count & 0xFFFF:04x}), which is not a number of records")
            announced = size + count * sum(x.size for x in e.fields)
            return TruncatedPayload(
                f"{command.label} payload of {len(payload)} bytes is shorter than the "
                f"{announced} bytes that its {f.repeat} of {count} announces (PCU {since})")
    return TruncatedPayload(f"{command.label} payload of {len(payload)} bytes is shorter "
                            f"than the {size} bytes that PCU {since} defines")


def encode(command: Command, version: int, values: Mapping[str, Value]) -> bytes:
    """Encode values into a payload, without range checks (replies, round trips)."""
    from .structures import ConstructError, structure

    since = _since(command, version)
    data: dict[str, Any] = {EXTRA: bytes(values.get(EXTRA, b""))}
    for e in shape(command.code, since):
        if e.kind == "word":
            data[e.name] = {f.key: values.get(f.key) for f in e.fields}
        elif e.kind == "records":
            data[e.name] = [
                {f.key: r.get(f.key) for f in e.fields} for r in values.get(e.name) or []
            ]
        else:
            data[e.name] = values.get(e.name)
            if e.name not in values and e.fields[0].wire is not Wire.RESERVED:
                raise SettingRefused(e.name, None, e.fields[0].writable_values, "is missing")
    try:
        return bytes(structure(command.code, since).build(data))
    except SettingRefused:
        raise
    except ConstructError as exc:
        raise CodecError(f"{command.label}: cannot encode: {exc}") from exc


def validate(command: Command, version: int, values: Mapping[str, Value],
             only: Collection[str] | None = None) -> None:
    """Refuse values that the tables do not allow for a write of ``command``.

    ``only`` names the settings (fields or record groups) to check against the tables'
    limits; the others need only be present and encodable (kept as the inverter has them).
    """
    layout = layout_of(command, version)
    names = {f.group or f.key for f in layout}
    unknown = sorted(k for k in values if k not in names and k != EXTRA)
    if unknown:
        raise SettingRefused(unknown[0], values[unknown[0]],
                             f"the settings of {command.label}: {', '.join(sorted(names))}",
                             "is not a setting of this command")
    for f in layout:
        if f.wire is Wire.RESERVED:
            continue
        if only is not None and (f.group or f.key) not in only:
            if (f.group or f.key) not in values:
                raise SettingRefused(f.group or f.key, None, f.writable_values,
                                     "is missing (a write carries the whole block)")
            continue
        if f.group is not None:
            records = values.get(f.group)
            if not isinstance(records, list):
                raise SettingRefused(f.group, records, "a list of records", "is missing")
            if isinstance(f.repeat, int) and len(records) != f.repeat:
                raise SettingRefused(f.group, len(records), f"exactly {f.repeat} records",
                                     "records is the wrong number")
            for index, record in enumerate(records):
                name = f"{f.group}[{index}].{f.key}"
                if not isinstance(record, Mapping) or f.key not in record:
                    raise SettingRefused(name, None, f.writable_values, "is missing")
                _check(f, name, record[f.key])
            if isinstance(f.repeat, str) and values.get(f.repeat) != len(records):
                raise SettingRefused(f.repeat, values.get(f.repeat),
                                     f"the number of {f.group} records ({len(records)})",
                                     "does not match")
            continue
        if f.key not in values:
            raise SettingRefused(f.key, None, f.writable_values,
                                 "is missing (a write carries the whole block)")
        _check(f, f.key, values[f.key])


def _check(f: Field, name: str, value: Value) -> None:
    """One value against its field: type, allowed values and range, in the user's units."""
    if f.flag is not None and not isinstance(value, bool | None):
        why = "is not allowed" if isinstance(value, int | float) else "has the wrong type"
        raise SettingRefused(name, value, f.writable_values, why)
    if f.flag is not None and value is None and not f.unset_allowed:
        raise SettingRefused(name, value, f.writable_values)  # 0x64 takes 0x55 or 0xaa
    if f.wire is Wire.TEXT and f.limits is not None and isinstance(value, str):
        lo, hi = f.limits
        if not lo <= len(value) <= hi:
            raise SettingRefused(name, value, f"{lo:g} to {hi:g} characters")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if f.limits is not None and is_number and not f.clock and f.codes is None:
        lo, hi = f.limits
        if not (math.isfinite(value) and lo <= value <= hi):
            raise SettingRefused(name, value, f.writable_values, "is out of range")
    try:
        raw = to_raw(f, value)  # type and encodability
    except SettingRefused as exc:
        raise SettingRefused(name, value, exc.allowed, exc.why) from None
    if f.codes is not None and raw not in f.codes:  # limits may hold codes without a name
        unnamed = f.limits is not None and f.limits[0] <= raw <= f.limits[1]
        raise SettingRefused(name, value, f.writable_values,
                             "has no known meaning, so it is not written" if unnamed else None)
    if f.limits is not None and (f.clock or f.codes is not None):
        lo, hi = f.limits
        if not lo <= raw <= hi:
            raise SettingRefused(name, value, f.writable_values, "is out of range")


def build(command: Command, version: int, values: Mapping[str, Value],
          only: Collection[str] | None = None) -> bytes:
    """A validated settings payload (see :func:`validate` for ``only``). Counts of record
    groups may be left out."""
    full = records.with_counts(layout_of(command, version), values)
    validate(command, version, full, only)
    return encode(command, version, full)


def decode_payload(code: int, version: int, payload: bytes) -> Reading:
    command = COMMANDS.get(code)
    if command is None:
        raise CodecError(f"unknown command 0x{code:02x}")
    return decode(command, version, payload)

