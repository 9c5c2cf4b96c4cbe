"""Alarm and fault codes: what the set bits of the 0x1e and 0x1f replies mean.

**The mapping from bits to codes is inferred, not documented by the vendor.** The
vendor's code list numbers its codes in blocks, and the project reads them as follows
(see :data:`BLOCKS`, the one table to correct if a real inverter shows otherwise):

* 0x1f carries five 16-bit system-fault words. Word ``w``, bit ``b`` (bit 0 the least
  significant) is code ``16 * w + b + 1``: codes 1..80. The codec already turns the
  fields ``fault_word_0`` .. ``fault_word_4`` into such codes.
* 0x1e carries six 16-bit battery words (field ``battery_alarm_bits``), decoded by the
  codec into codes 1..96 *relative to the block of the battery make*: the absolute code
  is the block's base plus the relative code. The battery make that 0x98 reports picks
  the block: the vendor's list groups these alarms by battery make, 0x98 is read at
  every connection and at every PCU version, and 0x95's battery protocol (from PCU 252,
  in another poll group) uses the same code list, so it serves only when no make is
  given. A make without a known block gets the generic text "Battery alarm bit N" (N
  from 0, the least significant bit of the first word).
* From PCU 258, 0x1e also carries one summary word (field
  ``battery_summary_alarm_bits``) that the codec decodes into absolute codes 753..768,
  whatever the battery make.

The texts are the project's own wording of the vendor's list (code, device, signal,
description, level). The vendor's level is kept as :class:`Severity`: level 1 is
:attr:`Severity.MAJOR`, level 3 :attr:`Severity.MINOR`.

Code 74 ("Fan warning") is commented out in the vendor's list. It is kept here: if that
bit is ever set, a fan warning is the most likely meaning, and a named alarm is more
useful than "Unknown alarm code 74".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .tables import BATTERY_MAKES

SYSTEM_FAULT_FIELDS = tuple(f"fault_word_{n}" for n in range(5))
BATTERY_FIELD = "battery_alarm_bits"
BATTERY_SUMMARY_FIELD = "battery_summary_alarm_bits"
BATTERY_BITS = 96  # six 16-bit words


class Severity(StrEnum):
    MAJOR = "major"  # vendor level 1: faults, and warnings that stop or derate the inverter
    MINOR = "minor"  # vendor level 3: battery warnings
    UNKNOWN = "unknown"  # a code without a text


@dataclass(frozen=True)
class Block:
    """A numbered range of alarm codes: one device, or one battery make's BMS."""

    name: str  # shown as the source of the alarm
    base: int  # the code of bit 0 of the block's first word, minus one
    makes: tuple[int, ...] = ()  # battery protocol codes (tables.BATTERY_MAKES) using it
    size: int = BATTERY_BITS  # how many codes: base + 1 .. base + size

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and self.base < code <= self.base + self.size


# --------------------------------------------------------------------------------------
# THE INFERRED MAPPING. One line per block of codes; correct it here.
# A battery block spans 96 codes (base + 1 .. base + 96), i.e. the six words of 0x1e.
# --------------------------------------------------------------------------------------

INVERTER = Block("Inverter", 0, size=5 * 16)  # 0x1f, codes 1..80
BATTERY_SUMMARY = Block("Battery", 752, size=16)  # 0x1e summary word (PCU >= 258): 753..768

BLOCKS: tuple[Block, ...] = (
    INVERTER,
    Block("Pylontech HV battery", 80, makes=(2,)),
    Block("Pylontech LV battery", 176, makes=(3, 30)),
    Block("Chilwee battery", 272, makes=(5,)),  # make 5 is Chaowei, whose brand is Chilwee
    Block("Alpha ESS battery", 368, makes=(10, 17)),  # makes 10 and 17: Wotai, i.e. Alpha ESS
    Block("Shanghai Power battery", 464),  # maybe make 18 ("SHDL"); not confirmed
    Block("BYD LV battery", 560, makes=(23,)),
    Block("BYD HV battery", 656, makes=(22,)),
    BATTERY_SUMMARY,
    Block("Soluna 4K LV battery", 768, makes=(27,)),
)

