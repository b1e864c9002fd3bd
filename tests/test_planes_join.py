"""How the PLANES decoder joins planes back into elements (casreg/content/planes.py's
``_join_planes``) and where a pull decodes them (casreg/content/pull.py): every width,
every length and alignment, blocks of any size, against an independent numpy decoder
and against the join casreg used before (kept here as an oracle); damaged payloads of
several blocks are :class:`IntegrityError`; a pull decodes each run at its file offset
modulo 8, so the elements of a safetensors file are aligned in memory."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard
from blake3 import blake3
from codec_loops import planes_loops  # noqa: F401 (every test runs with the C loops and numpy's)
from hypothesis import given, settings
from hypothesis import strategies as st
from payload_damage import damage

from casreg import Registry
from casreg.content import codec as codec_module
from casreg.content import fetch, planes
from casreg.content.chunking import ChunkParams
from casreg.content.codec import Codec, decode_verified, decode_verified_into
from casreg.content.config import init_config
from casreg.content.planes import MIN_ELEMENTS, decode_planes_into, decode_planes_parts, encode_planes
from casreg.errors import IntegrityError


def numpy_decode(payload: bytes, raw_size: int) -> bytes:
    """docs/FORMAT.md §4.1 with whole-array numpy on 64-bit integers (nothing shared with
    casreg's decoder but the spec): assemble each rotated element from its planes, turn it
    right by one bit."""
    width, head, tail = payload[0], payload[1], payload[2]
    n = (raw_size - head - tail) // width
    pos = 3 + head + tail
    acc = np.zeros(n, np.uint64)
    for i in range(width):
        mode, size = struct.unpack_from("<BI", payload, pos)
        data = payload[pos + 5:pos + 5 + size]
        pos += 5 + size
        plane = np.frombuffer(data if mode == 0 else zstandard.ZstdDecompressor().decompress(data), np.uint8)
        acc |= plane.astype(np.uint64) << np.uint64(8 * i)
    bits = np.uint64(8 * width)
    elements = (acc >> np.uint64(1)) | ((acc & np.uint64(1)) << (bits - np.uint64(1)))
    body = elements.astype(f"<u{width}").tobytes()
    return bytes(payload[3:3 + head]) + body + bytes(payload[3 + head:3 + head + tail])


def old_join(planes_: list[np.ndarray], width: int) -> bytes:
    """The join of casreg up to 636ddb6 (five passes per block, shifts of bytes), whole."""
    uint = np.dtype(f"<u{width}")
    p = planes_
    x = np.left_shift(p[width - 1], 8 * width - 9, dtype=uint)
    for i in range(1, width - 1):
        x |= np.left_shift(p[i], 8 * i - 1, dtype=uint)
    x |= np.left_shift(p[0], 8 * width - 1, dtype=uint)
    x |= np.right_shift(p[0], 1)
    return x.tobytes()


def planes_of(payload: bytes, raw_size: int) -> list[np.ndarray]:
    return planes._decode_planes(payload, raw_size)[1]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), width=st.sampled_from(planes.WIDTHS), head=st.integers(0, 3),
       tail=st.integers(0, 3), extra=st.integers(0, 3000), block=st.sampled_from([8, 24, 256, 1000, 4096]),
       weights=st.booleans())
def test_every_length_and_block_joins_as_the_spec_says(seed: int, width: int, head: int, tail: int, extra: int,
                                                       block: int, weights: bool) -> None:
    """Lengths across many blocks (the block shrunk so that small chunks cross several),
    every head and tail; mantissa-like noise and weight-like bytes (zstd planes)."""
    head, tail = head % width, tail % width
    n = MIN_ELEMENTS + extra
    rng = np.random.default_rng(seed)
    if weights:
        body = rng.normal(0, 0.02, n).astype(f"<f{width}").tobytes()
    else:
        body = rng.integers(0, 256, n * width, dtype=np.uint8).tobytes()
    raw = rng.integers(0, 256, head, dtype=np.uint8).tobytes() + body + b"\x7f" * tail
    payload = encode_planes(raw, width, head)
    assert payload is not None
    saved = planes._BLOCK_BYTES
    planes._BLOCK_BYTES = block * width
    try:
        assert numpy_decode(payload, len(raw)) == raw
        assert old_join(planes_of(payload, len(raw)), width) == raw[head:len(raw) - tail]
        for offset in range(8):  # aligned or not in the output buffer: each path
            buf = bytearray(len(raw) + 8)
            out = memoryview(buf)[offset:offset + len(raw)]
            decode_planes_into(payload, out)
            assert bytes(out) == raw, offset
        assert b"".join(bytes(p) for p in decode_planes_parts(payload, len(raw))) == raw
    finally:
        planes._BLOCK_BYTES = saved


@pytest.mark.parametrize("width", planes.WIDTHS)
def test_chunks_of_several_real_blocks_decode(width: int) -> None:
    """At the real block size: a 4 MiB-like chunk spans many blocks and ends in a partial one."""
    n = 3 * planes._BLOCK_BYTES // width + 12_345
    rng = np.random.default_rng(width)
    raw = b"\x01" + rng.normal(0, 0.02, n).astype(f"<f{width}").tobytes() + b"\x02"
    payload = encode_planes(raw, width, 1)
    assert payload is not None
    assert numpy_decode(payload, len(raw)) == raw
    for offset in (0, 1, 3):
        out = memoryview(bytearray(len(raw) + offset))[offset:]
        decode_verified_into(Codec.PLANES, payload, out, blake3(raw).digest())
        assert bytes(out) == raw


@settings(max_examples=80, deadline=None)
@given(how=st.sampled_from(["flip", "truncate", "trailing", "header", "size", "mode"]),
       at=st.integers(0, 1 << 22), value=st.integers(0, 255), junk=st.binary(min_size=1, max_size=9),
       width=st.sampled_from(planes.WIDTHS))
def test_a_damaged_payload_of_many_blocks_is_an_integrity_error(how: str, at: int, value: int, junk: bytes,
                                                                width: int) -> None:
    n = 2 * planes._BLOCK_BYTES // width + 999
    raw = np.random.default_rng(7).normal(0, 0.02, n).astype(f"<f{width}").tobytes()
    payload = damage(bytearray(encode_planes(raw, width, 0) or b""), how, at, value, junk, header=3)
    if how == "size":
        struct.pack_into("<I", payload, 3 + 1, at)  # plane 0's size field
    elif how == "mode":
        payload[3] = value  # plane 0's mode
    digest = blake3(raw).digest()
    for offset in (0, 1):
        try:
            out = memoryview(bytearray(len(raw) + offset))[offset:]
            decode_verified_into(Codec.PLANES, bytes(payload), out, digest)
            got = bytes(out)
        except IntegrityError:
            got = None
        assert got in (None, raw)  # refused, or a change that changed nothing (a header byte set to itself)
    try:
        again = bytes(decode_verified(Codec.PLANES, bytes(payload), len(raw), digest))
    except IntegrityError:
        return
    assert again == raw


def test_a_pull_decodes_each_run_at_its_file_offset_modulo_8(registry: Registry, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks and small spans: many runs, starting at odd offsets of the file. Every
    PLANES chunk lands at an address congruent to its file offset modulo 8 (so its bf16
    elements, aligned in the file, are aligned in memory), and the file is right."""
    init_config(registry.store, ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10))
    rng = np.random.default_rng(3)
    bf16 = (rng.normal(0, 0.02, 1_200_000).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    header = b'{"w": {"dtype": "BF16", "shape": [1200000], "data_offsets": [0, 2400000]}}'
    header += b" " * (-len(header) % 8)
    src = tmp_path / "m.safetensors"
    src.write_bytes(struct.pack("<Q", len(header)) + header + bf16)
    registry.push("m", src)
    chunks = registry.manifest("m:1").entries[0].chunks
    offsets, pos = {}, 0
    for c in chunks:
        offsets[c.digest] = pos
        pos += c.raw_size
    assert sum(1 for c in chunks if c.codec == Codec.PLANES) >= 10
    seen: list[tuple[int, bytes]] = []
    real = codec_module.decode_planes_into

    def recording(stored: bytes | memoryview, out: memoryview) -> None:
        real(stored, out)
        seen.append((np.frombuffer(out, np.uint8).ctypes.data % 8, blake3(out).digest()))

    monkeypatch.setattr(codec_module, "decode_planes_into", recording)
    monkeypatch.setattr(fetch, "SPAN_BYTES", 100 << 10)  # runs of a few chunks: many run starts
    registry.pull("m:1", tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == src.read_bytes()
    planes_chunks = {c.digest for c in chunks if c.codec == Codec.PLANES}
    assert {d for _, d in seen} == planes_chunks
    assert {offsets[d] % 8 for _, d in seen} != {0}  # the test means something: runs start anywhere
    for address, digest in seen:
        assert address == offsets[digest] % 8
