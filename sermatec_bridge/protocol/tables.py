"""Every OSIM command of the Sermatec hybrid inverters, per PCU firmware version.

Read a command like a datasheet: code, name, kind, the frames that answer it, and for
each PCU version that changed it, its payload field by field in wire order. A layout is
used from its version up to the next one that redefines the command (PCU 609 uses the
603 layouts, PCU 411 the 259 ones). Reported versions 991 and 998 behave as 601.

Facts (byte layouts, scales, units, version ranges) come from the field table of the
vendor's app; everything marked ``note=`` is a deliberate correction of that table.
Keys are stable: they name MQTT state keys and Home Assistant unique ids.
"""

from __future__ import annotations

from collections.abc import Iterator

from .model import (
    CONFIG,
    DAY_FLAG,
    DIAGNOSTIC,
    Command,
    Field,
    Kind,
    Wire,
    alarms,
    amps,
    bit,
    bits,
    celsius,
    clock,
    coded,
    energy,
    flag,
    hertz,
    number,
    percent,
    power_factor,
    reserved,
    text,
    vars_,
    volt_amps,
    volts,
    watts,
)

KNOWN_VERSIONS = (0, 252, 258, 259, 500, 603)


def effective_version(reported: int) -> int:
    """The PCU version whose tables apply to a version the inverter reports."""
    return 601 if reported in (991, 998) else reported


# --------------------------------------------------------------------------------------
# Coded values
# --------------------------------------------------------------------------------------

MODEL_CODES = {1: "10 kW", 2: "5 kW", 3: "6 kW", 5: "3 kW"}

# Models with one AC phase: their phase B and C (and line-to-line) fields read zero.
SINGLE_PHASE_MODELS = frozenset({"3 kW", "5 kW", "6 kW"})

# Battery makes: the code list of 0x98's battery make and of 0x95's battery protocol
# (one list, as both community decoders read it). Labels from public sources; where the
# sources disagree, the other name is noted next to the entry.
BATTERY_MAKES = {
    1: "No battery",
    2: "Pylontech high voltage",
    3: "Pylontech low voltage",
    4: "BYD",
    5: "Chaowei",  # sold abroad as Chilwee, the name of its block in the alarm list
    6: "HDXN",
    7: "YWLN",
    9: "Nelumbo high voltage",  # also listed as "XPGY"
    10: "Alpha ESS",  # listed as "Wotai", Alpha ESS's Chinese name
    11: "RuiPu",
    12: "Generic high voltage",  # also listed as "Cairi high voltage"
    13: "Generic low voltage",  # also listed as "Cairi low voltage"
    14: "Dyness high voltage",
    15: "Dyness low voltage",
    16: "DLG low voltage",
    17: "Alpha ESS low voltage",  # listed as "Wotai low voltage"
    18: "SHDL",
    19: "GuangYu",
    20: "FeiBo",
    21: "NJSG",
    22: "BYD high voltage",
    23: "BYD low voltage",
    24: "MeterBoost",
    25: "AOBO",
    26: "Soluna 15K pack high voltage",  # also listed as "DLG high voltage": Soluna is DLG's
    27: "Soluna 4K low voltage",
    28: "Soluna 3K low voltage",
    30: "Pylontech low voltage (RS485)",
}

METER_PROTOCOLS = {
    1: "No meter",
    2: "Acrel three-phase",
    3: "Acrel single-phase",
    4: "Eastron three-phase",
    5: "Eastron single-phase",
}

GRID_CODES = {
    1: "China",
    2: "Australia",
    3: "Germany",
    4: "United Kingdom",
    5: "Italy",
    6: "France",
    7: "Austria",
    8: "South Africa",
    9: "Czech Republic",
    10: "Belgium",
    11: "Switzerland",
    12: "Philippines",
    13: "Default 50 Hz grid",
    14: "Default 60 Hz grid",
    15: "Thailand",
    16: "Denmark",
    17: "Greece",
    18: "Netherlands",
    19: "India",
    20: "Ireland",
    21: "New Zealand",
    22: "Poland",
    23: "Spain",
    24: "Portugal",
    25: "Pakistan",
    26: "Custom",
    27: "Ukraine",
    28: "Slovenia",
    29: "Vietnam",
    30: "Finland",
    31: "Norway",
    32: "Sweden",
    33: "Botswana",
    34: "Angola",
    35: "Zimbabwe",
    36: "Tanzania",
    37: "Nigeria",
    38: "Kenya",
}

DC_BATTERY_TYPES = {1: "Lithium", 2: "Lead-acid"}

BATTERY_STATES = {0x11: "Charging", 0x22: "Discharging", 0x33: "Standby"}

OPERATING_MODES = {
    1: "General",
    2: "Energy storage",
    3: "Micro-grid",
    4: "Peak-valley",
    5: "AC coupling",
}

TARIFF_PERIODS = {0: "Unused", 1: "Tip", 2: "Peak", 3: "Flat", 4: "Valley"}

BATTERY_LINK = {0: "Connected", 1: "Disconnected"}

# --------------------------------------------------------------------------------------
# 0x98 system information (every version)
# --------------------------------------------------------------------------------------

SYSTEM_INFO = Command(
    0x98, "system_info", "System information", Kind.QUERY, replies=(0x98,),
    layouts={0: (
        number("pcu_version", "PCU firmware version", category=DIAGNOSTIC),
        coded("battery_make", "Battery manufacturer", BATTERY_MAKES, category=DIAGNOSTIC),
        coded("model_code", "Model", MODEL_CODES, category=DIAGNOSTIC),
        text("serial_number", "Serial number", 26, category=DIAGNOSTIC),
        text("serial_number_extension", "Serial number (extension)", 18, hidden=True),
    )},
)

