"""Real frames recorded on inverters and from the official app, decoded end to end.

The hex strings are community captures (measurements). Expected values are worked out
by hand from the bytes, field by field, and written here as literals.
"""

from __future__ import annotations

import pytest

from sermatec_bridge.protocol import codec, frame, tables
from sermatec_bridge.protocol.frame import APP, INVERTER

SYSTEM_INFO = (
    "fe551464980032019b000200015354313131313131313131313131313131313131313131313131"
    "00000000000000000000000000000000000096ae"
)
BATTERY = (
    "fe5514640a002612ecffed016800150064002200b900b9151810fe"
    "000000000000000000000000000000000000cdae"
)
RUNNING_STATUS = "fe5514640c000465930dbf98ae"
LINKS = "fe5514640d0006000000000c1ecdae"
SET_MODE = "fe55641466002000000000000000002710000000010000000000000000002800010000059f000314ae"
SET_GRID_BATTERY = "fe55641469000a0009000100c80002000277ae"
SET_MODE2 = (
    "fe5564146a002e00eeee00000a000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000009aae"
)


def reply(hex_frame: str, version: int = 411) -> codec.Reading:
    parsed = frame.parse_frame(bytes.fromhex(hex_frame))
    assert (parsed.source, parsed.destination) == (INVERTER, APP)
    return codec.decode_payload(parsed.command, version, parsed.payload)


def test_system_info_has_a_bad_checksum() -> None:
    with pytest.raises(frame.BadChecksum) as caught:
        frame.parse_frame(bytes.fromhex(SYSTEM_INFO))
    message = str(caught.value)
    assert "carries 0x96" in message
    assert "computes to 0xe0" in message


def test_system_info_decodes_when_not_verified() -> None:
    parsed = frame.parse_frame(bytes.fromhex(SYSTEM_INFO), verify=False)
    assert parsed.command == 0x98 and len(parsed.payload) == 50
    values = codec.decode_payload(0x98, 0, parsed.payload).values
    assert values["pcu_version"] == 411  # 0x019b
    assert values["serial_number"].startswith("ST111")
    assert values["serial_number"] == "ST" + "1" * 24  # 26 bytes
    assert values["serial_number_extension"] == ""
    # In the vendor's field order the 0x0002 word is the battery make and 0x0001 the
    # model code (captures.md calls 2 the model code).
    assert values["battery_make"] == "Pylontech high voltage"
    assert values["model_code"] == "10 kW"


def test_battery() -> None:
    reading = reply(BATTERY)
    assert reading.values == {
        "battery_voltage": 484.4,  # 0x12ec = 4844 tenths
        "battery_current": -1.9,  # 0xffed = -19 tenths
        "battery_temperature": 36.0,  # 0x0168 = 360 tenths
        "battery_soc": 21,  # 0x0015
        "battery_soh": 100,  # 0x0064
        "battery_state": "Discharging",  # 0x0022
        "battery_max_charge_current": 18.5,  # 0x00b9
        "battery_max_discharge_current": 18.5,
        "battery_charge_cutoff_voltage": 540.0,  # 0x1518
        "battery_discharge_cutoff_voltage": 435.0,  # 0x10fe
        "battery_cycles": 0,
        "battery_pressure": 0,
        "battery_warning_code": 0,
        "battery_error_code": 0,
        "battery_link": "Connected",
    }
    assert reading.extra == bytes(8)  # 38 bytes where the table describes 30


