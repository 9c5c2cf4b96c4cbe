"""Broker TLS and authentication: the bridge against a Mosquitto that requires both.

The test makes its own certificate authority and a server certificate for 127.0.0.1 and
localhost (with the ``openssl`` binary), and starts Mosquitto with a password file and a
TLS listener. A second, plain listener (same password file) lets the test watch the
broker as Home Assistant would. Right settings: the bridge comes online; wrong ones: it
stays offline and its log says why, in words a user can act on.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sermatec_bridge.simulator import Simulator

from .conftest import (
    BASE,
    HOST,
    HomeAssistant,
    Mosquitto,
    RunningBridge,
    eventually,
    free_port,
    make_settings,
    password_file,
    sim_port,
    topic,
)

USER, PASSWORD = "bridge", "s3cret-Pa55word"
BRIDGE_STATE = f"{BASE}/bridge/state"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("the TLS tests need the openssl binary: sudo apt-get install openssl")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=sermatec-bridge test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
             cwd=d)
    return Certificates(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key")


@dataclass
class SecureBroker:
    mosquitto: Mosquitto
    plain_port: int  # password required, no TLS: where the test watches

    @property
    def tls_port(self) -> int:
        return self.mosquitto.port


@pytest.fixture
def secure_broker(mosquitto_bin: str, tmp_path: Path,
                  certificates: Certificates) -> Iterator[SecureBroker]:
    passwords = password_file(tmp_path, USER, PASSWORD)
    plain_port = free_port()
    extra = "\n".join([
        f"cafile {certificates.ca}",
        f"certfile {certificates.cert}",
        f"keyfile {certificates.key}",
        "require_certificate false",
        f"listener {plain_port} {HOST}",
        f"password_file {passwords}",
    ])
    mosquitto = Mosquitto(mosquitto_bin, tmp_path / "mosquitto", extra=extra,
                          anonymous=False)
    mosquitto.start()
    try:
        yield SecureBroker(mosquitto, plain_port)
    finally:
        mosquitto.stop()


@pytest.fixture
async def watcher(secure_broker: SecureBroker) -> AsyncIterator[HomeAssistant]:
    async with HomeAssistant(secure_broker.plain_port, username=USER,
                             password=PASSWORD) as client:
        yield client


def mqtt(secure_broker: SecureBroker, **changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"host": HOST, "port": secure_broker.tls_port,
                                "username": USER, "password": PASSWORD}
    settings.update(changes)
    return {"mqtt": settings}


async def run_until(secure_broker: SecureBroker, sim: Simulator, tmp_path: Path,
                    changes: dict[str, Any], condition: Any, what: str,
                    within: float = 15.0) -> list[MutableMapping[str, Any]]:
    """Run a bridge until ``condition(logs)`` holds; return every log event it made."""
    with capture_logs() as logs:
        settings = make_settings(secure_broker.tls_port, sim_port(sim), tmp_path, changes)
        running = RunningBridge(settings).start()
        try:
            await eventually(lambda: condition(logs), within=within, what=what)
        finally:
            await running.stop()
    return logs


def connection_errors(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [str(e.get("error")) for e in logs if e["event"] == "mqtt connection failed, retrying"]


def connected(logs: list[MutableMapping[str, Any]]) -> bool:
    return any(e["event"] == "mqtt connected" for e in logs)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_bridge_connects_with_tls_and_password(
        secure_broker: SecureBroker, watcher: HomeAssistant, sim: Simulator, tmp_path: Path,
        certificates: Certificates, host: str) -> None:
    changes = mqtt(secure_broker, host=host,
                   tls={"enabled": True, "ca_file": str(certificates.ca)})
    with capture_logs() as logs:
        settings = make_settings(secure_broker.tls_port, sim_port(sim), tmp_path, changes)
        running = RunningBridge(settings).start()
        try:
            await watcher.wait_text(BRIDGE_STATE, "online", within=15)
            await watcher.wait_text(topic("availability"), "online", within=10)
            await watcher.wait_json(topic("live"), within=10)
        finally:
            await running.stop()
    await watcher.wait_text(BRIDGE_STATE, "offline", within=5)
    assert connection_errors(logs) == []
    assert PASSWORD not in repr(logs), "the password must never reach a log line"


@pytest.mark.parametrize(("user", "password"), [(USER, "wrong-password"), (None, None)])
async def test_wrong_credentials_are_reported(
        secure_broker: SecureBroker, watcher: HomeAssistant, sim: Simulator, tmp_path: Path,
        certificates: Certificates, user: str | None, password: str | None) -> None:
    changes = mqtt(secure_broker, username=user, password=password,
                   tls={"enabled": True, "ca_file": str(certificates.ca)})
    logs = await run_until(secure_broker, sim, tmp_path, changes,
                           lambda logs: len(connection_errors(logs)) >= 2, "two refusals")
    error = connection_errors(logs)[0].lower()
    assert "not authorized" in error or "bad user name or password" in error, error
    failures = [e for e in logs if e["event"] == "mqtt connection failed, retrying"]
    assert "mqtt.password" in failures[0]["check"], "one line says which settings to check"
    assert [e["log_level"] for e in failures[:2]] == ["error", "debug"], "and says it once"
    assert not connected(logs)
    assert not watcher.on(BRIDGE_STATE)
    assert "wrong-password" not in repr(logs)


async def test_missing_ca_fails_certificate_verification(
        secure_broker: SecureBroker, watcher: HomeAssistant, sim: Simulator,
        tmp_path: Path) -> None:
    # No ca_file: the system's CAs, which do not know the test's CA.
    changes = mqtt(secure_broker, tls={"enabled": True})
    logs = await run_until(secure_broker, sim, tmp_path, changes,
                           lambda logs: connection_errors(logs), "a connection failure")
    error = connection_errors(logs)[0]
    assert "certificate verify failed" in error.lower(), error
    assert not connected(logs)
    assert not watcher.on(BRIDGE_STATE)


async def test_plain_connection_to_the_tls_port_fails(
        secure_broker: SecureBroker, watcher: HomeAssistant, sim: Simulator,
        tmp_path: Path) -> None:
    changes = mqtt(secure_broker)  # TLS forgotten
    logs = await run_until(secure_broker, sim, tmp_path, changes,
                           lambda logs: connection_errors(logs), "a connection failure")
    assert not connected(logs)
    assert not watcher.on(BRIDGE_STATE)


async def test_insecure_tls_connects_without_the_ca(
        secure_broker: SecureBroker, watcher: HomeAssistant, sim: Simulator,
        tmp_path: Path) -> None:
    changes = mqtt(secure_broker, host="localhost", tls={"enabled": True, "insecure": True})
    logs = await run_until(secure_broker, sim, tmp_path, changes, connected,
                           "an MQTT connection")
    assert connection_errors(logs) == []
    await watcher.wait_text(BRIDGE_STATE, "online", within=5)
