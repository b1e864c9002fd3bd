"""The DELTA codec (codec 3, casreg/content/delta.py, docs/FORMAT.md §4.2): golden vectors,
an independent decoder written from the spec, round trips of any bytes against any base,
damaged and hostile payloads, what it saves on a fine-tune; and in registries: casreg/4
pushes code against the parent and pull, lazy and casreg:// reads, verify and gc handle
the bases, older formats never write it, damage to a delta or a base is exit 6."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard
from blake3 import blake3
from codec_loops import delta_loops  # noqa: F401 (every test runs with the C loop and numpy's)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from payload_damage import damage
from test_planes import reference_decode  # the PLANES spec decoder (docs/FORMAT.md §4.1)

from casreg import Registry
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.codec import Codec, decode, encode
from casreg.content.config import DELTA_CODEC_FORMATS, REGISTRY_FORMATS, init_config
from casreg.content.delta import (
    DELTA_CODEC,
    MAX_PIECES,
    OP_SUB,
    OP_XOR,
    Piece,
    decode_delta,
    encode_delta,
    parse_header,
    worth_it,
)
from casreg.content.fetch import read_span_stats
from casreg.content.manifest import ChunkRef, Manifest
from casreg.content.packs import decode_index
from casreg.errors import IntegrityError
from casreg.keys import INDEXES, manifest_key, pack_key
from casreg.storage import ByteRange


def spec_decode(payload: bytes, raw_size: int, chunks: dict[bytes, bytes]) -> bytes:
    """docs/FORMAT.md §4.2, written from the text alone (no numpy, no casreg code):
    ``chunks`` maps a base chunk's digest to its raw bytes."""
    op, width, head, inner, count = payload[:5]
    pos = 5
    base = b""
    for _ in range(count):
        digest, offset, length = struct.unpack_from("<32sII", payload, pos)
        pos += 40
        assert length >= 1 and offset + length <= len(chunks[digest])
        base += chunks[digest][offset:offset + length]
    assert len(base) <= raw_size
    base += bytes(raw_size - len(base))
    body = payload[pos:]
    if inner == 0:
        residual = body
    elif inner == 1:
        residual = zstandard.ZstdDecompressor().decompress(body)
    else:
        assert inner == 2
        residual = reference_decode(body, raw_size)
    assert len(residual) == raw_size
    out = bytearray(r ^ b for r, b in zip(residual, base))  # op 0, and the edges of op 1
    if op == 1:
        assert width in (2, 4) and head < width
        bits, half = 8 * width, 1 << (8 * width - 1)
        for k in range((raw_size - head) // width):
            at = head + k * width
            r = int.from_bytes(residual[at:at + width], "little")
            d = r if r < half else -(r - half) - 1
            v = (int.from_bytes(base[at:at + width], "little") + d) % (1 << bits)
            out[at:at + width] = v.to_bytes(width, "little")
    else:
        assert op == 0 and width == 0 and head == 0
    return bytes(out)


def source_of(*chunks: bytes, deltas: frozenset[bytes] = frozenset()):  # noqa: ANN201
    """A BaseSource over ``chunks``, checking each against its digest as readers do."""
    table = {blake3(c).digest(): c for c in chunks}

    def source(digest: bytes) -> tuple[bytes, bool]:
        raw = table.get(digest)
        if raw is None or blake3(raw).digest() != digest:
            raise IntegrityError(f"base blake3:{digest.hex()} is missing")
        return raw, digest in deltas

    return source


def raw_inner(residual: memoryview) -> tuple[int, bytes]:
    return 0, bytes(residual)


def bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype("<f4").view("<u4") >> 16).astype("<u2")


# -- golden vectors --------------------------------------------------------------------------------
GOLDEN_BASE = bytes(range(7, 47))  # one 40-byte base chunk
GOLDEN_RAW = bytes((i * 37 + 5) % 256 for i in range(24))


