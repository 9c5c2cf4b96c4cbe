"""Inverters' identities (their 0x98 replies), remembered between command-line runs.

A one-shot ``get`` need not ask an inverter who it is when it asked a few minutes ago: the
identity an inverter gave is kept per host and port in ``$XDG_CACHE_HOME/sermatec-bridge``
(``~/.cache`` by default) for :data:`LIFETIME` seconds from the inverter's answer.

An entry may be wrong: another inverter now has that address, or a firmware update changed
the PCU version. The command line therefore uses it only for queries whose replies read
alike at every PCU version (:func:`~sermatec_bridge.protocol.tables.same_at_every_version`),
so that no reply is ever decoded with the wrong tables, and forgets it when a run that
used it fails. A cache that cannot be read or written is no cache, never an error.

This module is on the path of every one-shot read, so it keeps to ``os.path``: pathlib
and urllib would add 2 ms to the start of each.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from ..protocol.codec import Reading
from ..protocol.tables import SYSTEM_INFO
from .core import Identity

LIFETIME = 600.0


def directory() -> str:
    """OSError if neither $XDG_CACHE_HOME nor the home directory is an absolute path (a
    relative one is to be ignored, the XDG rules say)."""
    for base in (os.environ.get("XDG_CACHE_HOME", ""),
                 os.path.join(os.path.expanduser("~"), ".cache")):
        if os.path.isabs(base):
            return os.path.join(base, "sermatec-bridge")
    raise FileNotFoundError("no cache directory: no home directory, no $XDG_CACHE_HOME")


def _path(host: str, port: int) -> str:
    """The entry's file: one per host and port, whatever characters the host has."""
    name = host.replace("%", "%25").replace("/", "%2F")
    return os.path.join(directory(), f"identity-{name}-{port}.json")


def load(host: str, port: int) -> Identity | None:
    """The identity the inverter at ``host:port`` gave less than LIFETIME seconds ago."""
    try:
        with open(_path(host, port), encoding="utf-8") as file:
            entry = json.load(file)
        age = time.time() - float(entry["answered"])
        if not 0 <= age < LIFETIME:
            return None
        return Identity.from_reading(Reading(SYSTEM_INFO, 0, dict(entry["values"])))
    except (OSError, ValueError, TypeError, KeyError):  # none, or unusable
        return None


def store(host: str, port: int, identity: Identity) -> None:
    """Remember the identity the inverter at ``host:port`` has just given."""
    entry = {"host": host, "port": port, "answered": time.time(),
             "values": identity.reading.values}
    try:
        path = _path(host, port)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        partial = f"{path}.{os.getpid()}"
        try:
            with open(partial, "w", encoding="utf-8") as file:
                json.dump(entry, file)
            os.replace(partial, path)  # whole or not at all, whatever else runs at the time
        finally:
            with contextlib.suppress(OSError):
                os.remove(partial)
    except (OSError, TypeError, ValueError):  # e.g. a container's read-only home
        return


def forget(host: str, port: int) -> None:
    with contextlib.suppress(OSError, ValueError):  # none, or a host no file name can hold
        os.remove(_path(host, port))
