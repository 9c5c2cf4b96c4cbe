"""Capture files, read for ``decode``: the bytes each side of each TCP connection sent.

Three formats, told apart by their first bytes:

* pcap, as PCAPdroid writes it (raw IP, or Ethernet when it adds its trailer: a zero
  Ethernet header in front, the app's name behind the IP packet) and as tcpdump writes it
  (Ethernet, or Linux cooked with ``-i any``);
* pcapng, which PCAPdroid writes with raw IP and its own blocks (skipped);
* the hex dump of ``netcat -o`` (``< 00000000 fe 55 ... # .U...``): ``<`` what netcat
  received, ``>`` what it sent.

dpkt reads the two capture formats and the IP and TCP headers. TCP segments are put back
in sequence order per direction; a hole (a segment the capture lacks) is reported with
its size, so that a frame cut by it is never glued to the bytes after it.

A damaged capture raises :class:`CaptureError` after everything before the damage was
yielded: a cut-off file is the common case (the capturing app was stopped mid-write).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PCAP_MAGICS = {bytes.fromhex(m) for m in ("a1b2c3d4", "d4c3b2a1", "a1b23c4d", "4d3cb2a1")}
PCAPNG_MAGIC = bytes.fromhex("0a0d0d0a")
PCAPDROID_MAGIC = bytes.fromhex("01072021")  # starts PCAPdroid's trailer
HOLD_LIMIT = 1 << 16  # bytes of out-of-order segments held per direction before giving up

_NETCAT_LINE = re.compile(
    r"(?P<way>[<>]) (?P<offset>[0-9a-fA-F]{8}) (?P<hex>(?:[0-9a-fA-F]{2} ?){1,16})\s*(?:#.*)?")


class CaptureError(ValueError):
    """A capture that cannot be read on; the message says where and why."""


class TruncatedCapture(CaptureError):
    """A capture that ends inside a record: the file was cut short."""


@dataclass(frozen=True)
class Chunk:
    """Bytes one side of a connection sent, in the order it sent them.

    ``missing`` counts the bytes of that side the capture lacks before ``data`` (a
    segment it did not record, or recorded only in part).
    """

    stream: str | None  # "192.168.1.5:51234 → 192.168.1.20:8899", "netcat > (sent)"; None: hex
    data: bytes
    time: float | None = None  # seconds since the epoch; None: the format has no clock
    missing: int = 0


def kind(data: bytes) -> str | None:
    """"pcap", "pcapng", "netcat" or None (not a capture this module reads)."""
    if data[:4] in PCAP_MAGICS:
        return "pcap"
    if data[:4] == PCAPNG_MAGIC:
        return "pcapng"
    first = next((line for line in data.splitlines() if line.strip()), b"")
    if _NETCAT_LINE.fullmatch(first.decode("latin-1").strip()):
        return "netcat"
    return None


def read(data: bytes) -> Iterator[Chunk]:
    """The chunks of a capture, in capture order; raises CaptureError at damage."""
    found = kind(data)
    if found == "netcat":
        yield from _netcat(data.decode("latin-1"))
    elif found is not None:
        yield from _packets(data, found)
    else:
        raise CaptureError("not a capture: neither pcap, pcapng nor a netcat -o hex dump")


def timestamp(time: float) -> str:
    """A capture's time as people read it: UTC, to the millisecond."""
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(time, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


# --------------------------------------------------------------------------------------
# netcat -o
# --------------------------------------------------------------------------------------


def _netcat(text: str) -> Iterator[Chunk]:
    expected = {"<": 0, ">": 0}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _NETCAT_LINE.fullmatch(line.strip())
        if match is None:
            raise CaptureError(f"line {number} is not part of a netcat -o hex dump: "
                               f"{line.strip()[:60]!r}")
        way, offset = match["way"], int(match["offset"], 16)
        data = bytes.fromhex(match["hex"])
        if offset < expected[way]:
            raise CaptureError(f"line {number}: offset {offset:08x} goes back before "
                               f"{expected[way]:08x}, where the {way} side had got to")
        stream = "netcat < (received)" if way == "<" else "netcat > (sent)"
        yield Chunk(stream, data, missing=offset - expected[way])
        expected[way] = offset + len(data)


# --------------------------------------------------------------------------------------
# pcap and pcapng
# --------------------------------------------------------------------------------------


class _Checked(io.RawIOBase):
    """The capture as a file for dpkt's readers, which do not notice a file cut short:
    this one raises where a read comes back shorter than asked."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0
        self._short_read: tuple[int, int] | None = None  # an empty read: (position, asked)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise CaptureError(f"damaged capture: a block at byte {self.position} announces "
                               "a length shorter than its own header")
        if self._short_read is not None:  # the empty read before was a record's body
            raise self._cut(*self._short_read, 0)
        chunk = self.data[self.position : self.position + size]
        if 0 < len(chunk) < size:
            raise self._cut(self.position, size, len(chunk))
        if size and not chunk:
            self._short_read = (self.position, size)  # the end, unless another read follows
        self.position += len(chunk)
        return chunk

    def _cut(self, position: int, asked: int, got: int) -> TruncatedCapture:
        return TruncatedCapture(f"the capture is cut short: at byte {position}, {asked} "
                                f"more bytes were due and {got} are there")


def _packets(data: bytes, found: str) -> Iterator[Chunk]:
    import dpkt

    file = _Checked(data)
    try:
        reader = dpkt.pcap.Reader(file) if found == "pcap" else dpkt.pcapng.Reader(file)
    except (ValueError, dpkt.dpkt.Error) as exc:
        if isinstance(exc, CaptureError):
            raise
        raise CaptureError(f"damaged {found} header: {exc}") from None
    link = reader.datalink()
    if link not in _LINK_TYPES:
        raise CaptureError(f"{found} with link type {link}: decode reads raw IP, Ethernet "
                           "and Linux cooked captures")
    streams = _Streams()
    damage: CaptureError | None = None
    count = 0
    try:
        for time, packet in reader:
            count += 1
            yield from streams.packet(float(time), packet, _LINK_TYPES[link])
    except CaptureError as exc:
        damage = exc
    except (dpkt.dpkt.Error, ValueError, IndexError) as exc:
        damage = CaptureError(f"damaged capture after packet {count}, at byte "
                              f"{file.position}: {exc}")
    yield from streams.flush()  # what waited for a segment that never came
    if damage is not None:
        raise damage


_LINK_TYPES = {1: "ethernet", 12: "raw", 14: "raw", 101: "raw", 113: "sll", 228: "raw",
               229: "raw"}
_IP_TYPES = (b"\x08\x00", b"\x86\xdd")


def _network_layer(packet: bytes, link: str) -> bytes:
    """The IP packet that a link-layer frame carries (empty if it carries none)."""
    if link == "ethernet":
        return packet[14:] if packet[12:14] in _IP_TYPES else b""
    if link == "sll":  # tcpdump -i any
        return packet[16:] if packet[14:16] in _IP_TYPES else b""
    return packet


def _app_name(trailer: bytes) -> str | None:
    """The app that PCAPdroid's trailer names (after 0..3 bytes of padding), if any."""
    start = trailer.find(PCAPDROID_MAGIC, 0, 8)
    if start < 0 or len(trailer) < start + 28:
        return None
    name = trailer[start + 8 : start + 28].split(b"\x00", 1)[0].decode("latin-1")
    return name or None


def _endpoint(address: bytes, port: int) -> str:
    import ipaddress

    text = str(ipaddress.ip_address(address))
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


class _Direction:
    """One direction of one TCP connection: its segments put back in sequence order."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.next: int | None = None  # the sequence number of the next byte due
        self.held: dict[int, tuple[float, bytes, int]] = {}  # seq -> (time, data, cut)

    def segment(self, time: float, seq: int, data: bytes, cut: int, syn: bool) -> list[Chunk]:
        """A segment of which the capture recorded ``data``, and not the ``cut`` bytes
        after it (its snap length); in sequence order, what is now due."""
        if syn:
            self.next, self.held = (seq + 1) & 0xFFFFFFFF, {}
            seq = self.next
        if not data and not cut:
            return []
        if self.next is None:  # the capture began after the connection did
            self.next = seq
        self.held[seq] = (time, data, cut)
        out = self._release()
        if sum(len(data) + cut for _, data, cut in self.held.values()) > HOLD_LIMIT:
            out += self.flush()
        return out

    def _ahead(self, seq: int) -> int:
        """How far ``seq`` is ahead of the next byte due (negative: behind), mod 2**32."""
        assert self.next is not None
        ahead = (seq - self.next) & 0xFFFFFFFF
        return ahead - (1 << 32) if ahead >= 1 << 31 else ahead

    def _release(self) -> list[Chunk]:
        out: list[Chunk] = []
        while due := [seq for seq in self.held if self._ahead(seq) <= 0]:
            seq = due[0]
            time, data, cut = self.held.pop(seq)
            seen = -self._ahead(seq)  # bytes already released (a retransmission)
            if seen >= len(data) + cut:
                continue
            if data[seen:]:
                out.append(Chunk(self.stream, data[seen:], time))
            if cut:
                out.append(Chunk(self.stream, b"", time, missing=min(cut, len(data) + cut - seen)))
            self.next = (seq + len(data) + cut) & 0xFFFFFFFF
        return out

    def flush(self) -> list[Chunk]:
        """Give up waiting: what is held goes out, after the holes before it."""
        out: list[Chunk] = []
        while self.held:
            nearest = min(self.held, key=self._ahead)
            out.append(Chunk(self.stream, b"", self.held[nearest][0],
                             missing=self._ahead(nearest)))
            self.next = nearest
            out += self._release()
        return out


class _Streams:
    """The TCP connections of a capture, each direction on its own."""

    def __init__(self) -> None:
        self.directions: dict[tuple[str, str], _Direction] = {}

    def packet(self, time: float, packet: bytes, link: str) -> list[Chunk]:
        import dpkt

        payload = _network_layer(packet, link)
        version = payload[0] >> 4 if payload else 0
        if version == 4 and len(payload) >= 20:
            ip: Any = dpkt.ip.IP(payload)
            declared = ip.len
            if ip.mf or ip.offset:  # a fragment: the inverter's frames are never this long
                return []
        elif version == 6 and len(payload) >= 40:
            ip = dpkt.ip6.IP6(payload)
            declared = 40 + ip.plen
        else:
            return []
        tcp = ip.data
        if not isinstance(tcp, dpkt.tcp.TCP):
            return []
        source, destination = _endpoint(ip.src, tcp.sport), _endpoint(ip.dst, tcp.dport)
        direction = self.directions.get((source, destination))
        if direction is None:
            app = _app_name(payload[declared:])  # PCAPdroid's trailer follows the packet
            name = f"{source} → {destination}" + (f" (app {app})" if app else "")
            direction = self.directions[source, destination] = _Direction(name)
        cut = max(0, declared - len(payload))  # the capture's snap length cut the segment
        return direction.segment(time, tcp.seq, bytes(tcp.data), cut,
                                 bool(tcp.flags & dpkt.tcp.TH_SYN))

    def flush(self) -> list[Chunk]:
        return [chunk for direction in self.directions.values() for chunk in direction.flush()]
