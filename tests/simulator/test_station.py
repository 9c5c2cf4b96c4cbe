"""Station mode: the simulator dials a cloud server and answers its requests, over real TCP
on the loopback interface, plain or RC4, alongside a client on its own port."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from ports import free_port
from standincloud import WAIT, StandInCloud
from structlog.testing import capture_logs

from sermatec_bridge.protocol import codec, frame, tables
from sermatec_bridge.simulator import Simulator, run_simulator, server
from sermatec_bridge.simulator.model import InverterModel


@pytest.fixture
async def cloud() -> AsyncIterator[StandInCloud]:
    async with StandInCloud() as stand_in:
        yield stand_in


def station(cloud: StandInCloud, **kw: Any) -> Simulator:
    return Simulator(seed=3, cloud=cloud.address, dial_interval=0.05, **kw)


def values(reply: frame.Frame) -> dict[str, Any]:
    return codec.decode_payload(reply.command, 609, reply.payload).values


def cloud_setting(host: str, port: int) -> bytes:
    return codec.build(tables.CLOUD, 609, {"cloud_server": host, "cloud_port": str(port)})


# --------------------------------------------------------------------------------------
# The link
# --------------------------------------------------------------------------------------


async def test_the_simulator_dials_its_cloud_and_answers_queries_there(
        cloud: StandInCloud) -> None:
    async with station(cloud) as sim:
        link = await cloud.link()
        reply = await link.ask(0x98)
        assert reply.is_reply and not reply.rc4
        assert values(reply)["serial_number"] == sim.model.serial
        battery = await link.ask(0x0A)
        assert values(battery)["battery_soc"] == round(sim.model.soc)
        assert sim.cloud_connected and sim.cloud_links == 1


async def test_an_rc4_station_answers_rc4_and_leaves_plain_requests_unanswered(
        cloud: StandInCloud) -> None:
    async with station(cloud, rc4=True):
        link = await cloud.link()
        await link.send(0x98)  # plain: not this inverter's language
        reply = await link.ask(0x0A, rc4=True)
        assert (reply.command, reply.rc4) == (0x0A, True)  # the plain query got nothing


async def test_a_plain_station_leaves_rc4_requests_unanswered(cloud: StandInCloud) -> None:
    async with station(cloud):
        link = await cloud.link()
        await link.send(0x98, rc4=True)
        reply = await link.ask(0x0A)
        assert (reply.command, reply.rc4) == (0x0A, False)


async def test_the_simulator_dials_again_when_the_link_drops(cloud: StandInCloud) -> None:
    async with station(cloud) as sim:
        first = await cloud.link()
        first.close()
        second = await cloud.link()
        assert values(await second.ask(0x98))["serial_number"] == sim.model.serial
        assert sim.cloud_links == 2


async def test_the_simulator_keeps_dialling_until_the_cloud_listens() -> None:
    port = free_port()
    with capture_logs() as logs:
        async with Simulator(cloud=("127.0.0.1", port), dial_interval=0.05) as sim:
            deadline = asyncio.get_running_loop().time() + WAIT
            while not any(e["event"].startswith("cloud link: cannot connect") for e in logs):
                assert asyncio.get_running_loop().time() < deadline, "no attempt was made"
                await asyncio.sleep(0.05)
            assert not sim.cloud_connected
            async with StandInCloud(port) as stand_in:
                link = await stand_in.link()
                assert (await link.ask(0x98)).command == 0x98


# --------------------------------------------------------------------------------------
# Network state: 0xb1, 0x9f and --set
# --------------------------------------------------------------------------------------


async def test_0xb1_shows_the_network_state_it_was_given(cloud: StandInCloud) -> None:
    settings = {"wifi_mode": 1, "router_ssid": "Garage", "router_password": "pw-4711"}
    async with station(cloud, settings=settings):
        link = await cloud.link()
        network = values(await link.ask(0xB1))
    assert network == {"wifi_mode": "Station", "router_ssid": "Garage",
                       "router_password": "pw-4711", "cloud_server": "127.0.0.1",
                       "cloud_port": str(cloud.address[1])}


async def test_0x9f_on_the_link_drops_it_and_the_new_server_is_dialled(
        cloud: StandInCloud) -> None:
    async with StandInCloud() as new_cloud, station(cloud) as sim:
        link = await cloud.link()
        await link.send(0x9F, cloud_setting(*new_cloud.address))
        await link.wait_closed_by_inverter()
        moved = await new_cloud.link()
        network = values(await moved.ask(0xB1))
        assert (network["cloud_server"], network["cloud_port"]) == (
            "127.0.0.1", str(new_cloud.address[1]))
        assert sim.model.cloud_server() == new_cloud.address


async def test_0x9f_through_the_local_port_moves_the_cloud_link(cloud: StandInCloud) -> None:
    """What `cloud set` will do: the write goes to port 8899, the link follows."""
    async with StandInCloud() as new_cloud, station(cloud) as sim:
        old = await cloud.link()
        assert sim.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(frame.request(0x9F, cloud_setting(*new_cloud.address)))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(4096), WAIT) == b""  # 0x9f hangs up
        writer.close()
        await old.wait_closed_by_inverter()
        assert (await (await new_cloud.link()).ask(0x98)).command == 0x98


def test_access_point_mode_has_no_cloud_to_dial() -> None:
    station_mode = InverterModel(settings={"cloud_server": "10.1.2.3", "cloud_port": 19042})
    assert station_mode.cloud_server() == ("10.1.2.3", 19042)
    access_point = InverterModel(settings={"wifi_mode": "Access point",
                                           "cloud_server": "10.1.2.3", "cloud_port": "19042"})
    assert access_point.cloud_server() is None
    assert InverterModel(settings={"cloud_port": "port"}).cloud_server() is None


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any connection attempt is recorded and fails: the test never reaches the network."""
    attempts: list[Any] = []

    async def refuse(*args: Any, **kw: Any) -> Any:
        attempts.append(args)
        raise ConnectionRefusedError("not in this test")

    monkeypatch.setattr(asyncio, "open_connection", refuse)
    yield attempts


