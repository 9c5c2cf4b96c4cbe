"""`decode FILE`: captures as users make them (PCAPdroid's pcap and pcapng, tcpdump, the
netcat -o hex dump), built here from the captured frames of captures.md."""

from __future__ import annotations

import io
import itertools
import json
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import pytest

from sermatec_bridge import capture, cli
from sermatec_bridge.protocol import codec, frame, rc4, tables

# Frames recorded on real inverters (captures.md) and the vendor cloud's RC4 query (issue 17)
BATTERY = bytes.fromhex("fe5514640a002612ecffed016800150064002200b900b9151810fe"
                        "000000000000000000000000000000000000cdae")
STATUS = bytes.fromhex("fe5514640c000465930dbf98ae")
LINKS = bytes.fromhex("fe5514640d0006000000000c1ecdae")
QUERY_98 = bytes.fromhex("fe5564149800004cae")
QUERY_98_RC4 = bytes.fromhex("759ab0f98a066885fc")

T0 = 1718964000.0  # 2024-06-21 10:00:00 UTC
PHONE, INVERTER, CLOUD = ("192.168.1.23", 40512), ("192.168.1.50", 8899), ("8.209.71.159", 19042)
LINKTYPE_RAW = 101


@dataclass
class Conversation:
    """One TCP connection between ``a`` (who opens it) and ``b``: its packets in order."""

    a: tuple[str, int]
    b: tuple[str, int]
    packets: list[tuple[float, bytes]] = field(default_factory=list)
    seq: dict[tuple[str, int], int] = field(default_factory=dict)
    time: float = T0
    first: tuple[int, int] = (1000, 900_000)  # the initial sequence numbers of a and b

    def __post_init__(self) -> None:
        self.packet(self.a, self.b, self.first[0], b"", dpkt.tcp.TH_SYN)
        self.packet(self.b, self.a, self.first[1], b"", dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
        self.seq = {self.a: self.first[0] + 1, self.b: self.first[1] + 1}

    def packet(self, src: tuple[str, int], dst: tuple[str, int], seq: int, data: bytes,
               flags: int = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH) -> bytes:
        tcp = dpkt.tcp.TCP(sport=src[1], dport=dst[1], seq=seq & 0xFFFFFFFF, flags=flags,
                           data=data)
        family = socket.AF_INET6 if ":" in src[0] else socket.AF_INET
        if family == socket.AF_INET6:
            ip6 = dpkt.ip6.IP6(src=socket.inet_pton(family, src[0]), nxt=6, hlim=64,
                               dst=socket.inet_pton(family, dst[0]), data=tcp)
            ip6.plen = len(bytes(tcp))
            raw = bytes(ip6)
        else:
            raw = bytes(dpkt.ip.IP(src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]),
                                   p=dpkt.ip.IP_PROTO_TCP, data=tcp))
        self.time += 0.25
        self.packets.append((self.time, raw))
        return raw

    def send(self, side: tuple[str, int], data: bytes, *, cuts: tuple[int, ...] = ()) -> None:
        """``side`` sends ``data``, in segments cut at ``cuts``."""
        other = self.b if side == self.a else self.a
        edges = [0, *cuts, len(data)]
        for start, end in itertools.pairwise(edges):
            self.packet(side, other, self.seq[side] + start, data[start:end])
        self.seq[side] += len(data)


def app_session() -> Conversation:
    """The vendor app asks the inverter on port 8899; the battery reply comes in two
    segments."""
    talk = Conversation(PHONE, INVERTER)
    talk.send(PHONE, QUERY_98)
    talk.send(INVERTER, BATTERY, cuts=(20,))
    talk.send(PHONE, frame.request(0x0C))
    talk.send(INVERTER, STATUS)
    return talk


def cloud_session() -> Conversation:
    """The inverter dials the cloud; the cloud asks, plain and then RC4."""
    talk = Conversation((INVERTER[0], 51000), CLOUD)
    talk.send(CLOUD, QUERY_98_RC4)
    talk.send(talk.a, rc4.crypt(BATTERY))
    return talk


