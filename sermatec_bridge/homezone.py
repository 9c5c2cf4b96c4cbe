"""The home's time zone: the local time the inverter's clock is set to, and the midnight
at which its daily counters start over.

The inverter keeps the home's local time, which need not be the zone of the machine the
bridge runs on (a container is in UTC unless told otherwise). The zone, in this order:

* ``TZ``, when set: an IANA name such as ``Europe/Berlin``;
* the system's ``/etc/localtime`` (in compose, the host's, mounted read-only);
* neither: UTC, which the start-up log says;
* the Home Assistant app: Home Assistant's own zone, from the Supervisor (``use``).

Zones are read with :mod:`zoneinfo` (the system's database, else the ``tzdata`` package),
not by the C library, which takes a name it does not know for UTC without a word.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LOCALTIME = Path("/etc/localtime")


class ZoneError(Exception):
    """A time zone that cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class HomeZone:
    tz: tzinfo
    name: str  # an IANA name, or the path of a zone file that names none
    source: str  # where it came from: "TZ", "/etc/localtime", "Home Assistant", ...

    def now(self) -> datetime:
        return datetime.now(self.tz)

    def label(self, when: datetime | None = None) -> str:
        """The zone as a reader knows it: ``Pacific/Auckland (NZDT, UTC+13:00)``."""
        when = (when or self.now()).astimezone(self.tz)
        offset = when.strftime("%z")
        utc = f"UTC{offset[:3]}:{offset[3:]}" if offset not in ("", "+0000") else "UTC"
        parts = dict.fromkeys(p for p in (when.tzname(), utc) if p and p != self.name)
        return f"{self.name} ({', '.join(parts)})" if parts else self.name


def named(name: str, source: str) -> HomeZone:
    """The zone called ``name`` in the tz database, or a ZoneError naming ``source``."""
    try:
        return HomeZone(ZoneInfo(name), name, source)
    except (ZoneInfoNotFoundError, ValueError):
        raise ZoneError(f"{source}: {name!r} is not a time zone of the tz database; use a "
                        "name such as Europe/Berlin or America/New_York") from None


def from_environment(environ: Mapping[str, str], localtime: Path = LOCALTIME) -> HomeZone:
    """The zone of ``TZ``, else of ``localtime``, else UTC."""
    name = environ.get("TZ", "").removeprefix(":")
    if name:
        return named(name, f"TZ={name}")
    try:
        target = os.readlink(localtime)
    except OSError:
        target = ""
    if "zoneinfo/" in target:  # a link into the zone database names its zone
        try:
            return named(target.rsplit("zoneinfo/", 1)[1], str(localtime))
        except ZoneError:
            pass  # not a name this database knows: read the file itself
    try:
        with localtime.open("rb") as file:
            return HomeZone(ZoneInfo.from_file(file, key=str(localtime)), str(localtime),
                            str(localtime))
    except FileNotFoundError:
        return HomeZone(UTC, "UTC", f"neither TZ nor {localtime} is set")
    except IsADirectoryError:  # Docker makes a missing bind source a directory
        return HomeZone(UTC, "UTC", f"TZ is not set and {localtime} is a directory (the "
                        "host has no zone file to mount): set TZ")
    except (OSError, ValueError) as exc:
        raise ZoneError(f"{localtime} is not a time zone file ({exc}); set TZ to a zone "
                        "name such as Europe/Berlin") from None


_zone: HomeZone | None = None


def current() -> HomeZone:
    """The process's home zone: the one given to ``use``, else the environment's."""
    global _zone
    if _zone is None:
        _zone = from_environment(os.environ)
    return _zone


def use(zone: HomeZone | None) -> None:
    """Make ``zone`` the home zone (``None``: read the environment again when asked)."""
    global _zone
    _zone = zone
