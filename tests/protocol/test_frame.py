"""Frames and the stream reader: round trips, checksums, any chunking, garbage, limits."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sermatec_bridge.protocol import frame, rc4
from sermatec_bridge.protocol.frame import BadChecksum, Frame, FrameError, FrameReader

# Real replies (captures.md): battery 0x0a, running status 0x0c, links 0x0d.
BATTERY = bytes.fromhex(
    "fe5514640a002612ecffed016800150064002200b900b9151810fe"
    "000000000000000000000000000000000000cdae"
)
STATUS = bytes.fromhex("fe5514640c000465930dbf98ae")
LINKS = bytes.fromhex("fe5514640d0006000000000c1ecdae")
# The published 0x98 capture: its serial was masked by hand, its checksum no longer fits.
SYSTEM_INFO_BAD = bytes.fromhex(
    "fe551464980032019b000200015354313131313131313131313131313131313131313131313131"
    "00000000000000000000000000000000000096ae"
)

STREAM = BATTERY + STATUS + LINKS
EXPECTED = [frame.parse_frame(f) for f in (BATTERY, STATUS, LINKS)]

Item = Frame | FrameError


def read(chunks: list[bytes], reader: FrameReader | None = None) -> list[Item]:
    reader = reader or FrameReader()
    items: list[Item] = []
    for chunk in chunks:
        items += reader.feed(chunk)
    return items


def frames_only(items: list[Item]) -> list[Frame]:
    return [item for item in items if isinstance(item, Frame)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------------------
# One frame
# --------------------------------------------------------------------------------------


def test_an_empty_request_is_nine_bytes() -> None:
    assert frame.request(0x98) == bytes.fromhex("fe556414980000" "4cae")
    assert frame.reply(0x0C, bytes.fromhex("65930dbf")) == STATUS


@given(
    command=st.integers(0, 255),
    payload=st.binary(max_size=255),
    source=st.integers(0, 255),
    destination=st.integers(0, 255),
)
def test_frames_round_trip(command: int, payload: bytes, source: int, destination: int) -> None:
    data = Frame(command, payload, source, destination).encode()
    assert len(data) == frame.OVERHEAD + len(payload)
    parsed = frame.parse_frame(data)
    assert (parsed.command, parsed.payload) == (command, payload)
    assert (parsed.source, parsed.destination) == (source, destination)
    assert parsed.checksum == data[-2]
    assert parsed.checksum_ok
    assert parsed.encode() == data


def test_a_payload_too_long_for_one_frame_is_refused() -> None:
    with pytest.raises(FrameError, match="256 bytes"):
        Frame(0x66, bytes(256)).encode()


def test_a_bad_checksum_names_both_values() -> None:
    with pytest.raises(BadChecksum) as caught:
        frame.parse_frame(SYSTEM_INFO_BAD)
    assert (caught.value.carried, caught.value.computed) == (0x96, 0xE0)
    assert "0x96" in str(caught.value) and "0xe0" in str(caught.value)
    assert "0x98" in str(caught.value)
    unchecked = frame.parse_frame(SYSTEM_INFO_BAD, verify=False)
    assert unchecked.checksum == 0x96
    assert not unchecked.checksum_ok
    assert unchecked.computed_checksum == 0xE0


@given(st.integers(0, len(BATTERY) - 1))
def test_a_cut_frame_is_truncated(cut: int) -> None:
    with pytest.raises(frame.TruncatedFrame) as caught:
        frame.parse_frame(BATTERY[:cut])
    assert caught.value.got == cut
    assert caught.value.expected in (len(BATTERY), frame.OVERHEAD)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (STATUS + b"\x00", "1 bytes after the end"),
        (STATUS[:-1] + b"\xaf", "malformed"),
        (b"\xfe\x56" + STATUS[2:], "malformed"),
        (STATUS[:5] + b"\x01" + STATUS[6:], "malformed"),
    ],
)
def test_malformed_frames(data: bytes, reason: str) -> None:
    with pytest.raises(frame.MalformedFrame, match=reason):
        frame.parse_frame(data)


# --------------------------------------------------------------------------------------
# The stream reader
# --------------------------------------------------------------------------------------


def test_a_stream_in_one_piece() -> None:
    assert read([STREAM]) == EXPECTED


def test_every_single_split_point_gives_the_same_frames() -> None:
    for cut in range(len(STREAM) + 1):
        assert read(split(STREAM, [cut])) == EXPECTED, cut


def test_every_pair_of_split_points_gives_the_same_frames() -> None:
    for first, second in itertools.combinations(range(1, len(STREAM)), 2):
        assert read(split(STREAM, [first, second])) == EXPECTED, (first, second)


def test_one_byte_at_a_time() -> None:
    reader = FrameReader()
    items: list[Item] = []
    for byte in STREAM:
        items += reader.feed(bytes([byte]))
    assert items == EXPECTED
    assert reader.pending == b""


@settings(max_examples=200)
@given(st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_any_chunking_gives_the_same_frames(cuts: list[int]) -> None:
    assert read(split(STREAM, cuts)) == EXPECTED


def test_a_cut_frame_waits_for_its_end() -> None:
    reader = FrameReader()
    assert reader.feed(BATTERY[:-1]) == []
    assert reader.pending == BATTERY[:-1]
    assert reader.feed(BATTERY[-1:]) == EXPECTED[:1]
    assert reader.pending == b""
    assert reader.feed(STATUS[:7]) == []
    assert reader.pending == STATUS[:7]


GARBAGE = [
    b"\x00\x01\x02",
    b"\xfe",  # half a header
    b"\xfe\xfe\x55\x55",
    b"\xae\xae",  # footers without frames
    b"\xfe\x55\x14\x64\x0a\x00\xff",  # a header announcing 255 bytes that never come
    b"\xfe\x55\x14\x64\x0a\x00\x03\x01\x02",  # a header announcing 3 bytes, then garbage
    b"\xfe\x55\x14\x64\x0c\x01\x04\x00\x00\x00\x00\x00\xae",  # wrong pad byte
    b"\xfe\x55\x01\x02\x03\x00\x1a",  # a header whose length ends on a later frame's end
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: g.hex())
def test_garbage_before_and_between_frames_is_skipped(garbage: bytes) -> None:
    stream = garbage + BATTERY + garbage + STATUS + garbage + LINKS
    assert frames_only(read([stream])) == EXPECTED
    for cut in range(len(stream) + 1):
        assert frames_only(read(split(stream, [cut]))) == EXPECTED, cut


@settings(max_examples=100)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from(GARBAGE),
            st.binary(max_size=20).filter(lambda b: b"\xfe" not in b),
        ),
        min_size=4,
        max_size=4,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_frames_survive_any_garbage_and_chunking(pieces: list[bytes], cuts: list[int]) -> None:
    stream = pieces[0] + BATTERY + pieces[1] + STATUS + pieces[2] + LINKS + pieces[3]
    items = read(split(stream, [c for c in cuts if c <= len(stream)]))
    assert frames_only(items) == EXPECTED


def test_a_bad_checksum_is_reported_and_the_next_frame_still_read() -> None:
    stream = SYSTEM_INFO_BAD + STATUS
    for cut in range(len(stream) + 1):
        items = read(split(stream, [cut]))
        assert len(items) == 2, cut
        assert isinstance(items[0], BadChecksum)
        assert (items[0].carried, items[0].computed) == (0x96, 0xE0)
        assert items[0].frame == SYSTEM_INFO_BAD
        assert items[1] == EXPECTED[1]


def test_an_unverifying_reader_yields_the_bad_frame() -> None:
    items = read([SYSTEM_INFO_BAD, STATUS], FrameReader(verify=False))
    assert [type(item) for item in items] == [Frame, Frame]
    first = items[0]
    assert isinstance(first, Frame)
    assert first.command == 0x98 and first.checksum == 0x96 and not first.checksum_ok


def test_the_buffer_stays_bounded_on_a_megabyte_of_garbage() -> None:
    noise = random.Random(20240501).randbytes(1 << 20)
    reader = FrameReader()
    for start in range(0, len(noise), 4096):
        reader.feed(noise[start : start + 4096])
        assert len(reader.pending) <= reader.limit
    assert reader.feed(b"\x00" * 300 + BATTERY) == EXPECTED[:1]


@pytest.mark.parametrize(
    "pattern",
    [b"\xfe\x55", b"\xfe\x55\x14\x64\x0a\x00\xff", b"\xfe\x55\x14\x64\x0a\x00\x00"],
    ids=["headers", "long-promises", "empty-frames-without-footer"],
)
def test_the_buffer_stays_bounded_on_header_like_garbage(pattern: bytes) -> None:
    noise = pattern * (64 * 1024 // len(pattern))
    reader = FrameReader()
    for start in range(0, len(noise), 1000):
        assert frames_only(reader.feed(noise[start : start + 1000])) == []
        assert len(reader.pending) <= reader.limit
    assert frames_only(reader.feed(BATTERY)) == EXPECTED[:1]


# --------------------------------------------------------------------------------------
# Directions, and what the reader skips
# --------------------------------------------------------------------------------------


def test_replies_and_requests_are_told_apart_by_their_addresses() -> None:
    assert frame.parse_frame(STATUS).is_reply
    assert not frame.parse_frame(STATUS).is_request
    echoed = frame.parse_frame(frame.request(0x0C))
    assert echoed.is_request and not echoed.is_reply
    stranger = frame.parse_frame(Frame(0x0C, b"", source=0x01, destination=0x02).encode())
    assert not stranger.is_reply and not stranger.is_request


def test_a_wrong_footer_is_named() -> None:
    with pytest.raises(frame.MalformedFrame, match="footer is 0xaf, not 0xae"):
        frame.parse_frame(STATUS[:-1] + b"\xaf")


def skipped_by(stream: bytes) -> tuple[list[Item], list[tuple[int, bytes, str | None]]]:
    runs: list[tuple[int, bytes, str | None]] = []
    reader = FrameReader(on_skip=lambda at, data, why: runs.append((at, data, why)))
    items = reader.feed(stream)
    items += reader.finish()
    return items, runs


def test_the_reader_tells_of_every_byte_it_skips() -> None:
    items, runs = skipped_by(b"\x01\x02" + STATUS + b"\x03\x04\x05")
    assert items == [EXPECTED[1]]
    assert [(at, data) for at, data, _ in runs] == [(0, b"\x01\x02"), (15, b"\x03\x04\x05")]


def test_a_frame_with_a_wrong_footer_is_skipped_with_the_reason() -> None:
    items, runs = skipped_by(STATUS[:-1] + b"\xaf")
    assert items == []
    assert runs[0][0] == 0 and "footer is 0xaf" in str(runs[0][2])
    assert sum(len(data) for _, data, _ in runs) == len(STATUS)


def test_a_bad_checksum_frame_behind_a_false_header_is_reported() -> None:
    false_header = b"\xfe\x55\x14\x64\x0a\x00\xff"  # announces 264 bytes that never come
    items, runs = skipped_by(false_header + SYSTEM_INFO_BAD)
    assert len(items) == 1 and isinstance(items[0], BadChecksum)
    assert items[0].frame == SYSTEM_INFO_BAD
    assert [(at, data) for at, data, _ in runs] == [(0, false_header)]


def test_a_frame_cut_at_the_end_of_the_stream_is_truncated_not_skipped() -> None:
    items, runs = skipped_by(STATUS + BATTERY[:10])
    assert items[0] == EXPECTED[1]
    assert isinstance(items[1], frame.TruncatedFrame) and items[1].got == 10
    assert runs == []


# --------------------------------------------------------------------------------------
# RC4 frames (the cloud link)
# --------------------------------------------------------------------------------------

# The vendor cloud's capture: a plain 0x98 query, then the same query encrypted.
CLOUD_PLAIN = bytes.fromhex("fe556414980000" "4cae")
CLOUD_RC4 = bytes.fromhex("759ab0f98a066885fc")


def rc4_reader() -> FrameReader:
    return FrameReader(rc4=True)


def test_the_captured_rc4_query_is_the_plain_one_encrypted() -> None:
    assert rc4.crypt(CLOUD_PLAIN) == CLOUD_RC4
    assert rc4.crypt(CLOUD_RC4) == CLOUD_PLAIN
    assert frame.request(0x98, rc4=True) == CLOUD_RC4
    assert CLOUD_RC4[:2] == frame.RC4_HEADER


def test_the_keystream_is_rc4() -> None:
    # RFC 6229's first test vector: key 0x0102030405, keystream from offset 0
    assert rc4.keystream(bytes.fromhex("0102030405"), 16) == bytes.fromhex(
        "b2396305f03dc027ccc3524a0a1118a8")


def test_the_cloud_capture_reads_as_two_queries_one_of_them_rc4() -> None:
    items = read([CLOUD_PLAIN + CLOUD_RC4], rc4_reader())
    assert [(f.command, f.rc4, f.is_request) for f in frames_only(items)] == [
        (0x98, False, True), (0x98, True, True)]
    assert len(items) == 2


def test_a_plain_reader_skips_rc4_frames() -> None:
    assert read([CLOUD_RC4 + STATUS]) == [EXPECTED[1]]


def test_an_rc4_frame_encodes_back_to_its_bytes() -> None:
    encrypted = frame.reply(0x0A, BATTERY[7:-2], rc4=True)
    (item,) = read([encrypted], rc4_reader())
    assert isinstance(item, Frame) and item.rc4
    assert item.encode() == encrypted
    assert (item.command, item.payload) == (0x0A, BATTERY[7:-2])


RC4_STREAM = b"".join(rc4.crypt(f) for f in (BATTERY, STATUS, LINKS))


@settings(max_examples=200)
@given(
    encrypted=st.lists(st.booleans(), min_size=3, max_size=3),
    pieces=st.lists(
        st.one_of(
            st.sampled_from([*GARBAGE, b"\x75", b"\x75\x9a", b"\x75\x9a\xb0\xf9\x8a\x06\xff",
                             rc4.crypt(STATUS)[:-1] + b"\x00"]),
            st.binary(max_size=20).filter(lambda b: b"\xfe" not in b and b"\x75" not in b),
        ),
        min_size=4,
        max_size=4,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_plain_and_rc4_frames_mixed_survive_any_garbage_and_chunking(
        encrypted: list[bool], pieces: list[bytes], cuts: list[int]) -> None:
    frames = [rc4.crypt(f) if e else f for f, e in zip((BATTERY, STATUS, LINKS), encrypted,
                                                          strict=True)]
    stream = pieces[0] + frames[0] + pieces[1] + frames[1] + pieces[2] + frames[2] + pieces[3]
    items = read(split(stream, [c for c in cuts if c <= len(stream)]), rc4_reader())
    got = frames_only(items)
    assert [f.rc4 for f in got] == encrypted
    assert [replace(f, rc4=False) for f in got] == EXPECTED


def test_an_rc4_frame_with_a_bad_checksum_is_reported_and_reading_goes_on() -> None:
    bad = rc4.crypt(SYSTEM_INFO_BAD)
    stream = bad + rc4.crypt(STATUS)
    for cut in range(len(stream) + 1):
        items = read(split(stream, [cut]), rc4_reader())
        assert len(items) == 2, cut
        assert isinstance(items[0], BadChecksum)
        assert (items[0].carried, items[0].computed) == (0x96, 0xE0)
        assert isinstance(items[1], Frame) and items[1].rc4 and items[1].command == 0x0C


def test_a_cut_rc4_frame_is_truncated_at_its_real_length() -> None:
    reader = rc4_reader()
    assert reader.feed(RC4_STREAM[:10]) == []
    (cut,) = reader.finish()
    assert isinstance(cut, frame.TruncatedFrame)
    assert (cut.expected, cut.got) == (len(BATTERY), 10)


def test_rc4_frames_one_byte_at_a_time() -> None:
    reader = rc4_reader()
    items: list[Item] = []
    for byte in RC4_STREAM:
        items += reader.feed(bytes([byte]))
    assert [replace(f, rc4=False) for f in frames_only(items)] == EXPECTED
    assert reader.pending == b""
