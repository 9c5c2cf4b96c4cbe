"""sermatec-bridge: Sermatec hybrid inverters in Home Assistant, over MQTT, without the cloud."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sermatec-bridge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

PROJECT_URL = "https://github.com/sermatec-bridge/sermatec-bridge"
