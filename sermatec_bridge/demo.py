"""``make demo``: the whole system on one machine, with no inverter.

Starts the simulator, an MQTT broker (Mosquitto when installed, otherwise the pure-Python
amqtt broker) and the bridge with writes enabled, all on free loopback ports, then shows
in the terminal what Home Assistant would see: every entity the bridge announces, with its
value and unit, updating live. After a few seconds it changes a setting through MQTT, the
way Home Assistant would, and shows the confirmed result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from . import log
from .bridge.discovery import iter_state_keys
from .bridge.service import Bridge
from .config import load_settings
from .simulator import Simulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    """Mosquitto, also where /usr/sbin is not on the PATH (Debian puts it there)."""
    candidates = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
    return shutil.which("mosquitto") or next((p for p in candidates if Path(p).exists()), None)


@contextlib.asynccontextmanager
async def broker(port: int, workdir: Path, kind: str = "auto") -> AsyncIterator[str]:
    """An MQTT broker on 127.0.0.1:port for the demo's lifetime; yields its name."""
    binary = mosquitto_binary() if kind != "amqtt" else None
    if binary:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            await _wait_for_port(port)
            yield f"Mosquitto ({binary})"
        finally:
            process.terminate()
            await process.wait()
        return
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise SystemExit(
            "The demo needs an MQTT broker: install Mosquitto (sudo apt-get install mosquitto) "
            "or the Python broker (pip install amqtt)."
        ) from None
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                          {"allow_anonymous": True}}}
    embedded = Broker(config)
    await embedded.start()
    try:
        yield "amqtt (embedded Python broker, MQTT 3.1.1)"
    finally:
        await embedded.shutdown()


async def _wait_for_port(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)


@dataclass
class View:
    """What Home Assistant would hold: entity configs from discovery, state JSON by topic."""

    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    device: str = ""

    def take(self, topic: str, payload: bytes) -> None:
        if topic.startswith("homeassistant/device/"):
            config = json.loads(payload or b"{}")
            dev = config.get("dev", {})
            self.device = f"{dev.get('name', '?')} (serial {dev.get('serial_number', '?')}, " \
                          f"{dev.get('sw_version', '')})"
            self.entities = {k: v for k, v in config.get("cmps", {}).items() if "name" in v}
        elif topic.endswith("/set/result"):
            self.events.append(f"{time.strftime('%H:%M:%S')} write result: "
                               f"{payload.decode()}")
        elif topic.startswith("sermatec/") and payload.startswith(b"{"):
            self.states[topic] = json.loads(payload)
        elif topic.endswith("availability") or topic.endswith("bridge/state"):
            self.states[topic] = {"value": payload.decode()}

    def value(self, config: dict[str, Any]) -> str:
        state = self.states.get(config.get("state_topic", ""), {})
        key = next(iter_state_keys({"value_template": config.get("value_template")}), None)
        if key not in state:
            return "…"
        value = state[key]
        if value is None:
            return "unknown"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            digits = config.get("suggested_display_precision")
            return f"{value:.{digits}f}" if isinstance(digits, int) else f"{value:g}"
        return str(value)

    def render(self, show_all: bool, width: int) -> str:
        rows = []
        for config in sorted(self.entities.values(),
                             key=lambda c: (c.get("p", ""), c.get("name", ""))):
            if not show_all and config.get("entity_category") == "diagnostic":
                continue
            unit = config.get("unit_of_measurement", "")
            rows.append(f"{config.get('p', ''):<13} {config['name'][:38]:<38} "
                        f"{self.value(config)[:14]:>14} {unit}")
        hidden = len(self.entities) - len(rows)
        columns = 2 if width >= 160 else 1
        per = (len(rows) + columns - 1) // columns
        lines = [
            "  ".join(f"{rows[c * per + i]:<76}" for c in range(columns) if c * per + i < len(rows))
            for i in range(per)
        ]
        availability = next((s["value"] for t, s in self.states.items()
                             if t.endswith("/availability")), "…")
        head = [f"What Home Assistant sees: {self.device or 'waiting for discovery…'}",
                f"{len(self.entities)} entities ({hidden} diagnostic not shown; --all shows "
                f"them); inverter availability: {availability}", ""]
        return "\n".join(head + lines + [""] + self.events[-4:])


async def main(duration: float | None, show_all: bool, latency: float, kind: str) -> None:
    log.configure("warning", "console")
    with tempfile.TemporaryDirectory(prefix="sermatec-demo-") as tmp:
        mqtt_port = free_port()
        async with Simulator(pcu=609, model="5kw", latency=latency) as sim, \
                broker(mqtt_port, Path(tmp), kind) as broker_name:
            settings = load_settings(overrides={
                "inverter": {"host": "127.0.0.1", "port": sim.port, "timeout": 3},
                "mqtt": {"host": "127.0.0.1", "port": mqtt_port,
                         "protocol": "5" if broker_name.startswith("Mosquitto") else "3.1.1"},
                "writes": {"enabled": True, "min_interval": 5},
                "poll": {"live": 2, "energy": 5, "slow": 15},
                "homeassistant": {"birth_delay": 0.5},
                "health": {"file": str(Path(tmp) / "health.json")},
            }, env={})
            print(f"simulator on 127.0.0.1:{sim.port}, broker {broker_name} on "
                  f"127.0.0.1:{mqtt_port}; starting the bridge…", flush=True)
            bridge = Bridge(settings)
            task = asyncio.create_task(bridge.run())
            try:
                await watch(mqtt_port, sim.model.serial, duration, show_all)
            finally:
                bridge.stopping.set()
                await task


async def watch(port: int, serial: str, duration: float | None, show_all: bool) -> None:
    view = View()
    tty = sys.stdout.isatty()
    started = time.monotonic()
    wrote = False
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-viewer") as client:
        await client.subscribe("homeassistant/#")
        await client.subscribe("sermatec/#")
        next_draw = 0.0
        while duration is None or time.monotonic() - started < duration:
            with contextlib.suppress(TimeoutError):
                message = await asyncio.wait_for(anext(aiter(client.messages)), 0.5)
                view.take(message.topic.value, bytes(message.payload or b""))
            now = time.monotonic()
            if not wrote and view.entities and now - started > 6:
                wrote = True
                topic = f"sermatec/{serial}/set/grid_soc_min"
                view.events.append(f"{time.strftime('%H:%M:%S')} demo write, as Home Assistant "
                                   f"would: {topic} ← 25")
                await client.publish(topic, "25")
            if now >= next_draw:
                next_draw = now + (1.0 if tty else 5.0)
                width = shutil.get_terminal_size((100, 40)).columns
                screen = view.render(show_all, width)
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J" + screen + "\n\n(Ctrl-C stops the demo)\n")
                else:
                    sys.stdout.write(screen + "\n" + "-" * 60 + "\n")
                sys.stdout.flush()


def run() -> None:
    parser = argparse.ArgumentParser(description="Simulator + broker + bridge, live.")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--all", action="store_true", help="show diagnostic entities too")
    parser.add_argument("--latency", type=float, default=0.02,
                        help="simulated inverter reply latency in seconds")
    parser.add_argument("--broker", choices=["auto", "amqtt"], default="auto",
                        help="auto: Mosquitto when installed, else amqtt")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.duration, args.all, args.latency, args.broker))
    print("demo stopped")


if __name__ == "__main__":
    run()