# --------------------------------------------------------------------------------------
# Texts, by absolute code. M = major (vendor level 1), m = minor (vendor level 3).
# --------------------------------------------------------------------------------------

M, m = Severity.MAJOR, Severity.MINOR

TEXTS: dict[int, tuple[str, Severity]] = {
    # Inverter (0x1f), word 0
    1: ("Output overload warning", M),
    2: ("Output leakage current fault", M),
    3: ("AC output short-circuit fault", M),
    5: ("Grid phase lock failure warning", M),
    6: ("Grid phase sequence fault", M),
    7: ("Grid voltage high warning", M),
    8: ("Grid voltage low warning", M),
    9: ("Grid frequency high warning", M),
    10: ("Grid frequency low warning", M),
    15: ("Inverter soft-start fault", M),
    # word 1
    18: ("DC bus voltage unbalance warning", M),
    19: ("Primary bus overvoltage fault", M),
    20: ("Primary bus undervoltage fault", M),
    21: ("Battery-side bus hardware soft-start fault", M),
    22: ("Battery-side bus software soft-start fault", M),
    25: ("PV1 reverse connection fault", M),
    26: ("PV2 reverse connection fault", M),
    27: ("PV1 overvoltage warning", M),
    28: ("PV1 undervoltage warning", M),
    29: ("PV2 overvoltage warning", M),
    30: ("PV2 undervoltage warning", M),
    # word 2
    33: ("Battery undervoltage (end of discharge) warning", M),
    34: ("Battery overvoltage warning", M),
    36: ("Grid and load terminals swapped (single unit) fault", M),
    37: ("Battery current out of range warning", M),
    46: ("Battery SOC below lower limit, discharge stopped", M),
    47: ("Meter warning", M),
    48: ("PV too weak for the load warning", M),
    # word 3
    49: ("Relay self-test fault", M),
    50: ("PV bus hardware soft-start fault", M),
    52: ("PV bus software soft-start fault", M),
    53: ("Secondary bus hardware soft-start fault", M),
    54: ("Secondary bus software soft-start fault", M),
    63: ("Positive bus insulation resistance fault", M),
    64: ("Negative bus insulation resistance fault", M),
    # word 4
    65: ("Internal temperature high warning", M),
    66: ("Internal temperature low warning", M),
    67: ("IGBT A temperature high warning", M),
    68: ("IGBT B temperature high warning", M),
    69: ("IGBT C temperature high warning", M),
    70: ("IGBT A temperature sensor fault", M),
    71: ("IGBT B temperature sensor fault", M),
    72: ("IGBT C temperature sensor fault", M),
    74: ("Fan warning", M),  # commented out in the vendor's list; see the module docstring
    75: ("On-grid / off-grid switching warning", M),
    # Pylontech HV battery (base 80)
    81: ("Cell voltage low alarm", m),
    82: ("Cell voltage high alarm", m),
    83: ("System voltage low alarm (discharge)", m),
    84: ("System voltage high alarm (charge)", m),
    85: ("Cell temperature low alarm (charge)", m),
    86: ("Cell temperature high alarm (charge)", m),
    87: ("Cell temperature low alarm (discharge)", m),
    88: ("Cell temperature high alarm (discharge)", m),
    89: ("Charge overcurrent alarm", m),
    90: ("Discharge overcurrent alarm", m),
    91: ("Module voltage low alarm", m),
    92: ("Module voltage high alarm", m),
    97: ("Voltage sensor error", M),
    98: ("Temperature sensor fault", M),
    99: ("Internal communication fault", M),
    100: ("Input overvoltage error", M),
    101: ("Input polarity reversed error", M),
    102: ("Relay check error", M),
    103: ("Battery cell error", M),
    104: ("Other battery error", M),
    # Pylontech LV battery (base 176). The vendor lists some texts twice (186..189 and
    # 202..205; 192/193 and 208): kept as given.
    177: ("Charge overcurrent", M),
    180: ("Internal communication fault", M),
    186: ("Cell or module overvoltage", m),
    187: ("Cell or module undervoltage", m),
    188: ("Cell temperature high", m),
    189: ("Cell temperature low", m),
    192: ("Discharge overcurrent", m),
    193: ("Charge overcurrent", m),
    196: ("System fault", M),
    202: ("Cell or module overvoltage", m),
    203: ("Cell or module undervoltage", m),
    204: ("Cell temperature high", m),
    205: ("Cell temperature low", m),
    208: ("Discharge overcurrent", m),
    # Chilwee battery (base 272)
    273: ("Feed current", m),
    281: ("Temperature high", m),
    283: ("Temperature low", m),
    285: ("Charge overcurrent", m),
    287: ("Discharge overcurrent", m),
    289: ("Large temperature difference within one box", m),
    291: ("Large pack voltage difference", m),
    293: ("Large box temperature difference", m),
    295: ("Large pack temperature difference", m),
    297: ("Bus voltage high", m),
    299: ("Bus voltage low", m),
    301: ("Cell overvoltage", m),
    303: ("Cell undervoltage", m),
    # Alpha ESS battery (base 368)
    369: ("Charge overcurrent warning", m),
    370: ("Discharge overcurrent warning", m),
    371: ("Balancing fault", m),
    372: ("Balancing MOSFET fault", m),
    373: ("Battery terminal temperature high warning", m),
    374: ("Cell temperature high warning", m),
    375: ("Temperature sensor fault", m),
    376: ("Wiring harness fault", m),
    377: ("Charge temperature low warning", m),
    378: ("Discharge temperature low warning", m),
    379: ("Cell overvoltage warning", m),
    380: ("Cell undervoltage warning", m),
    381: ("Cell temperature difference warning", m),
    382: ("Cell voltage difference warning", m),
    383: ("Insulation resistance warning", m),
    384: ("LMU communication fault", m),
    385: ("High temperature warning", m),
    386: ("Temperature difference warning", m),
    387: ("Charge current warning", m),
    388: ("Discharge current warning", m),
    389: ("Cell overvoltage warning", m),
    390: ("Charging temperature low warning", m),
    391: ("Cell undervoltage warning", m),
    392: ("MOSFET temperature high warning", m),
    393: ("Breaker open warning", m),
    394: ("Module mode mismatch warning", m),
    395: ("Serial number missing warning", m),
    396: ("Slave unit communication lost", m),
    397: ("Temperature sensor error", m),
    398: ("Discharging temperature low warning", m),
    399: ("MOSFET driver fault", m),
    400: ("MOSFET fault", m),
    # Shanghai Power battery (base 464)
    465: ("Cell voltage high warning", m),
    466: ("Cell overvoltage protection", m),
    467: ("Cell voltage low warning", m),
    468: ("Cell undervoltage protection", m),
    469: ("Total voltage high warning", m),
    470: ("Total overvoltage protection", m),
    471: ("Total voltage low warning", m),
    472: ("Total undervoltage protection", m),
    473: ("Charge temperature high warning", m),
    474: ("Charge temperature high protection", m),
    475: ("Charge temperature low warning", m),
    476: ("Charge temperature low protection", m),
    477: ("Discharge temperature high warning", m),
    478: ("Discharge temperature high protection", m),
    479: ("Discharge temperature low warning", m),
    480: ("Discharge temperature low protection", m),
    481: ("Ambient temperature high warning", m),
    482: ("Ambient temperature high protection", m),
    483: ("Power stage temperature high warning", m),
    484: ("Power stage temperature high protection", m),
    485: ("Cell low temperature warning", m),
    486: ("SOC warning", m),
    487: ("Cell failure warning", m),
    488: ("Cell connection warning", m),
    489: ("Charge overcurrent warning", m),
    490: ("Charge overcurrent protection", m),
    491: ("Discharge overcurrent warning", m),
    492: ("Discharge overcurrent protection", m),
    493: ("Secondary overcurrent protection", m),
    494: ("Output short-circuit protection", m),
    495: ("Secondary overcurrent lock-out", m),
    496: ("Output short-circuit lock-out", m),
    # BYD LV battery (base 560)
    561: ("Communication fault", m),
    563: ("Battery voltage high fault", m),
    565: ("Battery voltage low fault", m),
    567: ("Battery temperature high fault", m),
    569: ("Battery temperature low fault", m),
    571: ("Charge temperature high fault", m),
    573: ("Charge temperature low fault", m),
    575: ("Battery overcurrent fault", m),
    577: ("Battery undercurrent fault", m),
    583: ("BMS internal warning", m),
    585: ("Cell imbalance warning", m),
    593: ("General warning", m),
    595: ("Battery voltage high warning", m),
    597: ("Battery voltage low warning", m),
    599: ("Battery temperature high warning", m),
    601: ("Battery temperature low warning", m),
    603: ("Charge temperature high warning", m),
    605: ("Charge temperature low warning", m),
    607: ("Battery overcurrent warning", m),
    609: ("Charge overcurrent warning", m),
    # BYD HV battery (base 656). BYD grades some alarms in levels 1..3. The vendor's
    # 683 ("discharge over-voltage 1") and 685 (a second "cell high temperature 3") look
    # like slips for "charge over-voltage 1" and "cell high temperature 1"; kept as given.
    657: ("Charge overvoltage (level 2)", m),
    658: ("Discharge undervoltage (level 2)", m),
    659: ("Cell temperature high (level 2)", m),
    660: ("Cell temperature low (level 2)", m),
    671: ("Charge overcurrent (level 2)", m),
    672: ("Discharge overcurrent (level 2)", m),
    673: ("Pre-charge failure", m),
    674: ("DC fault", m),
    676: ("Battery tripped", m),
    677: ("Battery locked", m),
    678: ("Charge / discharge circuit failure", m),
    679: ("Hardware failure", m),
    680: ("Cell temperature high (level 3)", m),
    681: ("Discharge undervoltage (level 3)", m),
    682: ("Charge overvoltage (level 3)", m),
    683: ("Discharge overvoltage (level 1)", m),
    684: ("Discharge undervoltage (level 1)", m),
    685: ("Cell temperature high (level 3)", m),
    686: ("Cell temperature low (level 1)", m),
    687: ("Charge overcurrent (level 1)", m),
    688: ("Discharge overcurrent (level 1)", m),
    689: ("Internal battery communication failure", m),
    690: ("System restart", m),
    691: ("Inconsistent cells", m),
    692: ("System temperature low (level 1)", m),
    693: ("System temperature low (level 2)", m),
    694: ("System temperature high", m),
    # Battery summary word (base 752, any make, PCU >= 258). The vendor skips 763.
    753: ("Discharge overcurrent warning", m),
    754: ("Charge overcurrent warning", m),
    755: ("Battery temperature low warning", m),
    756: ("Battery temperature high warning", m),
    757: ("Battery undervoltage warning", m),
    758: ("Battery overvoltage warning", m),
    759: ("Battery discharge overcurrent fault", m),
    760: ("Battery charge overcurrent fault", m),
    761: ("Battery temperature low fault", m),
    762: ("Battery temperature high fault", m),
    764: ("Battery undervoltage fault", m),
    765: ("Battery overvoltage fault", m),
    # Soluna 4K LV battery (base 768)
    769: ("BMS external error", m),
    770: ("BMS internal error", m),
    771: ("BMS overvoltage", m),
    772: ("BMS undervoltage", m),
    773: ("BMS charge overcurrent", m),
    774: ("BMS discharge overcurrent", m),
    775: ("BMS temperature high", m),
    776: ("BMS temperature low", m),
    777: ("BMS cell imbalance", m),
}

