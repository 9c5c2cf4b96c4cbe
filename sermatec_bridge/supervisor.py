"""The bridge as a Home Assistant app ("add-on"): its configuration from the Supervisor.

The Supervisor starts the app's container with ``SUPERVISOR_TOKEN`` set and writes the
options the user saved in the app's Configuration tab to ``/data/options.json``. They use
the keys of the YAML configuration (``inverter: {host, port}``, ``writes: {enabled}``, ...),
so the same models validate them. When they name no MQTT broker, the broker, its port,
credentials and TLS come from the Supervisor (the Mosquitto app provides them; a port,
user or password the options give wins), the time zone is always Home Assistant's, and
schedule times take the form that Home Assistant's version understands (``time``
entities from 2026.5, ``text`` before) unless the options say otherwise.

The Supervisor's MQTT service also names a ``protocol``; the Mosquitto app says 3.1.1,
though it speaks MQTT 5 too. The bridge keeps its own ``mqtt.protocol`` (5): the signed
availability of several bridges, the session that keeps writes for a bridge that restarts
and the expiry of Home Assistant's commands need it.

The cloud listener (``cloud.listen_port``) listens on :data:`LISTEN_PORT` in the app's
container; the port inverters reach on the Home Assistant machine is the user's to
choose in the app's Network section (``ports`` of config.yaml).

Every way this can fail (no Supervisor, a refusal, no MQTT service, options that are not
valid) ends the start with one line naming the cause, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import APP_OPTIONS_ENV, ConfigError, Settings, load_settings
from .homezone import HomeZone, ZoneError, named

if TYPE_CHECKING:
    import urllib.error

TOKEN_ENV = "SUPERVISOR_TOKEN"
URL_ENV = "SUPERVISOR_URL"
DEFAULT_URL = "http://supervisor"
DEFAULT_OPTIONS = "/data/options.json"
TIMEOUT = 10.0  # seconds for each request to the Supervisor
MAX_REPLY = 1 << 20  # bytes; the Supervisor's answers are far smaller
TIME_ENTITIES = (2026, 5)  # the Home Assistant release with MQTT time entities
LISTEN_PORT = 19042  # the cloud listener's port in the app's container (config.yaml ports)

class SupervisorError(Exception):
    """The Supervisor cannot be asked, or its answer cannot be used."""


def active(environ: Mapping[str, str]) -> bool:
    """Running as a Home Assistant app: the Supervisor gave the container its token."""
    return bool(environ.get(TOKEN_ENV))


@dataclass(frozen=True)
class AppStart:
    """What the app runs with, and where each part came from (for the start-up log)."""

    settings: Settings
    zone: HomeZone
    options_file: Path
    broker_from: str  # "the Supervisor" or "the options"
    home_assistant: str | None  # Home Assistant's version, as the Supervisor says it


class Supervisor:
    """The few requests the bridge makes to the Supervisor's API."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def get(self, path: str) -> dict[str, Any]:
        """The ``data`` of a GET, or a SupervisorError with the Supervisor's own reason."""
        import urllib.error  # here: a one-shot command that only checks for the app
        import urllib.request  # (supervisor.active) must not pay for them

        where = f"{self.url}{path}"
        request = urllib.request.Request(
            where, headers={"Authorization": f"Bearer {self.token}"})
        # The Supervisor is on the app's own network: never through an HTTP proxy, which
        # would also see the token.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=TIMEOUT) as reply:
                body = reply.read(MAX_REPLY)
        except urllib.error.HTTPError as exc:
            raise SupervisorError(f"the Supervisor answered GET {path} with HTTP {exc.code}"
                                  f"{_reason(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SupervisorError(f"cannot reach the Supervisor at {where}: "
                                  f"{getattr(reason, 'strerror', None) or reason}") from None
        try:
            answer = json.loads(body)
            data = answer["data"]
        except (ValueError, TypeError, KeyError):
            data = None
        if not isinstance(data, dict):
            raise SupervisorError(f"the Supervisor's answer to GET {path} has no data object")
        return data

    def broker(self) -> dict[str, Any]:
        """The MQTT broker the Supervisor provides, as ``mqtt`` settings."""
        try:
            service = self.get("/services/mqtt")
        except SupervisorError as exc:
            raise SupervisorError(
                f"no MQTT broker from the Supervisor ({exc}): install and start the Mosquitto "
                "broker app, or set mqtt.host in this app's options") from None
        host, port = service.get("host"), service.get("port")
        if not isinstance(host, str) or not host or not isinstance(port, int):
            raise SupervisorError("the Supervisor's MQTT service names no broker host and port")
        broker: dict[str, Any] = {"host": host, "port": port,
                                  "tls": {"enabled": bool(service.get("ssl"))}}
        for key in ("username", "password"):  # never logged: the settings mask the password
            if service.get(key):
                broker[key] = str(service[key])
        return broker


