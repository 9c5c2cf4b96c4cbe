"""Logging through structlog: readable on a terminal, JSON lines elsewhere.

Importing structlog costs some 15 ms (40 where ``rich`` is installed), which a one-shot
command that logs nothing should not pay: modules that such a command uses take their
logger from :func:`get_logger`, which imports structlog when an event is to be logged.
The stdlib's logging (3 ms) is imported only where it is used, for the same reason.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import logging

LogFormat = Literal["auto", "console", "json"]

SECRET_WORDS = ("password", "secret", "token", "passwd")

# The least level of each logging method, for the events dropped before structlog loads:
# the stdlib's numbers (logging.DEBUG is 10, ... logging.CRITICAL 50).
_LEVEL_OF = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40,
             "critical": 50}

_deferred: str | None = None  # the level of on_demand() while it is in force


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
    import logging

    import structlog

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


@contextmanager
def on_demand(level: str) -> Iterator[None]:
    """Within: as :func:`configure` (``level``), applied by the first event at that level.

    Events below it from :func:`get_logger`'s loggers are dropped without importing
    structlog: a one-shot command that has nothing to report never loads it.
    """
    global _deferred
    _deferred = level
    try:
        yield
    finally:
        _deferred = None


def get_logger(name: str) -> Any:
    """structlog's logger for ``name``, imported when it first has an event to log."""
    return _Logger(name, {})


class _Logger:
    """Stands in for a structlog bound logger until one is needed."""

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name, self._context = name, context

    def bind(self, **values: Any) -> _Logger:
        return _Logger(self._name, {**self._context, **values})

    def __getattr__(self, method: str) -> Any:
        global _deferred
        if _deferred is not None:
            if _LEVEL_OF.get(method, _LEVEL_OF["critical"]) < _LEVEL_OF[_deferred]:
                return _ignore
            level, _deferred = _deferred, None
            configure(level)
        import structlog

        return getattr(structlog.get_logger(self._name).bind(**self._context), method)


def _ignore(*_: Any, **__: Any) -> None:
    return None


def _identity(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


class Tally:
    """Events that may come in floods, logged at most once per ``every`` seconds.

    The first event is logged at once; the ones that follow within ``every`` seconds are
    only counted, and their counts go out with the next event after that, with
    :meth:`tick` once the ``every`` seconds are over (the bridge ticks every tally now and
    then: :func:`flush_tallies`), or with :meth:`flush`. A garbage-streaming client or a
    chatty peer thus costs one line a minute, and the line still says how much was
    dropped. A line that goes out later carries the fields of the last event counted.
    """

    def __init__(self, logger: Any, event: str, *, every: float = 60.0,
                 level: str = "warning", clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.event = event
        self.every = every
        self.level = level
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._fields: dict[str, Any] = {}
        self._quiet_until = -math.inf
        _TALLIES.add(self)

    def add(self, what: str, count: int = 1, **fields: Any) -> None:
        """Count ``count`` of ``what``; log the counts when the last line is old enough."""
        self.counts[what] += count
        self._fields = fields
        now = self.clock()
        if now >= self._quiet_until:
            self._emit(now, fields)

    def tick(self) -> None:
        """Log what was counted, once ``every`` seconds have passed since the last line."""
        now = self.clock()
        if self.counts and now >= self._quiet_until:
            self._emit(now, self._fields)

    def flush(self, **fields: Any) -> None:
        """Log what was counted since the last line, if anything."""
        if self.counts:
            self._emit(self.clock(), fields or self._fields)

    def over(self) -> None:
        """The flood is over: log what was counted; the next event is logged at once."""
        self.flush()
        self._quiet_until = -math.inf

    def _emit(self, now: float, fields: dict[str, Any]) -> None:
        getattr(self.logger, self.level)(self.event, counts=dict(self.counts), **fields)
        self.counts.clear()
        self._quiet_until = now + self.every


_TALLIES: weakref.WeakSet[Tally] = weakref.WeakSet()  # every tally still in use


def flush_tallies(*, everything: bool = False) -> None:
    """Log what the tallies counted: of those whose ``every`` seconds are over, or
    (``everything``, at shutdown) of all of them."""
    for tally in list(_TALLIES):
        if everything:
            tally.flush()
        else:
            tally.tick()


def throttled_stdlib(name: str, to: Any, event: str) -> logging.Logger:
    """A stdlib logger for a library that may warn once per message (aiomqtt, when its
    queue of incoming messages is full): its warnings go to the structlog logger ``to`` as
    ``event``, each distinct message at most once a minute, with its count (:class:`Tally`)."""
    import logging

    class ToTally(logging.Handler):
        def __init__(self, tally: Tally) -> None:
            super().__init__(logging.WARNING)
            self.tally = tally

        def emit(self, record: logging.LogRecord) -> None:
            self.tally.add(record.getMessage())

    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(ToTally(Tally(to, event)))
    return logger
