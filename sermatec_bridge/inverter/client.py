"""One inverter on asyncio: a connection at a time, one request in flight, and every error
kept inside.

The inverter answers one request at a time, so every exchange (a query, a write, a
read-modify-write, the two-part register query) takes the client's lock, which is a FIFO
queue in asyncio: one request in flight, in arrival order.

Each TCP connection is a :class:`Connection`: it sends requests and matches reply frames
to the one exchange that waits, by command code; anything else that arrives (a late or
stray reply, an echo, a frame with a bad checksum, a malformed frame, garbage) is dropped
as it arrives and counted by kind in a log line at most once a minute, never with its
payload. A connection has one
teardown, :meth:`Connection.close`: the first error closes it and fails the exchange
that waits with that error. The client drops a connection after any failed or cancelled
exchange (a late reply must never reach the next caller) and opens a new one for the
next request. Whatever the inverter sends (nothing, garbage, a reply too short for its
layout) ends as an :class:`InverterError` of this inverter: nothing else leaves here.

A connection either is dialled by the client (the inverter's TCP 8899) or was opened by
the inverter itself (its cloud link, accepted by the bridge's cloud listener, which
asks who it is with :func:`identify`) and is handed over with
:meth:`InverterClient.attach`. On such a link the inverter may speak RC4-encrypted
frames: the connection then encrypts every request.

What the client does (identify, retry, decode) is written once in :mod:`.core`, for this
client and the command line's blocking one; this module carries its steps out on asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, Self

from ..log import Tally
from ..protocol import frame, tables
from ..protocol.codec import Reading
from ..protocol.model import Command
from ..protocol.tables import REGISTER_QUERY
from .core import (
    Ask,
    Awaited,
    ClientCore,
    ConnectionCore,
    Identity,
    InverterBusy,
    InverterError,
    InverterTimeout,
    InverterUnreachable,
    MalformedReply,
    NotOffered,
    Open,
    Plan,
    Run,
    State,
    T,
    ask_identity,
    command_of,
    query_of,
    refuse_unless_offered,
    register_query_parts,
)

__all__ = [
    "Connection",
    "Identity",
    "InverterBusy",
    "InverterClient",
    "InverterError",
    "InverterTimeout",
    "InverterUnreachable",
    "MalformedReply",
    "NotOffered",
    "Session",
    "State",
    "identify",
    "register_query_parts",
]


# --------------------------------------------------------------------------------------
# One TCP connection
# --------------------------------------------------------------------------------------


class _Awaited(Awaited):
    """The reply frames one exchange waits for, and the future that gets them."""

    def __init__(self, codes: tuple[int, ...], accept: Callable[[frame.Frame], bool] | None,
                 future: asyncio.Future[list[frame.Frame]]) -> None:
        super().__init__(codes, accept)
        self.future = future

    def offer(self, item: frame.Frame) -> bool:
        if self.future.done() or not super().offer(item):
            return False
        if self.done:
            self.future.set_result(self.frames)
        return True


class Connection(ConnectionCore):
    """One TCP connection to an inverter on asyncio: requests out, the awaited replies in.

    It does not care how its byte stream was opened: :class:`InverterClient` dials the
    inverter, or a listener accepts a stream that the inverter opened to it
    (``dialled_in``). A task reads all the time, so a hang-up closes the connection as it
    happens, and :attr:`closed` is set.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 peer: str, logger: Any,
                 on_bad_frame: Callable[[frame.FrameError], None] | None = None,
                 dialled_in: bool = False, dropped: Tally | None = None) -> None:
        super().__init__(peer=peer, logger=logger, on_bad_frame=on_bad_frame,
                         dialled_in=dialled_in, dropped=dropped)
        self.closed = asyncio.Event()  # set by close()
        self._writer = writer
        self._awaited: _Awaited | None = None
        self._reader = asyncio.create_task(self._read(reader), name=f"inverter {peer}")

    def _shut(self, error: InverterError) -> None:
        self.closed.set()
        awaited = self._awaited
        if awaited is not None and not awaited.future.done():
            awaited.future.set_exception(error)
        self._writer.close()
        if self._reader is not asyncio.current_task():
            self._reader.cancel()

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
        awaited = _Awaited(replies, accept, asyncio.get_running_loop().create_future())
        with self._waiting(awaited, request, timeout):
            async with asyncio.timeout(timeout):
                self._writer.write(self._encode(request))
                await self._writer.drain()
                return await awaited.future if replies else []

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(4096):
                self._feed(data)
            self.close(self._ended())
        except OSError as exc:
            self.close(self._lost(exc))
        except Exception as exc:  # never an exception nobody retrieves
            self.close(InverterError(f"reading from {self.peer} failed: {exc!r}"))


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------


async def carry_out(plan: Plan[T],
                    opened: Callable[[], Awaitable[Connection]] | None = None) -> T:
    """Carry ``plan`` out on asyncio; each step's outcome, or its error, goes back in.
    ``opened`` gives the new connection a plan asks for (:class:`~.core.Open`)."""
    run = Run(plan)
    while (step := run.next()) is not None:
        try:
            if isinstance(step, Ask):
                assert isinstance(step.connection, Connection)
                run.outcome = await step.connection.exchange(
                    step.request, step.replies, step.timeout, step.accept)
            elif isinstance(step, Open):
                assert opened is not None
                run.outcome = await opened()
            else:
                await asyncio.sleep(step.seconds)
        except BaseException as exc:  # the plan decides; a cancel it raises again
            run.error = exc
    return run.result


