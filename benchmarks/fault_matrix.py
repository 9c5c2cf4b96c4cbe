"""Fault matrix: the daemon under each fault for a few minutes, as Home Assistant sees it.

    .venv/bin/python benchmarks/fault_matrix.py [--minutes 3] [--cases silence,drop,...]
                                                [--live 10] [--retries N] [--keep DIR]

Every case runs at the same time, each on its own ports with its own Mosquitto, simulator
(in this process), fault proxy where the simulator cannot make the fault itself, and
daemon (``python -m sermatec_bridge run -c case.yaml``, a separate process), so the whole
matrix takes about as long as one case. The script uses only the CLI, the configuration
and the MQTT topics, so it works with whatever runtime the branch has.

During each case an observer subscribes to everything, and a writer sends
``set/grid_soc_min`` about every 10 s with an MQTT 5 response topic and correlation data,
from the bridge's first message about the inverter on (writes before the inverter is
identified are a start-up matter, tested elsewhere).
Per case it prints:

- offline: the time ``<serial>/availability`` said ``offline`` after it first said
  ``online`` (and how often it went offline);
- live p95 / max: the interval between successive live states (retained replays left out);
- writes: sent (the broker took them) / results received for their correlation data,
  and lost = sent - received, counted 20 s after the last write;
- system / alarms: how many states of these (slow) groups were published;
- after a broker outage: how long after the broker's return the first state came, and
  what became of a write published 1 s after the return (applied, refused: why, or lost).

Cases: baseline; silence / drop / bad_checksum / garbage (10 % of the simulator's
answers); latency_1s; answer_90 (the proxy forwards 90 % of requests); never_a1 (the proxy
never forwards 0xa1); broker_restart and broker_restart_persistent (twice, 5 s down);
broker_outage_60s and broker_outage_60s_persistent (once, 60 s down, from a quarter of
the run on: give it 3 minutes or more); power_cycle (the inverter off for 10 s, twice);
ha_restart (Home Assistant's ``homeassistant/status`` goes offline and online, twice).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from harness import HOST, Mosquitto, percentile, start_bridge, stop_process, write_config
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from faultproxy import FaultProxy

from sermatec_bridge import log
from sermatec_bridge.simulator import Simulator

SERIAL = "ST5K0SIMULATOR0001"
GRACE = 20.0  # seconds to wait for the results of the last writes
WRITE_EVERY = 10.0


@dataclass
class Case:
    name: str
    simulator: dict[str, Any] = field(default_factory=dict)
    proxy: dict[str, Any] | None = None
    persistence: bool = False
    # what happens during the run, and when (shares of the run)
    event: Callable[[Run], Awaitable[None]] | None = None
    at: tuple[float, ...] = (1 / 3, 2 / 3)


async def restart_broker(run: Run) -> None:
    await run.broker.stop()
    await asyncio.sleep(min(5.0, run.duration * 0.1))
    await run.broker.start()


async def broker_outage(run: Run) -> None:
    """The broker away for 60 s; a write published 1 s after it is back."""
    await run.broker.stop()
    await asyncio.sleep(60.0)
    await run.broker.start()
    run.returned = time.monotonic()
    await asyncio.sleep(1.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.observer.connected.wait(), 5)
    await _publish_write(run, f"{run.case.name}-after-return")


async def power_cycle(run: Run) -> None:
    port = run.sim.port or 0
    await run.sim.stop()
    await asyncio.sleep(min(10.0, run.duration * 0.15))
    run.sim.power_cycle()
    await run.sim.start(HOST, port)


async def restart_home_assistant(run: Run) -> None:
    await run.observer.publish("homeassistant/status", "offline")
    await asyncio.sleep(1.0)
    await run.observer.publish("homeassistant/status", "online")


CASES = [
    Case("baseline"),
    Case("silence", simulator={"silence_rate": 0.1}),
    Case("drop", simulator={"drop_rate": 0.1}),
    Case("bad_checksum", simulator={"bad_checksum_rate": 0.1}),
    Case("garbage", simulator={"garbage_rate": 0.1}),
    Case("latency_1s", simulator={"latency": 1.0}),
    Case("answer_90", proxy={"answer_rate": 0.9}),
    Case("never_a1", proxy={"never_answer": {0xA1}}),
    Case("broker_restart", event=restart_broker),
    Case("broker_restart_persistent", persistence=True, event=restart_broker),
    Case("broker_outage_60s", event=broker_outage, at=(1 / 4,)),
    Case("broker_outage_60s_persistent", persistence=True, event=broker_outage, at=(1 / 4,)),
    Case("power_cycle", event=power_cycle),
    Case("ha_restart", event=restart_home_assistant),
]


class Observer:
    """Home Assistant's view: every message on the case's broker, with arrival times.

    It reconnects by itself (for broker restarts) with a session that outlives the
    connection, so a broker with persistence hands it what it missed.
    """

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.client: aiomqtt.Client | None = None
        self.availability: list[tuple[float, str]] = []
        self.live: list[float] = []
        self.states: list[tuple[float, str]] = []  # (arrival, group), replays left out
        self.results: dict[str, float] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.connected = asyncio.Event()
        self.result_arrived = asyncio.Event()
        self.identified = asyncio.Event()

    async def run(self) -> None:
        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client(
                    HOST, self.port, identifier=f"observer-{self.name}",
                    protocol=aiomqtt.ProtocolVersion.V5, properties=session, timeout=5,
                    keepalive=5,
                ) as client:
                    await client.subscribe("sermatec/#", qos=1)
                    await client.subscribe(f"bench/{self.name}/#", qos=1)
                    self.client = client
                    self.connected.set()
                    async for message in client.messages:
                        self.on(message)
            except aiomqtt.MqttError:
                pass
            self.client = None
            self.connected.clear()
            await asyncio.sleep(0.2)

    def on(self, message: aiomqtt.Message) -> None:
        now = time.monotonic()
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(
            message.payload).encode()
        if topic.startswith(f"sermatec/{SERIAL}/") and "/set" not in topic:
            self.identified.set()  # the bridge knows the serial: writes can be routed
        group = topic.rsplit("/", 1)[-1]
        if topic == f"sermatec/{SERIAL}/availability":
            self.availability.append((now, payload.decode(errors="replace")))
        elif topic == f"sermatec/{SERIAL}/{group}" and payload.startswith(b"{"):
            if not message.retain:
                self.states.append((now, group))
                if group == "live":
                    self.live.append(now)
        elif topic.startswith(f"bench/{self.name}/"):
            correlation = getattr(message.properties, "CorrelationData", None)
            if correlation:
                key = bytes(correlation).decode()
                self.results.setdefault(key, now)
                with contextlib.suppress(ValueError):
                    self.outcomes.setdefault(key, json.loads(payload))
                self.result_arrived.set()

    async def publish(self, topic: str, payload: str,
                      properties: Properties | None = None) -> bool:
        """Publish with QoS 1; False when the broker did not take it."""
        client = self.client
        if client is None:
            return False
        try:
            await asyncio.wait_for(
                client.publish(topic, payload, qos=1, properties=properties), 5)
        except (aiomqtt.MqttError, TimeoutError):
            return False
        return True


@dataclass
class Run:
    case: Case
    duration: float
    broker: Mosquitto
    sim: Simulator
    observer: Observer
    sent: dict[str, float] = field(default_factory=dict)
    returned: float | None = None  # when the broker came back after an outage


async def run_case(case: Case, duration: float, live: float, retries: int | None,
                   workdir: Path) -> dict[str, Any]:
    broker = Mosquitto(workdir / "mosquitto", persistence=case.persistence)
    await broker.start()
    sim = Simulator(pcu=609, seed=7, **case.simulator)
    await sim.start(HOST, 0)
    proxy = FaultProxy(sim.port or 0, seed=7, **case.proxy) if case.proxy else None
    if proxy is not None:
        await proxy.start()
    observer = Observer(case.name, broker.port)
    watching = asyncio.create_task(observer.run())
    run = Run(case, duration, broker, sim, observer)
    inverter: dict[str, Any] = {"host": HOST, "port": proxy.port if proxy else sim.port}
    if retries is not None:
        inverter["retries"] = retries
    config = write_config(workdir / "bridge.yaml", {
        "inverter": inverter,
        "poll": {"live": live},
        "mqtt": {"host": HOST, "port": broker.port, "protocol": "5",
                 "client_id": f"bridge-{case.name}"},
        "writes": {"enabled": True, "min_interval": 0},
        "log": {"level": "info", "format": "json"},
        "health": {"file": str(workdir / "health.json")},
    })
    daemon = None
    try:
        await asyncio.wait_for(observer.connected.wait(), 10)
        daemon = await start_bridge(config, workdir)
        started = time.monotonic()
        end = started + duration
        events = [asyncio.create_task(_at(started + duration * share, case.event, run))
                  for share in case.at if case.event is not None]
        writes = asyncio.create_task(_write(run, end))
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        await writes
        await asyncio.gather(*events)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GRACE):
                while not set(run.sent) <= set(observer.results):
                    observer.result_arrived.clear()
                    await observer.result_arrived.wait()
    finally:
        if daemon is not None:
            await stop_process(daemon)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        if proxy is not None:
            await proxy.stop()
        await sim.stop()
        await broker.stop()
    return summarise(run, started, end, daemon.returncode if daemon else None)


async def _at(when: float, event: Callable[[Run], Awaitable[None]] | None, run: Run) -> None:
    await asyncio.sleep(max(0.0, when - time.monotonic()))
    if event is not None:
        await event(run)


async def _write(run: Run, end: float) -> None:
    """A write about every 10 s once the inverter is identified, with correlation data."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.observer.identified.wait(), end - time.monotonic())
    number = 0
    while time.monotonic() < end:
        number += 1
        await _publish_write(run, f"{run.case.name}-{number}", 20 + number % 20)
        await asyncio.sleep(max(0.0, min(WRITE_EVERY, end - time.monotonic())))


