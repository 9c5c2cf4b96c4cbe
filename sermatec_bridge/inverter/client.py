"""One inverter: a connection at a time, one request in flight, and every error kept inside.

The inverter answers one request at a time, so every exchange (a query, a write, a
read-modify-write, the two-part register query) takes the client's lock, which is a FIFO
queue in asyncio: one request in flight, in arrival order.

Each TCP connection is a :class:`Connection`: it sends requests and matches reply frames
to the one exchange that waits, by command code; anything else that arrives (a late or
stray reply, an echo, a frame with a bad checksum) is dropped as it arrives and counted
in a log line at most once a minute, never with its payload. A connection has one
teardown, :meth:`Connection.close`: the first error closes it and fails the exchange
that waits with that error. The client drops a connection after any failed or cancelled
exchange (a late reply must never reach the next caller) and opens a new one for the
next request. Whatever the inverter sends (nothing, garbage, a reply too short for its
layout) ends as an :class:`InverterError` of this inverter: nothing else leaves here.

A connection either is dialled by the client (the inverter's TCP 8899) or was opened by
the inverter itself (its cloud link, accepted by the bridge's cloud listener) and is
handed over with :meth:`InverterClient.attach`. On such a link the inverter may speak
RC4-encrypted frames: the connection then encrypts every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

from ..log import Tally, get_logger
from ..protocol import codec, frame, tables
from ..protocol.codec import Reading
from ..protocol.model import Command, Kind
from ..protocol.tables import COMMANDS, REGISTER_QUERY, SYSTEM_INFO
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


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: somewhere in the upper half of the step."""
    import random  # here: a one-shot read from the command line never backs off

    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


# --------------------------------------------------------------------------------------
# One TCP connection
# --------------------------------------------------------------------------------------


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False)
class _Awaited:
    """The reply frames one exchange waits for: ``codes``, in this order."""

    codes: tuple[int, ...]
    accept: Callable[[frame.Frame], bool] | None
    future: asyncio.Future[list[frame.Frame]]
    frames: list[frame.Frame] = field(default_factory=list)

    def offer(self, item: frame.Frame) -> bool:
        """Take ``item`` if it is the next reply awaited; True when taken."""
        if self.future.done() or len(self.frames) >= len(self.codes):
            return False
        if not item.is_reply or item.command != self.codes[len(self.frames)]:
            return False  # an echo of our own request is no reply either
        if self.accept is not None and not self.accept(item):
            return False
        self.frames.append(item)
        if len(self.frames) == len(self.codes):
            self.future.set_result(self.frames)
        return True


