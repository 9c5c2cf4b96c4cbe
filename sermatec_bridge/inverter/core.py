"""What an inverter client does, apart from how its bytes travel.

Two clients talk to inverters: :class:`~.client.InverterClient` on asyncio (the bridge, the
app proxy) and :class:`~.blocking.BlockingClient` on a blocking socket (the command line's
one-shot reads, which then need not import asyncio and start an event loop: some 15 ms, a
quarter of their time). Both do the same: open a connection, learn who the inverter is,
send a request and match its reply frames, decode them, ask again on a fresh connection
when something fails, and tell an inverter busy with another client apart from one that
is unreachable. The asyncio client also serves inverters that dial in (their cloud link,
accepted by the bridge's listener): a connection handed over replaces the one before, and
may speak RC4.

That logic is written once, here, as *plans*: generators that yield the steps to carry out
on the wire (:class:`Open`, :class:`Ask`, :class:`Pause`) and are sent each step's outcome,
or have its error thrown in. A client's ``_run`` carries the steps out; that, and how its
connection (a :class:`ConnectionCore`) reads and writes, is all either client adds.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, NamedTuple, TypeVar

from ..backoff import backoff
from ..log import Tally, get_logger
from ..protocol import codec, frame, tables
from ..protocol.codec import Reading
from ..protocol.model import Command, Kind
from ..protocol.tables import COMMANDS, SYSTEM_INFO
from .timing import ReplyTimer

log = get_logger(__name__)


class InverterError(Exception):
    """Talking to the inverter failed; the message says how, in one line."""


class InverterUnreachable(InverterError):
    """The TCP connection could not be opened (refused, no route, timed out) or was lost."""


class InverterTimeout(InverterError):
    pass


class InverterBusy(InverterTimeout):
    """The connection was accepted but the inverter never answered its identity query.

    The Wi-Fi module serves one client at a time: a second client is accepted and then
    ignored, so this is what a bridge sees while the vendor app holds the inverter.
    """


class MalformedReply(InverterError):
    """A reply frame whose payload does not fit the tables (too short, a bad count)."""


class NotOffered(InverterError):
    pass


@dataclass(frozen=True)
class Identity:
    """Who the inverter is, from its 0x98 reply."""

    reported_version: int
    version: int  # the PCU version whose tables apply
    model: str
    serial: str
    battery_make: str
    reading: Reading

    @classmethod
    def from_reading(cls, reading: Reading) -> Identity:
        values = reading.values
        reported = int(values["pcu_version"])
        return cls(
            reported_version=reported,
            version=tables.effective_version(reported),
            model=str(values["model_code"]),
            serial=str(values["serial_number"]).strip() or "unknown",
            battery_make=str(values["battery_make"]),
            reading=reading,
        )


# The register query 0xbb, as this project models it (the real exchange is not public):
#   part 1: request payload = count (2 bytes)       -> inverter acknowledges with the count
#   part 2: request payload = addresses (2 bytes each) -> reply: count + (address, value) pairs
# A part 1 that is not followed by part 2 blocks the inverter until it is power-cycled.


def register_query_parts(addresses: list[int]) -> tuple[bytes, bytes]:
    """The two request payloads of a register query."""
    if not 1 <= len(addresses) <= 10:
        raise codec.SettingRefused("register_count", len(addresses), "from 1 to 10 registers")
    for address in addresses:
        if not 0 <= address <= 0xFFFF:
            raise codec.SettingRefused("address", address, "from 0 to 65535")
    part1 = len(addresses).to_bytes(2, "big")
    part2 = b"".join(a.to_bytes(2, "big") for a in addresses)
    return part1, part2


# --------------------------------------------------------------------------------------
# One TCP connection: what both clients' connections share
# --------------------------------------------------------------------------------------


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Awaited:
    """The reply frames one exchange waits for: ``codes``, in this order."""

    def __init__(self, codes: tuple[int, ...],
                 accept: Callable[[frame.Frame], bool] | None = None) -> None:
        self.codes = codes
        self.accept = accept
        self.frames: list[frame.Frame] = []

    @property
    def done(self) -> bool:
        return len(self.frames) >= len(self.codes)

    def offer(self, item: frame.Frame) -> bool:
        """Take ``item`` if it is the next reply awaited; True when taken."""
        if self.done:
            return False
        if not item.is_reply or item.command != self.codes[len(self.frames)]:
            return False  # an echo of our own request is no reply either
        if self.accept is not None and not self.accept(item):
            return False
        self.frames.append(item)
        return True


class ConnectionCore:
    """One TCP connection to an inverter, whichever client reads and writes its bytes.

    One exchange waits at a time (the client sees to it), and the only frames kept are
    that exchange's replies: anything else that comes (a late or stray reply, an echo, a
    frame with a bad checksum, a malformed or truncated frame, garbage) is dropped as it
    comes and counted by kind in a log line at most once a minute, never with its
    payload. The inbox is bounded by construction, and a peer that sends more than it is
    asked costs nothing but a count.

    A connection the inverter opened (``dialled_in``: its cloud link, which a listener
    accepted) may carry RC4-encrypted frames; they are read as plain ones are, and
    :attr:`rc4` says whether requests go out encrypted.

    :meth:`close` is the only teardown: idempotent, and the first error it is given is the
    one the waiting exchange, and every later one, fails with.
    """

    def __init__(self, *, peer: str, logger: Any,
                 on_bad_frame: Callable[[frame.FrameError], None] | None = None,
                 dialled_in: bool = False, dropped: Tally | None = None) -> None:
        """``dropped``: where what is dropped is counted; a client gives the one of its
        inverter, so that a reconnecting inverter's junk costs one line a minute, not one
        a connection. Unset: the connection's own, logged when it closes."""
        self.peer = peer
        self.state = State.OPEN
        self.error: InverterError | None = None  # the first one: why it closed
        self.rc4 = False  # requests go out RC4-encrypted (only on a link the inverter opened)
        self._awaited: Awaited | None = None
        self._on_bad_frame = on_bad_frame
        self._own_tally = dropped is None
        self._dropped = dropped or Tally(logger, "inverter frames dropped")
        self._frames = frame.FrameReader(rc4=dialled_in, on_skip=self._skipped)

    @property
    def open(self) -> bool:
        return self.state is State.OPEN

    def close(self, error: InverterError) -> None:
        """Close the connection and fail the waiting exchange with ``error`` (the first)."""
        if self.state is State.CLOSED:
            return
        self.state, self.error = State.CLOSED, error
        self._shut(error)
        if self._own_tally:
            self._dropped.flush(peer=self.peer)
        else:  # the client's: its minute may not be over
            self._dropped.tick()

    def _closed(self, error: InverterError) -> InverterError:
        """Close the connection with ``error``; the error it is closed with (the first)."""
        self.close(error)
        assert self.error is not None
        return self.error

    def _shut(self, error: InverterError) -> None:
        """Close the socket and fail the exchange that waits (the client's own part)."""
        raise NotImplementedError

    def _encode(self, request: frame.Frame) -> bytes:
        """The bytes of ``request`` in the encoding this connection speaks."""
        return (request if request.rc4 == self.rc4 else replace(request, rc4=self.rc4)).encode()

    def _feed(self, data: bytes) -> None:
        """Bytes read: each frame in them goes to the waiting exchange or is dropped."""
        for item in self._frames.feed(data):
            self._received(item)

    def _ended(self) -> InverterUnreachable:
        """The peer hung up: what it cut short is counted; the error to close with."""
        for item in self._frames.finish():
            self._received(item)
        return InverterUnreachable(f"the inverter at {self.peer} hung up")

    def _received(self, item: frame.Frame | frame.FrameError) -> None:
        if isinstance(item, frame.FrameError):
            self._bad(item, last=str(item))
            return
        awaited = self._awaited
        if awaited is not None and awaited.offer(item):
            return
        # Never the payload: a late 0xb1 reply carries the router password.
        kind = "reply" if item.is_reply else "request" if item.is_request else "frame"
        self._dropped.add(f"unexpected {kind} 0x{item.command:02x}", peer=self.peer)

    def _skipped(self, at: int, data: bytes, reason: str | None) -> None:
        """Bytes the frame reader skipped: a malformed frame when they looked like one
        (``reason`` says how it is wrong), else garbage."""
        if reason is None:
            self._dropped.add("garbage bytes", len(data), peer=self.peer)
        else:  # not said how: a malformed frame's description may quote its payload
            self._bad(frame.MalformedFrame(reason))

    def _bad(self, error: frame.FrameError, **fields: Any) -> None:
        if self._on_bad_frame is not None:
            self._on_bad_frame(error)
        self._dropped.add(error.kind, peer=self.peer, **fields)

    @contextlib.contextmanager
    def _waiting(self, awaited: Awaited, request: frame.Frame,
                 timeout: float) -> Iterator[None]:
        """Around one exchange: ``awaited`` takes its replies meanwhile, and its deadline
        passing (TimeoutError) or the socket failing become this connection's errors."""
        self._awaited = awaited
        try:
            yield
        except TimeoutError:
            what = (f"no reply 0x{awaited.codes[0]:02x}" if awaited.codes else
                    f"0x{request.command:02x} not sent")
            raise InverterTimeout(f"{what} from {self.peer} within {timeout:g} s") from None
        except OSError as exc:
            raise self._closed(self._lost(exc)) from exc
        finally:
            self._awaited = None

    def _lost(self, exc: OSError) -> InverterUnreachable:
        return InverterUnreachable(f"lost the inverter at {self.peer}: {exc}")


