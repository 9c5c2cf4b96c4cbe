"""One inverter at run time: its poll schedule, its commands, its availability.

The runtime owns the inverter's client and takes turns: a due poll group, then one
command from the intake, then the next due group, and so on. Nothing else talks to the
inverter, so the client's one-request-in-flight rule holds and a storm of writes cannot
starve the live values.

A poll publishes what its queries returned. A query that gets no answer (after
``inverter.retries`` more tries) leaves its values null, and the group is still
published; at the group's next poll that query is sent once, so a query the inverter
never answers costs its group one reply wait per interval and nothing else. How long a
reply is waited for is learnt from the inverter's round trips (:mod:`..inverter.timing`).

Availability follows polls, not single requests: ``online`` once a poll gets answers,
``offline`` after :data:`OFFLINE_AFTER` polls in a row got none (whether or not the
inverter was known not to answer those queries) or the inverter could not be reached. Its
identity alone is no answer: a connection it answers with its identity breaks a row of
polls that could not reach it, not a row of polls it did not answer, and a poll that
brings only the identity (the system group where 0xa1 goes unanswered) changes nothing.
A group whose poll got no answer keeps its own interval; when the inverter comes back, the
other groups are read again at once. An inverter that cannot be reached, or is offline
and answers nothing usable (no answer, or replies that do not fit the tables), is tried
again after 1, 2, 4 ... seconds, at most every :data:`RECONNECT_MAX` seconds.

An inverter that dials in (``inverter.serial``, station mode: its cloud link) is the same
runtime over another kind of connection: the cloud listener identifies each connection
it accepts and hands it over with :meth:`InverterRuntime.attach`, which replaces the one
before. A poll that finds no connection waits up to ``inverter.timeout`` for the next
dial (the inverter dials again every second), so a link that drops and comes back
between two polls costs nothing; an inverter that stays away fails its polls and goes
offline as one that cannot be reached does. Requests go out in the encoding the
inverter speaks on its link (plain or RC4).

Interfaces for other parts of the bridge (the MQTT dispatcher, the app proxy, the
cloud listener and relay):

- :meth:`InverterRuntime.exchange` runs a job with a client :class:`Session` in one
  queue slot, taking its turn with the polls and writes;
- :meth:`InverterRuntime.attach` hands over a connection the inverter opened;
- :meth:`InverterRuntime.refresh` makes poll groups due now;
- :meth:`InverterRuntime.submit` queues a settings write (a :class:`WriteCommand`);
- :meth:`InverterRuntime.stop` answers what is queued and ends the loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from paho.mqtt.properties import Properties

from .. import __version__
from ..backoff import backoff
from ..config import InverterSettings, Settings
from ..inverter.client import (
    Connection,
    Identity,
    InverterBusy,
    InverterClient,
    InverterError,
    InverterTimeout,
    MalformedReply,
    Session,
)
from ..protocol import codec
from ..protocol.codec import Reading
from ..protocol.model import Command as Query
from . import discovery, metrics, schedules
from .groups import BY_KEY, GROUPS
from .intake import STOPPING, Command, Intake, Refusal
from .publisher import Broker, Publisher, bridge_id, quote, refusal
from .schedule import Scheduler
from .state import EnergyGuard, derived_fields, is_published, state_payload
from .writes import Writer, WriteResult

log = structlog.get_logger(__name__)

T = TypeVar("T")

COMMAND_DEADLINE = 30.0  # seconds a write may wait for its turn before it is "expired"
STOP_GRACE = 2.0  # seconds a running poll or write may take to finish at shutdown
OFFLINE_AFTER = 2  # polls in a row without an answer (or failed connects) before "offline"
RECONNECT_FIRST, RECONNECT_MAX = 1.0, 60.0  # seconds between tries to reach the inverter
RETRY_PAUSE = 0.1  # seconds (about) before a request that got no answer is sent again
IDENTITY = 0x98  # asked on every new connection: its answer alone shows no working inverter


class NoTurn(InverterError):
    """The inverter's queue gave a request no turn: its room in the intake was full, or
    its turn did not come in time. Nothing of it reached the inverter."""


@dataclass(eq=False, kw_only=True)
class WriteCommand(Command):
    """A settings write from MQTT, parsed; answered on ``set/result``."""

    request: dict[str, Any]
    key: str | None = None  # set/<key>, or None for set
    properties: Properties | None = None
    topic_id: str = ""  # the inverter it was addressed to


@dataclass(eq=False, kw_only=True)
class ExchangeCommand(Command):
    """A job of another part of the bridge (the app proxy), run with a client session."""

    lane = "exchanges"  # their own room in the intake: never the room of MQTT writes
    job: Callable[[Session], Awaitable[Any]]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    started: bool = False


@dataclass(eq=False, kw_only=True)
class CloudExchange(ExchangeCommand):
    """A request of the vendor cloud (``cloud.py``): a room apart from the app proxy's."""

    lane = "cloud"


