"""Configuration: sources and their priority, secrets from files, one line per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sermatec_bridge import config
from sermatec_bridge.config import (
    ConfigError,
    InverterSettings,
    Settings,
    example_yaml,
    load_settings,
    masked_yaml,
    reference_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
ONE = {"SERMATEC_INVERTER__HOST": "192.168.1.50"}


def write_yaml(tmp_path: Path, data: Any, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def problems(**kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --------------------------------------------------------------------------------------
# Defaults and sources
# --------------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings(env=ONE)
    assert settings.inverter == InverterSettings(host="192.168.1.50")
    assert settings.inverters == []
    inverter = settings.all_inverters()[0]
    assert (inverter.port, inverter.name) == (8899, None)
    assert (inverter.timeout, inverter.retries) == (5.0, 2)
    assert inverter.label == "192.168.1.50:8899"
    assert (settings.poll.live, settings.poll.energy, settings.poll.slow) == (10, 60, 300)
    mqtt = settings.mqtt
    assert (mqtt.host, mqtt.port, mqtt.username, mqtt.password) == ("localhost", 1883, None, None)
    assert (mqtt.client_id, mqtt.base_topic, mqtt.keepalive) == ("sermatec-bridge", "sermatec", 30)
    assert not mqtt.tls.enabled and not mqtt.tls.insecure and mqtt.tls.ca_file is None
    ha = settings.homeassistant
    assert ha.discovery and ha.device_discovery and ha.prefix == "homeassistant"
    assert ha.birth_delay == 5.0 and ha.status_topic == "homeassistant/status"
    assert not settings.writes.enabled
    assert (settings.writes.min_interval, settings.writes.confirm_timeout) == (10.0, 10.0)
    assert (settings.log.level, settings.log.format) == ("info", "auto")
    assert settings.health.file is None  # one per bridge: see test_heartbeat_file_*
    assert (settings.health.max_age, settings.health.metrics_port) == (120, None)


def test_one_inverter_from_environment_alone() -> None:
    settings = load_settings(env={
        "SERMATEC_INVERTER__HOST": "10.10.100.254",
        "SERMATEC_INVERTER__PORT": "8900",
        "SERMATEC_INVERTER__NAME": "garage",
        "SERMATEC_MQTT__HOST": "mosquitto",
        "SERMATEC_MQTT__PORT": "1884",
        "SERMATEC_MQTT__USERNAME": "bridge",
        "SERMATEC_MQTT__PASSWORD": "s3cret",
        "SERMATEC_MQTT__TLS__INSECURE": "true",
        "SERMATEC_WRITES__ENABLED": "true",
        "SERMATEC_POLL__LIVE": "2.5",
        "SERMATEC_LOG__LEVEL": "DEBUG",
        "SERMATEC_HEALTH__METRICS_PORT": "9100",
        "PATH": "/usr/bin",  # other variables are none of the bridge's business
    })
    (inverter,) = settings.all_inverters()
    assert (inverter.host, inverter.port, inverter.label) == ("10.10.100.254", 8900, "garage")
    assert (settings.mqtt.host, settings.mqtt.port) == ("mosquitto", 1884)
    assert settings.mqtt.username == "bridge"
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret"
    assert settings.mqtt.tls.insecure
    assert settings.writes.enabled
    assert settings.poll.live == 2.5
    assert settings.log.level == "debug"
    assert settings.health.metrics_port == 9100


def test_several_inverters_from_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverters": [
        {"host": "192.168.1.51", "name": "garage"},
        {"host": "192.168.1.52", "port": 8900, "timeout": 2},
    ]})
    settings = load_settings(path, env={})
    assert [i.label for i in settings.all_inverters()] == ["garage", "192.168.1.52:8900"]
    assert settings.inverter is None


def test_single_and_list_together(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverters": [{"host": "192.168.1.51"}]})
    settings = load_settings(path, env=ONE)
    assert [i.host for i in settings.all_inverters()] == ["192.168.1.50", "192.168.1.51"]


def test_priority_yaml_then_environment_then_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {
        "inverter": {"host": "yaml-inverter", "port": 8901},
        "mqtt": {"host": "yaml-broker", "port": 1884, "username": "yaml-user"},
        "poll": {"live": 3},
        "log": {"level": "warning"},
    })
    env = {"SERMATEC_MQTT__HOST": "env-broker", "SERMATEC_MQTT__USERNAME": "env-user",
           "SERMATEC_LOG__LEVEL": "error"}
    overrides = {"mqtt": {"username": "cli-user", "port": None}, "log": {"level": "debug"}}
    settings = load_settings(path, overrides, env=env)
    # Sections merge key by key: the environment's host and the file's port are both kept.
    assert (settings.mqtt.host, settings.mqtt.port) == ("env-broker", 1884)
    assert settings.mqtt.username == "cli-user"
    assert settings.log.level == "debug"
    assert settings.poll.live == 3
    assert (settings.poll.energy, settings.poll.slow) == (60, 300)
    assert settings.all_inverters()[0].host == "yaml-inverter"
    assert settings.all_inverters()[0].port == 8901


def test_overrides_can_provide_the_inverter() -> None:
    settings = load_settings(overrides={"inverter": {"host": "cli", "port": 8902}}, env={})
    assert settings.all_inverters()[0].label == "cli:8902"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverter": {"host": "from-file"}})
    settings = load_settings(env={"SERMATEC_CONFIG": str(path)})
    assert settings.all_inverters()[0].host == "from-file"
    # An explicit path wins over the variable.
    other = write_yaml(tmp_path, {"inverter": {"host": "explicit"}}, "other.yaml")
    settings = load_settings(other, env={"SERMATEC_CONFIG": str(path)})
    assert settings.all_inverters()[0].host == "explicit"


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERMATEC_INVERTER__HOST", "from-os-environ")
    monkeypatch.delenv("SERMATEC_CONFIG", raising=False)
    assert load_settings().all_inverters()[0].host == "from-os-environ"


def test_settings_constructor_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERMATEC_MQTT__PORT", "not a port")
    settings = Settings(inverter=InverterSettings(host="x"))
    assert settings.mqtt.port == 1883


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"mqtt": {"username": "yaml-user"}})
    settings = load_settings(path, env={**ONE, "SERMATEC_MQTT__USERNAME": "",
                                        "SERMATEC_MQTT__PASSWORD": "",
                                        "SERMATEC_HEALTH__METRICS_PORT": ""})
    assert settings.mqtt.username == "yaml-user"
    assert settings.mqtt.password is None
    assert settings.health.metrics_port is None


def test_environment_names_are_case_insensitive() -> None:
    settings = load_settings(env={"sermatec_inverter__host": "lower", "Sermatec_Mqtt__Port": "1"})
    assert settings.all_inverters()[0].host == "lower"
    assert settings.mqtt.port == 1


def test_json_for_whole_sections_from_environment() -> None:
    settings = load_settings(env={
        "SERMATEC_INVERTERS": '[{"host": "a"}, {"host": "b", "port": 1}]',
        "SERMATEC_MQTT": '{"host": "json-broker", "port": 1885}',
        "SERMATEC_MQTT__PORT": "1886",
    })
    assert [i.label for i in settings.all_inverters()] == ["a:8899", "b:1"]
    assert (settings.mqtt.host, settings.mqtt.port) == ("json-broker", 1886)


def test_empty_yaml_sections_mean_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "inverter:\n  host: x\nmqtt:\nlog:\n")
    settings = load_settings(path, env={})
    assert settings.mqtt.host == "localhost" and settings.log.level == "info"


# --------------------------------------------------------------------------------------
# Secrets from files
# --------------------------------------------------------------------------------------


def test_file_secret(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt_password"
    secret.write_text("p@ss word\n", encoding="utf-8")
    settings = load_settings(env={**ONE, "SERMATEC_MQTT__PASSWORD_FILE": str(secret)})
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "p@ss word"


def test_file_secret_strips_one_newline_only(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw\n\n", encoding="utf-8")
    settings = load_settings(env={**ONE, "SERMATEC_MQTT__PASSWORD_FILE": str(secret)})
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "pw\n"


def test_any_setting_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "host").write_text("inverter.lan\n", encoding="utf-8")
    (tmp_path / "user").write_text("bridge", encoding="utf-8")
    settings = load_settings(env={
        "SERMATEC_INVERTER__HOST_FILE": str(tmp_path / "host"),
        "SERMATEC_MQTT__USERNAME_FILE": str(tmp_path / "user"),
    })
    assert settings.all_inverters()[0].host == "inverter.lan"
    assert settings.mqtt.username == "bridge"


def test_file_secret_overrides_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"mqtt": {"password": "from-yaml"}})
    (tmp_path / "pw").write_text("from-file\n", encoding="utf-8")
    env = {**ONE, "SERMATEC_MQTT__PASSWORD_FILE": str(tmp_path / "pw")}
    settings = load_settings(path, env=env)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "from-file"


def test_unreadable_file_secret_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    assert problems(env={**ONE, "SERMATEC_MQTT__PASSWORD_FILE": str(missing)}) == [
        f"SERMATEC_MQTT__PASSWORD_FILE: cannot read {missing}: No such file or directory"
    ]


def test_value_and_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x", encoding="utf-8")
    lines = problems(env={**ONE, "SERMATEC_MQTT__PASSWORD": "y",
                          "SERMATEC_MQTT__PASSWORD_FILE": str(tmp_path / "pw")})
    assert lines == [
        "SERMATEC_MQTT__PASSWORD and SERMATEC_MQTT__PASSWORD_FILE are both set; use one"
    ]


def test_invalid_value_from_a_file_names_the_file_variable(tmp_path: Path) -> None:
    (tmp_path / "port").write_text("eighty\n", encoding="utf-8")
    lines = problems(env={**ONE, "SERMATEC_MQTT__PORT_FILE": str(tmp_path / "port")})
    assert lines == [
        "mqtt.port (SERMATEC_MQTT__PORT_FILE): Input should be a valid integer, got 'eighty'"
    ]


def test_tls_file_settings_are_not_secret_files(tmp_path: Path) -> None:
    """``SERMATEC_MQTT__TLS__CA_FILE`` is the setting ``ca_file``, not a file for ``ca``."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    settings = load_settings(env={**ONE, "SERMATEC_MQTT__TLS__ENABLED": "true",
                                  "SERMATEC_MQTT__TLS__CA_FILE": str(ca)})
    assert settings.mqtt.tls.ca_file == ca


