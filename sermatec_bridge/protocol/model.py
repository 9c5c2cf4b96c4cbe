"""The vocabulary of the protocol tables: what a field and a command are.

The tables themselves live in :mod:`sermatec_bridge.protocol.tables`; this module only
declares the shapes, plus small factories that keep each table line short and readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Wire(StrEnum):
    """How a field sits on the wire (all multi-byte integers are big-endian)."""

    INT = "int"  # signed integer of 1, 2 or 4 bytes
    UINT = "uint"  # unsigned integer of 1, 2 or 4 bytes
    HEX = "hex"  # raw unsigned code (flag pairs such as 0xee00 / 0x00ee, constants)
    TEXT = "text"  # ASCII, NUL padded; size 0 means "the rest of the payload"
    BIT = "bit"  # one bit of a 16-bit word
    BITS = "bits"  # bits [first, end) of a 16-bit word: the end bit is excluded
    ALARMS = "alarms"  # 16-bit words whose set bits are alarm codes
    RESERVED = "reserved"  # bytes kept as they are and never shown


class Kind(StrEnum):
    QUERY = "query"  # a request that the inverter answers with one or more frames
    SETTINGS = "settings"  # a write of inverter settings; no reply frame
    NETWORK = "network"  # a write of Wi-Fi / cloud settings of the Wi-Fi module; no reply
    SPECIAL = "special"  # the register exchange 0xbb and its write 0xba


Value = Any
"""A decoded value: int, float, str, bool, None, a list of codes or a list of records."""


@dataclass(frozen=True)
class Field:
    """One field of a command's payload, in the project's own words.

    ``scale`` turns the raw integer into the value in ``unit`` (an SI unit, or one that
    Home Assistant accepts for the field's device class). ``codes`` names coded values;
    ``flag`` is the (on, off) raw pair of a switch-like field. ``limits`` is the range a
    settings write accepts, in the unit. ``note`` records where this table deliberately
    differs from the vendor's, and why.
    """

    key: str
    name: str
    wire: Wire = Wire.INT
    size: int = 2
    scale: float = 1
    unit: str | None = None
    codes: Mapping[int, str] | None = None
    flag: tuple[int, int] | None = None
    clock: bool = False  # minutes after midnight, shown as "HH:MM"
    bits: tuple[int, int] | None = None  # [first, end) bit of the word
    same: bool = False  # reads the same word as the field before it
    repeat: int | str | None = None  # a fixed count, or the key of the field holding it
    group: str | None = None  # fields with one group form one repeated record
    limits: tuple[float, float] | None = None
    alarm_base: int = 0  # the alarm code of bit 0 of the first word, minus one
    secret: bool = False  # never published nor logged (Wi-Fi passwords)
    hidden: bool = False  # decoded, but not offered as an entity
    # Home Assistant hints
    device_class: str | None = None
    state_class: str | None = None
    category: str | None = None  # "diagnostic" or "config"
    precision: int | None = None
    note: str | None = None

    @property
    def is_numeric(self) -> bool:
        return (
            self.wire in (Wire.INT, Wire.UINT, Wire.BITS, Wire.HEX)
            and self.codes is None
            and self.flag is None
            and not self.clock
        )

    @property
    def is_bool(self) -> bool:
        return self.wire is Wire.BIT or self.flag is not None

    @property
    def unset_allowed(self) -> bool:
        """A flag that may be written as 0 ("not set"): the vendor's tri-state pairs."""
        return self.flag in (EE_FLAG, DAY_FLAG)

    @property
    def writable_values(self) -> str:
        """What a write accepts, in words, for refusal messages."""
        if self.flag is not None:
            return "true, false or null (not set)" if self.unset_allowed else "true or false"
        if self.codes is not None:
            return "one of " + ", ".join(f"{c} ({n!r})" for c, n in self.codes.items())
        if self.clock:
            return "a time of day from 00:00 to 24:00"
        if self.limits is not None:
            lo, hi = self.limits
            return f"from {_num(lo)} to {_num(hi)}" + (f" {self.unit}" if self.unit else "")
        return "a number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Command:
    """One command code, with its payload layout per PCU firmware version.

    ``layouts`` maps the first PCU version that uses a layout to that layout; an inverter
    uses the newest layout at or below its own version. ``replies`` lists the frames that
    answer a query, in order; writes get none. ``readback`` names the query whose reply
    shows the values a settings write sets.
    """

    code: int
    key: str
    name: str
    kind: Kind
    layouts: Mapping[int, tuple[Field, ...]]
    replies: tuple[int, ...] = ()
    readback: int | None = None
    closes_connection: bool = False
    requires_off: bool = False  # a write the inverter must be switched off for
    note: str | None = None
    since: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "since", min(self.layouts))

    def layout(self, version: int) -> tuple[Field, ...] | None:
        """The fields at this PCU version (already normalised), or None if not offered."""
        usable = [v for v in self.layouts if v <= version]
        return self.layouts[max(usable)] if usable else None

    @property
    def is_write(self) -> bool:
        return self.kind in (Kind.SETTINGS, Kind.NETWORK) or (
            self.kind is Kind.SPECIAL and not self.replies
        )

    @property
    def label(self) -> str:
        return f"0x{self.code:02x}"


