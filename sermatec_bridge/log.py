"""Logging through structlog: readable on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "console", "json"]

SECRET_WORDS = ("password", "secret", "token", "passwd")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret reach a log line, whatever a caller passes."""
    for key in list(event):
        if any(word in key.lower() for word in SECRET_WORDS):
            event[key] = "***"
    return event


def _drop_none(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Leave out keys without a value: ``hint=None`` says nothing to the reader."""
    for key in [k for k, v in event.items() if v is None]:
        del event[key]
    return event


def configure(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Send logs to stderr; ``auto`` picks the console renderer on a terminal."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_none,
            _redact,
            structlog.processors.format_exc_info if not console else _identity,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _identity(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


class Tally:
    """Events that may come in floods, logged at most once per ``every`` seconds.

    The first event is logged at once; the ones that follow within ``every`` seconds are
    only counted, and their counts go out with the next event after that, or with
    :meth:`flush` (when the source goes away). A garbage-streaming client or a chatty
    peer thus costs one line a minute, and the line still says how much was dropped.
    """

    def __init__(self, logger: Any, event: str, *, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.event = event
        self.every = every
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._quiet_until = -math.inf

    def add(self, what: str, count: int = 1, **fields: Any) -> None:
        """Count ``count`` of ``what``; log the counts when the last line is old enough."""
        self.counts[what] += count
        now = self.clock()
        if now >= self._quiet_until:
            self._emit(now, fields)

    def flush(self, **fields: Any) -> None:
        """Log what was counted since the last line, if anything."""
        if self.counts:
            self._emit(self.clock(), fields)

    def _emit(self, now: float, fields: dict[str, Any]) -> None:
        self.logger.warning(self.event, counts=dict(self.counts), **fields)
        self.counts.clear()
        self._quiet_until = now + self.every


def throttled_stdlib(name: str, to: Any, event: str) -> logging.Logger:
    """A stdlib logger for a library that may warn once per message (aiomqtt, when its
    queue of incoming messages is full): its warnings go to the structlog logger ``to`` as
    ``event``, each distinct message at most once a minute, with its count (:class:`Tally`)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(_ToTally(Tally(to, event)))
    return logger


class _ToTally(logging.Handler):
    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.WARNING)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        self.tally.add(record.getMessage())
