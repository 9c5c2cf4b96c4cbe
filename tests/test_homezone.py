"""The home's time zone: TZ, else /etc/localtime (a link, or the host's file mounted by
compose), else UTC; a zone that cannot be used is an error that says what to set."""

from __future__ import annotations

import subprocess
import sys
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sermatec_bridge.homezone import HomeZone, ZoneError, from_environment, named

JANUARY = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
JULY = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)


def zone_file(name: str) -> Path:
    """The tz database's file of ``name`` (the system's, else the tzdata package's)."""
    for root in zoneinfo.TZPATH:
        if (Path(root) / name).is_file():
            return Path(root) / name
    import tzdata

    return Path(tzdata.__file__).parent / "zoneinfo" / name


def test_tz_names_the_zone(tmp_path: Path) -> None:
    zone = from_environment({"TZ": "Pacific/Auckland"}, tmp_path / "localtime")
    assert (zone.name, zone.source) == ("Pacific/Auckland", "TZ=Pacific/Auckland")
    assert zone.label(JANUARY) == "Pacific/Auckland (NZDT, UTC+13:00)"
    assert zone.label(JULY) == "Pacific/Auckland (NZST, UTC+12:00)"


def test_tz_wins_over_etc_localtime(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to(zone_file("Europe/Berlin"))
    assert from_environment({"TZ": ":America/New_York"}, link).name == "America/New_York"


def test_a_link_into_the_zone_database_names_the_zone(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to(zone_file("Europe/Berlin"))
    zone = from_environment({}, link)
    assert (zone.name, zone.source) == ("Europe/Berlin", str(link))


def test_the_hosts_file_mounted_by_compose_gives_its_rules(tmp_path: Path) -> None:
    """Compose mounts the host's /etc/localtime: a plain file that names no zone."""
    mounted = tmp_path / "localtime"
    mounted.write_bytes(zone_file("America/New_York").read_bytes())
    zone = from_environment({"TZ": ""}, mounted)
    assert zone.name == str(mounted)
    assert JANUARY.astimezone(zone.tz).hour == 7  # EST
    assert JULY.astimezone(zone.tz).hour == 8  # EDT
    assert zone.label(JULY) == f"{mounted} (EDT, UTC-04:00)"


def test_nothing_at_all_is_utc_and_says_so(tmp_path: Path) -> None:
    zone = from_environment({}, tmp_path / "missing")
    assert (zone.name, zone.label(JULY)) == ("UTC", "UTC")
    assert zone.source == f"neither TZ nor {tmp_path / 'missing'} is set"


@pytest.mark.parametrize("tz", ["Europe/Berlinn", "../../etc/passwd", "CET-1CEST,M3.5.0"])
def test_an_unknown_tz_is_an_error_not_utc(tz: str, tmp_path: Path) -> None:
    with pytest.raises(ZoneError, match=f"TZ={tz}: .* is not a time zone of the tz database; "
                       "use a name such as Europe/Berlin"):
        from_environment({"TZ": tz}, tmp_path / "localtime")


def test_a_localtime_that_is_no_zone_file_is_an_error(tmp_path: Path) -> None:
    localtime = tmp_path / "localtime"
    localtime.write_text("Europe/Berlin\n")
    with pytest.raises(ZoneError, match=f"{localtime} is not a time zone file .*; set TZ"):
        from_environment({}, localtime)


def test_a_localtime_docker_made_a_directory_is_the_hosts_utc(tmp_path: Path) -> None:
    """Docker makes a directory of a bind-mount source the host lacks (a host without a
    zone file runs in UTC): the bridge starts in UTC and says why, never restart-loops."""
    localtime = tmp_path / "localtime"
    localtime.mkdir()
    zone = from_environment({}, localtime)
    assert zone.name == "UTC"
    assert zone.source == (f"TZ is not set and {localtime} is a directory (the host has no "
                           "zone file to mount): set TZ")


def test_home_zone_now_is_the_zones_local_time() -> None:
    zone: HomeZone = named("Asia/Kolkata", "test")
    assert zone.now().utcoffset() == zone.tz.utcoffset(datetime.now())
    assert zone.label(JULY) == "Asia/Kolkata (IST, UTC+05:30)"


def test_the_bridge_does_not_start_in_an_unknown_zone() -> None:
    """A typo in TZ would set the inverter's clock wrong: one line, a configuration exit."""
    done = subprocess.run(
        [sys.executable, "-m", "sermatec_bridge", "run"], capture_output=True, text=True,
        timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "TZ": "Europe/Berlinn",
             "SERMATEC_INVERTER__HOST": "127.0.0.1", "SERMATEC_MQTT__HOST": "127.0.0.1"})
    assert done.returncode == 11, done.stderr
    assert done.stderr == "sermatec-bridge: time zone: TZ=Europe/Berlinn: 'Europe/Berlinn' " \
        "is not a time zone of the tz database; use a name such as Europe/Berlin or " \
        "America/New_York\n"
