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
