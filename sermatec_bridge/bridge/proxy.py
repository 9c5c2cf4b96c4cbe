"""The app proxy: the vendor's app (or any client written for the inverter) through the bridge.

The inverter's Wi-Fi module serves one TCP client at a time, so while the bridge holds
the connection the app cannot reach the inverter. With ``inverter.proxy_port`` set the
bridge listens there and speaks the inverter's protocol: each request a client sends is
one exchange in the inverter's queue, taking turns with the bridge's own polls, and the
client gets the reply frames exactly as the inverter sent them (0x95 → 0x95 + 0x9d).
Each client is answered in order, one request at a time.

What never reaches the inverter, and gets no reply (as from an inverter that did not
understand), with a log line: bytes that do not form a valid frame, frames that are not
requests, commands the tables do not know or the inverter's PCU version lacks, writes
whose payload does not fit the tables, requests beyond a client's rate, and, with
``inverter.proxy_writes: false``, every write. A client that sends no whole request for
:attr:`Limits.idle` seconds, or does not read its replies, is disconnected.

The register query 0xbb is two requests that must reach the inverter back to back: a
part 1 not followed by its part 2 blocks the inverter until it is power-cycled. The
proxy therefore answers part 1 itself, with the acknowledgement the inverter gives (the
count, echoed; see ``inverter/client.py``), keeps it, and forwards both parts in one
queue slot only once the matching part 2 has arrived. A client that vanishes, stalls or
sends anything else in between has sent nothing to the inverter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from ..inverter.client import InverterError, NotOffered, Session
from ..protocol import codec, frame
from ..protocol.model import Command
from ..protocol.tables import COMMANDS
from .metrics import ProxyStats

log = structlog.get_logger(__name__)

T = TypeVar("T")

REFRESHED_AFTER_WRITE = ("live", "settings")  # the poll groups an app write may change


class InverterRuntime(Protocol):
    """What the proxy needs of the bridge's per-inverter runtime."""

    async def exchange(self, job: Callable[[Session], Awaitable[T]], *,
                       timeout: float) -> T:  # noqa: ASYNC109 (bounds the turn, not the job)
        """Run ``job`` inside one queue slot; InverterError when that cannot be."""
        ...

    def refresh(self, *groups: str) -> None:
        """Make these poll groups due now."""
        ...


@dataclass(frozen=True)
class Limits:
    """How much one proxy client may ask of the inverter."""

    rate: float = 5.0  # requests per second, sustained
    burst: int = 10  # requests at once (the app opening a page asks several)
    idle: float = 60.0  # seconds without a whole request (or a reply not read): disconnect
    turn: float = 10.0  # seconds a request may wait for its turn in the queue


