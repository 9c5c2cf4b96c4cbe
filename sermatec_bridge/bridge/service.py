"""The bridge daemon: inverters in, Home Assistant discovery and state out, writes back in.

One asyncio program. Per inverter a worker task owns the inverter client, polls the
groups at their intervals, publishes state and availability, and applies writes. One
MQTT connection carries everything; the bridge keeps every retained message it owns and
publishes them again whenever the connection comes back, so a broker that restarted
(and lost its retained messages) gets discovery, states and ``online`` back on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .. import __version__
from ..config import InverterSettings, Settings
from ..inverter.client import (
    Identity,
    InverterClient,
    InverterError,
    InverterTimeout,
    Session,
    backoff,
)
from ..protocol.codec import CodecError, Reading
from . import discovery, health, metrics, proxy
from .groups import GROUPS, Group
from .state import EnergyGuard, state_payload
from .writes import Writer, WriteRefused, WriteResult, parse_request

log = structlog.get_logger(__name__)

ONLINE, OFFLINE = "online", "offline"

T = TypeVar("T")


class Broker:
    """The MQTT side: one connection, re-established with backoff, retained state replayed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.mqtt.base_topic
        self.bridge_topic = f"{self.base}/bridge/state"
        self.client: aiomqtt.Client | None = None
        self.retained: dict[str, str] = {}  # everything we own on the broker, to replay
        self.found: dict[str, Any] = {}  # device configs found retained on the broker
        self.connections = 0

    def _client(self) -> aiomqtt.Client:
        mqtt = self.settings.mqtt
        tls_context = None
        if mqtt.tls.enabled:
            tls_context = ssl.create_default_context(
                cafile=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None
            )
            if mqtt.tls.cert_file:
                tls_context.load_cert_chain(str(mqtt.tls.cert_file),
                                            str(mqtt.tls.key_file) if mqtt.tls.key_file
                                            else None)
            if mqtt.tls.insecure:
                tls_context.check_hostname = False
                tls_context.verify_mode = ssl.CERT_NONE
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
            identifier=mqtt.client_id,
            protocol=(aiomqtt.ProtocolVersion.V5 if mqtt.protocol == "5"
                      else aiomqtt.ProtocolVersion.V311),
            will=aiomqtt.Will(self.bridge_topic, OFFLINE, qos=1, retain=True),
            keepalive=mqtt.keepalive,
            tls_context=tls_context,
            tls_insecure=mqtt.tls.insecure if mqtt.tls.enabled else None,
            timeout=10,
        )

    async def publish(self, topic: str, payload: str | dict[str, Any], retain: bool = True,
                      properties: Properties | None = None) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        if retain:
            if text:
                self.retained[topic] = text
            else:
                self.retained.pop(topic, None)
        client = self.client
        if client is None:
            return  # replayed on reconnect (retained) or lost (results of writes)
        try:
            await client.publish(topic, text, qos=1, retain=retain, properties=properties)
        except aiomqtt.MqttError as exc:
            log.warning("publish failed", topic=topic, error=str(exc))

    async def replay(self) -> None:
        """Publish every retained message again (after a reconnect or HA's birth)."""
        for topic, text in list(self.retained.items()):
            await self.publish(topic, text)


