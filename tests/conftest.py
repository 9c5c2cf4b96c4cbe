"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Log through structlog's defaults, never into a stream an earlier test captured.

    The CLI's tests configure structlog to write to the stderr pytest captured for them;
    once that is closed, any later test whose code logs would fail with "I/O operation
    on closed file", whatever the order the tests run in.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
