"""Docker Compose as ``docker compose config`` renders it (Compose v2, no Docker engine needed).

Each test copies the compose files into a temporary project, with or without a ``.env``,
renders the configuration with the Compose version the README asks for, and checks what
the containers would get.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sermatec_bridge.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / ".venv-tools" / "bin" / "docker-compose"
FILES = ("docker-compose.yml", "docker-compose.config.yml", "docker-compose.cloud.yml",
         ".env.example")

pytestmark = pytest.mark.skipif(not COMPOSE.exists(),
                                reason="docker compose is not installed (make test installs it)")


def render(project: Path, env: str | None, *args: str) -> dict[str, Any]:
    """``docker compose config`` of a copy of the project; ``env``: the .env (None: none)."""
    for name in FILES:
        shutil.copy(ROOT / name, project / name)
    if env is not None:
        (project / ".env").write_text(env)
    done = subprocess.run([str(COMPOSE), *args, "config"], cwd=project, capture_output=True,
                          text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(project)})
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def example(extra: str = "") -> str:
    """A .env as a user has it: .env.example copied, lines added."""
    return (ROOT / ".env.example").read_text() + extra


def bridge_env(config: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in config["services"]["bridge"]["environment"].items()}


@pytest.mark.parametrize("env", [None, example()], ids=["no .env", ".env.example"])
def test_the_demo_stack_runs_with_or_without_env(tmp_path: Path, env: str | None) -> None:
    config = render(tmp_path, env, "--profile", "demo")
    bridge_vars = bridge_env(config)
    assert bridge_vars["SERMATEC_INVERTER__HOST"] == "simulator"  # the demo's inverter
    assert bridge_vars["SERMATEC_MQTT__HOST"] == "mosquitto"
    assert "TZ" not in bridge_vars, "no zone is hard-coded: the host's /etc/localtime counts"
    assert config["services"]["simulator"]["profiles"] == ["demo"]
    settings = load_settings(env=bridge_vars)  # what the bridge makes of it: valid
    assert [i.host for i in settings.all_inverters()] == ["simulator"]
    assert (settings.mqtt.host, settings.writes.enabled) == ("mosquitto", False)


def test_the_bridge_has_the_hosts_time_zone_and_tz_overrides_it(tmp_path: Path) -> None:
    bridge = render(tmp_path, None)["services"]["bridge"]
    [zone] = [v for v in bridge["volumes"] if v["target"] == "/etc/localtime"]
    assert (zone["source"], zone["read_only"]) == ("/etc/localtime", True)
    assert bridge_env(render(tmp_path, example("TZ=Pacific/Auckland\n")))["TZ"] == \
        "Pacific/Auckland"


def test_one_build_serves_both_services(tmp_path: Path) -> None:
    services = render(tmp_path, None, "--profile", "demo")["services"]
    bridge, simulator = services["bridge"], services["simulator"]
    assert Path(bridge["build"]["context"]) == tmp_path
    assert bridge["pull_policy"] == "build"  # never looked for on Docker Hub
    assert "build" not in simulator, "a second build of the same image"
    assert (simulator["image"], simulator["pull_policy"]) == (bridge["image"], "never")
    assert simulator["healthcheck"] == {"disable": True}  # it writes no heartbeat


def test_every_sermatec_variable_of_env_reaches_the_bridge(tmp_path: Path) -> None:
    extra = ("SERMATEC_HOMEASSISTANT__DEVICE_DISCOVERY=false\n"
             "SERMATEC_INVERTER__TIMEOUT=9\nSERMATEC_INVERTER__HOST=192.168.1.50\n"
             "SERMATEC_MQTT__TLS__ENABLED=false\nSERMATEC_POLL__ENERGY=120\n")
    env = bridge_env(render(tmp_path, example(extra)))
    for line in extra.splitlines():
        key, value = line.split("=", 1)
        assert env[key] == value, key
    settings = load_settings(env=env)
    assert settings.homeassistant.device_discovery is False
    assert settings.all_inverters()[0].timeout == 9


def test_the_bridge_runs_alone_with_home_assistants_broker(tmp_path: Path) -> None:
    config = render(tmp_path, example("SERMATEC_MQTT__HOST=192.168.1.10\n"
                                      "SERMATEC_MQTT__USERNAME=sermatec\n"))
    bridge = config["services"]["bridge"]
    assert "depends_on" not in bridge  # `docker compose up -d bridge` starts it alone
    assert bridge_env(config)["SERMATEC_MQTT__HOST"] == "192.168.1.10"
    assert bridge_env(config)["SERMATEC_MQTT__USERNAME"] == "sermatec"


@pytest.mark.parametrize("how", ["flags", "COMPOSE_FILE"])
def test_a_yaml_config_for_several_inverters(tmp_path: Path, how: str) -> None:
    (tmp_path / "sermatec-bridge.yaml").write_text(
        "inverters:\n  - host: 192.168.1.51\n    name: garage\n"
        "  - host: 192.168.1.52\n    name: roof\n")
    if how == "flags":
        config = render(tmp_path, None, "-f", "docker-compose.yml",
                        "-f", "docker-compose.config.yml")
    else:
        config = render(tmp_path,
                        example("COMPOSE_FILE=docker-compose.yml:docker-compose.config.yml\n"))
    bridge = config["services"]["bridge"]
    [mount] = [v for v in bridge["volumes"] if v["target"] != "/etc/localtime"]
    assert Path(mount["source"]) == tmp_path / "sermatec-bridge.yaml"
    assert mount["read_only"] is True
    env = bridge_env(config)
    assert env["SERMATEC_CONFIG"] == mount["target"]
    # The bridge reads the file at that path: both inverters, and no simulator.
    env["SERMATEC_CONFIG"] = mount["source"]
    settings = load_settings(env=env)
    assert [i.name for i in settings.all_inverters()] == ["garage", "roof"]


@pytest.mark.parametrize("env", [None, example()], ids=["no .env", ".env.example"])
def test_inverters_that_dial_in_need_no_address_and_reach_the_published_port(
        tmp_path: Path, env: str | None) -> None:
    config = render(tmp_path, env, "-f", "docker-compose.yml", "-f", "docker-compose.cloud.yml")
    bridge = config["services"]["bridge"]
    settings = load_settings(env=bridge_env(config))
    assert settings.all_inverters() == []  # whoever dials in, not the demo's simulator
    assert settings.cloud.listen_port == 19042 and settings.cloud.upstream is None
    (published,) = bridge["ports"]
    assert (published["target"], published["published"], published["host_ip"]) == (
        19042, "19042", "0.0.0.0")