# --------------------------------------------------------------------------------------
# 0x0a battery
# --------------------------------------------------------------------------------------

BATTERY = Command(
    0x0A, "battery", "Battery information", Kind.QUERY, replies=(0x0A,),
    layouts={252: (
        volts("battery_voltage", "Battery voltage"),
        amps("battery_current", "Battery current"),
        celsius("battery_temperature", "Battery temperature"),
        percent("battery_soc", "Battery state of charge", device_class="battery", wire=Wire.UINT),
        percent("battery_soh", "Battery state of health", category=DIAGNOSTIC),
        coded("battery_state", "Battery state", BATTERY_STATES),
        amps("battery_max_charge_current", "Battery max charge current", wire=Wire.UINT),
        amps("battery_max_discharge_current", "Battery max discharge current", wire=Wire.UINT),
        volts("battery_charge_cutoff_voltage", "Battery charge cut-off voltage",
              category=DIAGNOSTIC),
        volts("battery_discharge_cutoff_voltage", "Battery discharge cut-off voltage",
              category=DIAGNOSTIC),
        number("battery_cycles", "Battery charge cycles", wire=Wire.UINT,
               state_class="total_increasing", category=DIAGNOSTIC),
        number("battery_pressure", "Battery pressure code", wire=Wire.UINT, category=DIAGNOSTIC),
        number("battery_warning_code", "Battery warning code", wire=Wire.UINT,
               category=DIAGNOSTIC),
        number("battery_error_code", "Battery error code", wire=Wire.UINT, category=DIAGNOSTIC),
        coded("battery_link", "Battery communication", BATTERY_LINK, wire=Wire.UINT,
              category=DIAGNOSTIC),
    )},
)

# --------------------------------------------------------------------------------------
# 0x0b PV, grid, backup output and inverter measurements
# --------------------------------------------------------------------------------------

_REACTIVE_NOTE = "vendor table says W; reactive power is in var"
_APPARENT_NOTE = "vendor table says var; apparent power is in VA"

_MEASUREMENTS_252: tuple[Field, ...] = (
    volts("pv1_voltage", "PV1 voltage"),
    amps("pv1_current", "PV1 current"),
    watts("pv1_power", "PV1 power"),
    volts("pv2_voltage", "PV2 voltage"),
    amps("pv2_current", "PV2 current"),
    watts("pv2_power", "PV2 power"),
    volts("inverter_a_voltage", "Inverter phase A voltage"),
    amps("inverter_a_current", "Inverter phase A current"),
    volts("grid_a_voltage", "Grid phase A voltage"),
    volts("grid_ab_voltage", "Grid line AB voltage"),
    amps("grid_a_current", "Grid phase A current"),
    volts("inverter_b_voltage", "Inverter phase B voltage"),
    amps("inverter_b_current", "Inverter phase B current"),
    volts("grid_b_voltage", "Grid phase B voltage"),
    volts("grid_bc_voltage", "Grid line BC voltage"),
    amps("grid_b_current", "Grid phase B current"),
    volts("inverter_c_voltage", "Inverter phase C voltage"),
    amps("inverter_c_current", "Inverter phase C current"),
    volts("grid_c_voltage", "Grid phase C voltage"),
    volts("grid_ca_voltage", "Grid line CA voltage"),
    amps("grid_c_current", "Grid phase C current"),
    hertz("grid_frequency", "Grid frequency"),
    power_factor("grid_power_factor", "Grid power factor"),
    watts("grid_active_power", "Grid active power"),
    vars_("grid_reactive_power", "Grid reactive power", note=_REACTIVE_NOTE),
    volt_amps("grid_apparent_power", "Grid apparent power", note=_APPARENT_NOTE),
    amps("dc_battery_current", "Battery current (inverter side)"),
    volts("dc_battery_voltage", "Battery voltage (inverter side)", wire=Wire.INT),
    volts("dc_bus_positive_voltage", "DC bus positive voltage", category=DIAGNOSTIC),
    volts("dc_bus_negative_voltage", "DC bus negative voltage", category=DIAGNOSTIC),
    volts("dc_bus_voltage", "DC bus voltage", category=DIAGNOSTIC),
    watts("dc_power", "Battery power (DC side)"),
    celsius("inverter_temperature", "Inverter internal temperature", wire=Wire.UINT),
    volts("dc_bus_aux1_voltage", "Auxiliary bus 1 voltage", category=DIAGNOSTIC,
          note="10 kW: positive bus backup voltage; 5/6 kW: secondary bus 1"),
    volts("dc_bus_aux2_voltage", "Auxiliary bus 2 voltage", category=DIAGNOSTIC,
          note="10 kW: negative bus backup voltage; 5/6 kW: secondary bus 2"),
    number("device_type_code", "Device type code", wire=Wire.UINT, category=DIAGNOSTIC),
    number("dsp_version_high", "DSP firmware version (high)", wire=Wire.UINT,
           category=DIAGNOSTIC),
    number("dsp_version_low", "DSP firmware version (low)", wire=Wire.UINT, category=DIAGNOSTIC),
    number("parallel_address", "Parallel address", wire=Wire.UINT, category=DIAGNOSTIC),
    percent("efficiency", "Inverter efficiency", wire=Wire.UINT,
            note="vendor table gives no unit; the value is a percentage"),
    amps("dc_battery_current_1", "Battery current 1"),
    amps("dc_battery_current_2", "Battery current 2"),
    celsius("module_a_temperature", "Power module A temperature", category=DIAGNOSTIC),
    celsius("module_b_temperature", "Power module B temperature", category=DIAGNOSTIC),
    celsius("module_c_temperature", "Power module C temperature", category=DIAGNOSTIC),
    volts("backup_a_voltage", "Backup phase A voltage"),
    volts("backup_b_voltage", "Backup phase B voltage"),
    volts("backup_c_voltage", "Backup phase C voltage"),
    hertz("backup_frequency", "Backup frequency"),
    amps("backup_a_current", "Backup phase A current"),
    amps("backup_b_current", "Backup phase B current"),
    amps("backup_c_current", "Backup phase C current"),
    power_factor("backup_power_factor", "Backup power factor"),
    watts("backup_active_power", "Backup active power",
          note="vendor table says VA; active power is in W"),
    vars_("backup_reactive_power", "Backup reactive power"),
    volt_amps("backup_apparent_power", "Backup apparent power",
              note="vendor table says W; apparent power is in VA"),
)

