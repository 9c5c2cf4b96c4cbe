"""`make demo` as a newcomer runs it: simulator, broker and bridge, shown live."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def run_demo(*extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sermatec_bridge.demo", "--duration", "12", *extra],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_demo_shows_entities_values_and_a_confirmed_write() -> None:
    out = run_demo()
    assert "inverter availability: online" in out
    assert "Battery state of charge" in out and " % " in out + " "
    assert "PV energy total" in out and "kWh" in out
    assert 'write result: {"ok": true, "changed": {"grid_soc_min": 25}' in out


@pytest.mark.skipif(importlib.util.find_spec("amqtt") is None,
                    reason="the amqtt fallback broker is not installed (pip install amqtt)")
def test_demo_runs_on_the_python_broker_where_mosquitto_is_missing() -> None:
    out = run_demo("--broker", "amqtt")
    assert "amqtt" in out
    assert 'write result: {"ok": true' in out
