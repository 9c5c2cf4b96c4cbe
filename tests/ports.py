"""Free TCP ports on loopback for the tests' own servers (brokers, simulators, proxies)."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now, and that no earlier call of
    this process handed out: two servers of one test never get the same port (the kernel
    may offer a port again as soon as the probing socket is closed)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
