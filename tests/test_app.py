"""The Home Assistant app's definition (repository.yaml, config.yaml, translations).

The Supervisor's own checks run in ../shared/tools/ha-app-check; these tests hold the app
to the project: its version is the package's, its options are settings of the bridge's
configuration (same keys, same defaults, types the models accept), every option is
labelled, and the options the Supervisor writes on the first start are valid here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
import yaml
from pydantic import SecretStr

from sermatec_bridge import config
from sermatec_bridge.supervisor import LISTEN_PORT, read_options

ROOT = Path(__file__).resolve().parent.parent
APP = yaml.safe_load((ROOT / "config.yaml").read_text())
LABELS = yaml.safe_load((ROOT / "translations" / "en.yaml").read_text())["configuration"]


def leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def bounds(option: Any) -> dict[str, Any]:
    return {name: getattr(item, name) for item in option.info.metadata
            for name in ("gt", "ge", "lt", "le")
            if isinstance(item, getattr(annotated_types, name.capitalize()))}


def test_the_apps_version_is_the_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert APP["version"] == project["version"]
    assert APP["slug"] == "sermatec_bridge" and APP["arch"] == ["aarch64", "amd64"]
    assert APP["services"] == ["mqtt:need"]


def test_the_options_are_settings_of_the_configuration() -> None:
    schema, options = leaves(APP["schema"]), leaves(APP["options"])
    assert set(options) <= set(schema)
    for path, kind in schema.items():
        option = config._option_at(path)
        assert option is not None and option.kind == "value", f"{'.'.join(path)} is no setting"
        base = kind.rstrip("?")
        typ = option.type
        if base in ("str", "password"):
            assert typ is (SecretStr if base == "password" else str), path
        elif base == "port":
            assert typ is int and bounds(option) == {"ge": 1, "le": 65535}, path
        elif base == "bool":
            assert typ is bool, path
        elif match := re.fullmatch(r"float\((\d+),(\d+)\)", base):
            low = bounds(option).get("gt", bounds(option).get("ge"))
            assert typ is float and low is not None and float(match[1]) >= low, path
        elif match := re.fullmatch(r"list\((.+)\)", base):
            assert get_origin(typ) is Literal and match[1].split("|") == list(get_args(typ))
        else:
            raise AssertionError(f"{'.'.join(path)}: schema type {kind} not checked here")
        if path in options and path != ("inverter", "host"):  # the one the user enters
            assert options[path] == option.info.get_default(call_default_factory=True), path
        if kind.endswith("?"):
            assert path not in options, f"{'.'.join(path)} starts unset"


def test_every_option_has_a_label_and_a_description() -> None:
    for path in leaves(APP["schema"]):
        section, key = path
        assert LABELS[section]["name"] and LABELS[section]["description"], section
        field = LABELS[section]["fields"][key]
        assert field["name"] and field["description"], ".".join(path)


def test_the_cloud_listeners_port_is_published_and_described() -> None:
    """The port the bridge listens on in the container is the one the Supervisor maps,
    on by default (the user may change or clear the host's side in the Network section)."""
    container = f"{LISTEN_PORT}/tcp"
    assert APP["ports"] == {container: LISTEN_PORT}
    network = yaml.safe_load((ROOT / "translations" / "en.yaml").read_text())["network"]
    assert set(network) == {container} and "Cloud listener" in network[container]
    assert "listen_port" not in APP["options"]["cloud"], "off until the user turns it on"


def test_the_first_starts_options_are_valid_once_the_inverter_is_entered(
        tmp_path: Path) -> None:
    """What the Supervisor writes to /data/options.json: the defaults, plus the address."""
    options = json.loads(json.dumps(APP["options"]))
    options["inverter"]["host"] = "192.168.1.50"
    path = tmp_path / "options.json"
    path.write_text(json.dumps(options))
    broker = {"host": "core-mosquitto", "port": 1883}  # what the Supervisor would add
    settings = config.load_settings(overrides={**read_options(path), "mqtt": broker}, env={})
    assert settings.all_inverters()[0].host == "192.168.1.50"
    assert settings.writes.enabled is False  # read only until the user allows changes


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout")
def test_a_clone_holds_the_app() -> None:
    """The Supervisor installs what a clone holds: nothing of the app may be ignored."""
    for name in ("repository.yaml", "config.yaml", "translations/en.yaml", "DOCS.md",
                 "icon.png", "logo.png", "Dockerfile"):
        assert (ROOT / name).is_file(), name
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, check=False)
        assert ignored.returncode == 1, f"{name} is ignored by .gitignore"
    ignored = subprocess.run(["git", "check-ignore", "-q", "sermatec-bridge.yaml"], cwd=ROOT,
                             check=False)
    assert ignored.returncode == 0, "the compose flow's own YAML (secrets) stays uncommitted"
