"""Prometheus metrics at ``/metrics`` (off unless ``health.metrics_port`` is set).

A few counters and gauges in the text exposition format, served by a tiny asyncio HTTP
responder: the bridge needs no web framework for one read-only page.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import Bridge


@dataclass
class ProxyStats:
    """The app proxy's counters for one inverter (bridge/proxy.py)."""

    clients: int = 0  # connected right now
    forwarded: int = 0  # requests that reached the inverter
    writes: Counter[str] = field(default_factory=Counter)  # "passed" / "refused"
    dropped: Counter[str] = field(default_factory=Counter)  # requests not forwarded, by reason

    def state(self) -> dict[str, int]:
        """The diagnostic entity's state object."""
        return {"clients": self.clients, "forwarded": self.forwarded,
                "writes_passed": self.writes["passed"],
                "writes_refused": self.writes["refused"],
                "dropped": sum(self.dropped.values())}


@dataclass
class Stats:
    """One inverter's counters, kept by its worker."""

    polls: Counter[str] = field(default_factory=Counter)  # successful polls by group
    poll_failures: int = 0
    poll_seconds: float = 0.0  # summed over successful polls
    writes: Counter[str] = field(default_factory=Counter)  # "ok" / "refused"
    proxy: ProxyStats = field(default_factory=ProxyStats)


def exposition(bridge: Bridge) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP sermatec_{name} {text}", f"# TYPE sermatec_{name} {kind}"])
        lines.extend(f"sermatec_{name}{labels} {value:g}" for labels, value in samples)

    workers = [(w.serial or w.config.label, w) for w in bridge.workers]
    metric("polls_total", "counter", "Successful polls, by group.",
           [(f'{{inverter="{i}",group="{g}"}}', n) for i, w in workers
            for g, n in sorted(w.stats.polls.items())])
    metric("poll_failures_total", "counter", "Polls that failed (inverter unreachable, "
           "timeout, bad reply).", [(f'{{inverter="{i}"}}', w.stats.poll_failures)
                                    for i, w in workers])
    metric("poll_seconds_total", "counter", "Time spent in successful polls.",
           [(f'{{inverter="{i}"}}', w.stats.poll_seconds) for i, w in workers])
    metric("writes_total", "counter", "Settings writes, by result.",
           [(f'{{inverter="{i}",result="{r}"}}', n) for i, w in workers
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
           [(f'{{inverter="{i}",reason="{r}"}}', n) for i, p in proxied
            for r, n in sorted(p.dropped.items())])
    metric("mqtt_connected", "gauge", "1 while the MQTT broker is connected.",
           [("", int(bridge.broker.client is not None))])
    return "\n".join(lines) + "\n"


async def serve(bridge: Bridge, host: str, port: int) -> None:
    """Answer GET /metrics until cancelled."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                body = exposition(bridge).encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found: try /metrics\n"
                head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                         + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host, port)
    async with server:
        await server.serve_forever()