# --------------------------------------------------------------------------------------
# The steps a plan asks its client to carry out (records, not dataclasses: those take a
# one-shot read 1 ms to make)
# --------------------------------------------------------------------------------------


class Open:
    """A new connection; sent back: it. A client dials ``host:port`` (raising TimeoutError
    or OSError as the socket does); one of an inverter that dials in waits (raising
    TimeoutError) until the inverter has opened one and it was handed over
    (:meth:`ClientCore._attach`)."""


class Ask(NamedTuple):
    """On ``connection``, send ``request`` and wait up to ``timeout`` seconds for the reply
    frames ``replies`` (none for a write); sent back: them. Raises the connection's
    InverterError."""

    connection: ConnectionCore
    request: frame.Frame
    replies: tuple[int, ...]
    timeout: float
    accept: Callable[[frame.Frame], bool] | None = None


class Pause(NamedTuple):
    """Wait ``seconds`` (between tries)."""

    seconds: float


Step = Open | Ask | Pause
T = TypeVar("T")
Plan = Generator[Step, Any, T]
C = TypeVar("C", bound=ConnectionCore)


class Run(Generic[T]):
    """A plan being carried out: :meth:`next` gives each step, after the previous step's
    :attr:`outcome` (or :attr:`error`) went back into the plan; None when it is done, its
    value then in :attr:`result`."""

    def __init__(self, plan: Plan[T]) -> None:
        self._plan = plan
        self.outcome: Any = None
        self.error: BaseException | None = None

    def next(self) -> Step | None:
        outcome, error, self.outcome, self.error = self.outcome, self.error, None, None
        try:
            return self._plan.throw(error) if error is not None else self._plan.send(outcome)
        except StopIteration as done:
            self.result: T = done.value
            return None