# --------------------------------------------------------------------------------------
# Problems: one line each, naming the setting
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "line"), [
    ("SERMATEC_MQTT__PORT", "abc",
     "mqtt.port (SERMATEC_MQTT__PORT): Input should be a valid integer, got 'abc'"),
    ("SERMATEC_MQTT__PORT", "0",
     "mqtt.port (SERMATEC_MQTT__PORT): Input should be greater than or equal to 1, got '0'"),
    ("SERMATEC_INVERTER__PORT", "65536",
     "inverter.port (SERMATEC_INVERTER__PORT): Input should be less than or equal to 65535, "
     "got '65536'"),
    ("SERMATEC_INVERTER__TIMEOUT", "0",
     "inverter.timeout (SERMATEC_INVERTER__TIMEOUT): Input should be greater than or equal "
     "to 0.01, got '0'"),
    ("SERMATEC_INVERTER__TIMEOUT", "1e-9",
     "inverter.timeout (SERMATEC_INVERTER__TIMEOUT): Input should be greater than or equal "
     "to 0.01, got '1e-9'"),
    ("SERMATEC_INVERTER__TIMEOUT", "inf",
     "inverter.timeout (SERMATEC_INVERTER__TIMEOUT): Input should be a finite number, "
     "got 'inf'"),
    ("SERMATEC_POLL__LIVE", "nan",
     "poll.live (SERMATEC_POLL__LIVE): Input should be a finite number, got 'nan'"),
    ("SERMATEC_INVERTER__RETRIES", "-1",
     "inverter.retries (SERMATEC_INVERTER__RETRIES): Input should be greater than or equal to 0, "
     "got '-1'"),
    ("SERMATEC_POLL__LIVE", "soon",
     "poll.live (SERMATEC_POLL__LIVE): Input should be a valid number, got 'soon'"),
    ("SERMATEC_POLL__SLOW", "-5",
     "poll.slow (SERMATEC_POLL__SLOW): Input should be greater than 0, got '-5'"),
    ("SERMATEC_WRITES__ENABLED", "maybe",
     "writes.enabled (SERMATEC_WRITES__ENABLED): Input should be a valid boolean, got 'maybe'"),
    ("SERMATEC_LOG__LEVEL", "verbose",
     "log.level (SERMATEC_LOG__LEVEL): Input should be 'debug', 'info', 'warning' or 'error', "
     "got 'verbose'"),
    ("SERMATEC_LOG__FORMAT", "xml",
     "log.format (SERMATEC_LOG__FORMAT): Input should be 'auto', 'console' or 'json', got 'xml'"),
    ("SERMATEC_MQTT__BASE_TOPIC", "sermatec/#",
     "mqtt.base_topic (SERMATEC_MQTT__BASE_TOPIC): must not contain the MQTT wildcards + or #, "
     "got 'sermatec/#'"),
    ("SERMATEC_MQTT__BASE_TOPIC", "/sermatec",
     "mqtt.base_topic (SERMATEC_MQTT__BASE_TOPIC): must not start or end with /, "
     "got '/sermatec'"),
    ("SERMATEC_HOMEASSISTANT__PREFIX", "home+assistant",
     "homeassistant.prefix (SERMATEC_HOMEASSISTANT__PREFIX): must not contain the MQTT "
     "wildcards + or #, got 'home+assistant'"),
    ("SERMATEC_HEALTH__METRICS_PORT", "http",
     "health.metrics_port (SERMATEC_HEALTH__METRICS_PORT): Input should be a valid integer, "
     "got 'http'"),
])
def test_invalid_value_is_one_line(name: str, value: str, line: str) -> None:
    assert problems(env={**ONE, name: value}) == [line]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"mqtt": {"port": "x"}, "poll": {"live": 0}})
    lines = problems(config_file=path, env={**ONE, "SERMATEC_INVERTER__PORT": "y",
                                            "SERMATEC_MQTT__KEEPALIVE": "z"})
    assert [line.split(" ", 1)[0] for line in lines] == [
        "inverter.port", "poll.live", "mqtt.port", "mqtt.keepalive",
    ]