@dataclass
class Worker:
    """One inverter: its client, its poll schedule, its state and its writes."""

    config: InverterSettings
    settings: Settings
    broker: Broker
    client: InverterClient = field(init=False)
    writer: Writer = field(init=False)
    identity: Identity | None = None
    dsp_version: str | None = None
    online: bool = False
    guard: EnergyGuard = field(default_factory=EnergyGuard)
    due: dict[str, float] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    announced: dict[str, Any] | None = None
    last_poll: float | None = None
    last_publish: float | None = None
    stats: metrics.Stats = field(default_factory=metrics.Stats)

    def __post_init__(self) -> None:
        name = self.config.label
        self.log = log.bind(inverter=name)
        self.client = InverterClient(
            self.config.host, self.config.port, timeout=self.config.timeout,
            retries=self.config.retries, connect_attempts=1, name=name,
        )
        self.writer = Writer(self.client, min_interval=self.settings.writes.min_interval,
                             confirm_timeout=self.settings.writes.confirm_timeout)

    @property
    def serial(self) -> str | None:
        return self.identity.serial if self.identity else None

    def interval(self, group: Group) -> float:
        return float(getattr(self.settings.poll, group.interval))

    def topic(self, leaf: str) -> str:
        return f"{self.broker.base}/{self.serial}/{leaf}"

    # The app proxy's runtime interface (proxy.InverterRuntime), over this worker.
    async def exchange(self, job: Callable[[Session], Awaitable[T]], *,
                       timeout: float) -> T:  # noqa: ASYNC109 (bounds the turn, not the job)
        """Run ``job`` inside one queue slot, after the polls and writes already waiting."""
        if not self.online or self.identity is None:
            raise InverterError(f"the inverter {self.config.label} is offline")
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(timeout):
                    session = await stack.enter_async_context(self.client.session())
            except TimeoutError:
                raise InverterTimeout(f"no turn in the inverter's queue within {timeout:g} s"
                                      ) from None
            return await job(session)

    def refresh(self, *groups: str) -> None:
        """Make these poll groups due now."""
        for group in groups:
            self.due.pop(group, None)
        self.wake.set()

    async def run(self) -> None:
        """Poll forever; an inverter that fails only takes itself offline."""
        while True:
            now = time.monotonic()
            for group in GROUPS:
                if self.due.get(group.key, 0) <= now:
                    started = time.monotonic()
                    try:
                        await self.poll(group)
                    except (InverterError, CodecError) as exc:
                        # CodecError: a reply that does not fit the tables (too short)
                        self.stats.poll_failures += 1
                        await self.set_online(False, str(exc))
                        self.due = {}  # everything again once it is back
                        break
                    self.stats.polls[group.key] += 1
                    self.stats.poll_seconds += time.monotonic() - started
                    self.due[group.key] = now + self.interval(group)
            else:
                await self.set_online(True)
            next_due = min(self.due.values(), default=time.monotonic() + self.settings.poll.live)
            delay = max(0.0, next_due - time.monotonic()) if self.online else float(
                self.settings.poll.live)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: it can lose a cancel
                    await self.wake.wait()

    async def poll(self, group: Group) -> None:
        identity = self.identity
        readings: list[Reading] = []
        if identity is None or not self.client.connected:
            identity = await self.client.connect()
        for command in group.commands(identity.version):
            readings += await self.client.query(command)
        if self.identity is None or identity.serial != self.identity.serial:
            self.identity = identity
            self.log = self.log.bind(serial=identity.serial)
        for reading in readings:
            if reading.command.code == 0x0B:
                self.dsp_version = (f"{reading.values['dsp_version_high']}."
                                    f"{reading.values['dsp_version_low']}")
        self.last_poll = time.time()
        payload = state_payload(group.key, readings, datetime.now(UTC).astimezone(), self.guard,
                                battery_make=identity.battery_make)
        if group.key == "live" and self.announced is None:
            await self.announce()
        await self.broker.publish(self.topic(group.key), payload)
        if group.key == "live" and self.config.proxy_port is not None:
            await self.broker.publish(self.topic("proxy"), self.stats.proxy.state())
        self.last_publish = time.time()

    async def set_online(self, online: bool, reason: str | None = None) -> None:
        text = ONLINE if online else OFFLINE
        if online != self.online:
            if online:
                self.log.info("inverter online")
            else:
                self.log.warning("inverter offline", reason=reason)
        self.online = online
        if self.serial and self.broker.retained.get(self.topic("availability")) != text:
            await self.broker.publish(self.topic("availability"), text)

    def context(self) -> discovery.DiscoveryContext:
        assert self.identity is not None
        return discovery.DiscoveryContext(
            serial=self.identity.serial,
            model=self.identity.model,
            pcu_version=self.identity.reported_version,
            version=self.identity.version,
            dsp_version=self.dsp_version,
            base_topic=self.broker.base,
            prefix=self.settings.homeassistant.prefix,
            writes_enabled=self.settings.writes.enabled,
            intervals={"live": self.settings.poll.live, "energy": self.settings.poll.energy,
                       "slow": self.settings.poll.slow},
            timeout=self.config.timeout,
            sw_version=__version__,
            proxy=self.config.proxy_port is not None,
        )

    async def announce(self) -> None:
        """Publish (or replace) this inverter's discovery; remove what is no longer offered."""
        if self.identity is None or not self.settings.homeassistant.discovery:
            return
        ctx = self.context()
        if self.settings.homeassistant.device_discovery:
            topic, payload = discovery.device_config(ctx)
            # what an earlier run left on the broker counts as announced too
            gone = discovery.removals(self.announced or self.broker.found.get(topic), payload)
            if gone:
                await self.broker.publish(topic, {**payload, "cmps": {**payload["cmps"],
                                                                      **gone}})
            await self.broker.publish(topic, payload)
            self.announced = payload
        else:
            configs = discovery.entity_configs(ctx)
            current = [topic for topic, _ in configs]
            for stale in discovery.stale_topics(list((self.announced or {}).get("topics", [])),
                                                current):
                await self.broker.publish(stale, "")
            for topic, payload in configs:
                await self.broker.publish(topic, payload)
            self.announced = {"topics": current}

    async def handle_write(self, key: str | None, payload: bytes,
                           properties: Properties | None) -> None:
        """A message on ``set`` or ``set/<key>``: apply it, answer on ``set/result``."""
        try:
            if not self.settings.writes.enabled:
                raise WriteRefused("writes are disabled (writes.enabled / "
                                   "SERMATEC_WRITES__ENABLED=true turns them on)")
            request = parse_request(payload, key)
            self.log.info("write requested", settings=sorted(request))
            result = await self.writer.apply(request)
        except WriteRefused as exc:
            result = WriteResult(False, error=str(exc))
        self.stats.writes["ok" if result.ok else "refused"] += 1
        body = result.as_json()
        if key is not None:
            body["topic"] = f"set/{key}"
        (self.log.info if result.ok else self.log.warning)("write result", **body)
        await self.broker.publish(self.topic("set/result"), body, retain=False)
        response_topic = getattr(properties, "ResponseTopic", None)
        if response_topic:  # MQTT 5 request / response
            reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            correlation = getattr(properties, "CorrelationData", None)
            if correlation:
                reply.CorrelationData = correlation
            await self.broker.publish(response_topic, body, retain=False, properties=reply)
        if result.sent:
            self.due.pop("settings", None)  # re-publish the state at once
            self.due.pop("live", None)
            self.wake.set()


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = Broker(settings)
        self.workers = [Worker(c, settings, self.broker) for c in settings.all_inverters()]
        self.stopping = asyncio.Event()
        self.failed = False
        self.background: set[asyncio.Task[None]] = set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def worker(self, serial: str) -> Worker | None:
        return next((w for w in self.workers if w.serial == serial), None)

    async def run(self) -> bool:
        """Run until SIGTERM / SIGINT (True) or until a task fails unexpectedly (False)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        self.broker.retained[self.broker.bridge_topic] = ONLINE
        workers = [self._supervised(w.run(), f"worker {w.config.label}") for w in self.workers]
        workers += [self._supervised(proxy.ProxyServer(
            w, name=w.config.label, writes=w.config.proxy_writes, stats=w.stats.proxy,
        ).serve(w.config.proxy_host, w.config.proxy_port), f"proxy {w.config.label}")
            for w in self.workers if w.config.proxy_port is not None]
        others = [self._supervised(self._mqtt_loop(), "mqtt"),
                  self._supervised(self._heartbeat(), "heartbeat")]
        if self.settings.health.metrics_port:
            others.append(self._supervised(metrics.serve(
                self, self.settings.health.metrics_host, self.settings.health.metrics_port),
                "metrics"))
        try:
            await self.stopping.wait()
        finally:
            log.info("stopping")
            await _cancel(workers)  # no poll may publish "online" after the goodbye
            await self._goodbye()
            await _cancel(others)
            for w in self.workers:
                await w.client.close()
        return not self.failed

    def _supervised(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task whose unexpected end stops the bridge (so that a supervisor restarts it)."""
        task = asyncio.create_task(coroutine, name=name)

        def ended(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and not self.stopping.is_set():
                log.error("a part of the bridge stopped unexpectedly; stopping", task=name,
                          error=repr(task.exception()))
                self.failed = True
                self.stopping.set()

        task.add_done_callback(ended)
        return task

    async def _goodbye(self) -> None:
        """Say offline for every inverter and the bridge before the connection closes."""
        for w in self.workers:
            if w.serial:
                await self.broker.publish(w.topic("availability"), OFFLINE)
        await self.broker.publish(self.broker.bridge_topic, OFFLINE)

    async def _mqtt_loop(self) -> None:
        attempt = 0
        mqtt = self.settings.mqtt
        while True:
            try:
                async with self.broker._client() as client:
                    attempt = 0
                    self.broker.client = client
                    self.broker.connections += 1
                    log.info("mqtt connected", broker=f"{mqtt.host}:{mqtt.port}")
                    await self._subscribe(client)
                    await self.broker.replay()
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                self.broker.client = None
                attempt += 1
                delay = backoff(attempt, 1.0, 60.0)
                hint = None
                if "timed out" in str(exc).lower():
                    hint = ("the broker did not answer: is it a TLS listener (mqtt.tls.enabled)?"
                            if not mqtt.tls.enabled else "the broker did not answer")
                log.warning("mqtt connection failed, retrying", broker=f"{mqtt.host}:{mqtt.port}",
                            error=str(exc), hint=hint, retry_in=round(delay, 1))
                await asyncio.sleep(delay)
            finally:
                self.broker.client = None

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        base = self.broker.base
        await client.subscribe(self.settings.homeassistant.status_topic, qos=1)
        await client.subscribe(f"{self.settings.homeassistant.prefix}/device/+/config", qos=1)
        await client.subscribe(f"{base}/+/set", qos=1)
        await client.subscribe(f"{base}/+/set/+", qos=1)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(
            message.payload or "").encode()
        if topic == self.settings.homeassistant.status_topic:
            if payload.strip() == b"online":
                self._spawn(self._rediscover())
            return
        if topic.startswith(f"{self.settings.homeassistant.prefix}/device/"):
            if message.retain and b'"sermatec-bridge"' in payload:  # ours, from an earlier run
                with contextlib.suppress(ValueError):
                    self.broker.found[topic] = json.loads(payload)
            return
        parts = topic[len(self.broker.base) + 1:].split("/")
        if len(parts) < 2 or parts[1] != "set" or parts[-1] == "result":
            return
        worker = self.worker(parts[0])
        if worker is None:
            log.warning("write for an unknown inverter ignored", topic=topic)
            return
        key = parts[2] if len(parts) == 3 else None
        self._spawn(worker.handle_write(key, payload, message.properties))

    async def _rediscover(self) -> None:
        """Home Assistant restarted: after a short random delay, discovery and states again."""
        await asyncio.sleep(random.uniform(0, self.settings.homeassistant.birth_delay))
        log.info("home assistant is online: re-sending discovery and states")
        await self.broker.replay()

    async def _heartbeat(self) -> None:
        while True:
            health.write(self.settings.health.file, self)
            await asyncio.sleep(min(5.0, self.settings.poll.live))


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel tasks and wait for them all to end.

    Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives as its
    awaitable completes (cpython gh-86296; aiomqtt uses it): a task may survive one
    cancel, so cancel again until every task has ended.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    await asyncio.gather(*tasks, return_exceptions=True)


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM / SIGINT: exit status 0 on a clean stop, 1 on a crash."""
    return 0 if asyncio.run(Bridge(settings).run()) else 1