def test_golden_xor_payload_is_pinned() -> None:
    piece = Piece(blake3(GOLDEN_BASE).digest(), 3, 20)
    payload = encode_delta(GOLDEN_RAW, [piece], [GOLDEN_BASE[3:23]], raw_inner)
    assert payload.hex() == GOLDEN_XOR_HEX
    chunks = {piece.digest: GOLDEN_BASE}
    assert spec_decode(payload, len(GOLDEN_RAW), chunks) == GOLDEN_RAW
    assert bytes(decode_delta(payload, len(GOLDEN_RAW), blake3(GOLDEN_RAW).digest(), source_of(GOLDEN_BASE))) \
        == GOLDEN_RAW


def test_golden_sub_payload_is_pinned() -> None:
    """op 1, width 2, head 1: the residual's elements are sign-magnitude differences."""
    base = bytes([0x11]) + b"".join((0x3C00 + 3 * k).to_bytes(2, "little") for k in range(11))
    raw = bytes([0x22]) + b"".join((0x3C00 + 3 * k + (k % 3) - 1).to_bytes(2, "little") for k in range(11))
    piece = Piece(blake3(base).digest(), 0, len(base))
    payload = encode_delta(raw, [piece], [base], raw_inner, (2, 1))
    assert payload.hex() == GOLDEN_SUB_HEX
    assert payload[5 + 40:] == bytes([0x33]) + b"".join(
        {0: (1 << 15).to_bytes(2, "little"), 1: bytes(2), 2: (1).to_bytes(2, "little")}[k % 3] for k in range(11))
    assert spec_decode(payload, len(raw), {piece.digest: base}) == raw
    assert bytes(decode_delta(payload, len(raw), blake3(raw).digest(), source_of(base))) == raw


def test_golden_planes_residual_decodes() -> None:
    """A pinned payload whose residual is PLANES-coded (zstd frames inside): any decoder,
    with any zstd version, must give the chunk from it."""
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.02, 600).astype("<f4")
    base = bf16(w).tobytes()
    raw = bf16(w + rng.normal(0, 0.0004, 600).astype("<f4")).tobytes()
    pinned = bytes.fromhex(GOLDEN_PLANES_HEX)
    assert pinned[:5] == bytes([OP_SUB, 2, 0, Codec.PLANES, 1])
    assert spec_decode(pinned, len(raw), {blake3(base).digest(): base}) == raw
    assert bytes(decode_delta(pinned, len(raw), blake3(raw).digest(), source_of(base))) == raw
    fresh = encode_delta(raw, [Piece(blake3(base).digest(), 0, len(base))], [base],
                         lambda r: encode(r, 3, (2, 0)), (2, 0))
    assert len(fresh) < 0.8 * len(encode(raw, 3, (2, 0))[1])  # what delta coding is for


# -- round trips -------------------------------------------------------------------------------------
@settings(max_examples=120, deadline=None)
@given(raw=st.binary(min_size=1, max_size=3000), base=st.binary(min_size=1, max_size=3000),
       cuts=st.lists(st.integers(0, 3000), max_size=4), element=st.sampled_from([None, (2, 0), (2, 1), (4, 0), (4, 3)]),
       inner=st.sampled_from(["raw", "auto"]))
def test_any_bytes_round_trip_against_any_base(raw: bytes, base: bytes, cuts: list[int],
                                               element: tuple[int, int] | None, inner: str) -> None:
    base = base[:len(raw)]
    assume(base != raw)  # a writer never codes a chunk against itself (it is deduplicated)
    digest = blake3(base).digest()
    bounds = sorted({0, len(base), *(c % len(base) for c in cuts)})  # split the base into pieces
    pieces = [Piece(digest, a, b - a) for a, b in zip(bounds, bounds[1:]) if b > a]
    parts = [base[p.offset:p.offset + p.length] for p in pieces]
    code = raw_inner if inner == "raw" else (lambda r: encode(r, 3, element))
    payload = encode_delta(raw, pieces, parts, code, element)
    assert bytes(decode_delta(payload, len(raw), blake3(raw).digest(), source_of(base))) == raw
    assert spec_decode(payload, len(raw), {digest: base}) == raw


