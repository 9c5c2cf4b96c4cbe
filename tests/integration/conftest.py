"""Integration fixtures: a real Mosquitto, the simulator over TCP, the bridge, and "HA".

Everything listens on the loopback interface on free ports. The Home Assistant side is
an MQTT client that records every message it sees (with MQTT 5 "retain as published",
so the retain flag of a live message tells whether the bridge retained it); tests wait
for conditions on that record with a deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from ports import free_port

from sermatec_bridge.bridge.service import Bridge
from sermatec_bridge.config import Settings, load_settings
from sermatec_bridge.simulator import Simulator

HOST = "127.0.0.1"
SERIAL = "ST5K0SIMULATOR0001"  # the simulator's default serial number
BASE = "sermatec"
PREFIX = "homeassistant"
HA_TOPICS = (f"{PREFIX}/#", f"{BASE}/#", "test/#")

# Fast polling for tests (seconds); the inverter timeout bounds how long a dead inverter
# takes to be noticed.
LIVE, ENERGY, SLOW, TIMEOUT = 1.0, 2.0, 3.0, 1.0

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def topic(leaf: str, serial: str = SERIAL) -> str:
    return f"{BASE}/{serial}/{leaf}"


async def eventually(condition: Callable[[], bool], *, within: float = 5.0,
                     what: str = "the condition") -> None:
    """Wait until ``condition()`` holds (checked every 50 ms), or fail after ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {within} s")
        await asyncio.sleep(0.05)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any SERMATEC_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERMATEC_")}
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------
# Mosquitto
# --------------------------------------------------------------------------------------


def _find_mosquitto() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto",
                      "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    """The mosquitto binary; installed with apt-get when missing and running as root."""
    found = _find_mosquitto()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = clean_env(DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "mosquitto"]):
            subprocess.run(command, env=env, check=False, capture_output=True, timeout=600)
        found = _find_mosquitto()
    if found is None:
        pytest.skip("the integration tests need the mosquitto broker: "
                    "sudo apt-get install mosquitto")
    return found


class Mosquitto:
    """A private Mosquitto on a fixed free loopback port; restartable on the same port.

    No persistence unless asked: a restart loses every retained message and session,
    like a broker whose data volume was lost. ``extra`` goes into the listener's section
    of the configuration (TLS files, ``allow_anonymous``, ``password_file``...).
    """

    def __init__(self, binary: str, workdir: Path, *, extra: str = "",
                 anonymous: bool = True, persistence: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.extra = extra
        self.anonymous = anonymous
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        self.logfile = workdir / "mosquitto.log"

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto drops to the user "mosquitto", who cannot read the
            # test's private temporary directory (certificates, password file).
            lines.append("user root")
        lines.append(f"listener {self.port} {HOST}")
        if self.extra:
            lines.append(self.extra)
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, within: float = 10.0) -> None:
        if self.process is not None:
            raise RuntimeError("mosquitto is already running")
        self._write_config()
        log = self.logfile.open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"mosquitto exited with {code} at start:\n{self.log()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {self.port}:\n"
                                       f"{self.log()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def password_file(directory: Path, user: str, password: str) -> Path:
    """A Mosquitto password file with one user (``password_file`` in ``extra``)."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(passwd).exists():
        pytest.skip("mosquitto_passwd is missing: sudo apt-get install mosquitto")
    path = directory / "passwords"
    subprocess.run([passwd, "-b", "-c", str(path), user, password], check=True,
                   capture_output=True, timeout=30)
    return path


