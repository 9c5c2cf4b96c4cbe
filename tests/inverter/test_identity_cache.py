"""The identity cache of one-shot reads: one entry per inverter, never an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sermatec_bridge.inverter import identity_cache
from sermatec_bridge.inverter.client import Identity
from sermatec_bridge.protocol import codec, tables
from sermatec_bridge.simulator import InverterModel


def identity(serial: str) -> Identity:
    payload = InverterModel(serial=serial).payload(tables.SYSTEM_INFO.code)
    return Identity.from_reading(codec.decode(tables.SYSTEM_INFO, 609, payload))


def test_every_host_has_an_entry_of_its_own_inside_the_cache_directory() -> None:
    hosts = ["10.10.100.254", "::1", "fe80::1%eth0", "a/b", "a%2Fb", "..", "../up"]
    for n, host in enumerate(hosts):
        identity_cache.store(host, 8899, identity(f"ST5K0SERIAL{n:07d}"))
    identity_cache.store("10.10.100.254", 8900, identity("ST5K0OTHERPORT0001"))

    for n, host in enumerate(hosts):
        known = identity_cache.load(host, 8899)
        assert known is not None and known.serial == f"ST5K0SERIAL{n:07d}", host
    files = sorted(Path(identity_cache.directory()).iterdir())
    assert len(files) == len(hosts) + 1
    assert sorted(p for p in Path(os.environ["XDG_CACHE_HOME"]).rglob("*") if p.is_file()) == files

    identity_cache.forget("a/b", 8899)
    assert identity_cache.load("a/b", 8899) is None
    assert identity_cache.load("a%2Fb", 8899) is not None


def test_without_a_home_directory_there_is_no_cache(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A relative home or $XDG_CACHE_HOME names no directory: nothing lands in the
    working directory, and reads go on without a cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "relative")
    for cache_home in ("", "cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", cache_home)
        identity_cache.store("10.10.100.254", 8899, identity("ST5K0SIMULATOR0001"))
        assert identity_cache.load("10.10.100.254", 8899) is None
        identity_cache.forget("10.10.100.254", 8899)
    assert list(tmp_path.iterdir()) == []
