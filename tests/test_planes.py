"""The PLANES codec (codec 2, casreg/content/planes.py, docs/FORMAT.md §4.1): golden vectors,
an independent decoder written from the spec, round trips of any bytes, damaged payloads,
where a push uses it (float data of casreg/3 and later registries: where a safetensors header
says, or the probe of tests/test_float_probe.py finds it) and what it saves."""

from __future__ import annotations

import json
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

import casreg
from casreg import Registry
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.codec import Codec, decode, decode_verified, decode_verified_into, encode
from casreg.content.config import REGISTRY_FORMAT, init_config, read_config
from casreg.content.dtypes import float_layout
from casreg.content.planes import MIN_ELEMENTS, decode_planes_into, encode_planes
from casreg.errors import IntegrityError


def reference_decode(payload: bytes, raw_size: int) -> bytes:
    """docs/FORMAT.md §4.1, written from the text alone (no numpy, no casreg code)."""
    width, head, tail = payload[0], payload[1], payload[2]
    assert width in (2, 4) and head < width and tail < width and (raw_size - head - tail) % width == 0
    n = (raw_size - head - tail) // width
    pos = 3
    head_bytes, tail_bytes = payload[pos:pos + head], payload[pos + head:pos + head + tail]
    pos += head + tail
    planes = []
    for _ in range(width):
        mode, size = struct.unpack_from("<BI", payload, pos)
        pos += 5
        data = payload[pos:pos + size]
        pos += size
        plane = data if mode == 0 else zstandard.ZstdDecompressor().decompress(data)
        assert len(plane) == n
        planes.append(plane)
    assert pos == len(payload)
    body = bytearray()
    bits = 8 * width
    for k in range(n):
        v = int.from_bytes(bytes(planes[i][k] for i in range(width)), "little")
        v = (v >> 1) | ((v & 1) << (bits - 1))  # rotate right by one bit
        body += v.to_bytes(width, "little")
    return bytes(head_bytes) + bytes(body) + bytes(tail_bytes)


def bf16_weights(n: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(0, 0.02, n).astype("<f4")
    return (x.view("<u4") >> 16).astype("<u2").tobytes()


# -- golden vectors --------------------------------------------------------------------------------
#: A payload pinned when the codec was written: width 2, head 1, tail 1, each plane one zstd
#: frame. Any decoder, with any zstd version, must give GOLDEN_RAW from it.
GOLDEN_RAW = bytes([0xAB]) + b"".join(((0x3C00 + (k % 7)) ^ (k << 1 & 0x1F0)).to_bytes(2, "little")
                                       for k in range(300)) + bytes([0xCD])


def test_golden_payload_decodes_to_its_bytes() -> None:
    payload = encode_planes(GOLDEN_RAW, 2, 1)
    assert payload is not None and payload[:3] == bytes([2, 1, 1]) and payload[3:5] == bytes([0xAB, 0xCD])
    assert reference_decode(payload, len(GOLDEN_RAW)) == GOLDEN_RAW
    pinned = bytes.fromhex(GOLDEN_PAYLOAD_HEX)
    assert bytes(decode(Codec.PLANES, pinned, len(GOLDEN_RAW))) == GOLDEN_RAW
    assert reference_decode(pinned, len(GOLDEN_RAW)) == GOLDEN_RAW


def test_golden_raw_planes_encoding_is_pinned() -> None:
    """Incompressible elements: every plane raw, so the encoding is fixed byte for byte."""
    raw = bytes(blake3(b"casreg planes golden").digest(length=2 * 1000 + 3))
    payload = encode_planes(raw, 4, 3)
    assert payload is not None
    assert payload[:3] == bytes([4, 3, 0]) and all(payload[6 + i * (5 + 500)] == 0 for i in range(4))
    assert blake3(payload).hexdigest() == GOLDEN_RAW_PLANES_BLAKE3
    assert reference_decode(payload, len(raw)) == raw


# -- round trips and damage -------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=0, max_size=4000), width=st.sampled_from([2, 4]), head=st.integers(0, 3),
       floats=st.booleans())
