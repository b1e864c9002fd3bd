"""The fast paths of the per-chunk codecs (casreg/content/planes.py, codec.py, delta.py):
the whole-array plane split and join at every alignment of source and destination, and the
checks that only want a verdict (``check_decodes``, ``decode_planes_parts``,
``check_delta``: per-thread buffers, no copy of the chunk) accept and refuse exactly what
the decoders that return the bytes accept and refuse."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator

import numpy as np
import pytest
import zstandard
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st
from payload_damage import damage
from test_planes import bf16_weights, reference_decode  # the PLANES spec decoder (docs/FORMAT.md §4.1)

import casreg.content.codec as codec_module
import casreg.content.planes as planes_module
from casreg.content.codec import (
    Codec,
    FloatHint,
    check_decodes,
    check_decodes_to,
    decode,
    decode_into,
    decode_verified,
    decode_verified_into,
    encode,
    encode_many,
    first_not_decoding_to,
)
from casreg.content.delta import Piece, check_delta, decode_delta, encode_delta
from casreg.content.planes import MIN_ELEMENTS, decode_planes_into, decode_planes_parts, encode_planes
from casreg.errors import IntegrityError


def _at(data: bytes, offset: int) -> memoryview:
    """``data`` at ``offset`` bytes into a buffer of its own (elements unaligned when odd)."""
    buf = memoryview(bytearray(len(data) + 8))
    buf[offset:offset + len(data)] = data
    return buf[offset:offset + len(data)]


def _verdict(fn: object) -> str:
    try:
        fn()  # type: ignore[operator]
    except IntegrityError:
        return "refused"
    return "accepted"


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(min_size=4 * MIN_ELEMENTS + 3, max_size=6000), width=st.sampled_from([2, 4]),
       head=st.integers(0, 3), src=st.integers(0, 7), dst=st.integers(0, 7), floats=st.booleans())
def test_planes_round_trip_at_every_alignment(raw: bytes, width: int, head: int, src: int, dst: int,
                                              floats: bool) -> None:
    head %= width
    if floats:
        raw = raw[:5] + bf16_weights(len(raw) // 2, seed=len(raw))
    payload = encode_planes(_at(raw, src), width, head)
    assert payload is not None
    assert payload == encode_planes(raw, width, head)  # the same bytes wherever the chunk lies
    assert reference_decode(payload, len(raw)) == raw  # decoded from the spec alone
    out = _at(b"\xa5" * len(raw), dst)
    decode_planes_into(payload, out)
    assert bytes(out) == raw
    assert b"".join(bytes(p) for p in decode_planes_parts(payload, len(raw))) == raw


def test_planes_fp32_and_bf16_split_into_the_rotated_bytes() -> None:
    """Plane i holds byte i of each element rotated left by one bit, computed here the
    slow way: the exponent fills the top plane, the sign lands in plane 0's low bit."""
    for width, dtype in ((2, "<u2"), (4, "<u4")):
        x = np.random.default_rng(width).integers(0, 1 << (8 * width), 1000, dtype=np.uint64).astype(dtype)
        payload = encode_planes(x.tobytes(), width, 0)
        assert payload is not None
        rotated = [((int(v) << 1) | (int(v) >> (8 * width - 1))) & ((1 << (8 * width)) - 1) for v in x]
        pos = 3
        for i in range(width):
            mode, size = struct.unpack_from("<BI", payload, pos)
            pos += 5
            if mode == 0:
                assert payload[pos:pos + size] == bytes((r >> (8 * i)) & 0xFF for r in rotated)
            pos += size


@settings(max_examples=200, deadline=None)
@given(how=st.sampled_from(["flip", "truncate", "trailing", "header", "size", "mode", "digest"]),
       at=st.integers(0, 1 << 20), value=st.integers(0, 255), junk=st.binary(min_size=1, max_size=9),
       codec=st.sampled_from([Codec.PLANES, Codec.ZSTD, Codec.RAW]))