# --------------------------------------------------------------------------------------
# Factories: one per kind of quantity, so that a table line says what the field *is*.
# --------------------------------------------------------------------------------------

MEASUREMENT = "measurement"
DIAGNOSTIC = "diagnostic"
CONFIG = "config"


def _make(key: str, name: str, defaults: dict[str, Any], kw: dict[str, Any]) -> Field:
    """A field from a factory's defaults, any of which a table line may override."""
    return Field(key, name, **(defaults | kw))


def _measured(unit: str, device_class: str, scale: float, precision: int | None,
              wire: Wire) -> dict[str, Any]:
    return {
        "wire": wire,
        "unit": unit,
        "device_class": device_class,
        "state_class": MEASUREMENT,
        "scale": scale,
        "precision": precision,
    }


def volts(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, _measured("V", "voltage", 0.1, 1, Wire.UINT), kw)


def amps(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, _measured("A", "current", 0.1, 1, Wire.INT), kw)


def watts(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, _measured("W", "power", 1, 0, Wire.INT), kw)


def vars_(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, _measured("var", "reactive_power", 1, 0, Wire.INT), kw)


def volt_amps(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, _measured("VA", "apparent_power", 1, 0, Wire.INT), kw)


def hertz(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, _measured("Hz", "frequency", 0.01, 2, Wire.UINT), kw)


def celsius(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, _measured("°C", "temperature", 0.1, 1, Wire.INT), kw)


def power_factor(key: str, name: str, **kw: Any) -> Field:
    defaults: dict[str, Any] = {
        "scale": 0.001,
        "device_class": "power_factor",
        "state_class": MEASUREMENT,
        "precision": 3,
    }
    return _make(key, name, defaults, kw)


def percent(key: str, name: str, **kw: Any) -> Field:
    defaults: dict[str, Any] = {"unit": "%", "state_class": MEASUREMENT, "precision": 0}
    return _make(key, name, defaults, kw)


def energy(key: str, name: str, scale: float, **kw: Any) -> Field:
    """An energy counter in kWh: Home Assistant's Energy dashboard can use it."""
    defaults: dict[str, Any] = {
        "scale": scale,
        "unit": "kWh",
        "device_class": "energy",
        "state_class": "total_increasing",
        "precision": 1,
    }
    return _make(key, name, defaults, kw)


def number(key: str, name: str, **kw: Any) -> Field:
    """A plain integer without unit (counts, addresses, coded values not yet named)."""
    return _make(key, name, {}, kw)


def coded(key: str, name: str, codes: Mapping[int, str], **kw: Any) -> Field:
    return _make(key, name, {"codes": codes, "device_class": "enum"}, kw)


EE_FLAG = (0xEE00, 0x00EE)
DAY_FLAG = (1, 3)
"""A 2-bit weekday switch of 0x71 / 0xa2: 1 on, 3 off, 0 not set. The vendor's app maps
these codes to its usual tri-state (1 on, 2 off, 0 not set), as it does 0xee00 / 0x00ee."""


def flag(key: str, name: str, **kw: Any) -> Field:
    """A switch-like setting carried as the pair 0xee00 (on) / 0x00ee (off)."""
    return _make(key, name, {"wire": Wire.HEX, "flag": EE_FLAG}, kw)


def bit(key: str, name: str, position: int, same: bool = True, **kw: Any) -> Field:
    return Field(key, name, Wire.BIT, bits=(position, position + 1), same=same, **kw)


def bits(key: str, name: str, first: int, end: int, same: bool = True, **kw: Any) -> Field:
    return Field(key, name, Wire.BITS, bits=(first, end), same=same, **kw)


def clock(key: str, name: str, **kw: Any) -> Field:
    return _make(key, name, {"clock": True, "limits": (0, 1440)}, kw)


def text(key: str, name: str, size: int, **kw: Any) -> Field:
    return _make(key, name, {"wire": Wire.TEXT, "size": size}, kw)


def reserved(key: str, size: int, **kw: Any) -> Field:
    return Field(key, "Reserved", Wire.RESERVED, size=size, hidden=True, **kw)


def alarms(key: str, name: str, size: int, base: int, **kw: Any) -> Field:
    return Field(key, name, Wire.ALARMS, size=size, alarm_base=base, hidden=True, **kw)
