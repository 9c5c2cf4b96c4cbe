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
