"""The daemon's heartbeat file and the ``health`` check that reads it.

The daemon rewrites a small JSON file every few seconds: when it last polled and
published each inverter, and whether the broker is connected. ``sermatec-bridge health``
(the container's HEALTHCHECK) judges that file; it needs no network access.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service import Bridge


def snapshot(bridge: Bridge) -> dict[str, Any]:
    return {
        "updated": time.time(),
        "mqtt_connected": bridge.broker.client is not None,
        "inverters": [
            {
                "name": w.config.label,
                "serial": w.serial,
                "online": w.online,
                "last_poll": w.last_poll,
                "last_publish": w.last_publish,
            }
            for w in bridge.workers
        ],
    }


def write(path: Path, bridge: Bridge) -> None:
    """Replace the heartbeat file atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        try:
            json.dump(snapshot(bridge), tmp)
        except BaseException:
            os.unlink(tmp.name)
            raise
    try:
        os.replace(tmp.name, path)
    except OSError:
        os.unlink(tmp.name)
        raise


@dataclass
class Verdict:
    """What ``health`` found in the heartbeat file."""

    file: Path
    problems: list[str]  # empty: healthy
    age: float | None = None  # seconds since the bridge wrote it; None: no readable file

    def __str__(self) -> str:
        if self.age is None:
            return "; ".join(self.problems)
        where = f"heartbeat {self.age:.0f} s old in {self.file}"
        return f"{'; '.join(self.problems)} ({where})" if self.problems else where


def check(path: Path, max_age: float, now: float | None = None) -> Verdict:
    """Judge the heartbeat file: healthy when it has no problems."""
    now = time.time() if now is None else now
    try:
        beat = json.loads(path.read_text())
        age = now - float(beat.get("updated", 0))
    except FileNotFoundError:
        return Verdict(path, [f"no heartbeat file at {path}: is the bridge running?"])
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return Verdict(path, [f"unreadable heartbeat file {path}: {exc}"])
    problems = []
    if age > max_age:
        problems.append(f"heartbeat is {age:.0f} s old (limit {max_age:.0f} s): "
                        "the bridge is stuck or stopped")
    if not beat.get("mqtt_connected"):
        problems.append("not connected to the MQTT broker")
    for inverter in beat.get("inverters", []):
        for what in ("poll", "publish"):
            last = inverter.get(f"last_{what}")
            if last is None:
                problems.append(f"inverter {inverter['name']}: no successful {what} yet")
            elif now - last > max_age:
                problems.append(f"inverter {inverter['name']}: last successful {what} "
                                f"{now - last:.0f} s ago (limit {max_age:.0f} s)")
    return Verdict(path, problems, age)