def test_any_bytes_round_trip(raw: bytes, width: int, head: int, floats: bool) -> None:
    head %= width
    if floats:
        raw = raw[:7] + bf16_weights(len(raw) // 2 + MIN_ELEMENTS, seed=len(raw))
    codec, stored = encode(raw, 3, (width, head))
    assert bytes(decode(codec, stored, len(raw))) == raw
    payload = encode_planes(raw, width, head)
    if payload is None:
        assert (len(raw) - head) // width < MIN_ELEMENTS
        return
    assert reference_decode(payload, len(raw)) == raw
    out = memoryview(bytearray(len(raw)))
    decode_verified_into(Codec.PLANES, payload, out, blake3(raw).digest())
    assert bytes(out) == raw


@settings(max_examples=300, deadline=None)
@given(how=st.sampled_from(["flip", "truncate", "trailing", "header", "size", "mode"]),
       at=st.integers(0, 1 << 20), value=st.integers(0, 255), junk=st.binary(min_size=1, max_size=9))
def test_a_damaged_payload_is_an_integrity_error_never_a_crash(how: str, at: int, value: int, junk: bytes) -> None:
    raw = bf16_weights(3000, seed=5)[:5999]
    payload = damage(bytearray(encode_planes(raw, 2, 1) or b""), how, at, value, junk, header=3)
    if how == "size":
        struct.pack_into("<I", payload, 3 + 2 + 1, at)  # plane 0's size field
    elif how == "mode":
        payload[3 + 2] = value  # plane 0's mode
    digest = blake3(raw).digest()
    for decoder in ("verified", "into"):
        try:
            if decoder == "verified":
                got = bytes(decode_verified(Codec.PLANES, bytes(payload), len(raw), digest))
            else:
                out = memoryview(bytearray(len(raw)))
                decode_verified_into(Codec.PLANES, bytes(payload), out, digest)
                got = bytes(out)
        except IntegrityError:
            continue
        assert got == raw  # a harmless change (a flip in an ignored bit cannot exist, but be exact)


@pytest.mark.parametrize("raw_size", [0, 1, 2, 3])
def test_payloads_that_cannot_fit_the_chunk_are_refused(raw_size: int) -> None:
    with pytest.raises(IntegrityError):
        decode_planes_into(bytes([4, 3, 3]), memoryview(bytearray(raw_size)))
    with pytest.raises(IntegrityError):
        decode_planes_into(b"\x02", memoryview(bytearray(raw_size)))


def test_planes_beats_zstd_on_weights_and_gives_up_on_noise() -> None:
    weights = bf16_weights(1 << 19)
    codec, stored = encode(weights, 3, (2, 0))
    _, zstd_only = encode(weights, 3)
    assert codec == Codec.PLANES and len(stored) < 0.9 * len(zstd_only) and len(weights) / len(stored) > 1.4
    noise = bytes(blake3(b"noise").digest(length=1 << 16))
    assert encode(noise, 3, (2, 0))[0] == Codec.RAW


# -- where pushes use it ----------------------------------------------------------------------------
def write_safetensors(path: Path, tensors: dict[str, tuple[str, bytes, list[int]]]) -> Path:
    header: dict[str, object] = {}
    off = 0
    for name, (dtype, data, shape) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(t[1] for t in tensors.values()))
    return path


def model_file(path: Path) -> Path:
    f32 = np.random.default_rng(1).normal(0, 0.05, 300_000).astype("<f4").tobytes()
    return write_safetensors(path, {"a.bf16": ("BF16", bf16_weights(1_500_000, 2), [1_500_000]),
                                    "b.f32": ("F32", f32, [300_000]),
                                    "c.ids": ("I64", np.arange(70_000, dtype="<i8").tobytes(), [70_000])})


def codecs_of(reg: Registry, ref: str) -> set[int]:
    return {c.codec for e in reg.manifest(ref).entries for c in e.chunks}


