"""Docker Compose as rendered by ``docker-compose config`` (no Docker engine needed).

Each test copies the compose files into a temporary project with a ``.env`` made from
``.env.example``, renders the configuration and checks what the containers would get.
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
FILES = ("docker-compose.yml", "docker-compose.config.yml", ".env.example")

pytestmark = pytest.mark.skipif(not COMPOSE.exists(),
                                reason="docker-compose is not installed (make test builds it)")


def render(project: Path, env: str | None = None, *args: str) -> dict[str, Any]:
    """``docker-compose config`` of a copy of the project with this .env."""
    for name in FILES:
        shutil.copy(ROOT / name, project / name)
    example = (ROOT / ".env.example").read_text()
    (project / ".env").write_text(example + (env or ""))
    done = subprocess.run([str(COMPOSE), *args, "config"], cwd=project, capture_output=True,
                          text=True, check=False, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def bridge_env(config: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in config["services"]["bridge"]["environment"].items()}


def test_env_example_as_is_runs_the_demo_stack(tmp_path: Path) -> None:
    config = render(tmp_path, None, "--profile", "demo")
    env = bridge_env(config)
    assert env["SERMATEC_INVERTER__HOST"] == "simulator"  # the demo profile's inverter
    assert env["SERMATEC_MQTT__HOST"] == "mosquitto"
    assert env["SERMATEC_WRITES__ENABLED"] == "false"
    assert config["services"]["simulator"]["profiles"] == ["demo"]
    settings = load_settings(env=env)  # what the bridge makes of it: valid, as intended
    assert [i.host for i in settings.all_inverters()] == ["simulator"]
    assert (settings.mqtt.host, settings.writes.enabled) == ("mosquitto", False)


def test_every_sermatec_variable_of_env_reaches_the_bridge(tmp_path: Path) -> None:
    extra = ("SERMATEC_HOMEASSISTANT__DEVICE_DISCOVERY=false\n"
             "SERMATEC_INVERTER__TIMEOUT=9\nSERMATEC_INVERTER__HOST=192.168.1.50\n"
             "SERMATEC_MQTT__TLS__ENABLED=false\nSERMATEC_POLL__ENERGY=120\n")
    env = bridge_env(render(tmp_path, extra))
    for line in extra.splitlines():
        key, value = line.split("=", 1)
        assert env[key] == value, key
    settings = load_settings(env=env)
    assert settings.homeassistant.device_discovery is False
    assert settings.all_inverters()[0].timeout == 9


def test_the_bridge_runs_alone_with_home_assistants_broker(tmp_path: Path) -> None:
    config = render(tmp_path, "SERMATEC_MQTT__HOST=192.168.1.10\n"
                              "SERMATEC_MQTT__USERNAME=sermatec\n")
    bridge = config["services"]["bridge"]
    assert "depends_on" not in bridge  # `docker compose up -d bridge` starts it alone
    assert bridge_env(config)["SERMATEC_MQTT__HOST"] == "192.168.1.10"
    assert bridge_env(config)["SERMATEC_MQTT__USERNAME"] == "sermatec"


@pytest.mark.parametrize("how", ["flags", "COMPOSE_FILE"])
def test_a_yaml_config_for_several_inverters(tmp_path: Path, how: str) -> None:
    (tmp_path / "config.yaml").write_text(
        "inverters:\n  - host: 192.168.1.51\n    name: garage\n"
        "  - host: 192.168.1.52\n    name: roof\n")
    if how == "flags":
        config = render(tmp_path, None, "-f", "docker-compose.yml",
                        "-f", "docker-compose.config.yml")
    else:
        config = render(tmp_path, "COMPOSE_FILE=docker-compose.yml:docker-compose.config.yml\n")
    bridge = config["services"]["bridge"]
    [mount] = [v for v in bridge["volumes"] if "config.yaml" in str(v)]
    source, target = (mount["source"], mount["target"]) if isinstance(mount, dict) else \
        mount.split(":")[:2]
    assert Path(source) == tmp_path / "config.yaml"
    env = bridge_env(config)
    assert env["SERMATEC_CONFIG"] == target
    # The bridge reads the file at that path: both inverters, and no simulator.
    env["SERMATEC_CONFIG"] = source
    settings = load_settings(env=env)
    assert [i.name for i in settings.all_inverters()] == ["garage", "roof"]