_KW_NOTE = "vendor unit is 0.01 kW (kvar); published in W (var)"

_PARALLEL_500: tuple[Field, ...] = (
    watts("parallel_inverter_active_power", "Parallel inverter active power", scale=10,
          note=_KW_NOTE),
    vars_("parallel_inverter_reactive_power", "Parallel inverter reactive power", scale=10,
          note=_KW_NOTE),
    volt_amps("parallel_inverter_apparent_power", "Parallel inverter apparent power", scale=10,
              note="vendor table says 0.01 kW; apparent power is in VA (published in VA)"),
    watts("parallel_load_active_power", "Parallel load active power", scale=10, note=_KW_NOTE),
    vars_("parallel_load_reactive_power", "Parallel load reactive power", scale=10,
          note=_KW_NOTE),
    volt_amps("parallel_load_apparent_power", "Parallel load apparent power", scale=10,
              note="vendor table says 0.01 kW; apparent power is in VA (published in VA)"),
    watts("parallel_load_a_power", "Parallel load phase A power", scale=10, note=_KW_NOTE),
    watts("parallel_load_b_power", "Parallel load phase B power", scale=10, note=_KW_NOTE),
    watts("parallel_load_c_power", "Parallel load phase C power", scale=10, note=_KW_NOTE),
    watts("parallel_pv_power", "Parallel PV power", scale=10, note=_KW_NOTE),
    watts("parallel_battery_power", "Parallel battery power", scale=10, note=_KW_NOTE),
    amps("parallel_battery_current", "Parallel battery current"),
    amps("parallel_battery_charge_current", "Parallel battery charge current"),
    amps("parallel_battery_discharge_current", "Parallel battery discharge current"),
)

MEASUREMENTS = Command(
    0x0B, "measurements", "PV, grid, backup and inverter measurements", Kind.QUERY,
    replies=(0x0B,),
    layouts={252: _MEASUREMENTS_252, 500: _MEASUREMENTS_252 + _PARALLEL_500},
)

# --------------------------------------------------------------------------------------
# 0x0c running status: two 16-bit words seen through bit views
# --------------------------------------------------------------------------------------

RUNNING_STATUS = Command(
    0x0C, "running_status", "Equipment running status", Kind.QUERY, replies=(0x0C,),
    layouts={252: (
        bit("grid_power_down", "Grid power down", 14, same=False, device_class="problem"),
        bit("power_derating", "Power derating", 13, category=DIAGNOSTIC),
        bit("parallel_operation", "Parallel operation", 12, category=DIAGNOSTIC),
        bit("parallel_master", "Parallel master", 11, category=DIAGNOSTIC),
        bit("parallel_battery_shared", "Parallel battery connection", 10, category=DIAGNOSTIC),
        bits("battery_run_state", "Battery run state", 8, 10, category=DIAGNOSTIC),
        bits("ac_run_state", "AC side run state", 5, 8, category=DIAGNOSTIC),
        bit("relay_self_test", "Relay self-test enabled", 4, category=DIAGNOSTIC),
        bits("ac_operation_mode", "AC side operation mode", 1, 4, category=DIAGNOSTIC),
        bit("inverter_on", "Inverter switched on", 0, device_class="running"),
        number("inverter_status_word", "Inverter status word", wire=Wire.UINT, same=True,
               hidden=True),
        bits("pv_self_test_step", "PV self-test step", 10, 13, same=False, category=DIAGNOSTIC),
        bits("dc_self_test_step", "DC self-test step", 7, 10, category=DIAGNOSTIC),
        bits("ac_self_test_step", "AC self-test step", 4, 7, category=DIAGNOSTIC),
        bits("dc_run_state", "DC side run state", 2, 4, category=DIAGNOSTIC),
        bits("pv_run_state", "PV side run state", 0, 2, category=DIAGNOSTIC),
        number("pv_status_word", "PV status word", wire=Wire.UINT, same=True, hidden=True),
        bits("parallel_units", "Units running in parallel", 13, 16, category=DIAGNOSTIC),
    )},
)

# --------------------------------------------------------------------------------------
# 0x0d BMS and meter links
# --------------------------------------------------------------------------------------

