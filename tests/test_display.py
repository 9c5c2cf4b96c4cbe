"""Readings as text: numbers with the decimals their scale gives."""

from __future__ import annotations

from sermatec_bridge import display
from sermatec_bridge.protocol import codec, tables


def test_energy_prints_with_the_precision_of_its_scale() -> None:
    command = tables.COMMANDS[0x9A]  # today in 0.1 kWh, total in kWh, history lists
    values = dict(codec.decode(command, 609, bytes(codec.fixed_size(command, 609) or 0)).values)
    values |= {"grid_export_today": 12.3, "grid_export_total": 1450,
               "grid_export_by_half_hour": [0.5] + [0.0] * 47}
    lines = display.lines(codec.decode(command, 609, codec.encode(command, 609, values)))
    assert "Grid export today: 12.3 kWh" in lines
    assert "Grid export: 1450 kWh" in lines
    (half_hours,) = [f for f in command.layouts[252] if f.key == "grid_export_by_half_hour"]
    assert display.format_value(half_hours, [0.5, 0.30000000000000004]) == "0.5, 0.3"


def test_a_scale_of_a_hundredth_keeps_two_decimals() -> None:
    (frequency,) = [f for f in tables.COMMANDS[0x0B].layouts[252]
                    if f.key == "grid_frequency"]
    assert display.format_value(frequency, 50.0) == "50.00"
    assert display._decimals(0.001) == 3 and display._decimals(1) == 0