def test_running_status_bit_views() -> None:
    values = reply(RUNNING_STATUS).values
    # first word 0x6593 = 0110 0101 1001 0011
    assert values["inverter_status_word"] == 0x6593
    assert values["grid_power_down"] is True  # bit 14
    assert values["power_derating"] is True  # bit 13
    assert values["parallel_operation"] is False  # bit 12
    assert values["parallel_master"] is False  # bit 11
    assert values["parallel_battery_shared"] is True  # bit 10
    assert values["battery_run_state"] == 1  # bits 8..9 = 01
    assert values["ac_run_state"] == 4  # bits 5..7 = 100
    assert values["relay_self_test"] is True  # bit 4
    assert values["ac_operation_mode"] == 1  # bits 1..3 = 001
    assert values["inverter_on"] is True  # bit 0
    # second word 0x0dbf = 0000 1101 1011 1111
    assert values["pv_status_word"] == 0x0DBF
    assert values["parallel_units"] == 0  # bits 13..15 = 000
    assert values["pv_self_test_step"] == 3  # bits 10..12 = 011
    assert values["dc_self_test_step"] == 3  # bits 7..9 = 011
    assert values["ac_self_test_step"] == 3  # bits 4..6 = 011
    assert values["dc_run_state"] == 3  # bits 2..3 = 11
    assert values["pv_run_state"] == 3  # bits 0..1 = 11 (an inclusive end would read 7)


def test_links() -> None:
    assert reply(LINKS).values == {"bms_link": 0, "meter_link": 0, "remote_load_power": 3102}


def test_replies_reencode_byte_for_byte() -> None:
    for hex_frame in (BATTERY, RUNNING_STATUS, LINKS):
        parsed = frame.parse_frame(bytes.fromhex(hex_frame))
        reading = codec.decode_payload(parsed.command, 411, parsed.payload)
        payload = codec.encode(reading.command, 411, {**reading.values, "extra": reading.extra})
        assert frame.reply(parsed.command, payload) == bytes.fromhex(hex_frame)


REQUESTS = {
    SET_MODE: {
        "tariff_tip": 0.0,
        "tariff_peak": 0.0,
        "tariff_flat": 0.0,
        "tariff_valley": 0.0,
        "grid_export_limit": 10000,  # 0x2710
        "command_power": 0,
        "operating_mode": "General",
        "pv_off_grid": 0,
        "voltage_drop_method": 0,
        "anti_backflow": None,  # 0x0000: not set
        "battery_command": 0,
        "grid_soc_min": 40,  # 0x0028
        "tou_count": 1,
        "tou_schedule": [{"start": "00:00", "end": "23:59", "period": "Flat"}],  # 1439, 3
    },
    SET_GRID_BATTERY: {
        "grid_code": "Czech Republic",  # 9
        "dc_battery_type": "Lithium",
        "lead_acid_capacity": 200,  # 0x00c8
        "battery_protocol": "Pylontech high voltage",  # 2
        "meter_protocol": "Acrel three-phase",  # 2
    },
}


@pytest.mark.parametrize("hex_frame", [SET_MODE, SET_GRID_BATTERY, SET_MODE2])
def test_app_requests_decode_and_rebuild_byte_for_byte(hex_frame: str) -> None:
    parsed = frame.parse_frame(bytes.fromhex(hex_frame))
    assert (parsed.source, parsed.destination) == (APP, INVERTER)
    command = tables.COMMANDS[parsed.command]
    reading = codec.decode(command, 609, parsed.payload)
    assert reading.extra == b""
    if hex_frame in REQUESTS:
        assert reading.values == REQUESTS[hex_frame]
    assert codec.build(command, 609, reading.values) == parsed.payload
    assert frame.request(parsed.command, codec.build(command, 609, reading.values)) == (
        bytes.fromhex(hex_frame)
    )


def test_operating_mode_2_request() -> None:
    payload = frame.parse_frame(bytes.fromhex(SET_MODE2)).payload
    values = codec.decode(tables.COMMANDS[0x6A], 609, payload).values
    assert values["meter_monitor"] is False  # 0x00ee
    assert values["three_phase_unbalanced"] is True  # 0xee00
    assert values["off_grid_soc_min"] == 10  # 0x000a
    assert values["generator_rated_power"] == 0  # PCU 603 layout (609 uses it)
    assert "bypass" not in values
    rest = {k: v for k, v in values.items()
            if k not in ("meter_monitor", "three_phase_unbalanced", "off_grid_soc_min")}
    assert set(rest.values()) <= {0, None}  # 0.0 == 0
