"""Fixtures for every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

USER_DIRECTORIES = ("XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "XDG_STATE_HOME")
"""What the CLI and the bridge keep per user: the identity cache of one-shot reads, the
heartbeat, the PID and log files of ``daemon -f``."""


@pytest.fixture(autouse=True, scope="session")
def _user_directories_of_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test (and every process it starts, with the environment it inherits) keeps
    its per-user files in a temporary directory, never in the home of who runs the tests."""
    with pytest.MonkeyPatch.context() as patch:
        for name in USER_DIRECTORIES:
            directory = tmp_path_factory.mktemp(name.lower())
            directory.chmod(0o700)  # as a runtime directory must be
            patch.setenv(name, str(directory))
        yield


def user_directories() -> dict[str, str]:
    """The variables above, for a test that starts a process with an environment of its
    own making."""
    return {name: os.environ[name] for name in USER_DIRECTORIES}


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