def test_invalid_yaml_value_names_the_yaml_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverters": [{"host": "a"}, {"host": "b", "port": "x"}]})
    assert problems(config_file=path, env={}) == [
        "inverters[1].port: Input should be a valid integer, got 'x'"
    ]


def test_a_section_given_as_a_value(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "inverter: 192.168.1.50\n")
    assert problems(config_file=path, env={}) == [
        "inverter (SERMATEC_INVERTER__*): expected a mapping of settings (key: value lines), "
        "got '192.168.1.50'"
    ]


def test_unknown_yaml_keys_are_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {
        "inverter": {"host": "a"},
        "mqtt": {"hots": "broker"},
        "inverters": [{"host": "b", "prot": 1}],
        "loging": {"level": "debug"},
    })
    assert problems(config_file=path, env={}) == [
        "inverters[0].prot: unknown setting; did you mean 'port'?",
        "mqtt.hots (SERMATEC_MQTT__HOTS): unknown setting; did you mean 'host'?",
        "loging (SERMATEC_LOGING): unknown setting; did you mean 'log'?",
    ]


def test_unknown_environment_variables_are_named() -> None:
    assert problems(env={**ONE, "SERMATEC_MQTT_HOST": "x", "SERMATEC_MQTT__HOTS": "y"}) == [
        "SERMATEC_MQTT_HOST: unknown setting; did you mean SERMATEC_MQTT__HOST?",
        "SERMATEC_MQTT__HOTS: unknown setting; did you mean SERMATEC_MQTT__HOST?",
    ]