class Availability:
    """Online while polls get answers; offline after ``threshold`` failures in a row.

    A failure is a poll that could not reach the inverter (or it hung up), or a *silent*
    one: the inverter was there and answered none of its queries. Its identity answer
    on a new connection breaks a row of the first kind only: an inverter that says who
    it is and nothing else has nothing to show.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = max(1, threshold)
        self.online = False
        self.failures = 0  # in a row
        self.silent = False  # the row holds a silent poll

    def success(self) -> bool:
        """Note a success; True when that makes the inverter online."""
        self.failures, self.silent = 0, False
        changed, self.online = not self.online, True
        return changed

    def answered(self) -> None:
        """It answered who it is: a row of polls that could not reach it starts again."""
        if not self.silent:
            self.failures = 0

    def failure(self, *, silent: bool = False) -> bool:
        """Note a failure; True when that makes the inverter offline."""
        self.failures += 1
        self.silent = self.silent or silent
        if self.online and self.failures >= self.threshold:
            self.online = False
            return True
        return False


def unknown_values(queries: list[Query], version: int) -> dict[str, None]:
    """Null (unknown in Home Assistant) for every value these queries would have brought,
    in each of their reply frames (0x95's 0x9d too)."""
    out: dict[str, None] = {}
    for reply in discovery.reply_commands(queries, version):
        layout = codec.layout_of(reply, version)
        for f in layout:
            if f.group is not None or is_published(f):
                out[f.group or f.key] = None
        out.update(dict.fromkeys(slot.key for slot in schedules.slots(layout, version)))
    out.update(dict.fromkeys(f.key for f in derived_fields(set(out))))
    return out


def result_body(command: WriteCommand, result: WriteResult) -> dict[str, Any]:
    """What a write's result says on ``set/result``: the result, and the topic it came on."""
    body: dict[str, Any] = result.as_json()
    if command.key is not None:
        body["topic"] = f"set/{quote(command.key)}"
    return body


class InverterRuntime:
    """One inverter: scheduler, intake, availability and publisher, taking turns."""

    def __init__(self, config: InverterSettings, settings: Settings, broker: Broker, *,
                 command_deadline: float = COMMAND_DEADLINE, start: float = 0.0) -> None:
        self.config = config
        self.settings = settings
        self.command_deadline = command_deadline
        self.log = log.bind(inverter=config.label)
        self.client = InverterClient(
            config.host or config.label, config.port, timeout=config.timeout,
            retries=config.retries, backoff=RETRY_PAUSE, connect_attempts=1,
            name=config.label, adaptive=True, dialled_in=config.dials_in,
        )
        # the vendor cloud is relayed for it (cloud.py): offer the cloud link's entity
        self.relayed = config.dials_in and settings.cloud.upstream is not None
        self.writer = Writer(self.client, min_interval=settings.writes.min_interval,
                             confirm_timeout=settings.writes.confirm_timeout)
        poll = settings.poll
        self.scheduler = Scheduler(
            {g.key: float(getattr(poll, g.interval)) for g in GROUPS}, start=start)
        self.intake = Intake()
        self.availability = Availability(OFFLINE_AFTER)
        self.unanswered: set[int] = set()  # queries that got no answer at their last poll
        self.failing: set[str] = set()  # groups whose last poll got no answer at all
        self.attempts = 0  # tries to reach the inverter that failed since it last answered
        self.publisher = Publisher(broker, settings)
        self.identity: Identity | None = None
        self.dsp_version: str | None = None
        self.guard = EnergyGuard()
        self.stats = metrics.Stats()
        self.last_poll: float | None = None
        self.last_publish: float | None = None
        self.stopping = False
        self._wake = asyncio.Event()
        self.on_identified: Callable[[InverterRuntime], Awaitable[None]] | None = None

    # ----------------------------------------------------------------------------------
    # What others see
    # ----------------------------------------------------------------------------------

    @property
    def serial(self) -> str | None:
        return self.identity.serial if self.identity else None

    @property
    def topic_id(self) -> str | None:
        return self.publisher.topic_id

    @property
    def online(self) -> bool:
        return self.availability.online

    def refresh(self, *groups: str) -> None:
        """Make these poll groups (every group when none is named) due now."""
        self.scheduler.refresh(groups or None)
        self._wake.set()

    async def submit(self, command: Command) -> None:
        """Queue a command; whatever the intake turns away is answered at once."""
        await self._refuse(self.intake.submit(command))
        self._wake.set()

    def deadline(self) -> float:
        return time.monotonic() + self.command_deadline

    async def exchange(
        self, job: Callable[[Session], Awaitable[T]],
        *, timeout: float,  # noqa: ASYNC109 (the wait for the turn times out, not the job)
        kind: type[ExchangeCommand] = ExchangeCommand,
    ) -> T:
        """Run ``job`` with a client session in one queue slot, in its turn; ``kind``
        says whose it is (each kind has its own room in the intake).

        Raises :class:`InverterError` when the inverter is offline or not identified, or
        the bridge is stopping; :class:`NoTurn` when the room of ``kind`` is full or the
        turn does not come within ``timeout`` seconds.
        """
        if self.stopping or self.intake.closed:
            raise InverterError("the bridge is stopping")
        if not self.online:
            raise InverterError(f"the inverter {self.config.label} is offline"
                                if self.identity else
                                f"the inverter {self.config.label} is not identified yet")
        command = kind(
            deadline=time.monotonic() + timeout, job=job,
            expired=f"no turn at the inverter within {timeout:g} s")
        # An answer nobody waits for any more (the caller was cancelled) is still taken,
        # so that asyncio never reports it as never retrieved.
        command.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        await self.submit(command)
        try:
            done, _ = await asyncio.wait({command.future}, timeout=timeout)
        except asyncio.CancelledError:
            if not command.started:
                command.future.cancel()  # never runs: its turn is skipped
            raise
        if not done and not command.started:
            command.future.cancel()
            raise NoTurn(command.expired)
        result: T = await command.future
        return result

    def attach(self, connection: Connection, identity: Identity) -> None:
        """The inverter dialled in: its new connection replaces the one before. One that
        was away is read again at once, with no backoff left to wait."""
        self.client.attach(connection, identity)
        if self.attempts:
            self.attempts = 0
            self.scheduler.refresh()
        self._wake.set()

    # ----------------------------------------------------------------------------------
    # The loop
    # ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take turns until :meth:`stop`: a due group, then a command, then again."""
        while not self.stopping:
            self._wake.clear()
            await self._refuse(self.intake.expire())
            worked = False
            group = self.scheduler.due()
            if group is not None:
                worked = True
                if self.client.connected or await self._connect():
                    await self._poll(group)
            if self.online and not self.stopping:
                command = self.intake.take()
                if command is not None:
                    worked = True
                    await self._run(command)
            if not worked:
                await self._sleep()

    async def _sleep(self) -> None:
        until = self.scheduler.next_due()
        deadline = self.intake.next_deadline()
        if deadline is not None:
            until = min(until, deadline)
        delay = max(0.0, until - time.monotonic())
        if delay > 0:
            try:
                async with asyncio.timeout(delay):  # not wait_for: it can lose a cancel
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Accept no more commands and answer every queued one ("stopping")."""
        self.stopping = True
        await self._refuse(self.intake.close())
        self._wake.set()

    async def crashed(self) -> None:
        """After :meth:`run` failed unexpectedly: the connection goes, the inverter is
        offline until it answers again (the service starts :meth:`run` anew)."""
        try:
            await self.client.close()
            self.availability.online = False
            if self.publisher.online is not False:
                await self.publisher.availability(False)
        except Exception:
            self.log.exception("cleaning up after a failed runtime failed")

    async def _connect(self) -> bool:
        """Connect and read the identity; on failure, wait longer before the next try."""
        try:
            identity = await self.client.connect()
        except InverterError as exc:
            await self._unreachable(exc)
            return False
        self.availability.answered()
        await self._identified(identity)
        return True

    async def _unreachable(self, exc: InverterError, where: str = "") -> None:
        """The inverter cannot be reached: no group is due before the backoff is over."""
        fields: dict[str, Any] = {"retry_in": round(self._back_off(), 1)}
        if isinstance(exc, InverterBusy) and (others := self.publisher.broker.other_bridges()):
            fields["other_bridges"] = ", ".join(others)  # one of them may hold it
        await self._failed(f"{where}{exc}", **fields)

    def _back_off(self) -> float:
        """No group is due for 1, 2, 4 ... s (at most :data:`RECONNECT_MAX`), by the tries
        that failed since the inverter last answered; the wait, in seconds."""
        self.attempts += 1
        delay = backoff(self.attempts, RECONNECT_FIRST, RECONNECT_MAX)
        self.scheduler.hold(delay)
        return delay

    async def _identified(self, identity: Identity) -> None:
        if self.identity is not None and identity.serial == self.identity.serial:
            self.identity = identity
            return
        if self.identity is not None:
            self.log.warning("another inverter answers at this address: announcing it, "
                             "and the one before as offline", serial_before=self.serial,
                             serial_now=identity.serial)
            await self.publisher.availability(False)  # retained: its controls look dead
            self.publisher.online = None
            self.guard = EnergyGuard()  # its counters are not this one's
            self.dsp_version = None
            self.unanswered.clear()
            self.failing.clear()
            self.scheduler.refresh()
        self.identity = identity
        self.publisher.topic_id = discovery.topic_id(identity.serial)
        self.log = self.log.bind(serial=identity.serial)
        if self.on_identified is not None:
            await self.on_identified(self)

    async def _poll(self, key: str) -> None:
        group = BY_KEY[key]
        started = time.monotonic()
        readings: list[Reading] = []
        missing: list[Query] = []
        known = set(self.unanswered)  # queries that got no answer before this poll
        try:
            async with self.client.session() as session:
                if self.client.identity is not None:
                    await self._identified(self.client.identity)
                for command in group.commands(session.version):
                    answer = await self._query(session, command, group.name)
                    readings += answer
                    if not answer:
                        missing.append(command)
        except InverterError as exc:  # not one query: the inverter went away
            self.scheduler.done(key)
            self.stats.poll_failures += 1
            await self._unreachable(exc, f"{group.name}: ")
            return
        self.scheduler.done(key)
        if not readings:
            self.failing.add(key)
            self.stats.poll_failures += 1
            await self._failed(f"{group.name}: none of its queries was answered",
                               silent=True, news=any(c.code not in known for c in missing))
            if not self.online:  # it answers nothing usable: asked less and less often
                self._back_off()
            return
        self.failing.discard(key)
        if any(r.command.code != IDENTITY for r in readings):
            await self._succeeded(key)
        elif not self.online:
            return  # who it is, and nothing else: no sign that it works
        self.stats.polls[key] += 1
        self.stats.poll_seconds += time.monotonic() - started
        identity = self.identity
        assert identity is not None
        for reading in readings:
            if reading.command.code == 0x0B:
                self.dsp_version = (f"{reading.values['dsp_version_high']}."
                                    f"{reading.values['dsp_version_low']}")
        self.last_poll = time.time()
        if key == "live":
            await self.publisher.announce(self.context())
        payload = state_payload(key, readings, datetime.now(UTC), self.guard,
                                battery_make=identity.battery_make)
        await self.publisher.state(key, {**unknown_values(missing, identity.version),
                                         **payload})
        if key == "live" and self.config.proxy_port is not None:
            await self.publisher.state("proxy", self.stats.proxy.state())
        if key == "live" and self.relayed:
            await self.publisher.state("cloud", self.stats.cloud.state())
        self.last_publish = time.time()

    async def _query(self, session: Session, command: Query, group: str) -> list[Reading]:
        """One query of a poll; no readings when the inverter does not answer it.

        A query that got no answer at its last poll is sent once: no retries. Raises
        :class:`InverterError` when the inverter itself is gone (hung up, not reachable,
        no answer even to its identity query).
        """
        code = command.code
        try:
            readings = await session.query(
                command, retries=0 if code in self.unanswered else None)
        except (InverterTimeout, MalformedReply) as exc:
            # MalformedReply: a reply that does not fit the tables (too short); the client
            # dropped that connection, the next query of the poll opens a new one
            if isinstance(exc, InverterBusy):
                raise  # it did not even answer who it is, on a fresh connection
            if code not in self.unanswered:
                self.unanswered.add(code)
                self.log.warning("query not answered: its values are null until it is; "
                                 "from now on it is sent once per poll", group=group,
                                 query=command.label, reason=quote(str(exc)))
            return []
        if code in self.unanswered:
            self.unanswered.discard(code)
            self.log.info("query answered again", group=group, query=command.label)
        return readings

    async def _succeeded(self, key: str) -> None:
        """A poll got answers: the inverter is online (and reachable: no more backoff)."""
        self.attempts = 0
        if self.availability.success():
            self.log.info("inverter online")
            # What was published before it went away is old: read it again now, except
            # the groups that get no answer on their own (they keep their interval).
            self.scheduler.refresh([g.key for g in GROUPS
                                    if g.key != key and g.key not in self.failing])
        if self.publisher.online is not True:
            await self.publisher.availability(True)

    async def _failed(self, reason: str, *, silent: bool = False, news: bool = True,
                      **fields: Any) -> None:
        """A poll failed (``silent``: the inverter was there and answered none of its
        queries); ``news``: not only queries known to go unanswered, worth a line."""
        was_online = self.availability.online
        went_offline = self.availability.failure(silent=silent)
        failures = self.availability.failures
        if went_offline:
            self.log.warning("inverter offline", reason=quote(reason), failures=failures,
                             **fields)
        elif failures == 1 and news:
            where = (f"{self.config.host}:{self.config.port}" if self.config.host else
                     "dials in to cloud.listen_port")
            self.log.warning("inverter not answering" if was_online or self.identity
                             else "inverter not reachable yet", reason=quote(reason),
                             host=where, **fields)
        else:
            self.log.debug("inverter still not answering", reason=quote(reason),
                           failures=failures, **fields)
        if not self.availability.online and self.publisher.online is not False:
            await self.publisher.availability(False)

    # ----------------------------------------------------------------------------------
    # Commands
    # ----------------------------------------------------------------------------------

    async def _run(self, command: Command) -> None:
        if isinstance(command, ExchangeCommand):
            await self._run_exchange(command)
        elif isinstance(command, WriteCommand):
            await self._run_write(command)

    async def _run_exchange(self, command: ExchangeCommand) -> None:
        if command.future.done():
            return  # its caller gave up waiting
        command.started = True
        try:
            async with self.client.session() as session:
                value = await command.job(session)
        except asyncio.CancelledError:
            if not command.future.done():
                command.future.set_exception(InverterError("the bridge is stopping"))
            raise
        except Exception as exc:  # the caller gets whatever its job raised
            if not command.future.done():
                command.future.set_exception(exc)
            return
        if not command.future.done():
            command.future.set_result(value)

    async def _run_write(self, command: WriteCommand) -> None:
        self.log.info("write requested", settings=quote(", ".join(sorted(command.request))))
        try:
            result = await self.writer.apply(command.request)
        except Exception as exc:  # whatever happens, the write gets its one result
            self.log.exception("write failed unexpectedly")
            result = refusal(f"failed: {quote(repr(exc))}")
        except asyncio.CancelledError:
            await self.answer(command, refusal(
                "interrupted: the bridge stopped during the write; it may have reached the "
                "inverter, check the state", written=True))
            raise
        await self.answer(command, result)
        if result.sent:
            self.refresh("settings", "live")  # show the new state at once

    async def answer(self, command: WriteCommand, result: Any) -> None:
        """Publish a write's result (a :class:`WriteResult`), count and log it."""
        self.stats.writes["ok" if result.ok else "refused"] += 1
        body = result_body(command, result)
        (self.log.info if result.ok else self.log.warning)("write result", **body)
        await self.publisher.result(body, command.properties)

    async def _refuse(self, refused: list[Refusal]) -> None:
        for command, reason in refused:
            if isinstance(command, WriteCommand):
                await self.answer(command, refusal(reason))
            elif isinstance(command, ExchangeCommand) and not command.future.done():
                command.future.set_exception(
                    InverterError(reason) if reason == STOPPING else NoTurn(reason))

    def context(self) -> discovery.DiscoveryContext:
        assert self.identity is not None
        return discovery.DiscoveryContext(
            serial=self.identity.serial,
            model=self.identity.model,
            pcu_version=self.identity.reported_version,
            version=self.identity.version,
            dsp_version=self.dsp_version,
            base_topic=self.settings.mqtt.base_topic,
            prefix=self.settings.homeassistant.prefix,
            writes_enabled=self.settings.writes.enabled,
            intervals={"live": self.settings.poll.live, "energy": self.settings.poll.energy,
                       "slow": self.settings.poll.slow},
            timeout=self.config.timeout,
            sw_version=__version__,
            proxy=self.config.proxy_port is not None,
            cloud=self.relayed,
            bridge_id=bridge_id(self.settings),
            time_platform=self.settings.homeassistant.time_platform,
            command_expiry=(math.ceil(self.command_deadline)
                            if self.settings.mqtt.protocol == "5" else None),
        )