@pytest.mark.parametrize("address", ["8.209.71.159", "2a01:4f8::1"])
async def test_a_public_cloud_server_is_never_dialled(address: str,
                                                      no_connections: list[Any]) -> None:
    with pytest.raises(ConnectionRefusedError, match="not on this host or a private network"):
        await server._connect_locally(address, 19042)
    assert no_connections == []
    with pytest.raises(ConnectionRefusedError, match="not in this test"):
        await server._connect_locally("192.168.1.50", 19042)
    assert no_connections == [("192.168.1.50", 19042)]


# --------------------------------------------------------------------------------------
# One model, two ways in; a fleet
# --------------------------------------------------------------------------------------


async def test_the_local_port_and_the_cloud_link_are_served_at_once(
        cloud: StandInCloud) -> None:
    """A client holds port 8899 (the one the simulator serves there) while the cloud link
    is answered, and both see one inverter: a write on the link shows on the port."""
    async with station(cloud) as sim:
        assert sim.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(frame.request(0x0C))
        await writer.drain()
        local = frame.FrameReader()
        (status,) = local.feed(await asyncio.wait_for(reader.read(4096), WAIT))
        assert isinstance(status, frame.Frame) and values(status)["inverter_on"] is True
        assert sim.busy  # port 8899 is taken by this client
        link = await cloud.link()
        await link.send(0x64, codec.build(tables.POWER, 609, {"inverter_on": False}))
        assert values(await link.ask(0x0C))["inverter_on"] is False
        writer.write(frame.request(0x0C))
        await writer.drain()
        (status,) = local.feed(await asyncio.wait_for(reader.read(4096), WAIT))
        assert isinstance(status, frame.Frame) and values(status)["inverter_on"] is False
        writer.close()


async def test_a_fleet_dials_in_each_with_its_own_serial(cloud: StandInCloud) -> None:
    fleet = asyncio.create_task(run_simulator(port=0, count=3, cloud=cloud.address,
                                              serial="ST10K0FLEET0001", rc4=True))
    try:
        links = [await cloud.link() for _ in range(3)]
        serials = {values(await link.ask(0x98, rc4=True))["serial_number"] for link in links}
        assert serials == {"ST10K0FLEET0001", "ST10K0FLEET0002", "ST10K0FLEET0003"}
    finally:
        fleet.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fleet


def test_simulate_dials_with_rc4_from_the_command_line() -> None:
    """The CLI, as a user runs it: `simulate --cloud HOST:PORT --rc4 --set ...`."""

    async def scenario() -> dict[str, Any]:
        async with StandInCloud() as stand_in:
            host, port = stand_in.address
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sermatec_bridge", "simulate", "--port", str(free_port()),
                "--cloud", f"{host}:{port}", "--rc4", "--set", "router_password=s3cret",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                link = await stand_in.link()
                reply = await link.ask(0xB1, rc4=True)
                assert reply.rc4
                return values(reply)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                await process.wait()

    network = asyncio.run(scenario())
    assert network["router_password"] == "s3cret"


@pytest.mark.parametrize(("argv", "message"), [
    (["--rc4"], "--rc4 is the cloud link's encryption: it needs --cloud HOST:PORT"),
    (["--cloud", "127.0.0.1:19042", "--set", "cloud_port=1"],
     "--cloud sets the cloud server; leave out --set cloud_port"),
    (["--cloud", "19042"], "'19042' is not HOST:PORT"),
    (["--cloud", "127.0.0.1:0"], "0 is not a TCP port"),
])
def test_simulate_refuses_contradictory_cloud_options(argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sermatec_bridge", "simulate", *argv],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr
