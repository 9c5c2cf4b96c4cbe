"""One inverter on a blocking socket: the command line's one-shot reads.

``get`` and ``list --from-inverter`` ask an inverter a few questions and exit. On asyncio,
importing it and starting an event loop took some 15 ms, a quarter of such a run (see
benchmarks/cli_startup.py); this client runs the same plans as the asyncio one
(:mod:`.core`) on a plain socket with timeouts. It has one caller, who asks one thing at a
time, so it needs no queue; it is not for the bridge.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

from ..log import Tally
from ..protocol import frame
from ..protocol.codec import Reading
from ..protocol.model import Command
from ..protocol.tables import REGISTER_QUERY
from .core import (
    Ask,
    Awaited,
    ClientCore,
    ConnectionCore,
    Identity,
    InverterError,
    Open,
    Plan,
    Run,
    State,
    Step,
    T,
    query_of,
    refuse_unless_offered,
    register_query_parts,
)

# What came between two exchanges is read in at most this many reads of 4 KiB: a peer
# that never stops sending is left to the next exchange, which has a deadline.
WAITING_READS = 64


class Connection(ConnectionCore):
    """One TCP connection on a blocking socket.

    Nothing reads while no exchange waits, so what came in between (a stray frame, the
    inverter hanging up) is read when the connection is next looked at (:attr:`open`,
    :meth:`exchange`), as the asyncio client's reader would have read it as it came.
    """

    def __init__(self, sock: socket.socket, *, peer: str, logger: Any,
                 on_bad_frame: Callable[[frame.FrameError], None] | None = None,
                 dropped: Tally | None = None) -> None:
        super().__init__(peer=peer, logger=logger, on_bad_frame=on_bad_frame, dropped=dropped)
        self._socket = sock

    @property
    def open(self) -> bool:
        if self.state is State.OPEN:
            self._read_waiting()
        return self.state is State.OPEN

    def _shut(self, error: InverterError) -> None:
        self._socket.close()

    def exchange(self, request: frame.Frame, replies: tuple[int, ...], timeout: float,
                 accept: Callable[[frame.Frame], bool] | None = None) -> list[frame.Frame]:
        """Send ``request`` and return its reply frames ``replies``, in order.

        Raises :class:`~.core.InverterTimeout` when they do not all come within
        ``timeout`` seconds (the connection stays open: the caller decides), and the
        connection's first error when it closes meanwhile.
        """
        if not self.open:
            assert self.error is not None
            raise self.error
        awaited = Awaited(replies, accept)
        deadline = time.monotonic() + timeout
        with self._waiting(awaited, request, timeout):
            self._socket.settimeout(timeout)
            self._socket.sendall(self._encode(request))
            while not awaited.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._socket.settimeout(left)
                self._take(self._socket.recv(4096))
            return awaited.frames

    def _take(self, data: bytes) -> None:
        """Frames from what was read; nothing read is the inverter hanging up."""
        if not data:
            raise self._closed(self._ended())
        self._feed(data)

    def _read_waiting(self) -> None:
        """Read what has come since the last exchange, without waiting for more."""
        try:
            self._socket.setblocking(False)
            for _ in range(WAITING_READS):
                self._take(self._socket.recv(4096))
        except BlockingIOError:  # all read
            pass
        except InverterError:  # hung up: closed
            pass
        except OSError as exc:
            self.close(self._lost(exc))


class BlockingClient(ClientCore[Connection]):
    """An inverter at ``host:port`` on a blocking socket; use ``with`` or :meth:`connect` /
    :meth:`close`. Settings as :class:`~.core.ClientCore`'s."""

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Identity:
        """Open the connection and read the identity (0x98)."""
        self._run(self._ready())
        assert self.identity is not None
        return self.identity

    def close(self) -> None:
        self._closing()

    def query(self, command: Command | int) -> list[Reading]:
        """Ask a query; one decoded reading per reply frame (0x95 gives 0x95 and 0x9d)."""
        return self._run(self._exchange(query_of(command)))

    def write(self, command: Command | int, values: Mapping[str, Any]) -> None:
        """Send a validated settings write. Writes get no reply: read back to confirm."""
        self._run(self._write(command, values))

    def read_registers(self, addresses: list[int]) -> dict[int, int]:
        """The two-part register query 0xbb.

        Once part 1 is written, part 2 is written too, even if part 1's acknowledgement
        times out or Ctrl-C is pressed (it takes effect after): a lone part 1 blocks the
        inverter.
        """
        part1, part2 = register_query_parts(addresses)
        self._run(self._ready())
        refuse_unless_offered(REGISTER_QUERY, self.version)
        with _uninterrupted():
            reply = self._run(self._register_pair(frame.Frame(0xBB, part1),
                                                  frame.Frame(0xBB, part2)))
        return self._registers(reply)

    def _run(self, plan: Plan[T]) -> T:
        """Carry ``plan`` out, blocking; each step's outcome, or its error, goes back in."""
        run = Run(plan)
        while (step := run.next()) is not None:
            try:
                run.outcome = self._carry_out(step)
            except BaseException as exc:  # the plan decides; Ctrl-C it raises again
                run.error = exc
        return run.result

    def _carry_out(self, step: Step) -> Any:
        if isinstance(step, Ask):
            assert isinstance(step.connection, Connection)
            return step.connection.exchange(step.request, step.replies, step.timeout,
                                            step.accept)
        if isinstance(step, Open):
            # getaddrinfo puts a host given as text through the idna codec, whose import
            # takes 2 ms; an ASCII name or address needs none, and it takes bytes too.
            host = self.host.encode() if self.host.isascii() else self.host
            sock = socket.create_connection((host, self.port),  # type: ignore[arg-type]
                                            timeout=self.timeout)
            return Connection(sock, peer=self.where, logger=self.log,
                              on_bad_frame=self._bad_frame, dropped=self.dropped)
        time.sleep(step.seconds)
        return None


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Within: Ctrl-C (SIGINT) waits, and takes effect when the block is left."""
    import signal

    pressed: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda number, _: pressed.append(number))
    except ValueError:  # not the main thread, which alone Ctrl-C interrupts
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if pressed:
            raise KeyboardInterrupt
