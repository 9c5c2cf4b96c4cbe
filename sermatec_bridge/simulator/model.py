"""The simulated inverter: its state, its physics and its answers, without any I/O.

:class:`InverterModel` answers a request (command code and payload) with the reply
frames' payloads, built with the project's codec from its state, so the simulator
speaks exactly the protocol the tables describe.

Physics, on the simulated local time of day (an injectable clock plus the offset a 0x68
write sets): PV follows a daylight curve from 06:00 to 20:00 with slow "cloud" noise;
the load has a morning and an evening bump plus noise; the battery takes the PV
surplus (or covers the deficit) within its power limits and the SOC limits; the grid
takes the rest, and PV is curtailed at the export limit. The SOC and every energy
counter integrate those powers over the clock's time, in steps of at most a minute.

Sign conventions (the simulator's choice: the vendor table does not state them):
battery power and current are positive while the battery charges; grid power and
current are positive while the inverter exports to the grid.

The register exchange 0xbb, as this project models it (the real one is not public):

* part 1: a 0xbb request whose payload is the register count (2 bytes, 1..10); the
  inverter acknowledges with a 0xbb frame whose payload echoes the count;
* part 2: a 0xbb request whose payload is the addresses, 2 bytes each, as many as the
  count; the reply is a 0xbb frame carrying the count and (address, value) pairs,
  2 + 2 bytes each (registers the map lacks read 0);
* after part 1, any frame other than a valid part 2 (another command, a part 2 of the
  wrong length, a frame with a bad checksum) blocks the inverter: it answers nothing
  and applies no write until :meth:`InverterModel.power_cycle`. A part 1 with an
  invalid count is logged and ignored.

A 0xba write sets registers: the count, then (address, value) pairs. The register map
is illustrative, not the real inverter's.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as time_of_day

import structlog

from ..protocol import codec, tables
from ..protocol.model import Command, Field, Kind, Value, Wire
from ..protocol.records import count_key, in_use, slots

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
"""A source of local wall time (naive datetimes); ``datetime.now`` by default."""



def parse_time_of_day(text: str) -> time_of_day:
    """ "HH:MM" (00:00 to 23:59) as a time; ValueError with the reason otherwise."""
    hours, _, minutes = text.strip().partition(":")
    if hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60:
        return time_of_day(int(hours), int(minutes))
    raise ValueError(f"{text!r} is not a time of day (HH:MM, 00:00 to 23:59)")


def simulated_clock(start: time_of_day | None = None, scale: float = 1.0) -> Clock:
    """Local time that starts today at ``start`` (now if None) and runs ``scale`` times fast.

    A day's light in minutes for the demo and for tests: at scale 60, a minute is an hour.
    """
    if not 0 < scale <= 86400:
        raise ValueError(f"time scale {scale} is not between 0 and 86400")
    origin = datetime.now()
    begin = origin if start is None else datetime.combine(origin.date(), start)
    started = time.monotonic()
    return lambda: begin + timedelta(seconds=(time.monotonic() - started) * scale)


DEFAULT_SERIAL = "ST5K0SIMULATOR0001"

# name -> (model code, rated power in W)
MODELS: dict[str, tuple[int, int]] = {
    "3kw": (5, 3000),
    "5kw": (2, 5000),
    "6kw": (3, 6000),
    "10kw": (1, 10000),
}
THREE_PHASE_CODES = frozenset({1})

DEFAULT_REGISTERS: dict[int, int] = {
    0x1000: 2300,  # nominal grid voltage, 0.1 V
    0x1001: 5000,  # nominal grid frequency, 0.01 Hz
    0x1002: 5000,  # grid export limit, W
    0x1003: 20,  # grid SOC lower limit, %
    0x1004: 10,  # off-grid SOC lower limit, %
    0x1010: 1,  # operating mode code
}

DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
"""The day fields of 0x71 / 0xa2, in wire order."""

_FORCED_LAYOUT = tables.FORCED_SCHEDULE.layouts[500]  # what counts the forced periods

MAX_STEP = 60.0  # seconds of simulated time per integration step
MAX_STEPS = 20_000  # bounds the work of one update after a long pause


@dataclass
class Outcome:
    """What the inverter does with one request: reply frames, and whether it hangs up."""

    replies: list[tuple[int, bytes]] = field(default_factory=list)
    close: bool = False


@dataclass
class Live:
    """Instantaneous powers in W (see the module docstring for the signs)."""

    pv1: float = 0.0
    pv2: float = 0.0
    load: float = 0.0
    battery: float = 0.0
    grid: float = 0.0
    frequency: float = 50.0

    @property
    def pv(self) -> float:
        return self.pv1 + self.pv2

    @property
    def inverter(self) -> float:
        """AC power the inverter delivers (PV minus what goes into the battery)."""
        return self.pv - self.battery


@dataclass
class Counter:
    """An energy counter in kWh (savings: in tariff currency), today and lifetime."""

    today: float = 0.0
    total: float = 0.0
    half_hours: list[float] = field(default_factory=lambda: [0.0] * 48)
    days: list[float] = field(default_factory=lambda: [0.0] * 31)
    months: list[float] = field(default_factory=lambda: [0.0] * 12)
    years: list[float] = field(default_factory=lambda: [0.0] * 5)  # the last is this year

    def add(self, amount: float, when: datetime) -> None:
        self.today += amount
        self.total += amount
        self.half_hours[(when.hour * 60 + when.minute) // 30] += amount
        self.days[when.day - 1] += amount
        self.months[when.month - 1] += amount
        self.years[-1] += amount

    def roll(self, old: date, new: date) -> None:
        """A new day: today's counts restart (and the month's, the year's as they change)."""
        self.today = 0.0
        self.half_hours = [0.0] * 48
        if (old.year, old.month) != (new.year, new.month):
            self.days = [0.0] * 31
        if old.year != new.year:
            self.months = [0.0] * 12
            shift = min(5, abs(new.year - old.year))
            self.years = (self.years[shift:] + [0.0] * shift)[-5:]

    def history(self, prefix: str) -> dict[str, list[float]]:
        return {
            f"{prefix}_by_half_hour": list(self.half_hours),
            f"{prefix}_by_day": list(self.days),
            f"{prefix}_by_month": list(self.months),
            f"{prefix}_by_year": list(self.years),
        }