def pcap(packets: list[tuple[float, bytes]], link: str = "raw", nano: bool = False) -> bytes:
    """A pcap file: raw IP, PCAPdroid's Ethernet with trailer, or Linux cooked."""
    out = io.BytesIO()
    linktype = {"raw": LINKTYPE_RAW, "pcapdroid": 1, "sll": 113}[link]
    writer = dpkt.pcap.Writer(out, linktype=linktype, nano=nano, snaplen=65535)
    for time, packet in packets:
        if link == "pcapdroid":
            packet = pcapdroid_frame(packet)
        elif link == "sll":  # an incoming packet on some interface, then IPv4
            packet = struct.pack(">HHH8sH", 0, 1, 6, bytes(8), 0x0800) + packet
        writer.writepkt(packet, ts=time)
    return out.getvalue()


def pcapdroid_frame(packet: bytes, app: bytes = b"Sermatec") -> bytes:
    """What PCAPdroid writes with its trailer on: a zero Ethernet header, the IP packet,
    padding to 4 bytes, then magic, uid, app name (20 bytes) and a checksum."""
    body = bytes(12) + b"\x08\x00" + packet
    body += bytes(-len(body) % 4)
    return body + bytes.fromhex("01072021") + struct.pack(">i", 10123) + app.ljust(20, b"\0") \
        + bytes(4)


def pcapng(packets: list[tuple[float, bytes]], extra_block: bytes = b"", at: int = 1) -> bytes:
    """A pcapng file of raw IP, as PCAPdroid writes it; ``extra_block`` before packet ``at``."""
    out = io.BytesIO()
    writer = dpkt.pcapng.Writer(out, linktype=LINKTYPE_RAW, snaplen=65535)
    for index, (time, packet) in enumerate(packets):
        if index == at:
            out.write(extra_block)
        writer.writepkt(packet, ts=time)
    return out.getvalue()


# PCAPdroid's own pcapng block (a custom block of its enterprise number), which a reader
# must skip
PCAPDROID_BLOCK = struct.pack("<III", 0x00000BAD, 20, 62652) + b"\x01\x01\0\0" + \
    struct.pack("<I", 20)


def decode(tmp_path: Path, data: bytes, *args: str,
           capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "capture"
    path.write_bytes(data)
    status = cli.main(["decode", *args, str(path)])
    out, err = capsys.readouterr()
    return status, out, err


def headings(out: str) -> list[str]:
    """The context line and heading of each frame shown."""
    lines = out.splitlines()
    return [f"{lines[i - 1]} | {line}" for i, line in enumerate(lines) if line.startswith("# ")]


APP_FRAMES = [
    "2024-06-21 10:00:00.750 UTC  192.168.1.23:40512 → 192.168.1.50:8899  requester → inverter"
    " | # 0x98 System information (request)",
    "2024-06-21 10:00:01.250 UTC  192.168.1.50:8899 → 192.168.1.23:40512  inverter → requester"
    " | # 0x0a Battery information",
    "2024-06-21 10:00:01.500 UTC  192.168.1.23:40512 → 192.168.1.50:8899  requester → inverter"
    " | # 0x0c Equipment running status (request)",
    "2024-06-21 10:00:01.750 UTC  192.168.1.50:8899 → 192.168.1.23:40512  inverter → requester"
    " | # 0x0c Equipment running status",
]


# --------------------------------------------------------------------------------------
# The formats
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda p: pcap(p), lambda p: pcap(p, nano=True), lambda p: pcap(p, link="sll"),
    lambda p: pcapng(p), lambda p: pcapng(p, PCAPDROID_BLOCK)],
    ids=["pcap-raw-ip", "pcap-nanoseconds", "pcap-linux-cooked", "pcapng",
         "pcapng-with-pcapdroid-blocks"])
