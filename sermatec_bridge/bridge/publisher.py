"""Everything the bridge publishes, and what the broker already holds.

:class:`Broker` is the one MQTT connection. It keeps two maps of retained messages: what
the bridge wants retained (``desired``: discovery, availability, states, the bridge's own
state) and what the broker holds (``on_broker``). On every connection it first *learns*
what the broker holds (the bridge's discovery configs and availability topics, left by
this run before a broker restart, or by an earlier run), then publishes only what
differs. A retained message is published once per change, never twice on a start.

:class:`Publisher` is one inverter's view of it: availability, group states, write
results, and the discovery lifecycle (:func:`discovery.plan`), which it runs only once
the broker's holdings are known.

Several bridges may share one broker and base topic. Each is known by its MQTT client id
(the broker lets one connection use an id at a time): it has its own state topic and last
will (:func:`discovery.bridge_topic`), and with MQTT 5 it signs each availability it
publishes with its id (a user property, kept with the retained message). An inverter's
``offline`` is published only by the bridge that last said it was ``online``: a second
bridge that cannot reach an inverter, or one that lost it to another bridge, never takes
it offline in Home Assistant, during its run or after it. A bridge that lost an inverter
to another one *releases* it: its discovery (which names this bridge's state topic), its
availability and its states are no longer this bridge's to publish, nor to send again on
a reconnection or Home Assistant's birth, until the inverter answers this bridge again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import Settings
from ..log import Tally, throttled_stdlib
from . import discovery
from .writes import WriteResult

log = structlog.get_logger(__name__)
MQTT_LOG = throttled_stdlib("sermatec_bridge.mqtt", log, "mqtt client warnings")

ONLINE, OFFLINE = "online", "offline"
ORIGIN = discovery.ORIGIN_NAME.encode()
# Seconds the broker keeps the bridge's session while it is away, and so the writes
# published meanwhile: the oldest write the bridge can be handed after an outage.
SESSION_EXPIRY = 30
# Seconds the broker waits before it publishes the last will: a bridge that is back
# within them (a restart, a short outage) never shows as offline in Home Assistant.
WILL_DELAY = 5
SIGNATURE = "bridge"  # MQTT 5 user property: the client id of the bridge that published
LEARN_TIMEOUT = 3.0  # seconds to wait for the broker's retained messages at connect
QUOTE = 200  # characters of a bad value quoted in results and logs
HELD_AS_IS = 16384  # characters: a longer retained message is kept compressed (held)
INCOMING = 1000  # messages received and not yet handled; aiomqtt drops what comes beyond
OUTGOING = 10000  # messages handed to the client and not yet sent
RESULTS = 1000  # write results waiting to be published; more are dropped and counted
SENDERS = 8  # write results in flight at once, each waiting for its PUBACK


def quote(text: str, limit: int = QUOTE) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def valid_topic_name(topic: str) -> bool:
    """A topic a client may publish to: not empty, no wildcard, no NUL."""
    return bool(topic) and not any(c in topic for c in "+#\0") and len(topic) <= 65535


class Broker:
    """The MQTT connection, and the retained messages the bridge owns on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.mqtt.base_topic
        self.prefix = settings.homeassistant.prefix
        self.client_id = settings.mqtt.client_id
        self.v5 = settings.mqtt.protocol == "5"
        self.bridge_topic = discovery.bridge_topic(self.base, bridge_id(settings))
        # Only this client reads it (one per client id: the session keeps the subscription).
        self.marker_topic = f"{self.base}/bridge/sync/{discovery.topic_id(self.client_id)}"
        self._marker = b""
        self.client: aiomqtt.Client | None = None
        self.desired: dict[str, str | bytes] = {self.bridge_topic: ONLINE}  # held()
        self.on_broker: dict[str, str | bytes] = {}  # held()
        # availability topic -> the client id of the bridge that published it last (MQTT 5)
        self.signed: dict[str, str] = {}
        self.contested: set[str] = set()  # ours, said offline by another bridge
        self.released: set[str] = set()  # topic ids of inverters another bridge serves now
        self.ready = asyncio.Event()  # the broker's holdings are known on this connection
        self.learned = asyncio.Event()  # our marker came back: retained ones came before
        self.settled = asyncio.Event()  # this connection lasted: what it claimed is sent
        self.connections = 0
        self.results: asyncio.Queue[tuple[str, str, Properties | None]] = asyncio.Queue(RESULTS)
        self._lost = Tally(log, "write results not published")

    def connect(self) -> aiomqtt.Client:
        """A client for one connection: last will ``offline``, a persistent session."""
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
        v5 = self.v5
        properties = will_properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY
            will_properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_properties.WillDelayInterval = WILL_DELAY
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
            identifier=mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.bridge_topic, OFFLINE, qos=1, retain=True,
                              properties=will_properties),
            keepalive=mqtt.keepalive,
            tls_context=tls_context,
            tls_insecure=mqtt.tls.insecure if mqtt.tls.enabled else None,
            timeout=10,
            # Bounded, so that a flood on set/# cannot grow the bridge's memory.
            max_queued_incoming_messages=INCOMING,
            max_queued_outgoing_messages=OUTGOING,
            logger=MQTT_LOG,
            # MQTT 5: writes published while the bridge is away are kept for it, at most
            # SESSION_EXPIRY seconds (see README). MQTT 3.1.1 cannot bound their age, so
            # there the broker keeps nothing for the bridge while it is away.
            clean_start=False if v5 else 3,
            clean_session=None if v5 else True,
            properties=properties,
        )

    # ----------------------------------------------------------------------------------
    # Publishing
    # ----------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: str | dict[str, Any], retain: bool = True,
                      properties: Properties | None = None) -> None:
        """Publish; a retained message only when the broker does not hold it already.

        Until the broker's holdings are known, retained messages are only recorded:
        :meth:`sync` sends them once it knows what is missing.
        """
        text = payload if isinstance(payload, str) else json.dumps(payload)
        if not retain:
            await self._send(topic, text, retain, properties)
            return
        value = held(text)
        if text:
            self.desired[topic] = value
        else:
            self.desired.pop(topic, None)
        if self.ready.is_set() and self.on_broker.get(topic, "") != value:
            await self._send(topic, text, retain, properties, kept=value)

    async def _send(self, topic: str, text: str, retain: bool,
                    properties: Properties | None = None, kept: str | bytes = "") -> None:
        """Publish ``text``; ``kept``: a retained one as :func:`held` keeps it."""
        client = self.client
        if client is None:
            if not retain:
                log.warning("not connected to the broker: message lost", topic=quote(topic))
            return
        if self.v5 and self.is_availability(topic):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = [(SIGNATURE, self.client_id)]
            self.signed[topic] = self.client_id
        try:
            await client.publish(topic, text, qos=1, retain=retain, properties=properties)
        except (aiomqtt.MqttError, ValueError) as exc:
            log.warning("publish failed", topic=quote(topic), error=quote(str(exc)))
            return
        if retain:
            if text:
                self.on_broker[topic] = kept or held(text)
            else:
                self.on_broker.pop(topic, None)

    def post(self, topic: str, payload: dict[str, Any],
             properties: Properties | None = None) -> None:
        """Queue a message that is not retained (a write's result) and return at once:
        whoever answers a command never waits for the broker (:meth:`deliver` sends it)."""
        try:
            self.results.put_nowait((topic, json.dumps(payload), properties))
        except asyncio.QueueFull:
            self._lost.add(f"more than {RESULTS} waiting")

    async def deliver(self) -> None:
        """Publish what :meth:`post` queued, :data:`SENDERS` at a time, while connected."""

        async def sender() -> None:
            while True:
                topic, text, properties = await self.results.get()
                try:
                    await self._send(topic, text, False, properties)
                finally:
                    self.results.task_done()

        async with asyncio.TaskGroup() as group:
            for _ in range(SENDERS):
                group.create_task(sender())

    async def flush(self, within: float) -> None:
        """Wait (at most ``within`` seconds) until every queued result has been sent."""
        if self.client is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.results.join()

    async def sync(self) -> None:
        """Publish every retained message the broker lacks or holds differently."""
        for topic, value in list(self.desired.items()):
            if self.on_broker.get(topic) != value:
                await self._send_desired(topic)

    async def replay(self) -> None:
        """Publish every retained message again (Home Assistant restarted)."""
        for topic in list(self.desired):
            await self._send_desired(topic)

    async def _send_desired(self, topic: str) -> None:
        value = self.desired[topic]
        await self._send(topic, unheld(value), True, kept=value)

    # ----------------------------------------------------------------------------------
    # Learning what the broker holds
    # ----------------------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        """What the bridge reads: its commands, HA's birth, and its own retained topics."""
        return [
            self.settings.homeassistant.status_topic,
            f"{self.prefix}/device/+/config",
            f"{self.prefix}/+/+/+/config",
            f"{self.base}/+/availability",
            self.marker_topic,
        ]

    def connected(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.connections += 1
        self.on_broker.clear()
        self.learned.clear()

    def disconnected(self) -> None:
        self.client = None
        self.ready.clear()
        self.settled.clear()

    async def learn(self) -> None:
        """Wait until the broker has sent the retained messages of our subscriptions.

        A message of our own to a topic only we read comes back after them.
        """
        assert self.client is not None
        self._marker = uuid.uuid4().hex.encode()  # an older connection's marker is not it
        await self.client.publish(self.marker_topic, self._marker, qos=1)
        try:
            async with asyncio.timeout(LEARN_TIMEOUT):
                await self.learned.wait()
        except TimeoutError:
            log.warning("the broker did not echo our marker: going on without knowing all "
                        "it holds", within=LEARN_TIMEOUT)

    def observe(self, topic: str, payload: bytes, retain: bool,
                properties: Properties | None = None) -> bool:
        """Take note of a message on a topic the bridge owns; True when it was one."""
        if topic == self.marker_topic:
            if payload == self._marker:
                self.learned.set()
            return True
        if topic.startswith(f"{self.prefix}/") and topic.endswith("/config"):
            if retain and ORIGIN in payload:  # ours, from an earlier run (or before)
                self.on_broker[topic] = held(payload.decode(errors="replace"))
            return True
        if self.is_availability(topic):
            text = payload.decode(errors="replace")
            signer = dict(getattr(properties, "UserProperty", None) or ()).get(SIGNATURE)
            if signer is None or signer == self.client_id:
                if retain and payload:
                    self.on_broker[topic] = text
                return True
            self.signed[topic] = signer
            if text == ONLINE and not retain:  # another bridge serves it from now on
                self.release(topic[len(self.base) + 1:-len("/availability")])
            elif self.desired.get(topic) == ONLINE and text == OFFLINE:
                log.warning("another bridge published offline for an inverter this one "
                            "serves: publishing online again", topic=quote(topic),
                            other=quote(signer))
                self.contested.add(topic)
            return True
        return False

    def release(self, topic_id: str) -> None:
        """Another bridge serves this inverter now: nothing of it is this bridge's to
        publish any more, and what the broker holds of it is the other bridge's."""
        self.released.add(topic_id)
        for topic in list(self.desired):
            if (topic.startswith(f"{self.base}/{topic_id}/")
                    or discovery.is_discovery_of(topic, self.prefix, topic_id)):
                del self.desired[topic]
                self.on_broker.pop(topic, None)

    def is_availability(self, topic: str) -> bool:
        return topic.startswith(f"{self.base}/") and topic.endswith("/availability")

    def served_elsewhere(self, topic: str) -> str | None:
        """The client id of another bridge that said ``online`` for this inverter since
        this one did (MQTT 5), else None."""
        signer = self.signed.get(topic)
        return signer if signer is not None and signer != self.client_id else None

    def other_bridges(self) -> list[str]:
        """The client ids of other bridges seen serving inverters on this broker."""
        return sorted({s for s in self.signed.values() if s != self.client_id})

    async def settle(self) -> None:
        """Publish again what another bridge contested (see :meth:`observe`)."""
        while self.contested:
            topic = self.contested.pop()
            if topic in self.desired and self.ready.is_set():
                await self._send_desired(topic)

    def claim_availability(self) -> None:
        """Inverters this bridge announced before (in a run that crashed, say) are
        ``offline`` until they answer: the broker must not keep saying ``online`` for
        them. (Another bridge's are not in ``on_broker``: see :meth:`observe`.)"""
        for topic in list(self.on_broker):
            if self.is_availability(topic):
                self.desired.setdefault(topic, OFFLINE)


def held(text: str) -> str | bytes:
    """How a retained message is kept in memory: as it is, or compressed when it is as long
    as a device's discovery (about 115 KB of JSON an inverter, kept to publish again when
    a broker loses it; a tenth of that compressed, which matters for a fleet)."""
    return zlib.compress(text.encode(), 1) if len(text) > HELD_AS_IS else text


def unheld(value: str | bytes) -> str:
    """The text of a retained message kept by :func:`held`."""
    return zlib.decompress(value).decode() if isinstance(value, bytes) else value


class Publisher:
    """One inverter's messages: availability, states, results and its discovery."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.topic_id: str | None = None  # the serial, made topic-safe
        self._online: bool | None = None
        self.context: discovery.DiscoveryContext | None = None

    @property
    def online(self) -> bool | None:
        """What this bridge said last of the inverter's availability; None before it said
        anything, and once another bridge took over an inverter it said was online."""
        return None if self._online and self.released else self._online

    @online.setter
    def online(self, value: bool | None) -> None:
        self._online = value

    @property
    def released(self) -> bool:
        """Another bridge serves the inverter now (:meth:`Broker.release`)."""
        return self.topic_id in self.broker.released

    def topic(self, leaf: str) -> str:
        assert self.topic_id is not None
        return f"{self.broker.base}/{self.topic_id}/{leaf}"

    async def availability(self, online: bool) -> None:
        """Say whether the inverter is online. An inverter another bridge took over is
        this one's again once it is online here: announced again, naming this bridge."""
        self.online = online
        if self.topic_id is None:
            return
        topic = self.topic("availability")
        if not online and (other := self.broker.served_elsewhere(topic)) is not None:
            log.info("not publishing offline: another bridge serves this inverter now",
                     topic=quote(topic), other=quote(other))
            self.broker.release(self.topic_id)
            return
        regained = online and self.released
        self.broker.released.discard(self.topic_id)
        await self.broker.publish(topic, ONLINE if online else OFFLINE)
        if regained:
            await self.reconcile()

    async def state(self, group: str, payload: Mapping[str, Any]) -> None:
        if not self.released:  # else the other bridge's states are the inverter's
            await self.broker.publish(self.topic(group), dict(payload))

    async def result(self, body: dict[str, Any], properties: Properties | None) -> None:
        """A write's result: on ``set/result``, and on its MQTT 5 response topic."""
        if self.topic_id is None:
            return
        await publish_result(self.broker, self.topic_id, body, properties)

    async def announce(self, context: discovery.DiscoveryContext) -> None:
        """Offer this inverter's entities (again, when something about them changed)."""
        if context == self.context:
            return
        self.context = context
        if self.broker.ready.is_set():
            await self.reconcile()

    async def reconcile(self) -> None:
        """Bring the broker's discovery for this inverter in line with what is offered."""
        if self.context is None or self.released:
            return
        found = {topic: unheld(value) for topic, value
                 in discovery.owned_topics(self.context, self.broker.on_broker).items()}
        if not self.settings.homeassistant.discovery:  # turned off: take back what is there
            plan = [(t, "") for t in found]
        else:
            plan = discovery.plan(self.context, self.settings.homeassistant.device_discovery,
                                  found)
        for topic, text in plan:
            await self.broker.publish(topic, text)


def bridge_id(settings: Settings) -> str | None:
    """This bridge's id in topics: its client id, made topic-safe; None for the default
    client id (a single bridge keeps the plain ``<base>/bridge/state``)."""
    client_id = settings.mqtt.client_id
    default = type(settings.mqtt).model_fields["client_id"].default
    return None if client_id == default else discovery.topic_id(client_id)


async def publish_result(broker: Broker, topic_id: str, body: dict[str, Any],
                         properties: Properties | None) -> None:
    """A write's result: on ``<id>/set/result``, and on its MQTT 5 response topic."""
    broker.post(f"{broker.base}/{topic_id}/set/result", body)
    response_topic = getattr(properties, "ResponseTopic", None)
    if response_topic and valid_topic_name(response_topic):
        reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(properties, "CorrelationData", None)
        if correlation:
            reply.CorrelationData = correlation
        broker.post(response_topic, body, properties=reply)


def refusal(reason: str, written: bool = False) -> WriteResult:
    """The result of a write the runtime answers without applying it."""
    return WriteResult(False, error=reason, sent=written)