def default_settings(model_code: int, rated: int, battery_make: int) -> dict[str, Value]:
    """Realistic factory-fresh settings; keys are shared by writes and their read-backs."""
    three_phase = model_code in THREE_PHASE_CODES
    return {
        # 0x66 / 0x95
        "tariff_tip": 0.5,
        "tariff_peak": 0.4,
        "tariff_flat": 0.3,
        "tariff_valley": 0.2,
        "grid_export_limit": 5000,
        "command_power": 0,
        "operating_mode": "General",
        "pv_off_grid": 0,
        "voltage_drop_method": 0,
        "anti_backflow": False,
        "battery_command": 0,
        "grid_soc_min": 20,
        "tou_count": 1,
        "tou_schedule": [{"start": "00:00", "end": "24:00", "period": "Flat"}],
        # 0x67 / 0x95
        **{f.key: False for f in tables.CUSTOM_MODE.layouts[252]},
        "power_factor_setting": 1.0,
        # 0x69 / 0x95
        "grid_code": "Germany",
        "dc_battery_type": "Lithium",
        "lead_acid_capacity": 0,
        "battery_protocol": battery_make,
        "meter_protocol": "Acrel three-phase" if three_phase else "Acrel single-phase",
        # 0x6a / 0x9d
        "meter_monitor": True,
        "three_phase_unbalanced": False,
        "off_grid_soc_min": 10,
        "soc_hysteresis": 5,
        "ac_pv_source": 0,
        "backup_priority": 0,
        "bypass": False,
        "generator_rated_power": 0,
        "backup_output": True,
        "charge_power_limit": rated,
        "discharge_power_limit": rated,
        "battery_voltage_settable": False,
        "battery_voltage_max": 0,
        "battery_voltage_min": 0,
        "shadow_scan": False,
        "battery_activation": False,
        "lead_acid_charge_voltage": 0,
        "lead_acid_float_voltage": 0,
        "lead_acid_eod_voltage": 0,
        "grid_charge_current_max": 25.0,
        "parallel_battery_type": 0,
        "parallel_mode": 0,
        "parallel_address_setting": 0,
        "battery_power_manual": False,
        # 0x64 / 0x0c
        "inverter_on": True,
        # 0x71 / 0xa2
        **_forced_defaults("forced_charge", 100),
        **_forced_defaults("forced_discharge", 20),
        # Wi-Fi module (0x9e, 0x9f, 0xb0 / 0xb1; 0x94, 0xa3 are not read back)
        "wifi_mode": "Station",
        "router_ssid": "SimulatedHome",
        "router_password": "simulated-secret",
        "cloud_server": "cloud.invalid",
        "cloud_port": "19042",
    }


def _forced_defaults(prefix: str, soc_limit: int) -> dict[str, Value]:
    days = {f"{prefix}_{day}": None for day in DAYS}  # raw 0: not set
    empty = {"start": "00:00", "end": "00:00", "reserved": None}
    return {
        f"{prefix}_mode": False,
        **days,
        f"{prefix}_soc_limit": soc_limit,
        f"{prefix}_period_count": 0,
        f"{prefix}_periods": [dict(empty) for _ in range(4)],
    }


def _label_code(value: int | str, codes: Mapping[int, str], what: str) -> int:
    if isinstance(value, int) and value in codes:
        return value
    for code, label in codes.items():
        if isinstance(value, str) and label.lower() == value.strip().lower():
            return code
    raise ValueError(f"unknown {what} {value!r}; known: {', '.join(codes.values())}")