def test_environment_and_validation_problems_together() -> None:
    lines = problems(env={**ONE, "SERMATEC_MQTT__HOTS": "y", "SERMATEC_MQTT__PORT": "z"})
    assert len(lines) == 2
    assert lines[0].startswith("SERMATEC_MQTT__HOTS: unknown setting")
    assert lines[1].startswith("mqtt.port (SERMATEC_MQTT__PORT): ")


def test_invalid_json_names_the_variable_without_echoing_it() -> None:
    lines = problems(env={**ONE, "SERMATEC_MQTT": '{"password": "hunter2"'})
    assert len(lines) == 1
    assert lines[0].startswith("mqtt (SERMATEC_MQTT): not valid JSON")
    assert "hunter2" not in lines[0]


def test_no_inverter_is_an_error() -> None:
    (line,) = problems(env={})
    assert "no inverter configured" in line and "SERMATEC_INVERTER__HOST" in line


def test_no_inverter_is_reported_with_other_problems() -> None:
    assert problems(env={"SERMATEC_MQTT__PORT": "abc"}) == [
        "mqtt.port (SERMATEC_MQTT__PORT): Input should be a valid integer, got 'abc'",
        config.NO_INVERTER,
    ]


def test_inverter_without_host_is_an_error() -> None:
    assert problems(env={"SERMATEC_INVERTER__PORT": "8899"}) == [
        "inverter.host (SERMATEC_INVERTER__HOST): required, but not set"
    ]


