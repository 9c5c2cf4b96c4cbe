"""``make demo``: the whole system on one machine, with no inverter.

Starts the simulator, an MQTT broker (Mosquitto when installed, otherwise the pure-Python
amqtt broker) and the bridge with writes enabled, all on free loopback ports, then shows
in the terminal what Home Assistant would see: first the headline (PV, battery, grid,
load, today's energy), the full list of entities one key away. The simulated day runs
60 times faster from 09:00, so that PV, battery and grid move within a minute. After a
few seconds the demo changes a setting through MQTT, the way Home Assistant would, and
shows the confirmed result. Ctrl-C (or ``q``) stops everything and cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

import aiomqtt

from . import log
from .bridge.discovery import LAST_WRITE, expand, iter_state_keys
from .bridge.service import Bridge
from .config import load_settings
from .simulator import Simulator, parse_time_of_day, simulated_clock

SHUTDOWN_TIMEOUT = 5.0


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
        # Its own session: the terminal's Ctrl-C is the demo's to handle, and the broker
        # must outlive the bridge's goodbye.
        process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            await _wait_for_port(port)
            yield f"Mosquitto ({binary})"
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), SHUTDOWN_TIMEOUT)
            except TimeoutError:
                process.kill()
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(embedded.shutdown(), SHUTDOWN_TIMEOUT)


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


# --------------------------------------------------------------------------------------
# What Home Assistant would hold, and how the demo shows it
# --------------------------------------------------------------------------------------


@dataclass
class View:
    """What Home Assistant would hold: entity configs from discovery, state JSON by topic."""

    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    device: str = ""

    def take(self, topic: str, payload: bytes) -> None:
        if topic.startswith("homeassistant/device/"):
            config = expand(json.loads(payload or b"{}"))
            dev = config.get("dev", {})
            self.device = f"{dev.get('name', '?')} · serial {dev.get('serial_number', '?')} " \
                          f"· {dev.get('sw_version', '')}"
            self.entities = {k: v for k, v in config.get("cmps", {}).items() if "name" in v}
        elif topic.endswith("/set/result"):
            self.events.append(f"{time.strftime('%H:%M:%S')} write result: "
                               f"{payload.decode()}")
            with contextlib.suppress(ValueError):
                self.states[topic] = json.loads(payload)
        elif topic.startswith("sermatec/") and payload.startswith(b"{"):
            self.states[topic] = json.loads(payload)
        elif topic.endswith("availability") or topic.endswith("bridge/state"):
            self.states[topic] = {"value": payload.decode()}

    @property
    def availability(self) -> str:
        return next((s["value"] for t, s in self.states.items()
                     if t.endswith("/availability")), "…")

    def raw(self, cid: str) -> Any:
        """The state value behind an entity, as published (None while unknown)."""
        config = self.entities.get(cid)
        if config is None:
            return None
        state = self.states.get(config.get("state_topic", ""), {})
        key = next(iter_state_keys({"value_template": config.get("value_template")}), None)
        return state.get(key) if key else None

    def value(self, cid: str, config: dict[str, Any] | None = None) -> str:
        """The value as Home Assistant would show it, with its unit."""
        config = config or self.entities.get(cid)
        if config is None:
            return "—"
        state = self.states.get(config.get("state_topic", ""), {})
        if cid == LAST_WRITE:  # the sensor's template, in Python
            if "ok" not in state:
                return "none yet"
            if state["ok"]:
                return "OK: " + json.dumps(state.get("changed", {}))
            return f"Refused: {state.get('error', 'no reason given')}"
        key = next(iter_state_keys({"value_template": config.get("value_template")}), None)
        if key not in state:
            return "…"
        value = state[key]
        unit = config.get("unit_of_measurement")
        if value is None:
            return "unknown"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, int | float):
            digits = config.get("suggested_display_precision")
            text = f"{value:,.{digits}f}" if isinstance(digits, int) else f"{value:g}"
            return f"{text} {unit}" if unit else text
        return str(value)


def headline(view: View, clock: Callable[[], datetime], width: int = 80) -> list[str]:
    """The first screen: what a user looks at, in at most 18 lines."""
    v = view.value
    grid = view.raw("grid_active_power")
    direction = ("export" if grid > 0 else "import" if grid < 0 else "—") \
        if isinstance(grid, int | float) else ""
    soc_line = f"{v('battery_state')} · {v('dc_power')}"
    rows = [
        f"{view.device or 'waiting for discovery…'}",
        f"Inverter {view.availability} · simulated time {clock():%H:%M} · what Home "
        "Assistant sees",
        "",
        f"  PV power        {v('pv_power'):>12}   PV1 {v('pv1_power')} · PV2 {v('pv2_power')}",
        f"  Battery         {v('battery_soc'):>12}   {soc_line}",
        f"  Grid            {_magnitude(v('grid_active_power')):>12}   {direction}",
        f"  Load            {v('remote_load_power'):>12}",
        "",
        f"  Today           PV {v('pv_energy_today')} · load {v('load_energy_today')}",
        f"                  grid export {v('grid_export_today')} · import "
        f"{v('grid_import_today')}",
        f"                  battery charge {v('battery_charge_today')} · discharge "
        f"{v('battery_discharge_today')}",
        "",
        f"  Mode            {_first(view, 'set_operating_mode', 'operating_mode'):<16}"
        f"Grid SOC min   {_first(view, 'set_grid_soc_min', 'grid_soc_min')}",
        f"  Problem         {v('problem'):<16}Last write     {v('last_write')}",
    ]
    return [row[:width] for row in rows]


def _magnitude(text: str) -> str:
    return text.removeprefix("-")


def _first(view: View, *cids: str) -> str:
    return next((view.value(c) for c in cids if c in view.entities), "—")


def entity_rows(view: View, width: int = 80) -> list[str]:
    """Every entity: enabled ones first, as Home Assistant lists a new device."""
    def order(item: tuple[str, dict[str, Any]]) -> tuple[bool, str, str]:
        _, c = item
        return (not c.get("enabled_by_default", True), c.get("p", ""), c.get("name", ""))

    rows = []
    for cid, config in sorted(view.entities.items(), key=order):
        mark = " " if config.get("enabled_by_default", True) else "·"
        name = config["name"][:40]
        rows.append(f"{mark} {config.get('p', ''):<13} {name:<40} {view.value(cid, config)}")
    return [row[:width] for row in rows]


def pages(rows: list[str], size: int) -> list[list[str]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)] or [[]]


@dataclass
class Screen:
    """What the terminal shows: the headline, or one page of the full list."""

    show_all: bool = False
    page: int = 0

    def key(self, char: str) -> bool:
        """Handle a key; False when it asks to quit."""
        if char in "qQ":
            return False
        if char in "aA":
            self.show_all, self.page = not self.show_all, 0
        elif char in " nN" and self.show_all:
            self.page += 1
        elif char in "pP" and self.show_all:
            self.page = max(0, self.page - 1)
        return True

    def render(self, view: View, clock: Callable[[], datetime], width: int,
               height: int) -> str:
        enabled = sum(1 for c in view.entities.values() if c.get("enabled_by_default", True))
        total = len(view.entities)
        if not self.show_all:
            body = headline(view, clock, width)
            body += ["", f"  {enabled} of {total} entities enabled on a new device"]
            events = view.events[-max(0, height - len(body) - 3):]
            body += [""] + [e[:width] for e in events]
            foot = "a: all entities · q or Ctrl-C: stop the demo"
        else:
            size = max(1, height - 4)
            book = pages(entity_rows(view, width), size)
            self.page %= len(book)
            body = [f"All {total} entities ({enabled} enabled; · disabled by default) — "
                    f"page {self.page + 1}/{len(book)}"[:width], ""] + book[self.page]
            foot = "space: next page · p: previous · a: headline · q: stop"
        lines = body[:height - 1]
        return "\n".join(lines + [""] * (height - 1 - len(lines)) + [foot[:width]])


# --------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def keys(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]) -> Iterator[None]:
    """Single key presses from the terminal, if there is one, into ``queue`` (cbreak mode)."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # keys arrive one by one; Ctrl-C still raises SIGINT
    loop.add_reader(fd, lambda: queue.put_nowait(os.read(fd, 32).decode(errors="replace")))
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def terminal_of_our_own() -> Iterator[None]:
    """Be the terminal's foreground process group while the demo runs.

    Ctrl-C then reaches the demo alone, not ``make`` above it (which would die of it and
    report an interrupted recipe); the group that had the terminal gets it back after.
    """
    fd = sys.stdin.fileno() if sys.stdin.isatty() else -1
    try:
        previous = os.tcgetpgrp(fd)
        if previous != os.getpgrp():
            raise OSError("not in the foreground")
        os.setpgid(0, 0)
        _hand_terminal(fd, os.getpgrp())
    except OSError:
        yield  # no terminal, or one we do not own: leave it as it is
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            _hand_terminal(fd, previous)