def _minutes(value: Value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and ":" in value:
        hours, _, minutes = value.partition(":")
        if hours.isdigit() and minutes.isdigit():
            return int(hours) * 60 + int(minutes)
    return None


class SettingsError(ValueError):
    """A simulator setting (``simulate --set``) that the inverter could not hold."""


SETTINGS_REPLIES = (0x95, 0x9D, 0xA2)  # the queries that show the settings


NETWORK_LAYOUT = tables.ROUTER_AND_CLOUD_QUERY.layouts[500]
"""The Wi-Fi module's state as 0xb1 shows it; the module keeps it at every PCU version."""


def settings_fields(version: int) -> dict[str, tuple[tuple[Field, ...], Field]]:
    """The settings a simulated inverter of this version shows: key -> (layout, field).

    Keys are the MQTT state's (a record group by its name); ``inverter_on`` comes from
    0x0c, the network state (Wi-Fi mode, router, cloud server) from 0xb1.
    """
    out: dict[str, tuple[tuple[Field, ...], Field]] = {}
    for code in (*SETTINGS_REPLIES, 0x0C):
        layout = tables.COMMANDS[code].layout(version) or ()
        for f in layout:
            if f.wire is not Wire.RESERVED and (code != 0x0C or f.key == "inverter_on"):
                out.setdefault(f.group or f.key, (layout, f))
    return out | {f.key: (NETWORK_LAYOUT, f) for f in NETWORK_LAYOUT}


def setting_value(layout: tuple[Field, ...], name: str, value: Value) -> Value:
    """A setting as the simulator keeps it, from the MQTT state's units (raw codes or
    labels for coded values); :class:`SettingsError` if the wire cannot carry it."""
    members = [f for f in layout if f.group == name]
    try:
        if not members:
            f = next(f for f in layout if f.key == name)
            if f.wire is Wire.TEXT and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # --set cloud_port=19042 arrives as a number
            return codec.to_value(f, codec.to_raw(f, value))  # a raw code: its label
        if not isinstance(value, list) or not all(isinstance(r, Mapping) for r in value):
            raise SettingsError(f"{name}: a list of records (JSON objects) is needed")
        return [{f.key: codec.to_value(f, codec.to_raw(f, r.get(f.key, _blank(f))))
                 for f in members} for r in value]
    except codec.CodecError as exc:
        raise SettingsError(str(exc)) from None


# --------------------------------------------------------------------------------------
# Values that the codec can always encode
# --------------------------------------------------------------------------------------


def _raw_range(f: Field) -> tuple[int, int]:
    if f.wire in (Wire.BIT, Wire.BITS) and f.bits is not None:
        return 0, (1 << (f.bits[1] - f.bits[0])) - 1
    if f.wire is Wire.INT:
        return -(1 << (8 * f.size - 1)), (1 << (8 * f.size - 1)) - 1
    return 0, (1 << (8 * f.size)) - 1


def _blank(f: Field) -> Value:
    if f.wire is Wire.TEXT:
        return ""
    if f.wire is Wire.RESERVED or f.flag is not None:
        return None
    if f.wire is Wire.ALARMS:
        return []
    if f.wire is Wire.BIT:
        return False
    return 0


def _fit(f: Field, value: Value) -> Value:
    """Round a number to the field's scale and clamp it to what the wire can carry."""
    if f.wire is Wire.BIT:
        return bool(value)
    if f.wire is Wire.TEXT and isinstance(value, str) and f.size:
        return value[: f.size]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if f.is_numeric or (f.codes is not None or f.clock or f.flag is not None):
        lo, hi = _raw_range(f)
        raw = min(hi, max(lo, round(value / f.scale)))
        return codec.to_value(f, raw) if f.is_numeric else raw
    return value


def complete(command: Command, version: int, values: Mapping[str, Value]) -> dict[str, Value]:
    """Every value a layout needs, fitted to the wire: missing ones are blank, lists padded.

    The counts of variable record groups are set from the records.
    """
    layout = codec.layout_of(command, version)
    out: dict[str, Value] = {}
    counts: dict[str, int] = {}
    for f in layout:
        if f.group is not None:
            if f.group in out:
                continue
            members = [g for g in layout if g.group == f.group]
            records = [r for r in values.get(f.group) or [] if isinstance(r, Mapping)]
            fixed, count = slots(layout, f.group), count_key(layout, f.group)
            if fixed is not None:
                records = records[:fixed] + [{}] * (fixed - len(records))
            elif count is not None:  # as many records as the count says
                records = records[: _raw_range(_by_key(layout, count))[1]]
                counts[count] = len(records)
            out[f.group] = [
                {m.key: _fit(m, r.get(m.key, _blank(m))) for m in members} for r in records
            ]
        elif isinstance(f.repeat, int):
            items = list(values.get(f.key) or [])[: f.repeat]
            items += [_blank(f)] * (f.repeat - len(items))
            out[f.key] = [_fit(f, item) for item in items]
        else:
            value = values.get(f.key)
            out[f.key] = _fit(f, _blank(f) if value is None and f.flag is None else value)
    out.update(counts)
    return out


def _by_key(layout: tuple[Field, ...], key: str) -> Field:
    return next(f for f in layout if f.key == key)


# --------------------------------------------------------------------------------------
# The inverter
# --------------------------------------------------------------------------------------


class InverterModel:
    """One simulated inverter: settings, registers, physics and the 0xbb exchange."""

    def __init__(
        self,
        *,
        pcu: int = 609,
        model: str = "5kw",
        serial: str = DEFAULT_SERIAL,
        battery_make: int | str = 2,
        capacity_kwh: float = 10.0,
        soc: float = 50.0,
        seed: int | None = None,
        clock: Clock | None = None,
        settings: Mapping[str, Value] | None = None,
    ) -> None:
        key = model.lower().replace(" ", "")
        if key not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        self.model_name = key
        self.model_code, self.rated = MODELS[key]
        self.three_phase = self.model_code in THREE_PHASE_CODES
        self.pcu = pcu
        self.version = tables.effective_version(pcu)
        if len(serial) > 26 or not serial.isascii():
            raise ValueError("the serial number is at most 26 ASCII characters")
        self.serial = serial
        self.battery_make = _label_code(battery_make, tables.BATTERY_MAKES, "battery make")
        self.has_battery = self.battery_make != 1
        self.high_voltage = "high voltage" in tables.BATTERY_MAKES[self.battery_make] or (
            self.battery_make in (25, 26)
        )
        self.capacity_wh = capacity_kwh * 1000 if self.has_battery else 0.0
        self.soc = soc if self.has_battery else 0.0
        self.rng = random.Random(seed)
        self.clock: Clock = clock or datetime.now
        self.clock_offset = timedelta()
        self.clock_set: datetime | None = None  # the local time the last 0x68 write carried
        self.settings = default_settings(self.model_code, self.rated, self.battery_make)
        self.registers = dict(DEFAULT_REGISTERS)
        self.live = Live()
        # Raised alarms, as 0x1e / 0x1f carry them: alarm field key -> codes of its block
        # (e.g. {"battery_alarm_bits": [3]}); empty: all clear.
        self.alarms: dict[str, list[int]] = {}
        self.pending_registers: int | None = None  # the count of an acknowledged part 1
        self.blocked = False
        self._cloud = 1.0
        self._load_noise = 0.0
        # each phase: (voltage offset in V, share of the power)
        offsets = [base + self.rng.uniform(-0.3, 0.3) for base in (-1.2, 0.9, -0.3)]
        shares = [1 / 3 + self.rng.uniform(-0.02, 0.02) for _ in range(3)]
        self.phases = [(offsets[i], shares[i] / sum(shares)) for i in range(3)]
        scale = self.rated / 5000
        self.counters = {
            name: Counter(total=base * scale)
            for name, base in (
                ("pv", 8250.0), ("consumption", 6100.0), ("load", 6100.0),
                ("grid_export", 3600.0), ("grid_import", 1450.0),
                ("battery_charge", 2300.0), ("battery_discharge", 2150.0),
                ("savings", 1800.0),
            )
        }
        self.cycles_base = 120.0
        self._discharged_before = self.counters["battery_discharge"].total
        self._last = self.clock()
        self._day = self.now().date()
        self.configure(settings or {})
        self._compute(self.now(), 0.0)

    def configure(self, settings: Mapping[str, Value]) -> None:
        """Set settings as the MQTT state shows them (``simulate --set KEY=VALUE``).

        A record group set alone is in use as given: its count follows.
        """
        known = settings_fields(self.version)
        unknown = sorted(k for k in settings if k not in known)
        if unknown:
            raise SettingsError(f"unknown setting(s) {', '.join(unknown)} at PCU {self.pcu}; "
                                f"known: {', '.join(sorted(known))}")
        values = {k: setting_value(known[k][0], k, v) for k, v in settings.items()}
        for group, records in list(values.items()):
            layout = known[group][0]
            count = count_key(layout, group)
            if isinstance(records, list) and count is not None and count not in values:
                values[count] = len(records)
        self.settings.update(values)

    # ----------------------------------------------------------------------------------
    # Time and physics
    # ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The inverter's local time: the clock plus the offset a 0x68 write set."""
        return self.clock() + self.clock_offset

    def update(self) -> None:
        """Integrate the physics up to the clock's present time."""
        source = self.clock()
        elapsed = (source - self._last).total_seconds()
        self._last = source
        if elapsed <= 0:
            return  # a clock that went back: nothing to integrate
        steps = min(MAX_STEPS, max(1, math.ceil(elapsed / MAX_STEP)))
        step = elapsed / steps
        start = source + self.clock_offset - timedelta(seconds=elapsed)
        for i in range(1, steps + 1):
            when = start + timedelta(seconds=step * i)
            self._compute(when, step)
            self._integrate(when, step)

    def _compute(self, when: datetime, step: float) -> None:
        """The powers at ``when``; ``step`` (s) scales the random walks."""
        s = self.settings
        walk = math.sqrt(step / 60)
        self._cloud = min(1.0, max(0.55, self._cloud + self.rng.gauss(0, 0.03) * walk))
        self._load_noise = min(250.0, max(-150.0, self._load_noise * 0.97
                                          + self.rng.gauss(0, 25) * walk))
        hour = when.hour + when.minute / 60 + when.second / 3600
        daylight = math.sin(math.pi * (hour - 6) / 14) if 6 < hour < 20 else 0.0
        scale = self.rated / 5000
        base = 350 + 400 * _bump(hour, 7.5, 1.0) + 900 * _bump(hour, 19.5, 1.5)
        load = max(80.0, (base + self._load_noise) * scale)
        frequency = 50 + self.rng.uniform(-0.03, 0.03)
        if s.get("inverter_on") is False:
            self.live = Live(load=load, grid=-load, frequency=frequency)
            return
        pv = 1.15 * self.rated * daylight**1.3 * self._cloud if daylight > 0 else 0.0
        battery = self._battery_power(when, pv - load)
        grid = pv - load - battery
        limit = 0.0 if s.get("anti_backflow") is True else _number(s, "grid_export_limit", 0)
        if grid > limit:  # curtail PV to the export limit
            pv = max(0.0, pv - (grid - limit))
            grid = pv - load - battery
        self.live = Live(pv1=pv * 0.58, pv2=pv * 0.42, load=load, battery=battery, grid=grid,
                         frequency=frequency)

    def _battery_power(self, when: datetime, surplus: float) -> float:
        if not self.has_battery:
            return 0.0
        s = self.settings
        charge_max = discharge_max = float(self.rated)
        if self.version >= 500:  # 0x9d carries the battery power limits from PCU 500
            charge_max = min(charge_max, _number(s, "charge_power_limit", self.rated))
            discharge_max = min(discharge_max, _number(s, "discharge_power_limit", self.rated))
        floor = _number(s, "grid_soc_min", 20)
        if self._forced(when, "forced_charge") and self.soc < _number(
            s, "forced_charge_soc_limit", 100
        ):
            wanted = charge_max
        elif self._forced(when, "forced_discharge") and self.soc > _number(
            s, "forced_discharge_soc_limit", floor
        ):
            wanted = -discharge_max
        else:
            wanted = min(charge_max, max(-discharge_max, surplus))
            if s.get("operating_mode") == "Energy storage":
                wanted = max(0.0, wanted)  # keeps its charge for outages
        if wanted > 0 and self.soc >= 100:
            return 0.0
        if wanted < 0 and self.soc <= floor:
            return 0.0
        return wanted

    def _forced(self, when: datetime, prefix: str) -> bool:
        """Whether a forced charge / discharge period of 0xa2 covers ``when``."""
        s = self.settings
        day = DAYS[(when.weekday() + 1) % 7]
        if s.get(f"{prefix}_mode") is not True or s.get(f"{prefix}_{day}") is not True:
            return False
        minute = when.hour * 60 + when.minute
        for period in in_use(_FORCED_LAYOUT, s).get(f"{prefix}_periods") or []:
            start, end = _minutes(period.get("start")), _minutes(period.get("end"))
            if start is not None and end is not None and start <= minute < end:
                return True
        return False

    def _integrate(self, when: datetime, step: float) -> None:
        day = when.date()
        if day != self._day:
            for counter in self.counters.values():
                counter.roll(self._day, day)
            self._day = day
        hours = step / 3600
        live, c = self.live, self.counters
        if self.capacity_wh:
            before = self.soc
            efficiency = 0.96 if live.battery > 0 else 1 / 0.96
            after = before + live.battery * efficiency * hours / self.capacity_wh * 100
            floor = _number(self.settings, "grid_soc_min", 20)
            self.soc = min(100.0, after) if live.battery >= 0 else max(min(before, floor), after)
            self.soc = max(0.0, self.soc)
        c["pv"].add(live.pv * hours / 1000, when)
        c["consumption"].add(live.load * hours / 1000, when)
        c["load"].add(live.load * hours / 1000, when)
        c["grid_export"].add(max(0.0, live.grid) * hours / 1000, when)
        c["grid_import"].add(max(0.0, -live.grid) * hours / 1000, when)
        c["battery_charge"].add(max(0.0, live.battery) * hours / 1000, when)
        c["battery_discharge"].add(max(0.0, -live.battery) * hours / 1000, when)
        self_used = max(0.0, min(live.load, live.load + min(0.0, live.grid)))
        c["savings"].add(self_used * hours / 1000 * _number(self.settings, "tariff_flat", 0),
                         when)

    # ----------------------------------------------------------------------------------
    # Values per reply frame
    # ----------------------------------------------------------------------------------

    def cloud_server(self) -> tuple[str, int] | None:
        """Where the inverter dials its cloud link: in station mode, the cloud server and
        port of its network settings (None in access-point mode, or with no valid port)."""
        s = self.settings
        port = str(s.get("cloud_port", "")).strip()
        if s.get("wifi_mode") != "Station" or not port.isdigit() or not 0 < int(port) < 65536:
            return None
        return str(s.get("cloud_server", "")), int(port)

    def offers(self, code: int) -> bool:
        command = tables.COMMANDS.get(code)
        return command is not None and command.layout(self.version) is not None

    def values(self, code: int) -> dict[str, Value]:
        """The values a reply frame ``code`` carries now, as a client decodes them."""
        command = tables.COMMANDS[code]
        return codec.decode(command, self.version, self.payload(code)).values

    def payload(self, code: int) -> bytes:
        """The payload of a reply frame ``code`` now."""
        command = tables.COMMANDS[code]
        self.update()
        raw = self._settings_view() if code in (0x95, 0x9D, 0xA2, 0xB1) else self._live_view(code)
        return codec.encode(command, self.version, complete(command, self.version, raw))

    def _settings_view(self) -> dict[str, Value]:
        view = dict(self.settings)
        view["tou_schedule"] = list(view.get("tou_schedule") or [])
        return view

    def _live_view(self, code: int) -> dict[str, Value]:
        views: dict[int, Callable[[], dict[str, Value]]] = {
            0x98: self._system_info,
            0x0A: self._battery,
            0x0B: self._measurements,
            0x0C: self._running_status,
            0x0D: lambda: {"bms_link": int(self.has_battery), "meter_link": 1,
                           "remote_load_power": self.live.load},
            0x99: self._energy,
            0x9A: lambda: self._counter("grid_export", "grid_export", history=True),
            0x9B: lambda: self._counter("load_energy", "load", history=True),
            0x9C: self._battery_energy,
            0x1E: lambda: dict(self.alarms),
            0x1F: lambda: dict(self.alarms),
        }
        view = views.get(code)
        return view() if view is not None else {}  # DRM: all clear

    def _system_info(self) -> dict[str, Value]:
        return {"pcu_version": self.pcu, "battery_make": self.battery_make,
                "model_code": self.model_code, "serial_number": self.serial,
                "serial_number_extension": ""}

    def battery_voltage(self) -> float:
        if not self.has_battery:
            return 0.0
        nominal = (185 + 30 * self.soc / 100) if self.high_voltage else (47 + 6 * self.soc / 100)
        return nominal + self.live.battery / nominal * (0.05 if self.high_voltage else 0.01)

    def battery_current(self) -> float:
        voltage = self.battery_voltage()
        return self.live.battery / voltage if voltage else 0.0

    def _battery(self) -> dict[str, Value]:
        if not self.has_battery:
            return {"battery_state": "Standby", "battery_link": "Disconnected"}
        power = self.live.battery
        state = "Standby" if abs(power) < 20 else "Charging" if power > 0 else "Discharging"
        max_current = self.rated / (200 if self.high_voltage else 48)
        discharged = self.counters["battery_discharge"].total - self._discharged_before
        cycles = self.cycles_base + discharged / (self.capacity_wh / 1000)
        return {
            "battery_voltage": self.battery_voltage(),
            "battery_current": self.battery_current(),
            "battery_temperature": 24 + abs(power) / self.rated * 6,
            "battery_soc": self.soc,
            "battery_soh": 98,
            "battery_state": state,
            "battery_max_charge_current": max_current,
            "battery_max_discharge_current": max_current,
            "battery_charge_cutoff_voltage": 220.0 if self.high_voltage else 57.6,
            "battery_discharge_cutoff_voltage": 170.0 if self.high_voltage else 44.8,
            "battery_cycles": math.floor(cycles),
            "battery_link": "Connected",
        }

    def _phase_voltages(self) -> list[float]:
        voltages = [230 + offset + self.live.inverter / self.rated for offset, _ in self.phases]
        return voltages if self.three_phase else [voltages[0], 0.0, 0.0]

    def _per_phase(self, power: float) -> list[float]:
        """A power split over the phases, as currents; one phase on single-phase models."""
        voltages = self._phase_voltages()
        if not self.three_phase:
            return [power / voltages[0], 0.0, 0.0]
        return [power * share / v for (_, share), v in zip(self.phases, voltages, strict=True)]

    def _measurements(self) -> dict[str, Value]:
        live = self.live
        on = self.settings.get("inverter_on") is not False
        v = self._phase_voltages()
        inverter = self._per_phase(live.inverter)
        grid = self._per_phase(live.grid)
        lines = [math.sqrt(3) * (v[i] + v[(i + 1) % 3]) / 2 for i in range(3)] \
            if self.three_phase else [0.0, 0.0, 0.0]
        reactive = live.grid * 0.05
        pv_voltages = [
            (380 + 120 * min(1.0, p / (0.3 * self.rated))) if p > 1 else 0.0
            for p in (live.pv1, live.pv2)
        ]
        temperature = 30 + abs(live.inverter) / self.rated * 15 if on else 25.0
        bus = 375.0 if self.three_phase else 200.0
        out: dict[str, Value] = {
            "pv1_voltage": pv_voltages[0],
            "pv1_current": live.pv1 / pv_voltages[0] if pv_voltages[0] else 0.0,
            "pv1_power": live.pv1,
            "pv2_voltage": pv_voltages[1],
            "pv2_current": live.pv2 / pv_voltages[1] if pv_voltages[1] else 0.0,
            "pv2_power": live.pv2,
            "grid_frequency": live.frequency,
            "grid_power_factor": 0.99 if abs(live.grid) > 50 else 1.0,
            "grid_active_power": live.grid,
            "grid_reactive_power": reactive,
            "grid_apparent_power": math.hypot(live.grid, reactive),
            "dc_battery_current": self.battery_current(),
            "dc_battery_voltage": self.battery_voltage(),
            "dc_bus_positive_voltage": bus if on else 0.0,
            "dc_bus_negative_voltage": bus if on else 0.0,
            "dc_bus_voltage": 2 * bus if on else 0.0,
            "dc_power": live.battery,
            "inverter_temperature": temperature,
            "device_type_code": self.model_code,
            "dsp_version_high": 1,
            "dsp_version_low": 23,
            "parallel_address": 0,
            "efficiency": 97 if on and live.pv > 0 else 0,
            "dc_battery_current_1": self.battery_current(),
            "dc_battery_current_2": 0.0,
            "module_a_temperature": temperature + 1.5,
            "module_b_temperature": temperature + 0.8 if self.three_phase else 0.0,
            "module_c_temperature": temperature + 1.1 if self.three_phase else 0.0,
            "backup_frequency": live.frequency if on else 0.0,
            "backup_power_factor": 1.0,
            "parallel_inverter_active_power": live.inverter,
            "parallel_inverter_reactive_power": reactive,
            "parallel_inverter_apparent_power": math.hypot(live.inverter, reactive),
            "parallel_load_active_power": live.load,
            "parallel_load_reactive_power": 0,
            "parallel_load_apparent_power": live.load,
            "parallel_pv_power": live.pv,
            "parallel_battery_power": live.battery,
            "parallel_battery_current": self.battery_current(),
            "parallel_battery_charge_current": max(0.0, self.battery_current()),
            "parallel_battery_discharge_current": max(0.0, -self.battery_current()),
        }
        for i, phase in enumerate("abc"):
            out[f"inverter_{phase}_voltage"] = v[i] if on else 0.0
            out[f"inverter_{phase}_current"] = inverter[i] if on else 0.0
            out[f"grid_{phase}_voltage"] = v[i]
            out[f"grid_{phase}_current"] = grid[i]
            out[f"backup_{phase}_voltage"] = v[i] if on else 0.0
            out[f"backup_{phase}_current"] = 0.0
            out[f"parallel_load_{phase}_power"] = (
                live.load * self.phases[i][1] if self.three_phase else live.load if i == 0 else 0
            )
        for pair, i in (("ab", 0), ("bc", 1), ("ca", 2)):
            out[f"grid_{pair}_voltage"] = lines[i]
        return out

    def _running_status(self) -> dict[str, Value]:
        on = self.settings.get("inverter_on") is not False
        battery = self.live.battery
        return {
            "inverter_on": on,
            "ac_run_state": 1 if on else 0,
            "ac_operation_mode": 1 if on else 0,
            "battery_run_state": 0 if abs(battery) < 20 else 1 if battery > 0 else 2,
            "inverter_status_word": 0,
            "pv_run_state": 1 if self.live.pv > 0 else 0,
            "dc_run_state": 1 if on and self.has_battery else 0,
            "pv_status_word": 0,
        }

    def _counter(self, prefix: str, name: str, *, history: bool = False) -> dict[str, Value]:
        counter = self.counters[name]
        out: dict[str, Value] = {f"{prefix}_today": counter.today,
                                 f"{prefix}_total": counter.total}
        if history:
            out.update(counter.history(prefix))
        return out

    def _energy(self) -> dict[str, Value]:
        return {
            **self._counter("pv_energy", "pv", history=True),
            **self._counter("consumption", "consumption"),
            **self._counter("savings", "savings"),
        }

    def _battery_energy(self) -> dict[str, Value]:
        c = self.counters
        return {
            "grid_import_today": c["grid_import"].today,
            "grid_import_total": c["grid_import"].total,
            "battery_charge_today": c["battery_charge"].today,
            "battery_charge_total": c["battery_charge"].total,
            "battery_discharge_today": c["battery_discharge"].today,
            "battery_discharge_total": c["battery_discharge"].total,
            "remote_load": self.live.load,
        }

    # ----------------------------------------------------------------------------------
    # Requests
    # ----------------------------------------------------------------------------------

    def power_cycle(self) -> None:
        """Switch the inverter off and on: unblocks it; settings and registers are kept."""
        if self.blocked:
            log.info("power cycle unblocks the inverter")
        self.blocked = False
        self.pending_registers = None

    def bad_frame(self, error: Exception) -> None:
        """A frame that failed its checksum arrived; after a part 1 it blocks the inverter."""
        if self.pending_registers is not None and not self.blocked:
            self._block(f"bad frame after register query part 1: {error}")

    def _block(self, why: str) -> None:
        self.blocked = True
        self.pending_registers = None
        log.warning("inverter blocked until power-cycled", reason=why)

    def handle(self, code: int, payload: bytes) -> Outcome:
        """Answer one request (a frame from the app)."""
        label = f"0x{code:02x}"
        if self.blocked:
            log.info("blocked: request ignored", command=label)
            return Outcome()
        if self.pending_registers is not None:
            if code == 0xBB and len(payload) == 2 * self.pending_registers:
                return self._register_part2(payload)
            self._block(f"{label} instead of register query part 2")
            return Outcome()
        command = tables.COMMANDS.get(code)
        if command is None:
            log.warning("unknown command: no answer", command=label)
            return Outcome()
        if command.layout(self.version) is None:
            log.warning("command not offered at this PCU version: no answer",
                        command=label, pcu=self.pcu)
            return Outcome()
        if code == 0xBB:
            return self._register_part1(payload)
        if command.is_write:
            self.apply(command, payload)
            return Outcome(close=command.closes_connection)
        if command.kind is not Kind.QUERY:
            return Outcome()
        return Outcome([(reply, self.payload(reply))
                        for reply in tables.replies(command, self.version)])

    def _register_part1(self, payload: bytes) -> Outcome:
        count = int.from_bytes(payload, "big") if len(payload) == 2 else 0
        if not 1 <= count <= 10:
            log.warning("invalid register query part 1 ignored", payload=payload.hex())
            return Outcome()
        self.pending_registers = count
        return Outcome([(0xBB, payload)])

    def _register_part2(self, payload: bytes) -> Outcome:
        self.pending_registers = None
        addresses = [int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload), 2)]
        values = {
            "register_count": len(addresses),
            "registers": [{"address": a, "value": self.registers.get(a, 0)} for a in addresses],
        }
        return Outcome([(0xBB, codec.encode(tables.REGISTER_QUERY, self.version, values))])

    def apply(self, command: Command, payload: bytes) -> bool:
        """Apply a write; a payload the codec cannot decode is logged and ignored."""
        try:
            reading = codec.decode(command, self.version, payload)
            values = reading.values
            if command.code == 0x68:
                self._set_clock(values)
            elif command.code == 0xBA:
                self._set_registers(values)
            else:
                self._set_settings(command, values)
        except (ValueError, TypeError, KeyError) as exc:  # CodecError is a ValueError
            log.warning("malformed write ignored", command=command.label, error=str(exc))
            return False
        self._compute(self.now(), 0.0)  # new settings show at once
        log.info("write applied", command=command.label)
        return True

    def _set_clock(self, values: Mapping[str, Value]) -> None:
        year, month, day, hour, minute, second = (
            int(values[k]) for k in ("year", "month", "day", "hour", "minute", "second")
        )
        wanted = datetime(year, month, day, hour, minute, second)
        self.update()  # integrate up to the change on the old time
        self.clock_offset = wanted - self.clock()
        self.clock_set = wanted
        log.info("clock set", local_time=wanted.isoformat())

    def _set_registers(self, values: Mapping[str, Value]) -> None:
        for record in values["registers"]:
            self.registers[int(record["address"])] = int(record["value"])

    def _set_settings(self, command: Command, values: Mapping[str, Value]) -> None:
        self.update()  # the old settings governed the time until now
        changed: dict[str, Value] = {}
        for f in codec.layout_of(command, self.version):
            if f.wire is Wire.RESERVED:
                continue
            name = f.group or f.key
            if name in values:
                changed[name] = values[name]
        if command.code == 0x66:  # 0x95 reads back the periods in use
            changed["tou_schedule"] = list(changed.get("tou_schedule") or [])
        self.settings.update(changed)


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-(((hour - centre) / width) ** 2))


def _number(settings: Mapping[str, Value], key: str, default: float) -> float:
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)
