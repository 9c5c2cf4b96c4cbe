"""The cloud listener on its own, over real TCP on loopback: its limits, what it
remembers of each peer, and the file limit it keeps under; a runtime handed a dial."""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from sermatec_bridge.bridge import cloud
from sermatec_bridge.bridge.cloud import Listener
from sermatec_bridge.bridge.publisher import Broker
from sermatec_bridge.bridge.runtime import InverterRuntime
from sermatec_bridge.config import InverterSettings, load_settings
from sermatec_bridge.inverter.client import Connection, Identity, InverterUnreachable
from sermatec_bridge.protocol import codec, frame
from sermatec_bridge.simulator import InverterModel, Simulator

HOST = "127.0.0.1"


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition did not hold"
        await asyncio.sleep(0.02)


class Taken:
    """What the listener handed over: the service's part, played by the test."""

    def __init__(self) -> None:
        self.links: list[tuple[Connection, Identity]] = []

    def __call__(self, connection: Connection, identity: Identity) -> str | None:
        self.links.append((connection, identity))
        return None


@pytest.fixture
async def listening() -> AsyncIterator[Callable[..., Listener]]:
    tasks: list[asyncio.Task[None]] = []

    def start(hand_over: Callable[[Connection, Identity], str | None], **kw: float) -> Listener:
        listener = Listener(hand_over, **{"timeout": 1.0, "cap": 10, **kw})  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(listener.serve(HOST, 0)))
        return listener

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_connections_beyond_the_cap_are_refused_at_once(
        listening: Callable[..., Listener]) -> None:
    taken = Taken()
    listener = listening(taken, cap=1)
    await listener.listening.wait()
    assert listener.port is not None
    async with Simulator(cloud=(HOST, listener.port), dial_interval=0.05):
        await eventually(lambda: len(taken.links) == 1)
        async with Simulator(cloud=(HOST, listener.port), dial_interval=0.05,
                             serial="ST5K0SECOND0000001") as second:
            await eventually(lambda: listener.refusals["more than 1 connections"] >= 2)
            assert 0x98 not in second.received  # hung up on before a word
        assert listener.connected == 1


async def test_strangers_waiting_to_be_identified_are_few(
        listening: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud, "IDENTIFYING", 2)
    listener = listening(Taken(), timeout=5.0)
    await listener.listening.wait()
    assert listener.port is not None
    silent = [await asyncio.open_connection(HOST, listener.port) for _ in range(3)]
    reader, writer = silent[-1]
    assert await asyncio.wait_for(reader.read(4096), 5) == b""  # the third: at once
    assert listener.refusals == {"more than 2 waiting to be identified": 1}
    for _, writer in silent:
        writer.close()


async def test_who_spoke_rc4_and_who_is_new_after_an_rc4_fleet_is_asked_in_rc4_first(
        listening: Callable[..., Listener]) -> None:
    taken = Taken()
    listener = listening(taken)
    await listener.listening.wait()
    assert listener.port is not None
    with capture_logs() as logs:
        async with Simulator(cloud=(HOST, listener.port), rc4=True, dial_interval=0.05):
            await eventually(lambda: len(taken.links) == 1)
            first, _ = taken.links[0]
            assert first.rc4
            first.close(InverterUnreachable("test: the link drops"))  # it dials again
            await eventually(lambda: len(taken.links) == 2)
    unanswered = [line for line in logs if line["event"].startswith("cloud link: request not")]
    assert len(unanswered) == 1  # the plain 0x98 of the first dial, not of the second
    assert taken.links[1][0].rc4
    # an inverter never seen before, from another address, is asked as the last one was
    reader, writer = await asyncio.open_connection(HOST, listener.port,
                                                   local_addr=("127.0.0.2", 0))
    frames = frame.FrameReader(rc4=True)
    first: list[frame.Frame | frame.FrameError] = []
    while not first:
        first += frames.feed(await asyncio.wait_for(reader.read(4096), 5))
    assert isinstance(first[0], frame.Frame) and first[0].command == 0x98 and first[0].rc4
    writer.close()


def test_the_listener_keeps_the_bridge_under_its_file_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def limit(soft: int) -> None:
        monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, 1 << 20))

    limit(20000)  # 64 for the bridge, 100 for its other parts, 128 + 64 not accepted yet
    assert cloud.link_cap(100, relayed=False) == 20000 - 64 - 100 - 128 - 64
    assert cloud.link_cap(100, relayed=True) == (20000 - 64 - 100 - 128 - 64) // 2  # + cloud
    limit(256)
    assert cloud.link_cap(100, relayed=True) == 1  # never none


async def test_an_inverter_back_after_a_while_is_read_at_once_without_its_backoff() -> None:
    settings = load_settings(env={"SERMATEC_CLOUD__LISTEN_PORT": "19042"})
    runtime = InverterRuntime(InverterSettings(serial="ST5K0SIMULATOR0001"), settings,
                              Broker(settings))
    runtime.attempts = 5  # it has not dialled in for a while: the next try is far off
    runtime.scheduler.hold(60)
    assert runtime.scheduler.due() is None
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    identity = Identity.from_reading(
        codec.decode_payload(0x98, 0, InverterModel().payload(0x98)))
    runtime.attach(Connection(reader, writer, peer="dialled", logger=runtime.log,
                              dialled_in=True), identity)
    assert (runtime.scheduler.due(), runtime.attempts) == ("live", 0)
    assert runtime.client.identity == identity and runtime.client.connected
    await runtime.client.close()
    theirs.close()
