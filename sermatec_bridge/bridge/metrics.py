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
class Stats:
    """One inverter's counters, kept by its worker."""

    polls: Counter[str] = field(default_factory=Counter)  # successful polls by group
    poll_failures: int = 0
    poll_seconds: float = 0.0  # summed over successful polls
    writes: Counter[str] = field(default_factory=Counter)  # "ok" / "refused"


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
