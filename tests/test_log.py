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


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))


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
