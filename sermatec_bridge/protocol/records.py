"""Record groups and the counts that say how many of their records are in use.

A record group is a list of records (the tariff periods, the forced charge periods).
Some layouts carry a fixed number of slots and a count field says how many of the first
ones are in use (0x95 and 0xa2 replies, the 0x71 write); others carry only the records in
use, as many as the count field says (the 0x66 write). Either way the count lives in
another field of the same layout: :data:`~.tables.GROUP_COUNTS` names it.
"""

from __future__ import annotations

from collections.abc import Mapping

from .model import Field, Value
from .tables import GROUP_COUNTS


def count_key(layout: tuple[Field, ...], group: str) -> str | None:
    """The field of ``layout`` that counts the records of ``group`` in use, if any."""
    for f in layout:
        if f.group == group and isinstance(f.repeat, str):
            return f.repeat
    key = GROUP_COUNTS.get(group)
    return key if key is not None and any(f.key == key for f in layout) else None


def slots(layout: tuple[Field, ...], group: str) -> int | None:
    """The fixed number of records ``group`` carries, or None when the count decides."""
    for f in layout:
        if f.group == group:
            return f.repeat if isinstance(f.repeat, int) else None
    return None


def groups(layout: tuple[Field, ...]) -> list[str]:
    """The record groups of a layout, in wire order."""
    return list(dict.fromkeys(f.group for f in layout if f.group is not None))


def in_use(layout: tuple[Field, ...], values: Mapping[str, Value]) -> dict[str, Value]:
    """``values`` with every counted group cut to the records its count says are in use."""
    out = dict(values)
    for group in groups(layout):
        key = count_key(layout, group)
        records = out.get(group)
        if key is None or not isinstance(records, list):
            continue
        count = out.get(key)
        if isinstance(count, int) and not isinstance(count, bool):
            out[group] = records[: max(0, count)]
    return out


def with_counts(layout: tuple[Field, ...], values: Mapping[str, Value]) -> dict[str, Value]:
    """``values`` with the count of each group that carries only its records in use set
    from the records, unless given (a 0x66 write sent with its schedule alone)."""
    out = dict(values)
    for group in groups(layout):
        key = count_key(layout, group)
        if key is not None and slots(layout, group) is None and key not in out:
            out[key] = len(out.get(group) or [])
    return out
