"""Run a real Home Assistant core against the bridge and report what Home Assistant sees.

    make ha-check [ARGS="--minutes 2 --all"]
    .venv-ha/bin/python benchmarks/ha_check.py --bridge-python .venv/bin/python [--all]
    ROOT=$(bash ../shared/tools/ha-newest/build.sh)     # Home Assistant 2026.11, once
    unshare -n bash -c 'ip link set lo up && exec .venv-ha/bin/python \
        benchmarks/ha_check.py --ha-root '$ROOT' --all'

Not part of `make test`: it needs Home Assistant core and takes minutes. The core is
2025.4.4 from its own venv (`.venv-ha`, made by `make ha-check`), or with ``--ha-root`` the
newest core in the Debian chroot that ``ha-newest/build.sh`` makes (Home Assistant 2026.3
and later need Python 3.14), run by its ``hass-chroot``. This script runs with the venv's
Python either way, because it talks to Home Assistant with aiohttp and watches the broker
with paho-mqtt, both pinned there; it touches the bridge only through its CLI, its
environment configuration and MQTT, so it checks whatever the bridge has become. Run it in
a network namespace with loopback only (``unshare -n``, above): Home Assistant's
onboarding reaches out to the internet otherwise.

It starts, all on 127.0.0.1 and free ports: a Mosquitto, the simulator (`sermatec-bridge
simulate`), the bridge (`python -m sermatec_bridge run`, writes on) and Home Assistant in
a temporary configuration directory (no `default_config`: the MQTT integration, `energy:`
and the recorder on SQLite; nothing that phones home). Home Assistant is onboarded and the
MQTT integration added through its REST API, as a user would. Once the entities settle it
reports the device's entity count, how many are enabled, the headline sensors, every
WARNING/ERROR line of Home Assistant's log that mentions mqtt or sermatec, the Energy
dashboard's validation of the bridge's counters (and, where the core has it, of the power
sensors signed as it wants them), and the recorder rows written for the device in
``--minutes``. Scenarios: ``--writes`` (writes off and on again), ``--modes`` (device
discovery true, false, true), ``--upgrade`` (an earlier release's discovery, with a
component on another platform), ``--ha-restart``, ``--schedules`` (every schedule entity
enabled and alive; a forced-charge period, a weekday, the enabled switch and a tariff set
from Home Assistant and read back), ``--forms`` (schedule times moved between time and
text entities in both discovery modes; Home Assistant 2026.5 and later), or ``--all``.

Prints a table of checks; exits 1 when one fails, 2 when the set-up itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import psutil  # type: ignore[import-untyped]
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
HA_VERSION = "2025.4.4"  # the core of .venv-ha; --ha-root names the one of its chroot
HASS_CHROOT = REPO.parent / "shared" / "tools" / "ha-newest" / "hass-chroot"
CONTROL_DOMAINS = ("switch", "select", "number", "button", "time", "text")
TIME_DOMAINS = ("time", "text")  # a schedule time, by homeassistant.time_platform
DEAD_STATES = ("unavailable", "unknown")

# Energy dashboard slots, each filled by the first bridge counter (the key in its unique
# ID, `<serial>_<key>`) that exists; `--energy slot=sensor.x` overrides.
ENERGY_SLOTS: dict[str, tuple[str, ...]] = {
    "grid_import": ("grid_import_total",),
    "grid_export": ("grid_export_total", "grid_energy_total"),
    "solar": ("pv_energy_total",),
    "battery_charge": ("battery_charge_total",),
    "battery_discharge": ("battery_discharge_total",),
}
# Power sources of the Energy dashboard (cores that have them), signed as it wants them.
POWER_SLOTS: dict[str, str] = {"grid": "grid_power", "battery": "battery_power",
                               "solar": "pv_power"}
HEADLINE: dict[str, tuple[str, ...]] = {
    "PV power": ("pv_power", "pv_total_power", "pv_power_total", "pv1_power"),
    "battery SOC": ("battery_soc",),
    "battery power": ("battery_power", "dc_power"),
    "grid power": ("grid_power", "grid_active_power"),
    "load power": ("load_power", "remote_load_power"),
}


class SetupError(Exception):
    """A part of the test rig could not be started; nothing was checked."""


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool | None  # None: a figure, not a pass/fail check
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))
        mark = {True: "ok", False: "FAIL", None: "--"}[ok]
        print(f"  [{mark}] {name}: " + detail.replace("\n", "\n        "), flush=True)

    @property
    def failed(self) -> bool:
        return any(c.ok is False for c in self.checks)

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        rows = [f"{'check'.ljust(width)}  result  detail", "-" * (width + 60)]
        for c in self.checks:
            mark = {True: "ok", False: "FAIL", None: "info"}[c.ok]
            lines = c.detail.splitlines() or [""]
            rows.append(f"{c.name.ljust(width)}  {mark.ljust(6)}  {lines[0]}")
            rows.extend(f"{''.ljust(width)}          {line}" for line in lines[1:])
        return "\n".join(rows)


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """A child process in its own process group, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def wait_listening(self, port: int, within: float) -> None:
        deadline = time.monotonic() + within
        while not listening(port):
            if not self.alive:
                raise SetupError(f"{self.name} exited at start; see {self.log}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise SetupError(f"{self.name} did not listen on {port} within {within:.0f} s")
            await asyncio.sleep(0.2)

    async def stop(self, within: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``within`` seconds; the exit code."""
        popen, self.popen = self.popen, None
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                return await asyncio.to_thread(popen.wait, within)
            except subprocess.TimeoutExpired:
                popen.kill()
        return popen.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto",
                      "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SetupError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")


def mosquitto(workdir: Path, port: int) -> Process:
    config = workdir / "mosquitto.conf"
    lines = ["persistence false", "allow_anonymous true", "log_dest stderr",
             "log_type error", "log_type warning", f"listener {port} {HOST}"]
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to "mosquitto", who cannot read workdir
    config.write_text("\n".join(lines) + "\n")
    return Process("mosquitto", [find_mosquitto(), "-c", str(config)],
                   workdir / "mosquitto.log")


class Bridge:
    """The bridge daemon, configured by environment variables (as in compose)."""

    def __init__(self, python: str, workdir: Path, inverter_port: int, mqtt_port: int,
                 live: float, time_platform: str) -> None:
        self.python, self.workdir = python, workdir
        self.inverter_port, self.mqtt_port, self.live = inverter_port, mqtt_port, live
        self.process: Process | None = None
        self.writes = True
        self.device_discovery = True
        self.time_platform = time_platform

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERMATEC_")}
        env.update({
            "SERMATEC_INVERTER__HOST": HOST,
            "SERMATEC_INVERTER__PORT": str(self.inverter_port),
            "SERMATEC_MQTT__HOST": HOST,
            "SERMATEC_MQTT__PORT": str(self.mqtt_port),
            "SERMATEC_POLL__LIVE": str(self.live),
            "SERMATEC_WRITES__ENABLED": str(self.writes).lower(),
            "SERMATEC_HOMEASSISTANT__DEVICE_DISCOVERY": str(self.device_discovery).lower(),
            "SERMATEC_HOMEASSISTANT__TIME_PLATFORM": self.time_platform,
            "SERMATEC_HEALTH__FILE": str(self.workdir / "health.json"),
            "SERMATEC_LOG__FORMAT": "console",
        })
        return env

    def start(self) -> None:
        # -i/-p repeat the environment's inverter so that the bridge can never fall back
        # on its default address (the inverter's access point, off this machine).
        self.process = Process(
            "bridge", [self.python, "-m", "sermatec_bridge", "run",
                       "-i", HOST, "-p", str(self.inverter_port)],
            self.workdir / "bridge.log", self.env())
        self.process.start()

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        code = await self.process.stop(within=15)
        self.process = None
        return code

    async def restart(self, *, writes: bool, device_discovery: bool,
                      time_platform: str | None = None) -> None:
        await self.stop()
        self.writes, self.device_discovery = writes, device_discovery
        self.time_platform = time_platform or self.time_platform
        self.start()


# --------------------------------------------------------------------------------------
# What the broker holds: a watcher on homeassistant/#
# --------------------------------------------------------------------------------------


@dataclass
class Message:
    at: float
    topic: str
    payload: bytes
    retain: bool


class BrokerWatch:
    """Records everything under the discovery prefix, with the publisher's retain flag."""

    def __init__(self, port: int, prefix: str = "homeassistant") -> None:
        self.prefix = prefix
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ha-check-watch",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        for name in (f"{self.prefix}/#", "sermatec/+/set/result"):
            client.subscribe(name, options=SubscribeOptions(qos=1, retainAsPublished=True))

    def _on_message(self, _client: paho.Client, _userdata: Any,
                    message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(time.time(), message.topic, bytes(message.payload),
                                         bool(message.retain)))

    def since(self, at: float) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.at >= at]

    def retained_configs(self) -> dict[str, bytes]:
        """Discovery config topics the broker now holds retained (non-empty)."""
        held: dict[str, bytes] = {}
        with self._lock:
            for m in self.messages:
                if not m.topic.endswith("/config") or not m.retain:
                    continue
                if m.payload:
                    held[m.topic] = m.payload
                else:
                    held.pop(m.topic, None)
        return held

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def is_device_topic(topic: str, prefix: str = "homeassistant") -> bool:
    return topic.startswith(f"{prefix}/device/")


# --------------------------------------------------------------------------------------
# Home Assistant
# --------------------------------------------------------------------------------------

CONFIGURATION = """\
# Written by benchmarks/ha_check.py: the least Home Assistant needs for the bridge.
homeassistant:
  name: ha-check
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
  language: en
  internal_url: "http://{host}:{port}"
http:
  server_host: {host}
  server_port: {port}
recorder:
  db_url: "sqlite:///{db}"
energy:
logger:
  default: warning
"""

LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) \(([^)]*)\) \[([^\]]*)\] (.*)$")


