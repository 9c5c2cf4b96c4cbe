"""The bridge daemon: inverters in, Home Assistant discovery and state out, writes back in.

One asyncio program. Per inverter an :class:`~.runtime.InverterRuntime` polls, applies
writes and keeps the availability; one MQTT connection (:class:`~.publisher.Broker`)
carries everything. On every connection the bridge first learns what the broker holds,
then publishes what is missing or changed. Commands are dispatched here: a write that
cannot be applied (retained, bad, disabled, for an unknown inverter) gets its refusal at
once; the others join their inverter's intake.

Inverters that dial in (``cloud.listen_port``) are known by serial: a listed one
(``serial:``) has its runtime from the start, waiting for its dial; one that is not
listed gets a runtime when it first dials in (``cloud.accept_unlisted``), with the
settings of ``inverter``. Each identified connection is handed to its runtime, and with
``cloud.upstream`` the runtime's :class:`~.cloud.Relay` holds the vendor cloud's link.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..backoff import backoff
from ..config import InverterSettings, Settings
from ..inverter.client import Connection, Identity
from ..log import Tally, flush_tallies
from . import cloud, health, metrics, proxy
from .intake import Intake, Refusal
from .policy import Policy
from .publisher import OFFLINE, Broker, publish_result, quote, refusal, valid_topic_name
from .retry import SETTLED, BrokerRetry
from .runtime import (
    COMMAND_DEADLINE,
    STOP_GRACE,
    InverterRuntime,
    WriteCommand,
    result_body,
)
from .writes import WriteRefused, WriteResult, parse_request

log = structlog.get_logger(__name__)

HEARTBEAT_LOG_EVERY = 300.0  # seconds between two warnings about one heartbeat failure
RESTART_FIRST, RESTART_MAX = 1.0, 60.0  # seconds before a failed runtime is started again
COUNTS_EVERY = 5.0  # seconds between two looks at what the log tallies counted
LISTEN_FIRST, LISTEN_MAX = 1.0, 60.0  # seconds between tries to listen on a port in use
RESTART_RESET = 300.0  # seconds a restarted runtime must run before its backoff starts over
SPREAD_PER_INVERTER = 0.01  # seconds the first rounds of dialled-in inverters spread, each


class Bridge:
    """The daemon: one MQTT connection, one runtime per inverter."""

    def __init__(self, settings: Settings, *,
                 command_deadline: float = COMMAND_DEADLINE) -> None:
        self.settings = settings
        self.command_deadline = command_deadline
        self.broker = Broker(settings)
        self.workers: list[InverterRuntime] = []
        self.dialling: dict[str, InverterRuntime] = {}  # the inverters that dial in, by serial
        self.relays: dict[InverterRuntime, cloud.Relay] = {}
        self.cloud_policy = Policy.of(settings.cloud.allow, settings_writes=False,
                                      setting="cloud.allow", writes_off="a settings write; "
                                      "only when cloud.allow names it (and writes.enabled)")
        inverters = settings.all_inverters()
        # Their first rounds spread over one live interval: 500 inverters do not all poll
        # (and publish) at the same moment.
        for i, config in enumerate(inverters):
            self._add(config, start=i * settings.poll.live / len(inverters))
        self.proxies = self._proxies()
        self.listener = self._listener()
        # Writes to an inverter not identified yet wait here, with their deadline.
        self.held = Intake(limit=64)
        self.stopping = asyncio.Event()
        self.refused = Tally(log, "writes refused")
        self.dials: dict[InverterRuntime, Tally] = {}  # by inverter that dials in
        self.failed = False
        self._birth: asyncio.Task[None] | None = None
        self._tasks: dict[InverterRuntime, asyncio.Task[None]] = {}

    def _add(self, config: InverterSettings, start: float = 0.0) -> InverterRuntime:
        worker = InverterRuntime(config, self.settings, self.broker,
                                 command_deadline=self.command_deadline, start=start)
        worker.on_identified = self._claim_held
        self.workers.append(worker)
        if config.serial is not None:
            self.dialling[config.serial] = worker
        upstream = self.settings.cloud.upstream_address
        if worker.relayed and upstream is not None:
            self.relays[worker] = cloud.Relay(worker, upstream, self.cloud_policy)
        return worker

    def _listener(self) -> cloud.Listener | None:
        config = self.settings.cloud
        if config.listen_port is None:
            return None
        proxies = len(self.proxies)
        reserved = cloud.reserved_files(
            proxies, self.proxies[0][1].limits.clients if proxies else 0,
            sum(not w.config.dials_in for w in self.workers))
        return cloud.Listener(self._dialled_in, timeout=self.settings.unlisted.timeout,
                              cap=cloud.link_cap(reserved, config.upstream is not None),
                              networks=config.allowed_networks)

    def _dialled_in(self, connection: Connection, identity: Identity) -> str | None:
        """An inverter dialled in and said who it is: hand the connection to its runtime
        (made now for one that is not listed); None, or why it is not taken."""
        if self.stopping.is_set():
            return "the bridge is stopping"
        serial = identity.serial
        worker = self.dialling.get(serial)
        if worker is None:
            dialled = next((w for w in self.workers if w.serial == serial), None)
            if dialled is not None:
                return (f"inverter {serial} is served at its host {dialled.config.label}: "
                        "to serve it over its cloud link, list it by serial instead")
            if not self.settings.cloud.accept_unlisted:
                return "not listed by serial (cloud.accept_unlisted is false)"
            assert self.listener is not None
            if len(self.dialling) >= self.listener.cap:
                return f"more than {self.listener.cap} inverters dial in"
            # A fleet that dials in at once (a bridge restarted, a router back) spreads its
            # first rounds: the more inverters, the longer, at most one live interval.
            spread = min(self.settings.poll.live, len(self.dialling) * SPREAD_PER_INVERTER)
            worker = self._add(self.settings.unlisted.model_copy(update={"serial": serial}),
                               start=random.uniform(0, spread))
            log.info("an inverter that is not listed dialled in: serving it with the "
                     "settings of inverter", serial=serial, peer=connection.peer,
                     rc4=connection.rc4)
            self._start(worker)
        else:  # a link that drops and comes back every second costs a line a minute
            dials = self.dials.get(worker)
            if dials is None:
                dials = self.dials[worker] = Tally(log.bind(inverter=worker.config.label),
                                                   "inverter dialled in", level="info")
            dials.add("again, its new connection replacing the open one"
                      if worker.client.connected else "its link is up",
                      peer=connection.peer, rc4=connection.rc4)
        worker.attach(connection, identity)
        if (relay := self.relays.get(worker)) is not None:
            relay.follow()
        return None

    def _proxies(self) -> list[tuple[int, proxy.ProxyServer]]:
        """The app proxies to serve, by port: one per inverter with a ``proxy_port``."""
        config = self.settings.proxy
        policy = Policy.of(config.allow, settings_writes=self.settings.writes.enabled)
        served = [(port, w) for w in self.workers if (port := w.config.proxy_port) is not None]
        limits = proxy.Limits(clients=proxy.client_cap(len(served), len(self.workers)))
        return [(port, proxy.ProxyServer(w, name=w.config.label, policy=policy,
                                         stats=w.stats.proxy, limits=limits,
                                         networks=config.allowed_networks))
                for port, w in served]

    def worker(self, topic_id: str) -> InverterRuntime | None:
        return next((w for w in self.workers if w.topic_id == topic_id), None)

    async def run(self) -> bool:
        """Run until SIGTERM / SIGINT (True) or until a task fails unexpectedly (False)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        for worker in self.workers:
            self._start(worker)
        host = self.settings.proxy.host
        proxies = [self._supervised(_listen(
            server.serve, host, port, f"the app proxy of {server.name}",
            "inverter.proxy_port, proxy.host"), f"proxy {server.name}")
            for port, server in self.proxies]
        if self.listener is not None:
            cloud_config = self.settings.cloud
            assert cloud_config.listen_port is not None
            proxies.append(self._supervised(_listen(
                self.listener.serve,
                cloud_config.listen_host, cloud_config.listen_port, "the cloud listener",
                "cloud.listen_port, cloud.listen_host"), "cloud listener"))
        others = [self._supervised(self._mqtt_loop(), "mqtt"),
                  self._supervised(self._heartbeat(), "heartbeat"),
                  self._supervised(self._expire_held(), "held writes"),
                  self._supervised(_log_counts(), "log counts")]
        health_config = self.settings.health
        if health_config.metrics_port:
            others.append(self._supervised(_listen(
                partial(metrics.serve, self), health_config.metrics_host,
                health_config.metrics_port, "the metrics",
                "health.metrics_port, health.metrics_host"), "metrics"))
        try:
            await self.stopping.wait()
        finally:
            log.info("stopping")
            await _cancel(proxies)  # no app request (nor inverter dialling in) comes any more
            for relay in self.relays.values():
                await relay.stop()  # nor a cloud request
            await self._shutdown(list(self._tasks.values()))
            await _cancel(others + ([self._birth] if self._birth else []))
            for w in self.workers:
                await w.client.close()
            flush_tallies(everything=True)  # no count is left unsaid
        return not self.failed

    async def _shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        """Answer every command, let what runs finish briefly, then say offline."""
        for w in self.workers:
            await w.stop()
        await self._answer_held(self.held.close())
        _, running = await asyncio.wait(workers, timeout=STOP_GRACE) if workers else ((), ())
        if running:
            log.warning("stopping what still runs", tasks=len(running))
        await _cancel(workers)  # no poll may publish "online" after the goodbye
        await self.broker.flush(STOP_GRACE)  # every result before the last "offline"
        for w in self.workers:
            await w.publisher.availability(False)
        await self.broker.publish(self.broker.bridge_topic, OFFLINE)

    def _start(self, worker: InverterRuntime) -> None:
        self._tasks[worker] = asyncio.create_task(self._keep_running(worker),
                                                  name=f"inverter {worker.config.label}")

    async def _keep_running(self, worker: InverterRuntime) -> None:
        """Run one inverter's runtime until the bridge stops.

        A runtime that fails anyway is logged with its traceback, marked offline and
        started again with backoff; the other inverters never notice.
        """
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await worker.run()
                return
            except Exception:
                if worker.stopping:
                    return
                failures = 1 if time.monotonic() - started > RESTART_RESET else failures + 1
                delay = backoff(failures, RESTART_FIRST, RESTART_MAX)
                log.exception("inverter runtime failed: restarting it",
                              inverter=worker.config.label, failures=failures,
                              retry_in=round(delay, 1))
            await worker.crashed()
            await asyncio.sleep(delay)

    def _supervised(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task whose unexpected end stops the bridge (so that a supervisor restarts it)."""
        task = asyncio.create_task(coroutine, name=name)

        def ended(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            error = task.exception()  # retrieved in every case: never "never retrieved"
            if not self.stopping.is_set():
                log.error("a part of the bridge stopped unexpectedly; stopping", task=name,
                          error=repr(error))
                self.failed = True
                self.stopping.set()

        task.add_done_callback(ended)
        return task

    # ----------------------------------------------------------------------------------
    # MQTT
    # ----------------------------------------------------------------------------------

    async def _mqtt_loop(self) -> None:
        mqtt = self.settings.mqtt
        where = f"{mqtt.host}:{mqtt.port}"
        retry = BrokerRetry(mqtt)
        while True:
            try:
                async with self.broker.connect() as client:
                    away = retry.connected()
                    _no_delay(client)
                    self.broker.connected(client)
                    log.info("mqtt connected", broker=where,
                             **({} if away is None else {"after": round(away, 1)}))
                    async with asyncio.TaskGroup() as group:
                        reader = group.create_task(self._read(client))
                        delivery = group.create_task(self.broker.deliver())
                        await self._subscribe(client)
                        await self.broker.learn()
                        self.broker.ready.set()
                        for w in self.workers:
                            await w.publisher.reconcile()
                        await self.broker.sync()
                        # What an earlier run left "online" is claimed only once this
                        # connection has lasted: a second bridge with the same client id
                        # (pushed out by the first within a second) claims nothing.
                        await asyncio.sleep(SETTLED)
                        self.broker.claim_availability()
                        await self.broker.sync()
                        self.broker.settled.set()
                        await reader
                        delivery.cancel()
            except* aiomqtt.MqttError as group_error:
                self.broker.disconnected()
                step = retry.failed(group_error.exceptions[0])
                getattr(log, step.level)(step.event, broker=where,
                                         retry_in=round(step.delay, 2), **step.fields)
                await asyncio.sleep(step.delay)
            finally:
                self.broker.disconnected()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._dispatch(message)
            await asyncio.sleep(0)  # a backlog of commands takes turns with the polls

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        for name in self.broker.subscriptions():
            await client.subscribe(name, qos=1)
        base = self.broker.base
        # "Retain as published": a write published with the retain flag is seen as such.
        options = (SubscribeOptions(qos=1, retainAsPublished=True)
                   if self.settings.mqtt.protocol == "5" else None)
        for name in (f"{base}/+/set", f"{base}/+/set/+"):
            if options is not None:
                await client.subscribe(name, options=options)
            else:
                await client.subscribe(name, qos=1)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(
            message.payload or "").encode()
        if topic == self.settings.homeassistant.status_topic:
            if payload.strip() == b"online":
                self._home_assistant_born()
            return
        if self.broker.observe(topic, payload, bool(message.retain), message.properties):
            await self.broker.settle()
            return
        levels = topic[len(self.broker.base) + 1:].split("/")
        if len(levels) < 2 or levels[1] != "set" or levels[-1] == "result":
            return
        await self._write_arrived(levels[0], levels[2] if len(levels) == 3 else None, payload,
                                  bool(message.retain), message.properties)

    # ----------------------------------------------------------------------------------
    # Writes
    # ----------------------------------------------------------------------------------

    async def _write_arrived(self, topic_id: str, key: str | None, payload: bytes,
                             retained: bool, properties: Properties | None) -> None:
        """A message on ``<id>/set`` or ``<id>/set/<key>``: refuse it or queue it.

        It is applied within ``command_deadline`` seconds, and within what is left of its
        MQTT 5 message expiry (the broker counts it down while it holds the message, for
        a bridge that was away): no write is applied later than its publisher allowed.
        """
        within = self.command_deadline
        expiry = getattr(properties, "MessageExpiryInterval", None)
        if isinstance(expiry, int) and expiry < within:
            within = expiry
        command = WriteCommand(deadline=time.monotonic() + within, request={},
                               key=key, properties=properties, topic_id=topic_id)
        worker = self.worker(topic_id)
        try:
            response_topic = getattr(properties, "ResponseTopic", None)
            if response_topic is not None and not valid_topic_name(response_topic):
                raise WriteRefused(f"the MQTT 5 response topic {quote(response_topic)!r} is "
                                   "not a topic name (no wildcards)")
            if retained:
                raise WriteRefused("refused: a retained message is never applied (publish "
                                   "writes without the retain flag)")
            if not self.settings.writes.enabled:
                raise WriteRefused("writes are disabled (writes.enabled / "
                                   "SERMATEC_WRITES__ENABLED=true turns them on)")
            command.request = parse_request(payload, key)
            command.coalesce = (topic_id, tuple(sorted(command.request)))
        except WriteRefused as exc:
            await self._answer(command, refusal(quote(str(exc))), worker)
            return
        except Exception as exc:  # bad input never ends the bridge's MQTT loop
            log.warning("unreadable write", topic_id=quote(topic_id), error=quote(repr(exc)))
            await self._answer(command, refusal(
                f"refused: the payload cannot be read ({type(exc).__name__})"), worker)
            return
        if worker is not None:
            command.expired = (f"expired: not applied within {within:g} s (the inverter "
                               "is offline or busy)")
            await worker.submit(command)
        elif all(w.topic_id is not None for w in self.workers) and not (
                self.listener is not None and self.settings.cloud.accept_unlisted):
            known = ", ".join(sorted(str(w.topic_id) for w in self.workers))
            await self._answer(command, refusal(
                f"refused: no inverter {quote(topic_id)!r} here (known: {known})"), None)
        else:  # perhaps the one that has not answered yet: wait for it
            command.expired = ("expired: no inverter with this serial has answered within "
                               f"{within:g} s")
            await self._answer_held(self.held.submit(command))

    async def _answer(self, command: WriteCommand, result: WriteResult,
                      worker: InverterRuntime | None) -> None:
        """The result of a write refused before it was queued: published every time,
        logged at most once a minute with the count (a flood on set/# costs one line)."""
        body = result_body(command, result)
        if worker is not None:
            worker.stats.writes["refused"] += 1
        self.refused.add("write refused", inverter=quote(command.topic_id), **body)
        await publish_result(self.broker, command.topic_id, body, command.properties)

    async def _answer_held(self, refused: list[Refusal]) -> None:
        for command, reason in refused:
            if isinstance(command, WriteCommand):
                await self._answer(command, refusal(reason), None)

    async def _claim_held(self, worker: InverterRuntime) -> None:
        """An inverter was identified: the writes held for it join its intake."""
        for command in self.held.take_where(
                lambda c: isinstance(c, WriteCommand) and c.topic_id == worker.topic_id):
            await worker.submit(command)

    async def _expire_held(self) -> None:
        while True:
            await self._answer_held(self.held.expire())
            await asyncio.sleep(0.5)

    # ----------------------------------------------------------------------------------
    # Home Assistant's birth, the heartbeat
    # ----------------------------------------------------------------------------------

    def _home_assistant_born(self) -> None:
        """Re-send everything once, after a short random delay; births that arrive in the
        meantime (100 in a row, say) ride along with that one replay."""
        if self._birth is None or self._birth.done():
            self._birth = asyncio.create_task(self._rediscover(), name="rediscover")

    async def _rediscover(self) -> None:
        await asyncio.sleep(random.uniform(0, self.settings.homeassistant.birth_delay))
        log.info("home assistant is online: re-sending discovery and states")
        if self.broker.ready.is_set():
            try:
                await self.broker.replay()
            except Exception:  # logged here: a task's error is never left unretrieved
                log.exception("re-sending discovery failed")

    async def _heartbeat(self) -> None:
        """Rewrite the heartbeat file every few seconds. A file that cannot be written is
        logged (once, then every ``HEARTBEAT_LOG_EVERY`` s while it lasts, with the count)
        and tried again: the health check then says unhealthy, but the bridge goes on."""
        path = self.settings.heartbeat_file
        failures = Tally(log, "cannot write the heartbeat file; retrying",
                         every=HEARTBEAT_LOG_EVERY)
        failing_since: float | None = None
        while True:
            try:
                health.write(path, self)
            except OSError as exc:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                failures.add(f"{type(exc).__name__}: {exc.strerror or exc}", file=str(path),
                             failing_for=round(now - failing_since),
                             hint="`sermatec-bridge health` reports unhealthy until it is "
                             "writable (health.file / SERMATEC_HEALTH__FILE)")
            else:
                if failing_since is not None:
                    failures.over()  # the next failure is news again
                    log.info("heartbeat file written again", file=str(path))
                failing_since = None
            await asyncio.sleep(min(5.0, self.settings.poll.live))


async def _listen(serve: Callable[[str, int], Awaitable[None]], host: str, port: int,
                  what: str, settings: str) -> None:
    """Serve a port of the bridge's that is not what it is for (the app proxy, the cloud
    listener, the metrics): one it cannot listen on (in use, an address this machine
    lacks) is said in one line naming its settings and tried again with backoff, while the
    inverters go on."""
    failures = 0
    while True:
        try:
            await serve(host, port)
            return
        except OSError as exc:
            failures += 1
            delay = backoff(failures, LISTEN_FIRST, LISTEN_MAX)
            (log.error if failures == 1 else log.debug)(
                f"cannot listen on {host}:{port} for {what}; the rest of the bridge runs, "
                "trying again", error=exc.strerror or str(exc), check=settings,
                retry_in=round(delay, 1))
            await asyncio.sleep(delay)


async def _log_counts() -> None:
    """What the log tallies counted goes out once their minute is over, not only with
    the next event of their kind (which may never come)."""
    while True:
        await asyncio.sleep(COUNTS_EVERY)
        flush_tallies()


def _no_delay(client: aiomqtt.Client) -> None:
    """Send small packets at once. paho leaves Nagle's algorithm on: with messages going
    both ways, a PUBACK or a result then waits for the broker's delayed ACK (40 ms), and
    results of a burst of commands trickle out at a few hundred a second."""
    sock = client._client.socket()  # aiomqtt does not expose it
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