async def _publish_write(run: Run, correlation: str, value: int = 25) -> None:
    """``set/grid_soc_min`` with a response topic and correlation data; noted when sent."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ResponseTopic = f"bench/{run.case.name}/response"
    properties.CorrelationData = correlation.encode()
    if await run.observer.publish(f"sermatec/{SERIAL}/set/grid_soc_min", str(value),
                                  properties):
        run.sent[correlation] = time.monotonic()


def summarise(run: Run, started: float, end: float, exit_code: int | None) -> dict[str, Any]:
    observer = run.observer
    first_online = next((t for t, text in observer.availability if text == "online"), None)
    offline = 0.0
    outages = 0
    if first_online is not None:
        state, since = "online", first_online
        for at, text in observer.availability:
            if at <= first_online or at > end:
                continue
            if state == "offline":
                offline += at - since
            if text != state:
                outages += text == "offline"
                state, since = text, at
        if state == "offline":
            offline += max(0.0, end - since)
    live = [t for t in observer.live if started <= t <= end]
    intervals = sorted(b - a for a, b in itertools.pairwise(live))
    received = len(set(run.sent) & set(observer.results))
    back = after_return = None
    if run.returned is not None:
        back = next((t - run.returned for t, _ in observer.states if t >= run.returned), None)
        key = f"{run.case.name}-after-return"
        outcome = observer.outcomes.get(key)
        after_return = ("not sent" if key not in run.sent else "lost" if outcome is None
                        else "applied" if outcome.get("ok")
                        else f"refused: {outcome.get('error')}")
    return {
        "case": run.case.name,
        "first_online_s": None if first_online is None else first_online - started,
        "offline_s": offline if first_online is not None else end - started,
        "outages": outages,
        "live_states": len(live),
        "live_p95_s": percentile(intervals, 95),
        "live_max_s": max(intervals, default=float("nan")),
        "writes_sent": len(run.sent),
        "results": received,
        "results_lost": len(run.sent) - received,
        "system_states": sum(g == "system" for t, g in observer.states if t >= started),
        "alarms_states": sum(g == "alarms" for t, g in observer.states if t >= started),
        "states_back_s": back,
        "write_after_return": after_return,
        "exit_code": exit_code,
    }


async def matrix(cases: list[Case], minutes: float, live: float, retries: int | None,
                 workdir: Path) -> list[dict[str, Any]]:
    duration = minutes * 60
    return list(await asyncio.gather(*(run_case(case, duration, live, retries,
                                                workdir / case.name) for case in cases)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="how long each case runs (default 3); all run at once")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated case names (default: all)")
    parser.add_argument("--live", type=float, default=10.0,
                        help="the bridge's live interval in seconds (default 10)")
    parser.add_argument("--retries", type=int, default=None,
                        help="the bridge's inverter.retries (default: its own default)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep each case's bridge log and configuration in DIR")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    args = parser.parse_args()
    by_name = {case.name: case for case in CASES}
    unknown = [name for name in args.cases.split(",") if name not in by_name]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    cases = [by_name[name] for name in args.cases.split(",")]
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="sermatec-faults-")))
        for case in cases:
            (workdir / case.name).mkdir(parents=True, exist_ok=True)
        log.configure("warning")  # the simulators run in this process
        logging.getLogger("mqtt").setLevel(logging.CRITICAL)  # reconnects are expected
        rows = asyncio.run(matrix(cases, args.minutes, args.live, args.retries, workdir))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    retries = "default" if args.retries is None else args.retries
    print(f"fault matrix: {args.minutes:g} min per case, live interval {args.live:g} s, "
          f"inverter.retries {retries}")
    print(f"{'case':<28} {'online after':>12} {'offline':>9} {'outages':>7} "
          f"{'live p95':>9} {'live max':>9} {'writes':>6} {'results':>7} {'lost':>4} "
          f"{'system':>6} {'alarms':>6}")
    for row in rows:
        first = row["first_online_s"]
        print(f"{row['case']:<28} {'never' if first is None else f'{first:.1f} s':>12} "
              f"{row['offline_s']:>7.1f} s {row['outages']:>7} {row['live_p95_s']:>7.1f} s "
              f"{row['live_max_s']:>7.1f} s {row['writes_sent']:>6} {row['results']:>7} "
              f"{row['results_lost']:>4} {row['system_states']:>6} {row['alarms_states']:>6}")
        if row["states_back_s"] is not None or row["write_after_return"] is not None:
            back = row["states_back_s"]
            print(f"{'':<28} after the broker's return: first state "
                  f"{'never' if back is None else f'{back:.1f} s'} later; a write 1 s "
                  f"later: {row['write_after_return']}")
        if row["exit_code"] not in (0, None):
            print(f"{'':<26} the daemon exited with {row['exit_code']}")


if __name__ == "__main__":
    main()
