"""A stand-in cloud server for tests: it accepts the connections made to it (by a
simulated inverter in station mode, or by the bridge's relay) and sends requests on them,
plain or RC4, over real TCP on the loopback interface."""

from __future__ import annotations

import asyncio
import contextlib

from sermatec_bridge.protocol import frame

WAIT = 5.0  # a deadline for what must happen, never a delay


class Link:
    """One connection the simulated inverter made to the stand-in cloud."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = frame.FrameReader(rc4=True)
        self.pending: list[frame.Frame | frame.FrameError] = []

    async def send(self, code: int, payload: bytes = b"", rc4: bool = False) -> None:
        self.writer.write(frame.request(code, payload, rc4=rc4))
        await self.writer.drain()

    async def next_frame(self) -> frame.Frame:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(4096), WAIT)
            assert data, "the inverter hung up"
            self.pending += self.frames.feed(data)
        item = self.pending.pop(0)
        assert isinstance(item, frame.Frame), item
        return item

    async def ask(self, code: int, payload: bytes = b"", rc4: bool = False) -> frame.Frame:
        await self.send(code, payload, rc4)
        return await self.next_frame()

    async def wait_closed_by_inverter(self) -> None:
        """Return once the inverter has closed the connection; fail after the deadline."""
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(self.reader.read(4096), WAIT):
                pass

    async def silent(self, seconds: float) -> bool:
        """True when no frame comes for ``seconds`` (and the connection stays open)."""
        if self.pending:
            return False
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.reader.read(4096), seconds)
            assert data, "the other side hung up"
            self.pending += self.frames.feed(data)
            return not self.pending
        return True

    def close(self) -> None:
        self.writer.close()


class StandInCloud:
    """A cloud server for the tests: it accepts the inverter's connections, in order."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.links: asyncio.Queue[Link] = asyncio.Queue()
        self.accepted: list[Link] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StandInCloud:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in self.accepted:
            link.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return "127.0.0.1", int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(reader, writer)
        self.accepted.append(link)
        await self.links.put(link)

    async def link(self) -> Link:
        return await asyncio.wait_for(self.links.get(), WAIT)
