"""`make demo` as a newcomer runs it: simulator, broker and bridge, shown live."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAS_AMQTT = importlib.util.find_spec("amqtt") is not None
needs_amqtt = pytest.mark.skipif(not HAS_AMQTT, reason="the amqtt fallback broker is not "
                                 "installed (pip install amqtt)")


def run_demo(*extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sermatec_bridge.demo", "--duration", "12", *extra],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_demo_shows_the_headline_and_a_confirmed_write() -> None:
    out = run_demo("--all")
    assert "Inverter online" in out
    frame = out.split("-" * 60)[-2]  # the last complete screen
    labels = [line.split()[0] for line in frame.splitlines()[:12] if line.strip()]
    assert labels[:7] == ["Sermatec", "Inverter", "PV", "Battery", "Grid", "Load", "Today"]
    assert re.search(r"PV power +[\d,]+ W +PV1 [\d,]+ W · PV2 [\d,]+ W", frame), frame
    assert re.search(r"Battery +\d+ % +(Charging|Discharging|Standby) · ", frame), frame
    assert 'Last write     OK: {"grid_soc_min": 25}' in frame
    assert "PV energy total" in out and "kWh" in out  # --all: the full list too
    assert 'write result: {"ok": true, "changed": {"grid_soc_min": 25}' in out


@needs_amqtt
def test_demo_runs_on_the_python_broker_where_mosquitto_is_missing() -> None:
    out = run_demo("--broker", "amqtt")
    assert "amqtt" in out
    assert 'write result: {"ok": true' in out


@pytest.mark.parametrize(("broker", "sig"), [
    ("auto", signal.SIGINT),
    pytest.param("amqtt", signal.SIGINT, marks=needs_amqtt),
    pytest.param("amqtt", signal.SIGTERM, marks=needs_amqtt),
])
def test_a_signal_to_the_whole_group_stops_the_demo_cleanly(
        broker: str, sig: signal.Signals, tmp_path: Path) -> None:
    """As Ctrl-C does: the signal goes to every process of the terminal's group."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sermatec_bridge.demo", "--broker", broker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "Inverter online" in line:
                break
        os.killpg(process.pid, sig)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, err
    assert out.rstrip().endswith("demo stopped")
    assert "Traceback" not in err and "Error" not in err, err
    assert list(tmp_path.iterdir()) == []  # the broker's temporary directory is gone


# --------------------------------------------------------------------------------------
# In a real 80x24 terminal (tmux)
# --------------------------------------------------------------------------------------


class Terminal:
    """A tmux pane of 80x24 running one command, on a tmux server of its own."""

    def __init__(self, command: str, name: str) -> None:
        self.tmux = ["tmux", "-L", name]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24",
                        command], check=True)

    def screen(self) -> list[str]:
        done = subprocess.run([*self.tmux, "capture-pane", "-p", "-t", "t"],
                              capture_output=True, text=True, check=True)
        return done.stdout.rstrip("\n").split("\n")

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", "t", *keys], check=True)

    def wait_for(self, test: Callable[[str], bool], within: float = 30.0) -> list[str]:
        end = time.monotonic() + within
        while True:
            lines = self.screen()
            if test("\n".join(lines)):
                return lines
            if time.monotonic() > end:
                raise AssertionError("not on screen:\n" + "\n".join(lines))
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], check=False, capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    if shutil.which("tmux") is None or shutil.which("make") is None:
        pytest.skip("tmux or make is not installed")
    (tmp_path / "tmp").mkdir()
    # `make demo` as the README says, with this interpreter (-o: no venv to build). Make
    # dies of a Ctrl-C that reaches it, and then reports the recipe as interrupted.
    make = f"make -s -o .venv/.installed demo BIN={shlex.quote(str(Path(sys.executable).parent))}"
    script = (f"cd {shlex.quote(str(ROOT))} && TMPDIR={shlex.quote(str(tmp_path / 'tmp'))} "
              f"{make}; echo exit=$? > {shlex.quote(str(tmp_path / 'exit'))}; sleep 60")
    term = Terminal(f"bash -c {shlex.quote(script)}", f"sermatec-demo-{os.getpid()}")
    try:
        yield term
    finally:
        term.close()


def _value(screen: list[str], label: str) -> str:
    line = next(line for line in screen if line.strip().startswith(label))
    return line.split(maxsplit=len(label.split()))[-1]


def test_demo_fits_80x24_and_stops_on_ctrl_c(terminal: Terminal, tmp_path: Path) -> None:
    screen = terminal.wait_for(lambda s: "Last write     OK" in s and "Inverter online" in s)
    assert len(screen) <= 24 and max(len(line) for line in screen) <= 80
    assert screen[0].startswith("Sermatec 5 kW · serial ")
    labels = [line.split()[0] for line in screen if line.strip()]
    assert labels[2:7] == ["PV", "Battery", "Grid", "Load", "Today"]
    assert "q or Ctrl-C: stop the demo" in screen[-1]

    # The numbers move: a few seconds are a few simulated minutes of morning sun.
    before = (_value(screen, "PV power"), _value(screen, "Battery"))
    later = terminal.wait_for(
        lambda s: (_value(s.split("\n"), "PV power"), _value(s.split("\n"), "Battery"))
        != before, within=15)
    assert _value(later, "PV power") != "…"

    terminal.keys("a")  # the full list, one page at a time
    listing = terminal.wait_for(lambda s: "page 1/" in s)
    assert listing[0].startswith("All ") and "disabled by default" in listing[0]
    assert len(listing) <= 24
    terminal.keys("a")
    terminal.wait_for(lambda s: "PV power" in s)

    terminal.keys("C-c")
    end = time.monotonic() + 15
    while not (tmp_path / "exit").exists() and time.monotonic() < end:
        time.sleep(0.2)
    assert (tmp_path / "exit").read_text().strip() == "exit=0"
    after = "\n".join(terminal.screen())
    assert "demo stopped" in after and "Traceback" not in after
    assert list((tmp_path / "tmp").iterdir()) == []


def test_make_demo_passes_args_through() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "--no-print-directory", "-n", "demo",
                           "ARGS=--all --sun 12:00"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert done.stdout.rstrip().endswith("-m sermatec_bridge.demo --all --sun 12:00")
