"""Prometheus metrics at ``/metrics`` (off unless ``health.metrics_port`` is set).

A few counters and gauges in the text exposition format, served by a tiny asyncio HTTP
responder: the bridge needs no web framework for one read-only page. It listens on
127.0.0.1 unless ``health.metrics_host`` says otherwise, holds at most
:data:`MAX_CONNECTIONS` connections, reads request heads of at most :data:`MAX_REQUEST`
bytes and waits at most :data:`REQUEST_TIMEOUT` seconds for one: whatever a client sends,
it gets an answer or a closed connection, and the bridge goes on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ..log import Tally

if TYPE_CHECKING:
    from .service import Bridge

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 16
MAX_REQUEST = 8 * 1024  # bytes of a request head
REQUEST_TIMEOUT = 5.0  # seconds for a whole request head, and for the answer to go out


@dataclass
class ProxyStats:
    """The app proxy's counters for one inverter (bridge/proxy.py)."""

    clients: int = 0  # connected right now
    forwarded: int = 0  # requests that reached the inverter
    writes: Counter[str] = field(default_factory=Counter)  # "passed" / "refused"
    dropped: Counter[str] = field(default_factory=Counter)  # requests not forwarded, by reason

    def state(self) -> dict[str, Any]:
        """The diagnostic entity's state object."""
        return {"clients": self.clients, "forwarded": self.forwarded,
                "writes_passed": self.writes["passed"],
                "writes_refused": self.writes["refused"],
                "dropped": sum(self.dropped.values())}


@dataclass
class CloudStats(ProxyStats):
    """The cloud relay's counters for one inverter (bridge/cloud.py): the vendor cloud is
    served as one more client of the inverter, ``clients`` 1 while its link is up."""

    def refused(self) -> Counter[str]:
        """Requests that did not reach the inverter, by reason (garbage is no request)."""
        return Counter({r: n for r, n in self.dropped.items() if r != "garbage"})

    def state(self) -> dict[str, Any]:
        """The diagnostic entity's state object."""
        refused = self.refused()
        return {"link": "up" if self.clients else "down", "relayed": self.forwarded,
                "refused": sum(refused.values()), "reasons": dict(sorted(refused.items())),
                "writes_refused": self.writes["refused"]}


@dataclass
class Stats:
    """One inverter's counters, kept by its worker."""

    polls: Counter[str] = field(default_factory=Counter)  # successful polls by group
    poll_failures: int = 0
    poll_seconds: float = 0.0  # summed over successful polls
    writes: Counter[str] = field(default_factory=Counter)  # "ok" / "refused"
    proxy: ProxyStats = field(default_factory=ProxyStats)
    cloud: CloudStats = field(default_factory=CloudStats)