LINKS = Command(
    0x0D, "links", "BMS and meter connection status", Kind.QUERY, replies=(0x0D,),
    layouts={258: (
        number("bms_link", "BMS connection status", category=DIAGNOSTIC),
        number("meter_link", "Meter connection status", category=DIAGNOSTIC),
        watts("remote_load_power", "Load power (meter)",
              note="vendor table gives no unit; it is the load power in W"),
    )},
)

# --------------------------------------------------------------------------------------
# 0x1e / 0x1f alarms: every set bit is an alarm code (see alarms.py)
# --------------------------------------------------------------------------------------

_BATTERY_ALARMS_252 = (
    alarms("battery_alarm_bits", "Battery alarms", 12, 0,
           note="codes are relative to the battery make's block (alarms.py)"),
)

BATTERY_ALARMS = Command(
    0x1E, "battery_alarms", "BMS alarms", Kind.QUERY, replies=(0x1E,),
    layouts={
        252: _BATTERY_ALARMS_252,
        258: _BATTERY_ALARMS_252 + (
            alarms("battery_summary_alarm_bits", "Battery summary alarms", 2, 752),
            reserved("reserved", 2),
        ),
    },
)

SYSTEM_FAULTS = Command(
    0x1F, "system_faults", "System faults", Kind.QUERY, replies=(0x1F,),
    layouts={252: (
        alarms("fault_word_0", "Fault word 0", 2, 0),
        alarms("fault_word_1", "Fault word 1", 2, 16),
        alarms("fault_word_2", "Fault word 2", 2, 32),
        alarms("fault_word_3", "Fault word 3", 2, 48),
        alarms("fault_word_4", "Fault word 4", 2, 64),
        reserved("reserved", 2),
    )},
)

# --------------------------------------------------------------------------------------
# 0x64 on / off
# --------------------------------------------------------------------------------------

POWER = Command(
    0x64, "power", "Inverter on / off", Kind.SETTINGS, readback=0x0C,
    layouts={252: (
        Field("inverter_on", "Inverter switched on", Wire.HEX, size=1, flag=(0x55, 0xAA)),
    )},
)

# --------------------------------------------------------------------------------------
# Working parameters: written by 0x66 (and 0x69, 0x67), read back through 0x95
# --------------------------------------------------------------------------------------

_TARIFF_NOTE = "vendor table says € / d€; the currency is the one configured in the app"


def _tariff(key: str, name: str) -> Field:
    return Field(key, name, Wire.INT, scale=0.1, precision=1, limits=(0, 3276.7),
                 category=CONFIG, note=_TARIFF_NOTE)


def _schedule(repeat: int | str) -> tuple[Field, ...]:
    return (
        clock("start", "Start", group="tou_schedule", repeat=repeat),
        clock("end", "End", group="tou_schedule", repeat=repeat),
        coded("period", "Tariff period", TARIFF_PERIODS, group="tou_schedule", repeat=repeat,
              limits=(0, 4), note="period names follow the order of the four tariffs"),
    )


_WORKING_PARAMETERS: tuple[Field, ...] = (
    _tariff("tariff_tip", "Tariff (tip)"),
    _tariff("tariff_peak", "Tariff (peak)"),
    _tariff("tariff_flat", "Tariff (flat)"),
    _tariff("tariff_valley", "Tariff (valley)"),
    watts("grid_export_limit", "Grid export power limit", limits=(0, 10000), category=CONFIG,
          state_class=None),
    watts("command_power", "Battery power in command mode", limits=(0, 10000),
          category=CONFIG, state_class=None,
          note="vendor table gives no unit; the app shows W"),
    coded("operating_mode", "Operating mode", OPERATING_MODES, limits=(0, 6),
          note="the vendor table allows codes 0 to 6; 0 and 6 have no known name, so "
               "they are shown as their code and not offered for writes"),
    number("pv_off_grid", "PV and off-grid", limits=(0, 2), category=CONFIG),
    number("voltage_drop_method", "Grid voltage drop adjustment", limits=(0, 3),
           category=CONFIG),
    flag("anti_backflow", "Anti-backflow (zero export)", category=CONFIG),
    number("battery_command", "Battery command (command mode)", limits=(0, 4),
           category=CONFIG),
    percent("grid_soc_min", "Grid-connected SOC lower limit", limits=(10, 100),
            state_class=None, category=CONFIG,
            note="write range is the project's: below 10 % risks deep discharge"),
)

_TOU_COUNT = number("tou_count", "Time-of-use periods in use", limits=(0, 16),
                    category=CONFIG)

_CUSTOM_MODE_NAMES = (
    ("custom_charge_tip", "Custom mode: charge in tip period below 10 % SOC"),
    ("custom_discharge_tip", "Custom mode: discharge in tip period above 20 % SOC"),
    ("custom_charge_peak", "Custom mode: charge in peak period below 10 % SOC"),
    ("custom_discharge_peak", "Custom mode: discharge in peak period above 20 % SOC"),
    ("custom_charge_flat", "Custom mode: charge in flat period below 10 % SOC"),
    ("custom_discharge_flat", "Custom mode: discharge in flat period above 20 % SOC"),
    ("custom_charge_valley", "Custom mode: charge in valley period below 10 % SOC"),
    ("custom_discharge_valley", "Custom mode: discharge in valley period above 20 % SOC"),
)
_CUSTOM_MODE = tuple(  # the vendor writes 1 (yes) or 2 (no), as its app's tri-state
    number(k, n, flag=(1, 2), category=CONFIG, hidden=True) for k, n in _CUSTOM_MODE_NAMES
)