def test_duplicate_inverters_are_an_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverters": [{"host": "192.168.1.50"}, {"host": "b"}]})
    (line,) = problems(config_file=path, env=ONE)
    assert "192.168.1.50:8899" in line and "more than once" in line
    # Another port is another inverter.
    settings = load_settings(path, env={**ONE, "SERMATEC_INVERTER__PORT": "1"})
    assert len(settings.all_inverters()) == 3


def test_duplicate_names_are_an_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverters": [{"host": "a", "name": "x"},
                                               {"host": "b", "name": "x"}]})
    (line,) = problems(config_file=path, env={})
    assert "'x'" in line and "more than once" in line


def test_proxy_settings(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {
        "inverters": [{"host": "a", "proxy_port": 8899}, {"host": "b"}],
        "proxy": {"allow": ["0xB1", "reset", 0xBA], "allowed_networks": ["192.168.1.9/24"]}})
    settings = load_settings(path, env={})
    a, b = settings.all_inverters()
    assert (a.proxy_port, b.proxy_port) == (8899, None)  # off unless set
    assert settings.proxy.host == "0.0.0.0"  # the app on a phone reaches it
    assert settings.proxy.allow == ["0xb1", "0x70", "0xba"]
    assert settings.proxy.allowed_networks == ["192.168.1.0/24"]
    one = load_settings(env={**ONE, "SERMATEC_INVERTER__PROXY_PORT": "8900",
                             "SERMATEC_PROXY__ALLOW": '["network"]'})
    assert (one.all_inverters()[0].proxy_port, one.proxy.allow) == (8900, ["0xb1"])
    assert load_settings(env=ONE).proxy.allow == []  # nothing beyond queries by default


LISTEN = {"SERMATEC_CLOUD__LISTEN_PORT": "19042"}


def test_with_the_cloud_listener_no_inverter_entry_is_needed() -> None:
    settings = load_settings(env=LISTEN)
    assert settings.all_inverters() == []
    assert (settings.cloud.listen_port, settings.cloud.listen_host) == (19042, "0.0.0.0")
    assert settings.cloud.accept_unlisted and settings.cloud.upstream is None  # no vendor
    assert settings.unlisted == InverterSettings()  # the defaults serve who dials in
    assert problems(env={}) == [config.NO_INVERTER]  # without it, one is


def test_inverter_without_host_or_serial_is_what_unlisted_inverters_get() -> None:
    settings = load_settings(env={**LISTEN, "SERMATEC_INVERTER__TIMEOUT": "9",
                                  "SERMATEC_INVERTER__RETRIES": "4"})
    assert settings.all_inverters() == []
    assert (settings.unlisted.timeout, settings.unlisted.retries) == (9, 4)
    # an inverter with a host lends them too, and stays an inverter of its own
    settings = load_settings(env={**LISTEN, **ONE, "SERMATEC_INVERTER__TIMEOUT": "7"})
    assert [i.host for i in settings.all_inverters()] == ["192.168.1.50"]
    assert (settings.unlisted.timeout, settings.unlisted.host) == (7, None)
    (line,) = problems(env={**LISTEN, "SERMATEC_INVERTER__PROXY_PORT": "8899"})
    assert line.startswith("inverter.proxy_port: ") and "give its serial" in line


