"""One inverter's worker against the simulator, without a broker (publishes are kept)."""

from __future__ import annotations

import asyncio

from sermatec_bridge.bridge.service import Broker, Worker
from sermatec_bridge.config import load_settings
from sermatec_bridge.simulator import Simulator
from sermatec_bridge.simulator.model import Outcome


async def test_a_reply_too_short_for_the_tables_takes_the_inverter_offline_not_the_worker(
) -> None:
    async with Simulator(pcu=609) as sim:
        settings = load_settings(None, {
            "inverter": {"host": "127.0.0.1", "port": sim.port, "timeout": 1},
            "poll": {"live": 0.2},
        })
        broker = Broker(settings)
        worker = Worker(settings.all_inverters()[0], settings, broker)
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(50):
                await asyncio.sleep(0.05)
                if worker.online:
                    break
            assert worker.online
            availability = worker.topic("availability")
            handle = sim.model.handle

            def short_battery_reply(code: int, payload: bytes) -> Outcome:
                outcome = handle(code, payload)
                if code == 0x0A:
                    outcome.replies[:] = [(0x0A, b"\x00\x01")]
                return outcome

            sim.model.handle = short_battery_reply  # type: ignore[method-assign]
            await asyncio.sleep(0.6)
            assert not task.done(), task.exception() if task.done() else None
            assert broker.retained[availability] == "offline"
            sim.model.handle = handle  # type: ignore[method-assign]
            await asyncio.sleep(0.6)
            assert broker.retained[availability] == "online"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await worker.client.close()