_GRID_AND_BATTERY_TYPE: tuple[Field, ...] = (
    coded("grid_code", "Grid code", GRID_CODES, category=DIAGNOSTIC),
    coded("dc_battery_type", "Battery type", DC_BATTERY_TYPES, category=DIAGNOSTIC),
    number("lead_acid_capacity", "Lead-acid battery capacity", unit="Ah", limits=(0, 10000),
           category=DIAGNOSTIC),
    coded("battery_protocol", "Battery protocol", BATTERY_MAKES, category=DIAGNOSTIC),
    coded("meter_protocol", "Meter protocol", METER_PROTOCOLS, category=DIAGNOSTIC),
)

_OFF_GRID_SOC = percent("off_grid_soc_min", "Off-grid SOC lower limit", limits=(10, 100),
                        state_class=None, category=CONFIG,
                        note="write range is the project's: below 10 % risks deep discharge")

_POWER_FACTOR_SETTING = power_factor("power_factor_setting", "Power factor setting",
                                     limits=(-1, 1), state_class=None, category=CONFIG)

WORKING_PARAMETERS = Command(
    0x95, "parameters", "Working parameters", Kind.QUERY, replies=(0x95,),
    layouts={
        252: _WORKING_PARAMETERS + (_TOU_COUNT, *_schedule(16), *_CUSTOM_MODE,
                                    *_GRID_AND_BATTERY_TYPE),
        258: _WORKING_PARAMETERS + (
            _TOU_COUNT, *_schedule(16),
            flag("meter_monitor", "Meter detection", category=CONFIG),
            flag("three_phase_unbalanced", "Three-phase unbalanced output", category=CONFIG),
            _OFF_GRID_SOC,
            reserved("reserved", 40),
            *_GRID_AND_BATTERY_TYPE,
            *_CUSTOM_MODE,
        ),
        259: _WORKING_PARAMETERS + (
            _TOU_COUNT, *_schedule(16),
            _POWER_FACTOR_SETTING,
            *_CUSTOM_MODE[1:],
            *_GRID_AND_BATTERY_TYPE,
        ),
    },
    note="from PCU 259 the inverter answers with two frames, 0x95 then 0x9d",
)

OPERATING_MODE = Command(
    0x66, "set_mode", "Operating mode and time-of-use schedule", Kind.SETTINGS,
    readback=0x95,
    layouts={252: _WORKING_PARAMETERS + (
        _TOU_COUNT,
        *_schedule("tou_count"),
    )},
)

CUSTOM_MODE = Command(
    0x67, "set_custom", "Custom mode / working parameters 2", Kind.SETTINGS, readback=0x95,
    layouts={
        252: _CUSTOM_MODE,
        500: (_POWER_FACTOR_SETTING, reserved("reserved", 14)),
    },
)

CLOCK = Command(
    0x68, "set_clock", "Set the inverter clock", Kind.SETTINGS,
    layouts={252: (
        number("year", "Year", limits=(2000, 2099)),
        number("month", "Month", size=1, limits=(1, 12)),
        number("day", "Day", size=1, limits=(1, 31)),
        number("hour", "Hour", size=1, limits=(0, 23)),
        number("minute", "Minute", size=1, limits=(0, 59)),
        number("second", "Second", size=1, limits=(0, 59)),
    )},
)

GRID_BATTERY_TYPE = Command(
    0x69, "set_grid_battery", "Grid code and battery type", Kind.SETTINGS, readback=0x95,
    closes_connection=True, requires_off=True,
    layouts={252: _GRID_AND_BATTERY_TYPE},
    note="changing these requires the inverter to be off; it then drops the connection",
)

RESET = Command(
    0x70, "reset", "Reset the inverter", Kind.SETTINGS, closes_connection=True,
    layouts={252: (Field("reset", "Reset", Wire.HEX, codes={0x00FF: "reset"}),)},
)

# --------------------------------------------------------------------------------------
# Working parameters 2: written by 0x6a, read back through 0x9d
# --------------------------------------------------------------------------------------

_PARAMETERS2_258: tuple[Field, ...] = (
    flag("meter_monitor", "Meter detection", category=CONFIG),
    flag("three_phase_unbalanced", "Three-phase unbalanced output", category=CONFIG),
    _OFF_GRID_SOC,
)


