"""The compose stack's Mosquitto configuration (mosquitto/mosquitto.conf), run as it is but
on a free loopback port with its data in a temporary directory: it speaks MQTT 5, which
Home Assistant wants for its own broker link from 2026.6, and honours a command's message
expiry, which the bridge announces on its command topics."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .conftest import HOST, Mosquitto, eventually

STACK_CONFIG = Path(__file__).resolve().parents[2] / "mosquitto" / "mosquitto.conf"
V5 = aiomqtt.ProtocolVersion.V5


class StackMosquitto(Mosquitto):
    def _write_config(self) -> None:
        text = STACK_CONFIG.read_text()
        text, listeners = re.subn(r"(?m)^listener 1883$", f"listener {self.port} {HOST}", text)
        assert listeners == 1, "the stack's one listener"
        text = text.replace("/mosquitto/data/", f"{self.workdir}/")
        if os.geteuid() == 0:
            text += "user root\n"  # else it drops to "mosquitto", who cannot write there
        self.config.write_text(text)


@pytest.fixture
def stack_broker(mosquitto_bin: str, tmp_path: Path) -> Iterator[Mosquitto]:
    with StackMosquitto(mosquitto_bin, tmp_path / "stack-mosquitto") as mosquitto:
        yield mosquitto


def expiring(seconds: int) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = seconds
    return properties


async def test_the_stack_broker_speaks_mqtt_5_and_expires_commands(
        stack_broker: Mosquitto) -> None:
    session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    session.SessionExpiryInterval = 300

    def bridge() -> aiomqtt.Client:  # a persistent MQTT 5 session, as the bridge keeps
        return aiomqtt.Client(HOST, stack_broker.port, identifier="stack-bridge",
                              protocol=V5, clean_start=False, properties=session, timeout=5)

    async with bridge() as client:
        await client.subscribe("sermatec/+/set/#", qos=1)
    # The bridge is away; Home Assistant sends two commands, one with a 1 s expiry.
    async with aiomqtt.Client(HOST, stack_broker.port, protocol=V5, timeout=5) as ha:
        await ha.publish("sermatec/X/set/grid_soc_min", "30", qos=1, properties=expiring(1))
        await ha.publish("sermatec/X/set/inverter_on", "ON", qos=1)
    await asyncio.sleep(2.5)  # the first one's expiry, with a margin of 1.5 s
    received: list[aiomqtt.Message] = []
    async with bridge() as client:

        async def read() -> None:
            async for message in client.messages:
                received.append(message)

        reader = asyncio.create_task(read())
        try:  # queued messages come in the order they were published: the expired first
            await eventually(lambda: bool(received), what="the queued command")
        finally:
            reader.cancel()
    assert [m.topic.value for m in received] == ["sermatec/X/set/inverter_on"]
    assert received[0].properties is not None, "an MQTT 5 delivery"
