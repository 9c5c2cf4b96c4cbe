"""The tables as construct structures: what builds payloads, and the reference decoder.

Each layout becomes a construct ``Struct`` of adapters: one per field, one per 16-bit word
seen through bit views (``same`` fields), arrays for repeated fields and record groups,
and the bytes past the layout. :mod:`.codec` uses them to encode (:func:`.codec.encode`)
and as the interpreter that its compiled decoder is held equal to
(:func:`.codec.interpret`). Importing construct takes about 8 ms, which a command-line
read that only decodes does not pay: nothing imports this module until it is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from construct import (
    Adapter,
    Array,
    Bytes,
    Construct,
    ConstructError,
    GreedyBytes,
    Int8sb,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32sb,
    Int32ub,
    Struct,
    this,
)

from .codec import EXTRA, shape, to_raw, to_value
from .model import Field, Value, Wire

__all__ = ["ConstructError", "structure"]

_INT = {1: Int8sb, 2: Int16sb, 4: Int32sb}
_UINT = {1: Int8ub, 2: Int16ub, 4: Int32ub}


class FieldAdapter(Adapter):  # type: ignore[misc]
    """One field: raw wire quantity <-> value."""

    def __init__(self, f: Field) -> None:
        super().__init__(_raw_construct(f))
        self.f = f

    def _decode(self, obj: Any, context: Any, path: str) -> Value:
        return to_value(self.f, obj)

    def _encode(self, obj: Value, context: Any, path: str) -> Any:
        return to_raw(self.f, obj)


class WordAdapter(Adapter):  # type: ignore[misc]
    """One 16-bit word read through several views: bits, bit ranges, the whole word."""

    def __init__(self, views: tuple[Field, ...]) -> None:
        super().__init__(Int16ub)
        self.views = views

    def _decode(self, word: int, context: Any, path: str) -> dict[str, Value]:
        out = {}
        for f in self.views:
            if f.bits is None:
                out[f.key] = to_value(f, word)
            else:
                first, end = f.bits
                out[f.key] = to_value(f, word >> first & ((1 << (end - first)) - 1))
        return out

    def _encode(self, values: Mapping[str, Value], context: Any, path: str) -> int:
        word = 0
        for f in self.views:  # a whole-word view gives the base, bit views override
            if f.bits is None and values.get(f.key) is not None:
                word = to_raw(f, values[f.key])
        for f in self.views:
            if f.bits is not None and values.get(f.key) is not None:
                first, end = f.bits
                mask = ((1 << (end - first)) - 1) << first
                word = word & ~mask | to_raw(f, values[f.key]) << first
        return word


def _raw_construct(f: Field) -> Construct:
    if f.wire is Wire.TEXT:
        return Bytes(f.size) if f.size else GreedyBytes
    if f.wire in (Wire.RESERVED, Wire.ALARMS):
        return Bytes(f.size)
    return (_INT if f.wire is Wire.INT else _UINT)[f.size]


def _count(repeat: int | str) -> Any:
    return repeat if isinstance(repeat, int) else this[repeat]


@cache
def structure(code: int, since: int) -> Construct:
    """The ``Struct`` of the layout of command ``code`` that PCU ``since`` introduced,
    its members named as :func:`.codec.shape`'s elements, then :data:`.codec.EXTRA`."""
    members = []
    for e in shape(code, since):
        if e.kind == "field":
            members.append(e.name / FieldAdapter(e.fields[0]))
        elif e.kind == "word":
            members.append(e.name / WordAdapter(e.fields))
        elif e.kind == "array":
            f = e.fields[0]
            assert f.repeat is not None
            members.append(e.name / Array(_count(f.repeat), FieldAdapter(f)))
        else:
            repeat = e.fields[0].repeat
            assert repeat is not None
            record = Struct(*(f.key / FieldAdapter(f) for f in e.fields))
            members.append(e.name / Array(_count(repeat), record))
    return Struct(*members, EXTRA / GreedyBytes)
