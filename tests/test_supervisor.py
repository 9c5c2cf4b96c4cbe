"""The Home Assistant app mode: options file, broker and time zone from a (fake) Supervisor.

The Supervisor is a real HTTP server on loopback (tests/fakesupervisor.py). What goes
wrong must end the start with one line on stderr (the app's log) and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakesupervisor import TOKEN, FakeSupervisor, error
from test_cli import run_cli, simulator

from sermatec_bridge import cli, supervisor

PASSWORD = "mosquitto-app-generated-Pa55"
BROKER = {"host": "core-mosquitto", "port": 1883, "username": "addons", "password": PASSWORD}
OPTIONS = {"inverter": {"host": "192.168.1.50", "port": 8899}, "writes": {"enabled": False},
           "poll": {"live": 10}, "mqtt": {}, "log": {"level": "info"}}


@pytest.fixture
def fake() -> Iterator[FakeSupervisor]:
    with FakeSupervisor(broker=BROKER).running() as running:
        yield running


def app_env(fake: FakeSupervisor, tmp_path: Path, options: Any = OPTIONS,
            **extra: str) -> dict[str, str]:
    """The environment the Supervisor gives the app's container (plus the image's ENV)."""
    path = tmp_path / "options.json"
    path.write_text(options if isinstance(options, str) else json.dumps(options))
    return {"SUPERVISOR_TOKEN": TOKEN, "SUPERVISOR_URL": fake.url,
            "SERMATEC_APP_OPTIONS": str(path), "TZ": "Europe/Berlin",
            "SERMATEC_LOG__FORMAT": "json", **extra}


def test_the_broker_and_the_zone_come_from_the_supervisor(fake: FakeSupervisor,
                                                           tmp_path: Path) -> None:
    app = supervisor.start(app_env(fake, tmp_path))
    mqtt = app.settings.mqtt
    assert (mqtt.host, mqtt.port, mqtt.username) == ("core-mosquitto", 1883, "addons")
    assert mqtt.password is not None and mqtt.password.get_secret_value() == PASSWORD
    assert mqtt.tls.enabled is False and app.broker_from == "the Supervisor"
    assert app.zone.name == "Pacific/Auckland"  # Home Assistant's, not TZ's
    assert [i.host for i in app.settings.all_inverters()] == ["192.168.1.50"]
    assert app.settings.log.format == "console"  # readable in the app's Log tab
    assert fake.requests == [("/info", f"Bearer {TOKEN}"),
                             ("/services/mqtt", f"Bearer {TOKEN}")]


@pytest.mark.parametrize(("version", "form"), [
    ("2026.11.0", "time"), ("2026.5.0", "time"), ("2026.4.3", "text"), ("2025.4.4", "text"),
    ("2027.1.0b2", "time"), ("landingpage", "time"), ("", "time")])
def test_schedule_times_take_the_form_home_assistants_version_understands(
        tmp_path: Path, version: str, form: str) -> None:
    """MQTT time entities came with Home Assistant 2026.5: an older core would refuse the
    whole device. A version that cannot be read leaves the default (the newest form)."""
    with FakeSupervisor(broker=BROKER, home_assistant=version).running() as fake:
        app = supervisor.start(app_env(fake, tmp_path))
    assert app.settings.homeassistant.time_platform == form
    assert app.home_assistant == (version or None)


def test_tls_of_the_supervisors_broker(fake: FakeSupervisor, tmp_path: Path) -> None:
    fake.routes["/services/mqtt"] = (200, json.dumps({"result": "ok", "data": {
        **BROKER, "port": 8883, "ssl": True}}).encode())
    mqtt = supervisor.start(app_env(fake, tmp_path)).settings.mqtt
    assert (mqtt.port, mqtt.tls.enabled) == (8883, True)


def test_a_broker_in_the_options_wins(fake: FakeSupervisor, tmp_path: Path) -> None:
    options = {**OPTIONS, "mqtt": {"host": "192.168.1.10", "username": "me", "password": "pw"},
               "log": {"level": "debug", "format": "json"}}
    app = supervisor.start(app_env(fake, tmp_path, options))
    mqtt = app.settings.mqtt
    assert (mqtt.host, mqtt.port, mqtt.username) == ("192.168.1.10", 1883, "me")
    assert app.broker_from == "the options"
    assert [path for path, _ in fake.requests] == ["/info"]  # the broker was not asked for
    assert (app.settings.log.level, app.settings.log.format) == ("debug", "json")


def test_a_user_and_password_in_the_options_log_in_to_the_supervisors_broker(
        fake: FakeSupervisor, tmp_path: Path) -> None:
    """What the user typed is never silently replaced: with no broker address, the
    Supervisor's broker is used with the options' own user and password."""
    options = {**OPTIONS, "mqtt": {"username": "me", "password": "my-own-password"}}
    app = supervisor.start(app_env(fake, tmp_path, options))
    mqtt = app.settings.mqtt
    assert (mqtt.host, mqtt.port, mqtt.username) == ("core-mosquitto", 1883, "me")
    assert mqtt.password is not None and mqtt.password.get_secret_value() == "my-own-password"
    assert app.broker_from == ("the Supervisor, with mqtt.password, mqtt.username from the "
                               "options")


def test_with_the_cloud_listener_on_no_inverter_address_is_needed(
        fake: FakeSupervisor, tmp_path: Path) -> None:
    """Inverters in station mode dial in to the app: none has to be entered."""
    options = {**OPTIONS, "inverter": {"host": "", "port": 8899},
               "cloud": {"listen_port": supervisor.LISTEN_PORT}}
    settings = supervisor.start(app_env(fake, tmp_path, options)).settings
    assert settings.cloud.listen_port == 19042 and settings.cloud.accept_unlisted
    assert settings.all_inverters() == [], "whoever dials in is served"


def test_the_command_line_reads_what_the_app_runs_with(fake: FakeSupervisor,
                                                       tmp_path: Path) -> None:
    """In the app's container ``get`` asks the inverter of the options, and ``config``
    shows the settings the app runs with, not the image's environment."""
    with simulator() as (port, _):
        options = {**OPTIONS, "inverter": {"host": "127.0.0.1", "port": port}}
        env = {**app_env(fake, tmp_path, options), "PATH": "/usr/bin:/bin",
               "SERMATEC_INVERTER__HOST": "127.0.0.2"}  # the image's: the options win
        status, out, err = run_cli("get", "98", env=env)
        assert status == cli.Exit.OK, err
        assert "Serial number: ST5K0SIMULATOR0001" in out
        status, out, err = run_cli("config", env=env)
    assert status == cli.Exit.OK, err
    shown = yaml.safe_load(out)
    assert (shown["inverter"]["host"], shown["inverter"]["port"]) == ("127.0.0.1", port)
    assert (shown["mqtt"]["host"], shown["mqtt"]["username"]) == ("core-mosquitto", "addons")
    assert PASSWORD not in out + err and "from the Supervisor" in err


