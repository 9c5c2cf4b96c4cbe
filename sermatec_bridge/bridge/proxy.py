"""The app proxy: the vendor's app (or any client written for the inverter) through the bridge.

The inverter's Wi-Fi module serves one TCP client at a time, so while the bridge holds
the connection the app cannot reach the inverter. With ``inverter.proxy_port`` set the
bridge listens there and speaks the inverter's protocol: each request a client sends is
one exchange in the inverter's queue, taking turns with the bridge's own polls, and the
client gets the reply frames exactly as the inverter sent them (0x95 → 0x95 + 0x9d).
Each client is answered in order, one request at a time.

What a client may ask is decided by the policy for foreign requesters (``policy.py``):
queries pass, settings writes follow ``writes.enabled`` and are checked and applied as
Home Assistant's are, and the reset, network and register commands and the network query
0xb1 pass only when ``proxy.allow`` names them. What does not pass gets no reply, as from
an inverter that did not understand: bytes that are not a valid frame, frames that are
not requests, commands the tables do not know or the inverter's PCU version lacks,
refused commands and writes, and requests beyond the rate that all clients share. The
drops of each client address are logged at most once a minute, with their counts, over
all its connections: a client that connects, sends garbage and hangs up a thousand times
costs a line a minute (connections themselves are logged at debug level only).

The proxy holds at most :attr:`Limits.clients` clients at once (fewer when the process's
file limit is low: :func:`client_cap`), from ``proxy.allowed_networks`` only; others are
disconnected at once. A client that sends no whole request for :attr:`Limits.idle`
seconds, or does not read its replies, is disconnected.

The register query 0xbb is two requests that must reach the inverter back to back: a
part 1 not followed by its part 2 blocks the inverter until it is power-cycled. The
proxy therefore answers part 1 itself, with the acknowledgement the inverter gives (the
count, echoed; see ``inverter/client.py``), keeps it, and forwards both parts in one
queue slot only once the matching part 2 has arrived. A client that vanishes, stalls or
sends anything else in between has sent nothing to the inverter.

A client's stream is served by a :class:`Requester`, which the cloud relay
(``cloud.py``) uses too, for the vendor cloud: the same checks, counts and limits for
every foreign requester.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from ..inverter.client import InverterError, NotOffered, Session
from ..log import Tally
from ..protocol import frame
from ..protocol.model import Command
from ..protocol.tables import COMMANDS
from .metrics import ProxyStats
from .policy import Forwarded, Policy, Refused, allowed_address
from .runtime import NoTurn
from .writes import Writer, WriteResult

log = structlog.get_logger(__name__)

T = TypeVar("T")

REFRESHED_AFTER_WRITE = ("live", "settings")  # the poll groups an app write may change
BACKLOG = 16  # connections the kernel may hold for the proxy before it accepts them
SEND_BUFFER = 64 * 1024  # bytes of replies a client that does not read may hold up
RESERVED_FILES = 64  # descriptors the bridge keeps for itself: broker, files, metrics...
ADDRESSES_KEPT = 256  # client addresses whose drops are counted (the oldest are let go)


class InverterRuntime(Protocol):
    """What the proxy needs of the bridge's per-inverter runtime."""

    writer: Writer  # settings writes, validated as Home Assistant's are

    async def exchange(self, job: Callable[[Session], Awaitable[T]], *,
                       timeout: float) -> T:  # noqa: ASYNC109 (bounds the turn, not the job)
        """Run ``job`` inside one queue slot; InverterError when that cannot be."""
        ...

    def refresh(self, *groups: str) -> None:
        """Make these poll groups due now."""
        ...


class Gate(Protocol):
    """What a :class:`Requester` is served through (the app proxy, the cloud relay)."""

    @property
    def runtime(self) -> InverterRuntime: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def stats(self) -> ProxyStats: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def budget(self) -> Budget:
        """Shared by all the gate's requesters."""
        ...

    async def turn(self, job: Callable[[Session], Awaitable[Forwarded]]) -> Forwarded:
        """Run ``job`` in the inverter's queue slot; InverterError when that cannot be."""
        ...


@dataclass(frozen=True)
class Limits:
    """What the clients of one proxy may ask of the inverter, together."""

    rate: float = 10.0  # requests per second, sustained, for all clients together
    burst: int = 20  # requests at once, at most (an app opening a page asks several)
    idle: float = 60.0  # seconds without a whole request (or a reply not read): disconnect
    turn: float = 10.0  # seconds a request may wait for its turn in the queue
    clients: int = 64  # connected at once


