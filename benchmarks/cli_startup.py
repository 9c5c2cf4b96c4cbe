"""How long the command line takes to start: wall time of whole runs, and what imports cost.

Prints, for ``--help``, ``list`` and ``decode`` (the commands that must feel instant), the
median and the slowest of N runs of the installed ``sermatec-bridge`` script, then the
largest imports of one ``decode`` run as ``python -X importtime`` reports them.
Target: every median under 150 ms on the project's 2-core machine.

    .venv/bin/python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CAPTURE = "fe5514640c000465930dbf98ae"  # a real 0x0c reply (captures.md)
CASES = {
    "--help": ["--help"],
    "list": ["list"],
    "decode": ["decode", CAPTURE],
}
TARGET_MS = 150.0


def script() -> list[str]:
    """The console script next to this interpreter, as users run it; else ``-m``."""
    installed = Path(sys.executable).with_name("sermatec-bridge")
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", "sermatec_bridge"]


def wall_ms(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def import_costs(args: list[str], top: int) -> list[tuple[float, str]]:
    """(cumulative ms, module) of the slowest top-level imports of one run."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sermatec_bridge", *args],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    costs = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # one space: imported by the program itself
            costs.append((int(cumulative) / 1000, name.strip()))
    return sorted(costs, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    base = script()
    wall_ms(base + ["--help"])  # warm the file cache and the bytecode
    print(f"CLI start-up, {runs} runs each, wall time in ms ({' '.join(base)}):")
    print(f"{'command':<10} {'median':>8} {'max':>8}  target")
    python_ms = statistics.median(wall_ms([sys.executable, "-c", "pass"]) for _ in range(runs))
    for name, args in CASES.items():
        times = [wall_ms(base + args) for _ in range(runs)]
        median = statistics.median(times)
        verdict = "ok" if median < TARGET_MS else "OVER"
        print(f"{name:<10} {median:8.1f} {max(times):8.1f}  < {TARGET_MS:.0f} {verdict}")
    print(f"(a bare 'python -c pass' takes {python_ms:.1f} ms)")
    print("\nSlowest top-level imports of 'decode' (cumulative ms, python -X importtime):")
    for ms, name in import_costs(CASES["decode"], 8):
        print(f"{ms:8.1f}  {name}")


if __name__ == "__main__":
    main()