@dataclass
class LogLine:
    level: str
    logger: str
    message: str

    @property
    def shape(self) -> str:
        """The message with its identifiers masked, to group repeats of one problem."""
        return re.sub(r"[\w.\-/]*[\d_][\w.\-/]*", "…", self.message)[:140]


class HomeAssistant:
    """Home Assistant core: ``hass`` as ``command`` runs it (options follow)."""

    def __init__(self, command: list[str], workdir: Path, mqtt_port: int,
                 env: Mapping[str, str] | None = None) -> None:
        self.command, self.config_dir, self.mqtt_port = command, workdir / "ha", mqtt_port
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.client_id = f"{self.url}/"
        self.db = self.config_dir / "home-assistant_v2.db"
        # One log file per start: Home Assistant rolls its log file over when it starts.
        self.logfiles: list[Path] = []
        self.process: Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.refresh_token: str | None = None
        self.access_token = ""
        self.token_time = 0.0
        self.mqtt_entry_id: str | None = None
        self.version = ""

    # ---- process ----

    async def start(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            CONFIGURATION.format(host=HOST, port=self.port, db=self.db))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERMATEC_")}
        env.update(self.extra_env)
        self.logfiles.append(self.config_dir / f"home-assistant.{len(self.logfiles) + 1}.log")
        self.process = Process(
            "home assistant",
            [*self.command, "-c", str(self.config_dir), "--skip-pip", "--log-no-color",
             "--log-file", str(self.logfiles[-1])],
            self.config_dir / "stdout.log", env)
        self.process.start()
        await self.process.wait_listening(self.port, within=300)
        if self.session is None:
            self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 300
        while True:  # the HTTP server listens before every integration is set up
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"{self.url}/api/onboarding") as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise SetupError("Home Assistant's API did not come up")
            await asyncio.sleep(1)
        await self._authenticate()
        # Newer cores take the http: block of configuration.yaml as a pending config that
        # the user confirms: unconfirmed, it is reverted (to port 8123) after 5 minutes.
        with contextlib.suppress(RuntimeError):  # 2025.4 has no such thing
            await self.call("http/config/promote")
        config = await self.call("get_config")
        self.version = str(config["version"])
        # Wait until Home Assistant has finished starting (integrations set up).
        while config.get("state") != "RUNNING":
            if time.monotonic() > deadline:
                raise SetupError(f"Home Assistant stayed {config.get('state')}")
            await asyncio.sleep(1)
            config = await self.call("get_config")

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        code = await self.process.stop(within=60)
        self.process = None
        return code

    def at_least(self, version: str) -> bool:
        """Whether this core is ``version`` (year.month) or newer."""
        def parts(text: str) -> tuple[int, ...]:
            return tuple(int(p) for p in re.findall(r"\d+", text)[:2])
        return parts(self.version) >= parts(version)

    async def close(self) -> None:
        await self.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None

    # ---- API ----

    async def _authenticate(self) -> None:
        """Onboard the first user (once), then get tokens as the frontend would."""
        assert self.session is not None
        if self.refresh_token is None:
            user = {"client_id": self.client_id, "name": "ha-check", "username": "ha-check",
                    "password": "ha-check-local-only", "language": "en"}
            async with self.session.post(f"{self.url}/api/onboarding/users",
                                         json=user) as response:
                if response.status != 200:
                    raise SetupError(f"onboarding refused: {response.status} "
                                     f"{await response.text()}")
                code = (await response.json())["auth_code"]
            grant = {"grant_type": "authorization_code", "code": code,
                     "client_id": self.client_id}
        else:
            grant = {"grant_type": "refresh_token", "refresh_token": self.refresh_token,
                     "client_id": self.client_id}
        async with self.session.post(f"{self.url}/auth/token", data=grant) as response:
            if response.status != 200:
                raise SetupError(f"no token: {response.status} {await response.text()}")
            tokens = await response.json()
        self.access_token = tokens["access_token"]
        self.token_time = time.monotonic()
        self.refresh_token = tokens.get("refresh_token", self.refresh_token)

    async def call(self, kind: str, **data: Any) -> Any:
        """One websocket command on a connection of its own; its result.

        A connection per command, because Home Assistant drops a websocket whose client
        does not answer its heartbeat, which an idle client does not.
        """
        assert self.session is not None
        if time.monotonic() - self.token_time > 15 * 60:  # access tokens live 30 min
            await self._authenticate()
        async with self.session.ws_connect(f"{self.url}/api/websocket",
                                           max_msg_size=0) as ws:
            await ws.receive_json()  # auth_required
            await ws.send_json({"type": "auth", "access_token": self.access_token})
            answer = await ws.receive_json()
            if answer.get("type") != "auth_ok":
                raise SetupError(f"websocket authentication failed: {answer}")
            await ws.send_json({"id": 1, "type": kind, **data})
            while True:
                answer = await asyncio.wait_for(ws.receive_json(), 120)
                if answer.get("id") == 1 and answer.get("type") == "result":
                    break
        if not answer.get("success"):
            raise RuntimeError(f"{kind}: {answer.get('error')}")
        return answer.get("result")

    async def rest(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.access_token}"}
        async with self.session.request(method, f"{self.url}{path}", json=body,
                                        headers=headers) as response:
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} "
                                   f"{await response.text()}")
            return await response.json()

    async def add_mqtt(self) -> None:
        """Add the MQTT integration through its config flow, as in Settings > Integrations."""
        flow = await self.rest("POST", "/api/config/config_entries/flow",
                               {"handler": "mqtt", "show_advanced_options": False})
        if flow.get("step_id") != "broker":
            raise SetupError(f"unexpected MQTT config flow step: {flow}")
        step = f"/api/config/config_entries/flow/{flow['flow_id']}"
        broker: dict[str, Any] = {"broker": HOST, "port": self.mqtt_port}
        try:
            done = await self.rest("POST", step, broker)
        except RuntimeError as exc:  # newer cores require this section of the step
            if "other_settings" not in str(exc):
                raise
            broker["other_settings"] = {"set_client_cert": False, "set_ca_cert": "off",
                                        "transport": "tcp"}
            done = await self.rest("POST", step, broker)
        if done.get("type") != "create_entry":
            raise SetupError(f"the MQTT config flow did not create an entry: {done}")
        self.mqtt_entry_id = done["result"]["entry_id"]
        entries = await self.call("config_entries/get", domain="mqtt")
        states = {e["entry_id"]: e["state"] for e in entries}
        deadline = time.monotonic() + 60
        while states.get(self.mqtt_entry_id) != "loaded":
            if time.monotonic() > deadline:
                raise SetupError(f"the MQTT entry did not load: {states}")
            await asyncio.sleep(0.5)
            entries = await self.call("config_entries/get", domain="mqtt")
            states = {e["entry_id"]: e["state"] for e in entries}

    # ---- what it holds ----

    def log_mark(self) -> tuple[int, int]:
        """A position in the logs, for ``log_lines``: (which start, byte offset)."""
        try:
            return len(self.logfiles) - 1, self.logfiles[-1].stat().st_size
        except (IndexError, FileNotFoundError):
            return max(len(self.logfiles) - 1, 0), 0

    def log_lines(self, mark: tuple[int, int] = (0, 0),
                  mentioning: str = "mqtt|sermatec") -> list[LogLine]:
        """WARNING/ERROR lines after ``mark`` that match ``mentioning``."""
        found = []
        first, offset = mark
        for index, path in enumerate(self.logfiles[first:], start=first):
            try:
                with path.open("rb") as f:
                    f.seek(offset if index == first else 0)
                    text = f.read().decode("utf-8", errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                match = LOG_LINE.match(line)
                if match and re.search(mentioning, line, re.IGNORECASE):
                    found.append(LogLine(match[1], match[3], match[4]))
        return found


@dataclass
class Snapshot:
    """The bridge's device(s) and entities as Home Assistant holds them."""

    devices: list[dict[str, Any]]
    entities: list[dict[str, Any]]  # entity registry entries of the MQTT platform
    states: dict[str, str]  # entity_id -> state, for those entities

    @property
    def enabled(self) -> list[dict[str, Any]]:
        return [e for e in self.entities if e.get("disabled_by") is None]

    @property
    def unique_ids(self) -> set[str]:
        """``<domain>:<unique id>``: a unique ID is unique within its domain only."""
        return {f"{str(e['entity_id']).split('.')[0]}:{e['unique_id']}" for e in self.entities}

    def same_entities(self, other: Snapshot) -> bool:
        return self.unique_ids == other.unique_ids and self.entity_ids == other.entity_ids

    @property
    def entity_ids(self) -> set[str]:
        return {str(e["entity_id"]) for e in self.entities}

    def of_domains(self, domains: tuple[str, ...]) -> list[dict[str, Any]]:
        return [e for e in self.entities if str(e["entity_id"]).split(".")[0] in domains]

    def alive(self, entities: list[dict[str, Any]]) -> list[str]:
        """Those of ``entities`` that show a value (not unavailable, not unknown, present)."""
        return [e["entity_id"] for e in entities
                if self.states.get(e["entity_id"], "unavailable") not in DEAD_STATES]

    @property
    def serials(self) -> list[str]:
        """The devices' MQTT identifiers: the inverters' serial numbers."""
        return [ident for d in self.devices for domain, ident in d.get("identifiers", [])
                if domain == "mqtt"]

    def find(self, key: str, domain: str = "sensor") -> str | None:
        """The entity id of the bridge's ``key`` (unique ID ``<serial>_<key>``)."""
        wanted = {f"{serial}_{key}" for serial in self.serials}
        for e in self.entities:
            if e["unique_id"] in wanted and str(e["entity_id"]).startswith(f"{domain}."):
                return str(e["entity_id"])
        return None

    def signature(self) -> tuple[int, int, int]:
        live = sum(1 for s in self.states.values() if s not in DEAD_STATES)
        return len(self.entities), len(self.enabled), live


async def snapshot(ha: HomeAssistant) -> Snapshot:
    entities = [e for e in await ha.call("config/entity_registry/list")
                if e.get("platform") == "mqtt"]
    device_ids = {e.get("device_id") for e in entities}
    devices = [d for d in await ha.call("config/device_registry/list")
               if d["id"] in device_ids]
    wanted = {e["entity_id"] for e in entities}
    states = {s["entity_id"]: s["state"] for s in await ha.call("get_states")
              if s["entity_id"] in wanted}
    return Snapshot(devices, entities, states)


async def settle(ha: HomeAssistant, *, quiet: float, within: float,
                 expect: bool = True) -> Snapshot:
    """Wait until the entity set and the number of live states stop changing."""
    deadline = time.monotonic() + within
    last = await snapshot(ha)
    since = time.monotonic()
    while True:
        await asyncio.sleep(2)
        now = await snapshot(ha)
        if now.signature() != last.signature() or (expect and not now.entities):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
        if time.monotonic() > deadline:
            print(f"  (entities still changing after {within:.0f} s: {now.signature()})")
            return now


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def describe_log(lines: list[LogLine], limit: int = 12) -> str:
    groups = Counter((line.level, line.logger, line.shape) for line in lines)
    out = [f"{count}× {level} [{logger}] {shape}"
           for (level, logger, shape), count in groups.most_common(limit)]
    if len(groups) > limit:
        out.append(f"... and {len(groups) - limit} other kinds")
    return "\n".join(out)


# Lines Home Assistant logs whatever the bridge does, with the reason; shown, not failed.
KNOWN_LINES = {
    "No device components to cleanup": (
        "HA 2025.4 logs this when a device topic is cleared after its migrate_discovery "
        "already unloaded the entities (the documented last step of a rollback to "
        "per-entity discovery); clearing it later would log a warning per entity"),
}


def check_log(report: Report, name: str, lines: list[LogLine]) -> None:
    known = [line for line in lines if any(k in line.message for k in KNOWN_LINES)]
    if known:
        reasons = {why for k, why in KNOWN_LINES.items()
                   if any(k in line.message for line in known)}
        report.add(f"{name}, known to HA", None,
                   describe_log(known) + "\n" + "\n".join(sorted(reasons)))
        lines = [line for line in lines if line not in known]
    if not lines:
        report.add(name, True, "no WARNING/ERROR line mentions mqtt or sermatec")
        return
    unique = sum(1 for line in lines if "does not generate unique IDs" in line.message)
    report.add(name, False, f"{len(lines)} lines ({unique} 'does not generate unique IDs')\n"
               + describe_log(lines))


def energy_prefs(snap: Snapshot, overrides: Mapping[str, str]) -> dict[str, str | None]:
    chosen: dict[str, str | None] = {}
    for slot, keys in ENERGY_SLOTS.items():
        chosen[slot] = overrides.get(slot) or next(
            (found for key in keys if (found := snap.find(key)) is not None), None)
    return chosen


def energy_sources(chosen: Mapping[str, str | None], power: Mapping[str, str | None],
                   unified: bool) -> list[dict[str, Any]]:
    """The Energy dashboard's sources: in 2025.4's form (grid flows as lists), or in the
    newer one (one grid object; each source with its power sensor, ``stat_rate``)."""
    sources: list[dict[str, Any]] = []
    rates = ({slot: {"stat_rate": entity} for slot, entity in power.items() if entity}
             if unified else {})
    if unified and (chosen["grid_import"] or chosen["grid_export"]):
        sources.append({"type": "grid", "stat_energy_from": chosen["grid_import"],
                        "stat_energy_to": chosen["grid_export"], "cost_adjustment_day": 0,
                        **rates.get("grid", {})})
    elif chosen["grid_import"] or chosen["grid_export"]:
        sources.append({
            "type": "grid",
            "flow_from": [{"stat_energy_from": chosen["grid_import"], "stat_cost": None,
                           "entity_energy_price": None, "number_energy_price": None}]
            if chosen["grid_import"] else [],
            "flow_to": [{"stat_energy_to": chosen["grid_export"], "stat_compensation": None,
                         "entity_energy_price": None, "number_energy_price": None}]
            if chosen["grid_export"] else [],
            "cost_adjustment_day": 0,
        })
    if chosen["solar"]:
        sources.append({"type": "solar", "stat_energy_from": chosen["solar"],
                        "config_entry_solar_forecast": None, **rates.get("solar", {})})
    if chosen["battery_charge"] and chosen["battery_discharge"]:
        sources.append({"type": "battery", "stat_energy_from": chosen["battery_discharge"],
                        "stat_energy_to": chosen["battery_charge"],
                        **rates.get("battery", {})})
    return sources


async def check_energy(report: Report, ha: HomeAssistant, snap: Snapshot,
                       overrides: Mapping[str, str]) -> None:
    chosen = energy_prefs(snap, overrides)
    missing = [slot for slot, entity in chosen.items() if entity is None]
    report.add("energy counters", not missing, "\n".join(
        f"{slot}: {entity or 'NOT FOUND'}" for slot, entity in chosen.items()))
    power = {slot: snap.find(key) for slot, key in POWER_SLOTS.items()}
    if not energy_sources(chosen, power, unified=False):
        report.add("energy validation", False, "no counter to put in the Energy dashboard")
        return
    # 2025.4 takes the older form and 2026.11 the newer one (each logs an error for the
    # other); a core in between gets the other form when it refuses the first
    unified = ha.at_least("2026.1")
    for form in (unified, not unified):
        try:
            await ha.call("energy/save_prefs", device_consumption=[],
                          energy_sources=energy_sources(chosen, power, form))
            break
        except RuntimeError as exc:
            refused = exc
    else:
        report.add("energy validation", False, f"the preferences were refused: {refused}")
        return
    if form:
        report.add("energy power sources", all(power.values()), "\n".join(
            f"{slot}: {entity or 'NOT FOUND'}" for slot, entity in power.items()))
    else:
        power = {}
        report.add("energy power sources", None, f"core {ha.version} has none")
    # The dashboard validates against long-term statistics, compiled every 5 minutes: a
    # validation before the first compile only says "statistics not defined".
    counters = {e for e in [*chosen.values(), *power.values()] if e is not None}
    if not await statistics_compiled(ha.db, counters, within=400):
        report.add("energy statistics", False, "not compiled within 400 s")
    result = await ha.call("energy/validate")
    issues = [issue for source in result["energy_sources"] for issue in source]
    issues += [issue for device in result["device_consumption"] for issue in device]
    report.add("energy validation", not issues, "no issue" if not issues else "\n".join(
        f"{i['type']}: {', '.join(str(a[0]) for a in i.get('affected_entities', []))}"
        for i in issues))


async def statistics_compiled(db: Path, entity_ids: set[str], within: float) -> bool:
    """Wait until the recorder has statistics metadata for each of ``entity_ids``."""
    deadline = time.monotonic() + within
    marks = ",".join("?" * len(entity_ids))
    waited = False
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            found = con.execute(f"SELECT COUNT(DISTINCT statistic_id) FROM statistics_meta"
                                f" WHERE statistic_id IN ({marks})",
                                tuple(entity_ids)).fetchone()[0]
        if found == len(entity_ids):
            return True
        if time.monotonic() > deadline:
            return False
        if not waited:
            print(f"  waiting for the recorder's 5-minute statistics ({found} of "
                  f"{len(entity_ids)} counters) ...", flush=True)
            waited = True
        await asyncio.sleep(10)


def check_power_signs(report: Report, snap: Snapshot) -> None:
    """PV + grid + battery = load when grid is positive while importing and battery while
    discharging, as Home Assistant's Energy dashboard and the power-flow cards take them;
    wrong signs miss by twice the grid or battery power."""
    found = {key: snap.find(key) for key in ("pv_power", "grid_power", "battery_power",
                                             "remote_load_power")}
    try:
        pv, grid, battery, load = (float(snap.states[e or ""]) for e in found.values())
    except (KeyError, ValueError):
        report.add("power signs", False, "not every power shows a number: " + ", ".join(
            f"{k} = {snap.states.get(e or '', 'none')}" for k, e in found.items()))
        return
    missing = pv + grid + battery - load
    report.add("power signs (PV + grid + battery = load)",
               abs(missing) <= max(50.0, 0.05 * (pv + abs(grid) + abs(battery))),
               f"{pv:g} + {grid:g} + {battery:g} W = {pv + grid + battery:g} W, load "
               f"{load:g} W (grid positive while importing, battery while discharging)")


def recorder_rows(db: Path, entity_ids: set[str], start: float, end: float) -> tuple[int, int]:
    """State rows and short-term statistics rows written for ``entity_ids`` in a window."""
    marks = ",".join("?" * len(entity_ids))
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        states = con.execute(
            f"SELECT COUNT(*) FROM states s JOIN states_meta m ON s.metadata_id = m.metadata_id"
            f" WHERE m.entity_id IN ({marks}) AND s.last_updated_ts >= ?"
            f" AND s.last_updated_ts < ?", (*entity_ids, start, end)).fetchone()[0]
        stats = con.execute(
            f"SELECT COUNT(*) FROM statistics_short_term s JOIN statistics_meta m"
            f" ON s.metadata_id = m.id WHERE m.statistic_id IN ({marks})"
            f" AND s.created_ts >= ? AND s.created_ts < ?",
            (*entity_ids, start, end)).fetchone()[0]
    return int(states), int(stats)


def remote_peers(pids: Mapping[str, int]) -> list[str]:
    """Connections of the given processes (and their children) that leave loopback."""
    found = []
    for name, pid in pids.items():
        try:
            parent = psutil.Process(pid)
            procs = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                for conn in proc.net_connections(kind="inet"):
                    if conn.raddr and not ipaddress.ip_address(conn.raddr.ip).is_loopback:
                        found.append(f"{name}: {conn.raddr.ip}:{conn.raddr.port}")
    return found


def abbreviate(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more"
                                       if len(names) > limit else "")


def set_difference(before: set[str], after: set[str]) -> str:
    gone, new = sorted(before - after), sorted(after - before)
    parts = []
    if gone:
        parts.append(f"missing {len(gone)}: {abbreviate(gone)}")
    if new:
        parts.append(f"extra {len(new)}: {abbreviate(new)}")
    return "; ".join(parts) or "same entities"


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class Rig:
    args: argparse.Namespace
    report: Report
    ha: HomeAssistant
    bridge: Bridge
    watch: BrokerWatch
    processes: dict[str, Process]
    peers: set[str] = field(default_factory=set)  # connections seen that leave loopback

    async def settle(self) -> Snapshot:
        snap = await settle(self.ha, quiet=self.args.quiet, within=self.args.settle)
        self.peers.update(remote_peers(self.pids()))
        return snap

    async def bridge_settle(self, *, writes: bool, device_discovery: bool,
                            time_platform: str | None = None) -> Snapshot:
        await self.bridge.restart(writes=writes, device_discovery=device_discovery,
                                  time_platform=time_platform)
        return await self.settle()

    def pids(self) -> dict[str, int]:
        pids = {name: p.pid for name, p in self.processes.items() if p.alive}
        if self.bridge.process is not None and self.bridge.process.alive:
            pids["bridge"] = self.bridge.process.pid
        if self.ha.process is not None and self.ha.process.alive:
            pids["home assistant"] = self.ha.process.pid
        return pids

    def bridge_alive(self, when: str) -> None:
        if self.bridge.process is None or not self.bridge.process.alive:
            tail = self.bridge.process.tail() if self.bridge.process else ""
            raise SetupError(f"the bridge exited {when}:\n{tail}")


async def baseline(rig: Rig) -> Snapshot:
    report, ha = rig.report, rig.ha
    print(f"waiting for the entities to settle (quiet {rig.args.quiet:.0f} s) ...", flush=True)
    snap = await rig.settle()
    rig.bridge_alive("before the entities settled")
    report.add("home assistant", ha.version == rig.args.expected_version,
               f"core {ha.version} (expected {rig.args.expected_version}), MQTT entry added "
               "through the config flow and loaded")
    report.add("devices", bool(snap.devices), f"{len(snap.devices)}: " + ", ".join(
        f"{d.get('name_by_user') or d.get('name')} ({d.get('model')}, sw {d.get('sw_version')})"
        for d in snap.devices))
    by_domain = Counter(str(e["entity_id"]).split(".")[0] for e in snap.entities)
    report.add("entities", bool(snap.entities), f"{len(snap.entities)} ("
               + ", ".join(f"{d} {n}" for d, n in sorted(by_domain.items())) + ")")
    check_announced(report, rig.watch, snap, f"every component announced is an entity "
                    f"({rig.bridge.time_platform} form)")
    enabled = len(snap.enabled)
    report.add(f"enabled by default (at most {rig.args.max_enabled})",
               enabled <= rig.args.max_enabled,
               f"{enabled} enabled, {len(snap.entities) - enabled} disabled")
    # A button's or an event's state is the time it was last pressed or fired: unknown
    # until then.
    valued = [e for e in snap.enabled
              if str(e["entity_id"]).split(".")[0] not in ("button", "event")]
    dead = sorted(set(e["entity_id"] for e in valued) - set(snap.alive(valued)))
    report.add("enabled entities without a value", None, f"{len(dead)}"
               + (f": {abbreviate(dead)}" if dead else ""))
    headline = []
    for label, keys in HEADLINE.items():
        entity = next((found for key in keys if (found := snap.find(key)) is not None), None)
        headline.append(f"{label}: {entity} = {snap.states.get(entity, '-')}" if entity
                        else f"{label}: none")
    report.add("headline sensors", None, "\n".join(headline))
    check_power_signs(report, snap)
    return snap


def announced(watch: BrokerWatch) -> dict[str, str]:
    """The entities the retained discovery announces: ``<platform>:<unique id>`` -> id."""
    out: dict[str, str] = {}
    for topic, payload in watch.retained_configs().items():
        config = json.loads(payload)
        if is_device_topic(topic):
            for cid, component in (config.get("cmps") or {}).items():
                if len(component) > 1:  # {"p": ...} alone is a removal
                    out[f"{component['p']}:{component['uniq_id']}"] = cid
        elif "uniq_id" in config:
            out[f"{topic.split('/')[1]}:{config['uniq_id']}"] = topic.split("/")[3]
    return out


def check_announced(report: Report, watch: BrokerWatch, snap: Snapshot, name: str) -> None:
    """Home Assistant made an entity of every component the broker holds, and of no other
    (a leftover of an earlier announcement, or one twice)."""
    wanted, held = set(announced(watch)), snap.unique_ids
    report.add(name, wanted == held and len(snap.entities) == len(held),
               f"{len(wanted)} announced, {len(snap.entities)} entities; "
               + set_difference(wanted, held))


async def measure_rows(rig: Rig, snap: Snapshot) -> None:
    minutes = rig.args.minutes
    if minutes <= 0:
        return
    print(f"recording for {minutes:g} min ...", flush=True)
    start = time.time()
    await asyncio.sleep(minutes * 60)
    end = time.time()
    await asyncio.sleep(7)  # the recorder commits every 5 s
    rig.bridge_alive("while recording")
    states, stats = recorder_rows(rig.ha.db, snap.entity_ids, start, end)
    rig.report.add(f"recorder rows in {minutes:g} min", None,
                   f"{states} state rows, {stats} short-term statistics rows "
                   f"(live interval {rig.args.live:g} s, {len(snap.enabled)} enabled)")


async def scenario_writes(rig: Rig) -> None:
    print("scenario: the bridge restarted with writes off, then on again ...", flush=True)
    report, ha = rig.report, rig.ha
    before = await snapshot(ha)
    controls = before.of_domains(CONTROL_DOMAINS)
    mark = ha.log_mark()
    off = await rig.bridge_settle(writes=False, device_discovery=True)
    rig.bridge_alive("with writes off")
    left = off.of_domains(CONTROL_DOMAINS)
    alive = off.alive(left)
    disabled = [e for e in left if e.get("disabled_by") is not None]
    report.add("writes off: controls gone", len(left) == len(disabled) and not alive,
               f"{len(controls)} controls with writes on; {len(left) - len(disabled)} enabled "
               f"ones left with writes off, {len(alive)} of them look alive"
               + (f": {abbreviate(sorted(alive))}" if alive else ""))
    check_leftovers(report, "writes off", off, rig.watch)
    report.add("writes off: entities", None, f"{len(off.entities)} "
               f"({len(off.enabled)} enabled)")
    on = await rig.bridge_settle(writes=True, device_discovery=True)
    rig.bridge_alive("with writes on again")
    current = [e for e in on.entities if e["entity_id"] in before.entity_ids]
    report.add("writes on again: same entities as before",
               Snapshot(on.devices, current, on.states).same_entities(before),
               set_difference(before.entity_ids, {str(e["entity_id"]) for e in current}))
    check_leftovers(report, "writes on again", on, rig.watch)
    check_log(report, "writes scenario: HA log", ha.log_lines(mark))


LEFTOVER = ("Home Assistant 2025.4 never loads a disabled entity, so discovery cannot "
            "remove it; 2026.11 removes it")


def check_leftovers(report: Report, name: str, snap: Snapshot, watch: BrokerWatch) -> None:
    """Entities no longer announced: a disabled one is a known leftover (LEFTOVER), an
    enabled one a failure."""
    held = set(announced(watch))
    stale = [e for e in snap.entities
             if f"{str(e['entity_id']).split('.')[0]}:{e['unique_id']}" not in held]
    enabled = [str(e["entity_id"]) for e in stale if e.get("disabled_by") is None]
    if enabled or not stale:
        report.add(f"{name}: no entity left over", not enabled,
                   f"{len(enabled)} enabled left over" + (f": {abbreviate(sorted(enabled))}"
                                                          if enabled else ""))
    if len(stale) > len(enabled):
        report.add(f"{name}: disabled leftovers, known to HA", None,
                   f"{len(stale) - len(enabled)} disabled entities of the other mode stay in "
                   f"the registry ({LEFTOVER})")


async def scenario_modes(rig: Rig) -> None:
    print("scenario: device_discovery true -> false -> true ...", flush=True)
    report, ha, watch = rig.report, rig.ha, rig.watch
    before = await snapshot(ha)
    mark = ha.log_mark()
    for device_discovery in (False, True):
        mode = "device" if device_discovery else "per-entity"
        snap = await rig.bridge_settle(writes=True, device_discovery=device_discovery)
        rig.bridge_alive(f"in {mode} mode")
        report.add(f"{mode} discovery: same entities", snap.same_entities(before),
                   set_difference(before.entity_ids, snap.entity_ids))
        held = watch.retained_configs()
        other = [t for t in held if is_device_topic(t) != device_discovery]
        report.add(f"{mode} discovery: other mode's configs removed", not other,
                   f"{len(held)} retained configs, {len(other)} of the other mode"
                   + (f", e.g. {other[0]}" if other else ""))
    check_log(report, "mode scenario: HA log", ha.log_lines(mark))


# A component an earlier release offered on another platform (0xa2's day switches were
# numbers, hence sensors, before they became flags), enabled as a user may have done:
# Home Assistant cannot remove a disabled entity through discovery (it never loads it).
MOVED = ("forced_charge_monday", "sensor")
SENSOR_KEYS = ("name", "uniq_id", "stat_t", "val_tpl", "obj_id", "ent_cat")


async def scenario_upgrade(rig: Rig) -> None:
    print("scenario: upgrade from a release that offered a component on another platform ...",
          flush=True)
    report, ha, watch = rig.report, rig.ha, rig.watch
    key, old_platform = MOVED
    await rig.bridge.stop()
    held = watch.retained_configs()
    topic = next((t for t in held if is_device_topic(t)), None)
    if topic is None:
        report.add("upgrade: device config retained", False, "none (run with device discovery)")
        return
    older = json.loads(held[topic])
    # with writes on the day switch is a control now (set_<key>), with writes off a flag
    component = older["cmps"].get(key) or older["cmps"][f"set_{key}"]
    older["cmps"][key] = {"p": old_platform, "en": True,
                          **{k: component[k] for k in SENSOR_KEYS if k in component},
                          "ent_cat": "diagnostic",  # a sensor cannot be "config"
                          # the entity id on cores that go by default_entity_id (2025.10+)
                          "def_ent_id": f"{old_platform}.{component['obj_id']}"}
    watch.client.publish(topic, json.dumps(older), qos=1, retain=True)
    before = await rig.settle()
    stale = [e for e in before.entity_ids if e.startswith(f"{old_platform}.")
             and e.endswith(f"_{key}")]
    report.add("upgrade: the earlier release's entity", bool(stale),
               ", ".join(stale) or f"HA made no {old_platform} for {key}")
    mark = ha.log_mark()
    after = await rig.bridge_settle(writes=True, device_discovery=True)
    rig.bridge_alive("after the upgrade")
    left = [e for e in after.entity_ids if e in stale]
    now = [e for e in after.entity_ids if e.endswith(f"_{key}") and e not in stale]
    report.add("upgrade: old platform's entity removed", not left and bool(now),
               f"{', '.join(left)} left" if left else f"now {', '.join(now) or 'nothing'}")
    check_log(report, "upgrade scenario: HA log", ha.log_lines(mark))


SCHEDULE_KEY = re.compile(r"(forced_(dis)?charge_(mode|[a-z]+day|soc_limit|period_\d_\w+)"
                          r"|tou_(count|period_\d+_\w+)|tariff_[a-z]+)$")


def schedule_entities(snap: Snapshot, watch: BrokerWatch) -> list[dict[str, Any]]:
    """The schedule entities the bridge announces now (not an earlier mode's leftovers)."""
    held = set(announced(watch))
    return [e for e in snap.entities if SCHEDULE_KEY.search(str(e["unique_id"]))
            and f"{str(e['entity_id']).split('.')[0]}:{e['unique_id']}" in held]


async def state_of(ha: HomeAssistant, entity_id: str) -> str:
    return next((str(s["state"]) for s in await ha.call("get_states")
                 if s["entity_id"] == entity_id), "missing")


async def wait_state(ha: HomeAssistant, entity_id: str, wanted: str,
                     within: float = 45.0) -> str:
    """The entity's state once it is ``wanted``, or the last one seen after ``within``."""
    deadline = time.monotonic() + within
    while (state := await state_of(ha, entity_id)) != wanted:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    return state


async def scenario_schedules(rig: Rig) -> None:
    """Every schedule entity created and alive once enabled; then what a user does in
    Home Assistant: a forced-charge period's start, a weekday, the enabled switch and a
    time-of-use tariff, each read back from the simulated inverter."""
    print("scenario: schedule entities set from Home Assistant ...", flush=True)
    report, ha = rig.report, rig.ha
    mark = ha.log_mark()
    snap = await snapshot(ha)
    entities = schedule_entities(snap, rig.watch)
    by_domain = Counter(str(e["entity_id"]).split(".")[0] for e in entities)
    report.add("schedules: entities", bool(entities), f"{len(entities)} ("
               + ", ".join(f"{d} {n}" for d, n in sorted(by_domain.items())) + f"), "
               f"{sum(1 for e in entities if e.get('disabled_by') is None)} enabled")
    disabled = [e["entity_id"] for e in entities if e.get("disabled_by") is not None]
    for entity_id in disabled:  # as a user does in the entity settings
        await ha.call("config/entity_registry/update", entity_id=entity_id, disabled_by=None)
    if disabled:
        print(f"  enabled {len(disabled)}; Home Assistant reloads MQTT in 30 s ...", flush=True)
        await asyncio.sleep(35)
    snap = await rig.settle()
    entities = schedule_entities(snap, rig.watch)
    states = {e["entity_id"]: snap.states.get(e["entity_id"], "missing") for e in entities}
    # Unknown, as the inverter has them: a time-of-use period not in use (it keeps only
    # those), a weekday it reports as not set (0).
    unset = [e for e, state in states.items() if state == "unknown"
             and re.search(r"_tou_period_\d+_|_(sun|mon|tues|wednes|thurs|fri|satur)day$", e)]
    dead = sorted(e for e, state in states.items() if state in DEAD_STATES and e not in unset)
    report.add("schedules: every entity enabled and alive", not dead and len(entities) > 0,
               f"{len(entities) - len(unset) - len(dead)} of {len(entities)} show a value, "
               f"{len(unset)} unknown as the inverter reports them (time-of-use periods not "
               "in use, weekdays not set)" + (f"; dead: {abbreviate(dead)}" if dead else ""))
    form = rig.bridge.time_platform
    start = snap.find("forced_charge_period_1_start", form)
    actions: list[tuple[str, str | None, str, dict[str, Any], str]] = [
        # what, entity, service, data, the state it then shows
        ("forced charge period 1 start", start, f"{form}.set_value",
         {"time": "02:15:00"} if form == "time" else {"value": "02:15"},
         "02:15:00" if form == "time" else "02:15"),
        ("forced charge on Thursday on", snap.find("forced_charge_thursday", "switch"),
         "switch.turn_on", {}, "on"),
        ("forced charge on Thursday off", snap.find("forced_charge_thursday", "switch"),
         "switch.turn_off", {}, "off"),
        ("forced charge enabled", snap.find("forced_charge_mode", "switch"),
         "switch.turn_on", {}, "on"),
        ("forced charge disabled", snap.find("forced_charge_mode", "switch"),
         "switch.turn_off", {}, "off"),
        ("time-of-use period 1 tariff", snap.find("tou_period_1_tariff", "select"),
         "select.select_option", {"option": "Peak"}, "Peak"),
    ]
    last_write = snap.find("last_write")
    written: dict[str, float] = {}
    for what, entity_id, service, data, wanted in actions:
        if entity_id is None:
            report.add(f"schedules: {what}", False, "no such entity")
            continue
        # one write per setting every writes.min_interval (10 s), as for a user
        await asyncio.sleep(max(0.0, written.get(entity_id, 0.0) + 11 - time.monotonic()))
        written[entity_id] = time.monotonic()
        before = simulator_writes(rig)
        sent = time.time()
        domain, _, name = service.partition(".")
        await ha.call("call_service", domain=domain, service=name, service_data=data,
                      target={"entity_id": entity_id})
        shown = await wait_state(ha, entity_id, wanted)
        results = [json.loads(m.payload) for m in rig.watch.since(sent)
                   if m.topic.endswith("/set/result")]
        outcome = await state_of(ha, last_write) if last_write else "missing"
        report.add(f"schedules: {what}", shown == wanted and simulator_writes(rig) > before
                   and any(r.get("ok") for r in results) and outcome.startswith("OK: "),
                   f"{service} {entity_id}: state {shown} (wanted {wanted}); set/result "
                   + ", ".join(json.dumps(r) for r in results) + f"; Last write: {outcome}; "
                   f"{simulator_writes(rig) - before} write(s) applied by the simulator")
    check_log(report, "schedules scenario: HA log", ha.log_lines(mark))


def simulator_writes(rig: Rig) -> int:
    """Settings writes the simulator applied so far (its log says each)."""
    log = rig.processes["simulator"].log.read_text(errors="replace")
    return sum(1 for line in log.splitlines()
               if "write applied" in line and re.search(r"0x(66|71)\b", line))


async def scenario_forms(rig: Rig) -> None:
    """Schedule times moved to the other form and back, in both discovery modes: every
    time entity handed over (no leftover, none twice), Home Assistant's log quiet."""
    print("scenario: schedule times as text and time entities, both discovery modes ...",
          flush=True)
    report, ha = rig.report, rig.ha
    if not ha.at_least("2026.5"):
        report.add("forms", None, f"core {ha.version} has no MQTT time entities (2026.5)")
        return
    mark = ha.log_mark()
    before = await snapshot(ha)
    first = rig.bridge.time_platform
    other = "text" if first == "time" else "time"
    for form, device_discovery in ((other, True), (other, False), (first, False),
                                   (first, True)):
        mode = "device" if device_discovery else "per-entity"
        snap = await rig.bridge_settle(writes=True, device_discovery=device_discovery,
                                       time_platform=form)
        rig.bridge_alive(f"with {form} entities in {mode} mode")
        times = Counter(str(e["entity_id"]).split(".")[0] for e in snap.entities
                        if str(e["entity_id"]).split(".")[0] in TIME_DOMAINS)
        check_announced(report, rig.watch, snap, f"forms: {form}, {mode} discovery")
        report.add(f"forms: {form}, {mode}: times on one platform",
                   set(times) == {form} and len(snap.entities) == len(before.entities),
                   f"{dict(times)}; {len(snap.entities)} entities ({len(before.entities)} "
                   "before)")
    report.add("forms: back to the first", (await snapshot(ha)).same_entities(before),
               set_difference(before.entity_ids, (await snapshot(ha)).entity_ids))
    check_log(report, "forms scenario: HA log", ha.log_lines(mark))


async def scenario_ha_restart(rig: Rig) -> None:
    print("scenario: Home Assistant restarted ...", flush=True)
    report, ha, watch = rig.report, rig.ha, rig.watch
    before = await snapshot(ha)
    mark = ha.log_mark()
    await ha.stop()
    stopped = time.time()
    await ha.start()
    snap = await rig.settle()
    births = [m.at for m in watch.since(stopped)
              if m.topic == "homeassistant/status" and m.payload == b"online"]
    replays = [m for m in watch.since(births[0])
               if m.topic.endswith("/config") and m.payload] if births else []
    report.add("HA restart: discovery re-sent on the birth", bool(replays),
               f"{len(births)} birth message(s); {len(replays)} discovery config message(s) "
               f"after it, {sum(len(m.payload) for m in replays) / 1024:.1f} KiB")
    report.add("HA restart: same entities", snap.same_entities(before),
               set_difference(before.entity_ids, snap.entity_ids))
    lost = sorted(set(before.alive(before.enabled)) - set(snap.alive(snap.enabled)))
    # Last write shows a result, which is not retained: 2025.4 does not restore it
    results = [e for e in lost if e == snap.find("last_write")]
    if results:
        report.add("HA restart: Last write, known", None, f"{results[0]} unknown until the "
                   "next write (set/result is not retained; 2026.11 restores the state)")
        lost = [e for e in lost if e not in results]
    report.add("HA restart: values back", not lost,
               f"{len(snap.alive(snap.enabled))} of {len(snap.enabled)} enabled show a value "
               f"({len(before.alive(before.enabled))} before)"
               + (f"; without one now: {abbreviate(lost)}" if lost else ""))
    check_log(report, "HA restart: HA log", ha.log_lines(mark))


async def run(args: argparse.Namespace, workdir: Path) -> Report:
    report = Report()
    mqtt_port, inverter_port = free_port(), free_port()
    broker = mosquitto(workdir, mqtt_port)
    simulator = Process("simulator", [str(Path(args.bridge_python).parent / "sermatec-bridge"),
                                      "simulate", "--host", HOST, "--port", str(inverter_port)],
                        workdir / "simulator.log")
    processes = {"mosquitto": broker, "simulator": simulator}
    bridge = Bridge(args.bridge_python, workdir, inverter_port, mqtt_port, args.live,
                    args.time_platform)
    ha = (HomeAssistant([args.hass_chroot], workdir, mqtt_port, {"HA2026_ROOT": args.ha_root})
          if args.ha_root else HomeAssistant([sys.executable, "-m", "homeassistant"], workdir,
                                             mqtt_port))
    watch: BrokerWatch | None = None
    try:
        broker.start()
        await broker.wait_listening(mqtt_port, 10)
        simulator.start()
        await simulator.wait_listening(inverter_port, 30)
        watch = BrokerWatch(mqtt_port)
        print(f"starting Home Assistant in {ha.config_dir} ...", flush=True)
        started = time.monotonic()
        await ha.start()
        await ha.add_mqtt()
        print(f"  up in {time.monotonic() - started:.0f} s, MQTT added; starting the bridge",
              flush=True)
        bridge.start()
        rig = Rig(args, report, ha, bridge, watch, processes)
        first = await baseline(rig)
        await measure_rows(rig, first)
        await check_energy(report, ha, first, args.energy)
        if args.writes:
            await scenario_writes(rig)
        if args.modes:
            await scenario_modes(rig)
        if args.upgrade:
            await scenario_upgrade(rig)
        if args.schedules:
            await scenario_schedules(rig)
        if args.forms:
            await scenario_forms(rig)
        if args.ha_restart:
            await scenario_ha_restart(rig)
        rig.peers.update(remote_peers(rig.pids()))
        report.add("loopback only", not rig.peers, "no connection left 127.0.0.0/8 (sampled "
                   "after each settle)" if not rig.peers else ", ".join(sorted(rig.peers)))
        check_log(report, "HA log, whole run", ha.log_lines())
        others = [line for line in ha.log_lines(mentioning="")
                  if not re.search("mqtt|sermatec", f"{line.logger} {line.message}", re.I)]
        report.add("HA log, other lines", None, f"{len(others)} WARNING/ERROR lines "
                   "about neither\n" + describe_log(others, limit=4))
        bridge_code = await bridge.stop()
        report.add("bridge stops cleanly", bridge_code == 0, f"exit code {bridge_code}")
    finally:
        await bridge.stop()
        await ha.close()
        if watch is not None:
            watch.close()
        for process in (simulator, broker):
            await process.stop(within=5)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bridge-python", default=str(REPO / ".venv/bin/python"),
                        help="the Python of the venv the bridge is installed in")
    parser.add_argument("--minutes", type=float, default=5,
                        help="how long to count recorder rows (0: skip; default 5); the "
                        "Energy validation waits for HA's first 5-minute statistics anyway")
    parser.add_argument("--live", type=float, default=5,
                        help="the bridge's live poll interval in seconds (default 5)")
    parser.add_argument("--max-enabled", type=int, default=80,
                        help="most entities that may be enabled by default (default 80)")
    parser.add_argument("--quiet", type=float, default=15,
                        help="seconds without change that count as settled (default 15)")
    parser.add_argument("--settle", type=float, default=240,
                        help="longest wait for the entities to settle (default 240 s)")
    parser.add_argument("--energy", action="append", default=[], metavar="SLOT=ENTITY",
                        help="put ENTITY in an Energy slot (" + ", ".join(ENERGY_SLOTS) + ")")
    parser.add_argument("--writes", action="store_true",
                        help="scenario: restart the bridge with writes off, then on")
    parser.add_argument("--modes", action="store_true",
                        help="scenario: device_discovery true -> false -> true")
    parser.add_argument("--upgrade", action="store_true",
                        help="scenario: an earlier release's discovery with a component on "
                        "another platform, then the bridge")
    parser.add_argument("--ha-restart", action="store_true",
                        help="scenario: restart Home Assistant")
    parser.add_argument("--schedules", action="store_true",
                        help="scenario: every schedule entity enabled; a period's start, a "
                        "weekday, the enabled switch and a tariff set from Home Assistant")
    parser.add_argument("--forms", action="store_true",
                        help="scenario: schedule times as text, then time entities, in both "
                        "discovery modes (Home Assistant 2026.5 and later)")
    parser.add_argument("--all", action="store_true", help="every scenario")
    parser.add_argument("--ha-root", metavar="ROOT",
                        help="Home Assistant from the chroot ha-newest/build.sh printed "
                        f"(run by --hass-chroot) instead of .venv-ha's {HA_VERSION}")
    parser.add_argument("--hass-chroot", default=str(HASS_CHROOT),
                        help=f"the script that runs it (default {HASS_CHROOT})")
    parser.add_argument("--time-platform", choices=("time", "text"),
                        help="the bridge's homeassistant.time_platform (default: time with "
                        "--ha-root, text for 2025.4, which has no MQTT time entities)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, HA config, database)")
    args = parser.parse_args(argv)
    if args.all:
        args.writes = args.modes = args.upgrade = args.ha_restart = True
        args.schedules = args.forms = True
    args.expected_version = HA_VERSION
    if args.ha_root:
        ready = Path(args.ha_root) / ".ready"
        if not ready.exists() or not Path(args.hass_chroot).exists():
            parser.error(f"--ha-root {args.ha_root}: no ready Home Assistant there (build it "
                         f"with ha-newest/build.sh), or no {args.hass_chroot}")
        args.expected_version = ready.read_text().split()[0]
    args.time_platform = args.time_platform or ("time" if args.ha_root else "text")
    energy = {}
    for item in args.energy:
        slot, _, entity = item.partition("=")
        if slot not in ENERGY_SLOTS or not entity:
            parser.error(f"--energy {item!r}: expected SLOT=ENTITY, SLOT one of "
                         + ", ".join(ENERGY_SLOTS))
        energy[slot] = entity
    args.energy = energy
    if not Path(args.bridge_python).exists():
        parser.error(f"--bridge-python {args.bridge_python}: no such file (make ha-check "
                     "creates .venv first)")
    return args


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ha-check-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path} (ha/home-assistant.N.log, bridge.log, simulator.log, ...)")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with workspace(args.keep) as workdir:
        try:
            report = asyncio.run(run(args, workdir))
        except SetupError as exc:
            print(f"ha-check could not run: {exc}", file=sys.stderr)
            return 2
    print(f"\nHome Assistant {args.expected_version} against the bridge, schedule times as "
          f"{args.time_platform} entities ({time.monotonic() - started:.0f} s):\n")
    print(report.table())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