async def identify(connection: Connection,
                   timeout: float,  # noqa: ASYNC109 (each try's own deadline)
                   rc4_first: bool = False) -> Identity:
    """Who opened ``connection`` (an inverter dialling in); see :func:`~.core.ask_identity`."""
    return await carry_out(ask_identity(connection, timeout, rc4_first))


class InverterClient(ClientCore[Connection]):
    """An inverter at ``host:port``. Use ``async with`` or :meth:`connect` / :meth:`close`.

    With ``dialled_in`` the client never dials: the inverter opens its connections itself
    (its cloud link) and a listener hands each one over, identified, with :meth:`attach`;
    a new one replaces the one before. The client then waits for a connection as it
    would wait for one to open (at most ``timeout`` seconds). The settings are
    :class:`~.core.ClientCore`'s.
    """

    def __init__(self, host: str, port: int = 8899, **settings: Any) -> None:
        super().__init__(host, port, **settings)
        self._lock = asyncio.Lock()
        self._next_dial = asyncio.Event()  # set (and replaced) when attach() hands one over

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connection(self) -> Connection | None:
        """The current connection, open or not (None before the first)."""
        return self._connection

    # ----------------------------------------------------------------------------------
    # Connections
    # ----------------------------------------------------------------------------------

    async def connect(self) -> Identity:
        """Open the connection (retrying with backoff) and read the identity (0x98)."""
        async with self._lock:
            await self._run(self._ready())
        assert self.identity is not None
        return self.identity

    async def close(self) -> None:
        async with self._lock:
            connection = self._connection
            self._closing()
            if connection is not None:
                await connection.wait_closed()

    def attach(self, connection: Connection, identity: Identity) -> None:
        """Use ``connection``, which the inverter opened and a listener identified, from
        now on. The connection before it is closed: an exchange waiting on it fails (and
        may be sent again, on this one)."""
        self._attach(connection, identity)
        self._next_dial.set()
        self._next_dial = asyncio.Event()

    async def next_dial(self) -> None:
        """Wait until :meth:`attach` hands over the next connection."""
        await self._next_dial.wait()

    async def _run(self, plan: Plan[T]) -> T:
        return await carry_out(plan, self._opened)

    async def _opened(self) -> Connection:
        """A new connection: dialled, or the next one the inverter opens (attached)."""
        async with asyncio.timeout(self.timeout):
            if self.dialled_in:
                await self.next_dial()
                assert self._connection is not None
                return self._connection
            reader, writer = await asyncio.open_connection(self.host, self.port)
        return Connection(reader, writer, peer=self.where, logger=self.log,
                          on_bad_frame=self._bad_frame, dropped=self.dropped)

    def _require_slot(self) -> None:
        if not self._lock.locked():
            raise RuntimeError("an exchange outside a queue slot: use InverterClient.session()")

    # ----------------------------------------------------------------------------------
    # Inside a queue slot (what a Session is made of)
    # ----------------------------------------------------------------------------------

    async def exchange(self, command: Command, payload: bytes = b"", *,
                       retries: int | None = None) -> list[Reading]:
        """Inside a slot: one request and its decoded replies (none for a write); see
        :meth:`~.core.ClientCore._exchange`."""
        self._require_slot()
        return await self._run(self._exchange(command, payload, retries))

    async def send_settings(self, command: Command | int, values: Mapping[str, Any],
                            only: Collection[str] | None = None) -> None:
        """Inside a slot: a settings write; see :meth:`~.core.ClientCore._write`."""
        self._require_slot()
        await self._run(self._write(command, values, only))

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
        command = command_of(request.command)
        self._require_slot()
        await self._run(self._ready())
        refuse_unless_offered(command, self.version)
        expect = () if command.is_write else tables.replies(command, self.version)
        replies = await self._run(self._attempt(command, request, expect))
        self._after(command)
        return [replace(reply, rc4=request.rc4) for reply in replies]

    async def relay_register_query(self, part1: frame.Frame, part2: frame.Frame) -> frame.Frame:
        """A client's whole 0xbb exchange in this slot; the reply frame to part 2.

        Once part 1 is written, part 2 is written too, even if the caller is cancelled.
        """
        self._require_slot()
        await self._run(self._ready())
        refuse_unless_offered(REGISTER_QUERY, self.version)
        connection = self._connection
        assert connection is not None
        task = asyncio.ensure_future(self._run(self._register_pair(part1, part2)))
        try:
            return replace(await asyncio.shield(task), rc4=part2.rc4)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await task  # part 2 goes out before the slot is released
            # that connection only: the inverter may have dialled in again meanwhile
            self._lose(connection, InverterError("register query abandoned"))
            raise

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
            await self._run(self._ready())
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
            return self._registers(reply)


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
        return await self.client.exchange(query_of(command), retries=retries)

    async def write(self, command: Command | int, values: Mapping[str, Any],
                    only: Collection[str] | None = None) -> None:
        """Send a settings write; ``only``: the settings to check against the tables'
        limits (the others are kept as read), all of them when None."""
        await self.client.send_settings(command, values, only)

    async def relay(self, request: frame.Frame) -> list[frame.Frame]:
        """A client's request sent as it is; its reply frames as the inverter sent them."""
        return await self.client.relay(request)

    async def relay_register_query(self, part1: frame.Frame, part2: frame.Frame) -> frame.Frame:
        """A client's whole 0xbb exchange; the reply frame to part 2."""
        return await self.client.relay_register_query(part1, part2)
