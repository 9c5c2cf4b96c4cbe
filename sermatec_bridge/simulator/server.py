"""A simulated inverter on TCP: the OSIM protocol of the tables, served from a model.

Requests are read with :class:`~sermatec_bridge.protocol.frame.FrameReader`; answers
are built by :class:`~.model.InverterModel` (with the codec) and framed with
:func:`~sermatec_bridge.protocol.frame.reply`. Like the real inverter:

* each reply frame goes out in one ``write``; 0x95 is answered by two frames (0x95, then
  0x9d from PCU 259) with a short pause between them, because third-party clients read
  each reply with one ``read(256)``;
* writes get no reply; queries the PCU version does not offer get none either;
* one client at a time, like the Wi-Fi module: a further connection is accepted but
  then waits, unread and unanswered, until the current client disconnects (what a
  client sees of a connection left in the accept backlog);
* the writes that make the real inverter drop the connection (``closes_connection`` in
  the tables: 0x69, 0x70, 0x94, 0x9e, 0x9f) close it here too, after being applied.

Station mode (``cloud``): like the inverter's Wi-Fi module in station mode, the simulator
also dials its cloud server, every second while it is not connected, and answers the
requests that come over that link, from the same model and at the same time as a client
on its own port. The link speaks plain frames, or with ``rc4`` RC4 frames only (frames
of the other kind are logged and left unanswered: how the real inverter treats them is
not known). The server and port are the model's network settings, which 0x9f and 0xb0
writes change and 0xb1 shows; a write that changes them (or the Wi-Fi mode) drops the
link, and the simulator dials the new server. It dials only addresses of this host and
of private networks, never the vendor's cloud.

Faults, for testing clients: each one is decided once per answer (all the frames of one
request), either by a rate given to the constructor or by :meth:`Simulator.inject` for
the next N answers. ``silence`` sends nothing; ``drop`` closes the connection instead of
answering; ``garbage`` puts 1..16 random bytes (never 0xfe, so never a false header)
before each frame; ``bad_checksum`` inverts each frame's checksum. ``latency`` delays
each answer and ``chunk`` writes frames in pieces of that many bytes; both are plain
attributes that tests may change at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
from collections import deque
from collections.abc import Coroutine, Mapping
from enum import StrEnum
from typing import Any, Self

import structlog

from ..protocol import frame
from ..protocol.model import Value
from .model import DEFAULT_SERIAL, Clock, InverterModel

log = structlog.get_logger(__name__)

PAIR_PAUSE = 0.02  # seconds between the two frames that answer 0x95
CHUNK_PAUSE = 0.002  # seconds between the pieces of a chunked frame
DIAL_INTERVAL = 1.0  # seconds between the cloud link's connection attempts
CONNECT_TIMEOUT = 5.0  # seconds one attempt may take
_GARBAGE_BYTES = bytes(b for b in range(256) if b not in (frame.HEADER[0], frame.RC4_HEADER[0]))


class Fault(StrEnum):
    GARBAGE = "garbage"
    BAD_CHECKSUM = "bad_checksum"
    DROP = "drop"
    SILENCE = "silence"


class Simulator:
    """A simulated inverter listening on TCP; ``async with`` starts it on a free port."""

    def __init__(
        self,
        *,
        pcu: int = 609,
        model: str = "5kw",
        serial: str = DEFAULT_SERIAL,
        battery_make: int | str = 2,
        capacity_kwh: float = 10.0,
        soc: float = 50.0,
        latency: float = 0.0,
        chunk: int = 0,
        seed: int | None = None,
        garbage_rate: float = 0.0,
        bad_checksum_rate: float = 0.0,
        drop_rate: float = 0.0,
        silence_rate: float = 0.0,
        clock: Clock | None = None,
        pair_pause: float = PAIR_PAUSE,
        chunk_pause: float = CHUNK_PAUSE,
        settings: Mapping[str, Value] | None = None,
        cloud: tuple[str, int] | None = None,
        rc4: bool = False,
        dial_interval: float = DIAL_INTERVAL,
        first_dial: float = 0.0,
    ) -> None:
        if cloud is not None:
            host, port = cloud
            settings = {**(settings or {}), "cloud_server": host, "cloud_port": str(port)}
        self.model = InverterModel(pcu=pcu, model=model, serial=serial,
                                   battery_make=battery_make, capacity_kwh=capacity_kwh,
                                   soc=soc, seed=seed, clock=clock, settings=settings)
        self.station = cloud is not None  # dials the cloud server
        self.rc4 = rc4
        self.dial_interval = dial_interval
        self.first_dial = first_dial  # seconds before the first attempt (spreads a fleet)
        self.latency = latency
        self.chunk = chunk
        self.pair_pause = pair_pause
        self.chunk_pause = chunk_pause
        self.rates: dict[Fault, float] = {
            Fault.GARBAGE: garbage_rate,
            Fault.BAD_CHECKSUM: bad_checksum_rate,
            Fault.DROP: drop_rate,
            Fault.SILENCE: silence_rate,
        }
        self._injected: dict[Fault, int] = dict.fromkeys(Fault, 0)
        # faults draw from their own generator, so they never change the physics
        self._rng = random.Random(None if seed is None else seed + 1)
        self._server: asyncio.Server | None = None
        self._one_client = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.clients = 0  # connections served so far
        self.received: deque[int] = deque(maxlen=1000)  # request command codes, in order
        self.cloud_links = 0  # cloud connections made so far
        self._cloud: asyncio.StreamWriter | None = None  # the cloud link, while it is up

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------------------------
    # Control
    # ----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); return the bound port."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._server = await asyncio.start_server(self._client, host, port)
        if self.station:
            self._spawn(self._dial())
        return self.port or 0

    async def stop(self) -> None:
        """Stop listening and hang up on every client, served or waiting."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def cloud_connected(self) -> bool:
        return self._cloud is not None

    @property
    def blocked(self) -> bool:
        """True after an interrupted register query, until :meth:`power_cycle`."""
        return self.model.blocked

    @property
    def busy(self) -> bool:
        """True while a client is being served."""
        return self._one_client.locked()

    def power_cycle(self) -> None:
        self.model.power_cycle()

    def inject(self, fault: Fault | str, count: int = 1) -> None:
        """Apply ``fault`` to the next ``count`` answers (on top of the rates)."""
        self._injected[Fault(fault)] += count

    def _take(self, fault: Fault) -> bool:
        if self._injected[fault] > 0:
            self._injected[fault] -= 1
            return True
        rate = self.rates[fault]
        return rate > 0 and self._rng.random() < rate

    # ----------------------------------------------------------------------------------
    # Connections
    # ----------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        try:
            if self._one_client.locked():
                log.info("client waits: another client is connected", peer=peer)
            async with self._one_client:
                self.clients += 1
                log.info("client connected", peer=peer)
                await self._serve(reader, writer)
        except OSError as exc:
            log.info("connection lost", peer=peer, error=str(exc))
        except asyncio.CancelledError:
            # Only stop() cancels a handler. End quietly: asyncio 3.11 logs a connection
            # task that ends cancelled as an error.
            log.debug("connection handler stopped", peer=peer)
        finally:
            writer.close()
            log.info("client disconnected", peer=peer)
            self._tasks.discard(task)

    async def _dial(self) -> None:
        """Station mode: connect to the cloud server, serve the link, and again, forever."""
        await asyncio.sleep(self.first_dial)
        trouble: str | None = None  # the last failure, logged once until it changes
        while True:
            server = self.model.cloud_server()
            try:
                if server is None:
                    raise ConnectionError("not in station mode: the cloud is not dialled")
                reader, writer = await _connect_locally(*server)
            except OSError as exc:
                if str(exc) != trouble:
                    trouble = str(exc)
                    log.info("cloud link: cannot connect, trying every "
                             f"{self.dial_interval:g} s", server=_where(server), error=trouble)
            else:
                trouble = None
                self.cloud_links += 1
                self._cloud = writer
                log.info("cloud link up", server=_where(server), rc4=self.rc4)
                try:
                    await self._serve(reader, writer, cloud=True)
                except OSError as exc:
                    log.info("cloud link lost", error=str(exc))
                finally:
                    self._cloud = None
                    writer.close()
                log.info("cloud link down", server=_where(server))
            await asyncio.sleep(self.dial_interval)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     cloud: bool = False) -> None:
        frames = frame.FrameReader(rc4=cloud)
        while data := await reader.read(4096):
            for item in frames.feed(data):
                if not await self._on_item(item, writer, cloud):
                    return

    async def _on_item(self, item: frame.Frame | frame.FrameError,
                       writer: asyncio.StreamWriter, cloud: bool) -> bool:
        """Handle one request; False when the connection is to be closed."""
        if isinstance(item, frame.FrameError):
            log.warning("bad frame from the client", error=str(item))
            self.model.bad_frame(item)
            return True
        if cloud and item.rc4 != self.rc4:
            log.warning("cloud link: request not answered, this inverter speaks "
                        + ("RC4" if self.rc4 else "plain frames"),
                        command=f"0x{item.command:02x}", rc4=item.rc4)
            return True
        self.received.append(item.command)
        server = self.model.cloud_server()
        try:
            outcome = self.model.handle(item.command, item.payload)
        except Exception:  # the simulator must outlive any request
            log.exception("request failed", command=f"0x{item.command:02x}")
            return True
        if self.model.cloud_server() != server and self._cloud is not None:
            log.info("network settings changed: dropping the cloud link")
            self._cloud.close()
        if outcome.replies and not await self._answer(writer, outcome.replies,
                                                      rc4=cloud and self.rc4):
            return False
        if outcome.close:
            log.info("hanging up after the write", command=f"0x{item.command:02x}")
            return False
        return True

    async def _answer(self, writer: asyncio.StreamWriter,
                      replies: list[tuple[int, bytes]], rc4: bool = False) -> bool:
        if self._take(Fault.SILENCE):
            log.info("fault: silence", command=f"0x{replies[0][0]:02x}")
            return True
        if self._take(Fault.DROP):
            log.info("fault: drop", command=f"0x{replies[0][0]:02x}")
            return False
        garbage, bad = self._take(Fault.GARBAGE), self._take(Fault.BAD_CHECKSUM)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        for index, (code, payload) in enumerate(replies):
            if index:
                await asyncio.sleep(self.pair_pause)
            data = frame.reply(code, payload, rc4=rc4)
            if bad:
                data = data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:]
            if garbage:
                size = self._rng.randint(1, 16)
                data = bytes(self._rng.choice(_GARBAGE_BYTES) for _ in range(size)) + data
            await self._write(writer, data)
        return True

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self.chunk <= 0:
            writer.write(data)
            await writer.drain()
            return
        for start in range(0, len(data), self.chunk):
            if start:
                await asyncio.sleep(self.chunk_pause)
            writer.write(data[start : start + self.chunk])
            await writer.drain()