def test_inverters_known_by_serial(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"cloud": {"listen_port": 19042},
                                 "inverters": [{"serial": "ST5K0A", "proxy_port": 8899},
                                               {"host": "192.168.1.51"}]})
    a, b = load_settings(path, env={}).all_inverters()
    assert (a.dials_in, a.label, a.proxy_port, b.dials_in) == (True, "ST5K0A", 8899, False)


@pytest.mark.parametrize(("data", "expected"), [
    ({"inverter": {"serial": "ST5K0A"}},
     "inverter.serial: an inverter known by its serial dials in: set cloud.listen_port"),
    ({"inverters": [{"host": "a", "serial": "ST5K0A"}], "cloud": {"listen_port": 1}},
     "inverters[0]: host and serial: give one"),
    ({"inverters": [{"serial": "A"}, {"serial": "A"}], "cloud": {"listen_port": 1}},
     "inverter serial A configured more than once"),
    ({"inverters": [{"port": 1}], "cloud": {"listen_port": 1}},
     "inverters[0]: host or serial is required"),
    ({"inverters": [{"serial": "A", "proxy_port": 1}], "cloud": {"listen_port": 1}},
     "cloud.listen_port 1 is also a proxy_port"),
    ({"inverter": {"host": "a"}, "cloud": {"allow": ["0x66"]}},
     "cloud.allow names the settings write 0x66, but writes.enabled is false"),
    ({"inverter": {"host": "a"}, "cloud": {"upstream": "8.209.71.159"}},
     "cloud.upstream (SERMATEC_CLOUD__UPSTREAM): not HOST:PORT"),
])
def test_bad_cloud_settings_say_what_is_wrong(tmp_path: Path, data: dict[str, Any],
                                              expected: str) -> None:
    (line,) = problems(config_file=write_yaml(tmp_path, data), env={})
    assert line.startswith(expected), line


def test_cloud_settings() -> None:
    settings = load_settings(env={**ONE, "SERMATEC_CLOUD__UPSTREAM": "8.209.71.159:019042",
                                  "SERMATEC_CLOUD__ALLOW": '["0x66", "network"]',
                                  "SERMATEC_WRITES__ENABLED": "true",
                                  "SERMATEC_CLOUD__ALLOWED_NETWORKS": '["192.168.1.7/24"]'})
    cloud = settings.cloud
    assert (cloud.upstream, cloud.upstream_address) == (
        "8.209.71.159:19042", ("8.209.71.159", 19042))
    assert (cloud.allow, cloud.allowed_networks) == (["0x66", "0xb1"], ["192.168.1.0/24"])
    v6 = load_settings(env={**ONE, "SERMATEC_CLOUD__UPSTREAM": "[fd00::1]:19042"}).cloud
    assert v6.upstream_address == ("fd00::1", 19042)


def test_bad_proxy_settings_say_what_is_wrong(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverter": {"host": "a", "proxy_writes": True},
                                 "proxy": {"allow": ["0xzz", "0x42"],
                                           "allowed_networks": ["192.168.1/33"]}})
    lines = problems(config_file=path, env={})
    assert any(line.startswith("inverter (SERMATEC_INVERTER__*): proxy_writes is no longer")
               and "writes.enabled" in line for line in lines), lines
    assert any(line.startswith("proxy.allow[0]") and "not a command" in line
               for line in lines), lines
    assert any(line.startswith("proxy.allow[1]") for line in lines), lines
    assert any(line.startswith("proxy.allowed_networks[0]") and "CIDR" in line
               for line in lines), lines


def test_naming_a_settings_write_in_proxy_allow_cannot_turn_writes_on(tmp_path: Path) -> None:
    """Settings writes follow writes.enabled: proxy.allow names only what passes nowhere
    else (a LAN client must not switch the inverter off with writes disabled)."""
    path = write_yaml(tmp_path, {"inverter": {"host": "a"},
                                 "proxy": {"allow": ["0x64", "0x0a", "0x9f"]}})
    lines = problems(config_file=path, env={})
    assert any(line.startswith("proxy.allow[0]") and "writes.enabled" in line
               for line in lines), lines
    assert any(line.startswith("proxy.allow[1]") for line in lines), lines
    assert not any(line.startswith("proxy.allow[2]") for line in lines), lines