def test_cleared_fields_count_as_unset(fake: FakeSupervisor, tmp_path: Path) -> None:
    """A text box emptied in the Configuration tab is saved as "": not a user called ""."""
    fake.routes["/services/mqtt"] = (200, json.dumps({"result": "ok", "data": {
        "host": "core-mosquitto", "port": 1883}}).encode())  # an anonymous broker
    options = {**OPTIONS, "mqtt": {"host": "", "username": "", "password": ""}}
    mqtt = supervisor.start(app_env(fake, tmp_path, options)).settings.mqtt
    assert (mqtt.host, mqtt.username, mqtt.password) == ("core-mosquitto", None, None)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_app(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            env: dict[str, str]) -> tuple[int, str]:
    """``sermatec-bridge run`` in app mode: exit status and stderr."""
    for name in [n for n in os.environ if n.startswith(("SERMATEC_", "SUPERVISOR_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = cli.main(["run"])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    ({"/services/mqtt": error(400, "Service not enabled")},
     "sermatec-bridge: no MQTT broker from the Supervisor (the Supervisor answered GET "
     "/services/mqtt with HTTP 400: Service not enabled): install and start the Mosquitto "
     "broker app, or set mqtt.host in this app's options"),
    ({"/services/mqtt": error(403, "No access to mqtt service!")},
     "sermatec-bridge: no MQTT broker from the Supervisor (the Supervisor answered GET "
     "/services/mqtt with HTTP 403: No access to mqtt service!): install"),
    ({"/services/mqtt": (200, b'{"result": "ok", "data": {"ssl": false}}')},
     "sermatec-bridge: the Supervisor's MQTT service names no broker host and port"),
    ({"/info": (200, b"<html>not the Supervisor</html>")},
     "sermatec-bridge: the Supervisor's answer to GET /info has no data object"),
    ({"/info": (500, b"oops")},
     "sermatec-bridge: the Supervisor answered GET /info with HTTP 500"),
    ({"/info": (200, b'{"result": "ok", "data": {"timezone": "Mars/Olympus_Mons"}}')},
     "sermatec-bridge: Home Assistant's time zone: 'Mars/Olympus_Mons' is not a time zone "
     "of the tz database"),
])
def test_a_failing_supervisor_is_one_line_and_an_error_exit(
        fake: FakeSupervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], change: dict[str, tuple[int, bytes]],
        message: str) -> None:
    fake.routes.update(change)
    status, err = run_app(monkeypatch, capsys, app_env(fake, tmp_path))
    assert status == cli.Exit.ERROR
    assert err.startswith(message) and err.count("\n") == 1, err
    assert PASSWORD not in err and TOKEN not in err