class Connection:
    """One TCP connection to an inverter: requests out, the awaited reply frames in.

    It does not care how its byte stream was opened: :class:`InverterClient` dials the
    inverter, or a listener accepts a stream that the inverter opened to it
    (``dialled_in``: its frames may then be RC4-encrypted, and :attr:`rc4` says whether
    requests are). One exchange waits at a time (the client's queue slot sees to it), and
    the only frames kept are that exchange's replies: the inbox is bounded by
    construction, and a peer that sends more than it is asked costs nothing but a count.

    :meth:`close` is the only teardown: idempotent, and the first error it is given is
    the one the waiting exchange, and every later one, fails with.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 peer: str, logger: Any,
                 on_bad_frame: Callable[[frame.FrameError], None] | None = None,
                 dialled_in: bool = False) -> None:
        self.peer = peer
        self.state = State.OPEN
        self.error: InverterError | None = None  # the first one: why it closed
        self.rc4 = False  # requests go out RC4-encrypted (only on a link the inverter opened)
        self.closed = asyncio.Event()  # set by close()
        self._writer = writer
        self._awaited: _Awaited | None = None
        self._on_bad_frame = on_bad_frame
        self._dropped = Tally(logger, "inverter frames dropped")
        self._reader = asyncio.create_task(self._read(reader, frame.FrameReader(rc4=dialled_in)),
                                           name=f"inverter {peer}")

    @property
    def open(self) -> bool:
        return self.state is State.OPEN

    def close(self, error: InverterError) -> None:
        """Close the connection and fail the waiting exchange with ``error`` (the first)."""
        if self.state is State.CLOSED:
            return
        self.state, self.error = State.CLOSED, error
        self.closed.set()
        awaited = self._awaited
        if awaited is not None and not awaited.future.done():
            awaited.future.set_exception(error)
        self._writer.close()
        if self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._dropped.flush(peer=self.peer)

    async def wait_closed(self, within: float = 2.0) -> None:
        """After :meth:`close`: wait (briefly) until the socket is really closed."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(within):
                await asyncio.wait([self._reader])
                await self._writer.wait_closed()

    async def exchange(self, request: frame.Frame, replies: tuple[int, ...],
                       timeout: float,  # noqa: ASYNC109 (the exchange's own deadline)
                       accept: Callable[[frame.Frame], bool] | None = None,
                       ) -> list[frame.Frame]:
        """Send ``request`` (encrypted if :attr:`rc4`) and return its reply frames
        ``replies``, in order, as the inverter sent them.

        Raises :class:`InverterTimeout` when they do not all come within ``timeout``
        seconds (the connection stays open: the caller decides), and the connection's
        first error when it closes meanwhile.
        """
        if self.error is not None:
            raise self.error
        code = request.command
        awaited = _Awaited(replies, accept, asyncio.get_running_loop().create_future())
        self._awaited = awaited
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(replace(request, rc4=self.rc4).encode())
                await self._writer.drain()
                return await awaited.future if replies else []
        except TimeoutError:
            what = f"no reply 0x{replies[0]:02x}" if replies else f"0x{code:02x} not sent"
            raise InverterTimeout(f"{what} from {self.peer} within {timeout:g} s") from None
        except OSError as exc:
            error = InverterUnreachable(f"lost the inverter at {self.peer}: {exc}")
            self.close(error)
            raise self.error or error from exc
        finally:
            self._awaited = None

    async def _read(self, reader: asyncio.StreamReader, frames: frame.FrameReader) -> None:
        try:
            while data := await reader.read(4096):
                for item in frames.feed(data):
                    self._received(item)
            self.close(InverterUnreachable(f"the inverter at {self.peer} hung up"))
        except OSError as exc:
            self.close(InverterUnreachable(f"lost the inverter at {self.peer}: {exc}"))
        except Exception as exc:  # never an exception nobody retrieves
            self.close(InverterError(f"reading from {self.peer} failed: {exc!r}"))

    def _received(self, item: frame.Frame | frame.FrameError) -> None:
        if isinstance(item, frame.FrameError):
            if self._on_bad_frame is not None:
                self._on_bad_frame(item)
            self._dropped.add("bad checksum", peer=self.peer, last=str(item))
            return
        awaited = self._awaited
        if awaited is not None and awaited.offer(item):
            return
        # Never the payload: a late 0xb1 reply carries the router password.
        kind = "reply" if item.is_reply else "request" if item.is_request else "frame"
        self._dropped.add(f"unexpected {kind} 0x{item.command:02x}", peer=self.peer)


async def identify(connection: Connection, timeout: float, rc4_first: bool = False,  # noqa: ASYNC109
                   ) -> Identity:
    """Who opened ``connection`` (an inverter dialling in): its answer to 0x98.

    The inverter speaks plain or RC4-encrypted frames on its cloud link and leaves the
    other kind unanswered, so 0x98 goes out plain, then, if that gets no answer within
    ``timeout`` seconds, encrypted (``rc4_first``: the other way round). The connection
    then speaks what the answer was in (:attr:`Connection.rc4`). Raises
    :class:`InverterTimeout` when neither is answered, and what the connection raises
    when it breaks.
    """
    for rc4 in (rc4_first, not rc4_first):
        connection.rc4 = rc4
        try:
            (reply,) = await connection.exchange(frame.Frame(0x98), (0x98,), timeout)
        except InverterTimeout:
            continue
        connection.rc4 = reply.rc4  # a late answer to the first try counts too
        try:
            return Identity.from_reading(codec.decode_payload(0x98, 0, reply.payload))
        except (codec.CodecError, KeyError, TypeError, ValueError) as exc:
            raise MalformedReply(f"malformed reply 0x98 from {connection.peer} "
                                 f"({len(reply.payload)} bytes): {exc}") from None
    raise InverterTimeout(f"no reply 0x98 (the identity query) from {connection.peer}, "
                          f"plain or RC4, within {timeout:g} s each")


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------


