"""The command line, offline: listings and decoding (no inverter needed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sermatec_bridge import cli
from sermatec_bridge.protocol.frame import checksum, reply


def test_list_shows_how_to_send_the_register_query(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--pcu", "609"]) == cli.Exit.OK
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("0xbb"))
    assert "get --el bb --registers ADDR[,ADDR...] --risk-inverter-lockup" in line


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


def run_cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "sermatec_bridge", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
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
    (["get", "66", "-i", "127.0.0.1"], cli.Exit.UNKNOWN_COMMAND, "is a settings write"),
    (["get", "bb", "-i", "127.0.0.1"], cli.Exit.REFUSED, "--risk-inverter-lockup"),
    (["get"], cli.Exit.USAGE, "get needs a command"),
    (["-p", "70000", "get", "0a"], cli.Exit.USAGE, "70000 is not a TCP port"),
    (["--timeout", "0", "get", "0a"], cli.Exit.USAGE, "must be greater than 0"),
    (["decode", "--pcu", "-5", "00"], cli.Exit.USAGE, "is not a PCU version"),
])
def test_bad_input_gets_its_error(args: list[str], code: int, message: str) -> None:
    status, _, err = run_cli(*args)
    assert status == code, err
    assert message in err


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


def test_flags_win_over_the_environment_and_secrets_stay_masked() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sermatec_bridge", "-p", "9000", "config"],
        env={"PATH": "/usr/bin:/bin", "SERMATEC_INVERTER__HOST": "192.0.2.10",
             "SERMATEC_INVERTER__PORT": "8899", "SERMATEC_MQTT__PASSWORD": "hunter2"},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == cli.Exit.OK, done.stderr
    assert "host: 192.0.2.10\n  port: 9000" in done.stdout
    assert "hunter2" not in done.stdout and "'********'" in done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("sun", "daylight"), [("12:00", True), ("00:30", False)])
def test_simulate_sun_sets_the_simulated_time_of_day(sun: str, daylight: bool) -> None:
    port = _free_port()
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
