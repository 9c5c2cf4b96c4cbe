"""The container's command line, run outside Docker, configured the way compose does.

The test reads the ``Dockerfile`` (ENTRYPOINT, CMD, ENV, HEALTHCHECK) and the bridge
service's environment in ``docker-compose.yml``, then runs exactly that command from the
venv's bin directory with only ``SERMATEC_`` variables pointing at the test's simulator
and Mosquitto. The HEALTHCHECK command must say healthy while the inverter answers and
unhealthy, with the reason, once it has not for longer than the max age.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sermatec_bridge.simulator import Simulator

from .conftest import (
    BASE,
    HOST,
    PREFIX,
    REPO,
    SERIAL,
    VENV_BIN,
    HomeAssistant,
    Mosquitto,
    clean_env,
    retained,
    running_process,
    sim_port,
    topic,
)

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
MAX_AGE = 3.0  # SERMATEC_HEALTH__MAX_AGE for the test: staleness shows within seconds
UNHEALTHY = 12  # the exit status of `sermatec-bridge health` when unhealthy


# --------------------------------------------------------------------------------------
# Reading the Dockerfile and the compose file
# --------------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    """The instructions of the final stage that matter at run time."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] | None = None
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    user: str | None = None


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def exec_form(arguments: str, what: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"{what} must be in exec (JSON array) form: {arguments}")
    return value


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    final = Dockerfile()
    for keyword, rest in instructions(path.read_text()):
        if keyword == "FROM":
            final = Dockerfile()  # only the final stage is the image
        elif keyword == "ENTRYPOINT":
            final.entrypoint = exec_form(rest, "ENTRYPOINT")
        elif keyword == "CMD":
            final.cmd = exec_form(rest, "CMD")
        elif keyword == "USER":
            final.user = rest
        elif keyword == "ENV":
            words = shlex.split(rest)
            if words and "=" not in words[0]:  # the legacy form: ENV KEY value
                final.env[words[0]] = " ".join(words[1:])
            else:
                final.env.update(w.split("=", 1) for w in words)  # type: ignore[misc]
        elif keyword == "HEALTHCHECK":
            options, _, command = rest.partition("CMD")
            final.healthcheck = exec_form(command.strip(), "HEALTHCHECK CMD")
            final.healthcheck_options = dict(
                re.findall(r"--([a-z-]+)=(\S+)", options))
    return final


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


_DEFAULT = re.compile(r"^\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}$")


def compose_environment(service: str) -> dict[str, str]:
    """A service's environment with compose's ``${VAR:-default}`` taken at its default."""
    environment = compose()["services"][service].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "")
                           for item in environment)
    out: dict[str, str] = {}
    for key, value in environment.items():
        text = "" if value is None else str(value)
        match = _DEFAULT.match(text)
        out[str(key)] = (match.group("default") or "") if match else text
    return out


def resolve(argv: list[str], path: str) -> list[str]:
    """The command with its program looked up on ``path`` (the venv's bin comes first)."""
    program = shutil.which(argv[0], path=path)
    assert program is not None, f"{argv[0]} is not installed in {path}"
    return [program, *argv[1:]]


# --------------------------------------------------------------------------------------
# Static checks
# --------------------------------------------------------------------------------------


def test_compose_runs_the_image_as_its_non_root_user_with_a_healthcheck() -> None:
    image = read_dockerfile()
    # Root by default, for the Home Assistant app (its options file is root's); compose
    # runs every service as the user the image makes.
    assert image.user is None
    assert "--uid 10001 --gid 10001" in DOCKERFILE.read_text()
    for name in ("bridge", "simulator"):
        service = compose()["services"][name]
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
    assert image.healthcheck, "the image must have a HEALTHCHECK"
    assert image.healthcheck[-1] == "health"
    assert image.entrypoint == ["sermatec-bridge"]
    assert image.cmd == ["run"]
    assert image.env.get("SERMATEC_HEALTH__FILE"), "the heartbeat goes to the volume"


def test_compose_services() -> None:
    services = compose()["services"]
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"

    bridge = services["bridge"]
    build = bridge["build"]
    assert (build if isinstance(build, str) else build.get("context")) == "."
    assert bridge["restart"] == "unless-stopped"
    assert "depends_on" not in bridge, "the bridge also runs alone (Home Assistant's broker)"
    assert "profiles" not in bridge, "the bridge runs without a profile"

    simulator = services["simulator"]
    assert simulator["profiles"] == ["demo"]
    assert simulator["command"][0] == "simulate"

    environment = compose_environment("bridge")
    for key in ("SERMATEC_INVERTER__HOST", "SERMATEC_MQTT__HOST"):
        assert key in environment, key
    assert environment["SERMATEC_MQTT__HOST"] == "mosquitto"
    assert bridge["env_file"] == [{"path": ".env", "required": False}]  # tests/test_compose.py