@pytest.fixture
def broker(mosquitto_bin: str, tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain (anonymous, no TLS) Mosquitto for one test."""
    with Mosquitto(mosquitto_bin, tmp_path / "mosquitto") as mosquitto:
        yield mosquitto


# --------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(pcu=609, seed=11) as simulator:
        yield simulator


def sim_port(simulator: Simulator) -> int:
    assert simulator.port is not None, "the simulator is not running"
    return simulator.port


# --------------------------------------------------------------------------------------
# The Home Assistant side
# --------------------------------------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Properties | None
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.payload)


Predicate = Callable[[Received], bool]


class HomeAssistant:
    """An MQTT client standing in for Home Assistant: records all it receives.

    It reconnects by itself (for broker restarts) and subscribes with "retain as
    published", so ``retain`` is the flag the bridge published with.
    """

    def __init__(self, port: int, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.port = port
        self.username, self.password = username, password
        self.messages: list[Received] = []
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connections = 0

    async def __aenter__(self) -> HomeAssistant:
        self._task = asyncio.create_task(self._run(), name="home assistant")
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        while True:
            try:
                async with aiomqtt.Client(
                    HOST, self.port, identifier=f"ha-{uuid.uuid4().hex[:8]}",
                    username=self.username, password=self.password,
                    protocol=aiomqtt.ProtocolVersion.V5, keepalive=5, timeout=5,
                ) as client:
                    for t in HA_TOPICS:
                        await client.subscribe(t, options=options)
                    self.client = client
                    self.connections += 1
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(
                            payload if payload is not None else "").encode()
                        self.messages.append(Received(message.topic.value, data,
                                                      bool(message.retain),
                                                      message.properties))
                        self._arrived.set()
            except aiomqtt.MqttError:
                pass
            self.client = None
            self.connected.clear()
            await asyncio.sleep(0.1)

    def mark(self) -> int:
        """A position in the record: pass it as ``after`` to see only later messages."""
        return len(self.messages)

    async def wait_for(self, predicate: Predicate, *, within: float = 10.0, after: int = 0,
                       what: str = "a message") -> Received:
        """The first message from ``after`` on that satisfies ``predicate``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        index = after
        while True:
            while index < len(self.messages):
                message = self.messages[index]
                index += 1
                if predicate(message):
                    return message
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = [f"{m.topic}: {m.text[:120]}" for m in self.messages[-8:]]
                raise AssertionError(f"no {what} within {within} s; last messages:\n  "
                                     + "\n  ".join(recent))
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def wait_topic(self, name: str, check: Callable[[Received], bool] | None = None, *,
                         within: float = 10.0, after: int = 0) -> Received:
        return await self.wait_for(
            lambda m: m.topic == name and (check is None or check(m)),
            within=within, after=after, what=f"message on {name}",
        )

    async def wait_text(self, name: str, text: str, *, within: float = 10.0,
                        after: int = 0) -> Received:
        return await self.wait_topic(name, lambda m: m.text == text, within=within,
                                     after=after)

    async def wait_json(self, name: str, check: Callable[[Any], bool] | None = None, *,
                        within: float = 10.0, after: int = 0) -> Any:
        def ok(m: Received) -> bool:
            try:
                value = m.json()
            except ValueError:
                return False
            return check is None or bool(check(value))

        return (await self.wait_topic(name, ok, within=within, after=after)).json()

    def on(self, name: str, after: int = 0) -> list[Received]:
        return [m for m in self.messages[after:] if m.topic == name]

    async def publish(self, name: str, payload: str | bytes, *,
                      properties: Properties | None = None, retain: bool = False) -> None:
        await asyncio.wait_for(self.connected.wait(), 10)
        assert self.client is not None
        await self.client.publish(name, payload, qos=1, retain=retain, properties=properties)

    async def write(self, leaf: str, payload: str | bytes, *, within: float = 15.0,
                    serial: str = SERIAL) -> dict[str, Any]:
        """Publish on ``set...`` and return the next result the bridge answers with."""
        mark = self.mark()
        await self.publish(topic(leaf, serial), payload)
        result: dict[str, Any] = await self.wait_json(topic("set/result", serial),
                                                      within=within, after=mark)
        return result


@pytest.fixture
async def ha(broker: Mosquitto) -> AsyncIterator[HomeAssistant]:
    async with HomeAssistant(broker.port) as client:
        yield client


async def retained(port: int, topics: tuple[str, ...] = (f"{PREFIX}/#", f"{BASE}/#"), *,
                   quiet: float = 0.5, **auth: Any) -> dict[str, str]:
    """What a client that connects now gets as retained messages: topic -> payload."""
    out: dict[str, str] = {}
    async with aiomqtt.Client(HOST, port, identifier=f"probe-{uuid.uuid4().hex[:8]}",
                              protocol=aiomqtt.ProtocolVersion.V5, timeout=5,
                              **auth) as client:
        for t in topics:
            await client.subscribe(t, qos=1)
        messages = aiter(client.messages)
        with contextlib.suppress(TimeoutError):
            while True:  # until the broker has been quiet for a while
                message = await asyncio.wait_for(anext(messages), quiet)
                if message.retain:
                    payload = message.payload
                    out[message.topic.value] = (
                        payload.decode() if isinstance(payload, bytes) else str(payload))
    return out


# --------------------------------------------------------------------------------------
# The bridge, in process
# --------------------------------------------------------------------------------------

def bridge_overrides(broker_port: int, inverter_port: int, tmp_path: Path) -> dict[str, Any]:
    """Fast settings for a test bridge; tests merge their own changes on top."""
    return {
        "inverter": {"host": HOST, "port": inverter_port, "timeout": TIMEOUT, "retries": 1},
        "poll": {"live": LIVE, "energy": ENERGY, "slow": SLOW},
        # The default client id: each test has its own broker, and a bridge restarted in
        # a test is the same bridge (its state topic, its session).
        "mqtt": {"host": HOST, "port": broker_port, "keepalive": 5},
        "homeassistant": {"birth_delay": 0.3},
        "writes": {"enabled": False, "min_interval": 0, "confirm_timeout": 3.0},
        "health": {"file": str(tmp_path / "health.json"), "max_age": 30},
    }


def make_settings(broker_port: int, inverter_port: int, tmp_path: Path,
                  changes: Mapping[str, Any] | None = None) -> Settings:
    return load_settings(
        overrides=deep_merge(bridge_overrides(broker_port, inverter_port, tmp_path),
                             changes or {}),
        env={},
    )


class RunningBridge:
    """A :class:`Bridge` running as a task of the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bridge = Bridge(settings)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> RunningBridge:
        self.task = asyncio.create_task(self.bridge.run(), name="bridge")
        return self

    async def stop(self, within: float = 10.0) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        self.bridge.stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), within)
        except TimeoutError:
            stacks = io.StringIO()
            for other in asyncio.all_tasks():
                other.print_stack(limit=3, file=stacks)
            print("tasks when the bridge did not stop:\n" + stacks.getvalue())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise AssertionError(f"the bridge did not stop within {within} s") from None
        finally:
            # Bridge.run installs SIGTERM / SIGINT handlers on the loop: give them back.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise AssertionError("the bridge failed") from task.exception()


BridgeFactory = Callable[..., RunningBridge]


@pytest.fixture
async def start_bridge(broker: Mosquitto, sim: Simulator,
                       tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """``start_bridge(changes)`` runs a bridge against ``broker`` and ``sim``."""
    running: list[RunningBridge] = []

    def start(changes: Mapping[str, Any] | None = None) -> RunningBridge:
        settings = make_settings(broker.port, sim_port(sim), tmp_path, changes)
        bridge = RunningBridge(settings).start()
        running.append(bridge)
        return bridge

    yield start
    for bridge in running:
        await bridge.stop()


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[None]:
    """The bridge logs through structlog; keep each test's logging configuration its own."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# --------------------------------------------------------------------------------------
# Waiting for the bridge's first publications
# --------------------------------------------------------------------------------------


async def wait_ready(ha: HomeAssistant, *, within: float = 15.0,
                     serial: str = SERIAL) -> None:
    """Bridge online, inverter online, and every poll group published once."""
    await ha.wait_text(f"{BASE}/bridge/state", "online", within=within)
    await ha.wait_text(topic("availability", serial), "online", within=within)
    for group in ("live", "energy", "settings", "system", "alarms"):
        await ha.wait_json(topic(group, serial), within=within)


async def subprocess_output(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    data = await process.stderr.read()
    return data.decode(errors="replace")


@asynccontextmanager
async def running_process(argv: Sequence[str], env: Mapping[str, str],
                          log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``argv`` with its output in ``log``; SIGTERM at the end, SIGKILL after 15 s."""
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdout=sink, stderr=sink, stdin=asyncio.subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
def bridge_log(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    """The bridge's log as JSON lines, from a stream of the test's own (never closed
    under a task that still logs at teardown, unlike pytest's captured stderr)."""
    from sermatec_bridge import log

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    log.configure("info", "json")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()
                if line.startswith("{")]

    return lines
