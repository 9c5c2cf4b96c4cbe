"""``sermatec-ess daemon -f``: the seed tool's command detaches for real."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from sermatec_bridge.simulator import Simulator

from .conftest import (
    VENV_BIN,
    HomeAssistant,
    Mosquitto,
    clean_env,
    eventually,
    sim_port,
    topic,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_daemon_fork_detaches_logs_to_a_file_and_writes_its_pid(
        broker: Mosquitto, sim: Simulator, ha: HomeAssistant, tmp_path: Path) -> None:
    pid_file, log_file = tmp_path / "bridge.pid", tmp_path / "bridge.log"
    argv = [sys.executable, "-m", "sermatec_bridge", "-i", "127.0.0.1", "-p",
            str(sim_port(sim)), "daemon", "-f", "-m", "127.0.0.1", "-t", str(broker.port),
            "-w", "1", "--pid-file", str(pid_file), "--log-file", str(log_file)]
    env = clean_env(SERMATEC_HEALTH__FILE=str(tmp_path / "health.json"))
    command = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(command.communicate(), 20)
    assert command.returncode == 0, err.decode()
    match = re.search(r"running in the background as PID (\d+)", out.decode())
    assert match, out.decode()
    pid = int(match[1])
    try:
        assert pid_file.read_text().strip() == str(pid)
        assert alive(pid) and pid != command.pid
        assert os.getsid(pid) != os.getsid(0)  # a session of its own: no terminal
        await ha.wait_text(topic("availability"), "online", within=15)
        assert "inverter online" in log_file.read_text()  # its logs go to the file

        again = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(again.communicate(), 20)
        assert again.returncode == 1 and f"already running as PID {pid}" in err.decode()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    await eventually(lambda: not alive(pid), within=10)
    assert not pid_file.exists()  # removed on the way out


async def test_the_seed_readmes_daemon_command_with_k_and_the_inverter_after_it(
        broker: Mosquitto, sim: Simulator, ha: HomeAssistant, tmp_path: Path) -> None:
    """``sermatec-ess daemon --host H --port P -k``, as the community tool's README types it."""
    pid_file = tmp_path / "bridge.pid"
    command = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "sermatec-ess"), "daemon", "--host", "127.0.0.1", "--port",
        str(broker.port), "-k", "-i", f"127.0.0.1:{sim_port(sim)}", "-w", "1",
        "--pid-file", str(pid_file), "--log-file", str(tmp_path / "bridge.log"),
        env=clean_env(SERMATEC_HEALTH__FILE=str(tmp_path / "health.json")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(command.communicate(), 20)
    assert command.returncode == 0, err.decode()
    match = re.search(r"^sermatec-ess running in the background as PID (\d+)$", out.decode(),
                      re.MULTILINE)
    assert match, out.decode()
    pid = int(match[1])
    try:
        assert pid_file.read_text().strip() == str(pid)
        await ha.wait_text(topic("availability"), "online", within=15)  # the -i inverter
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    await eventually(lambda: not alive(pid), within=10)
