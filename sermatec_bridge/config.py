"""Configuration: defaults < YAML file < environment (and ``*_FILE`` secrets) < CLI flags.

Every setting has a YAML path (``mqtt.port``) and an environment variable
(``SERMATEC_MQTT__PORT``). ``load_settings`` reads the sources, merges them key by key and
validates once, so a wrong configuration fails at start with one line per problem.
The reference table of the README and ``config.example.yaml`` are generated from the
models below: their field descriptions are the documentation.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import textwrap
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

ENV_PREFIX = "SERMATEC_"
ENV_DELIMITER = "__"
CONFIG_ENV = "SERMATEC_CONFIG"
APP_OPTIONS_ENV = "SERMATEC_APP_OPTIONS"  # the Home Assistant app's options file
FILE_SUFFIX = "_FILE"
SECRET_MASK = "********"

NO_INVERTER = (
    "no inverter configured: set SERMATEC_INVERTER__HOST, or inverter.host or inverters "
    "in the YAML file (or cloud.listen_port, for inverters that dial in)"
)
NO_HOST = "inverter.host (SERMATEC_INVERTER__HOST): required, but not set"

README_START = "<!-- config-reference:start -->"
README_END = "<!-- config-reference:end -->"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def _check_topic(value: str) -> str:
    """An MQTT topic prefix: levels joined by ``/``, none empty, no wildcards."""
    if not value:
        raise ValueError("must not be empty")
    if "+" in value or "#" in value or "\0" in value:
        raise ValueError("must not contain the MQTT wildcards + or #")
    if value.startswith("/") or value.endswith("/"):
        raise ValueError("must not start or end with /")
    if "//" in value:
        raise ValueError("must not contain an empty level (//)")
    return value


Topic = Annotated[str, AfterValidator(_check_topic)]


def _check_command(value: Any) -> str:
    """A command named by code (0xb1, b1, 177) or by key (network): its label, 0xb1."""
    from .protocol import tables  # only when a command is named: the tables load slowly

    if isinstance(value, int) and not isinstance(value, bool):
        command = tables.COMMANDS.get(value)
    elif isinstance(value, str):
        command = tables.find(value)
    else:
        raise ValueError("must be a command code (0xb1) or name (network)")
    if command is None:
        raise ValueError("not a command of the protocol tables; name one by code (0xb1) or "
                         "key (network): `sermatec-bridge list` shows them")
    return command.label


CommandName = Annotated[str, BeforeValidator(_check_command)]


def _check_named_only(label: str) -> str:
    """A command that passes a foreign requester only where a setting names it; a settings
    write is none of them (it follows writes.enabled)."""
    from .protocol.tables import NAMED_ONLY  # only here: the tables load slowly

    if int(label, 16) not in NAMED_ONLY:
        raise ValueError(f"{label} is not a command to name here: settings writes follow "
                         "writes.enabled, queries always pass; name the reset, network or "
                         "register commands, or 0xb1")
    return label


NamedOnlyCommand = Annotated[CommandName, AfterValidator(_check_named_only)]


def _check_network(value: str) -> str:
    """A client network in CIDR notation (a single address is a network of one)."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError("not a network in CIDR notation (192.168.1.0/24, fd00::/8) "
                         "nor an address") from None


Network = Annotated[str, AfterValidator(_check_network)]


def _check_server(value: str) -> str:
    """HOST:PORT ([ADDRESS]:PORT for IPv6)."""
    host, colon, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not HOST:PORT (a port from 1 to 65535)")
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


Server = Annotated[str, AfterValidator(_check_server)]

MOVED = {
    "proxy_host": "it is proxy.host now (SERMATEC_PROXY__HOST)",
    "proxy_writes": "the app's settings writes follow writes.enabled now, and other writes "
    "proxy.allow",
}