def zone_of(info: Mapping[str, Any]) -> HomeZone:
    """Home Assistant's time zone, from the Supervisor's ``/info``."""
    name = info.get("timezone")
    if not isinstance(name, str) or not name:
        raise SupervisorError("the Supervisor's /info names no time zone")
    try:
        return named(name, "Home Assistant's time zone")
    except ZoneError as exc:
        raise SupervisorError(str(exc)) from None


def time_platform(version: str | None) -> str | None:
    """The schedule-time form Home Assistant ``version`` (``2026.11.0``) takes: ``time``
    entities came to MQTT in 2026.5. None when the version cannot be read."""
    try:
        year, month = (int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return None
    return "time" if (year, month) >= TIME_ENTITIES else "text"


def _reason(exc: urllib.error.HTTPError) -> str:
    """The Supervisor's ``message`` of an error answer, if it gave one."""
    try:
        message = json.loads(exc.read(MAX_REPLY)).get("message")
    except (OSError, ValueError, AttributeError):
        message = None
    return f": {message}" if isinstance(message, str) and message else ""


def read_options(path: Path) -> dict[str, Any]:
    """The app's options, with empty fields (a cleared text box) taken as unset."""
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"no options file at {path} ({APP_OPTIONS_ENV})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the options file {path}: {exc}"]) from None
    except ValueError as exc:
        raise ConfigError([f"the options file {path} is not JSON: {exc}"]) from None
    if not isinstance(options, dict):
        raise ConfigError([f"the options file {path} holds no mapping of options"])
    return _without_empty(options)


def _without_empty(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            value = _without_empty(value)
        if value not in ("", None, {}):
            out[key] = value
    return out


def _section(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = options.get(name)
    return dict(value) if isinstance(value, Mapping) else {}


def options(environ: Mapping[str, str]) -> tuple[Path, dict[str, Any]]:
    """The app's options file, and what it says as a layer of settings over the image's
    environment (the Supervisor is not asked: the command line reads it too). Raises
    ConfigError for an options file that cannot be used."""
    path = Path(environ.get(APP_OPTIONS_ENV) or DEFAULT_OPTIONS)
    given = read_options(path)
    listening = _section(given, "cloud").get("listen_port")
    if listening is not None and listening != LISTEN_PORT:
        raise ConfigError([f"cloud.listen_port: the app listens on {LISTEN_PORT} (or not at "
                           f"all); to have the inverter dial another port, change "
                           f"{LISTEN_PORT}/tcp in the app's Network section"])
    if not (_section(given, "inverter").get("host") or "inverters" in given or listening):
        raise ConfigError(["no inverter address: enter it under inverter → host in the "
                           "app's Configuration tab (or turn on the cloud listener for "
                           "inverters that dial in)"])
    # Readable lines in the app's log, unless the options ask for JSON.
    return path, {**given, "log": {"format": "console", **_section(given, "log")}}


def start(environ: Mapping[str, str]) -> AppStart:
    """The app's settings and zone. Raises ConfigError for the options, SupervisorError
    for the Supervisor; both say what to do."""
    path, layer = options(environ)
    supervisor = Supervisor(environ.get(URL_ENV) or DEFAULT_URL, environ[TOKEN_ENV])
    info = supervisor.get("/info")
    zone = zone_of(info)
    version = info.get("homeassistant")
    version = version if isinstance(version, str) and version else None
    form = time_platform(version)
    if form is not None:  # the options still win
        layer["homeassistant"] = {"time_platform": form, **_section(layer, "homeassistant")}
    broker_from = "the options"
    given = _section(layer, "mqtt")
    if not given.get("host"):
        # The Supervisor's broker; what the options say of it (a user, a port) wins.
        layer["mqtt"] = {**supervisor.broker(), **given}
        broker_from = "the Supervisor" + (
            f", with {', '.join(f'mqtt.{key}' for key in sorted(given))} from the options"
            if given else "")
    # The options are the user's configuration: they win over the image's environment.
    settings = load_settings(overrides=layer, env=environ)
    return AppStart(settings, zone, path, broker_from, version)