def exposition(bridge: Bridge) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP sermatec_{name} {text}", f"# TYPE sermatec_{name} {kind}"])
        lines.extend(f"sermatec_{name}{labels} {value:g}" for labels, value in samples)

    workers = [(label(w.serial or w.config.label), w) for w in bridge.workers]
    metric("polls_total", "counter", "Successful polls, by group.",
           [(f'{{inverter="{i}",group="{label(g)}"}}', n) for i, w in workers
            for g, n in sorted(w.stats.polls.items())])
    metric("poll_failures_total", "counter", "Polls that failed (inverter unreachable, "
           "timeout, bad reply).", [(f'{{inverter="{i}"}}', w.stats.poll_failures)
                                    for i, w in workers])
    metric("poll_seconds_total", "counter", "Time spent in successful polls.",
           [(f'{{inverter="{i}"}}', w.stats.poll_seconds) for i, w in workers])
    metric("writes_total", "counter", "Settings writes, by result.",
           [(f'{{inverter="{i}",result="{label(r)}"}}', n) for i, w in workers
            for r, n in sorted(w.stats.writes.items())])
    metric("reconnects_total", "counter", "TCP connections opened to the inverter.",
           [(f'{{inverter="{i}"}}', w.client.reconnects) for i, w in workers])
    metric("inverter_online", "gauge", "1 while the inverter answers.",
           [(f'{{inverter="{i}"}}', int(w.online)) for i, w in workers])
    proxied = [(i, w.stats.proxy) for i, w in workers if w.config.proxy_port is not None]
    metric("proxy_clients", "gauge", "App proxy clients connected.",
           [(f'{{inverter="{i}"}}', p.clients) for i, p in proxied])
    metric("proxy_requests_forwarded_total", "counter",
           "App proxy requests that reached the inverter.",
           [(f'{{inverter="{i}"}}', p.forwarded) for i, p in proxied])
    metric("proxy_writes_total", "counter", "App writes, by result (passed / refused).",
           [(f'{{inverter="{i}",result="{r}"}}', p.writes[r]) for i, p in proxied
            for r in ("passed", "refused")])
    metric("proxy_requests_dropped_total", "counter",
           "App proxy requests not forwarded, by reason.",
           [(f'{{inverter="{i}",reason="{label(r)}"}}', n) for i, p in proxied
            for r, n in sorted(p.dropped.items())])
    relayed = [(i, w.stats.cloud) for i, w in workers if w.relayed]
    metric("cloud_link_up", "gauge", "1 while the link to the vendor cloud is up.",
           [(f'{{inverter="{i}"}}', c.clients) for i, c in relayed])
    metric("cloud_requests_relayed_total", "counter",
           "Vendor cloud requests that reached the inverter.",
           [(f'{{inverter="{i}"}}', c.forwarded) for i, c in relayed])
    metric("cloud_requests_refused_total", "counter",
           "Vendor cloud requests that did not reach the inverter, by reason.",
           [(f'{{inverter="{i}",reason="{label(r)}"}}', n) for i, c in relayed
            for r, n in sorted(c.refused().items())])
    if (listener := bridge.listener) is not None:
        metric("cloud_inverters_connected", "gauge",
               "Inverters connected to the cloud listener.",
               [("", listener.connected)])
        metric("cloud_connections_refused_total", "counter",
               "Connections to the cloud listener refused, by reason.",
               [(f'{{reason="{label(r)}"}}', n) for r, n in sorted(listener.refusals.items())])
    metric("mqtt_connected", "gauge", "1 while the MQTT broker is connected.",
           [("", int(bridge.broker.client is not None))])
    return "\n".join(lines) + "\n"


def label(value: str) -> str:
    """A label value as the exposition format wants it: backslash, quote and newline
    escaped (a serial number comes from the inverter: it may hold any of them)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def serve(bridge: Bridge, host: str, port: int) -> None:
    """Answer GET /metrics until cancelled, whatever the clients send or fail to send."""
    refused = Tally(log, "metrics connections refused")
    open_connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= MAX_CONNECTIONS:
            refused.add(f"more than {MAX_CONNECTIONS} at once")
            writer.close()
            return
        open_connections += 1
        try:
            response = await _response(reader, bridge)
            if response is not None:
                writer.write(response)
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await writer.drain()
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            open_connections -= 1
            writer.transport.abort()  # answered, or given up: nothing more to send

    server = await asyncio.start_server(answer, host, port, limit=MAX_REQUEST,
                                        backlog=MAX_CONNECTIONS)
    log.info("metrics listening", host=host, port=port)
    async with server:
        await server.serve_forever()


async def _response(reader: asyncio.StreamReader, bridge: Bridge) -> bytes | None:
    """The response to one request; None when the client sent no whole request in time."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            request = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return _http("431 Request Header Fields Too Large",
                     f"a request head is at most {MAX_REQUEST} bytes\n".encode())
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
    if path != b"/metrics":
        return _http("404 Not Found", b"not found: try /metrics\n")
    try:
        body = exposition(bridge).encode()
    except Exception:  # a bug of ours: said once per scrape, the bridge goes on
        log.exception("metrics page failed")
        return _http("500 Internal Server Error", b"the metrics could not be computed\n")
    return _http("200 OK", body, "text/plain; version=0.0.4")


def _http(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
