"""One inverter's publisher on a broker that another bridge shares (no connection here:
what the bridge wants retained shows in ``broker.desired``)."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sermatec_bridge.bridge.discovery import DiscoveryContext
from sermatec_bridge.bridge.publisher import Broker, Publisher
from sermatec_bridge.config import load_settings

SERIAL = "AB12345"


def signed_by(client_id: str) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [("bridge", client_id)]
    return properties


def of_the_inverter(broker: Broker) -> set[str]:
    return {t for t in broker.desired if SERIAL in t}


async def test_an_inverter_another_bridge_took_is_this_ones_again_once_it_answers_here(
        ) -> None:
    settings = load_settings(overrides={"inverter": {"host": "127.0.0.1"}}, env={})
    broker = Broker(settings)
    broker.ready.set()  # as on a connection whose holdings are known (nothing is sent)
    publisher = Publisher(broker, settings)
    publisher.topic_id = SERIAL
    await publisher.availability(True)
    await publisher.announce(DiscoveryContext(serial=SERIAL, model="5 kW", pcu_version=609,
                                              version=609))
    await publisher.state("live", {"battery_soc": 50})
    ours = of_the_inverter(broker)
    assert {f"sermatec/{SERIAL}/live", f"homeassistant/device/{SERIAL}/config"} <= ours

    # Another bridge says online: it serves the inverter now.
    broker.observe(f"sermatec/{SERIAL}/availability", b"online", False, signed_by("other"))
    assert of_the_inverter(broker) == set(), "nothing of it is re-sent by this bridge"
    assert publisher.online is None
    await publisher.state("live", {"battery_soc": 51})  # a poll that was under way
    await publisher.reconcile()  # a reconnection
    assert of_the_inverter(broker) == set()

    await publisher.availability(True)  # it answers this bridge again
    assert of_the_inverter(broker) == ours - {f"sermatec/{SERIAL}/live"}
    assert broker.desired[f"sermatec/{SERIAL}/availability"] == "online"