def client_cap(listeners: int, inverters: int, wanted: int = Limits.clients) -> int:
    """Clients per proxy that keep the whole process under its file limit (RLIMIT_NOFILE),
    with room for the bridge's own files and the connections still to be accepted."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    spare = soft - RESERVED_FILES - inverters - listeners * BACKLOG
    return max(1, min(wanted, spare // max(1, listeners)))


def peer_of(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """Who is on the other end: ``host:port`` for the log, and the host alone."""
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}", str(address[0])
    return str(address), ""


async def serve_until_cancelled(server: asyncio.Server,
                                handlers: set[asyncio.Task[None]]) -> None:
    """Serve until cancelled; then end the handlers of the connections still open."""
    try:
        async with server:
            await server.serve_forever()
    finally:
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


class Budget:
    """A token bucket: ``rate`` requests per second, never more than ``burst`` at once."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.refilled = clock()

    def take(self) -> bool:
        """Take a token: False when none is left."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ProxyServer:
    """Serves clients written for the inverter on a TCP port, through ``runtime``."""

    def __init__(self, runtime: InverterRuntime, *, name: str, policy: Policy,
                 stats: ProxyStats | None = None, limits: Limits | None = None,
                 networks: Iterable[str] = ()) -> None:
        self.runtime = runtime
        self.name = name
        self.policy = policy
        self.stats = stats if stats is not None else ProxyStats()
        self.limits = limits or Limits()
        self.networks = tuple(networks)
        self.budget = Budget(self.limits.rate, self.limits.burst)  # shared by all clients
        self.log = log.bind(inverter=name)
        self.refused = Tally(self.log, "app proxy connections refused")
        self.port: int | None = None  # bound port, once listening
        self.listening = asyncio.Event()
        self._clients: set[asyncio.Task[None]] = set()
        self._dropped: OrderedDict[str, Tally] = OrderedDict()  # by client address

    async def turn(self, job: Callable[[Session], Awaitable[Forwarded]]) -> Forwarded:
        return await self.runtime.exchange(job, timeout=self.limits.turn)

    async def serve(self, host: str, port: int) -> None:
        """Listen on ``host:port`` until cancelled; then hang up on every client."""
        server = await asyncio.start_server(self._client, host, port, backlog=BACKLOG)
        self.port = int(server.sockets[0].getsockname()[1])
        self.log.info("app proxy listening", host=host, port=self.port,
                      clients=self.limits.clients, networks=list(self.networks) or "any",
                      allowed=sorted(f"0x{code:02x}" for code in self.policy.allow))
        self.listening.set()
        try:
            await serve_until_cancelled(server, self._clients)
        finally:
            for tally in (self.refused, *self._dropped.values()):
                tally.flush()

    def dropped(self, host: str) -> Tally:
        """The tally of what the clients from ``host`` had dropped, over their connections."""
        tally = self._dropped.pop(host, None)
        if tally is None:
            tally = Tally(self.log.bind(client=host), "app requests dropped")
            if len(self._dropped) >= ADDRESSES_KEPT:
                self._dropped.popitem(last=False)[1].flush()
        self._dropped[host] = tally
        return tally

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, host = peer_of(writer)
        if not allowed_address(host, self.networks):
            self.refused.add("not in proxy.allowed_networks", client=peer)
            writer.close()
            return
        if len(self._clients) >= self.limits.clients:
            self.refused.add(f"more than {self.limits.clients} clients", client=peer)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        # A client that does not read holds up this much of our memory (and the kernel's), no more.
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        writer.transport.set_write_buffer_limits(high=SEND_BUFFER)
        client = Requester(self, writer, self.log.bind(client=peer), self.dropped(host))
        self.stats.clients += 1
        client.log.debug("app proxy client connected", clients=self.stats.clients)
        try:
            await client.run(reader)
        except OSError as exc:
            client.log.debug("app proxy client lost", error=str(exc))
        except asyncio.CancelledError:
            pass  # the bridge is stopping: end quietly (asyncio logs a cancelled handler)
        finally:
            self.stats.clients -= 1
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # replies it never read would keep the socket open
            else:
                writer.close()
            client.log.debug("app proxy client disconnected", clients=self.stats.clients)
            self._clients.discard(task)


class Requester:
    """One requester's stream: its requests, and a register query part 1 held back; what
    it has dropped is counted in ``dropped``. ``who`` names it in log lines (``app``,
    ``cloud``); with ``rc4`` its frames may be RC4-encrypted (the vendor cloud's are), and
    each reply goes back in the encoding of its request."""

    def __init__(self, server: Gate, writer: asyncio.StreamWriter, logger: Any,
                 dropped: Tally, *, who: str = "app", rc4: bool = False) -> None:
        self.server = server
        self.limits = server.limits
        self.stats = server.stats
        self.writer = writer
        self.log = logger
        self.who = who
        self.frames = frame.FrameReader(rc4=rc4)
        self.dropped = dropped
        self.part1: frame.Frame | None = None  # a register query waiting for its part 2

    async def run(self, reader: asyncio.StreamReader) -> None:
        """Serve requests until the stream ends, or brings no whole request for
        ``limits.idle`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.idle
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(4096)
            except TimeoutError:
                self.log.warning(f"{self.who} stalled: disconnected", idle=self.limits.idle)
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
                self.stats.dropped["garbage"] += 1
                self.dropped.add("garbage bytes", garbage)
            for item in items:
                try:
                    await self._request(item)
                except Refused as exc:
                    self._refused(exc, item)
                deadline = loop.time() + self.limits.idle

    def _refused(self, exc: Refused, item: frame.Frame | frame.FrameError) -> None:
        self.stats.dropped[exc.reason] += 1
        what = ""
        if isinstance(item, frame.Frame):
            what = f" 0x{item.command:02x}"
            command = COMMANDS.get(item.command)
            if exc.reason == "not allowed" and command is not None and command.is_write:
                self.stats.writes["refused"] += 1
        self.dropped.add(exc.reason + what, detail=str(exc))

    async def _request(self, item: frame.Frame | frame.FrameError) -> None:
        if isinstance(item, frame.FrameError):
            raise Refused("bad frame", str(item))
        command = self.server.policy.check(item)
        if not self.server.budget.take():
            raise Refused("throttled", f"more than {self.limits.rate:g} requests per second "
                          + ("from the proxy's clients" if self.who == "app" else
                             f"from the {self.who}"))
        if command.code == 0xBB:
            await self._register_query(item)
            return
        if self.part1 is not None:
            self.part1 = None
            self.log.warning("register query part 1 abandoned: the client sent "
                             f"{command.label} instead of part 2; nothing reached the inverter")
        policy, writer = self.server.policy, self.server.runtime.writer
        forwarded = await self._forward(
            command, lambda session: policy.forward(session, item, command, writer))
        if forwarded.write is not None:
            self._written(command, forwarded.write)
        await self._send(forwarded.replies)

    def _written(self, command: Command, result: WriteResult) -> None:
        if result.sent:
            self.server.runtime.refresh(*REFRESHED_AFTER_WRITE)
            self.stats.writes["passed"] += 1
            (self.log.info if result.ok else self.log.warning)(
                f"{self.who} write applied" if result.ok else f"{self.who} write not confirmed",
                command=command.label, changed=sorted(result.changed), error=result.error)
        elif not result.ok:
            self.stats.writes["refused"] += 1
            self.dropped.add(f"write refused 0x{command.code:02x}", detail=result.error)

    async def _register_query(self, item: frame.Frame) -> None:
        part1 = self.part1
        if part1 is not None and len(item.payload) == 2 * int.from_bytes(part1.payload, "big"):
            self.part1 = None
            command = COMMANDS[0xBB]
            forwarded = await self._forward(command, lambda s: _register_pair(s, part1, item))
            await self._send(forwarded.replies)
            return
        if part1 is not None:
            self.part1 = None
            self.log.warning("register query part 1 abandoned: the next frame is not its "
                             "part 2; nothing reached the inverter")
        count = int.from_bytes(item.payload, "big") if len(item.payload) == 2 else 0
        if not 1 <= count <= 10:
            raise Refused("bad register query", f"part 1 announces {count} registers, or is "
                          f"{len(item.payload)} bytes long; 1 to 10 registers, in 2 bytes")
        self.part1 = item
        await self._send([frame.Frame(0xBB, item.payload, frame.INVERTER, frame.APP,
                                      rc4=item.rc4)])

    async def _forward(self, command: Command,
                       job: Callable[[Session], Awaitable[Forwarded]]) -> Forwarded:
        try:
            forwarded = await self.server.turn(job)
        except NotOffered as exc:
            raise Refused("not offered", str(exc)) from exc
        except NoTurn as exc:  # the inverter is there, and busy with others' requests
            raise Refused("queue full", f"{command.label}: {exc}") from exc
        except InverterError as exc:
            # as from the inverter itself: no reply
            raise Refused("inverter unavailable", f"{command.label}: {exc}") from exc
        if forwarded.write is None or forwarded.write.sent:
            self.stats.forwarded += 1
        return forwarded

    async def _send(self, replies: list[frame.Frame]) -> None:
        for reply in replies:  # frame by frame, as the inverter sends them
            self.writer.write(reply.encode())
            try:
                async with asyncio.timeout(self.limits.idle):
                    await self.writer.drain()
            except TimeoutError:
                raise OSError("the client does not read its replies") from None


async def _register_pair(session: Session, part1: frame.Frame,
                         part2: frame.Frame) -> Forwarded:
    return Forwarded([await session.relay_register_query(part1, part2)])
