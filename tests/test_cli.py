"""The command line: offline (listings, decoding) and against the simulator on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import user_directories
from ports import free_port

from sermatec_bridge import cli
from sermatec_bridge.inverter import identity_cache
from sermatec_bridge.protocol import tables
from sermatec_bridge.protocol.frame import checksum, reply
from sermatec_bridge.protocol.model import Kind
from sermatec_bridge.simulator import InverterModel, Simulator


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own cache directory (``get`` remembers identities), never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def test_list_shows_how_to_send_the_register_query(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--pcu", "609"]) == cli.Exit.OK
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("0xbb"))
    assert "get bb --registers ADDR[,ADDR...] --risk-inverter-lockup" in line


@pytest.mark.parametrize("reported", [991, 998])
def test_versions_991_and_998_read_as_601(reported: int,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--pcu", str(reported)]) == cli.Exit.OK
    out = capsys.readouterr().out
    assert f"PCU version {reported} (tables of PCU 500)" in out
    assert "0xbb" not in out  # the register commands come with PCU 603


def test_decode_applies_the_tables_of_the_effective_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    body = bytes.fromhex("fe5514649d002e") + bytes(46)  # 0x9d, working parameters 2
    hex_frame = (body + bytes([checksum(body), 0xAE])).hex()
    assert cli.main(["decode", "--json", "--pcu", "991", hex_frame]) == cli.Exit.OK
    out = capsys.readouterr().out
    assert '"pcu_version": 601' in out
    assert '"bypass"' in out and "generator_rated_power" not in out  # PCU 500, not 603


# --------------------------------------------------------------------------------------
# Every bad input: one line on stderr, a distinct exit code, never a traceback
# --------------------------------------------------------------------------------------

CAPTURED_0x98 = (  # its checksum is genuinely wrong: the publisher masked the serial
    "fe551464980032019b000200015354313131313131313131313131313131313131313131313131"
    "00000000000000000000000000000000000096ae"
)


def run_cli(*args: str, stdin: str = "",
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
    if env is not None:
        env = {**user_directories(), **env}
    done = subprocess.run([sys.executable, "-m", "sermatec_bridge", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["decode", CAPTURED_0x98], cli.Exit.BAD_CHECKSUM,
     "carries 0x96, computes to 0xe0 (--ignore-checksum decodes it anyway)"),
    (["decode", "fe 55 14 64 0a 00 26 12"], cli.Exit.TRUNCATED,
     "truncated frame: expected 47 bytes, got 8"),
    (["decode", "fe55zz"], cli.Exit.NOT_HEX, "not hex: 'z' at position 4"),
    (["decode", "abc"], cli.Exit.NOT_HEX, "odd number of hex digits"),
    (["decode", "00112233"], cli.Exit.MALFORMED, "no frame found"),
    (["decode", reply(0x42).hex()], cli.Exit.MALFORMED, "unknown command 0x42"),
    (["get", "--el", "42", "-i", "127.0.0.1"], cli.Exit.UNKNOWN_COMMAND,
     "unknown command '42'"),
    (["get", "66", "-i", "127.0.0.1"], cli.Exit.REFUSED, "is a settings write"),
    (["get", "0a", "66", "-i", "127.0.0.1"], cli.Exit.REFUSED, "0x66 (Operating mode"),
    (["get", "0a", "bb", "-i", "127.0.0.1"], cli.Exit.USAGE, "0xbb (two-part register "
     "query) is sent on its own"),
    (["--timeout", "inf", "get", "0a"], cli.Exit.USAGE, "inf is not a timeout"),
    (["get", "0a", "--timeout", "1e-9"], cli.Exit.USAGE, "1e-9 is not a timeout"),
    (["decode"], cli.Exit.USAGE, "decode needs hex bytes"),
    (["decode", "-"], cli.Exit.USAGE, "decode got no hex bytes"),
    (["decode", "fe5514640c000465930dbf98af"], cli.Exit.MALFORMED,
     "its footer is 0xaf, not 0xae"),
    (["decode", "fe5501020c000465930dbf" + format(0x0f ^ 0xfe ^ 0x55 ^ 1 ^ 2 ^ 0x0c ^ 4 ^ 0x65
                                                   ^ 0x93 ^ 0x0d ^ 0xbf, "02x") + "ae"],
     cli.Exit.MALFORMED, "neither a reply (0x14 → 0x64) nor a request (0x64 → 0x14)"),
    (["get", "bb", "-i", "127.0.0.1"], cli.Exit.REFUSED, "--risk-inverter-lockup"),
    (["get"], cli.Exit.USAGE, "get needs a command"),
    (["-p", "70000", "get", "0a"], cli.Exit.USAGE, "70000 is not a TCP port"),
    (["--timeout", "0", "get", "0a"], cli.Exit.USAGE, "must be greater than 0"),
    (["decode", "--pcu", "-5", "00"], cli.Exit.USAGE, "is not a PCU version"),
    (["get", "0a", "-i", "127.0.0.1:0"], cli.Exit.USAGE, "127.0.0.1:0: 0 is not a TCP port"),
    (["get", "0a", "-i", "[::1"], cli.Exit.USAGE, "is not HOST, HOST:PORT or [IPV6]:PORT"),
    (["-i", ":8899", "get", "0a"], cli.Exit.USAGE, "':8899' names no host"),
    (["-i", "127.0.0.1:51449", "get", "0a", "-p", "8899"], cli.Exit.USAGE,
     "-i 127.0.0.1:51449 and -p 8899 name two ports; give one"),
    (["daemon", "-m", "127.0.0.1", "-i", "[::1]:8899", "-p", "1883"], cli.Exit.USAGE,
     "-i [::1]:8899 and -p 1883 name two ports"),
    (["cloud", "set", "bridge.lan", "19042", "--yes"], cli.Exit.USAGE,
     "'bridge.lan' is not an IPv4 address"),
    (["cloud", "set", "192.168.1.10", "0", "--yes"], cli.Exit.USAGE, "0 is not a TCP port"),
    (["cloud"], cli.Exit.USAGE, "required: ACTION"),
])
def test_bad_input_gets_its_error(args: list[str], code: int, message: str) -> None:
    status, _, err = run_cli(*args)
    assert status == code, err
    assert message in err
    assert len(err.splitlines()) == 1, err  # one line, usage errors too


def test_decode_anyway_for_analysis_and_from_stdin() -> None:
    status, out, err = run_cli("decode", "--ignore-checksum", "-",
                               stdin=CAPTURED_0x98[:40] + "\n" + CAPTURED_0x98[40:] + "\n")
    assert status == cli.Exit.OK
    assert "decoded anyway" in err
    assert "PCU firmware version: 411" in out


def test_unreachable_inverter_and_timeout(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = str(s.getsockname()[1])
    status, _, err = run_cli("-i", "127.0.0.1", "-p", closed, "get", "0a")
    assert status == cli.Exit.UNREACHABLE
    assert f"cannot reach the inverter at 127.0.0.1:{closed}" in err

    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = str(silent.getsockname()[1])
        status, _, err = run_cli("-i", "127.0.0.1", "-p", port, "--timeout", "0.5",
                                 "get", "0a")
    assert status == cli.Exit.TIMEOUT
    assert "no reply 0x98" in err and "within 0.5 s" in err
    assert "0x98 is the identity query, sent before 0x0a" in err
    assert len(err.splitlines()) == 1, err


def test_flags_win_over_the_environment_and_secrets_stay_masked() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sermatec_bridge", "-p", "9000", "config"],
        env={"PATH": "/usr/bin:/bin", "SERMATEC_INVERTER__HOST": "192.0.2.10",
             "SERMATEC_INVERTER__PORT": "8899", "SERMATEC_MQTT__PASSWORD": "hunter2"},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == cli.Exit.OK, done.stderr
    assert "host: 192.0.2.10\n  port: 9000" in done.stdout
    assert "hunter2" not in done.stdout and "'********'" in done.stdout


# --------------------------------------------------------------------------------------
# decode: the app's requests, and everything skipped
# --------------------------------------------------------------------------------------

STATUS_REPLY = "fe5514640c000465930dbf98ae"
SYSTEM_INFO_REQUEST = "fe5564149800004cae"


def test_decode_names_the_apps_query_requests() -> None:
    status, out, err = run_cli("decode", SYSTEM_INFO_REQUEST)
    assert status == cli.Exit.OK, err
    assert "# 0x98 System information (request)\nquery 0x98, no payload" in out
    status, out, err = run_cli("decode", SYSTEM_INFO_REQUEST, STATUS_REPLY)
    assert status == cli.Exit.OK, err
    assert "query 0x98, no payload" in out and "Inverter switched on: yes" in out
    assert err == ""


def test_decode_shows_the_fields_of_a_captured_settings_write() -> None:
    captured_0x69 = "fe55641469000a0009000100c80002000277ae"  # captures.md
    status, out, err = run_cli("decode", "--json", captured_0x69)
    assert status == cli.Exit.OK, err
    assert '"request": "settings write 0x69, 10 payload bytes"' in out
    assert '"grid_code": {"name": "Grid code", "value": "Czech Republic"' in out


def test_decode_reports_bytes_after_the_last_frame() -> None:
    status, out, err = run_cli("decode", STATUS_REPLY + "010203")
    assert status == cli.Exit.OK
    assert "Inverter switched on: yes" in out
    assert "warning: skipped 3 bytes after the last frame, not part of any frame: 010203" in err


def test_decode_reports_a_bad_frame_behind_a_false_header() -> None:
    status, _, err = run_cli("decode", "fe5514640a00ff" + CAPTURED_0x98)
    assert status == cli.Exit.BAD_CHECKSUM
    assert "carries 0x96, computes to 0xe0" in err
    assert "skipped 7 bytes at offset 0" in err


def test_decode_describes_a_register_count_that_is_no_count() -> None:
    status, _, err = run_cli("decode", reply(0xBB, bytes.fromhex("ffff")).hex())
    assert status == cli.Exit.MALFORMED
    assert "register_count is -1 (raw 0xffff)" in err and "shorter" not in err


# --------------------------------------------------------------------------------------
# Help, version, list without an inverter
# --------------------------------------------------------------------------------------


def test_version() -> None:
    status, out, _ = run_cli("--version")
    assert status == cli.Exit.OK
    assert re.fullmatch(r"sermatec-bridge \d+\.\d+\.\d+\S*\n", out)


def test_help_is_written_for_users_and_shows_options_where_they_apply() -> None:
    texts = {name: run_cli(*([name] if name else []), "--help")[1]
             for name in ("", "get", "list", "decode", "health", "daemon", "run")}
    assert not any("seed tool" in text for text in texts.values())
    assert "--inverter" not in texts[""] and "--timeout" not in texts[""]
    assert "--inverter" in texts["get"] and "--timeout" in texts["get"]
    assert "--inverter" not in texts["decode"] and "--timeout" not in texts["decode"]
    assert "--inverter" not in texts["health"] and "--config" in texts["health"]


def test_list_needs_no_inverter(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SERMATEC_INVERTER__HOST": "127.0.0.1",
           "SERMATEC_INVERTER__PORT": str(free_port())}  # nothing listens there
    status, out, err = run_cli("list", env=env)
    assert status == cli.Exit.OK, err
    assert "Commands at PCU version 609" in out
    status, _, err = run_cli("list", "--from-inverter", env=env)
    assert status == cli.Exit.UNREACHABLE


# --------------------------------------------------------------------------------------
# Against the simulator: the configuration is honoured, one connection, exit codes
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def simulator(*options: str) -> Iterator[tuple[int, Path]]:
    """A simulated inverter on a free loopback port, and the file its log goes to."""
    port = free_port()
    log_file = Path(tempfile.mkstemp(prefix="sermatec-sim-", suffix=".log")[1])
    with log_file.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "sermatec_bridge", "simulate",
                                    "--port", str(port), *options], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while '"simulator started"' not in log_file.read_text():  # listening: no probe needed
            assert process.poll() is None and time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.05)
        yield port, log_file
    finally:
        process.terminate()
        process.wait(10)
        log_file.unlink()


@pytest.fixture(scope="module")
def inverter() -> Iterator[tuple[int, Path]]:
    with simulator() as found:
        yield found


def inverter_env(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "SERMATEC_INVERTER__HOST": host,
            "SERMATEC_INVERTER__PORT": str(port)}


def connections(log_file: Path) -> int:
    return log_file.read_text().count('"client connected"')


def test_get_queries_the_inverter_of_the_environment_several_commands_one_connection(
        inverter: tuple[int, Path]) -> None:
    port, log_file = inverter
    before = connections(log_file)
    status, out, err = run_cli("get", "0a", "0b", "95", env=inverter_env(port))
    assert status == cli.Exit.OK, err
    headers = [line for line in out.splitlines() if line.startswith("# ")]
    assert headers == ["# 0x0a Battery information",
                       "# 0x0b PV, grid, backup and inverter measurements",
                       "# 0x95 Working parameters", "# 0x9d Working parameters 2"]
    assert connections(log_file) == before + 1


def test_get_all_sends_every_query_of_the_inverters_version(
        inverter: tuple[int, Path]) -> None:
    port, log_file = inverter
    before = connections(log_file)
    status, out, err = run_cli("get", "all", "--json", env=inverter_env(port))
    assert status == cli.Exit.OK, err
    sent = [json.loads(line)["command"] for line in out.splitlines()]
    queries = {c.label for c in tables.available(609) if c.kind is Kind.QUERY}
    assert queries <= set(sent)
    assert len(sent) == len(set(sent)), sent  # 0x9d once, though 0x95 brings it too
    assert connections(log_file) == before + 1


def test_get_honours_the_yaml_file_and_flags_win(inverter: tuple[int, Path],
                                                 tmp_path: Path) -> None:
    port, _ = inverter
    config = tmp_path / "config.yaml"
    config.write_text(f"inverter:\n  host: 127.0.0.1\n  port: {port}\n")
    status, out, err = run_cli("get", "--config", str(config), "98",
                               env={"PATH": "/usr/bin:/bin"})
    assert status == cli.Exit.OK, err
    assert "Serial number: ST5K0SIMULATOR0001" in out
    status, _, err = run_cli("get", "98", "-p", str(free_port()), env=inverter_env(port))
    assert status == cli.Exit.UNREACHABLE  # the flag's port, not the environment's


def test_list_from_the_inverter(inverter: tuple[int, Path]) -> None:
    status, out, err = run_cli("list", "--from-inverter", env=inverter_env(inverter[0]))
    assert status == cli.Exit.OK, err
    assert "Commands at PCU version 609" in out


def test_persistent_bad_checksums_exit_6_in_one_line() -> None:
    with simulator("--bad-checksum-rate", "1") as (port, _):
        status, _, err = run_cli("--timeout", "0.3", "get", "0a", env=inverter_env(port))
    assert status == cli.Exit.BAD_CHECKSUM, err
    assert "bad checksum" in err
    assert len(err.splitlines()) == 1, err  # no log warning comes first


def test_simulate_on_a_busy_port_is_one_line(inverter: tuple[int, Path]) -> None:
    status, _, err = run_cli("simulate", "--port", str(inverter[0]))
    assert status == cli.Exit.ERROR
    assert err == f"sermatec-bridge: cannot listen on 127.0.0.1:{inverter[0]}: " \
        "Address already in use\n"
    # the second of three simulators finds the port busy: that port, and nothing else
    status, out, err = run_cli("simulate", "--port", str(inverter[0] - 1), "--count", "3")
    assert status == cli.Exit.ERROR
    assert err == f"sermatec-bridge: cannot listen on 127.0.0.1:{inverter[0]}: " \
        "Address already in use\n"
    assert "simulator started" not in out + err


def test_health_needs_no_inverter(tmp_path: Path) -> None:
    beat = tmp_path / "health.json"
    beat.write_text(json.dumps({"updated": time.time() - 42, "mqtt_connected": True,
                                "inverters": []}))
    status, out, err = run_cli("health", env={"PATH": "/usr/bin:/bin",
                                              "SERMATEC_HEALTH__FILE": str(beat)})
    assert status == cli.Exit.OK, err
    assert re.fullmatch(rf"healthy: heartbeat 4[23] s old in {re.escape(str(beat))}\n", out)


@pytest.mark.parametrize(("sun", "daylight"), [("12:00", True), ("00:30", False)])
def test_simulate_sun_sets_the_simulated_time_of_day(sun: str, daylight: bool) -> None:
    port = free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "sermatec_bridge", "simulate", "--port", str(port),
         "--sun", sun, "--time-scale", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert simulator.stdout is not None
        assert "listening" in simulator.stdout.readline()
        code, out, err = run_cli("get", "0b", "--json", "-i", "127.0.0.1", "-p", str(port))
        assert code == 0, err

        pv = json.loads(out.splitlines()[0])["fields"]["pv1_power"]["value"]
        assert (pv > 100) is daylight, pv
    finally:
        simulator.terminate()
        simulator.wait(10)


def test_simulate_refuses_a_bad_sun_or_time_scale() -> None:
    for args, message in ((["--sun", "25:00"], "not a time of day"),
                          (["--time-scale", "0"], "must be greater than 0"),
                          (["--time-scale", "1e6"], "more than 86400")):
        code, _, err = run_cli("simulate", *args)
        assert code == 2 and message in err, err


@pytest.mark.parametrize(("args", "flag", "action"), [
    (["-i", "127.0.0.1", "decode", "fe5564149800004cae"], "-i/--inverter", "decode"),
    (["--timeout", "5", "health"], "--timeout", "health"),
    (["-c", "/nonexistent.yaml", "decode", "fe5564149800004cae"], "-c/--config", "decode"),
    (["-p", "8899", "simulate", "--count", "0"], "-p/--port", "simulate"),
])
def test_shared_options_before_a_command_that_ignores_them_are_refused(
        args: list[str], flag: str, action: str) -> None:
    status, out, err = run_cli(*args)
    assert status == cli.Exit.USAGE
    assert err == (f"sermatec-bridge: {flag} does not apply to {action} "
                   f"(see sermatec-bridge {action} --help)\n")
    assert out == ""


def test_a_query_the_inverter_never_answers_is_named() -> None:
    """The identity query answered, the one asked for not: the error names the latter."""
    identity = reply(0x98, InverterModel(pcu=609).payload(0x98))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(30)

        def serve() -> None:  # answers every 0x98 request, nothing else
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = server.accept()
                    with conn:
                        while request := conn.recv(64):
                            if request[4:5] == b"\x98":
                                conn.sendall(identity)

        threading.Thread(target=serve, daemon=True).start()
        status, _, err = run_cli("-i", "127.0.0.1", "-p", str(server.getsockname()[1]),
                                 "--timeout", "0.5", "get", "0a")
    assert status == cli.Exit.TIMEOUT
    assert "no reply 0x0a" in err and "(asked: 0x0a Battery information" in err, err
    assert len(err.splitlines()) == 1, err


# --------------------------------------------------------------------------------------
# The community tool's forms, as its README types them
# --------------------------------------------------------------------------------------


def test_the_seed_forms_of_get(inverter: tuple[int, Path]) -> None:
    port, _ = inverter
    env = {"PATH": "/usr/bin:/bin"}  # nothing configured: the flags say it all
    status, out, err = run_cli("--inverter", f"127.0.0.1:{port}", "get", "--el", "98",
                               "--el", "99", env=env)
    assert status == cli.Exit.OK, err
    assert [x for x in out.splitlines() if x.startswith("# ")] == [
        "# 0x98 System information", "# 0x99 Energy totals"]
    assert err == ""  # which inverter is asked is said on a terminal only (below)

    status, out, err = run_cli("get", "9d", "95", "-e", "0a", "-i", f"127.0.0.1:{port}",
                               "-p", str(port), env=env)  # one port, given twice
    assert status == cli.Exit.OK, err
    assert [x for x in out.splitlines() if x.startswith("# ")] == [
        "# 0x0a Battery information", "# 0x9d Working parameters 2",
        "# 0x95 Working parameters"]  # and not 0x9d again, which 0x95 brings too


@pytest.mark.parametrize(("address", "shown"), [
    ("127.0.0.1:51449", "host: 127.0.0.1\n  port: 51449"),
    ("inverter.lan", "host: inverter.lan\n  port: 8899"),
    ("[::1]:8898", "host: ::1\n  port: 8898"),
    ("[::1]", "host: ::1\n  port: 8899"),
    ("fe80::1", "host: fe80::1\n  port: 8899"),
])
def test_an_inverter_address_may_carry_its_port(
        address: str, shown: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in os.environ if n.startswith("SERMATEC_")]:
        monkeypatch.delenv(name)
    assert cli.main(["-i", address, "config"]) == cli.Exit.OK
    assert shown in capsys.readouterr().out


async def test_get_over_ipv6_with_a_bracketed_address() -> None:
    sim = Simulator()
    try:
        await sim.start(host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        status, out, err = await cli_async("get", "battery", "-i", f"[::1]:{sim.port}")
    finally:
        await sim.stop()
    assert status == cli.Exit.OK, err
    assert "Battery state of charge:" in out


def test_which_inverter_is_asked_is_said_on_a_terminal(inverter: tuple[int, Path]) -> None:
    """As the community's tool did, on stderr: --json output stays pure JSON."""
    port, _ = inverter
    reader, terminal = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "sermatec_bridge", "get", "0a", "0c",
                               "--json", "-i", f"127.0.0.1:{port}"],
                              stdout=subprocess.PIPE, stderr=terminal, text=True,
                              timeout=60, check=False, env={
                                  "PATH": "/usr/bin:/bin",
                                  **user_directories()})
        os.close(terminal)
        said = os.read(reader, 4096).decode()
    finally:
        os.close(reader)
    assert done.returncode == cli.Exit.OK, said
    assert said.splitlines() == [f"asking the inverter at 127.0.0.1:{port}"]
    assert [json.loads(line)["command"] for line in done.stdout.splitlines()] == [
        "0x0a", "0x0c"]


