"""The optional Prometheus endpoint, as a scraper sees it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sermatec_bridge.bridge import metrics
from sermatec_bridge.simulator import Fault, Simulator

from .conftest import (
    HOST,
    BridgeFactory,
    HomeAssistant,
    Mosquitto,
    RunningBridge,
    free_port,
    make_settings,
    topic,
    wait_ready,
)


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return head.splitlines()[0], body


def sample(body: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name))


async def test_metrics_count_polls_writes_and_failures(
    ha: HomeAssistant, start_bridge: BridgeFactory, sim: Simulator,
) -> None:
    port = free_port()
    start_bridge({"health": {"metrics_port": port, "metrics_host": "127.0.0.1"},
                  "writes": {"enabled": True, "min_interval": 0}})
    await wait_ready(ha)
    status, body = await scrape(port)
    assert status == "HTTP/1.1 200 OK"
    assert 'sermatec_polls_total{inverter="' in body and 'group="live"}' in body
    assert sample(body, "sermatec_inverter_online") == 1
    assert sample(body, "sermatec_mqtt_connected") == 1

    await ha.write("set/grid_soc_min", "33")
    await ha.write("set/grid_soc_min", "3")
    _, body = await scrape(port)
    assert sample(body, 'sermatec_writes_total{inverter="' + sim.model.serial
                  + '",result="ok"}') == 1
    assert sample(body, 'sermatec_writes_total{inverter="' + sim.model.serial
                  + '",result="refused"}') == 1

    sim.inject(Fault.SILENCE, 20)

    async def failures() -> float:
        return sample((await scrape(port))[1], "sermatec_poll_failures_total")

    deadline = asyncio.get_running_loop().time() + 15
    while await failures() < 1:
        assert asyncio.get_running_loop().time() < deadline, "no poll failure counted"
        await asyncio.sleep(0.3)
    status, _ = await scrape(port, "/other")
    assert status == "HTTP/1.1 404 Not Found"


async def test_metrics_listen_on_this_host_only_when_just_the_port_is_set(
        ha: HomeAssistant, start_bridge: BridgeFactory) -> None:
    port = free_port()
    start_bridge({"health": {"metrics_port": port}})
    await wait_ready(ha)
    status, _ = await scrape(port)
    assert status == "HTTP/1.1 200 OK"
    # Bound to 127.0.0.1, not to every address: another address of this host is refused.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.2", port)


async def test_metrics_survive_a_huge_request_and_a_crowd_of_idle_connections(
        ha: HomeAssistant, start_bridge: BridgeFactory, caplog: pytest.LogCaptureFixture,
        bridge_log: Callable[[], list[dict[str, Any]]]) -> None:
    port = free_port()
    start_bridge({"health": {"metrics_port": port}})
    await wait_ready(ha)
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /" + b"a" * 100 * 1024 + b" HTTP/1.1\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
        assert not response or response.startswith(b"HTTP/1.1 431 ")
    writer.close()
    idle = [await asyncio.open_connection(HOST, port) for _ in range(200)]
    try:
        mark = ha.mark()
        await ha.wait_json(topic("live"), after=mark)  # the bridge goes on meanwhile
        held = 0
        for reader, _ in idle:  # those beyond the cap are closed at once
            try:
                await asyncio.wait_for(reader.read(), 0.05)
            except TimeoutError:
                held += 1
        assert held <= metrics.MAX_CONNECTIONS
    finally:
        for _, idle_writer in idle:
            idle_writer.close()
    status, body = await scrape_when_free(port)
    assert status == "HTTP/1.1 200 OK" and "sermatec_inverter_online" in body
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    lines = bridge_log()
    assert not [line for line in lines if "exception" in line or line["level"] == "error"]
    assert [line["event"] for line in lines].count("metrics connections refused") == 1


async def scrape_when_free(port: int, within: float = 15.0) -> tuple[str, str]:
    """A scrape, once the connections held by others have been let go."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            status, body = await scrape(port)
            if status:
                return status, body
        except (ConnectionError, IndexError):
            pass
        assert asyncio.get_running_loop().time() < deadline, "no scrape answered"
        await asyncio.sleep(0.2)


async def test_label_values_from_the_inverter_are_escaped(
        ha: HomeAssistant, broker: Mosquitto, tmp_path: Path) -> None:
    serial = 'SN"1\\2'
    async with Simulator(pcu=609, serial=serial) as odd:
        port = free_port()
        bridge = RunningBridge(make_settings(broker.port, odd.port or 0, tmp_path, {
            "health": {"metrics_port": port}})).start()
        try:
            await ha.wait_text(topic("availability", "SN_1_2"), "online", within=15)
            _, body = await scrape(port)
        finally:
            await bridge.stop()
    assert 'sermatec_inverter_online{inverter="SN\\"1\\\\2"} 1' in body