def test_metrics_listen_on_this_host_only_unless_told(tmp_path: Path) -> None:
    assert load_settings(env=ONE).health.metrics_host == "127.0.0.1"


def test_one_proxy_port_for_two_inverters_is_an_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"inverters": [{"host": "a", "proxy_port": 8899},
                                               {"host": "b", "proxy_port": 8899}]})
    (line,) = problems(config_file=path, env={})
    assert "proxy_port 8899" in line and "more than one inverter" in line


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems(config_file=path, env=ONE) == [f"config file {path}: not found"]
    assert problems(env={**ONE, "SERMATEC_CONFIG": str(path)}) == [
        f"config file {path} (from SERMATEC_CONFIG): not found"
    ]


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "mqtt:\n  host: [unclosed\n")
    (line,) = problems(config_file=path, env=ONE)
    assert line.startswith(f"config file {path}: invalid YAML: ") and "line" in line


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- host: a\n")
    assert problems(config_file=path, env=ONE) == [
        f"config file {path}: expected a mapping of settings, got list"
    ]


def test_password_is_never_echoed_in_problems(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"mqtt": {"password": ["hunter2"]}})
    (line,) = problems(config_file=path, env=ONE)
    assert line.startswith("mqtt.password (SERMATEC_MQTT__PASSWORD): ")
    assert "hunter2" not in line


# --------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------


def tls_env(**values: str) -> dict[str, str]:
    return {**ONE, **{f"SERMATEC_MQTT__TLS__{k.upper()}": v for k, v in values.items()}}


def test_tls_files_must_exist_when_enabled(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    assert problems(env=tls_env(enabled="true", ca_file=str(missing))) == [
        f"mqtt.tls.ca_file (SERMATEC_MQTT__TLS__CA_FILE): no such file, got '{missing}'"
    ]
    assert problems(env=tls_env(enabled="true", ca_file=str(tmp_path))) == [
        f"mqtt.tls.ca_file (SERMATEC_MQTT__TLS__CA_FILE): not a regular file, got '{tmp_path}'"
    ]


def test_tls_files_are_not_checked_when_disabled(tmp_path: Path) -> None:
    settings = load_settings(env=tls_env(ca_file=str(tmp_path / "absent.pem")))
    assert not settings.mqtt.tls.enabled


def test_tls_certificate_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    key = tmp_path / "client.key"
    cert.write_text("cert", encoding="utf-8")
    key.write_text("key", encoding="utf-8")
    assert problems(env=tls_env(enabled="true", cert_file=str(cert))) == [
        "mqtt.tls (SERMATEC_MQTT__TLS__*): cert_file and key_file go together: "
        "set both or neither"
    ]
    settings = load_settings(env=tls_env(enabled="true", cert_file=str(cert), key_file=str(key),
                                         insecure="yes"))
    tls = settings.mqtt.tls
    assert (tls.enabled, tls.cert_file, tls.key_file, tls.insecure) == (True, cert, key, True)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def test_masked_yaml_hides_the_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n", encoding="utf-8")
    settings = load_settings(env={**ONE, "SERMATEC_MQTT__PASSWORD_FILE": str(tmp_path / "pw"),
                                  "SERMATEC_MQTT__USERNAME": "bridge"})
    text = masked_yaml(settings)
    assert "hunter2" not in text
    shown = yaml.safe_load(text)
    assert shown["mqtt"]["password"] == "********"
    assert shown["mqtt"]["username"] == "bridge"
    assert shown["inverter"]["host"] == "192.168.1.50"


def test_masked_yaml_is_a_loadable_configuration(tmp_path: Path) -> None:
    settings = load_settings(env={**ONE, "SERMATEC_POLL__LIVE": "7"})
    path = write_yaml(tmp_path, masked_yaml(settings))
    assert load_settings(path, env={}) == settings


def test_masked_yaml_without_password_shows_null() -> None:
    assert yaml.safe_load(masked_yaml(load_settings(env=ONE)))["mqtt"]["password"] is None


def test_reference_lists_every_setting() -> None:
    table = reference_markdown()
    for option in config._options():
        if option.kind != "section":
            assert f"| `{option.yaml_path}` | `{option.env}`" in table
            assert option.info.description, option.yaml_path


def test_every_field_has_a_description() -> None:
    for option in config._options():
        assert option.info.description, option.yaml_path


def test_example_file_is_generated() -> None:
    committed = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    assert committed == example_yaml(), (
        "config.example.yaml is stale: python -c 'from sermatec_bridge.config import "
        "example_yaml; print(example_yaml(), end=\"\")' > config.example.yaml"
    )


def test_example_uncommented_is_valid_and_shows_the_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, config._example_body())
    settings = load_settings(path, env={})
    assert [i.host for i in settings.all_inverters()] == [
        "192.168.1.50", "192.168.1.51", "192.168.1.52"
    ]
    defaults = Settings(inverter=InverterSettings(host="x"))
    for section in ("poll", "mqtt", "homeassistant", "writes", "log", "health"):
        assert getattr(settings, section) == getattr(defaults, section), section
    assert example_yaml().count("\n# ") > 40  # commented out, not live