# --------------------------------------------------------------------------------------
# The client's logic
# --------------------------------------------------------------------------------------


class ClientCore(Generic[C]):
    """An inverter at ``host:port``: what a client knows of it, and the plans it runs.

    ``identity``: who the inverter is, if known (the CLI caches it); the first connection
    then skips the identity query. ``adaptive``: the wait for each reply follows the round
    trips the inverter shows, with ``timeout`` as its cap; unset, always ``timeout``.
    ``dialled_in``: the client never dials; the inverter opens its connections itself and
    a listener hands each one over, identified (:meth:`_attach`), and ``host`` only names
    the inverter in messages.
    """

    def __init__(
        self,
        host: str,
        port: int = 8899,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        connect_attempts: int | None = 1,
        name: str | None = None,
        identity: Identity | None = None,
        adaptive: bool = False,
        dialled_in: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.dialled_in = dialled_in
        self.timeout = timeout
        self.timer = ReplyTimer(timeout) if adaptive else ReplyTimer.fixed(timeout)
        self.retries = retries
        self.backoff, self.backoff_max = backoff, backoff_max
        self.connect_attempts = connect_attempts
        self.identity: Identity | None = None
        self._known = identity
        self.log = log.bind(inverter=name or self.where)
        # what this inverter's connections drop, counted across them (ConnectionCore)
        self.dropped = Tally(self.log, "inverter frames dropped")
        self._connection: C | None = None
        self.reconnects = 0
        self.last_bad_frame: frame.FrameError | None = None

    @property
    def where(self) -> str:
        return self.host if self.dialled_in else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.open

    @property
    def version(self) -> int:
        return self.identity.version if self.identity else 0

    def _drop(self, error: InverterError) -> None:
        """The client's one teardown: close the connection, forget it and the identity.

        Synchronous, so it is safe while the caller is being cancelled; a connection
        whose exchange failed or was abandoned never serves another one.
        """
        connection, self._connection, self.identity = self._connection, None, None
        if connection is not None:
            connection.close(error)

    def _closing(self) -> None:
        """The client is closed: its connection with it, and what it counted is logged."""
        self._drop(InverterUnreachable(f"the connection to {self.where} was closed"))
        self.dropped.flush()

    def _lose(self, connection: C, error: InverterError) -> None:
        """Close ``connection`` after its exchange failed; forget it only if it is still
        the current one (the inverter may have dialled in again meanwhile)."""
        if connection is self._connection:
            self._drop(error)
        else:
            connection.close(error)

    def _attach(self, connection: C, identity: Identity | None) -> None:
        """Use ``connection`` from now on (with ``identity``, when a listener identified
        it). The connection before it is closed: an exchange waiting on it fails, and may
        be sent again on this one."""
        old, self._connection, self.identity = self._connection, connection, identity
        if old is not None and old is not connection:
            old.close(InverterUnreachable(f"the inverter {self.where} dialled in again: "
                                          "its new connection replaces this one"))
        self.reconnects += 1

    def _bad_frame(self, error: frame.FrameError) -> None:
        self.last_bad_frame = error  # the CLI says why nothing usable came

    def _delay(self, attempt: int) -> float:
        return backoff(attempt, self.backoff, self.backoff_max)

    # ----------------------------------------------------------------------------------
    # Connections
    # ----------------------------------------------------------------------------------

    def _ready(self) -> Plan[C]:
        """The open, identified connection; one is opened when there is none."""
        if self._connection is not None and self._connection.open and self.identity:
            return self._connection
        attempt = 0
        while True:
            attempt += 1
            # What is left of an earlier connection goes first: the module serves one client.
            self._drop(InverterUnreachable(f"reconnecting to {self.where}"))
            try:
                yield from self._open()
                if self.identity is None:  # one the inverter opened comes identified
                    self.identity = self._known or (yield from self._identify())
                self._known = None  # a reconnection asks again
            except InverterError as exc:
                self._drop(exc)
                if self.connect_attempts is not None and attempt >= self.connect_attempts:
                    raise
                delay = self._delay(attempt)
                self.log.warning("connect failed, retrying", error=str(exc),
                                 retry_in=round(delay, 1))
                yield Pause(delay)
                continue
            except BaseException:  # cancelled, interrupted
                self._drop(InverterError("connect cancelled"))
                raise
            self.log.info("connected", serial=self.identity.serial,
                          pcu=self.identity.reported_version, model=self.identity.model)
            assert self._connection is not None
            return self._connection

    def _open(self) -> Plan[None]:
        """A new connection, from the client's :class:`Open`: dialled, or the next one an
        inverter that dials in opens (it comes attached)."""
        try:
            connection = yield Open()
        except TimeoutError:
            raise InverterUnreachable(
                f"the inverter {self.where} has not dialled in (waited {self.timeout:g} s)"
                if self.dialled_in else
                f"cannot reach the inverter at {self.where}: no answer within "
                f"{self.timeout:g} s") from None
        except OSError as exc:
            raise InverterUnreachable(f"cannot reach the inverter at {self.where}: "
                                      f"{_reason(exc)}") from exc
        if connection is not self._connection:
            self._attach(connection, None)

    def _identify(self) -> Plan[Identity]:
        """Read 0x98 on the new connection, asking up to ``1 + retries`` times.

        A try that gets no answer leaves the stream unusable (its reply may still come),
        so each further try opens a fresh connection. No answer at all, on a connection
        the inverter accepted, means it serves someone else: :class:`InverterBusy`.
        """
        attempt = 0
        bad_before = self.last_bad_frame
        while True:
            attempt += 1
            waited = self.timer.timeout()  # this try's (a miss makes the next one longer)
            try:
                (reply,) = yield from self._attempt(SYSTEM_INFO, frame.Frame(0x98), (0x98,))
            except (InverterTimeout, InverterUnreachable) as exc:
                if attempt > self.retries:
                    # Frames that came but were broken are no sign of another client.
                    if isinstance(exc, InverterTimeout) and self.last_bad_frame is bad_before:
                        raise InverterBusy(
                            f"connected to {self.where} but the inverter does not answer: "
                            f"no reply 0x98 (the identity query) within "
                            f"{waited:g} s, {attempt} tries; it is "
                            "probably busy with another client (the vendor app, or another "
                            "bridge?)"
                        ) from exc
                    raise
                self.log.warning("identity query failed, retrying", error=str(exc),
                                 attempt=attempt)
                yield Pause(self._delay(attempt))
                yield from self._open()
                continue
            return identity_of(reply, self.where)  # a MalformedReply: _ready drops it

    # ----------------------------------------------------------------------------------
    # Exchanges (the caller holds the queue slot, where there is one)
    # ----------------------------------------------------------------------------------

    def _attempt(self, command: Command, request: frame.Frame, replies: tuple[int, ...],
                 ) -> Plan[list[frame.Frame]]:
        """One exchange on the current connection; a failure or a cancel drops it."""
        connection = self._connection
        if connection is None or not connection.open:
            raise InverterUnreachable(f"not connected to {self.where}")
        started = time.monotonic()
        try:
            answer: list[frame.Frame] = yield Ask(
                connection, request, replies, self.timer.timeout())
        except InverterError as exc:
            if replies and isinstance(exc, InverterTimeout):
                self.timer.unanswered()
            self._lose(connection, exc)
            raise
        except BaseException:  # cancelled: the reply may still come, to no one
            self._lose(connection, InverterError(f"{command.label} abandoned"))
            raise
        if replies:
            self.timer.answered(time.monotonic() - started)
        return answer

    def _decode(self, reply: frame.Frame, version: int) -> Reading:
        """A reply's values; a payload that does not fit the tables ends the connection."""
        try:
            return decode(reply, version, self.where)
        except MalformedReply as exc:
            self._drop(exc)
            raise

    def _after(self, command: Command) -> None:
        """After a write that makes the inverter hang up: that connection is done."""
        if command.closes_connection:
            self._drop(InverterUnreachable(f"{command.label} makes the inverter hang up"))

    def _exchange(self, command: Command, payload: bytes = b"",
                  retries: int | None = None) -> Plan[list[Reading]]:
        """One request and its decoded replies (none for a write).

        Reconnects first if needed, refuses a command the PCU version lacks before sending
        it, and sends it again up to ``retries`` times (the client's, unless given), each
        time on a fresh connection. After a write that makes the inverter hang up, the
        connection is closed here too.
        """
        retries = self.retries if retries is None else retries
        yield from self._ready()  # the version may be unknown after a hang-up
        refuse_unless_offered(command, self.version)
        request = frame.Frame(command.code, payload)
        attempt = 0
        while True:
            attempt += 1
            version = self.version
            expect = () if command.is_write else tables.replies(command, version)
            try:
                replies = yield from self._attempt(command, request, expect)
                break
            except (InverterTimeout, InverterUnreachable) as exc:
                if attempt > retries:
                    raise
                self.log.warning("request failed, retrying", command=command.label,
                                 error=str(exc), attempt=attempt)
                yield Pause(self._delay(attempt))
                yield from self._ready()
        readings = [self._decode(reply, version) for reply in replies]
        self._after(command)
        return readings

    def _write(self, command: Command | int, values: Mapping[str, Any],
               only: Collection[str] | None = None) -> Plan[None]:
        """A settings write, built from ``values`` and checked against the tables' limits
        (``only`` these settings, the others are kept as read; all of them when None)."""
        cmd = command_of(command)
        if not cmd.is_write:
            raise NotOffered(f"{cmd.label} ({cmd.name}) is not a write")
        yield from self._ready()
        refuse_unless_offered(cmd, self.version)
        yield from self._exchange(cmd, codec.build(cmd, self.version, values, only))
        self.log.info("written", command=cmd.label)

    def _register_pair(self, part1: frame.Frame, part2: frame.Frame) -> Plan[frame.Frame]:
        """Both parts of a 0xbb exchange on the current connection; the reply to part 2.

        Part 2 goes out whatever became of part 1's acknowledgement. The client sees to it
        that nothing cuts the plan short between the two (a shielded task, or Ctrl-C held
        back).
        """
        connection = self._connection
        assert connection is not None
        timeout = self.timer.timeout()
        try:
            yield Ask(connection, part1, (0xBB,), timeout)
        except InverterTimeout:  # the connection stays open: part 2 still goes out
            self.log.warning("no acknowledgement of register query part 1; sending part 2")
        except InverterError:
            pass
        if not connection.open:
            self.log.error("register query part 2 could not be sent: the inverter may "
                           "stay blocked until it is power-cycled")
        try:
            replies: list[frame.Frame] = yield Ask(
                connection, part2, (0xBB,), timeout,
                accept=lambda f: len(f.payload) != 2)  # not a late acknowledgement of part 1
        except InverterError as exc:
            self._lose(connection, exc)
            raise
        return replies[0]

    def _registers(self, reply: frame.Frame) -> dict[int, int]:
        """The register values in the reply to part 2 of a register query."""
        reading = self._decode(reply, self.version)
        return {int(r["address"]): int(r["value"]) for r in reading.values["registers"]}


def ask_identity(connection: C, timeout: float, rc4_first: bool = False) -> Plan[Identity]:
    """Who opened ``connection`` (an inverter dialling in): its answer to 0x98.

    The inverter speaks plain or RC4-encrypted frames on its cloud link and leaves the
    other kind unanswered, so 0x98 goes out plain, then, if that gets no answer within
    ``timeout`` seconds, encrypted (``rc4_first``: the other way round). The connection
    then speaks what the answer was in (:attr:`ConnectionCore.rc4`). Raises
    :class:`InverterTimeout` when neither is answered, and what the connection raises
    when it breaks.
    """
    for rc4 in (rc4_first, not rc4_first):
        connection.rc4 = rc4
        try:
            (reply,) = yield Ask(connection, frame.Frame(0x98), (0x98,), timeout)
        except InverterTimeout:
            continue
        connection.rc4 = reply.rc4  # a late answer to the first try counts too
        return identity_of(reply, connection.peer)
    raise InverterTimeout(f"no reply 0x98 (the identity query) from {connection.peer}, "
                          f"plain or RC4, within {timeout:g} s each")


def decode(reply: frame.Frame, version: int, peer: str) -> Reading:
    """A reply's values; MalformedReply when its payload does not fit the tables."""
    try:
        return codec.decode_payload(reply.command, version, reply.payload)
    except codec.CodecError as exc:
        raise _malformed(reply, peer, str(exc)) from None


def identity_of(reply: frame.Frame, peer: str) -> Identity:
    """Who the inverter is, from its reply to 0x98; MalformedReply when that does not fit."""
    reading = decode(reply, 0, peer)
    try:
        return Identity.from_reading(reading)
    except (KeyError, TypeError, ValueError) as exc:
        raise _malformed(reply, peer, repr(exc)) from None


def _malformed(reply: frame.Frame, peer: str, why: str) -> MalformedReply:
    return MalformedReply(f"malformed reply 0x{reply.command:02x} from {peer} "
                          f"({len(reply.payload)} bytes): {why}")


def _reason(exc: OSError) -> str:
    """Why a connection failed, in the operating system's words, whichever client tried:
    asyncio words a refused connection "Connect call failed ('10.0.0.5', 8899)", where a
    socket says "Connection refused". A resolver's error has its own words."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


def refuse_unless_offered(command: Command, version: int) -> None:
    if command.layout(version) is None:
        raise NotOffered(
            f"command {command.label} ({command.name}) is not offered by PCU version {version}"
        )


def command_of(command: Command | int) -> Command:
    if isinstance(command, Command):
        return command
    try:
        return COMMANDS[command]
    except KeyError:
        raise NotOffered(f"unknown command 0x{command:02x}") from None


def query_of(command: Command | int) -> Command:
    """The query ``command`` names; NotOffered if it is no query."""
    cmd = command_of(command)
    if cmd.kind is not Kind.QUERY:
        raise NotOffered(f"{cmd.label} ({cmd.name}) is a {cmd.kind.value} command, "
                         "not a query")
    return cmd