class InverterClient:
    """An inverter at ``host:port``. Use ``async with`` or :meth:`connect` / :meth:`close`.

    With ``dialled_in`` the client never dials: the inverter opens its connections itself
    (its cloud link) and a listener hands each one over, identified, with :meth:`attach`;
    a new one replaces the one before. The client then waits for a connection as it
    would wait for one to open (at most ``timeout`` seconds), and ``host`` only names the
    inverter in messages.
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
        dialled_in: bool = False,
        timer: ReplyTimer | None = None,
    ) -> None:
        """``identity``: who the inverter is, if known (the CLI caches it); the first
        connection then skips the identity query. ``timer``: how long to wait for each
        reply (learnt from the round trips); unset, always ``timeout``."""
        self.host, self.port = host, port
        self.dialled_in = dialled_in
        self._next_dial = asyncio.Event()  # set (and replaced) when attach() hands one over
        self.timeout = timeout
        self.timer = timer or ReplyTimer.fixed(timeout)
        self.retries = retries
        self.backoff, self.backoff_max = backoff, backoff_max
        self.connect_attempts = connect_attempts
        self.identity: Identity | None = None
        self._known = identity
        self.log = log.bind(inverter=name or self.where)
        self._lock = asyncio.Lock()
        self._connection: Connection | None = None
        self.reconnects = 0
        self.last_bad_frame: frame.FrameError | None = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def where(self) -> str:
        return self.host if self.dialled_in else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.open

    @property
    def connection(self) -> Connection | None:
        """The current connection, open or not (None before the first)."""
        return self._connection

    @property
    def version(self) -> int:
        return self.identity.version if self.identity else 0

    def reply_timeout(self, command: Command) -> float:
        """Seconds an exchange of ``command`` may take: read here for every exchange."""
        return self.timer.timeout()

    # ----------------------------------------------------------------------------------
    # Connections
    # ----------------------------------------------------------------------------------

    async def connect(self) -> Identity:
        """Open the connection (retrying with backoff) and read the identity (0x98)."""
        async with self._lock:
            await self._ready()
        assert self.identity is not None
        return self.identity

    async def close(self) -> None:
        async with self._lock:
            connection = self._connection
            self._drop(InverterUnreachable(f"the connection to {self.where} was closed"))
            if connection is not None:
                await connection.wait_closed()

    def _drop(self, error: InverterError) -> None:
        """The client's one teardown: close the connection, forget it and the identity.

        Synchronous, so it is safe while the caller is being cancelled; a connection
        whose exchange failed or was abandoned never serves another one.
        """
        connection, self._connection, self.identity = self._connection, None, None
        if connection is not None:
            connection.close(error)

    def _lose(self, connection: Connection, error: InverterError) -> None:
        """Close ``connection`` after its exchange failed; forget it only if it is still
        the current one (the inverter may have dialled in again meanwhile)."""
        if connection is self._connection:
            self._drop(error)
        else:
            connection.close(error)

    def attach(self, connection: Connection, identity: Identity) -> None:
        """Use ``connection``, which the inverter opened and a listener identified, from
        now on. The connection before it is closed: an exchange waiting on it fails (and
        may be sent again, on this one)."""
        old, self._connection, self.identity = self._connection, connection, identity
        if old is not None and old is not connection:
            old.close(InverterUnreachable(f"the inverter {self.where} dialled in again: "
                                          "its new connection replaces this one"))
        self.reconnects += 1
        self._next_dial.set()
        self._next_dial = asyncio.Event()

    async def next_dial(self) -> None:
        """Wait until :meth:`attach` hands over the next connection."""
        await self._next_dial.wait()

    async def _ready(self) -> Connection:
        """The open, identified connection; one is opened when there is none."""
        if self._connection is not None and self._connection.open and self.identity:
            return self._connection
        attempt = 0
        while True:
            attempt += 1
            # What is left of an earlier connection goes first: the module serves one client.
            self._drop(InverterUnreachable(f"reconnecting to {self.where}"))
            try:
                await self._open()
                if self.identity is None:  # a handed-over connection comes identified
                    self.identity = self._known or await self._identify()
                self._known = None  # a reconnection asks again
            except asyncio.CancelledError:
                self._drop(InverterError("connect cancelled"))
                raise
            except InverterError as exc:
                self._drop(exc)
                if self.connect_attempts is not None and attempt >= self.connect_attempts:
                    raise
                delay = self._delay(attempt)
                self.log.warning("connect failed, retrying", error=str(exc),
                                 retry_in=round(delay, 1))
                await asyncio.sleep(delay)
                continue
            self.log.info("connected", serial=self.identity.serial,
                          pcu=self.identity.reported_version, model=self.identity.model)
            assert self._connection is not None
            return self._connection

    async def _open(self) -> None:
        """A new connection: dialled, or (``dialled_in``) the next one handed over."""
        if self.dialled_in:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.next_dial()
            except TimeoutError:
                raise InverterUnreachable(f"the inverter {self.where} has not dialled in "
                                          f"(waited {self.timeout:g} s)") from None
            return
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise InverterUnreachable(f"cannot reach the inverter at {self.where}: no answer "
                                      f"within {self.timeout:g} s") from None
        except OSError as exc:
            raise InverterUnreachable(f"cannot reach the inverter at {self.where}: "
                                      f"{exc.strerror or exc}") from exc
        self.reconnects += 1
        self._connection = Connection(reader, writer, peer=self.where, logger=self.log,
                                      on_bad_frame=self._bad_frame)

    def _bad_frame(self, error: frame.FrameError) -> None:
        self.last_bad_frame = error  # the CLI says why nothing usable came

    async def _identify(self) -> Identity:
        """Read 0x98 on the new connection, asking up to ``1 + retries`` times.

        A try that gets no answer leaves the stream unusable (its reply may still come),
        so each further try opens a fresh connection. No answer at all, on a connection
        the inverter accepted, means it serves someone else: :class:`InverterBusy`.
        """
        attempt = 0
        bad_before = self.last_bad_frame
        while True:
            attempt += 1
            try:
                (reply,) = await self._attempt(SYSTEM_INFO, frame.Frame(0x98), (0x98,))
            except (InverterTimeout, InverterUnreachable) as exc:
                if attempt > self.retries:
                    # Frames that came but were broken are no sign of another client.
                    if isinstance(exc, InverterTimeout) and self.last_bad_frame is bad_before:
                        raise InverterBusy(
                            f"connected to {self.where} but the inverter does not answer: "
                            f"no reply 0x98 (the identity query) within "
                            f"{self.reply_timeout(SYSTEM_INFO):g} s, {attempt} tries; it is "
                            "probably busy with another client (the vendor app, or another "
                            "bridge?)"
                        ) from exc
                    raise
                self.log.warning("identity query failed, retrying", error=str(exc),
                                 attempt=attempt)
                await asyncio.sleep(self._delay(attempt))
                await self._open()
                continue
            try:
                return Identity.from_reading(self._decode(reply, 0))
            except (KeyError, TypeError, ValueError) as exc:
                error = MalformedReply(f"malformed reply 0x98 from {self.where} "
                                       f"({len(reply.payload)} bytes): {exc!r}")
                self._drop(error)
                raise error from None

    def _delay(self, attempt: int) -> float:
        return backoff(attempt, self.backoff, self.backoff_max)

    # ----------------------------------------------------------------------------------
    # Exchanges (the caller holds the lock)
    # ----------------------------------------------------------------------------------

    async def _attempt(self, command: Command, request: frame.Frame, replies: tuple[int, ...],
                       accept: Callable[[frame.Frame], bool] | None = None,
                       ) -> list[frame.Frame]:
        """One exchange on the current connection; a failure or a cancel drops it."""
        connection = self._connection
        if connection is None or not connection.open:
            raise InverterUnreachable(f"not connected to {self.where}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answer = await connection.exchange(request, replies, self.reply_timeout(command),
                                               accept)
        except InverterError as exc:
            if replies and isinstance(exc, InverterTimeout):
                self.timer.unanswered()
            self._lose(connection, exc)
            raise
        except BaseException:  # cancelled: the reply may still come, to no one
            self._lose(connection, InverterError(f"{command.label} abandoned"))
            raise
        if replies:
            self.timer.answered(loop.time() - started)
        return answer

    def _decode(self, reply: frame.Frame, version: int) -> Reading:
        """A reply's values; a payload that does not fit the tables ends the connection."""
        try:
            return codec.decode_payload(reply.command, version, reply.payload)
        except codec.CodecError as exc:
            error = MalformedReply(f"malformed reply 0x{reply.command:02x} from {self.where} "
                                   f"({len(reply.payload)} bytes): {exc}")
            self._drop(error)
            raise error from None

    def _require_slot(self) -> None:
        if not self._lock.locked():
            raise RuntimeError("an exchange outside a queue slot: use InverterClient.session()")

    def _after(self, command: Command) -> None:
        """After a write that makes the inverter hang up: that connection is done."""
        if command.closes_connection:
            self._drop(InverterUnreachable(f"{command.label} makes the inverter hang up"))

    # ----------------------------------------------------------------------------------
    # Inside a queue slot (what a Session is made of)
    # ----------------------------------------------------------------------------------

    async def identify(self) -> Identity:
        """Inside a slot: who the inverter is, reconnecting first if the connection was lost."""
        self._require_slot()
        await self._ready()
        assert self.identity is not None
        return self.identity

    async def exchange(self, command: Command, payload: bytes = b"", *,
                       retries: int | None = None) -> list[Reading]:
        """Inside a slot: one request and its decoded replies (none for a write).

        Reconnects first if needed, refuses a command the PCU version lacks before sending
        it, and sends it again up to ``retries`` times (the client's, unless given), each
        time on a fresh connection. After a write that makes the inverter hang up, the
        connection is closed here too.
        """
        retries = self.retries if retries is None else retries
        self._require_slot()
        await self._ready()  # the version may be unknown after a hang-up
        _refuse_unless_offered(command, self.version)
        request = frame.Frame(command.code, payload)
        attempt = 0
        while True:
            attempt += 1
            version = self.version
            expect = () if command.is_write else tables.replies(command, version)
            try:
                replies = await self._attempt(command, request, expect)
                break
            except (InverterTimeout, InverterUnreachable) as exc:
                if attempt > retries:
                    raise
                self.log.warning("request failed, retrying", command=command.label,
                                 error=str(exc), attempt=attempt)
                await asyncio.sleep(self._delay(attempt))
                await self._ready()
        readings = [self._decode(reply, version) for reply in replies]
        self._after(command)
        return readings

    # ----------------------------------------------------------------------------------
    # Inside a queue slot: a client's raw frames, relayed (the app proxy, bridge/proxy.py)
    # ----------------------------------------------------------------------------------

    async def relay(self, request: frame.Frame) -> list[frame.Frame]:
        """Send ``request`` as it is; return its reply frames exactly as the inverter sent
        them, in the requester's encoding (plain, or RC4 like ``request``).

        One exchange, no retry: a failure drops the connection (a late reply must reach no
        one) and raises. Writes get no reply; one that makes the inverter hang up ends the
        connection here too. A command the inverter's PCU version lacks raises NotOffered.
        """
        command = _command(request.command)
        self._require_slot()
        await self._ready()
        _refuse_unless_offered(command, self.version)
        expect = () if command.is_write else tables.replies(command, self.version)
        replies = await self._attempt(command, request, expect)
        self._after(command)
        return [replace(reply, rc4=request.rc4) for reply in replies]

    async def relay_register_query(self, part1: frame.Frame, part2: frame.Frame) -> frame.Frame:
        """A client's whole 0xbb exchange in this slot; the reply frame to part 2.

        Once part 1 is written, part 2 is written too, even if the caller is cancelled.
        """
        self._require_slot()
        await self._ready()
        _refuse_unless_offered(REGISTER_QUERY, self.version)
        task = asyncio.ensure_future(self._register_pair(part1, part2))
        try:
            return replace(await asyncio.shield(task), rc4=part2.rc4)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await task  # part 2 goes out before the slot is released
            self._drop(InverterError("register query abandoned"))
            raise

    async def _register_pair(self, part1: frame.Frame, part2: frame.Frame) -> frame.Frame:
        connection = self._connection
        assert connection is not None
        timeout = self.reply_timeout(REGISTER_QUERY)
        try:
            await connection.exchange(part1, (0xBB,), timeout)
        except InverterTimeout:  # the connection stays open: part 2 still goes out
            self.log.warning("no acknowledgement of register query part 1; sending part 2")
        except InverterError:
            pass
        if not connection.open:
            self.log.error("register query part 2 could not be sent: the inverter may "
                           "stay blocked until it is power-cycled")
        try:
            (reply,) = await connection.exchange(
                part2, (0xBB,), timeout,
                accept=lambda f: len(f.payload) != 2)  # not a late acknowledgement of part 1
        except InverterError as exc:
            self._lose(connection, exc)
            raise
        return reply

    # ----------------------------------------------------------------------------------
    # Public requests
    # ----------------------------------------------------------------------------------

    async def query(self, command: Command | int) -> list[Reading]:
        """Ask a query; one decoded reading per reply frame (0x95 gives 0x95 and 0x9d)."""
        async with self.session() as session:
            return await session.query(command)

    async def write(self, command: Command | int, values: Mapping[str, Any]) -> None:
        """Send a validated settings write. Writes get no reply: read back to confirm."""
        async with self.session() as session:
            await session.write(command, values)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """Hold the queue slot for several exchanges (a read-modify-write)."""
        async with self._lock:
            await self._ready()
            yield Session(self)

    async def read_registers(self, addresses: list[int]) -> dict[int, int]:
        """The two-part register query 0xbb, both parts inside one queue slot.

        Once part 1 is written, part 2 is written too, even if part 1's acknowledgement
        times out or the caller is cancelled: a lone part 1 blocks the inverter.
        """
        part1, part2 = register_query_parts(addresses)
        async with self._lock:
            reply = await self.relay_register_query(frame.Frame(0xBB, part1),
                                                    frame.Frame(0xBB, part2))
            reading = self._decode(reply, self.version)
        return {int(r["address"]): int(r["value"]) for r in reading.values["registers"]}


