"""When the bridge tries its broker again, and what it says: a fake clock, no broker."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
from aiomqtt.exceptions import MqttCodeError, MqttConnectError, MqttError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sermatec_bridge.bridge.retry import (
    GIVE_WAY,
    REACH,
    REFUSED,
    SETTLED,
    UNREACHABLE,
    BrokerRetry,
)
from sermatec_bridge.config import MqttSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused(code: int) -> MqttConnectError:
    return MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=code))


def dropped(code: int = 128) -> MqttError:
    """What aiomqtt raises when the broker ends the connection (the reason as its cause)."""
    error = MqttError("Disconnected during message iteration")
    error.__cause__ = MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, identifier=code),
                                    "Unexpected disconnection")
    return error


def unreachable(cause: OSError) -> MqttError:
    """What aiomqtt raises when its socket fails: the text, with the error as context."""
    error = MqttError(str(cause))
    error.__context__, error.__suppress_context__ = cause, True
    return error


def loud(step: Any) -> bool:
    return step.level != "debug"


def test_a_closed_broker_port_is_tried_every_half_second_however_long_it_is_away() -> None:
    clock = Clock()
    retry = BrokerRetry(MqttSettings(), clock)
    steps = []
    for _ in range(2000):  # about a quarter of an hour of attempts
        steps.append(retry.failed(unreachable(ConnectionRefusedError(111, "refused"))))
        clock.now += steps[-1].delay
    assert all(REACH[0] <= s.delay <= REACH[1] for s in steps)
    assert [loud(s) for s in steps[:3]] == [True, False, False], "said once, not 2000 times"
    assert retry.connected() == pytest.approx(clock.now - 100.0), "how long it was away"


@pytest.mark.parametrize(("cause", "check"), [
    (socket.gaierror(-2, "Name or service not known"), "mqtt.host (SERMATEC_MQTT__HOST): "
     "'broker.lan' is not a name this machine can resolve"),
    (ssl.SSLError(1, "certificate verify failed"), "mqtt.tls (ca_file, cert_file, key_file, "
     "insecure): the TLS handshake with the broker failed"),
    (OSError(113, "No route to host"), None)])
def test_a_broker_that_does_not_answer_is_tried_less_often_up_to_every_four_seconds(
        cause: OSError, check: str | None) -> None:
    """A name that does not resolve or a TLS handshake that fails is a setting: the bridge
    does not knock several times a second, names the setting, and is back within seconds."""
    clock = Clock()
    retry = BrokerRetry(MqttSettings(host="broker.lan"), clock)
    steps = [retry.failed(unreachable(cause)) for _ in range(50)]
    assert steps[0].fields.get("check") == check
    assert steps[0].delay <= UNREACHABLE[0] < max(s.delay for s in steps) <= UNREACHABLE[1]
    assert all(s.delay >= UNREACHABLE[1] / 2 for s in steps[10:]), "backed off"
    retry.connected()
    assert retry.failed(unreachable(cause)).delay <= UNREACHABLE[0], "a success starts over"


def test_wrong_credentials_name_the_settings_once_and_back_off_to_a_minute() -> None:
    retry = BrokerRetry(MqttSettings(username="bridge"), Clock())
    steps = [retry.failed(refused(135)) for _ in range(10)]
    assert steps[0].level == "error" and not any(loud(s) for s in steps[1:])
    check = steps[0].fields["check"]
    assert "mqtt.username" in check and "SERMATEC_MQTT__PASSWORD" in check
    assert steps[-1].delay > 20 and max(s.delay for s in steps) <= REFUSED[1]


def test_no_user_name_at_a_broker_that_wants_one_says_so() -> None:
    step = BrokerRetry(MqttSettings(), Clock()).failed(refused(134))
    assert "none is set" in step.fields["check"]


def test_a_rejected_client_id_names_that_setting() -> None:
    step = BrokerRetry(MqttSettings(), Clock()).failed(refused(133))
    assert step.fields["check"].startswith("mqtt.client_id")


def pushed_out_twice(retry: BrokerRetry, clock: Clock, code: int = 128) -> list[Any]:
    steps = []
    for _ in range(2):
        retry.connected()
        clock.now += 0.4  # the other client with our id takes the connection back
        steps.append(retry.failed(dropped(code)))
        clock.now += steps[-1].delay
    return steps


def test_pushed_out_soon_after_connecting_twice_gives_way_and_names_the_client_id() -> None:
    clock = Clock()
    retry = BrokerRetry(MqttSettings(client_id="garage"), clock)
    first, second = pushed_out_twice(retry, clock)
    assert first.delay <= REACH[1], "once may be chance: reconnect at once"
    assert second.delay >= GIVE_WAY[0] / 2 and second.level == "error"
    assert "mqtt.client_id" in str(second.event) and second.fields["client_id"] == "garage"


def test_session_taken_over_soon_after_connecting_gives_way_at_once() -> None:
    clock = Clock()
    retry = BrokerRetry(MqttSettings(), clock)
    retry.connected()
    clock.now += 0.4
    assert retry.failed(dropped(142)).delay >= GIVE_WAY[0] / 2


def test_the_bridge_connected_first_takes_the_connection_back_at_once() -> None:
    clock = Clock()
    retry = BrokerRetry(MqttSettings(), clock)
    retry.connected()
    clock.now += 3600  # connected for an hour, then another client takes our id
    for code in (142, 128):
        step = retry.failed(dropped(code))
        assert step.delay <= REACH[1]
        retry.connected()
        clock.now += SETTLED + 1


def test_a_connection_that_lasted_forgets_earlier_short_ones() -> None:
    clock = Clock()
    retry = BrokerRetry(MqttSettings(), clock)
    retry.connected()
    clock.now += 0.4
    retry.failed(dropped())
    retry.connected()
    clock.now += SETTLED + 1
    retry.failed(dropped())  # a broker restart after a while
    retry.connected()
    clock.now += 0.4
    assert retry.failed(dropped()).delay <= REACH[1]