def test_no_supervisor_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    env = {**app_env(FakeSupervisor(), tmp_path), "SUPERVISOR_URL": url}
    status, err = run_app(monkeypatch, capsys, env)
    assert status == cli.Exit.ERROR
    assert err == f"sermatec-bridge: cannot reach the Supervisor at {url}/info: " \
        "Connection refused\n"


def test_a_supervisor_that_never_answers_is_given_up(
        fake: FakeSupervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(supervisor, "TIMEOUT", 0.3)
    fake.stall.set()
    status, err = run_app(monkeypatch, capsys, app_env(fake, tmp_path))
    assert status == cli.Exit.ERROR
    assert err == f"sermatec-bridge: cannot reach the Supervisor at {fake.url}/info: " \
        "timed out\n"


def test_a_wrong_token_is_refused(fake: FakeSupervisor, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    env = {**app_env(fake, tmp_path), "SUPERVISOR_TOKEN": "stale"}
    status, err = run_app(monkeypatch, capsys, env)
    assert (status, err) == (cli.Exit.ERROR, "sermatec-bridge: the Supervisor answered GET "
                                             "/info with HTTP 403\n")


@pytest.mark.parametrize(("options", "message"), [
    (None, "invalid app options: no options file at {path} (SERMATEC_APP_OPTIONS)"),
    ("{not json", "invalid app options: the options file {path} is not JSON: Expecting "
     "property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("[1, 2]", "invalid app options: the options file {path} holds no mapping of options"),
    ({**OPTIONS, "inverter": {"host": "", "port": 8899}},
     "invalid app options: no inverter address: enter it under inverter → host in the "
     "app's Configuration tab (or turn on the cloud listener for inverters that dial in)"),
    ({**OPTIONS, "cloud": {"listen_port": 8899}},
     "invalid app options: cloud.listen_port: the app listens on 19042 (or not at all); to "
     "have the inverter dial another port, change 19042/tcp in the app's Network section"),
    ({**OPTIONS, "inverter": {"host": "192.168.1.50", "port": 70000}, "poll": {"live": 0}},
     "invalid app options: inverter.port (SERMATEC_INVERTER__PORT): Input should be less "
     "than or equal to 65535, got 70000; poll.live (SERMATEC_POLL__LIVE): Input should be "
     "greater than 0, got 0"),
    ({**OPTIONS, "writes": {"enable": True}},
     "invalid app options: writes.enable (SERMATEC_WRITES__ENABLE): unknown setting; did "
     "you mean 'enabled'?"),
])
def test_bad_options_are_one_line_and_a_configuration_exit(
        fake: FakeSupervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], options: Any, message: str) -> None:
    env = app_env(fake, tmp_path, options if options is not None else "")
    path = env["SERMATEC_APP_OPTIONS"]
    if options is None:
        Path(path).unlink()
    status, err = run_app(monkeypatch, capsys, env)
    assert status == cli.Exit.CONFIG
    assert err == f"sermatec-bridge: {message.format(path=path)}\n"
    assert PASSWORD not in err


def test_the_mqtt_password_from_the_supervisor_is_never_shown(
        fake: FakeSupervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake.routes["/services/mqtt"] = (200, json.dumps({"result": "ok", "data": {
        **BROKER, "password": 12345}}).encode())  # a broken service: not even text
    options = {**OPTIONS, "poll": {"live": 0}}  # and a problem reported after it
    status, err = run_app(monkeypatch, capsys, app_env(fake, tmp_path, options))
    assert status == cli.Exit.CONFIG, err
    assert "12345" not in err and "poll.live" in err
