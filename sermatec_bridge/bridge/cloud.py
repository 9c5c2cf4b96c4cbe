"""The inverters' cloud link: the bridge as their cloud server, the vendor cloud on a leash.

In station mode an inverter dials its cloud server (the vendor's listens on TCP 19042)
every second while it is not connected, and answers the requests that come over that
link, in plain or RC4-encrypted frames. With ``cloud.listen_port`` the bridge is that
server. The :class:`Listener` accepts each connection, asks who is there with 0x98
(plain first, RC4 when plain gets no answer; a peer is asked first in the encoding it
spoke last time, a new one in the encoding the last inverter spoke, as a fleet speaks
one) and hands the identified connection to the service, which hands it to that
inverter's runtime: the same runtime as for an inverter the bridge dials itself.

Whoever connects is a stranger until it answers 0x98: a connection from outside
``cloud.allowed_networks``, beyond the cap (which keeps the process under its file
limit) or beyond :data:`IDENTIFYING` waiting to be identified, is closed at once; one
that does not answer 0x98 within the timeout, or the service does not take, is closed
then. Each refusal is counted by reason and logged at most once a minute.

With ``cloud.upstream`` set, a :class:`Relay` per inverter holds a link to the vendor
cloud while the inverter is connected, and serves the cloud's requests as the app proxy
serves its clients (:class:`~.proxy.Requester`): each is one exchange in the inverter's
queue, in a room of its own; the policy for foreign requesters decides, and by default
only queries pass. Replies go back in the encoding of the request. The relay connects
only to ``cloud.upstream``, never to an address anyone sends (a 0x9f reaches the
inverter only where ``cloud.allow`` names it, and changes where the inverter dials, not
where the relay does).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from ..backoff import backoff
from ..inverter.client import Connection, Identity, InverterError, Session, identify
from ..log import Tally
from .metrics import CloudStats
from .policy import Forwarded, Policy, allowed_address
from .proxy import (
    BACKLOG,
    RESERVED_FILES,
    Budget,
    Limits,
    Requester,
    peer_of,
    serve_until_cancelled,
)
from .runtime import CloudExchange, InverterRuntime

log = structlog.get_logger(__name__)

LISTEN_BACKLOG = 128  # dials the kernel may hold before they are accepted (a fleet redials)
IDENTIFYING = 64  # connections waiting for their answer to 0x98, at most
ENCODINGS_KEPT = 4096  # peer addresses whose encoding (plain or RC4) is remembered
CONNECT_TIMEOUT = 10.0  # seconds to open the link to the vendor cloud
RECONNECT_FIRST, RECONNECT_MAX = 1.0, 60.0  # seconds between tries to reach the cloud
LASTING = 60.0  # seconds a link to the cloud must last for its backoff to start over
# The vendor cloud asks now and then; it may read at most this, and waits its turn.
CLOUD_LIMITS = Limits(rate=2.0, burst=10, idle=600.0, turn=10.0, clients=1)

HandOver = Callable[[Connection, Identity], str | None]


def link_cap(reserved: int, relayed: bool) -> int:
    """Inverter links the listener may hold: what the file limit (RLIMIT_NOFILE) leaves
    after the ``reserved`` descriptors of the rest of the bridge, halved when each link
    brings one to the vendor cloud."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    spare = soft - RESERVED_FILES - reserved - LISTEN_BACKLOG - IDENTIFYING
    return max(1, spare // (2 if relayed else 1))


class Listener:
    """Takes the connections inverters open to their cloud server, and identifies them.

    ``hand_over`` gets each identified connection and says None when it took it, else
    why not (the connection is then closed).
    """

    def __init__(self, hand_over: HandOver, *, timeout: float, cap: int,
                 networks: Iterable[str] = ()) -> None:
        self.hand_over = hand_over
        self.timeout = timeout  # for each of the two tries of 0x98
        self.cap = cap
        self.networks = tuple(networks)
        self.refusals: Counter[str] = Counter()  # by reason, for the metrics
        self.refused = Tally(log, "cloud connections refused")
        self.port: int | None = None  # bound port, once listening
        self.listening = asyncio.Event()
        self._links: set[Connection] = set()  # handed over, open or closed since
        self._identifying: set[asyncio.Task[None]] = set()
        self._rc4: OrderedDict[str, bool] = OrderedDict()  # peer address -> speaks RC4
        self._last_rc4 = False  # whether the last inverter identified spoke RC4

    @property
    def connected(self) -> int:
        """Inverter links open now."""
        self._links = {c for c in self._links if c.open}
        return len(self._links)

    async def serve(self, host: str, port: int) -> None:
        """Listen on ``host:port`` until cancelled; then drop who is being identified
        (the links handed over belong to their runtimes)."""
        server = await asyncio.start_server(self._accepted, host, port, backlog=LISTEN_BACKLOG)
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("cloud listener listening", host=host, port=self.port, links=self.cap,
                 networks=list(self.networks) or "any")
        self.listening.set()
        try:
            await serve_until_cancelled(server, self._identifying)
        finally:
            self.refused.flush()

    def _refuse(self, reason: str, **fields: Any) -> None:
        self.refusals[reason] += 1
        self.refused.add(reason, **fields)

    async def _accepted(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        peer, host = peer_of(writer)
        if not allowed_address(host, self.networks):
            writer.close()
            self._refuse("not in cloud.allowed_networks", peer=peer)
            return
        if self.connected + len(self._identifying) >= self.cap:
            writer.close()
            self._refuse(f"more than {self.cap} connections", peer=peer)
            return
        if len(self._identifying) >= IDENTIFYING:
            writer.close()
            self._refuse(f"more than {IDENTIFYING} waiting to be identified", peer=peer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._identifying.add(task)
        connection = Connection(reader, writer, peer=peer, logger=log.bind(peer=peer),
                                dialled_in=True)
        try:
            identity = await identify(connection, self.timeout,
                                      rc4_first=self._rc4.get(host, self._last_rc4))
        except InverterError as exc:
            connection.close(exc)
            self._refuse("no answer to 0x98 (the identity query)", peer=peer, error=str(exc))
            return
        except asyncio.CancelledError:
            connection.close(InverterError("the bridge is stopping"))
            return  # quietly: asyncio logs a connection handler that ends cancelled
        finally:
            self._identifying.discard(task)
        self._rc4[host] = self._last_rc4 = connection.rc4
        self._rc4.move_to_end(host)
        if len(self._rc4) > ENCODINGS_KEPT:
            self._rc4.popitem(last=False)
        why = self.hand_over(connection, identity)
        if why is not None:
            connection.close(InverterError(why))
            self._refuse(why, peer=peer, serial=identity.serial)
            return
        self._links.add(connection)


class Relay:
    """The vendor cloud's link for one inverter that dials in: held while it is connected.

    The inverter's link may drop and come back (it dials again every second): the link
    to the cloud stays while a new one comes within the inverter's timeout, and goes
    with it otherwise. A cloud that cannot be reached, or hangs up, is tried again after
    1, 2, 4 ... s, at most every :data:`RECONNECT_MAX` s, and logged once a minute.
    """

    def __init__(self, runtime: InverterRuntime, upstream: tuple[str, int],
                 policy: Policy, limits: Limits = CLOUD_LIMITS) -> None:
        self.runtime = runtime
        self.upstream = upstream
        self.policy = policy
        self.stats: CloudStats = runtime.stats.cloud
        self.limits = limits
        self.budget = Budget(limits.rate, limits.burst)
        host, port = upstream
        self.log = log.bind(inverter=runtime.config.label,
                            upstream=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self.unreachable = Tally(self.log, "vendor cloud not reachable")
        self.dropped = Tally(self.log, "cloud requests dropped")
        self._task: asyncio.Task[None] | None = None

    async def turn(self, job: Callable[[Session], Awaitable[Forwarded]]) -> Forwarded:
        return await self.runtime.exchange(job, timeout=self.limits.turn, kind=CloudExchange)

    def follow(self) -> None:
        """The inverter dialled in: hold its link to the cloud, unless it is held."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._hold(),
                                             name=f"cloud {self.runtime.config.label}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _hold(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(*self.upstream)
            except (OSError, TimeoutError) as exc:
                failures += 1
                self.unreachable.add(type(exc).__name__ if isinstance(exc, TimeoutError) else
                                     exc.strerror or str(exc))
            else:
                began = time.monotonic()
                await self._serve(reader, writer)
                failures = 1 if time.monotonic() - began > LASTING else failures + 1
            if not await self._pause(backoff(failures, RECONNECT_FIRST, RECONNECT_MAX)):
                self.unreachable.flush()
                return

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve the cloud's requests until it hangs up or the inverter has gone."""
        requester = Requester(self, writer, self.log, self.dropped, who="cloud", rc4=True)
        self.stats.clients = 1
        self.log.info("vendor cloud link up")
        await self._publish()
        serving = asyncio.create_task(requester.run(reader))
        gone = asyncio.create_task(self._inverter_gone())
        why = "the bridge is stopping"
        try:
            await asyncio.wait({serving, gone}, return_when=asyncio.FIRST_COMPLETED)
            why = "the inverter has gone" if gone.done() else "the cloud hung up"
        finally:
            for task in (serving, gone):
                task.cancel()
            lost = (await asyncio.gather(serving, gone, return_exceptions=True))[0]
            writer.close()
            self.dropped.flush()
            self.stats.clients = 0
            self.log.info("vendor cloud link down",
                          why=f"lost: {lost}" if isinstance(lost, OSError) else why)
            with contextlib.suppress(Exception):
                await self._publish()

    async def _publish(self) -> None:
        if self.runtime.topic_id is not None:
            await self.runtime.publisher.state("cloud", self.stats.state())

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the inverter has gone meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await self._inverter_gone()
        except TimeoutError:
            return True
        return False

    async def _inverter_gone(self) -> None:
        """Return once the inverter has had no connection for its timeout."""
        client = self.runtime.client
        while True:
            connection = client.connection
            if connection is not None and connection.open:
                await connection.closed.wait()
                continue
            try:
                async with asyncio.timeout(client.timeout):
                    await client.next_dial()
            except TimeoutError:
                return


def reserved_files(proxies: int, proxy_clients: int, dialled: int) -> int:
    """Descriptors the rest of the bridge may hold: its proxies' listeners and clients,
    the inverters it dials."""
    return proxies * (proxy_clients + BACKLOG) + dialled
