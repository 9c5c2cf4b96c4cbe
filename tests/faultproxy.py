"""A fault-injecting TCP proxy for tests: client (the bridge) <-> proxy <-> simulator.

It forwards whole frames (reassembled with the project's FrameReader) and adds the faults
the simulator cannot produce on its own, per request or per reply:

* ``answer_rate``: the share of requests forwarded; the others are swallowed, so the
  inverter never sees them and they get no answer (an inverter that answers 90 %);
* ``never_answer``: command codes whose requests are swallowed, always (e.g. ``{0xA1}``);
* ``latency``: seconds added before each reply frame (order is kept);
* ``bad_checksum_rate`` / ``garbage_rate`` / ``duplicate_rate``: the share of reply frames
  sent with an inverted checksum, after 1..16 bytes of garbage (never 0xfe), or twice;
* ``busy``: accept connections and never answer, like the Wi-Fi module while it serves
  another client; the simulator is never contacted;
* :meth:`FaultProxy.stall` / :meth:`FaultProxy.resume`: hold everything in both directions;
* :meth:`FaultProxy.cut`: close every connection now (the inverter's side and the client's).

Every fault is a plain attribute: tests may change it at any time. ``requests``,
``swallowed`` and ``replies`` count what went through; ``seen`` records the command code of
every request that reached the proxy, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Self

from sermatec_bridge.protocol import frame

HOST = "127.0.0.1"
_GARBAGE_BYTES = bytes(b for b in range(256) if b != frame.HEADER[0])


class FaultProxy:
    """Listens on a free loopback port and forwards to ``target_port``; ``async with`` it."""

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = HOST,
        answer_rate: float = 1.0,
        never_answer: set[int] | frozenset[int] = frozenset(),
        latency: float = 0.0,
        bad_checksum_rate: float = 0.0,
        garbage_rate: float = 0.0,
        duplicate_rate: float = 0.0,
        busy: bool = False,
        seed: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.answer_rate = answer_rate
        self.never_answer = set(never_answer)
        self.latency = latency
        self.bad_checksum_rate = bad_checksum_rate
        self.garbage_rate = garbage_rate
        self.duplicate_rate = duplicate_rate
        self.busy = busy
        self.requests = self.swallowed = self.replies = self.connections = 0
        self.seen: list[int] = []
        self._rng = random.Random(seed)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, HOST, port)
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets, "the proxy is not running"
        return int(self._server.sockets[0].getsockname()[1])

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Close every connection, both sides, at once."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    # ----------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.busy:  # accepted, read, never answered
                while await reader.read(4096):
                    pass
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            pumps = [asyncio.ensure_future(self._requests(reader, upstream)),
                     asyncio.ensure_future(self._replies(up_reader, writer))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.close()
                    self._writers.discard(side)
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader,
                        upstream: asyncio.StreamWriter) -> None:
        frames = frame.FrameReader()
        while data := await reader.read(4096):
            for item in frames.feed(data):
                if isinstance(item, frame.FrameError):
                    continue
                self.requests += 1
                self.seen.append(item.command)
                if item.command in self.never_answer or not self._forwarded():
                    self.swallowed += 1
                    continue
                await self._flowing.wait()
                upstream.write(item.encode())
                await upstream.drain()

    def _forwarded(self) -> bool:
        return self.answer_rate >= 1 or self._rng.random() < self.answer_rate

    async def _replies(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        frames = frame.FrameReader(verify=False)
        while data := await reader.read(4096):
            for item in frames.feed(data):
                if isinstance(item, frame.FrameError):
                    continue
                await self._flowing.wait()
                if self.latency > 0:
                    await asyncio.sleep(self.latency)
                    await self._flowing.wait()
                writer.write(self._damaged(item.encode()))
                await writer.drain()
                self.replies += 1

    def _damaged(self, data: bytes) -> bytes:
        if self._chance(self.bad_checksum_rate):
            data = data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:]
        if self._chance(self.garbage_rate):
            size = self._rng.randint(1, 16)
            data = bytes(self._rng.choice(_GARBAGE_BYTES) for _ in range(size)) + data
        if self._chance(self.duplicate_rate):
            data += data
        return data
