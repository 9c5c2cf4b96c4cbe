"""Commands on MQTT: a flood is answered without the bridge waiting on the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sermatec_bridge.bridge import publisher

from .conftest import BridgeFactory, HomeAssistant, eventually, topic, wait_ready


async def test_refusals_never_hold_up_the_reading_of_commands(
        bridge_log: Callable[[], list[dict[str, Any]]],  # first: the bridge logs into it
        ha: HomeAssistant, start_bridge: BridgeFactory) -> None:
    bridge = start_bridge()  # writes off: every write is refused
    await wait_ready(ha)
    broker = bridge.bridge.broker
    client = broker.client
    assert client is not None
    publish = client.publish
    acknowledged = asyncio.Event()  # a broker that acknowledges nothing, for a while

    async def no_puback(*args: Any, **kwargs: Any) -> None:
        await acknowledged.wait()
        await publish(*args, **kwargs)

    client.publish = no_puback  # type: ignore[method-assign]
    mark = ha.mark()
    for n in range(60):
        await ha.publish(topic("set/grid_soc_min"), str(20 + n))
    # Every command read and answered; the answers wait, none holds up the reading.
    await eventually(lambda: broker.results.qsize() == 60 - publisher.SENDERS,
                     what="all 60 commands read while no result is acknowledged")
    acknowledged.set()
    await ha.wait_for(lambda m: len(ha.on(topic("set/result"), mark)) == 60, after=mark,
                      what="60 results")
    results = [m.json() for m in ha.on(topic("set/result"), mark)]
    assert all(r["ok"] is False and "writes are disabled" in r["error"] for r in results)
    refused = [line for line in bridge_log() if line["event"] == "writes refused"]
    assert len(refused) == 1  # the first at once; the rest follow in a minute, counted
    assert refused[0]["counts"] == {"write refused": 1}
    assert "writes are disabled" in refused[0]["error"]
    await bridge.stop()  # or when it stops: no count is left unsaid
    refused = [line for line in bridge_log() if line["event"] == "writes refused"]
    assert [line["counts"] for line in refused] == [{"write refused": 1},
                                                    {"write refused": 59}]
