"""A simulated Sermatec inverter on TCP, for tests and demos without hardware."""

from .model import (
    DEFAULT_SERIAL,
    MODELS,
    InverterModel,
    Outcome,
    parse_time_of_day,
    simulated_clock,
)
from .server import Fault, Simulator, run_simulator

__all__ = [
    "DEFAULT_SERIAL",
    "MODELS",
    "Fault",
    "InverterModel",
    "Outcome",
    "Simulator",
    "parse_time_of_day",
    "run_simulator",
    "simulated_clock",
]
