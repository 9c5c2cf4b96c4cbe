"""Inverters' identities (their 0x98 replies), remembered between command-line runs.

A one-shot ``get`` need not ask an inverter who it is when it asked a few minutes ago: the
identity an inverter gave is kept per host and port in ``$XDG_CACHE_HOME/sermatec-bridge``
(``~/.cache`` by default) for :data:`LIFETIME` seconds from the inverter's answer.

An entry may be wrong: another inverter now has that address, or a firmware update changed
the PCU version. The command line therefore uses it only for queries whose replies read
alike at every PCU version (:func:`~sermatec_bridge.protocol.tables.same_at_every_version`),
so that no reply is ever decoded with the wrong tables, and forgets it when a run that
used it fails. A cache that cannot be read or written is no cache, never an error.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import quote

from ..protocol.codec import Reading
from ..protocol.tables import SYSTEM_INFO
from .client import Identity

LIFETIME = 600.0


def directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sermatec-bridge"


def _path(host: str, port: int) -> Path:
    return directory() / f"identity-{quote(host, safe='')}-{port}.json"


def load(host: str, port: int) -> Identity | None:
    """The identity the inverter at ``host:port`` gave less than LIFETIME seconds ago."""
    try:
        entry = json.loads(_path(host, port).read_text())
        age = time.time() - float(entry["answered"])
        if not 0 <= age < LIFETIME:
            return None
        return Identity.from_reading(Reading(SYSTEM_INFO, 0, dict(entry["values"])))
    except (OSError, RuntimeError, ValueError, TypeError, KeyError):  # none, or unusable
        return None


def store(host: str, port: int, identity: Identity) -> None:
    """Remember the identity the inverter at ``host:port`` has just given."""
    entry = {"host": host, "port": port, "answered": time.time(),
             "values": identity.reading.values}
    try:
        path = _path(host, port)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        try:
            partial.write_text(json.dumps(entry))
            partial.replace(path)  # whole or not at all, whatever else runs at the time
        finally:
            partial.unlink(missing_ok=True)
    except (OSError, RuntimeError, TypeError, ValueError):  # e.g. a container's read-only home
        return


def forget(host: str, port: int) -> None:
    try:
        _path(host, port).unlink(missing_ok=True)
    except (OSError, RuntimeError):
        return