def _parameters2_500(slot6: Field) -> tuple[Field, ...]:
    return _PARAMETERS2_258 + (
        percent("soc_hysteresis", "Micro-grid SOC hysteresis", limits=(0, 100),
                state_class=None, category=CONFIG),
        number("ac_pv_source", "AC-coupled PV source", limits=(0, 3), category=CONFIG),
        number("backup_priority", "Backup load supply order", limits=(0, 1), category=CONFIG),
        slot6,
        flag("backup_output", "Backup output", category=CONFIG),
        watts("charge_power_limit", "Battery charge power limit", limits=(0, 10000),
              state_class=None, category=CONFIG,
              note="vendor table gives no unit; W as for the export limit"),
        watts("discharge_power_limit", "Battery discharge power limit", limits=(0, 10000),
              state_class=None, category=CONFIG,
              note="vendor table gives no unit; W as for the export limit"),
        flag("battery_voltage_settable", "Battery voltage settable", category=CONFIG),
        volts("battery_voltage_max", "Battery voltage upper limit", wire=Wire.INT,
              limits=(0, 1000), state_class=None, category=CONFIG),
        volts("battery_voltage_min", "Battery voltage lower limit", wire=Wire.INT,
              limits=(0, 1000), state_class=None, category=CONFIG),
        flag("shadow_scan", "PV shadow scan", category=CONFIG),
        flag("battery_activation", "Battery activation", category=CONFIG),
        volts("lead_acid_charge_voltage", "Lead-acid charge voltage", wire=Wire.INT,
              limits=(0, 1000), state_class=None, category=CONFIG),
        volts("lead_acid_float_voltage", "Lead-acid float voltage", wire=Wire.INT,
              limits=(0, 1000), state_class=None, category=CONFIG),
        volts("lead_acid_eod_voltage", "Lead-acid end-of-discharge voltage", wire=Wire.INT,
              limits=(0, 1000), state_class=None, category=CONFIG),
        amps("grid_charge_current_max", "Grid charge current limit", limits=(0, 1000),
             state_class=None, category=CONFIG),
        number("parallel_battery_type", "Parallel battery connection type", limits=(0, 1),
               category=CONFIG),
        number("parallel_mode", "Single / parallel machine", limits=(0, 1), category=CONFIG,
               hidden=True),
        number("parallel_address_setting", "Parallel address setting", limits=(0, 15),
               category=CONFIG),
        flag("battery_power_manual", "Battery power manual limit", category=CONFIG),
    )


_BYPASS = flag("bypass", "Bypass mode", category=CONFIG)
_GENERATOR = Field("generator_rated_power", "Generator rated power", Wire.INT, scale=100,
                   unit="W", device_class="power", limits=(0, 30000), precision=0,
                   category=CONFIG, note="vendor unit is 0.1 kW; published in W")

_PARAMETERS2 = {
    259: _PARAMETERS2_258 + (reserved("reserved", 40),),
    500: _parameters2_500(_BYPASS),
    603: _parameters2_500(_GENERATOR),
}

WORKING_PARAMETERS_2 = Command(
    0x9D, "parameters2", "Working parameters 2", Kind.QUERY, replies=(0x9D,),
    layouts=_PARAMETERS2,
    note="also sent unasked as the second answer to 0x95",
)

OPERATING_MODE_2 = Command(
    0x6A, "set_mode2", "Working parameters 2", Kind.SETTINGS, readback=0x9D,
    layouts={258: _PARAMETERS2_258 + (reserved("reserved", 40),), **_PARAMETERS2},
    note="PCU 258 reads these back through 0x95 (no 0x9d yet)",
)

# --------------------------------------------------------------------------------------
# Forced charge / discharge: written by 0x71, read back through 0xa2
# --------------------------------------------------------------------------------------

_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


def _forced(prefix: str, what: str, soc: Field) -> tuple[Field, ...]:
    days = tuple(
        bits(f"{prefix}_{day}", f"{what} on {day.capitalize()}", 2 + 2 * i, 4 + 2 * i,
             flag=DAY_FLAG, category=CONFIG)
        for i, day in enumerate(_DAYS)
    )
    group = f"{prefix}_periods"
    return (
        bits(f"{prefix}_mode", f"{what} enabled", 0, 2, same=False, flag=(1, 0),
             category=CONFIG, note="the vendor gives no codes; 1 on, 0 off as its day switches"),
        *days,
        soc,
        number(f"{prefix}_period_count", f"{what} periods in use", limits=(0, 4),
               category=CONFIG),
        clock("start", "Start", group=group, repeat=4),
        clock("end", "End", group=group, repeat=4),
        reserved("reserved", 2, group=group, repeat=4),
    )


_FORCED = _forced("forced_charge", "Forced charge", percent(
    "forced_charge_soc_limit", "Forced charge SOC limit", limits=(0, 100), state_class=None,
    category=CONFIG, note="the SOC forced charging stops at",
)) + _forced("forced_discharge", "Forced discharge", percent(
    "forced_discharge_soc_limit", "Forced discharge SOC limit", limits=(10, 100),
    state_class=None, category=CONFIG,
    note="the SOC forced discharging stops at (the vendor names it as the charge's); the "
         "write range is the project's: below 10 % risks deep discharge",
))

FORCED_SCHEDULE = Command(
    0xA2, "forced_schedule", "Forced charge and discharge schedule", Kind.QUERY,
    replies=(0xA2,), layouts={500: _FORCED},
)

SET_FORCED_SCHEDULE = Command(
    0x71, "set_forced_schedule", "Forced charge and discharge schedule", Kind.SETTINGS,
    readback=0xA2, layouts={500: _FORCED},
    note="day switches: 1 on, 3 off, 0 not set (the vendor's app shows them as 1, 2, 0)",
)

# --------------------------------------------------------------------------------------
# Energy counters
# --------------------------------------------------------------------------------------

def _history(prefix: str) -> tuple[Field, ...]:
    return (
        Field(f"{prefix}_by_half_hour", "Today by half hour", Wire.INT, scale=0.1, repeat=48,
              hidden=True),
        Field(f"{prefix}_by_day", "This month by day", Wire.INT, unit="kWh", repeat=31,
              hidden=True),
        Field(f"{prefix}_by_month", "This year by month", Wire.INT, size=4, unit="kWh",
              repeat=12, hidden=True),
        Field(f"{prefix}_by_year", "Last years", Wire.INT, size=4, unit="kWh", repeat=5,
              hidden=True),
    )