def _hand_terminal(fd: int, group: int) -> None:
    handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # allowed from the background
    try:
        os.tcsetpgrp(fd, group)
    finally:
        signal.signal(signal.SIGTTOU, handler)


@dataclass
class Options:
    duration: float | None = None
    show_all: bool = False
    latency: float = 0.02
    kind: str = "auto"
    sun: time_of_day = field(default_factory=lambda: time_of_day(9, 0))
    time_scale: float = 60.0


async def main(options: Options) -> None:
    log.configure("warning", "console")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    clock = simulated_clock(options.sun, options.time_scale)
    with tempfile.TemporaryDirectory(prefix="sermatec-demo-") as tmp:
        mqtt_port = free_port()
        async with Simulator(pcu=609, model="5kw", latency=options.latency, soc=85,
                             clock=clock) as sim, \
                broker(mqtt_port, Path(tmp), options.kind) as broker_name:
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
            # The bridge takes SIGINT and SIGTERM over when it starts: its end is ours.
            task.add_done_callback(lambda _: stop.set())
            try:
                await watch(mqtt_port, sim.model.serial, options, sim.model.now, stop)
            finally:
                bridge.stopping.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(task, SHUTDOWN_TIMEOUT)


async def watch(port: int, serial: str, options: Options, clock: Callable[[], datetime],
                stop: asyncio.Event) -> None:
    view = View()
    tty = sys.stdout.isatty()
    screen = Screen(show_all=options.show_all)
    started = time.monotonic()
    wrote = False
    pressed: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-viewer") as client, \
            _alternate_screen(tty):
        await client.subscribe("homeassistant/#")
        await client.subscribe("sermatec/#")
        messages = aiter(client.messages)
        next_draw = 0.0
        with keys(loop, pressed):
            while not stop.is_set():
                if options.duration is not None and time.monotonic() - started > \
                        options.duration:
                    break
                with contextlib.suppress(TimeoutError):  # a key or the stop: ≤ 0.25 s
                    message = await asyncio.wait_for(anext(messages), 0.25)
                    view.take(message.topic.value, bytes(message.payload or b""))
                while not pressed.empty():
                    for char in pressed.get_nowait():
                        if not screen.key(char):
                            stop.set()
                        next_draw = 0.0
                now = time.monotonic()
                if not wrote and view.entities and now - started > 6:
                    wrote = True
                    topic = f"sermatec/{serial}/set/grid_soc_min"
                    view.events.append(f"{time.strftime('%H:%M:%S')} demo write, as Home "
                                       f"Assistant would: {topic} ← 25")
                    await client.publish(topic, "25")
                if now >= next_draw and not stop.is_set():
                    next_draw = now + (1.0 if tty else 5.0)
                    _draw(view, screen, clock, tty)


