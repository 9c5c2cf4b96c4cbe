"""A stand-in for Home Assistant's Supervisor API, on loopback, for the app mode's tests.

It answers as the Supervisor does: ``{"result": "ok", "data": {...}}``, or an error status
with ``{"result": "error", "message": ...}``; a request without the app's token gets 403
(the Supervisor's security middleware). It records every request it gets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "app-token-0123456789abcdef"


def ok(data: dict[str, Any]) -> tuple[int, bytes]:
    return 200, json.dumps({"result": "ok", "data": data}).encode()


def error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"result": "error", "message": message}).encode()


class FakeSupervisor:
    """``routes``: path -> (status, body); change them before the request is made."""

    def __init__(self, *, timezone: str = "Pacific/Auckland",
                 broker: dict[str, Any] | None = None,
                 home_assistant: str = "2026.11.0") -> None:
        self.routes: dict[str, tuple[int, bytes]] = {
            "/info": ok({"timezone": timezone, "hostname": "homeassistant",
                         "homeassistant": home_assistant}),
            "/services/mqtt": ok({"app": "core_mosquitto", "ssl": False,
                                  "protocol": "3.1.1", **(broker or {})}),
        }
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization)
        self.stall = threading.Event()  # set: accept requests, never answer them
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                supervisor.requests.append((self.path, self.headers.get("Authorization")))
                if supervisor.stall.is_set():
                    supervisor.released.wait(30)
                    return
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    status, body = 403, b"403: Forbidden"
                else:
                    status, body = supervisor.routes.get(self.path, error(404, "not found"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[FakeSupervisor]:
        thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.released.set()
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)