def test_fine_tune_of_float_weights_round_trips_and_saves() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.02, 1 << 16).astype("<f4")
    base, raw = w.tobytes(), (w + rng.normal(0, 0.0002, 1 << 16).astype("<f4")).tobytes()
    piece = Piece(blake3(base).digest(), 0, len(base))
    payload = encode_delta(raw, [piece], [base], lambda r: encode(r, 3, (4, 0), residual=True), (4, 0))
    plain = encode(raw, 3, (4, 0))[1]
    assert worth_it(len(payload), len(plain)) and len(payload) < 0.8 * len(plain)
    assert bytes(decode_delta(payload, len(raw), blake3(raw).digest(), source_of(base))) == raw


def test_worth_it_wants_a_margin() -> None:
    assert worth_it(500_000, 1_000_000)
    assert not worth_it(950_000, 1_000_000)  # 5 %: not worth fetching the base
    assert worth_it(7_000, 12_000) and not worth_it(9_000, 12_000)  # 4 KiB at least
    assert not worth_it(1, 4000)  # under the absolute minimum


# -- damage and hostile payloads ----------------------------------------------------------------------
def _payload(element: tuple[int, int] | None = (2, 0)) -> tuple[bytes, bytes, bytes]:
    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.02, 3000).astype("<f4")
    base = bf16(w).tobytes()
    raw = bf16(w + rng.normal(0, 0.001, 3000).astype("<f4")).tobytes()
    payload = encode_delta(raw, [Piece(blake3(base).digest(), 0, len(base))], [base],
                           lambda r: encode(r, 3, element), element)
    return raw, base, payload


@settings(max_examples=150, deadline=None)
@given(how=st.sampled_from(["flip", "truncate", "trailing", "header"]), at=st.integers(0, 1 << 20),
       value=st.integers(0, 255), junk=st.binary(min_size=1, max_size=9))
def test_a_damaged_payload_is_an_integrity_error_never_a_crash(how: str, at: int, value: int, junk: bytes) -> None:
    raw, base, good = _payload()
    payload = damage(bytearray(good), how, at, value, junk, header=5 + 40)
    try:
        got = decode_delta(bytes(payload), len(raw), blake3(raw).digest(), source_of(base))
    except IntegrityError:
        return
    assert bytes(got) == raw  # never wrong bytes: only a change that decodes to the same chunk passes


def test_a_damaged_base_is_an_integrity_error_naming_it() -> None:
    raw, base, payload = _payload()
    damaged = bytearray(base)
    damaged[100] ^= 4
    digest = blake3(base).digest()

    def source(d: bytes) -> tuple[bytes, bool]:  # what a reader does: check the base against its digest
        if blake3(bytes(damaged)).digest() != d:
            raise IntegrityError(f"chunk blake3:{d.hex()}: its bytes do not match the digest")
        return bytes(damaged), False

    with pytest.raises(IntegrityError, match=digest.hex()):
        decode_delta(payload, len(raw), blake3(raw).digest(), source)

    def lying(d: bytes) -> tuple[bytes, bool]:  # even a source that fails to check: the result is checked
        return bytes(damaged), False

    with pytest.raises(IntegrityError, match="do not match the digest"):
        decode_delta(payload, len(raw), blake3(raw).digest(), lying)


def _forge(raw_size: int, pieces: list[tuple[bytes, int, int]], *, op: int = OP_XOR, width: int = 0, head: int = 0,
           inner: int = 0, count: int | None = None, body: bytes | None = None) -> bytes:
    out = struct.pack("<BBBBB", op, width, head, inner, len(pieces) if count is None else count)
    out += b"".join(struct.pack("<32sII", *p) for p in pieces)
    return out + (bytes(raw_size) if body is None else body)


