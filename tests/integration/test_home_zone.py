"""The bridge's own process sets the inverter's clock to the home's local time.

``sermatec-bridge run`` is started as a user starts it: with ``TZ`` (pip, systemd, compose's
.env), or as the Home Assistant app, configured by a (fake) Supervisor on loopback that
names the MQTT broker, its credentials and Home Assistant's time zone. The simulator
records the local time the clock write carried; the test compares it with the zone's
local time taken just before the press and just after the result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fakesupervisor import TOKEN, FakeSupervisor

from sermatec_bridge.simulator import Simulator

from .conftest import (
    HOST,
    HomeAssistant,
    Mosquitto,
    clean_env,
    eventually,
    password_file,
    running_process,
    sim_port,
    wait_ready,
)

USER, PASSWORD = "addons", "Supervisor-made-Pa55word"


@asynccontextmanager
async def bridge_process(env: dict[str, str], log: Path) -> AsyncIterator[Path]:
    """``sermatec-bridge run`` with ``env``; stopped with SIGTERM, which it must obey."""
    argv = [sys.executable, "-m", "sermatec_bridge", "run"]
    async with running_process(argv, env, log) as process:
        yield log
    assert process.returncode == 0, text(log)


def text(path: Path) -> str:
    return path.read_text()


async def press_clock(ha: HomeAssistant, sim: Simulator,
                      zone: str) -> tuple[dict[str, Any], datetime]:
    """Press "Set clock"; the result, and the local time the simulator was set to, checked
    to lie between the zone's local time before the press and after the result."""
    tz = ZoneInfo(zone)
    before = datetime.now(tz).replace(tzinfo=None, microsecond=0)
    result = await ha.write("set/clock", "PRESS")
    assert result["ok"] is True, result
    await eventually(lambda: sim.model.clock_set is not None, what="the clock write applied")
    after = datetime.now(tz).replace(tzinfo=None)
    assert sim.model.clock_set is not None
    assert before <= sim.model.clock_set <= after, (before, sim.model.clock_set, after)
    written = datetime.fromisoformat(result["changed"]["clock"])
    assert written.replace(tzinfo=None) == sim.model.clock_set
    assert written.utcoffset() == tz.utcoffset(sim.model.clock_set)
    assert f"local time of {zone} (" in result["note"], result["note"]
    return result, sim.model.clock_set


@pytest.mark.parametrize("zone", ["Pacific/Auckland", "America/New_York"])
async def test_the_clock_is_set_to_the_local_time_of_tz(
        zone: str, broker: Mosquitto, sim: Simulator, ha: HomeAssistant,
        tmp_path: Path) -> None:
    env = clean_env(
        TZ=zone, SERMATEC_INVERTER__HOST=HOST, SERMATEC_INVERTER__PORT=str(sim_port(sim)),
        SERMATEC_MQTT__HOST=HOST, SERMATEC_MQTT__PORT=str(broker.port),
        SERMATEC_WRITES__ENABLED="true", SERMATEC_POLL__LIVE="1", SERMATEC_LOG__FORMAT="json",
        SERMATEC_HEALTH__FILE=str(tmp_path / "health.json"))
    async with bridge_process(env, tmp_path / "bridge.log") as log:
        await wait_ready(ha, within=30)
        await press_clock(ha, sim, zone)
        events = [json.loads(line) for line in text(log).splitlines()]
    [start] = [e for e in events if e["event"] == "starting"]
    assert start["time_zone"].startswith(f"{zone} (") and start["zone_from"] == f"TZ={zone}"
    [written] = [e for e in events if e["event"] == "write result"]
    assert zone in written["note"] and written["changed"]["clock"]  # the log names both


@pytest.fixture
def password_broker(mosquitto_bin: str, tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto that lets in only the user the Supervisor hands out, as the app's."""
    passwords = password_file(tmp_path, USER, PASSWORD)
    mosquitto = Mosquitto(mosquitto_bin, tmp_path / "mosquitto",
                          extra=f"password_file {passwords}", anonymous=False)
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


async def test_the_app_uses_the_supervisors_broker_and_home_assistants_zone(
        password_broker: Mosquitto, sim: Simulator, tmp_path: Path) -> None:
    supervisor = FakeSupervisor(timezone="Pacific/Auckland", broker={
        "host": HOST, "port": password_broker.port, "username": USER, "password": PASSWORD})
    options = tmp_path / "options.json"  # as the Configuration tab saves it
    options.write_text(json.dumps({
        "inverter": {"host": HOST, "port": sim_port(sim)}, "writes": {"enabled": True},
        "poll": {"live": 1}, "mqtt": {}, "log": {"level": "debug"}}))
    env = clean_env(
        SUPERVISOR_TOKEN=TOKEN, SERMATEC_APP_OPTIONS=str(options),
        TZ="America/New_York",  # not Home Assistant's: the Supervisor's answer counts
        # A proxy must never see the app's token: the Supervisor is asked directly.
        http_proxy=f"http://{HOST}:9", HTTP_PROXY=f"http://{HOST}:9", no_proxy="", NO_PROXY="",
        SERMATEC_LOG__FORMAT="json", SERMATEC_HEALTH__FILE=str(tmp_path / "health.json"))
    with supervisor.running():
        env["SUPERVISOR_URL"] = supervisor.url
        async with HomeAssistant(password_broker.port, username=USER,
                                 password=PASSWORD) as ha, \
                bridge_process(env, tmp_path / "bridge.log") as log:
            await wait_ready(ha, within=30)  # it got in with the Supervisor's credentials
            await press_clock(ha, sim, "Pacific/Auckland")
    output = text(log)
    assert f"broker='{HOST}:{password_broker.port} (from the Supervisor)'" in output, output
    assert "time_zone='Pacific/Auckland (" in output  # console lines in the app's log
    assert {auth for _, auth in supervisor.requests} == {f"Bearer {TOKEN}"}
    assert PASSWORD not in output and TOKEN not in output  # debug log level included
