"""How long the command line takes: start-up, and a one-shot read against the community's CLI.

1. ``--help``, ``list`` and ``decode`` (the commands that must feel instant): the median and
   the slowest of N runs of the installed ``sermatec-bridge`` script.
   Target: every median under 150 ms on the project's 2-core machine.
2. ``get battery`` against the community's CLI, sermatec-inverter 2022.3 (``python -m
   sermatec_inverter HOST --port PORT -g battery``; it has no script of its own), asking
   the same simulator (``sermatec-bridge simulate``, a process of its own) on loopback, in
   alternating pairs: our ``get`` as it usually runs (the inverter's identity cached by an
   earlier run) and without the cache (the identity query too). Prints the median and the
   10th to 90th percentile of each, and the median of the paired differences.
   Target: no slower than the community's CLI. ``--latency 0.1`` delays each of the
   simulator's replies as a real inverter's Wi-Fi module does: what the cache saves shows.
3. The largest imports of one ``get battery`` run, as ``python -X importtime`` reports them.

Both CLIs run as a user installs them, from a throwaway virtual environment that holds a
copy of the package and its console scripts as pip writes them; the dependencies (the
community's CLI among them) come from this interpreter's site-packages through a ``.pth``
line. A development checkout is installed editable, and the editable finder that ``site``
then loads imports pathlib and urllib on every start (7 ms here), which hides what our own
imports of them cost. Nothing is configured (no SERMATEC_ variable). Every command runs
from compiled bytecode, as an installed package has it (pip compiles on install), whatever
PYTHONDONTWRITEBYTECODE says here: PYTHONPYCACHEPREFIX names a temporary directory that a
first run fills.

    .venv/bin/python benchmarks/cli_startup.py [--runs N] [--pairs N] [--latency SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import site
import socket
import statistics
import subprocess
import sysconfig
import tempfile
import time
import venv
from collections.abc import Iterator, Mapping
from pathlib import Path

CAPTURE = "fe5514640c000465930dbf98ae"  # a real 0x0c reply (captures.md)
CASES = {
    "--help": ["--help"],
    "list": ["list"],
    "decode": ["decode", CAPTURE],
}
TARGET_MS = 150.0


CONSOLE_SCRIPT = """\
#!{python}
import sys
from sermatec_bridge.cli import main
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit(main())
"""  # as pip 26 writes it


def install(where: Path) -> Path:
    """A virtual environment in ``where`` with the package installed (not editable);
    its Python."""
    import sermatec_bridge

    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    site_packages = Path(sysconfig.get_path("purelib", "venv", {"base": where}))
    (site_packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    shutil.copytree(Path(sermatec_bridge.__file__).parent,
                    site_packages / "sermatec_bridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("sermatec-bridge", "sermatec-ess"):
        path = where / "bin" / name
        path.write_text(CONSOLE_SCRIPT.format(python=python))
        path.chmod(0o755)
    return python


def script(python: Path) -> list[str]:
    """The console script that ``install`` wrote, as users run it."""
    return [str(python.with_name("sermatec-bridge"))]


def child_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SERMATEC_") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(workdir / "bytecode"),
            "XDG_CACHE_HOME": str(workdir / "cache"), **extra}


def wall_ms(command: list[str], env: Mapping[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env=env)
    return (time.perf_counter() - start) * 1000


def import_costs(python: Path, args: list[str], env: Mapping[str, str],
                 top: int) -> list[tuple[float, str]]:
    """(cumulative ms, module) of the slowest top-level imports of one run (the second:
    the first writes the bytecode of ``-m``'s __main__)."""
    for _ in range(2):
        done = subprocess.run([str(python), "-X", "importtime", "-m", "sermatec_bridge", *args],
                              capture_output=True, text=True, check=True, env=env)
    costs = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # one space: imported by the program itself
            costs.append((int(cumulative) / 1000, name.strip()))
    return sorted(costs, reverse=True)[:top]


@contextlib.contextmanager
def simulator(python: Path, env: Mapping[str, str], latency: float) -> Iterator[int]:
    """``sermatec-bridge simulate`` on a free loopback port, in a process of its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    process = subprocess.Popen([*script(python), "simulate", "--port", str(port), "--latency",
                                str(latency)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        if "listening" not in process.stdout.readline():
            raise SystemExit("the simulator did not start")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def get_battery(port: int) -> list[str]:
    return ["-i", "127.0.0.1", "-p", str(port), "get", "battery"]  # as older versions take it


def spread(times: list[float]) -> str:
    deciles = statistics.quantiles(times, n=10)
    return f"{statistics.median(times):8.1f} {deciles[0]:8.1f} {deciles[-1]:8.1f}"


def startup(python: Path, runs: int, env: Mapping[str, str]) -> None:
    base = script(python)
    print(f"1. Start-up, {runs} runs each, wall time in ms ({' '.join(base)}):")
    print(f"{'command':<10} {'median':>8} {'max':>8}  target")
    python_ms = statistics.median(wall_ms([str(python), "-c", "pass"], env)
                                  for _ in range(runs))
    for name, args in CASES.items():
        times = [wall_ms(base + args, env) for _ in range(runs)]
        median = statistics.median(times)
        verdict = "ok" if median < TARGET_MS else "OVER"
        print(f"{name:<10} {median:8.1f} {max(times):8.1f}  < {TARGET_MS:.0f} {verdict}")
    print(f"(a bare 'python -c pass' takes {python_ms:.1f} ms)")


def against_the_peer(python: Path, port: int, pairs: int, latency: float,
                     env: dict[str, str], workdir: Path) -> None:
    no_cache = workdir / "no-cache"
    no_cache.write_text("")  # a file: no cache directory can be made under it
    commands = {
        "ours": ([*script(python), *get_battery(port)], env),
        "ours, no cache": ([*script(python), *get_battery(port)],
                           {**env, "XDG_CACHE_HOME": str(no_cache)}),
        "peer": ([str(python), "-m", "sermatec_inverter", "127.0.0.1", "--port", str(port),
                  "-g", "battery"], env),
    }
    for command, command_env in commands.values():  # bytecode, the identity cache
        wall_ms(command, command_env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(pairs):
        order = list(commands) if i % 2 else list(reversed(commands))
        for name in order:
            times[name].append(wall_ms(*commands[name]))
    print(f"\n2. 'get battery' against the community's CLI (sermatec-inverter 2022.3), "
          f"{pairs} alternating rounds,\n   same simulator (reply latency {latency:g} s), "
          "wall time in ms:")
    print(f"{'':<16} {'median':>8} {'p10':>8} {'p90':>8}")
    for name, values in times.items():
        print(f"{name:<16} {spread(values)}")
    for name in ("ours", "ours, no cache"):
        differences = [a - b for a, b in zip(times[name], times["peer"], strict=True)]
        ratio = statistics.median(times[name]) / statistics.median(times["peer"])
        print(f"{name} - peer, median of the paired differences: "
              f"{statistics.median(differences):+.1f} ms ({ratio:.2f} x the peer's median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the simulator waits before each reply")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = child_env(workdir)
        python = install(workdir / "venv")
        wall_ms([*script(python), "--help"], env)  # warm the file cache, write the bytecode
        startup(python, options.runs, env)
        with simulator(python, env, options.latency) as port:
            against_the_peer(python, port, options.pairs, options.latency, env, workdir)
            get = get_battery(port)
            print("\n3. Slowest top-level imports of 'get battery' (cumulative ms, "
                  "python -X importtime):")
            for ms, name in import_costs(python, get, env, 10):
                print(f"{ms:8.1f}  {name}")


if __name__ == "__main__":
    main()