def test_new_registries_code_safetensors_floats_with_planes(registry: Registry, tmp_path: Path) -> None:
    src = model_file(tmp_path / "model.safetensors")
    v = registry.push("m", src)
    config = read_config(registry.store)
    assert config is not None and config.format == REGISTRY_FORMAT == "casreg/4" and config.float_codec
    assert Codec.PLANES in codecs_of(registry, "m:1")
    registry.pull("m:1", tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == src.read_bytes()
    with casreg.open_safetensors("m:1", registry=registry) as st_file:  # lazy reads decode planes too
        assert st_file.get_tensor("b.f32").tobytes() == src.read_bytes()[-(70_000 * 8 + 1_200_000):-(70_000 * 8)]
    old = Registry(tmp_path / "old")  # a casreg/2 registry: no PLANES codec, zstd only
    init_config(old.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/2")
    zstd_only = old.push("p", src)
    assert codecs_of(old, "p:1") <= {Codec.RAW, Codec.ZSTD}
    assert v.stored_bytes < 0.95 * zstd_only.stored_bytes  # measured: 0.92 (bf16 and f32 alike)
    # The same bytes under another name: no header is read; the probe finds the floats
    # chunk by chunk (tests/test_float_probe.py), so they store about as small.
    plain = tmp_path / "model.bin"
    plain.write_bytes(src.read_bytes())
    other = Registry(tmp_path / "other")
    probed = other.push("p", plain)
    assert Codec.PLANES in codecs_of(other, "p:1")
    assert probed.stored_bytes < 0.95 * zstd_only.stored_bytes


def test_older_formats_keep_to_the_codecs_older_readers_know(tmp_path: Path) -> None:
    src = model_file(tmp_path / "model.safetensors")
    for fmt in ("casreg/1", "casreg/2"):
        reg = Registry(tmp_path / fmt.replace("/", "-"))
        init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format=fmt)
        reg.push("m", src)
        assert codecs_of(reg, "m:1") <= {Codec.RAW, Codec.ZSTD}, fmt
        reg.pull("m:1", tmp_path / f"{fmt[-1]}.safetensors")
        assert (tmp_path / f"{fmt[-1]}.safetensors").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("header", [b"{not json", b'{"t": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 99]}}',
                                    b"[]", b'{"t": {"dtype": "F32"}}'])
def test_a_hostile_header_only_costs_the_hints(tmp_path: Path, header: bytes) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + bf16_weights(5000))
    assert float_layout(bad, bad.stat().st_size) is None
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    assert float_layout(huge, huge.stat().st_size) is None
    reg = Registry(tmp_path / "reg")
    reg.push("bad", bad)
    reg.pull("bad", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == bad.read_bytes()


def test_hints_follow_the_header() -> None:
    import casreg.content.dtypes as dtypes

    layout = dtypes.FloatLayout(starts=[100, 1000], ends=[1000, 5000], widths=[2, 4])
    assert layout.hint(100, 800) == (2, 0)
    assert layout.hint(101, 800) == (2, 1)  # the first whole element starts one byte in
    assert layout.hint(998, 2000) == (4, 2)
    assert layout.hint(0, 150) is None  # mostly not float data
    assert layout.hint(6000, 100) is None


GOLDEN_PAYLOAD_HEX = (
    "020101abcd01a000000028b52ffd602c00b50400f40600020406080a0c00222426282a2c20224446484a4c40424466686a6c60626466"
    "888a8c8082848688aaaca0a2a4a6a8aaccc0c2c4c6c8cacce0e2e4e6e8eaece0020406080a0c00022426282a2c20222446688aacc0e2"
    "0426486a8ca0c2e406284a6c80a2c4e6082a4c6082a4a6a8aa1b040440c00106041c6040c00106041c6040c00106041c6040c0010604"
    "1c6040e020219c01011d00000028b52ffd602c009d0000307878797a7b780510009842e928314a621216")
GOLDEN_RAW_PLANES_BLAKE3 = "b2af4fa019d1f07f769dc58b87fab2eda56592dcd487d06d918179b72aff1003"