class _Section(BaseModel):
    # A typo in a setting must fail, not be silently ignored; so must inf or nan for a
    # number of seconds (a wait that never ends, a poll that never comes).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InverterSettings(_Section):
    """One inverter: reached at its ``host``, or known by the ``serial`` it dials in with."""

    host: str | None = Field(
        default=None, min_length=1,
        description="IP address or host name of the inverter's network module. Required, "
        "unless the inverter dials in (serial).",
        examples=["192.168.1.50"],
    )
    port: int = Field(default=8899, ge=1, le=65535, description="TCP port of the inverter.")
    serial: str | None = Field(
        default=None, min_length=1,
        description="Instead of host: the serial number of an inverter that dials in to "
        "cloud.listen_port (its cloud link); the bridge then never connects to it.",
    )
    name: str | None = Field(
        default=None, min_length=1,
        description="A label for logs; unset: host:port, or the serial."
    )
    timeout: float = Field(
        default=5.0, ge=0.01, le=3600,
        description="Longest wait, in seconds, for an answer from the inverter; the bridge "
        "waits less (at least 1 s) once it has seen how fast the inverter answers.",
    )
    retries: int = Field(
        default=2, ge=0,
        description="How often a request that got no answer is sent again (a query left "
        "unanswered at its last poll is sent once).",
    )
    proxy_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port where the bridge serves the vendor's app and other clients written "
        "for the inverter, sharing this inverter's connection (see `proxy`); unset: off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """Settings of earlier versions that now live elsewhere: say where."""
        for old, new in MOVED.items():
            if isinstance(data, dict) and old in data:
                raise ValueError(f"{old} is no longer a setting of an inverter: {new}")
        return data

    @model_validator(mode="after")
    def _host_or_serial(self) -> Self:
        if self.host is not None and self.serial is not None:
            raise ValueError("host and serial: give one (host: the bridge connects to the "
                             "inverter; serial: the inverter dials in)")
        return self

    @property
    def dials_in(self) -> bool:
        """Known by its serial: it connects to the bridge's cloud listener."""
        return self.serial is not None

    @property
    def template(self) -> bool:
        """Neither host nor serial: the settings of inverters that dial in unlisted."""
        return self.host is None and self.serial is None

    @property
    def label(self) -> str:
        """The name in logs: ``name``, else ``host:port``, else the serial."""
        return self.name or (f"{self.host}:{self.port}" if self.host else str(self.serial))


class PollSettings(_Section):
    """How often each group of values is read."""

    live: float = Field(
        default=10.0, gt=0, description="Seconds between reads of live power, battery and status."
    )
    energy: float = Field(
        default=60.0, gt=0, description="Seconds between reads of the energy counters."
    )
    slow: float = Field(
        default=300.0, gt=0,
        description="Seconds between reads of settings, system information and alarms."
    )


