"""One persistent TCP connection to one inverter, with a serialized request queue.

The inverter answers one request at a time, so every exchange (a query, a write, a
read-modify-write, the two-part register query) takes the connection's lock, which is
a FIFO queue in asyncio: one request in flight, in arrival order. Replies are matched by
command code; anything else that arrives is logged and dropped. A request that times out
leaves the byte stream in an unknown state, so the client drops that connection and
opens a new one: a late reply can then never reach the next caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import structlog

from ..protocol import codec, frame, tables
from ..protocol.codec import Reading
from ..protocol.model import Command, Kind
from ..protocol.tables import COMMANDS, SYSTEM_INFO
from .timing import ReplyTimer

log = structlog.get_logger(__name__)

T = TypeVar("T")


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
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


class InverterClient:
    """An inverter at ``host:port``. Use ``async with`` or :meth:`connect` / :meth:`close`."""

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
        timer: ReplyTimer | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        # How long to wait for each reply: always ``timeout`` unless a timer learns it.
        self.timer = timer or ReplyTimer.fixed(timeout)
        self._wait = timeout  # the last wait for a reply, for messages
        self.retries = retries
        self.backoff, self.backoff_max = backoff, backoff_max
        self.connect_attempts = connect_attempts
        self.identity: Identity | None = None
        self.log = log.bind(inverter=name or f"{host}:{port}")
        self._lock = asyncio.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._inbox: asyncio.Queue[frame.Frame | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.last_bad_frame: frame.FrameError | None = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    @property
    def version(self) -> int:
        return self.identity.version if self.identity else 0

    # ----------------------------------------------------------------------------------
    # Connection
    # ----------------------------------------------------------------------------------

    async def connect(self) -> Identity:
        """Open the connection (retrying with backoff) and read the identity (0x98)."""
        async with self._lock:
            await self._ensure_connected()
        assert self.identity is not None
        return self.identity

    async def close(self) -> None:
        async with self._lock:
            await self._drop_connection()

    async def _ensure_connected(self) -> None:
        if self.connected and self.identity is not None:
            return
        attempt = 0
        while True:
            attempt += 1
            # Whatever is left of an earlier connection (one whose identity read was
            # cancelled or failed) is closed first: the Wi-Fi module serves one client.
            await self._drop_connection()
            try:
                await self._open()
                self.identity = await self._identify()
                self.log.info("connected", serial=self.identity.serial,
                              pcu=self.identity.reported_version, model=self.identity.model)
                return
            except asyncio.CancelledError:
                self._abandon()
                raise
            except (InverterError, OSError) as exc:
                await self._drop_connection()
                if self.connect_attempts is not None and attempt >= self.connect_attempts:
                    if isinstance(exc, InverterError):
                        raise
                    raise InverterUnreachable(
                        f"cannot reach the inverter at {self.host}:{self.port}: "
                        f"{exc.strerror or exc}"
                    ) from exc
                delay = self._delay(attempt)
                self.log.warning("connect failed, retrying", error=str(exc),
                                 retry_in=round(delay, 1))
                await asyncio.sleep(delay)

    async def _identify(self) -> Identity:
        """Read 0x98 on the open connection, asking up to ``1 + retries`` times.

        A try that gets no answer leaves the stream unusable (its reply may still come),
        so each further try opens a fresh connection. No answer at all, on a connection
        the inverter accepted, means it serves someone else: :class:`InverterBusy`.
        """
        attempt = 0
        bad_before = self.last_bad_frame
        while True:
            attempt += 1
            try:
                reading = (await self._exchange(SYSTEM_INFO, b"", (0x98,), 0))[0]
                return Identity.from_reading(reading)
            except (InverterTimeout, InverterUnreachable, OSError) as exc:
                await self._drop_connection()
                if attempt > self.retries:
                    # Frames that came but were broken are no sign of another client.
                    if (isinstance(exc, InverterTimeout)
                            and self.last_bad_frame is bad_before):
                        raise InverterBusy(
                            f"connected to {self.host}:{self.port} but the inverter does not "
                            f"answer: no reply 0x98 (the identity query) within "
                            f"{self._wait:g} s, {attempt} tries; it is probably busy with "
                            "another client (the vendor app, or another bridge?)"
                        ) from exc
                    raise
                self.log.warning("identity query failed, retrying", error=str(exc),
                                 attempt=attempt)
                await asyncio.sleep(self._delay(attempt))
                await self._open()

    def _delay(self, attempt: int) -> float:
        return backoff(attempt, self.backoff, self.backoff_max)

    async def _open(self) -> None:
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
        except TimeoutError as exc:
            raise InverterUnreachable(
                f"cannot reach the inverter at {self.host}:{self.port}: "
                f"no answer within {self.timeout:g} s"
            ) from exc
        self._inbox = asyncio.Queue()
        self._pump = asyncio.create_task(self._read_frames(reader, self._inbox))
        self.reconnects += 1

    def _abandon(self) -> None:
        """Close the connection at once, without awaiting: safe while being cancelled."""
        self.identity = None
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _drop_connection(self) -> None:
        pump, writer = self._pump, self._writer
        self._abandon()
        if pump is not None:
            await asyncio.wait([pump])  # unlike awaiting it, never swallows our own cancel
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_frames(
        self, reader: asyncio.StreamReader, inbox: asyncio.Queue[frame.Frame | None]
    ) -> None:
        """Feed the socket into a FrameReader; None in the inbox means 'connection closed'."""
        frames = frame.FrameReader()
        try:
            while data := await reader.read(4096):
                for item in frames.feed(data):
                    if isinstance(item, frame.FrameError):
                        self.last_bad_frame = item  # the CLI says why nothing usable came
                        self.log.warning("bad frame dropped", error=str(item))
                    else:
                        inbox.put_nowait(item)
        except OSError as exc:
            self.log.warning("connection lost", error=str(exc))
        finally:
            inbox.put_nowait(None)

    # ----------------------------------------------------------------------------------
    # Exchanges (caller holds the lock)
    # ----------------------------------------------------------------------------------

    def _send(self, code: int, payload: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise InverterUnreachable(f"not connected to {self.host}:{self.port}")
        self._writer.write(frame.request(code, payload))

    def _discard_stale(self) -> None:
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is None:
                self._inbox.put_nowait(None)
                raise InverterUnreachable(f"the inverter at {self.host}:{self.port} hung up")
            self.log.warning("stray frame dropped", frame=str(item))

    def _deadline(self) -> float:
        """When the reply to what was just sent is late: the timer says how long to wait."""
        self._wait = self.timer.timeout()
        return asyncio.get_running_loop().time() + self._wait

    async def _await_frame(self, code: int, deadline: float) -> frame.Frame:
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.timer.unanswered()
                raise InverterTimeout(
                    f"no reply 0x{code:02x} from {self.host}:{self.port} "
                    f"within {self._wait:g} s"
                )
            try:
                async with asyncio.timeout(remaining):  # not wait_for: it can lose a cancel
                    item = await self._inbox.get()
            except TimeoutError:
                continue
            if item is None:
                self._inbox.put_nowait(None)
                raise InverterUnreachable(f"the inverter at {self.host}:{self.port} hung up")
            if item.command == code and item.is_reply:  # never our own request, echoed
                return item
            self.log.warning("unexpected frame dropped", expected=f"0x{code:02x}",
                             frame=str(item))

    async def _exchange(
        self, command: Command, payload: bytes, expect: tuple[int, ...], version: int
    ) -> list[Reading]:
        """Send one request and collect its replies, decoded, in order."""
        self._discard_stale()
        self._send(command.code, payload)
        assert self._writer is not None
        await self._writer.drain()
        started = asyncio.get_running_loop().time()
        deadline = self._deadline()
        readings = []
        for code in expect:
            reply = await self._await_frame(code, deadline)
            readings.append(codec.decode_payload(reply.command, version, reply.payload))
        if expect:
            self.timer.answered(asyncio.get_running_loop().time() - started)
        return readings

    async def _with_retries(self, command: Command, payload: bytes,
                            retries: int) -> list[Reading]:
        attempt = 0
        while True:
            attempt += 1
            await self._ensure_connected()
            expect = tables.replies(command, self.version) if not command.is_write else ()
            try:
                readings = await self._exchange(command, payload, expect, self.version)
            except asyncio.CancelledError:
                self._abandon()  # the reply may still come: it must not reach the next caller
                raise
            except (InverterTimeout, InverterUnreachable, OSError) as exc:
                # The stream may still carry a late reply: never reuse it.
                await self._drop_connection()
                if attempt > retries:
                    if isinstance(exc, OSError):
                        raise InverterUnreachable(
                            f"lost the inverter at {self.host}:{self.port}: {exc}"
                        ) from exc
                    raise
                self.log.warning("request failed, retrying", command=command.label,
                                 error=str(exc), attempt=attempt)
                await asyncio.sleep(self._delay(attempt))
                continue
            return readings

    def _require_slot(self) -> None:
        if not self._lock.locked():
            raise RuntimeError("an exchange outside a queue slot: use InverterClient.session()")

    # ----------------------------------------------------------------------------------
    # Inside a queue slot (what a Session is made of)
    # ----------------------------------------------------------------------------------

    async def identify(self) -> Identity:
        """Inside a slot: who the inverter is, reconnecting first if the connection was lost."""
        self._require_slot()
        await self._ensure_connected()
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
        self._require_slot()
        await self._ensure_connected()  # the version may be unknown after a hang-up
        _refuse_unless_offered(command, self.version)
        readings = await self._with_retries(
            command, payload, self.retries if retries is None else retries)
        if command.closes_connection:
            await self._drop_connection()
        return readings

    # ----------------------------------------------------------------------------------
    # Inside a queue slot: a client's raw frames, relayed (the app proxy, bridge/proxy.py)
    # ----------------------------------------------------------------------------------

    async def relay(self, request: frame.Frame) -> list[frame.Frame]:
        """Send ``request`` as it is; return its reply frames exactly as the inverter sent them.

        One exchange, no retry: a failure drops the connection (a late reply must reach no
        one) and raises. Writes get no reply; one that makes the inverter hang up ends the
        connection here too. A command the inverter's PCU version lacks raises NotOffered.
        """
        command = _command(request.command)
        self._require_slot()
        await self._ensure_connected()
        _refuse_unless_offered(command, self.version)
        expect = () if command.is_write else tables.replies(command, self.version)

        async def send_and_collect() -> list[frame.Frame]:
            self._discard_stale()
            self._write_raw(request)
            assert self._writer is not None
            await self._writer.drain()
            deadline = self._deadline()
            return [await self._await_frame(code, deadline) for code in expect]

        replies = await self._failing_cleanly(send_and_collect())
        if command.closes_connection:
            await self._drop_connection()
        return replies

    async def relay_register_query(self, part1: frame.Frame, part2: frame.Frame) -> frame.Frame:
        """A client's whole 0xbb exchange in this slot; the reply frame to part 2.

        Once part 1 is written, part 2 is written too, even if the caller is cancelled.
        """
        self._require_slot()
        await self._ensure_connected()
        _refuse_unless_offered(tables.REGISTER_QUERY, self.version)
        task = asyncio.ensure_future(self._failing_cleanly(self._register_pair(part1, part2)))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                await task  # part 2 goes out before the slot is released
            except BaseException:
                self._abandon()
            raise

    async def _register_pair(self, part1: frame.Frame, part2: frame.Frame) -> frame.Frame:
        self._discard_stale()
        self._write_raw(part1)
        try:
            assert self._writer is not None
            await self._writer.drain()
            try:
                await self._await_frame(0xBB, self._deadline())
            except InverterTimeout:
                self.log.warning("no acknowledgement of register query part 1; sending part 2")
        finally:
            if self.connected:
                self._write_raw(part2)
                assert self._writer is not None
                await self._writer.drain()
            else:
                self.log.error("register query part 2 could not be sent: the inverter may "
                                 "stay blocked until it is power-cycled")
        deadline = self._deadline()
        while True:
            reply = await self._await_frame(0xBB, deadline)
            if len(reply.payload) != 2:  # not a late acknowledgement of part 1
                return reply

    def _write_raw(self, request: frame.Frame) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise InverterUnreachable(f"not connected to {self.host}:{self.port}")
        writer.write(request.encode())

    async def _failing_cleanly(self, exchange: Awaitable[T]) -> T:
        """Await an exchange; on failure drop the connection, so a late reply reaches no one."""
        try:
            return await exchange
        except asyncio.CancelledError:
            self._abandon()
            raise
        except (InverterError, OSError) as exc:
            await self._drop_connection()
            if isinstance(exc, OSError):
                raise InverterUnreachable(
                    f"lost the inverter at {self.host}:{self.port}: {exc}"
                ) from exc
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
            await self._ensure_connected()
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
            reading = codec.decode(tables.REGISTER_QUERY, self.version, reply.payload)
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