def daemon_settings(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> object:
    """The settings ``daemon`` runs the bridge with (the bridge itself is not started)."""
    from sermatec_bridge.bridge import service

    ran: list[object] = []
    monkeypatch.setattr(service, "run", lambda settings: ran.append(settings) or 0)
    for name in [n for n in os.environ if n.startswith("SERMATEC_")]:
        monkeypatch.delenv(name)
    assert cli.main(argv) == cli.Exit.OK
    return ran[0]


@pytest.mark.parametrize(("argv", "host", "port", "timeout"), [
    (["daemon", "--host", "127.0.0.1", "--port", "1884", "-i", "192.0.2.7"],
     "192.0.2.7", 8899, 5.0),
    (["daemon", "-m", "127.0.0.1", "-t", "1884", "-i", "192.0.2.7:8898"],
     "192.0.2.7", 8898, 5.0),
    (["daemon", "-m", "127.0.0.1", "-t", "1884", "-i", "192.0.2.7", "-p", "8897"],
     "192.0.2.7", 8897, 5.0),
    (["-i", "192.0.2.7", "--timeout", "2.5", "daemon", "-m", "127.0.0.1", "-t", "1884"],
     "192.0.2.7", 8899, 2.5),
])
def test_daemon_takes_the_inverter_before_or_after_the_command(
        argv: list[str], host: str, port: int, timeout: float,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings: Any = daemon_settings(argv, monkeypatch)
    assert (settings.inverter.host, settings.inverter.port) == (host, port)
    assert settings.inverter.timeout == timeout
    assert (settings.mqtt.host, settings.mqtt.port) == ("127.0.0.1", 1884)


def test_daemon_k_is_f() -> None:
    for flag in ("-k", "-f", "--fork"):
        assert cli.parser().parse_args(["daemon", "-m", "broker", flag]).fork is True
    assert cli.parser().parse_args(["daemon", "-m", "broker"]).fork is False


# --------------------------------------------------------------------------------------
# One-shot reads: the identity cache, and what start-up loads
# --------------------------------------------------------------------------------------


async def cli_async(*args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess, awaited: the simulator keeps serving in this event loop."""
    env = {"PATH": "/usr/bin:/bin", **user_directories()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sermatec_bridge", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert b"Traceback" not in err, err.decode()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def asked(sim: Simulator, *args: str) -> tuple[list[int], dict[str, Any]]:
    """The request codes ``get ... --json`` sent, and its replies by command."""
    sim.received.clear()
    status, out, err = await cli_async("-i", f"127.0.0.1:{sim.port}", "get", "--json", *args)
    assert status == cli.Exit.OK, err
    return list(sim.received), {r["command"]: r for r in map(json.loads, out.splitlines())}


def cache_entry(sim: Simulator) -> Path:
    assert sim.port is not None
    return Path(identity_cache.directory()) / f"identity-127.0.0.1-{sim.port}.json"


async def test_a_one_shot_read_asks_who_the_inverter_is_once_in_ten_minutes() -> None:
    async with Simulator() as sim:
        first, replies = await asked(sim, "battery")
        assert first == [0x98, 0x0A]
        again, replies_again = await asked(sim, "battery")
        assert again == [0x0A]  # the identity it gave a moment ago
        assert replies_again["0x0a"].keys() == replies["0x0a"].keys()
        assert replies_again["0x0a"]["fields"].keys() == replies["0x0a"]["fields"].keys()

        for answered in (time.time() - identity_cache.LIFETIME, time.time() + 60):
            entry = json.loads(cache_entry(sim).read_text())
            entry["answered"] = answered  # too old, or from a clock set back since
            cache_entry(sim).write_text(json.dumps(entry))
            assert (await asked(sim, "battery"))[0] == [0x98, 0x0A]
        assert (await asked(sim, "98"))[0] == [0x98]  # asked once, not twice


async def test_get_all_asks_each_query_once() -> None:
    async with Simulator() as sim:
        sent, replies = await asked(sim, "all")
    assert sorted(sent) == sorted(set(sent)), sent  # 0x98 too: the identity is its reply
    assert 0x9D not in sent and "0x9d" in replies  # it came with 0x95


async def test_a_cached_identity_never_decodes_with_the_wrong_tables() -> None:
    async with Simulator(pcu=609) as sim:
        await asked(sim, "battery")  # remembered: PCU 609
        sim.model = InverterModel(pcu=411, serial="ST10OTHERINVERTER1")  # another inverter

        sent, replies = await asked(sim, "0b")  # its layout changed at PCU 500
        assert sent == [0x98, 0x0B]
        assert replies["0x0b"]["pcu_version"] == 411
        assert "extra" not in replies["0x0b"]  # every byte read by the 411 tables
        sent, replies = await asked(sim, "95")  # one frame before PCU 259, two after
        assert sent == [0x98, 0x95] and replies["0x95"]["pcu_version"] == 411
        sent, _ = await asked(sim, "battery")  # one layout at every version: no need
        assert sent == [0x0A]

        sim.model = InverterModel(pcu=258)  # remembered now: 411, without the 0xa2 query
        await asked(sim, "0b")
        sim.model = InverterModel(pcu=609)
        sent, _ = await asked(sim, "a2")  # not refused on the word of the cache
        assert sent == [0x98, 0xA2]


async def test_a_run_that_fails_on_a_cached_identity_forgets_it() -> None:
    async with Simulator() as sim:
        await asked(sim, "battery")
        entry, port = cache_entry(sim), sim.port
        assert entry.exists()
        await sim.stop()
        status, _, err = await cli_async("-i", f"127.0.0.1:{port}", "get", "battery")
        assert status == cli.Exit.UNREACHABLE, err
        assert not entry.exists()  # whatever went wrong, the next run asks
        await sim.start(port=port)
        assert (await asked(sim, "battery"))[0] == [0x98, 0x0A]


async def test_a_cache_that_cannot_be_used_is_no_cache(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with Simulator() as sim:
        await asked(sim, "battery")
        cache_entry(sim).write_text("{not json")
        assert (await asked(sim, "battery"))[0] == [0x98, 0x0A]
        assert json.loads(cache_entry(sim).read_text())["values"]["pcu_version"] == 609

        not_a_directory = tmp_path / "file"
        not_a_directory.write_text("")
        monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_directory))
        for _ in range(2):
            assert (await asked(sim, "battery"))[0] == [0x98, 0x0A]


@pytest.mark.parametrize(("command", "shown"), [(["get", "battery"], "Battery state of charge:"),
                                               (["cloud", "show"], "cloud server: ")])
def test_a_one_shot_read_loads_no_configuration_structlog_construct_asyncio_or_logging(
        inverter: tuple[int, Path], command: list[str], shown: str) -> None:
    """With nothing configured; the start-up figures are in benchmarks/cli_startup.py."""
    program = ("import sys; from sermatec_bridge import cli; "
               f"code = cli.main(['-i', '127.0.0.1:{inverter[0]}', *{command}]); "
               "print(sorted({m.split('.')[0] for m in sys.modules} & "
               "{'pydantic', 'pydantic_settings', 'yaml', 'structlog', 'construct', "
               "'asyncio', 'logging'}), "
               "'sermatec_bridge.config' in sys.modules, code, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=False, env={
                              "PATH": "/usr/bin:/bin",
                              **user_directories()})
    assert done.stderr == "[] False 0\n"
    assert shown in done.stdout


def test_the_flags_alone_mean_the_configurations_defaults() -> None:
    """What get uses with nothing configured is what the configuration would say."""
    import inspect

    from sermatec_bridge.config import ENV_PREFIX, InverterSettings
    from sermatec_bridge.inverter.blocking import BlockingClient

    client = inspect.signature(BlockingClient).parameters
    for key in ("timeout", "retries", "name"):
        assert client[key].default == InverterSettings.model_fields[key].default, key
    assert InverterSettings.model_fields["port"].default == cli.DEFAULT_PORT
    assert cli.ENV_PREFIX == ENV_PREFIX


def test_no_command_needs_a_temporary_directory_to_parse_its_arguments(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only container has no /tmp: the simulator and the bridge must start there."""
    def no_temporary_directory() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(tempfile, "gettempdir", no_temporary_directory)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    for command in ("simulate", "run", "daemon", "health", "get", "list", "decode", "config"):
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        assert done.value.code == 0, command
    assert "--pid-file" in capsys.readouterr().out


def test_a_reply_that_does_not_fit_the_tables_exits_as_malformed() -> None:
    from sermatec_bridge.inverter.client import MalformedReply

    failure = cli._failure_of(MalformedReply("malformed reply 0x0a from 127.0.0.1:8899 "
                                             "(2 bytes): shorter than its layout"))
    assert failure.code == cli.Exit.MALFORMED
    assert str(failure).startswith("malformed reply 0x0a")


# --------------------------------------------------------------------------------------
# cloud show / cloud set
# --------------------------------------------------------------------------------------

VENDOR = {"cloud_server": "8.209.71.159", "cloud_port": "19042", "router_ssid": "HomeNet",
          "router_password": "pa55-w0rd-never-shown"}


async def test_cloud_show_tells_the_server_and_never_the_password() -> None:
    async with Simulator(settings=VENDOR) as sim:
        where = f"127.0.0.1:{sim.port}"
        status, out, err = await cli_async("cloud", "show", "-i", where)
        assert status == cli.Exit.OK, err
        assert out.splitlines() == ["cloud server: 8.209.71.159:19042", "Wi-Fi mode: Station",
                                    "router SSID: HomeNet", "router password: not shown"]
        status, out_json, err_json = await cli_async("cloud", "show", "--json", "-d", "-i", where)
        assert status == cli.Exit.OK, err_json
        assert json.loads(out_json) == {"wifi_mode": "Station", "router_ssid": "HomeNet",
                                        "cloud_server": "8.209.71.159", "cloud_port": 19042}
        assert '"event": "connected"' in err_json  # the debug log, on stderr
    for text in (out, err, out_json, err_json):
        assert "pa55-w0rd" not in text


async def test_cloud_set_points_the_link_elsewhere_and_says_how_to_go_back() -> None:
    async with Simulator(settings=VENDOR) as sim:
        where = f"127.0.0.1:{sim.port}"
        status, _, err = await cli_async("cloud", "set", "192.168.1.10", "19042", "-i", where)
        assert status == cli.Exit.REFUSED and "add --yes" in err
        assert sim.clients == 0 and sim.model.cloud_server() == ("8.209.71.159", 19042)

        status, out, err = await cli_async("cloud", "set", "192.168.1.10", "19042", "--yes",
                                           "-i", where)
        assert status == cli.Exit.OK, err
        assert sim.model.cloud_server() == ("192.168.1.10", 19042)
        lines = out.splitlines()
        assert lines[0] == ("cloud server was 8.209.71.159:19042; to go back: sermatec-bridge "
                            f"cloud set 8.209.71.159 19042 --yes -i {where}")
        assert "the inverter drops this connection" in lines[1]
        assert lines[-1] == "cloud server now: 192.168.1.10:19042 (read back)"
        assert sim.clients == 2  # the write ended the first connection; the read-back

        back = lines[0].split("to go back: sermatec-bridge ")[1].split()
        status, out, err = await cli_async(*back)
        assert status == cli.Exit.OK, err
        assert sim.model.cloud_server() == ("8.209.71.159", 19042)
        status, out, _ = await cli_async(*back)  # once more: nothing to do
        assert out == "cloud server: 8.209.71.159:19042 already; nothing to do\n"
        assert sim.model.settings["router_password"] == VENDOR["router_password"]