# --------------------------------------------------------------------------------------
# The container's command, run
# --------------------------------------------------------------------------------------


@dataclass
class Container:
    env: dict[str, str]
    image: Dockerfile
    process: asyncio.subprocess.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def run_command(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace").strip()


async def healthcheck(container: Container) -> tuple[int, str]:
    assert container.image.healthcheck is not None
    argv = resolve(container.image.healthcheck, container.env["PATH"])
    return await run_command(argv, container.env)


async def health_until(container: Container, healthy: bool, within: float) -> tuple[int, str]:
    """Run the HEALTHCHECK command until it gives the expected verdict; the last result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        code, output = await healthcheck(container)
        if (code == 0) == healthy or loop.time() > deadline:
            return code, output
        await asyncio.sleep(0.5)


@pytest.fixture
async def container(broker: Mosquitto, sim: Simulator,
                    tmp_path: Path) -> AsyncIterator[Container]:
    image = read_dockerfile()
    environment = compose_environment("bridge")
    # Point compose's variables at the test's simulator and broker.
    environment.update({
        "SERMATEC_INVERTER__HOST": HOST,
        "SERMATEC_INVERTER__PORT": str(sim_port(sim)),
        "SERMATEC_MQTT__HOST": HOST,
        "SERMATEC_MQTT__PORT": str(broker.port),
        "SERMATEC_POLL__LIVE": "1",
    })
    unknown = sorted(k for k in environment if not k.startswith("SERMATEC_") and k != "TZ")
    assert not unknown, f"compose passes variables the bridge does not read: {unknown}"
    env = clean_env(**image.env)  # the image's ENV ...
    env.update(environment)  # ... then compose's environment, as Docker does
    env.update({
        "SERMATEC_HEALTH__FILE": str(tmp_path / "run" / "health.json"),
        "SERMATEC_HEALTH__MAX_AGE": str(MAX_AGE),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    argv = resolve(image.entrypoint + image.cmd, env["PATH"])
    log = tmp_path / "bridge.log"
    async with running_process(argv, env, log) as process:
        yield Container(env, image, process, log)


async def test_container_command_publishes_and_reports_health(
        container: Container, ha: HomeAssistant, sim: Simulator, broker: Mosquitto) -> None:
    # What Home Assistant sees: discovery, states, online.
    await ha.wait_text(f"{BASE}/bridge/state", "online", within=20)
    await ha.wait_text(topic("availability"), "online", within=10)
    device = await ha.wait_json(f"{PREFIX}/device/{SERIAL}/config", within=10)
    assert device["dev"]["serial_number"] == SERIAL
    assert not any(c["p"] in ("number", "select", "switch", "button")
                   for c in device["cmps"].values()), "compose leaves writes off"
    for group in ("live", "energy", "settings", "system", "alarms"):
        await ha.wait_json(topic(group), lambda s: "last_seen" in s, within=10)
    on_broker = await retained(broker.port)
    assert f"{PREFIX}/device/{SERIAL}/config" in on_broker

    # The HEALTHCHECK, while all is well.
    code, output = await health_until(container, healthy=True, within=10)
    assert code == 0, output
    heartbeat = container.env["SERMATEC_HEALTH__FILE"]
    assert re.fullmatch(rf"healthy: heartbeat \d+ s old in {re.escape(heartbeat)}", output)

    # The inverter goes away: unhealthy once the last poll is older than the max age.
    await sim.stop()
    await ha.wait_text(topic("availability"), "offline", within=15)
    code, output = await health_until(container, healthy=False, within=MAX_AGE + 10)
    assert code == UNHEALTHY, output
    assert "unhealthy" in output
    assert "last successful poll" in output, output
    assert container.process.returncode is None, "the daemon keeps running and retrying"

    # The image's ENV asks for JSON logs: every line is one JSON object.
    container.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(container.process.wait(), 15) == 0
    lines = [line for line in container.output().splitlines() if line.strip()]
    assert lines
    events = [json.loads(line) for line in lines]
    assert any(e.get("event") == "mqtt connected" for e in events)
    assert any(e.get("event") == "inverter offline" for e in events)


async def test_healthcheck_without_a_daemon_is_unhealthy(tmp_path: Path) -> None:
    image = read_dockerfile()
    assert image.healthcheck is not None
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = clean_env(**image.env)
    env.update(compose_environment("bridge"))
    env.update({"PATH": path, "SERMATEC_HEALTH__FILE": str(tmp_path / "missing.json")})
    code, output = await run_command(resolve(image.healthcheck, path), env)
    assert code == UNHEALTHY
    assert "no heartbeat file" in output