del M, m


@dataclass(frozen=True)
class Alarm:
    """One active alarm.

    ``code`` is the absolute alarm code, or None for a bit of a battery make whose block
    is not known; ``bit`` is then the bit of the battery words (0..95).
    """

    code: int | None
    text: str
    source: str
    severity: Severity
    bit: int | None = None

    def __str__(self) -> str:
        label = f"{self.code}" if self.code is not None else f"bit {self.bit}"
        return f"{self.source} {label}: {self.text} ({self.severity})"

    @property
    def sort_key(self) -> tuple[int, int]:
        if self.code is not None:
            return (0, self.code)
        return (1, self.bit if self.bit is not None else 0)


def block_of(code: int) -> Block | None:
    """The block a code falls in, or None if it is in none."""
    return next((block for block in BLOCKS if code in block), None)


def describe(code: int) -> str:
    """The text of an alarm code; "Unknown alarm code N" for a code without one."""
    entry = TEXTS.get(code)
    return entry[0] if entry is not None else f"Unknown alarm code {code}"


def severity(code: int) -> Severity:
    entry = TEXTS.get(code)
    return entry[1] if entry is not None else Severity.UNKNOWN


def alarm(code: int) -> Alarm:
    """The alarm of one absolute code."""
    block = block_of(code)
    return Alarm(code, describe(code), block.name if block else "Unknown", severity(code))