def _draw(view: View, screen: Screen, clock: Callable[[], datetime], tty: bool) -> None:
    size = shutil.get_terminal_size((80, 24))
    if tty:
        text = screen.render(view, clock, size.columns, size.lines)
        sys.stdout.write("\x1b[H\x1b[2J" + text)
    else:
        lines = headline(view, clock, 80)
        if screen.show_all:
            lines += [""] + entity_rows(view, 100)
        sys.stdout.write("\n".join(lines + view.events[-4:]) + "\n" + "-" * 60 + "\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def _alternate_screen(tty: bool) -> AsyncIterator[None]:
    """On a terminal, draw on the alternate screen and give the old one back at the end."""
    if tty:
        sys.stdout.write("\x1b[?1049h\x1b[?25l")
    try:
        yield
    finally:
        if tty:
            sys.stdout.write("\x1b[?25h\x1b[?1049l")
            sys.stdout.flush()


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make demo ARGS=...", description="Simulator + broker + bridge, live.")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C or q)")
    parser.add_argument("--all", action="store_true",
                        help="start on the list of every entity (the key a toggles it)")
    parser.add_argument("--latency", type=float, default=0.02,
                        help="simulated inverter reply latency in seconds")
    parser.add_argument("--broker", choices=["auto", "amqtt"], default="auto",
                        help="auto: Mosquitto when installed, else amqtt")
    parser.add_argument("--sun", type=parse_time_of_day, default=time_of_day(9, 0),
                        metavar="HH:MM", help="simulated time of day to start at (09:00)")
    parser.add_argument("--time-scale", type=float, default=60.0, metavar="FACTOR",
                        help="simulated time runs this many times faster (60)")
    args = parser.parse_args(argv)
    options = Options(duration=args.duration, show_all=args.all, latency=args.latency,
                      kind=args.broker, sun=args.sun, time_scale=args.time_scale)
    with terminal_of_our_own(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(options))  # (KeyboardInterrupt: a Ctrl-C before the handlers)
    print("demo stopped")


if __name__ == "__main__":
    run()
