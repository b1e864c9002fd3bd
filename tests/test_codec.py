"""Decoding a chunk into a caller's buffer (what a pull does) accepts and refuses exactly
the payloads :func:`decode_verified` does, and fills the buffer with the same bytes."""

from __future__ import annotations

import zstandard
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg.content.codec import Codec, decode_verified, decode_verified_into
from casreg.errors import IntegrityError

WITH_SIZE = zstandard.ZstdCompressor(level=3, write_content_size=True)
NO_SIZE = zstandard.ZstdCompressor(level=3, write_content_size=False)


def both(codec: int, stored: bytes, raw_size: int, digest: bytes) -> tuple[bytes | None, bytes | None]:
    """What each decoder gives (``None``: it refused with IntegrityError)."""
    try:
        a: bytes | None = bytes(decode_verified(codec, stored, raw_size, digest))
    except IntegrityError:
        a = None
    out = memoryview(bytearray(raw_size))
    try:
        decode_verified_into(codec, stored, out, digest)
        b: bytes | None = bytes(out)
    except IntegrityError:
        b = None
    return a, b


payloads = st.binary(min_size=1, max_size=3000).map(lambda b: b + bytes(len(b) * 3))  # compressible


@settings(max_examples=300, deadline=None)
@given(raw=payloads, other=payloads, how=st.sampled_from(
    ["genuine", "no-size", "truncated", "flipped", "trailing", "two-frames", "other-frame", "bigger", "raw"]),
    at=st.integers(min_value=0, max_value=10_000), junk=st.binary(min_size=1, max_size=20))
def test_into_agrees_with_decode_verified(raw: bytes, other: bytes, how: str, at: int, junk: bytes) -> None:
    frame = WITH_SIZE.compress(raw)
    stored = {
        "genuine": frame,
        "no-size": NO_SIZE.compress(raw),
        "truncated": frame[:at % max(len(frame), 1)],
        "flipped": bytes(b ^ (0x55 if i == at % len(frame) else 0) for i, b in enumerate(frame)),
        "trailing": frame + junk,
        "two-frames": frame + WITH_SIZE.compress(other),
        "other-frame": WITH_SIZE.compress(other),
        "bigger": NO_SIZE.compress(raw + junk),
        "raw": raw,
    }[how]
    codec = Codec.RAW if how == "raw" else Codec.ZSTD
    a, b = both(codec, stored, len(raw), blake3(raw).digest())
    assert a == b
    if how in ("genuine", "no-size", "raw"):
        assert b == raw


def test_a_wrong_digest_is_refused_on_either_path() -> None:
    raw = bytes(1000) + b"x"
    for codec, stored in ((Codec.ZSTD, WITH_SIZE.compress(raw)), (Codec.RAW, raw)):
        assert both(codec, stored, len(raw), blake3(b"other").digest()) == (None, None)


def test_an_unknown_codec_is_refused() -> None:
    assert both(7, b"abc", 3, blake3(b"abc").digest()) == (None, None)
