"""The daemon's own supervision: a part that dies stops the bridge with a failure; the
heartbeat file is no such part."""

from __future__ import annotations

import asyncio
import itertools
import socket
from pathlib import Path
from typing import Any

import pytest
import structlog
from ports import free_port
from structlog.testing import capture_logs

from sermatec_bridge.bridge import health, service
from sermatec_bridge.bridge.health import check
from sermatec_bridge.bridge.service import Bridge
from sermatec_bridge.config import load_settings
from sermatec_bridge.log import Tally
from sermatec_bridge.simulator import Simulator


async def test_a_part_that_dies_stops_the_bridge_with_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Bridge) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Bridge, "_expire_held", broken)
    async with Simulator(pcu=609) as sim:
        settings = load_settings(overrides={
            "inverter": {"host": "127.0.0.1", "port": sim.port},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # nobody there: retried
            "health": {"file": str(tmp_path / "health.json")},
        }, env={})
        with capture_logs() as logs:
            clean = await asyncio.wait_for(Bridge(settings).run(), 20)
    assert clean is False
    stopped = [e for e in logs if e["event"].startswith("a part of the bridge stopped")]
    assert stopped[0]["task"] == "held writes" and "a bug" in stopped[0]["error"]


@pytest.mark.parametrize(("part", "settings"), [
    ("app proxy", "inverter.proxy_port, proxy.host"),
    ("cloud listener", "cloud.listen_port, cloud.listen_host"),
    ("metrics", "health.metrics_port, health.metrics_host"),
])
async def test_a_port_in_use_is_said_in_one_line_and_the_inverter_goes_on(
        tmp_path: Path, part: str, settings: str) -> None:
    """Another program holds the port (an old container, the vendor's tool): the bridge
    says so, naming the settings, serves the inverter meanwhile, and listens once the
    port is free."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    changes = {"app proxy": {"inverter": {"proxy_port": port}, "proxy": {"host": "127.0.0.1"}},
               "cloud listener": {"cloud": {"listen_port": port, "listen_host": "127.0.0.1"}},
               "metrics": {"health": {"metrics_port": port, "metrics_host": "127.0.0.1"}}}
    async with Simulator(pcu=609) as sim:
        overrides: dict[str, dict[str, Any]] = {
            "inverter": {"host": "127.0.0.1", "port": sim.port},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # nobody there: retried
            "health": {"file": str(tmp_path / "health.json")}}
        for section, values in changes[part].items():
            overrides[section] = {**overrides.get(section, {}), **values}
        bridge = Bridge(load_settings(overrides=overrides, env={}))
        with capture_logs() as logs:
            running = asyncio.create_task(bridge.run())
            try:
                await eventually(lambda: bridge.workers[0].last_poll is not None,
                                 "the inverter polled")
                said = [e for e in logs if e["event"].startswith("cannot listen on")]
                assert len(said) == 1 and said[0]["log_level"] == "error", said
                assert said[0]["check"] == settings and f":{port} for " in said[0]["event"]
                assert not running.done()
                taken.close()  # the port is free: the next try takes it
                await eventually(lambda: connects(port), "listening", within=15)
            finally:
                taken.close()
                bridge.stopping.set()
                assert await asyncio.wait_for(running, 10) is True


def connects(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_the_inverters_of_one_bridge_start_their_rounds_apart() -> None:
    """500 inverters must not all poll and publish in the same instant, every round."""
    settings = load_settings(overrides={
        "inverters": [{"host": "127.0.0.1", "port": 10000 + i} for i in range(4)],
        "poll": {"live": 8},
    }, env={})
    firsts = [w.scheduler.next_due() for w in Bridge(settings).workers]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(firsts)]
    assert gaps == [2.0, 2.0, 2.0], "spread evenly over one live interval"


async def eventually(condition: Any, what: str, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what} within {within} s"
        await asyncio.sleep(0.02)


async def test_a_heartbeat_that_cannot_be_written_is_logged_retried_and_never_fatal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose's tmpfs, owned by root, once stopped the whole bridge (61 restarts in 45 s)."""
    blocker = tmp_path / "run"
    blocker.write_text("a file where the heartbeat's directory should be")
    beat = blocker / "health.json"
    attempts = []
    real_write = health.write
    monkeypatch.setattr(health, "write", lambda *a: (attempts.append(1), real_write(*a)))
    async with Simulator(pcu=609) as sim:
        settings = load_settings(overrides={
            "inverter": {"host": "127.0.0.1", "port": sim.port},
            "poll": {"live": 0.05},  # a heartbeat every 50 ms
            "mqtt": {"host": "127.0.0.1", "port": free_port()},  # nobody there: retried
            "health": {"file": str(beat)},
        }, env={})
        bridge = Bridge(settings)
        with capture_logs() as logs:
            running = asyncio.create_task(bridge.run())
            await eventually(lambda: len(attempts) >= 10, "ten heartbeat attempts")
            failures = [e for e in logs if e["event"].startswith("cannot write the heartbeat")]
            assert len(failures) == 1, "one warning, not one per beat"
            assert failures[0]["file"] == str(beat) and failures[0]["log_level"] == "warning"
            assert failures[0]["counts"] == {"FileExistsError: File exists": 1}
            await eventually(lambda: bridge.workers[0].last_poll is not None,
                             "the inverter polled")
            assert not running.done(), "the bridge goes on"

            blocker.unlink()  # the directory can be made now: the next beat succeeds
            await eventually(beat.exists, "the heartbeat written")
            assert [e["event"] for e in logs].count("heartbeat file written again") == 1
            assert check(beat, 60).age is not None
            failures = [e for e in logs if e["event"].startswith("cannot write the heartbeat")]
            assert len(failures) == 2, "and how many more failed, before it says so"
            assert sum(failures[1]["counts"].values()) == len(attempts) - 2

            beat.unlink()  # fails again (a directory in the file's place): said again at
            beat.mkdir()   # once, not 5 minutes later
            await eventually(lambda: sum(e["event"].startswith("cannot write the heartbeat")
                                         for e in logs) == 3, "the second failure logged")
            bridge.stopping.set()
            assert await asyncio.wait_for(running, 10) is True  # a clean stop, no failure
    assert not leftovers(tmp_path), "no temporary file left behind"


def leftovers(path: Path) -> list[Path]:
    return list(path.glob("**/*.tmp"))


async def test_what_is_counted_goes_out_while_the_bridge_runs_with_no_new_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood that stops leaves its count in the log within its minute (a second here),
    not only with the next event of its kind, which may never come."""
    monkeypatch.setattr(service, "COUNTS_EVERY", 0.05)
    settings = load_settings(overrides={
        "inverter": {"host": "127.0.0.1", "port": free_port()},  # nobody there
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
        "health": {"file": str(tmp_path / "health.json")},
    }, env={})
    bridge = Bridge(settings)
    with capture_logs() as logs:
        running = asyncio.create_task(bridge.run())
        flood = Tally(structlog.get_logger("test"), "requests dropped", every=1.0)
        for _ in range(3):
            flood.add("garbage")
        await eventually(lambda: [e["counts"] for e in logs if e["event"] == "requests dropped"]
                         == [{"garbage": 1}, {"garbage": 2}], "the count said")
        bridge.stopping.set()
        assert await asyncio.wait_for(running, 10) is True
