"""sermatec-bridge: Sermatec hybrid inverters in Home Assistant, over MQTT, without the cloud."""

from __future__ import annotations

PROJECT_URL = "https://github.com/sermatec-bridge/sermatec-bridge"


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed metadata on first use.

    importlib.metadata costs some 40 ms of start-up, which ``--help``, ``list`` and
    ``decode`` do not pay.
    """
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("sermatec-bridge")
    except PackageNotFoundError:  # running from a source tree that is not installed
        found = "0.0.0"
    globals()["__version__"] = found
    return found