_ENERGY_NOTE = "vendor table gives no unit; counters are kWh"
_SUMMARY_NOTE = (
    "vendor: 'load power consumption', the counter 0x9b shows as well; named after it "
    "with the frame it comes from, so that the two load counters read alike"
)

ENERGY = Command(
    0x99, "energy", "Energy totals", Kind.QUERY, replies=(0x99,),
    layouts={252: (
        energy("pv_energy_today", "PV energy today", 0.1, note=_ENERGY_NOTE),
        energy("pv_energy_total", "PV energy total", 1, size=4, note=_ENERGY_NOTE),
        energy("consumption_today", "Load energy today (summary frame)", 0.1,
               note=_SUMMARY_NOTE),
        energy("consumption_total", "Load energy total (summary frame)", 1, size=4,
               note=_SUMMARY_NOTE),
        Field("savings_today", "Savings today", Wire.INT, scale=0.1, precision=1,
              category=DIAGNOSTIC),
        Field("savings_total", "Savings total", Wire.INT, size=4, scale=0.1, precision=1,
              category=DIAGNOSTIC),
        *_history("pv_energy"),
    )},
    note="the vendor table says 0x99 also returns 0x9a-0x9c; inverters answer each alone",
)

_EXPORT_NOTE = (
    "vendor: 'grid-connected' energy, i.e. what the inverter fed into the grid (export); "
    "the purchase from the grid is counted apart, in 0x9c"
)

GRID_ENERGY = Command(
    0x9A, "grid_energy", "Grid export energy", Kind.QUERY, replies=(0x9A,),
    layouts={252: (
        energy("grid_export_today", "Grid export today", 0.1, note=_EXPORT_NOTE),
        energy("grid_export_total", "Grid export total", 1, size=4, note=_EXPORT_NOTE),
        *_history("grid_export"),
    )},
)

LOAD_ENERGY = Command(
    0x9B, "load_energy", "Load energy", Kind.QUERY, replies=(0x9B,),
    layouts={252: (
        energy("load_energy_today", "Load energy today", 0.1, note=_ENERGY_NOTE),
        energy("load_energy_total", "Load energy total", 1, size=4, note=_ENERGY_NOTE),
        *_history("load_energy"),
    )},
)

BATTERY_ENERGY = Command(
    0x9C, "battery_energy", "Grid purchase and battery energy", Kind.QUERY, replies=(0x9C,),
    layouts={258: (
        energy("grid_import_today", "Grid import today", 0.1, note=_ENERGY_NOTE),
        energy("battery_charge_today", "Battery charge today", 0.1, note=_ENERGY_NOTE),
        energy("battery_discharge_today", "Battery discharge today", 0.1, note=_ENERGY_NOTE),
        energy("grid_import_total", "Grid import total", 1, size=4, note=_ENERGY_NOTE),
        energy("battery_charge_total", "Battery charge total", 0.1, size=4,
               note="vendor calls it a daily total; it is the lifetime counter in kWh"),
        energy("battery_discharge_total", "Battery discharge total", 0.1, size=4,
               note="vendor calls it a daily total; it is the lifetime counter in kWh"),
        watts("remote_load", "Load power (meter, energy frame)", category=DIAGNOSTIC,
              note="vendor table gives no unit; W as in 0x0d"),
    )},
)

# --------------------------------------------------------------------------------------
# DRM (demand response modes)
# --------------------------------------------------------------------------------------

DRM = Command(
    0xA1, "drm", "Demand response mode status", Kind.QUERY, replies=(0xA1,),
    layouts={258: tuple(
        bit(f"drm{n}", f"DRM {n}", n, same=(n != 8), category=DIAGNOSTIC)
        for n in range(8, -1, -1)
    )},
)

# --------------------------------------------------------------------------------------
# Wi-Fi module: network writes and the one network query
# --------------------------------------------------------------------------------------

WIFI_MODES = {0: "Access point", 1: "Station"}

_ROUTER = (
    coded("wifi_mode", "Wi-Fi mode", WIFI_MODES, size=1, limits=(0, 1)),
    text("router_ssid", "Router SSID", 30, limits=(1, 30)),
    text("router_password", "Router password", 30, limits=(1, 30), secret=True),
)
_CLOUD = (
    text("cloud_server", "Cloud server address", 20, limits=(7, 20)),
    text("cloud_port", "Cloud server port", 10, limits=(1, 5)),
)

WIFI_PASSWORD = Command(
    0x94, "set_wifi_password", "Set the access-point password", Kind.NETWORK,
    closes_connection=True,
    layouts={252: (text("ap_password", "Access-point password", 0, limits=(8, 16),
                        secret=True),)},
)

ROUTER = Command(
    0x9E, "set_router", "Set the router (station mode)", Kind.NETWORK, closes_connection=True,
    layouts={252: _ROUTER},
)

CLOUD = Command(
    0x9F, "set_cloud", "Set the cloud server", Kind.NETWORK, closes_connection=True,
    layouts={252: _CLOUD},
)

LOCAL_NETWORK = Command(
    0xA3, "set_local_network", "Wi-Fi module IP configuration", Kind.NETWORK,
    layouts={500: (
        number("ip_mode", "IP address mode", size=1, limits=(0, 2)),
        text("ip_address", "IP address", 20),
        text("ip_netmask", "Netmask", 20),
        text("ip_gateway", "Gateway", 20),
        reserved("reserved", 20),
    )},
)

ROUTER_AND_CLOUD = Command(
    0xB0, "set_router_cloud", "Set router and cloud server", Kind.NETWORK,
    layouts={500: _ROUTER + _CLOUD},
)

