"""RC4 as the inverter's cloud link uses it.

On that link a frame is either plain or encrypted with RC4 under :data:`KEY`, the cipher
started afresh for every frame. Every encrypted frame is therefore XORed with the same
keystream from its first byte on: :func:`crypt` is that XOR (it encrypts and decrypts),
and the encrypted header is always the same two bytes, which is how a reader finds frame
boundaries in the ciphertext (see :class:`~.frame.FrameReader`).
"""

from __future__ import annotations

KEY = b"Sermatec2019@Gsstes2019"
"""The key published in the community's Sermatec notes."""


def keystream(key: bytes, size: int) -> bytes:
    """The first ``size`` bytes that RC4 generates from ``key``."""
    state = list(range(256))
    j = 0
    for i in range(256):  # key scheduling
        j = (j + state[i] + key[i % len(key)]) & 0xFF
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for _ in range(size):  # output generation
        i = (i + 1) & 0xFF
        j = (j + state[i]) & 0xFF
        state[i], state[j] = state[j], state[i]
        out.append(state[(state[i] + state[j]) & 0xFF])
    return bytes(out)


STREAM_SIZE = 264  # the longest frame: 9 bytes of framing and 255 of payload
_STREAM = keystream(KEY, STREAM_SIZE)


def crypt(data: bytes) -> bytes:
    """One frame (at most 264 bytes) encrypted, or decrypted: RC4 is its own inverse."""
    if len(data) > STREAM_SIZE:
        raise ValueError(f"{len(data)} bytes is longer than any frame ({STREAM_SIZE})")
    size = len(data)
    mixed = int.from_bytes(data, "big") ^ int.from_bytes(_STREAM[:size], "big")
    return mixed.to_bytes(size, "big")


def key_byte(position: int) -> int:
    """The keystream byte that encrypts byte ``position`` of every frame."""
    return _STREAM[position]