class TlsSettings(_Section):
    """TLS towards the MQTT broker."""

    enabled: bool = Field(default=False, description="Connect to the broker over TLS.")
    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) to verify the broker with; unset: the system's."
    )
    cert_file: Path | None = Field(
        default=None,
        description="Client certificate, for brokers that authenticate clients by TLS."
    )
    key_file: Path | None = Field(
        default=None, description="Private key of the client certificate."
    )
    insecure: bool = Field(
        default=False,
        description="Skip verification of the broker's certificate and host name (unsafe).",
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists_when_enabled(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("enabled"):
            if not value.exists():
                raise ValueError("no such file")
            if not value.is_file():
                raise ValueError("not a regular file")
        return value

    @model_validator(mode="after")
    def _cert_and_key(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class MqttSettings(_Section):
    """The MQTT broker that Home Assistant uses."""

    host: str = Field(
        default="localhost", min_length=1, description="Host name or IP address of the broker."
    )
    port: int = Field(default=1883, ge=1, le=65535, description="TCP port of the broker.")
    username: str | None = Field(
        default=None, description="User name at the broker; unset: anonymous."
    )
    password: SecretStr | None = Field(
        default=None,
        description="Password at the broker; from a file: SERMATEC_MQTT__PASSWORD_FILE.",
    )
    client_id: str = Field(
        default="sermatec-bridge", min_length=1,
        description="MQTT client identifier, and this bridge's name: give each bridge on one "
        "broker its own. Another than the default puts the bridge's state at "
        "<base_topic>/bridge/<client_id>/state.",
    )
    base_topic: Topic = Field(
        default="sermatec",
        description="First level(s) of the bridge's topics; no wildcards, no leading or "
        "trailing slash.",
    )
    keepalive: int = Field(
        default=30, ge=1, le=65535, description="Seconds between keep-alive pings to the broker."
    )
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT protocol version; 3.1.1 for brokers without MQTT 5 (write results "
        "then have no response topic).",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS to the broker.")

    @field_validator("protocol", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        """YAML reads ``protocol: 5`` as a number: it means the same as ``"5"``."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery."""

    discovery: bool = Field(default=True, description="Announce the entities to Home Assistant.")
    prefix: Topic = Field(
        default="homeassistant", description="Home Assistant's discovery prefix."
    )
    device_discovery: bool = Field(
        default=True,
        description="One discovery message per device; false: one per entity, for Home "
        "Assistant older than 2024.11.",
    )
    birth_delay: float = Field(
        default=5.0,
        ge=0,
        description="Longest random delay, in seconds, before discovery is sent again "
        "after Home Assistant's birth message.",
    )
    time_platform: Literal["time", "text"] = Field(
        default="time",
        description="How schedule times are set from Home Assistant: time entities "
        "(Home Assistant 2026.5 or newer), or text entities taking HH:MM (older versions).",
    )

    @property
    def status_topic(self) -> str:
        """Where Home Assistant publishes ``online`` (its birth) and ``offline``."""
        return f"{self.prefix}/status"


class WritesSettings(_Section):
    """Changing inverter settings from Home Assistant."""

    enabled: bool = Field(
        default=False, description="Let Home Assistant change inverter settings; off: read only."
    )
    min_interval: float = Field(
        default=10.0, ge=0, description="Least seconds between two writes of the same setting."
    )
    confirm_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to read a written value back before the write is reported "
        "unconfirmed.",
    )


class ProxySettings(_Section):
    """Who may use the app proxy (`inverter.proxy_port`), and for what."""

    host: str = Field(
        default="0.0.0.0", min_length=1,
        description="Address the app proxy listens on (0.0.0.0: every interface, so that the "
        "app on a phone reaches it).",
    )
    allowed_networks: list[Network] = Field(
        default_factory=list,
        description="Client networks that may connect, in CIDR notation; others are "
        "disconnected at once. Empty: any client.",
        examples=[["192.168.1.0/24"]],
    )
    allow: list[NamedOnlyCommand] = Field(
        default_factory=list,
        description="Commands a client may send beyond queries (and settings writes, which "
        "follow writes.enabled), by code or name: the reset 0x70, the network writes 0x94, "
        "0x9e, 0x9f, 0xa3, 0xb0, the register commands 0xba, 0xbb, and the network query "
        "0xb1 (its reply carries the Wi-Fi password). Empty: none of them.",
        examples=[["0xb1"]],
    )


class CloudSettings(_Section):
    """The inverters' cloud link: the bridge as their cloud server, the vendor cloud optional."""

    listen_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port where the bridge takes the connections that inverters in station "
        "mode open to their cloud server (the vendor's is 19042), and serves them over it "
        "as over a connection of its own; unset: off. `sermatec-bridge cloud set` points an "
        "inverter here.",
    )
    listen_host: str = Field(
        default="0.0.0.0", min_length=1,
        description="Address the cloud listener listens on (0.0.0.0: every interface).",
    )
    allowed_networks: list[Network] = Field(
        default_factory=list,
        description="Networks inverters may dial in from, in CIDR notation; others are "
        "disconnected at once. Empty: any.",
        examples=[["192.168.1.0/24"]],
    )
    accept_unlisted: bool = Field(
        default=True,
        description="Serve an inverter that dials in and is not listed by serial, with the "
        "timeout and retries of `inverter`; false: refuse it.",
    )
    upstream: Server | None = Field(
        default=None,
        description="The vendor cloud as HOST:PORT (the factory setting is "
        "8.209.71.159:19042): while an inverter is connected, the bridge keeps a link "
        "there on its behalf and answers the cloud's queries; unset: the vendor cloud never "
        "hears from the inverters.",
    )
    allow: list[CommandName] = Field(
        default_factory=list,
        description="Commands the vendor cloud may send beyond queries, by code or name: "
        "settings writes (only with writes.enabled), the reset 0x70, the network writes, "
        "the register commands, the network query 0xb1 (its reply carries the Wi-Fi "
        "password). Empty: the cloud only reads.",
    )

    @property
    def upstream_address(self) -> tuple[str, int] | None:
        if self.upstream is None:
            return None
        host, _, port = self.upstream.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


class LogSettings(_Section):
    """Logging to stderr."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severity logged."
    )
    format: Literal["auto", "console", "json"] = Field(
        default="auto",
        description="console: readable; json: one object a line; auto: console on a "
        "terminal, json elsewhere.",
    )

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class HealthSettings(_Section):
    """Liveness for Docker's health check and Prometheus."""

    file: Path | None = Field(
        default=None,
        description="Heartbeat file the bridge writes and `sermatec-bridge health` reads; "
        "unset: one per bridge, `<mqtt.client_id>.health.json` in $XDG_RUNTIME_DIR/"
        "sermatec-bridge, else in ~/.local/state/sermatec-bridge.",
    )
    max_age: float = Field(
        default=120.0, gt=0, description="Seconds after which a heartbeat counts as stale."
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port for Prometheus metrics at /metrics; unset: off."
    )
    metrics_host: str = Field(
        default="127.0.0.1", min_length=1,
        description="Address the metrics endpoint listens on: 127.0.0.1, this host only; "
        "0.0.0.0 (every interface) for a Prometheus on another host or in another container.",
    )


class Settings(BaseSettings):
    """The whole configuration. Build it with ``load_settings``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        # Compose files often pass `VAR=` for "not set".
        env_ignore_empty=True,
        case_sensitive=False,
        extra="forbid",
    )

    inverter: InverterSettings | None = Field(
        default=None,
        description="One inverter: enough for most installations, and settable by environment "
        "variables alone."
    )
    inverters: list[InverterSettings] = Field(
        default_factory=list,
        description="Several inverters: a list whose entries take the keys of `inverter`.",
        examples=[[{"host": "192.168.1.51", "name": "garage"},
                   {"host": "192.168.1.52", "name": "roof"}]],
    )
    poll: PollSettings = Field(
        default_factory=PollSettings, description="How often each group of values is read."
    )
    mqtt: MqttSettings = Field(
        default_factory=MqttSettings, description="The MQTT broker that Home Assistant uses."
    )
    homeassistant: HomeAssistantSettings = Field(
        default_factory=HomeAssistantSettings, description="Home Assistant MQTT discovery."
    )
    writes: WritesSettings = Field(
        default_factory=WritesSettings,
        description="Changing inverter settings from Home Assistant.",
    )
    proxy: ProxySettings = Field(
        default_factory=ProxySettings,
        description="The app proxy: who may use it, and for what.",
    )
    cloud: CloudSettings = Field(
        default_factory=CloudSettings,
        description="The inverters' cloud link: the bridge as their cloud server, and the "
        "vendor cloud on a leash.",
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Log output, to stderr.")
    health: HealthSettings = Field(
        default_factory=HealthSettings,
        description="Heartbeat for the Docker health check, and Prometheus metrics.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)`` validates its arguments only: ``load_settings`` reads the rest."""
        return (init_settings,)

    @model_validator(mode="after")
    def _check_inverters(self) -> Self:
        found = self.all_inverters()
        listening = self.cloud.listen_port is not None
        template = self.inverter is not None and self.inverter.template
        if template and not listening:
            raise ValueError(NO_HOST)
        if not found and not listening:
            raise ValueError(NO_INVERTER)
        for index, entry in enumerate(self.inverters):
            if entry.template:
                raise ValueError(f"inverters[{index}]: host or serial is required")
        for where, entry in self._entries():
            if entry.dials_in and not listening:
                raise ValueError(f"{where}.serial: an inverter known by its serial dials in: "
                                 "set cloud.listen_port (SERMATEC_CLOUD__LISTEN_PORT)")
        if self.inverter is not None and template and (
                given := sorted({"name", "proxy_port"} & self.inverter.model_fields_set)):
            raise ValueError(f"inverter.{given[0]}: inverter has no host or serial, so its "
                             "settings serve every inverter that dials in unlisted; name or "
                             "proxy_port need one inverter: give its serial")
        for what, keys in (("inverter", [f"{i.host}:{i.port}" for i in found if i.host]),
                           ("inverter serial", [str(i.serial) for i in found if i.serial]),
                           ("inverter name", [repr(i.name) for i in found if i.name]),
                           ("proxy_port", [str(i.proxy_port) for i in found if i.proxy_port])):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise ValueError(f"{what} {', '.join(twice)} " + (
                    "used by more than one inverter" if what == "proxy_port" else
                    "used more than once" if what == "inverter name" else
                    "configured more than once"))
        if listening and self.cloud.listen_port in {i.proxy_port for i in found}:
            raise ValueError(f"cloud.listen_port {self.cloud.listen_port} is also a proxy_port")
        if self.cloud.allow and not self.writes.enabled:
            from .protocol.tables import SETTINGS_WRITES  # only here: the tables load slowly

            writes = [c for c in self.cloud.allow if int(c, 16) in SETTINGS_WRITES]
            if writes:
                raise ValueError(f"cloud.allow names the settings write {writes[0]}, but "
                                 "writes.enabled is false: settings writes from anywhere "
                                 "need it")
        return self

    def _entries(self) -> list[tuple[str, InverterSettings]]:
        out = [("inverter", self.inverter)] if self.inverter is not None else []
        return out + [(f"inverters[{n}]", i) for n, i in enumerate(self.inverters)]

    def all_inverters(self) -> list[InverterSettings]:
        """The single ``inverter`` (if it names one) followed by the ``inverters`` list."""
        return [i for _, i in self._entries() if not i.template]

    @property
    def unlisted(self) -> InverterSettings:
        """The settings of an inverter that dials in and is not listed: the timeout and
        retries of ``inverter``, or the defaults."""
        base = self.inverter or InverterSettings()
        return InverterSettings(timeout=base.timeout, retries=base.retries)

    @property
    def heartbeat_file(self) -> Path:
        """``health.file``, else this bridge's own: the user's, named by its MQTT client id
        (two bridges on one broker cannot share a client id), never one for the machine."""
        if self.health.file is not None:
            return self.health.file
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.mqtt.client_id)
        return runtime_dir() / f"{name.lstrip('.')}.health.json"


def runtime_dir() -> Path:
    """Where a bridge keeps its heartbeat (and ``daemon -f`` its PID and log): the user's
    runtime directory, else the user's state directory; never a directory all users share."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("XDG_STATE_HOME") or \
        os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sermatec-bridge"


# --------------------------------------------------------------------------------------
# The options, walked from the models
# --------------------------------------------------------------------------------------

OptionKind = Literal["section", "list", "value"]


@dataclass(frozen=True)
class _Option:
    path: tuple[str, ...]
    info: FieldInfo
    kind: OptionKind
    type: Any  # the annotation without ``| None``; for lists, the item type

    @property
    def yaml_path(self) -> str:
        return ".".join(self.path)

    @property
    def env(self) -> str:
        return env_name(self.path)

    @property
    def secret(self) -> bool:
        return self.type is SecretStr


def env_name(path: tuple[str | int, ...] | list[str]) -> str:
    """The environment variable of a YAML path: ``("mqtt", "port")`` → ``SERMATEC_MQTT__PORT``."""
    return ENV_PREFIX + ENV_DELIMITER.join(str(p).upper() for p in path)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _option(path: tuple[str, ...], info: FieldInfo) -> _Option:
    annotation = _without_none(info.annotation)
    if _is_model(annotation):
        return _Option(path, info, "section", annotation)
    if get_origin(annotation) is list:
        return _Option(path, info, "list", get_args(annotation)[0])
    return _Option(path, info, "value", annotation)


def _options(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> Iterator[_Option]:
    """Every setting, depth first in declaration order, sections before their contents."""
    for name, info in model.model_fields.items():
        option = _option((*prefix, name), info)
        yield option
        if option.kind == "section":
            yield from _options(option.type, option.path)


def _option_at(loc: tuple[str | int, ...]) -> _Option | None:
    """The option a validation error location points at (list indexes step into the item)."""
    model: type[BaseModel] = Settings
    option: _Option | None = None
    for part in loc:
        if isinstance(part, int):
            if option is None or option.kind != "list" or not _is_model(option.type):
                return None
            model = option.type
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        option = _option((part,), info)
        if option.kind == "section":
            model = option.type
    return option


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    if not loc:
        return Settings
    option = _option_at(loc)
    if option is None:
        return None
    if option.kind == "section" or (isinstance(loc[-1], int) and _is_model(option.type)):
        return option.type  # type: ignore[no-any-return]
    return None


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The hook pydantic-settings' own DotEnvSettingsSource overrides for the same purpose.
        return {k if self.case_sensitive else k.lower(): v for k, v in self._environ.items()}


def _suggest(word: str, choices: list[str], quote: bool = False) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {close[0]!r}?" if quote else f"; did you mean {close[0]}?"


def _read_secret_file(var: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{var}: cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{var}: {path} is not UTF-8 text"]) from None
    # Editors and `echo` add a newline the secret does not contain; strip exactly one.
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def _read_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], set[str], list[str]]:
    """The ``SERMATEC_`` variables as settings: ``*_FILE`` variables read, unknown names refused.

    Returns the variables to validate (by canonical upper-case name), the names whose
    value came from a file, and the problems found.
    """
    options = {o.env: o for o in _options()}
    values: dict[str, str] = {}
    from_files: set[str] = set()
    problems: list[str] = []
    given = {
        raw.upper(): (raw, value)
        for raw, value in sorted(environ.items())
        if raw.upper().startswith(ENV_PREFIX) and value != ""
    }
    for name, (raw, value) in given.items():
        if name in (CONFIG_ENV, APP_OPTIONS_ENV):  # files to read, not settings
            continue
        option = options.get(name)
        if option is None and name.endswith(FILE_SUFFIX):
            target = name.removesuffix(FILE_SUFFIX)
            option = options.get(target)
            if option is not None:
                if target in given:
                    problems.append(f"{given[target][0]} and {raw} are both set; use one")
                    continue
                try:
                    value = _read_secret_file(raw, value)
                except ConfigError as exc:
                    problems.extend(exc.problems)
                    continue
                from_files.add(target)
                name = target
        if option is None:
            problems.append(f"{raw}: unknown setting{_suggest(name, list(options))}")
            continue
        if option.kind != "value":
            # pydantic-settings decodes these as JSON; say which variable is broken.
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                var = raw if name not in from_files else name + FILE_SUFFIX
                problems.append(
                    f"{option.yaml_path} ({var}): not valid JSON ({exc.msg} at line "
                    f"{exc.lineno}, column {exc.colno})"
                )
                continue
        values[name] = value
    return values, from_files, problems


def _read_yaml(path: Path, origin: str) -> dict[str, Any]:
    where = f"config file {path}{origin}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{where}: not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}{at}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: expected a mapping of settings, got {type(data).__name__}"])
    return _drop_empty_sections(data, Settings)


def _drop_empty_sections(data: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """``mqtt:`` with nothing under it means the defaults, not ``null``."""
    result: dict[str, Any] = {}
    for key, value in data.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        section = info is not None and _is_model(info.annotation)
        if info is not None and section and value is None:
            continue
        if info is not None and section and isinstance(value, dict):
            value = _drop_empty_sections(value, info.annotation)  # type: ignore[arg-type]
        result[key] = value
    return result


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    """CLI flags that were not given arrive as ``None``: they override nothing."""
    result: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            result[key] = _drop_none(value)
        elif value is not None:
            result[key] = value
    return result


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = _deep_merge({}, value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read, merge and validate the configuration; raise ``ConfigError`` listing every problem.

    Priority, lowest first: defaults, the YAML file (``config_file``, else
    ``$SERMATEC_CONFIG``), the environment (``env``, else ``os.environ``) with ``*_FILE``
    variables read, then ``overrides`` (nested, from CLI flags; ``None`` values are ignored).
    Sections merge key by key; lists replace.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    env_values, from_files, problems = _read_environment(environ)

    yaml_data: dict[str, Any] = {}
    origin = ""
    if config_file is None or config_file == "":
        config_file = environ.get(CONFIG_ENV) or None
        origin = f" (from {CONFIG_ENV})"
    if config_file is not None:
        try:
            yaml_data = _read_yaml(Path(config_file), origin)
        except ConfigError as exc:
            # Without the file every later message would be noise.
            raise ConfigError([*problems, *exc.problems]) from None

    try:
        env_data = _MappingEnvSource(Settings, env_values)()
    except SettingsError as exc:  # pragma: no cover - the JSON is checked above
        problems.append(f"environment: {exc}")
        env_data = {}

    merged = _deep_merge(_deep_merge(yaml_data, env_data), _drop_none(overrides or {}))
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_describe(error, from_files) for error in exc.errors())
        # The check of the whole model only runs once every field is valid: say it now.
        cloud = merged.get("cloud")
        listening = isinstance(cloud, Mapping) and cloud.get("listen_port")
        no_inverter = not (merged.get("inverter") or merged.get("inverters") or listening)
        if no_inverter and NO_INVERTER not in problems:
            problems.append(NO_INVERTER)
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def _yaml_path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:196] + "...'"


def _describe(error: ErrorDetails, from_files: set[str]) -> str:
    """One line for one validation error: ``mqtt.port (SERMATEC_MQTT__PORT): ...``."""
    loc = tuple(error["loc"])
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if not loc:
        return message

    option = _option_at(loc)
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        choices = list(parent.model_fields) if parent is not None else []
        text = f"unknown setting{_suggest(str(loc[-1]), choices, quote=True)}"
    elif kind == "missing":
        text = "required, but not set"
    else:
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            message = "expected a mapping of settings (key: value lines)"
        elif message.startswith("Input should be a valid ") and ", " in message:
            message = message.split(", ", 1)[0]
        text = message
        value = error.get("input")
        secret = option is not None and option.secret
        if not secret and isinstance(value, str | int | float):
            text += f", got {_short_repr(value)}"

    label = _yaml_path(loc)
    if not any(isinstance(part, int) for part in loc):
        var = env_name(loc)
        if var in from_files:
            var += FILE_SUFFIX
        elif option is not None and option.kind == "section" and kind != "extra_forbidden":
            var += ENV_DELIMITER + "*"
        label += f" ({var})"
    return f"{label}: {text}"


# --------------------------------------------------------------------------------------
# Output: effective configuration, reference table, example file
# --------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Indents list items under their key, as people write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        return SECRET_MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def masked_yaml(settings: Settings) -> str:
    """The effective configuration as YAML, secrets shown as ``********``."""
    return _dump(_plain(settings))


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump({"x": _plain(value)}, default_flow_style=True, width=1000)[4:-2]


def _constraints(option: _Option) -> str:
    """What a value must be, read from the field's metadata."""
    if get_origin(option.type) is Literal:
        return "One of: " + ", ".join(str(a) for a in get_args(option.type)) + "."
    bounds: dict[str, Any] = {}
    for item in option.info.metadata:
        for name in ("gt", "ge", "lt", "le"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                bounds[name] = getattr(item, name)
    if "ge" in bounds and "le" in bounds:
        return f"From {bounds['ge']} to {bounds['le']}."
    if "gt" in bounds:
        return f"Greater than {bounds['gt']}."
    if "ge" in bounds:
        return f"At least {bounds['ge']}."
    return ""


def _documentation(option: _Option) -> str:
    text = option.info.description or ""
    if option.info.is_required():
        text += " Required."
    hint = _constraints(option)
    return f"{text} {hint}".strip()


def _default(option: _Option) -> Any:
    return option.info.get_default(call_default_factory=True)


def reference_markdown() -> str:
    """The settings as a Markdown table, for the README."""
    rows = [
        "| YAML | Environment variable | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    for option in _options():
        if option.kind == "section":
            continue
        if option.info.is_required():
            default = "required"
        elif _default(option) is None:
            default = "unset"
        else:
            default = f"`{_yaml_scalar(_default(option))}`"
        var = f"`{option.env}`" + (" (JSON)" if option.kind == "list" else "")
        description = _documentation(option).replace("|", "\\|")
        rows.append(f"| `{option.yaml_path}` | {var} | {default} | {description} |")
    notes = [
        "",
        "Entries of `inverters` take the keys of `inverter`. Any variable can instead be "
        f"given as a file: `{ENV_PREFIX}MQTT__PASSWORD{FILE_SUFFIX}=/run/secrets/mqtt_password` "
        "reads the password from that file (one trailing newline is dropped). "
        f"`{CONFIG_ENV}` names the YAML file. An empty variable counts as unset.",
    ]
    return "\n".join(rows + notes) + "\n"


def embed_reference(readme: str) -> str:
    """``readme`` with the text between the config-reference markers regenerated."""
    head, found, rest = readme.partition(README_START)
    _, found_end, tail = rest.partition(README_END)
    if not found or not found_end:
        raise ValueError(f"the README lacks {README_START} ... {README_END}")
    return f"{head}{README_START}\n{reference_markdown()}{README_END}{tail}"


def _example_body() -> str:
    """The example configuration, uncommented (``example_yaml`` comments it out)."""
    lines: list[str] = []
    _example_model(Settings, 0, lines)
    return "\n".join(lines) + "\n"


def _example_model(model: type[BaseModel], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for name, info in model.model_fields.items():
        if indent == 0 and lines:
            lines.append("")
        option = _option((name,), info)
        for line in textwrap.wrap(_documentation(option), width=86 - indent):
            lines.append(f"{pad}# {line}")
        default = info.get_default(call_default_factory=True)
        example = info.examples[0] if info.examples else None
        if option.kind == "section":
            lines.append(f"{pad}{name}:")
            _example_model(option.type, indent + 2, lines)
        elif option.kind == "list":
            value = example if example is not None else default
            lines.extend(pad + line for line in _dump({name: value}).splitlines())
        else:
            value = example if info.is_required() or (default is None and example) else default
            lines.append(f"{pad}{name}: {_yaml_scalar(value)}")


def example_yaml() -> str:
    """The text of ``config.example.yaml``: every option, commented out, with its default."""
    header = [
        "# Sermatec bridge configuration: every option with its default, commented out.",
        "# Generated by sermatec_bridge.config.example_yaml(); do not edit by hand.",
        "#",
        "# Uncomment what you change, then run the bridge with --config PATH or",
        f"# {CONFIG_ENV}=PATH. Priority, lowest first: defaults, this file, environment",
        "# variables, command-line flags. Every option has an environment variable:",
        f"# mqtt.port is {ENV_PREFIX}MQTT__PORT, mqtt.tls.ca_file is",
        f"# {ENV_PREFIX}MQTT__TLS__CA_FILE. Append {FILE_SUFFIX} to read a value from a file",
        f"# (Docker secrets): {ENV_PREFIX}MQTT__PASSWORD{FILE_SUFFIX}=/run/secrets/mqtt_password.",
        "# Set `inverter`, `inverters` or both; at least one inverter is required.",
        "",
    ]
    # Top-level descriptions stay plain comments; the settings are commented out.
    body = [
        f"# {line}" if line and not line.startswith("#") else line
        for line in _example_body().splitlines()
    ]
    return "\n".join(header + body) + "\n"