ROUTER_AND_CLOUD_QUERY = Command(
    0xB1, "network", "Router and cloud server", Kind.QUERY, replies=(0xB1,),
    layouts={500: _ROUTER + _CLOUD},
    note="the reply carries the router password in clear; it is never published",
)

# --------------------------------------------------------------------------------------
# Registers: the write 0xba and the two-part query 0xbb
# --------------------------------------------------------------------------------------

_REGISTERS = (
    number("register_count", "Register count", limits=(1, 10)),
    number("address", "Register address", wire=Wire.UINT, group="registers",
           repeat="register_count", limits=(0, 0xFFFF)),
    number("value", "Register value", group="registers", repeat="register_count",
           limits=(-0x8000, 0x7FFF)),
)

REGISTER_WRITE = Command(
    0xBA, "set_registers", "Write registers", Kind.SPECIAL, layouts={603: _REGISTERS},
)

REGISTER_QUERY = Command(
    0xBB, "registers", "Read registers (two-part exchange)", Kind.SPECIAL, replies=(0xBB,),
    layouts={603: _REGISTERS},
    note=(
        "project model of the exchange: part 1 carries the count, part 2 the addresses "
        "(2 bytes each), the reply the count and the address/value pairs; a lone part 1 "
        "blocks the inverter until it is power-cycled"
    ),
)

# --------------------------------------------------------------------------------------

COMMANDS: dict[int, Command] = {
    c.code: c
    for c in (
        SYSTEM_INFO, BATTERY, MEASUREMENTS, RUNNING_STATUS, LINKS, BATTERY_ALARMS,
        SYSTEM_FAULTS, POWER, OPERATING_MODE, CUSTOM_MODE, CLOCK, GRID_BATTERY_TYPE,
        OPERATING_MODE_2, RESET, SET_FORCED_SCHEDULE, WIFI_PASSWORD, WORKING_PARAMETERS,
        ENERGY, GRID_ENERGY, LOAD_ENERGY, BATTERY_ENERGY, WORKING_PARAMETERS_2,
        ROUTER, CLOUD, DRM, FORCED_SCHEDULE, LOCAL_NETWORK, ROUTER_AND_CLOUD,
        ROUTER_AND_CLOUD_QUERY, REGISTER_WRITE, REGISTER_QUERY,
    )
}
# The settings writes: what Home Assistant (and, where allowed, the app or the cloud)
# may change. The reset is a settings command too, but never one of them.
SETTINGS_WRITES = frozenset(
    code for code, c in COMMANDS.items() if c.kind is Kind.SETTINGS and c is not RESET)
# Queries a foreign requester may send only where a setting names them: 0xb1's reply
# carries the Wi-Fi password, and a lone 0xbb part 1 blocks the inverter.
GUARDED_QUERIES = frozenset({0xB1, 0xBB})
# What passes a foreign requester only where a setting names it: the reset, the network
# and register commands, and the guarded queries (settings writes follow writes.enabled).
NAMED_ONLY = frozenset(
    code for code, c in COMMANDS.items()
    if c is RESET or c.kind in (Kind.NETWORK, Kind.SPECIAL) or code in GUARDED_QUERIES)

GROUP_NAMES = {
    "tou_schedule": "Time-of-use schedule",
    "forced_charge_periods": "Forced charge periods",
    "forced_discharge_periods": "Forced discharge periods",
    "registers": "Registers",
}

# The field that says how many records of a group are in use: the replies carry a fixed
# number of slots (16 tariff periods, 4 forced periods) and only the first ones count.
GROUP_COUNTS = {
    "tou_schedule": "tou_count",
    "forced_charge_periods": "forced_charge_period_count",
    "forced_discharge_periods": "forced_discharge_period_count",
    "registers": "register_count",
}

# From PCU 259 the 0x95 query is answered by two frames.
REPLIES_FROM: dict[int, dict[int, tuple[int, ...]]] = {0x95: {259: (0x95, 0x9D)}}


def readback(command: Command, version: int) -> Command | None:
    """The query that shows what a settings write set, at this PCU version."""
    if command.readback is None:
        return None
    query = COMMANDS[command.readback]
    if query.layout(version) is None and command.code == 0x6A:
        return WORKING_PARAMETERS  # before 0x9d existed, 0x95 carried these fields
    return query


def replies(command: Command, version: int) -> tuple[int, ...]:
    """The frames that answer ``command`` at this PCU version, in order."""
    by_version = REPLIES_FROM.get(command.code, {})
    usable = [v for v in by_version if v <= version]
    return by_version[max(usable)] if usable else command.replies


def same_at_every_version(command: Command) -> bool:
    """Whether the replies to ``command`` read alike at every PCU version that offers it."""
    return len(command.layouts) == 1 and command.code not in REPLIES_FROM


def available(version: int) -> Iterator[Command]:
    """The commands an inverter of this PCU version offers, by code."""
    for code in sorted(COMMANDS):
        if COMMANDS[code].layout(version) is not None:
            yield COMMANDS[code]


def find(name_or_code: str) -> Command | None:
    """A command by hex code ("0a", "0x0A", "9d") or by key ("battery")."""
    text_ = name_or_code.strip().lower()
    for command in COMMANDS.values():
        if command.key == text_:
            return command
    try:
        code = int(text_.removeprefix("0x"), 16)
    except ValueError:
        return None
    return COMMANDS.get(code)
