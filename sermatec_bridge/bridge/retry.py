"""When the bridge tries its MQTT broker again, and what it tells the user about it.

A connection attempt fails, or a connection ends, in one of three ways:

* **The broker cannot be reached.** Its port is closed (it restarts): try again every
  0.25 to 0.5 s, however long the outage. An attempt at a closed port costs nothing, and
  the bridge is back, subscribed, within about half a second of the broker's return:
  states are published again at once, and a write published right after the return
  finds the bridge listening. Anything else (no answer, no route, a name that does not
  resolve, a TLS handshake that fails) costs the broker or the network more and is often
  a setting: back off from 0.5 s to at most 4 s, so the bridge is still back within a few
  seconds, and say which setting to check where one is to blame.
* **The broker refuses the bridge** (a wrong password, a client id it rejects): back off
  from 1 s to a minute. The log says once, in one line, which setting to check.
* **The broker closes the connection soon after accepting it**, twice in a row, or says
  "session taken over": another client uses the same client id (Mosquitto 2.0 gives no
  reason when it pushes a client out; the rare broker that drops a client for a message
  it refuses looks the same, and the log line says so). The bridge that is pushed out
  that soon gives way (30 s, doubling up to 10 min), so that the one that was connected
  first keeps the broker; the log says so once, naming ``mqtt.client_id``.

Everything is logged once per cause: the first failure, not the next thousand.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiomqtt.exceptions import MqttCodeError, MqttConnectError

from ..backoff import backoff
from ..config import MqttSettings, env_name

SETTLED = 5.0  # seconds a connection must last before it counts as this bridge's own
REACH = (0.25, 0.5)  # seconds between attempts while the broker's port is closed
UNREACHABLE = (0.5, 4.0)  # first and longest wait while it does not answer at all
REFUSED = (1.0, 60.0)  # first and longest wait after the broker refused the bridge
GIVE_WAY = (30.0, 600.0)  # first and longest wait while another client has our id

TAKEN_OVER = 142  # MQTT 5 reason code "session taken over"
_CREDENTIALS = {134, 135, 140}  # bad user name or password, not authorized, bad auth method


@dataclass(frozen=True)
class Step:
    """What to do after a failure: wait ``delay`` seconds; log ``event`` at ``level``."""

    delay: float
    event: str
    level: str = "warning"
    fields: dict[str, Any] = field(default_factory=dict)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was raised from or while handling, and so on."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def reason_code(error: BaseException) -> int | None:
    """The MQTT reason code behind ``error`` (aiomqtt chains it as the cause), if any."""
    for seen in _chain(error):
        if isinstance(seen, MqttCodeError) and seen.rc is not None:
            rc = seen.rc
            return int(rc.value) if hasattr(rc, "value") else int(rc)
    return None


def os_error(error: BaseException) -> OSError | None:
    """The socket error behind ``error`` (aiomqtt raises its text, with it as context)."""
    return next((seen for seen in _chain(error) if isinstance(seen, OSError)), None)


def what_to_check(code: int | None, mqtt: MqttSettings) -> str | None:
    """The setting a refusal points at, in words a user can act on."""
    if code in _CREDENTIALS:
        if mqtt.username is None:
            return (f"mqtt.username and mqtt.password ({env_name(['mqtt', 'username'])}, "
                    f"{env_name(['mqtt', 'password'])}): none is set, and this broker does "
                    "not let anonymous clients in")
        return (f"mqtt.username and mqtt.password ({env_name(['mqtt', 'username'])}, "
                f"{env_name(['mqtt', 'password'])} or {env_name(['mqtt', 'password'])}_FILE)")
    if code == 133:
        return f"mqtt.client_id ({env_name(['mqtt', 'client_id'])}): the broker rejects it"
    if code == 132:
        return (f"mqtt.protocol ({env_name(['mqtt', 'protocol'])}): the broker does not "
                "speak this MQTT version")
    if code == 138:
        return "the broker's configuration: it has banned this client"
    return None


class BrokerRetry:
    """Decides the wait after each failure; remembers what was already said."""

    def __init__(self, mqtt: MqttSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.mqtt = mqtt
        self.clock = clock
        self.since: float | None = None  # when the current connection was accepted
        self.away_since: float | None = None  # when the broker was lost, until it is back
        self.refused = 0  # refusals in a row
        self.unanswered = 0  # attempts in a row that got no answer at all
        self.short = 0  # connections in a row that ended before SETTLED
        self.given_way = 0  # times in a row this bridge gave way to another client
        self.said: str | None = None  # the cause logged last

    def connected(self) -> float | None:
        """The broker accepted the bridge; how long it was away (None: it was not)."""
        now = self.clock()
        self.since, self.refused, self.unanswered, self.said = now, 0, 0, None
        away, self.away_since = self.away_since, None
        return None if away is None else now - away

    def failed(self, error: BaseException) -> Step:
        """An attempt failed or a connection ended with ``error``: what now."""
        now = self.clock()
        lasted = None if self.since is None else now - self.since
        self.since = None
        if self.away_since is None:
            self.away_since = now
        code = reason_code(error)
        if lasted is not None:
            return self._ended(lasted, code, error)
        if isinstance(error, MqttConnectError):
            self.refused += 1
            delay = backoff(self.refused, *REFUSED)
            fields = {"error": str(error)}
            if (check := what_to_check(code, self.mqtt)) is not None:
                fields["check"] = check
            return self._say("mqtt connection failed, retrying", delay, "error", fields)
        fields = {"error": str(error)}
        cause = os_error(error)
        if isinstance(cause, ConnectionRefusedError | ConnectionResetError):
            self.unanswered = 0
            return self._say("mqtt connection failed, retrying", random.uniform(*REACH),
                             "warning", fields)
        self.unanswered += 1
        if isinstance(cause, socket.gaierror):
            fields["check"] = (f"mqtt.host ({env_name(['mqtt', 'host'])}): "
                               f"{self.mqtt.host!r} is not a name this machine can resolve")
        elif isinstance(cause, ssl.SSLError):
            fields["check"] = ("mqtt.tls (ca_file, cert_file, key_file, insecure): the TLS "
                               "handshake with the broker failed")
        elif "timed out" in str(error).lower():
            fields["hint"] = ("the broker did not answer: is it a TLS listener "
                              "(mqtt.tls.enabled)?" if not self.mqtt.tls.enabled
                              else "the broker did not answer")
        return self._say("mqtt connection failed, retrying",
                         backoff(self.unanswered, *UNREACHABLE), "warning", fields)

    def _ended(self, lasted: float, code: int | None, error: BaseException) -> Step:
        if lasted >= SETTLED:
            self.short = self.given_way = 0
        else:
            self.short += 1
        if self.short >= 2 or (code == TAKEN_OVER and self.short):
            self.given_way += 1
            delay = backoff(self.given_way, *GIVE_WAY)
            client_id = self.mqtt.client_id
            return self._say(
                "another MQTT client uses this bridge's client id, giving way: give each "
                f"bridge its own mqtt.client_id ({env_name(['mqtt', 'client_id'])})",
                delay, "error", {"client_id": client_id,
                                 "seen": "the broker closed the connection "
                                         f"{lasted:.1f} s after accepting it",
                                 "hint": "no other bridge with this id? then the broker "
                                         "refuses something of this one's: see its log"})
        self.said = None  # a new episode: its first failure is worth a line again
        event = ("another MQTT client connected with this bridge's client id; "
                 "taking the connection back" if code == TAKEN_OVER
                 else "mqtt connection lost, reconnecting")
        return self._say(event, random.uniform(*REACH), "warning", {"error": str(error)})

    def _say(self, event: str, delay: float, level: str, fields: dict[str, Any]) -> Step:
        """Log a cause the first time in a row only; after that, at debug level."""
        cause = f"{event} {fields.get('error', '')}"
        if cause == self.said:
            return Step(delay, event, "debug", fields)
        self.said = cause
        return Step(delay, event, level, fields)