def test_example_mentions_every_setting() -> None:
    text = example_yaml()
    for option in config._options():
        assert f"# {'  ' * (len(option.path) - 1)}{option.path[-1]}:" in text, option.yaml_path


def test_readme_reference_is_current() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    if config.README_START not in text or config.README_END not in text:
        pytest.skip("README.md has no config-reference markers yet")
    section = text.split(config.README_START, 1)[1].split(config.README_END, 1)[0]
    if not section.strip():
        pytest.skip("README.md config reference not filled in yet (config.embed_reference)")
    assert config.embed_reference(text) == text, (
        "README config reference is stale: regenerate it with config.embed_reference"
    )


def test_embed_reference() -> None:
    readme = f"# T\n\n{config.README_START}\nold\n{config.README_END}\n\nrest\n"
    assert config.embed_reference(readme) == (
        f"# T\n\n{config.README_START}\n{reference_markdown()}{config.README_END}\n\nrest\n"
    )
    with pytest.raises(ValueError, match="config-reference"):
        config.embed_reference("# no markers\n")



def test_an_unquoted_protocol_version_in_yaml_is_accepted(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "inverter:\n  host: 192.168.1.50\nmqtt:\n  protocol: 5\n")
    assert load_settings(path, env={}).mqtt.protocol == "5"
    refused = write_yaml(tmp_path, "inverter:\n  host: 192.168.1.50\nmqtt:\n  protocol: 4\n")
    with pytest.raises(ConfigError, match=r"mqtt\.protocol"):
        load_settings(refused, env={})


@pytest.mark.parametrize(("runtime", "state", "home", "where"), [
    ("/run/user/1000", "", "/home/ann", "/run/user/1000/sermatec-bridge"),
    ("", "/var/state", "/home/ann", "/var/state/sermatec-bridge"),
    ("", "", "/home/ann", "/home/ann/.local/state/sermatec-bridge"),
])
def test_heartbeat_file_belongs_to_one_bridge_of_one_user(
        monkeypatch: pytest.MonkeyPatch, runtime: str, state: str, home: str,
        where: str) -> None:
    """Not one file for the machine: another user's (or another bridge's) heartbeat must
    never make this bridge look healthy."""
    for name, value in (("XDG_RUNTIME_DIR", runtime), ("XDG_STATE_HOME", state),
                        ("HOME", home)):
        monkeypatch.setenv(name, value)
    inverter = {"SERMATEC_INVERTER__HOST": "192.168.1.50"}
    first = load_settings(env=inverter).heartbeat_file
    assert first == Path(where) / "sermatec-bridge.health.json"
    other = load_settings(env={**inverter, "SERMATEC_MQTT__CLIENT_ID": "../garage/bridge"})
    assert other.heartbeat_file == Path(where) / "_garage_bridge.health.json"
    given = load_settings(env={**inverter, "SERMATEC_HEALTH__FILE": "/srv/beat.json"})
    assert given.heartbeat_file == Path("/srv/beat.json")