def test_check_decodes_gives_the_verdict_of_decode_verified(how: str, at: int, value: int, junk: bytes,
                                                             codec: Codec) -> None:
    raw = bf16_weights(3000, seed=7)[:5999]
    payload = bytearray(encode_planes(raw, 2, 1) or b"") if codec == Codec.PLANES else bytearray(
        encode(raw, 3)[1] if codec == Codec.ZSTD else raw)
    digest = blake3(raw).digest()
    payload = damage(payload, how, at, value, junk, header=3)
    if how == "size" and codec == Codec.PLANES:
        struct.pack_into("<I", payload, 3 + 2 + 1, at)
    elif how == "mode" and codec == Codec.PLANES:
        payload[3 + 2] = value
    elif how == "digest":
        digest = bytes(32)
    stored = bytes(payload)
    expected = _verdict(lambda: decode_verified(codec, stored, len(raw), digest))
    assert _verdict(lambda: check_decodes(codec, stored, len(raw), digest)) == expected
    if how == "digest":
        assert expected == "refused"


@settings(max_examples=200, deadline=None)
@given(how=st.sampled_from(["flip", "truncate", "trailing", "header", "size", "mode", "other bytes"]),
       at=st.integers(0, 1 << 20), value=st.integers(0, 255), junk=st.binary(min_size=1, max_size=9),
       codec=st.sampled_from([Codec.PLANES, Codec.ZSTD, Codec.RAW]), offset=st.integers(0, 7),
       compare=st.sampled_from(["memcmp", "hash"]), as_bytes=st.booleans())
def test_check_decodes_to_accepts_exactly_what_decodes_to_the_chunk(
        how: str, at: int, value: int, junk: bytes, codec: Codec, offset: int, compare: str, as_bytes: bool) -> None:
    """The check before write by comparison (``check_decodes_to``, the digest taken of the
    chunk by the caller): a payload passes if and only if it decodes to exactly the chunk's
    bytes, whether they are compared (memcmp, where the C loops are built; ``bytes`` ==)
    or hashed, and wherever the chunk lies."""
    raw = bf16_weights(3000, seed=7)[:5999]
    payload = bytearray(encode_planes(raw, 2, 1) or b"") if codec == Codec.PLANES else bytearray(
        encode(raw, 3)[1] if codec == Codec.ZSTD else raw)
    digest = blake3(raw).digest()
    chunk: bytes | memoryview = raw if as_bytes else _at(raw, offset).toreadonly()
    if how == "other bytes":  # a right payload of other bytes: the chunk differs in one bit
        other = bytearray(raw)
        other[at % len(other)] ^= 1 << (value % 8)
        chunk, digest = bytes(other), blake3(bytes(other)).digest()
    else:
        payload = damage(payload, how, at, value, junk, header=3)
        if how == "size" and codec == Codec.PLANES:
            struct.pack_into("<I", payload, 3 + 2 + 1, at)
        elif how == "mode" and codec == Codec.PLANES:
            payload[3 + 2] = value
    stored = bytes(payload)
    try:
        expected = "accepted" if bytes(decode(codec, stored, len(raw))) == bytes(chunk) else "refused"
    except IntegrityError:
        expected = "refused"
    same = codec_module.same_bytes
    if compare == "hash":
        codec_module.same_bytes = None
    try:
        assert _verdict(lambda: check_decodes_to(codec, stored, chunk, digest)) == expected
    finally:
        codec_module.same_bytes = same
    if how == "other bytes":
        assert expected == "refused"


def test_check_decodes_reuses_its_buffer_across_sizes() -> None:
    """A large chunk after a small one, then a small one again: each is checked against
    its own bytes, never against what an earlier chunk left in the buffer."""
    for n in (600, 5000, 700, 5000):
        raw = bf16_weights(n, seed=n)
        codec, stored = encode(raw, 3, (2, 0))
        assert codec == Codec.PLANES
        check_decodes(codec, stored, len(raw), blake3(raw).digest())
        with pytest.raises(IntegrityError):
            check_decodes(codec, stored, len(raw), blake3(raw[:-1] + b"\0").digest())


