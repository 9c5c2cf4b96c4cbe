"""Log lines: what a reader sees on stderr."""

from __future__ import annotations

import json

import pytest
import structlog

from sermatec_bridge import log


def test_keys_without_a_value_are_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("info", "json")
    structlog.get_logger("test").warning("connect failed", hint=None, retry_in=1.5,
                                         password="hunter2")
    line = json.loads(capsys.readouterr().err)
    assert line["event"] == "connect failed" and line["retry_in"] == 1.5
    assert "hint" not in line
    assert line["password"] == "***"


def test_on_demand_logs_only_what_reaches_its_level(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A one-shot command's logger stays silent, and structlog unconfigured, below the level."""
    logger = log.get_logger("test").bind(inverter="127.0.0.1:8899")
    with log.on_demand("error"):
        logger.info("connected")
        logger.warning("request failed, retrying")
        assert not structlog.is_configured()
        logger.error("register query part 2 could not be sent", password="hunter2")
        logger.warning("after the first error, structlog's own level filter applies")
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "register query part 2 could not be sent" in err
    assert "127.0.0.1:8899" in err and "hunter2" not in err


def test_outside_on_demand_every_event_goes_to_structlog(
        capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("debug", "json")
    log.get_logger("test").bind(a=1).debug("detail", b=2)
    line = json.loads(capsys.readouterr().err)
    assert (line["event"], line["a"], line["b"], line["level"]) == ("detail", 1, 2, "debug")


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))

    info = warning


def test_a_tally_logs_the_first_event_at_once_and_the_rest_once_a_minute() -> None:
    now = 0.0
    out = Recorder()
    tally = log.Tally(out, "dropped", clock=lambda: now)
    tally.add("garbage bytes", 4096, client="a")
    for _ in range(1000):
        now += 0.01
        tally.add("garbage bytes", 4096, client="a")
    assert out.lines == [("dropped", {"counts": {"garbage bytes": 4096}, "client": "a"})]
    now = 60.0
    tally.add("not allowed 0x70", client="a")
    assert out.lines[-1] == ("dropped", {"counts": {"garbage bytes": 1000 * 4096,
                                                    "not allowed 0x70": 1}, "client": "a"})
    tally.add("throttled")
    tally.flush(client="a")  # the client went away: what was counted since is said
    assert out.lines[-1] == ("dropped", {"counts": {"throttled": 1}, "client": "a"})
    tally.flush()
    assert len(out.lines) == 3  # nothing new: nothing said


def test_what_a_tally_counted_goes_out_once_its_minute_is_over_without_a_new_event() -> None:
    now = 0.0
    out = Recorder()
    tally = log.Tally(out, "dropped", clock=lambda: now)
    tally.add("garbage bytes", 10, client="a")
    tally.add("garbage bytes", 20, client="b")
    log.flush_tallies()
    assert len(out.lines) == 1, "within the minute: counted only"
    now = 60.0
    log.flush_tallies()  # what the bridge does every few seconds
    assert out.lines[-1] == ("dropped", {"counts": {"garbage bytes": 20}, "client": "b"})
    tally.add("garbage bytes", 30, client="b")
    log.flush_tallies(everything=True)  # at shutdown, whatever the time
    assert out.lines[-1] == ("dropped", {"counts": {"garbage bytes": 30}, "client": "b"})
    assert len(out.lines) == 3


def test_a_tally_whose_flood_is_over_logs_the_next_event_at_once() -> None:
    now = 0.0
    out = Recorder()
    tally = log.Tally(out, "heartbeat failed", every=300, level="info", clock=lambda: now)
    tally.add("EACCES")
    tally.add("EACCES")
    tally.over()
    tally.add("ENOSPC")
    assert [fields["counts"] for _, fields in out.lines] == [
        {"EACCES": 1}, {"EACCES": 1}, {"ENOSPC": 1}]