def test_a_capture_decodes_in_both_directions_with_time(
        make: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = decode(tmp_path, make(app_session().packets), capsys=capsys)  # type: ignore[operator]
    assert status == cli.Exit.OK, err
    assert headings(out) == APP_FRAMES
    assert "Battery voltage: 484.4 V" in out  # the reply reassembled from two segments
    assert "Inverter switched on: yes" in out
    assert err == ""


def test_pcapdroids_trailer_is_read_past_and_names_the_app(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = decode(tmp_path, pcap(app_session().packets, link="pcapdroid"),
                              capsys=capsys)
    assert status == cli.Exit.OK, err
    assert [h.replace(" (app Sermatec)", "") for h in headings(out)] == APP_FRAMES
    assert "192.168.1.23:40512 → 192.168.1.50:8899 (app Sermatec)  requester → inverter" in out


def test_the_cloud_links_rc4_frames_are_shown_as_rc4_then_decoded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = decode(tmp_path, pcapng(cloud_session().packets), capsys=capsys)
    assert status == cli.Exit.OK, err
    assert headings(out) == [
        "2024-06-21 10:00:00.750 UTC  8.209.71.159:19042 → 192.168.1.50:51000  "
        "requester → inverter | # 0x98 System information (request, RC4)",
        "2024-06-21 10:00:01.000 UTC  192.168.1.50:51000 → 8.209.71.159:19042  "
        "inverter → requester | # 0x0a Battery information (RC4)",
    ]
    assert "Battery voltage: 484.4 V" in out


def test_json_carries_time_stream_direction_and_rc4(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = decode(tmp_path, pcap(cloud_session().packets), "--json", capsys=capsys)
    assert status == cli.Exit.OK
    query, answer = (json.loads(line) for line in out.splitlines())
    assert {k: query[k] for k in ("command", "rc4", "time", "stream", "direction")} == {
        "command": "0x98", "rc4": True, "time": "2024-06-21 10:00:00.750 UTC",
        "stream": "8.209.71.159:19042 → 192.168.1.50:51000",
        "direction": "requester → inverter"}
    assert answer["direction"] == "inverter → requester" and answer["rc4"] is True
    assert answer["fields"]["battery_voltage"]["value"] == 484.4


def test_ipv6_and_several_connections_in_one_capture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v6 = Conversation(("fd00::23", 40600), ("fd00::50", 8899))
    v6.send(v6.a, QUERY_98)
    v6.send(v6.b, LINKS)
    app, cloud = app_session(), cloud_session()
    packets = sorted(app.packets + cloud.packets + v6.packets, key=lambda p: p[0])
    status, out, err = decode(tmp_path, pcap(packets), capsys=capsys)
    assert status == cli.Exit.OK, err
    assert "[fd00::50]:8899 → [fd00::23]:40600  inverter → requester" in out
    assert out.count("# ") == 4 + 2 + 2


def test_the_netcat_hex_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """netcat as the inverter, as the protocol notes captured the app: < is what it got."""
    dump = (
        "< 00000000 fe 55 64 14 98 00 00 4c ae                      # .Ud....L.\n"
        "> 00000000 fe 55 14 64 0c 00 04 65 93 0d bf 98 ae          # .U.d...e.....\n"
        "< 00000009 75 9a b0 f9 8a 06 68 85 fc                      # u.....h..\n"
        "> 0000000d " + " ".join(f"{b:02x}" for b in BATTERY[:16]) + "  # ...\n"
        "> 0000001d " + " ".join(f"{b:02x}" for b in BATTERY[16:32]) + "  # ...\n"
        "> 0000002d " + " ".join(f"{b:02x}" for b in BATTERY[32:]) + "  # ...\n"
    )
    status, out, err = decode(tmp_path, dump.encode(), capsys=capsys)
    assert status == cli.Exit.OK, err
    assert headings(out) == [
        "netcat < (received)  requester → inverter | # 0x98 System information (request)",
        "netcat > (sent)  inverter → requester | # 0x0c Equipment running status",
        "netcat < (received)  requester → inverter | # 0x98 System information "
        "(request, RC4)",
        "netcat > (sent)  inverter → requester | # 0x0a Battery information",
    ]


def test_a_hole_in_a_netcat_dump_cuts_only_the_frame_it_hits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = ("> 00000000 fe 55 14 64 0c 00 04 65 93\n"  # 0x0c cut by the hole after it
            "> 00000010 01 02 fe 55 14 64 0c 00 04 65 93 0d bf 98 ae\n")
    status, out, err = decode(tmp_path, dump.encode(), capsys=capsys)
    assert status == cli.Exit.TRUNCATED
    assert "warning: netcat > (sent): 7 bytes at offset 9 are not in the capture" in err
    assert "truncated frame: expected 13 bytes, got 9" in err
    assert "skipped 2 bytes at offset 16, not part of any frame: 0102" in err  # counts the hole
    assert headings(out) == ["netcat > (sent)  inverter → requester | "
                             "# 0x0c Equipment running status"]


# --------------------------------------------------------------------------------------
# TCP: order, repeats, holes
# --------------------------------------------------------------------------------------


def test_segments_out_of_order_and_retransmitted_decode_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    talk = Conversation(PHONE, INVERTER)
    talk.send(PHONE, QUERY_98)
    base = talk.seq[INVERTER]
    parts = [(0, BATTERY[:15]), (15, BATTERY[15:30]), (30, BATTERY[30:])]
    for start, data in (parts[0], parts[2], parts[0], parts[1], parts[1]):
        talk.packet(INVERTER, PHONE, base + start, data)
    status, out, err = decode(tmp_path, pcap(talk.packets), capsys=capsys)
    assert status == cli.Exit.OK, err
    assert out.count("# 0x0a Battery information") == 1
    assert "Battery voltage: 484.4 V" in out


def test_sequence_numbers_that_wrap_around(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    talk = Conversation(PHONE, INVERTER, first=(1000, (1 << 32) - 10))  # crosses 2**32
    talk.send(INVERTER, BATTERY, cuts=(5, 30))
    chunks = list(capture.read(pcap(talk.packets)))
    assert b"".join(c.data for c in chunks) == BATTERY
    assert not any(c.missing for c in chunks)


def test_a_segment_missing_from_the_capture_costs_only_its_frames(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    talk = Conversation(PHONE, INVERTER)
    talk.send(INVERTER, STATUS + BATTERY + LINKS, cuts=(len(STATUS) + 20, len(STATUS) + 30))
    del talk.packets[3]  # BATTERY's bytes 20..29
    status, out, err = decode(tmp_path, pcapng(talk.packets), capsys=capsys)
    assert status == cli.Exit.TRUNCATED
    assert "10 bytes at offset 33 are not in the capture" in err
    assert "truncated frame: expected 47 bytes, got 20" in err
    assert [h.split(" | ")[1] for h in headings(out)] == [
        "# 0x0c Equipment running status", "# 0x0d BMS and meter connection status"]


def test_a_segment_cut_by_the_snap_length_is_a_hole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    talk = Conversation(PHONE, INVERTER)
    talk.send(INVERTER, BATTERY)
    talk.send(INVERTER, STATUS)
    talk.send(PHONE, QUERY_98)
    time, packet = talk.packets[2]
    talk.packets[2] = (time, packet[:-7])  # recorded without its last 7 bytes
    status, out, err = decode(tmp_path, pcap(talk.packets), capsys=capsys)
    assert status == cli.Exit.TRUNCATED
    assert "7 bytes at offset 40 are not in the capture" in err
    assert [h.split(" | ")[1] for h in headings(out)] == [  # in the order they were sent
        "# 0x0c Equipment running status", "# 0x98 System information (request)"]


def test_streams_without_frames_are_only_counted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noise = Conversation(PHONE[0] and ("192.168.1.23", 40999), ("142.250.0.1", 443))
    noise.send(noise.a, b"\x16\x03\x01" + bytes(range(200)))
    noise.send(noise.b, b"\x16\x03\x03" + bytes(range(100, 0, -1)))
    packets = sorted(app_session().packets + noise.packets, key=lambda p: p[0])
    status, out, err = decode(tmp_path, pcap(packets), capsys=capsys)
    assert status == cli.Exit.OK
    assert headings(out) == APP_FRAMES
    assert err == "note: 2 other TCP stream directions of the capture carry no frames\n"


# --------------------------------------------------------------------------------------
# Damage
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [pcap, pcapng], ids=["pcap", "pcapng"])
def test_a_cut_off_capture_shows_every_frame_before_the_cut(
        make: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = make(app_session().packets)  # type: ignore[operator]
    status, out, err = decode(tmp_path, whole[:-30], capsys=capsys)
    assert status == cli.Exit.TRUNCATED
    assert headings(out) == APP_FRAMES[:3]
    assert "damaged capture: the capture is cut short: at byte" in err
    assert "everything before it is shown above" in err


@pytest.mark.parametrize("make", [pcap, pcapng], ids=["pcap", "pcapng"])
def test_a_capture_cut_anywhere_fails_clearly(
        make: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At every byte after the 4 that say it is a capture: a clear error (or none, at a
    record's end), never a traceback, and the frames of the records before the cut."""
    whole = make(app_session().packets)  # type: ignore[operator]
    for cut in range(4, len(whole)):
        status, out, err = decode(tmp_path, whole[:cut], capsys=capsys)
        assert status in (cli.Exit.OK, cli.Exit.TRUNCATED, cli.Exit.MALFORMED), (cut, err)
        assert headings(out) == APP_FRAMES[: len(headings(out))], cut
        if status != cli.Exit.OK:
            assert "Traceback" not in err and err.endswith("\n"), (cut, err)


def test_a_pcapng_block_with_an_impossible_length(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_block = struct.pack("<II", 0x00000006, 4)  # an EPB announcing 4 bytes
    status, out, err = decode(tmp_path, pcapng(app_session().packets, bad_block, at=4),
                              capsys=capsys)
    assert status == cli.Exit.MALFORMED
    assert "damaged capture: a block at byte" in err
    assert headings(out) == APP_FRAMES[:1]
    assert "truncated frame: expected 47 bytes, got 20" in err  # the reply's first segment


def test_a_broken_line_in_a_netcat_dump(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    dump = b"> 00000000 fe 55 14 64 0c 00 04 65 93 0d bf 98 ae\n> 0000000d fe 55 zz\n"
    status, out, err = decode(tmp_path, dump, capsys=capsys)
    assert status == cli.Exit.MALFORMED
    assert "line 2 is not part of a netcat -o hex dump: '> 0000000d fe 55 zz'" in err
    assert "Inverter switched on: yes" in out


def test_an_unsupported_link_type_is_named(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out_file = io.BytesIO()
    dpkt.pcap.Writer(out_file, linktype=105)  # 802.11
    status, _, err = decode(tmp_path, out_file.getvalue(), capsys=capsys)
    assert status == cli.Exit.MALFORMED
    assert "pcap with link type 105" in err


def test_a_file_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decode", "missing/capture.pcap"]) == cli.Exit.USAGE
    assert "missing/capture.pcap: no such file, and not hex either" in capsys.readouterr().err


def test_a_text_file_of_hex_decodes_as_hex(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = decode(tmp_path, b"fe55 1464 0c00 0465 930d bf98 ae\n", capsys=capsys)
    assert status == cli.Exit.OK
    assert "# 0x0c Equipment running status\n" in out


def test_a_captured_router_write_never_shows_the_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = codec.build(tables.ROUTER, 609, {"wifi_mode": "Station", "router_ssid": "Home",
                                               "router_password": "hunter2"})
    talk = Conversation(PHONE, INVERTER)
    talk.send(PHONE, frame.request(0x9E, payload))
    for args in ((), ("--json",)):
        status, out, err = decode(tmp_path, pcap(talk.packets), *args, capsys=capsys)
        assert status == cli.Exit.OK, err
        assert "Home" in out and "hunter2" not in out and payload.hex() not in out
        assert "********" in out