@settings(max_examples=60, deadline=None)
@given(flip=st.integers(-1, 1 << 16), pieces=st.integers(1, 3), seed=st.integers(0, 1 << 16))
def test_check_delta_gives_the_verdict_of_decode_delta(flip: int, pieces: int, seed: int) -> None:
    base = bf16_weights(4000, seed=seed)
    rng = np.random.default_rng(seed)
    new = (np.frombuffer(base, "<u2") + rng.integers(0, 3, 4000).astype("<u2")).astype("<u2").tobytes()
    cut = [len(base) * k // pieces for k in range(pieces + 1)]
    parts = [base[cut[k]:cut[k + 1]] for k in range(pieces)]
    digests = [blake3(p).digest() for p in parts]
    refs = [Piece(d, 0, len(p)) for d, p in zip(digests, parts)]
    payload = bytearray(encode_delta(new, refs, parts, lambda r: encode(r, 3, (2, 0), residual=True), (2, 0)))
    if flip >= 0:
        payload[flip % len(payload)] ^= 1 << (flip % 8)
    stored = bytes(payload)
    chunks = dict(zip(digests, parts))

    def bases(d: bytes) -> tuple[bytes, bool]:  # as a real base source: a chunk it lacks is an IntegrityError
        if d not in chunks:
            raise IntegrityError(f"no chunk blake3:{d.hex()}")
        return chunks[d], False
    digest = blake3(new).digest()
    expected = _verdict(lambda: decode_delta(stored, len(new), digest, bases))
    assert _verdict(lambda: check_delta(stored, len(new), digest, bases)) == expected
    assert _verdict(lambda: check_delta(stored, len(new), digest, bases, _at(new, seed % 8))) == expected
    wrong = bytearray(new)
    wrong[seed % len(wrong)] ^= 0x10  # the bytes compared with are not what it decodes to
    assert _verdict(lambda: check_delta(stored, len(new), blake3(wrong).digest(), bases, bytes(wrong))) == "refused"
    if flip < 0:
        assert expected == "accepted"
        assert bytes(decode_delta(stored, len(new), digest, bases)) == new


def test_check_delta_refuses_a_base_that_is_not_the_one_coded_against() -> None:
    base, other = bf16_weights(3000, seed=1), bf16_weights(3000, seed=2)
    new = (np.frombuffer(base, "<u2") + np.uint16(1)).astype("<u2").tobytes()
    d = blake3(base).digest()
    payload = encode_delta(new, [Piece(d, 0, len(base))], [base], lambda r: encode(r, 3, (2, 0), residual=True), (2, 0))
    check_delta(payload, len(new), blake3(new).digest(), lambda _: (base, False))
    with pytest.raises(IntegrityError):
        check_delta(payload, len(new), blake3(new).digest(), lambda _: (other, False))


def test_exponent_planes_are_coded_without_the_match_finder_and_decode_anywhere() -> None:
    """The exponent plane of weights is coded with zstd's advanced parameters (literals
    only, in effect) when zstandard's cffi backend is there: its frame decodes with any
    zstd decoder, the payload with the spec's decoder, and it is no larger than the plain
    PLANE_PARAMS frame; a delta's residual keeps the match finder (runs of zeros)."""
    import threading

    import zstandard

    from casreg.content import planes

    raw = bf16_weights(1 << 18, seed=3)
    x = planes._elements(memoryview(raw), 2, 0, len(raw) // 2)
    exponents = bytes(planes._split_plane(x, 1))
    coder = planes._exponent_coder()
    if coder is None:
        pytest.skip("zstandard's cffi backend is not available here: PLANE_PARAMS code every plane")
    fast = coder.compress(memoryview(exponents))
    assert fast is not None
    assert zstandard.ZstdDecompressor().decompress(fast) == exponents
    assert len(fast) <= len(planes._compressor().compress(exponents)) * 1.01
    fast_payload = encode_planes(raw, 2, 0)
    residual_payload = encode_planes(raw, 2, 0, residual=True)
    assert fast_payload is not None and residual_payload is not None
    assert fast_payload != residual_payload  # the exponent frames differ ...
    assert reference_decode(fast_payload, len(raw)) == reference_decode(residual_payload, len(raw)) == raw

    got: list[bytes | None] = []  # ... and a thread without the cffi coder writes what the residual path writes

    def without_coder() -> None:
        planes._local.e = None
        got.append(encode_planes(raw, 2, 0))

    t = threading.Thread(target=without_coder)
    t.start()
    t.join()
    assert got == [residual_payload]


def test_a_zstd_frame_whose_last_block_is_not_marked_is_refused_by_every_path() -> None:
    """Clearing the last block's Last_Block bit leaves every byte of the chunk in the frame:
    a stream reader filled a buffer from it without complaint, where the one-shot decoder
    refuses it (hypothesis found it: a flip at byte 7). Every path refuses it now."""
    raw = bf16_weights(3000, seed=7)[:5999]
    codec, stored = encode(raw, 3)
    assert codec == Codec.ZSTD
    header = zstandard.frame_header_size(stored)
    assert stored[header] & 1  # one block, marked last
    broken = bytearray(stored)
    broken[header] &= 0xFE
    payload, digest = bytes(broken), blake3(raw).digest()
    out = memoryview(bytearray(len(raw)))
    for check in (lambda: decode_verified(codec, payload, len(raw), digest),
                  lambda: decode_verified_into(codec, payload, out, digest),
                  lambda: decode_into(codec, payload, out),
                  lambda: check_decodes(codec, payload, len(raw), digest),
                  lambda: check_decodes_to(codec, payload, _at(raw, 1).toreadonly(), digest),
                  lambda: check_decodes_to(codec, payload, raw, digest)):
        assert _verdict(check) == "refused"
    good = encode(raw[::-1], 3)  # the small files' batch check, whichever way it decodes
    for way in DECODED:
        with _decoded(way):
            assert first_not_decoding_to([(good[0], bytes(good[1])), (codec, payload)], [raw[::-1], raw],
                                         [blake3(raw[::-1]).digest(), digest]) == 1



chunks = st.lists(st.one_of(st.binary(min_size=1, max_size=2000),  # incompressible: RAW
                            st.binary(min_size=1, max_size=500).map(lambda b: b * 7)),  # ZSTD
                  min_size=0, max_size=12)


#: A small files' batch with hints, as a push codes it: bf16 weights cut at either phase,
#: repetitive and arbitrary bytes, each with no hint or any hint (PLANES is a bijection on
#: any bytes: a wrong hint costs bytes, never a wrong chunk), some too short for PLANES.
hinted = st.lists(
    st.tuples(st.one_of(st.builds(lambda n, seed, cut: bf16_weights(n, seed)[cut:],
                                  st.integers(100, 12_000), st.integers(0, 9), st.integers(0, 3)),
                        st.binary(min_size=1, max_size=500).map(lambda b: b * 40),
                        st.binary(min_size=1, max_size=3000)),
              st.one_of(st.none(), st.sampled_from([(2, 0), (2, 1), (4, 0), (4, 1), (4, 2), (4, 3)]))),
    min_size=0, max_size=10)


class _PlanesOneAtATime:
    """The planes' zstd context as a backend without the call for many frames has it."""

    def __init__(self) -> None:
        self.compress = zstandard.ZstdCompressor(compression_params=planes_module.PLANE_PARAMS).compress


class _OneAtATime:
    """A zstd context as a backend without the calls for many frames has (the cffi one)."""

    def __init__(self, level: int | None = None) -> None:
        if level is None:
            self.decompress = zstandard.ZstdDecompressor().decompress
        else:
            self.compress = zstandard.ZstdCompressor(level=level, write_content_size=True).compress


#: How ``first_not_decoding_to`` decodes its frames: together (``multi_decompress_to_buffer``,
#: compared with the C loops' ``same``), one at a time (a backend without the call), or one
#: at a time and compared as ``bytes`` (no C loops).
DECODED = ("together", "one at a time", "without the C loops")


@contextlib.contextmanager
def _decoded(way: str) -> Iterator[None]:
    decompressor, same = codec_module._decompressor, codec_module.same_bytes
    if way != "together":
        codec_module._decompressor = _OneAtATime  # type: ignore[assignment]
    if way == "without the C loops":
        codec_module.same_bytes = None
    try:
        yield
    finally:
        codec_module._decompressor, codec_module.same_bytes = decompressor, same


@settings(max_examples=200, deadline=None)
@given(raws=chunks, batched=st.booleans())
def test_encode_many_gives_encodes_payloads(raws: list[bytes], batched: bool) -> None:
    """The small files' batch (``encode_many``) stores what :func:`encode` would, byte for
    byte, chunk by chunk (so no golden vector moves), coded in one zstd call or, where the
    backend has no such call, one at a time; and its check passes every such payload."""
    compressor = codec_module._compressor
    if not batched:
        codec_module._compressor = _OneAtATime  # type: ignore[assignment]
    try:
        payloads = encode_many(raws, 3)
    finally:
        codec_module._compressor = compressor
    assert payloads == [(c, bytes(p)) for c, p in (encode(r, 3) for r in raws)]
    for way in DECODED:
        with _decoded(way):
            assert first_not_decoding_to(payloads, raws, [blake3(r).digest() for r in raws]) is None


@settings(max_examples=400, deadline=None)
@given(items=hinted.filter(bool), pick=st.integers(0, 100),
       how=st.sampled_from(["flip", "truncate", "trailing", "header", "other frame", "codec"]),
       at=st.integers(0, 1 << 20), value=st.integers(0, 255), junk=st.binary(min_size=1, max_size=9),
       way=st.sampled_from(DECODED))
def test_the_batch_check_names_the_first_payload_that_does_not_decode_to_its_chunk(
        items: list[tuple[bytes, FloatHint | None]], pick: int, how: str, at: int, value: int, junk: bytes,
        way: str) -> None:
    """``first_not_decoding_to``, the check before write of the small files' batch (RAW,
    ZSTD and PLANES payloads: :data:`hinted`): with one payload damaged anyhow (a zstd
    frame, a plane's frame, mode or size, the PLANES header, another chunk's payload in its
    place, another codec's id), it names that payload unless the damage left it decoding
    to exactly its chunk, whichever way the frames are decoded (:data:`DECODED`)."""
    raws, hints = [raw for raw, _ in items], [hint for _, hint in items]
    payloads = encode_many(raws, 3, hints)
    i = pick % len(raws)
    codec, stored = payloads[i]
    if how == "other frame":
        stored = bytes(encode(raws[i] + b"x" * 9, 3, hints[i], residual=True)[1])
    elif how == "codec":
        codec = Codec.PLANES if codec == Codec.ZSTD else Codec.ZSTD
    else:
        stored = bytes(damage(bytearray(stored), how, at, value, junk, header=min(12, len(stored))))
    payloads[i] = (codec, stored)
    try:
        ok = bytes(decode(codec, stored, len(raws[i]))) == raws[i]
    except IntegrityError:
        ok = False
    with _decoded(way):
        assert first_not_decoding_to(payloads, raws, [blake3(r).digest() for r in raws]) == (None if ok else i)


@settings(max_examples=150, deadline=None)
@given(items=hinted, batched=st.booleans())
def test_encode_many_with_hints_gives_encodes_payloads(items: list[tuple[bytes, FloatHint | None]],
                                                       batched: bool) -> None:
    """With hints, the small files' batch stores what :func:`encode` with ``residual=True``
    (every plane coded with the same zstd context) would, byte for byte: PLANES where the
    hint applies and saves 1%, else zstd or the raw bytes; its planes coded in a few calls
    for the whole batch or, where the backend has no such call, one chunk at a time. Its
    check passes every such payload, whichever way the frames are decoded."""
    raws, hints = [raw for raw, _ in items], [hint for _, hint in items]
    compressor = planes_module._compressor
    if not batched:
        planes_module._compressor = _PlanesOneAtATime  # type: ignore[assignment]
    try:
        payloads = encode_many(raws, 3, hints)
    finally:
        planes_module._compressor = compressor
    assert payloads == [(c, bytes(p)) for c, p in (encode(r, 3, h, residual=True) for r, h in items)]
    assert all(c != Codec.PLANES or h is not None for (c, _), h in zip(payloads, hints))
    for (codec, payload), raw in zip(payloads, raws):
        assert bytes(decode(codec, payload, len(raw))) == raw
        if codec == Codec.PLANES:
            assert reference_decode(payload, len(raw)) == raw  # docs/FORMAT.md §4.1
    for way in DECODED:
        with _decoded(way):
            assert first_not_decoding_to(payloads, raws, [blake3(r).digest() for r in raws]) is None


def test_small_bf16_files_code_as_planes_in_a_batch() -> None:
    """What the batch is for: bf16 weights of a small file store smaller as PLANES than
    as zstd, and text in the same batch stays zstd."""
    raws = [bf16_weights(10_000, seed) for seed in range(4)] + [b'{"token": "w", "id": 7}\n' * 800]
    hints: list[FloatHint | None] = [(2, 0)] * 4 + [None]
    payloads = encode_many(raws, 3, hints)
    assert [c for c, _ in payloads] == [Codec.PLANES] * 4 + [Codec.ZSTD]
    zstd_sizes = [len(p) for _, p in encode_many(raws[:4], 3)]
    assert all(len(p) < 0.93 * z for (_, p), z in zip(payloads, zstd_sizes))  # measured: about 0.85