def _where(server: tuple[str, int] | None) -> str | None:
    return None if server is None else f"{server[0]}:{server[1]}"


async def _connect_locally(host: str, port: int) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
    """Connect to ``host:port`` if it is this host or on a private network; OSError if not."""
    async with asyncio.timeout(CONNECT_TIMEOUT):
        found = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
        for *_, address in found:
            numeric = str(address[0])
            ip = ipaddress.ip_address(numeric.partition("%")[0])
            if ip.is_loopback or ip.is_private:
                return await asyncio.open_connection(numeric, port)
    raise ConnectionRefusedError(f"{host} is not on this host or a private network: "
                                 "a simulator does not dial it")


def numbered_serials(first: str, count: int) -> list[str]:
    """``count`` distinct serial numbers from ``first`` on, counting up its trailing digits."""
    stem = first.rstrip("0123456789")
    digits = first[len(stem):]
    start, width = (int(digits), len(digits)) if digits else (1, 1)
    return [first] + [f"{stem}{start + index:0{width}d}" for index in range(1, count)]


async def run_simulator(
    *,
    host: str = "127.0.0.1",
    port: int = 8899,
    count: int = 1,
    pcu: int = 609,
    model: str = "5kw",
    serial: str = DEFAULT_SERIAL,
    latency: float = 0.0,
    chunk: int = 0,
    garbage_rate: float = 0.0,
    bad_checksum_rate: float = 0.0,
    drop_rate: float = 0.0,
    silence_rate: float = 0.0,
    seed: int | None = None,
    settings: Mapping[str, Value] | None = None,
    clock: Clock | None = None,
    cloud: tuple[str, int] | None = None,
    rc4: bool = False,
) -> None:
    """Run ``count`` simulators on ports ``port``.. until cancelled (the CLI's ``simulate``).

    Each one is its own inverter: its own serial number (counting up from ``serial``) and
    its own random generator. Port 0 puts each on a free port. With ``cloud`` each also
    dials that server, their first attempts spread over one dial interval.
    """
    if count < 1:
        raise ValueError("--count must be at least 1")
    if port and port + count - 1 > 65535:
        raise ValueError(f"{count} ports from {port} on go past 65535")
    sims = [Simulator(pcu=pcu, model=model, serial=number, latency=latency, chunk=chunk,
                      seed=None if seed is None else seed + 2 * index,
                      garbage_rate=garbage_rate, bad_checksum_rate=bad_checksum_rate,
                      drop_rate=drop_rate, silence_rate=silence_rate, settings=settings,
                      clock=clock, cloud=cloud, rc4=rc4,
                      first_dial=index * DIAL_INTERVAL / count)
            for index, number in enumerate(numbered_serials(serial, count))]
    try:
        bound = []
        for index, sim in enumerate(sims):
            at = port + index if port else 0
            try:
                bound.append(await sim.start(host, at))
            except OSError as exc:  # the port that failed, for the CLI's one-line error
                raise OSError(exc.errno, exc.strerror, f"{host}:{at}") from None
        for sim in sims:  # once all listen: a busy port leaves nothing but its error
            log.info("simulator started", host=host, port=sim.port, pcu=sim.model.pcu,
                     model=sim.model.model_name)
        where = f"{host}:{bound[0]}" if count == 1 else (
            f"{host}:{bound[0]}..{bound[-1]}" if port else
            f"{host} ports {', '.join(map(str, bound))}")
        what = "simulator" if count == 1 else f"{count} simulators"
        serials = "" if count == 1 else (
            f", serials {sims[0].model.serial}..{sims[-1].model.serial}")
        dialling = "" if cloud is None else (
            f", dialling {cloud[0]}:{cloud[1]}" + (" with RC4" if rc4 else ""))
        print(f"{what} listening on {where} (PCU {pcu}, {sims[0].model.model_name}{serials})"
              f"{dialling}", flush=True)
        await asyncio.Event().wait()
    finally:
        for sim in sims:
            await sim.stop()
