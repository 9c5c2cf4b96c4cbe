"""What comes in on MQTT is bounded: the client's queues, the results waiting to go out.

A flood on ``set/#`` must neither grow the bridge's memory nor its log, and answering a
command must never wait for the broker.
"""

from __future__ import annotations

import io
import json
import sys

import pytest
from paho.mqtt.client import MQTTMessage

from sermatec_bridge import log
from sermatec_bridge.bridge import publisher
from sermatec_bridge.bridge.publisher import Broker
from sermatec_bridge.config import load_settings


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    log.configure("info", "json")
    return stream


def events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def broker() -> Broker:
    return Broker(load_settings(None, {"inverter": {"host": "127.0.0.1"}}, env={}))


async def test_the_clients_inbox_is_bounded_and_says_so_once(lines: io.StringIO) -> None:
    client = broker().connect()
    message = MQTTMessage(topic=b"sermatec/x/set/grid_soc_min")
    message.payload = b"20"
    for _ in range(publisher.INCOMING + 500):  # as paho hands them over, nobody reading
        client._on_message(client._client, None, message)
    assert client._queue.qsize() == publisher.INCOMING
    said = [e for e in events(lines) if e["event"] == "mqtt client warnings"]
    assert len(said) == 1
    assert said[0]["counts"] == {"Message queue is full. Discarding message.": 1}


async def test_results_wait_in_a_bounded_queue_and_what_overflows_is_counted(
        lines: io.StringIO) -> None:
    bridge = broker()
    for n in range(publisher.RESULTS + 30):
        bridge.post("sermatec/x/set/result", {"ok": False, "n": n})  # returns at once
    assert bridge.results.qsize() == publisher.RESULTS
    said = [e for e in events(lines) if e["event"] == "write results not published"]
    assert said == [{"counts": {f"more than {publisher.RESULTS} waiting": 1},
                     "event": "write results not published", "level": "warning",
                     "timestamp": said[0]["timestamp"]}]