class Dropped(Exception):
    """A request that does not reach the inverter; the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason  # the metrics label
        super().__init__(detail)


class ProxyServer:
    """Serves clients written for the inverter on a TCP port, through ``runtime``."""

    def __init__(self, runtime: InverterRuntime, *, name: str, writes: bool = True,
                 stats: ProxyStats | None = None, limits: Limits | None = None) -> None:
        self.runtime = runtime
        self.writes = writes
        self.stats = stats if stats is not None else ProxyStats()
        self.limits = limits or Limits()
        self.log = log.bind(inverter=name)
        self.port: int | None = None  # bound port, once listening
        self.listening = asyncio.Event()
        self._clients: set[asyncio.Task[None]] = set()

    async def serve(self, host: str, port: int) -> None:
        """Listen on ``host:port`` until cancelled; then hang up on every client."""
        server = await asyncio.start_server(self._client, host, port)
        self.port = int(server.sockets[0].getsockname()[1])
        self.log.info("app proxy listening", host=host, port=self.port,
                      writes="pass" if self.writes else "refused")
        self.listening.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        connection = _Connection(self, writer, self.log.bind(client=peer))
        self.stats.clients += 1
        connection.log.info("app proxy client connected", clients=self.stats.clients)
        try:
            await connection.run(reader)
        except OSError as exc:
            connection.log.info("app proxy client lost", error=str(exc))
        except asyncio.CancelledError:
            pass  # the bridge is stopping: end quietly (asyncio logs a cancelled handler)
        finally:
            self.stats.clients -= 1
            writer.close()
            connection.log.info("app proxy client disconnected", clients=self.stats.clients)
            self._clients.discard(task)


class _Connection:
    """One client: its byte stream, its rate, and a register query part 1 held back."""

    def __init__(self, server: ProxyServer, writer: asyncio.StreamWriter,
                 logger: structlog.typing.FilteringBoundLogger) -> None:
        self.server = server
        self.limits = server.limits
        self.stats = server.stats
        self.writer = writer
        self.log = logger
        self.frames = frame.FrameReader()
        self.tokens = float(self.limits.burst)
        self.refilled = time.monotonic()
        self.throttled = 0  # requests dropped in the current burst of throttling
        self.part1: frame.Frame | None = None  # a register query waiting for its part 2

    async def run(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.idle
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(4096)
            except TimeoutError:
                self.log.warning("app proxy client stalled: disconnected",
                                 idle=self.limits.idle)
                return
            if not data:
                if self.part1 is not None:
                    self.log.info("client left after register query part 1: nothing of it "
                                  "reached the inverter")
                return
            skipped = self.frames.skipped
            items = self.frames.feed(data)
            # bytes skipped that are not those of a frame with a bad checksum
            garbage = self.frames.skipped - skipped - sum(
                len(item.frame) for item in items if isinstance(item, frame.BadChecksum))
            if garbage > 0:
                self._dropped(Dropped("garbage", f"{garbage} bytes that are not a frame"))
            for item in items:
                try:
                    await self._request(item)
                except Dropped as exc:
                    self._dropped(exc)
                deadline = loop.time() + self.limits.idle

    def _dropped(self, exc: Dropped) -> None:
        self.stats.dropped[exc.reason] += 1
        if exc.reason == "throttled":
            self.throttled += 1
            if self.throttled > 1:
                return  # one line per burst of throttling; the count follows when it ends
        self.log.warning("app request dropped", reason=exc.reason, detail=str(exc))

    async def _request(self, item: frame.Frame | frame.FrameError) -> None:
        if isinstance(item, frame.FrameError):
            raise Dropped("bad frame", str(item))
        if (item.source, item.destination) != (frame.APP, frame.INVERTER):
            raise Dropped("not a request", f"frame from 0x{item.source:02x} to "
                          f"0x{item.destination:02x}")
        command = COMMANDS.get(item.command)
        if command is None:
            raise Dropped("unknown command", f"0x{item.command:02x}")
        self._take_token()
        if command.code == 0xBB:
            await self._register_query(item)
            return
        if self.part1 is not None:
            self.part1 = None
            self.log.warning("register query part 1 abandoned: the client sent "
                             f"{command.label} instead of part 2; nothing reached the inverter")
        if command.is_write:
            await self._write(item, command)
        else:
            await self._forward(item, command, lambda session: session.relay(item))

    def _take_token(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.limits.burst,
                          self.tokens + (now - self.refilled) * self.limits.rate)
        self.refilled = now
        if self.tokens < 1:
            raise Dropped("throttled", f"more than {self.limits.rate:g} requests per second")
        self.tokens -= 1
        if self.throttled:
            self.log.warning("app proxy client no longer throttled", dropped=self.throttled)
            self.throttled = 0

    async def _write(self, item: frame.Frame, command: Command) -> None:
        if not self.server.writes:
            self.stats.writes["refused"] += 1
            self.log.warning("app write refused: the proxy is read-only "
                             "(inverter.proxy_writes: false)",
                             command=command.label, name=command.name)
            return

        async def job(session: Session) -> list[frame.Frame]:
            try:
                codec.decode(command, session.version, item.payload)
            except codec.CodecError as exc:
                raise Dropped("malformed write", f"{command.label}: {exc}") from exc
            return await session.relay(item)

        await self._forward(item, command, job)
        self.stats.writes["passed"] += 1
        self.log.info("app write passed to the inverter", command=command.label,
                      name=command.name)
        self.server.runtime.refresh(*REFRESHED_AFTER_WRITE)

    async def _register_query(self, item: frame.Frame) -> None:
        part1 = self.part1
        if part1 is not None and len(item.payload) == 2 * int.from_bytes(part1.payload, "big"):
            self.part1 = None
            await self._forward(item, COMMANDS[0xBB],
                                lambda s: _one(s.relay_register_query(part1, item)))
            return
        if part1 is not None:
            self.part1 = None
            self.log.warning("register query part 1 abandoned: the next frame is not its "
                             "part 2; nothing reached the inverter")
        count = int.from_bytes(item.payload, "big") if len(item.payload) == 2 else 0
        if not 1 <= count <= 10:
            raise Dropped("bad register query", f"part 1 payload {item.payload.hex()}")
        self.part1 = item
        await self._send([frame.Frame(0xBB, item.payload, frame.INVERTER, frame.APP)])

    async def _forward(self, item: frame.Frame, command: Command,
                       job: Callable[[Session], Awaitable[list[frame.Frame]]]) -> None:
        try:
            replies = await self.server.runtime.exchange(job, timeout=self.limits.turn)
        except NotOffered as exc:
            raise Dropped("not offered", str(exc)) from exc
        except InverterError as exc:
            # as from the inverter itself: no reply
            raise Dropped("inverter unavailable", f"{command.label}: {exc}") from exc
        self.stats.forwarded += 1
        await self._send(replies)

    async def _send(self, replies: list[frame.Frame]) -> None:
        for reply in replies:  # frame by frame, as the inverter sends them
            self.writer.write(reply.encode())
            try:
                async with asyncio.timeout(self.limits.idle):
                    await self.writer.drain()
            except TimeoutError:
                raise OSError("the client does not read its replies") from None


async def _one(reply: Awaitable[frame.Frame]) -> list[frame.Frame]:
    return [await reply]