def test_hostile_payloads_fail_cleanly() -> None:
    a, b = b"A" * 64, b"B" * 64
    da, db = blake3(a).digest(), blake3(b).digest()
    target = b"C" * 64
    dt = blake3(target).digest()
    cycle = source_of(a, b, deltas=frozenset({db}))
    cases = {
        "names the chunk itself": (_forge(64, [(dt, 0, 64)]), source_of(a, target)),
        "a missing base": (_forge(64, [(blake3(b"nope").digest(), 0, 64)]), source_of(a)),
        "a base that is a delta (a cycle A->B->A)": (_forge(64, [(db, 0, 64)]), cycle),
        "a range beyond its base": (_forge(64, [(da, 10, 60)]), source_of(a)),
        "pieces larger than the chunk": (_forge(64, [(da, 0, 40), (da, 0, 40)]), source_of(a)),
        "an empty piece": (_forge(64, [(da, 0, 0)]), source_of(a)),
        "no pieces": (_forge(64, []), source_of(a)),
        "too many pieces": (_forge(64, [(da, 0, 1)] * (MAX_PIECES + 1)), source_of(a)),
        "a count beyond the payload": (_forge(64, [(da, 0, 1)], count=9), source_of(a)),
        "an unknown op": (_forge(64, [(da, 0, 64)], op=7), source_of(a)),
        "op 0 with a width": (_forge(64, [(da, 0, 64)], width=2), source_of(a)),
        "op 1 with width 3": (_forge(64, [(da, 0, 64)], op=OP_SUB, width=3), source_of(a)),
        "a delta inside a delta": (_forge(64, [(da, 0, 64)], inner=DELTA_CODEC), source_of(a)),
        "a residual of the wrong size": (_forge(64, [(da, 0, 64)], body=bytes(63)), source_of(a)),
        "a residual claiming 4 GiB": (_forge(64, [(da, 0, 64)], inner=1,
                                             body=zstandard.ZstdCompressor().compress(bytes(1 << 20))), source_of(a)),
        "a truncated header": (b"\x00\x00", source_of(a)),
    }
    for why, (payload, source) in cases.items():
        with pytest.raises(IntegrityError):
            decode_delta(payload, 64, dt, source)
            pytest.fail(why)
    with pytest.raises(IntegrityError, match="itself a delta"):
        decode_delta(cases["a base that is a delta (a cycle A->B->A)"][0], 64, dt, cycle)
    with pytest.raises(IntegrityError, match="the chunk itself"):
        decode_delta(cases["names the chunk itself"][0], 64, dt, source_of(target))


def test_header_lists_each_base_once() -> None:
    a, b = b"a" * 30, b"b" * 30
    da, db = blake3(a).digest(), blake3(b).digest()
    header = parse_header(_forge(80, [(da, 0, 10), (db, 0, 30), (da, 10, 20)]), 80)
    assert header.bases == [da, db] and header.body == 5 + 3 * 40


# -- registries ---------------------------------------------------------------------------------------
def test_a_delta_is_never_decoded_without_its_bases() -> None:
    assert int(Codec.DELTA) == DELTA_CODEC == 3
    raw, _, payload = _payload()
    with pytest.raises(IntegrityError, match="without its bases"):
        decode(Codec.DELTA, payload, len(raw))


def _weights(tmp: Path, name: str, seed: int, base: np.ndarray | None = None) -> tuple[Path, np.ndarray]:
    """A safetensors file of one 1024x1024 BF16 tensor and one F32 tensor: fresh, or
    ``base`` plus a fine-tune-like update."""
    import ml_dtypes
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (1024, 1024)).astype("<f4") if base is None else \
        base + rng.normal(0, 0.0004, base.shape).astype("<f4")
    path = tmp / name
    save_file({"b": w.astype(ml_dtypes.bfloat16), "f": w[:256]}, path)
    return path, w


def _delta_registry(reg: Registry, tmp: Path) -> tuple[Path, Path]:
    """Two versions of ``m`` in a casreg/4 registry, the second coded against the first."""
    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/4")
    first, w = _weights(tmp, "m.safetensors", 1)
    reg.push("m", first)
    second, _ = _weights(tmp, "m2.safetensors", 2, w)
    reg.push("m", second)  # the parent is implied: the newest version of m
    return first, second


def _codecs(reg: Registry, ref: str) -> list[int]:
    return [c.codec for e in reg.manifest(reg.resolve(ref)).entries for c in e.chunks]


