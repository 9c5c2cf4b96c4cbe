"""Shared parts of the benchmarks that run the real daemon: ports, Mosquitto, /proc figures.

Everything listens on 127.0.0.1. The daemon is always a separate process
(``python -m sermatec_bridge run``), configured by a YAML file, so the benchmarks work
with whatever runtime the branch has.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sermatec_bridge.demo import mosquitto_binary

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free right now."""
    for base in range(20000, 60000 - count, 997):
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports on {HOST}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class Mosquitto:
    """A Mosquitto of our own on a free loopback port; restartable on the same port."""

    def __init__(self, workdir: Path, *, persistence: bool = False) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise SystemExit("the benchmark needs Mosquitto: sudo apt-get install mosquitto")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.persistence = persistence
        self.process: asyncio.subprocess.Process | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} {HOST}", "allow_anonymous true",
                 f"persistence {'true' if persistence else 'false'}",
                 f"persistence_location {workdir}/", "max_queued_messages 100000",
                 "log_dest none"]
        if os.geteuid() == 0:
            lines.append("user root")  # the temporary directory is private to root
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "-c", str(self.config), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection(HOST, self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()
            await process.wait()


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(settings), sort_keys=False))
    return path


async def start_bridge(config: Path, workdir: Path,
                       env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    """``python -m sermatec_bridge run -c CONFIG``; its stderr goes to workdir/bridge.log."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SERMATEC_")}
    environment.update(env or {})
    log = (workdir / "bridge.log").open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sermatec_bridge", "run", "-c", str(config),
            env=environment, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()


async def stop_process(process: asyncio.subprocess.Process, within: float = 10.0) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
