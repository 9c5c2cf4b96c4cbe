"""The optional Prometheus endpoint, as a scraper sees it."""

from __future__ import annotations

import asyncio

from sermatec_bridge.simulator import Fault, Simulator

from .conftest import BridgeFactory, HomeAssistant, free_port, wait_ready


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