class Session:
    """Exchanges inside one queue slot; get one from :meth:`InverterClient.session`."""

    def __init__(self, client: InverterClient) -> None:
        self.client = client

    @property
    def version(self) -> int:
        return self.client.version

    async def query(self, command: Command | int, *,
                    retries: int | None = None) -> list[Reading]:
        """Ask a query; ``retries``: how often to ask again (the client's, unless given)."""
        cmd = _command(command)
        if cmd.kind is not Kind.QUERY:
            raise NotOffered(f"{cmd.label} ({cmd.name}) is a {cmd.kind.value} command, "
                             "not a query")
        return await self.client.exchange(cmd, retries=retries)

    async def write(self, command: Command | int, values: Mapping[str, Any],
                    only: Collection[str] | None = None) -> None:
        """Send a settings write; ``only``: the settings to check against the tables'
        limits (the others are kept as read), all of them when None."""
        cmd = _command(command)
        if not cmd.is_write:
            raise NotOffered(f"{cmd.label} ({cmd.name}) is not a write")
        identity = await self.client.identify()
        _refuse_unless_offered(cmd, identity.version)
        await self.client.exchange(cmd, codec.build(cmd, identity.version, values, only))
        self.client.log.info("written", command=cmd.label)

    async def relay(self, request: frame.Frame) -> list[frame.Frame]:
        """A client's request sent as it is; its reply frames as the inverter sent them."""
        return await self.client.relay(request)

    async def relay_register_query(self, part1: frame.Frame, part2: frame.Frame) -> frame.Frame:
        """A client's whole 0xbb exchange; the reply frame to part 2."""
        return await self.client.relay_register_query(part1, part2)


def _refuse_unless_offered(command: Command, version: int) -> None:
    if command.layout(version) is None:
        raise NotOffered(
            f"command {command.label} ({command.name}) is not offered by PCU version {version}"
        )


def _command(command: Command | int) -> Command:
    if isinstance(command, Command):
        return command
    try:
        return COMMANDS[command]
    except KeyError:
        raise NotOffered(f"unknown command 0x{command:02x}") from None
