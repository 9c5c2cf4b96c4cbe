"""OSIM frames: ``fe 55 | source | destination | command | 00 | length | payload | xor | ae``.

The checksum starts at 0x0f and XORs every byte from the header to the last payload
byte. On the inverter's cloud link a whole frame may also be RC4-encrypted (see
:mod:`.rc4`). :class:`FrameReader` turns a byte stream cut anywhere into whole frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import reduce
from operator import xor

from .rc4 import crypt, key_byte

APP = 0x64  # the address of the app (us)
INVERTER = 0x14  # the address of the inverter

HEADER = b"\xfe\x55"
FOOTER = 0xAE
OVERHEAD = 9  # header 2, addresses 2, command 2, length 1, checksum 1, footer 1
MAX_FRAME = OVERHEAD + 255
RC4_HEADER = crypt(HEADER)  # every RC4 frame starts with these two bytes: 75 9a


class FrameError(ValueError):
    """A frame that cannot be trusted; the message says why, in one line, and
    :attr:`kind` what is wrong with it, in a few words (for counting such frames)."""

    kind = "bad frame"


class BadChecksum(FrameError):
    kind = "bad checksum"

    def __init__(self, carried: int, computed: int, frame: bytes) -> None:
        self.carried, self.computed, self.frame = carried, computed, frame
        super().__init__(
            f"bad checksum in frame for command 0x{frame[4]:02x}: "
            f"carries 0x{carried:02x}, computes to 0x{computed:02x}"
        )


class TruncatedFrame(FrameError):
    kind = "truncated frame"

    def __init__(self, expected: int, got: int) -> None:
        self.expected, self.got = expected, got
        super().__init__(f"truncated frame: expected {expected} bytes, got {got}")


class MalformedFrame(FrameError):
    kind = "malformed frame"


def checksum(data: bytes) -> int:
    return reduce(xor, data, 0x0F)


@dataclass(frozen=True)
class Frame:
    command: int
    payload: bytes = b""
    source: int = APP
    destination: int = INVERTER
    checksum: int | None = None  # as carried; None means "compute it"
    rc4: bool = False  # RC4-encrypted on the wire (the cloud link)

    def encode(self) -> bytes:
        if len(self.payload) > 255:
            raise FrameError(f"payload of {len(self.payload)} bytes does not fit a frame")
        body = bytes(
            [*HEADER, self.source, self.destination, self.command, 0, len(self.payload)]
        ) + self.payload
        carried = checksum(body) if self.checksum is None else self.checksum
        data = body + bytes([carried, FOOTER])
        return crypt(data) if self.rc4 else data

    @property
    def computed_checksum(self) -> int:
        return Frame(self.command, self.payload, self.source, self.destination).encode()[-2]

    @property
    def checksum_ok(self) -> bool:
        return self.checksum is None or self.checksum == self.computed_checksum

    @property
    def is_reply(self) -> bool:
        """Sent by the inverter to the app (0x14 -> 0x64), as every reply is."""
        return (self.source, self.destination) == (INVERTER, APP)

    @property
    def is_request(self) -> bool:
        """Sent by the app to the inverter (0x64 -> 0x14): an echo, or a captured request."""
        return (self.source, self.destination) == (APP, INVERTER)

    def __str__(self) -> str:
        return f"0x{self.command:02x} ({len(self.payload)} bytes) {self.payload.hex()}"


def request(command: int, payload: bytes = b"", rc4: bool = False) -> bytes:
    """The bytes of a request from the app to the inverter."""
    return Frame(command, payload, rc4=rc4).encode()


def reply(command: int, payload: bytes = b"", rc4: bool = False) -> bytes:
    """The bytes of a reply from the inverter to the app."""
    return Frame(command, payload, source=INVERTER, destination=APP, rc4=rc4).encode()


def parse_frame(data: bytes, verify: bool = True) -> Frame:
    """One whole frame from exactly its bytes.

    Raises :class:`BadChecksum` (unless ``verify`` is false), :class:`TruncatedFrame`
    or :class:`MalformedFrame`.
    """
    if len(data) >= 7 and data[:2] == HEADER and len(data) < OVERHEAD + data[6]:
        raise TruncatedFrame(OVERHEAD + data[6], len(data))
    if len(data) < OVERHEAD:
        raise TruncatedFrame(OVERHEAD, len(data))
    if data[:2] != HEADER:
        raise MalformedFrame(f"malformed frame {data[:16].hex()}…: it starts with "
                             f"{data[:2].hex(' ')}, not {HEADER.hex(' ')}")
    if data[5] != 0:
        raise MalformedFrame(f"malformed frame {data[:16].hex()}…: byte 6 is 0x{data[5]:02x}, "
                             "not the 0x00 that follows the command")
    size = OVERHEAD + data[6]
    if data[size - 1] != FOOTER:
        raise MalformedFrame(f"malformed frame for command 0x{data[4]:02x}: its footer is "
                             f"0x{data[size - 1]:02x}, not 0x{FOOTER:02x}")
    if len(data) != size:
        raise MalformedFrame(f"{len(data) - size} bytes after the end of the frame")
    carried, computed = data[-2], checksum(data[:-2])
    if verify and carried != computed:
        raise BadChecksum(carried, computed, bytes(data))
    return Frame(data[4], bytes(data[7:-2]), data[2], data[3], carried)


class FrameReader:
    """Reassembles frames from bytes that arrive in any chunking.

    Garbage before or between frames is skipped; a frame with a bad checksum is
    reported and skipped, and reading resumes at the next header. The buffer never
    holds more than ``limit`` bytes. ``on_skip`` (if set) hears of every run of skipped
    bytes, with the reason when they looked like a frame: ``decode`` reports them all.

    With ``rc4``, RC4-encrypted frames are read too, in any mix with plain ones: every
    encrypted frame starts with :data:`RC4_HEADER` and its length byte decrypts on its
    own, so boundaries, resynchronisation and checks work as for plain frames. Such
    frames come out decrypted, marked ``rc4``.
    """

    def __init__(self, verify: bool = True, limit: int = 4 * MAX_FRAME,
                 on_skip: Callable[[int, bytes, str | None], None] | None = None,
                 rc4: bool = False) -> None:
        self.verify = verify
        self.limit = limit
        self.on_skip = on_skip
        self.rc4 = rc4
        self.buffer = bytearray()
        self.skipped = 0  # garbage bytes dropped so far
        self.consumed = 0  # bytes of the stream taken out of the buffer so far
        self._reported_until = 0  # the end of the last frame reported as bad

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Add bytes; return the frames (and frame errors) now complete, in order."""
        self.buffer += data
        out: list[Frame | FrameError] = []
        while True:
            item = self._next()
            if item is None:
                break
            out.append(item)
        if len(self.buffer) > self.limit:
            self._drop(len(self.buffer) - self.limit)
        return out

    @property
    def pending(self) -> bytes:
        """Bytes held back, waiting for the rest of a frame."""
        return bytes(self.buffer)

    def finish(self) -> list[Frame | FrameError]:
        """The end of the stream: a frame still waiting for its bytes is truncated.

        (Whole frames behind a header that announced more were already read by
        :meth:`feed`, which looks past such a header.)
        """
        if not self.buffer:
            return []
        size = self._size(0)
        cut = TruncatedFrame(OVERHEAD if size is None else size, len(self.buffer))
        self.consumed += len(self.buffer)  # reported as truncated, not as skipped
        self.buffer.clear()
        return [cut]

    def _drop(self, count: int, reason: str | None = None) -> None:
        reported = max(0, min(count, self._reported_until - self.consumed))
        if self.on_skip is not None and count > reported:  # not inside a reported frame
            self.on_skip(self.consumed + reported, bytes(self.buffer[reported:count]), reason)
        del self.buffer[:count]
        self.skipped += count
        self.consumed += count

    def _find(self, start: int) -> int:
        """The position of the first header at or after ``start``, or -1."""
        found = self.buffer.find(HEADER, start)
        if self.rc4:
            encrypted = self.buffer.find(RC4_HEADER, start)
            if encrypted >= 0 and (found < 0 or encrypted < found):
                found = encrypted
        return found

    def _encrypted(self, pos: int) -> bool:
        return self.rc4 and self.buffer[pos : pos + 2] == RC4_HEADER

    def _size(self, pos: int) -> int | None:
        """The size that the header at ``pos`` announces; None before its length byte."""
        if len(self.buffer) < pos + 7:
            return None
        length = self.buffer[pos + 6]
        return OVERHEAD + (length ^ key_byte(6) if self._encrypted(pos) else length)

    def _parse(self, pos: int, size: int, verify: bool) -> Frame:
        data = bytes(self.buffer[pos : pos + size])
        if not self._encrypted(pos):
            return parse_frame(data, verify)
        return replace(parse_frame(crypt(data), verify), rc4=True)

    def _next(self) -> Frame | FrameError | None:
        buf = self.buffer
        while True:
            start = self._find(0)
            if start < 0:
                # keep a last byte that may be the first half of a header
                halves = (HEADER[0], RC4_HEADER[0]) if self.rc4 else (HEADER[0],)
                self._drop(len(buf) - (1 if buf and buf[-1] in halves else 0))
                return None
            if start:
                self._drop(start)
            size = self._size(0)
            if size is None:
                return None
            if len(buf) < size:
                later = self._complete_frame_after(1)
                if later is None:
                    return None
                self._drop(later, f"a header announcing {size} bytes, but a whole frame "
                           f"starts {later} bytes after it")
                continue
            try:
                frame = self._parse(0, size, self.verify)
            except BadChecksum as exc:
                # Reported; a real frame may still hide inside it, so only its header goes.
                self._reported_until = self.consumed + size
                self._drop(2)
                return exc
            except FrameError as exc:
                self._drop(1, str(exc))
                continue
            del buf[:size]
            self.consumed += size
            return frame

    def _complete_frame_after(self, offset: int) -> int | None:
        """The position of a later header that starts a whole frame, if any.

        Whole means well formed; its checksum may be wrong (it is then reported).
        """
        pos = self._find(offset)
        while pos >= 0:
            size = self._size(pos)
            if size is not None and len(self.buffer) - pos >= size:
                try:
                    self._parse(pos, size, verify=False)
                    return pos
                except FrameError:
                    pass
            pos = self._find(pos + 1)
        return None