def test_casreg4_codes_against_the_parent_and_reads_back_verified(registry: Registry, tmp_path: Path) -> None:
    first, second = _delta_registry(registry, tmp_path)
    assert DELTA_CODEC in _codecs(registry, "m:2") and DELTA_CODEC not in _codecs(registry, "m:1")
    m2 = registry.manifest(registry.resolve("m:2"))
    assert m2.bases and {b.digest for b in m2.bases} <= {c.digest for e in
                                                         registry.manifest(registry.resolve("m:1")).entries
                                                         for c in e.chunks}
    assert registry.show("m:2").stored_bytes < 0.85 * registry.show("m:1").stored_bytes
    registry.pull("m:2", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == second.read_bytes()
    with registry.open_safetensors("m:2") as f:  # lazy reads decode deltas too
        from safetensors.numpy import load_file

        want = load_file(second)
        assert np.array_equal(f.get_tensor("f"), want["f"])
        assert f.get_tensor("b").tobytes() == want["b"].tobytes()
    from casreg.fs import CasregFileSystem

    fs = CasregFileSystem(registry=registry)
    assert fs.cat_file("casreg://m:2", 1000, 300_000) == second.read_bytes()[1000:300_000]
    assert registry.verify().problems == []


def test_parts_of_a_delta_coded_version_read_back(tmp_path: Path) -> None:
    """pull of a path or --include, snapshot and fsspec get build a part of the manifest:
    its delta chunks still find their bases."""
    from casreg.fs import CasregFileSystem

    reg = Registry(tmp_path / "reg")
    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/4")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    _, w = _weights(tmp_path / "v1", "model.safetensors", 1)
    (tmp_path / "v1" / "config.json").write_text("{}")
    reg.push("m", tmp_path / "v1")
    want = _weights(tmp_path / "v2", "model.safetensors", 2, w)[0].read_bytes()
    (tmp_path / "v2" / "config.json").write_text("{}")
    reg.push("m", tmp_path / "v2")
    assert DELTA_CODEC in _codecs(reg, "m:2")
    reg.pull("m:2", tmp_path / "inc", include="*.safetensors")
    assert (tmp_path / "inc" / "model.safetensors").read_bytes() == want
    reg.pull("m:2/model.safetensors", tmp_path / "one.safetensors")
    assert (tmp_path / "one.safetensors").read_bytes() == want
    snap = reg.snapshot("m:2", cache_dir=tmp_path / "snaps")
    assert (snap / "model.safetensors").read_bytes() == want
    fs = CasregFileSystem(registry=reg)
    fs.get("casreg://m:2/model.safetensors", str(tmp_path / "got.safetensors"))
    assert (tmp_path / "got.safetensors").read_bytes() == want
    fs.get("casreg://m:2", str(tmp_path / "tree"), recursive=True)
    assert (tmp_path / "tree" / "model.safetensors").read_bytes() == want


def test_an_unreadable_parent_only_costs_the_deltas(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(tmp_path / "reg")
    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/4")
    first, w = _weights(tmp_path, "m.safetensors", 1)
    reg.push("m", first)
    reg.store.delete(manifest_key(reg.resolve("m:1").digest))  # damaged: verify reports it
    second, _ = _weights(tmp_path, "m2.safetensors", 2, w)
    reg.push("m", second)
    assert DELTA_CODEC not in _codecs(reg, "m:2") and "without delta coding" in caplog.text
    reg.pull("m:2", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == second.read_bytes()


def test_a_reused_delta_chunk_is_decoded_again_only_from_an_unconfirmed_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushing a delta-coded version's bytes again (here under another name) reuses its
    delta chunks. From packs this machine confirmed, only their headers are read (which
    bases they need); from a pack it never confirmed (another machine's, or a state
    directory lost), each is read and decoded again, and a damaged one is stored anew."""
    from casreg.content import trust
    from casreg.storage.local import LocalStore

    reg = Registry(tmp_path / "reg")
    _, second = _delta_registry(reg, tmp_path)
    deltas = [c for e in reg.manifest(reg.resolve("m:2")).entries for c in e.chunks if c.codec == DELTA_CODEC]
    assert deltas
    reads: list[tuple[str, int, int]] = []
    read = LocalStore.read

    def counted(self: LocalStore, key: str, byte_range: ByteRange | None = None) -> bytes:
        data = read(self, key, byte_range)
        reads.append((key, byte_range.start if byte_range else 0, len(data)))
        return data

    monkeypatch.setattr(LocalStore, "read", counted)

    def bodies_read() -> int:  # reads of a delta chunk's payload beyond its header
        return sum(1 for key, start, n in reads for c in deltas
                   if key == pack_key(c.pack) and start <= c.offset and start + n > c.offset + 5 + 40 * 32)

    reg.push("again", second)
    assert bodies_read() == 0 and reg.show("again:1").new_bytes == 0  # all reused, headers read only

    c = deltas[0]  # damage the end of one delta payload, then forget every confirmation
    pack = tmp_path / "reg" / pack_key(c.pack)
    with open(pack, "r+b") as f:
        f.seek(c.offset + c.stored_size - 1)
        last = f.read(1)
        f.seek(c.offset + c.stored_size - 1)
        f.write(bytes([last[0] ^ 0xFF]))
    monkeypatch.setattr(trust, "_SEEN", {})
    monkeypatch.setenv("CASREG_STATE_DIR", str(tmp_path / "another-state"))
    reads.clear()
    reg.push("third", second)
    assert bodies_read() > 0
    assert reg.show("third:1").new_bytes > 0  # the damaged chunk, stored anew
    reg.pull("third:1", tmp_path / "third.safetensors")
    assert (tmp_path / "third.safetensors").read_bytes() == second.read_bytes()


def test_only_float_tensor_data_is_delta_coded(tmp_path: Path) -> None:
    """Other files with a parent (here a text file edited in place) are coded as before."""
    reg = Registry(tmp_path / "reg")
    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/4")
    (tmp_path / "v").mkdir()
    text = tmp_path / "v" / "a.txt"
    text.write_bytes(b"".join(b"v1 line %d\n" % i for i in range(40_000)))
    reg.push("m", tmp_path / "v")
    text.write_bytes(b"".join(b"v2 line %d\n" % i for i in range(40_000)))
    reg.push("m", tmp_path / "v")
    assert DELTA_CODEC not in _codecs(reg, "m:2") and not reg.manifest(reg.resolve("m:2")).bases


def test_old_formats_never_write_codec_3(tmp_path: Path) -> None:
    """casreg/1-3 registries keep to the codecs their readers know, with or without a parent."""
    for fmt in sorted(set(REGISTRY_FORMATS) - DELTA_CODEC_FORMATS):
        reg = Registry(tmp_path / fmt.replace("/", "-"))
        init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format=fmt)
        first, w = _weights(tmp_path, "m.safetensors", 1)
        reg.push("m", first)
        second, _ = _weights(tmp_path, "m2.safetensors", 2, w)
        reg.push("m", second, parent="m:1")
        codecs = {s.codec for key in reg.store.list(INDEXES) for s in decode_index(reg.store.read(key), key)}
        assert codecs and DELTA_CODEC not in codecs, fmt
        assert not reg.manifest(reg.resolve("m:2")).bases


def test_gc_keeps_the_bases_of_a_live_delta(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    _, second = _delta_registry(reg, tmp_path)
    m2 = reg.manifest(reg.resolve("m:2"))
    only_bases = {b.pack for b in m2.bases} - {c.pack for e in m2.entries for c in e.chunks}
    assert only_bases  # packs no chunk of m:2 is in: only its deltas' bases keep them
    reg.delete("m", 1, reason="test")
    reg.gc(grace=0, delay=0)
    reg.gc(grace=0, delay=0)  # condemned, then swept
    assert all(reg.store.exists(pack_key(p)) for p in only_bases)
    reg.pull("m:2", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == second.read_bytes()
    assert reg.verify().problems == []


def _flip(reg: Registry, ref: ChunkRef) -> None:
    path = Path(reg.store.url.removeprefix("file://")) / pack_key(ref.pack)
    data = bytearray(path.read_bytes())
    data[ref.offset + ref.stored_size - 2] ^= 0x40
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["base", "delta"])
def test_damage_to_a_base_or_a_delta_is_an_integrity_error(tmp_path: Path, what: str) -> None:
    from inprocess_cli import fails, run_cli

    reg = Registry(tmp_path / "reg")
    _delta_registry(reg, tmp_path)
    m2 = reg.manifest(reg.resolve("m:2"))
    delta = next(c for e in m2.entries for c in e.chunks if c.codec == DELTA_CODEC)
    target = m2.bases[0] if what == "base" else delta
    _flip(reg, target)
    with pytest.raises(IntegrityError, match=target.digest.hex()):
        reg.pull("m:2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), CASREG_CACHE="off", HOME=str(tmp_path))
    fails(run_cli(["pull", "m:2", str(tmp_path / "out2")], env, tmp_path), 6, target.digest.hex()[:16])
    assert reg.verify("m:2").problems
    assert any(target.digest.hex() in p.reason or pack_key(target.pack) == p.key for p in reg.verify().problems)


def test_a_manifest_naming_a_delta_as_a_base_is_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    _delta_registry(reg, tmp_path)
    m2 = reg.manifest(reg.resolve("m:2"))
    delta = next(c for e in m2.entries for c in e.chunks if c.codec == DELTA_CODEC)
    forged = Manifest(m2.kind, m2.entries, m2.chunking, tree=m2.tree, bases=[*m2.bases, delta])
    with pytest.raises(IntegrityError, match="itself a delta"):
        Manifest.from_bytes(forged.to_bytes(), expected=m2.digest, where="x")
    # a delta whose bases the manifest does not record cannot be read (never wrong bytes)
    bare = Manifest(m2.kind, m2.entries, m2.chunking, tree=m2.tree)
    bad = next(c for e in bare.entries for c in e.chunks if c.codec == DELTA_CODEC)
    with pytest.raises(IntegrityError, match="not recorded"):
        read_span_stats(reg.store, [bad], cache=None, bases=bare.base_map)


GOLDEN_XOR_HEX = (
    "0000000001d034a7386057f71e69174bab901198e811ae0bc570c36abd1e2964220457335503000000140000000f2143"
    "7997b1f3193f416389d7f113294f6183d9e90e3358"
)
GOLDEN_SUB_HEX = (
    "0102010001e90abd7efc63d469ad6fee6df2f01e9a0e8ef5f9300d9d8096c25a447b0de40a0000000017000000330080"
    "0000010000800000010000800000010000800000"
)
GOLDEN_PLANES_HEX = (
    "0102000201be6ac7e6c835660bf9dda9b7d4749ce54cf941048757ec5922c358d72a972a2a00000000b0040000020000"
    "01e901000028b52ffd605801fd0e0086e5763f308f920ea0dcd6c2c0c088cd135b9616e8129678c910410dff882cbf51"
    "57ec87c58d6e54a3bd7078a047a8ed1b6aade48bbe214208219b6cb2f796526e29536900650063001d980714312ac2a5"
    "52caf134dae6de9e39c95af640c539a21902dc693036320634d3136d4ec69d9426e24898afa2a14fe49aeea5aa1e003e"
    "fcd3b3681a86d3d8430d9459092d3d5ecb5c88ed30a0125be4fc5e3dad8ba926235fc2e47bbc8f40d17238816aa4520f"
    "0225d88682b1cfca562758db1a90ba2ecd8a4f37a304b169354296e7c402c6e5fbd05caa260bf6b998f822a160c0ffc6"
    "a5af9ee05f49fbae462cec84e77a106cb35ddfc9d16d83cf4142c9a62a4d90c4b66fc5475bdd0a172d512268c2ee9554"
    "9d3a8d54f60f95663c9899e86f04e32b61fc9a58ad43386a9b969485a8d49b544dc6184212d4973edb70aeea341b7997"
    "cd122259c9e68d4d84ad53cd283d603ad3b96030a13a9e9e747f0afb29a1281da77ba72d0e96b40526a63a18371e842d"
    "e6963f36fc6f49705cccd67254440076f4a046fab3c7b9794ec039fbc7ef4681ac6196189d5fca928975a467ba5ead34"
    "d8295ec16ab88856ba4c9596bbb067beb441569ef28130a9ba3c4f0da2627b539d6f97da4fc1021a04bbef374152eb30"
    "c71273588d584bf7828f4bd1e100014700000028b52ffd605801ed01000402fb000100ff0001000100fe00ff00010001"
    "000100010001000200fe00030001000f100094484e98a558c132fee080055ce30ecf5807637850cc6101"
)


@pytest.mark.parametrize(("span_bytes", "concurrency"), [(1, 1), (1, 8), (None, 1)])
def test_a_lazy_read_reads_each_base_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          span_bytes: int | None, concurrency: int) -> None:
    """A lazily read delta-coded file reads each base chunk its deltas name once, however
    its reads are split into ranged reads (here also one chunk each) and however many run
    at once (``concurrency``, as on S3). Before, each ranged read kept only its own last
    two bases, so a base named by deltas of two reads was read twice: a 44 MB tensor of a
    full fine-tune fetched 17-19% more than its chunks and their bases
    (docs/benchmarks-lazy.md)."""
    import casreg.content.fetch as fetch
    from casreg.testing.counting import CountingStore

    reg = Registry(tmp_path / "reg")
    _, second = _delta_registry(reg, tmp_path)
    if span_bytes is not None:
        monkeypatch.setattr(fetch, "SPAN_BYTES", span_bytes)
    chunks = reg.manifest(reg.resolve("m:2")).entries[0].chunks
    named: set[bytes] = set()
    for c in chunks:
        if c.codec == Codec.DELTA:
            payload = reg.store.read(pack_key(c.pack), ByteRange(c.offset, c.offset + c.stored_size))
            named.update(parse_header(payload, c.raw_size).bases)
    assert named  # the version is delta coded
    counting = CountingStore(reg.store)
    counting.io_concurrency = concurrency
    from safetensors.numpy import load_file

    want = load_file(second)
    with Registry.from_store(counting).open_safetensors("m:2") as f:
        for name in f.keys():
            assert f.get_tensor(name).tobytes() == want[name].tobytes()
    assert counting.reads["packs"] <= len(chunks) + len(named)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_pull_reads_each_base_once_with_reads_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          concurrency: int) -> None:
    """A pull with ``concurrency`` ranged reads in flight (eight on S3) keeps the bases of
    that many runs, so a base is not evicted before the run beside it needs it. Here every
    run is one chunk and the shared bound is made 1 KiB (this model's bases are far below
    the real 16 MiB): the bases kept are then those of the runs in flight. With 16 MiB, a
    512 MB delta-coded version read 6-12% more than its chunks and their bases, eight
    reads at a time."""
    import casreg.content.fetch as fetch
    from casreg.content.chunking import ChunkParams
    from casreg.testing.counting import CountingStore

    reg = Registry(tmp_path / "reg")  # small chunks: the two versions' boundaries differ, deltas share bases
    init_config(reg.store, ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10),
                registry_format="casreg/4")
    first, w = _weights(tmp_path, "m.safetensors", 1)
    reg.push("m", first)
    second, _ = _weights(tmp_path, "m2.safetensors", 2, w)
    reg.push("m", second)
    monkeypatch.setattr(fetch, "SPAN_BYTES", 1)
    monkeypatch.setattr(fetch, "BASES_BYTES", 1024)
    monkeypatch.setattr(fetch.DecodedBases.__init__, "__defaults__", (1024,))
    m2 = reg.manifest(reg.resolve("m:2"))
    once = sum(c.stored_size for c in m2.entries[0].chunks) + sum(b.stored_size for b in m2.bases)
    counting = CountingStore(reg.store)
    counting.io_concurrency = concurrency
    Registry.from_store(counting).pull("m:2", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == second.read_bytes()
    assert counting.bytes_read["packs"] == once