def make_code(battery_make: int | str | None) -> int | None:
    """A battery make (code, numeric text, or the label that the codec decodes to) as code."""
    if battery_make is None or isinstance(battery_make, bool):
        return None
    if isinstance(battery_make, int):
        return battery_make
    wanted = battery_make.strip().lower()
    if wanted.isdigit():
        return int(wanted)
    for code, label in BATTERY_MAKES.items():
        if label.lower() == wanted:
            return code
    return None


def battery_block(battery_make: int | str | None) -> Block | None:
    """The block of a battery make's alarm codes, or None if it is not known."""
    code = make_code(battery_make)
    for block in BLOCKS:
        if code is not None and code in block.makes:
            return block
    return None


def _codes(value: Any) -> list[int]:
    if not isinstance(value, Iterable) or isinstance(value, str | bytes):
        return []
    return [c for c in value if isinstance(c, int) and not isinstance(c, bool)]


def active_alarms(
    readings: Mapping[str, Any], battery_make: int | str | None = None
) -> list[Alarm]:
    """The active alarms in decoded 0x1e and 0x1f values (merged into one mapping).

    ``battery_make`` is the battery make (0x98), as code or as the decoded label; when
    None, the readings' ``battery_make``, else their ``battery_protocol`` (0x95, the same
    code list) is used if present. Missing fields count as no alarm. Sorted by code; alarms of a
    battery make without a known block come last, by bit.
    """
    if battery_make is None:
        battery_make = readings.get("battery_make") or readings.get("battery_protocol")
    found: dict[tuple[int, int], Alarm] = {}

    def add(item: Alarm) -> None:
        found.setdefault(item.sort_key, item)

    for key in SYSTEM_FAULT_FIELDS:
        for code in _codes(readings.get(key)):
            add(alarm(code))
    for code in _codes(readings.get(BATTERY_SUMMARY_FIELD)):
        add(alarm(code))
    block = battery_block(battery_make)
    make = make_code(battery_make)
    source = f"{BATTERY_MAKES[make]} battery" if make in BATTERY_MAKES else "Battery"
    for relative in _codes(readings.get(BATTERY_FIELD)):
        if block is not None:
            add(alarm(block.base + relative))
        else:
            bit = relative - 1
            add(Alarm(None, f"Battery alarm bit {bit}", source, Severity.UNKNOWN, bit))
    return sorted(found.values(), key=lambda a: a.sort_key)
