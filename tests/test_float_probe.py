"""The float probe (casreg/content/float_probe.py): which chunks of files without a
safetensors header get the PLANES codec, and that a guess can never change a byte."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg import Registry
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.codec import Codec
from casreg.content.config import init_config
from casreg.content.float_probe import PROBE_MIN_BYTES, SMALL_PROBE_MIN_BYTES, probe_floats
from casreg.content.planes import CODES_BATCHES

N = PROBE_MIN_BYTES  # elements: every width gives a chunk over the probe's minimum


def f32(n: int, seed: int = 0, scale: float = 0.02) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, n).astype("<f4")


def weights(dtype: str, n: int = N, seed: int = 0) -> bytes:
    x = f32(n, seed)
    if dtype == "bf16":
        return (x.view("<u4") >> 16).astype("<u2").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    return x.tobytes()


WIDTH = {"bf16": 2, "f16": 2, "f32": 4}


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_float_elements_are_found_at_every_phase(dtype: str) -> None:
    width = WIDTH[dtype]
    body = weights(dtype)
    for shift in range(8):  # the chunk may start anywhere inside an element
        chunk = os.urandom(shift) + body
        assert probe_floats(chunk) == (width, shift % width), (dtype, shift)


def test_a_chunk_cut_inside_an_element_still_gets_the_right_phase() -> None:
    body = weights("f32")
    for cut in range(4):
        assert probe_floats(body[cut:]) == (4, (4 - cut) % 4)


@pytest.mark.parametrize("what", ["json", "text", "random", "zeros", "ramp", "int64", "short"])
def test_anything_else_gets_no_hint(what: str) -> None:
    size = 4 * PROBE_MIN_BYTES
    data = {
        "json": lambda: json.dumps([{"token": f"w{i}", "id": i, "score": i / 7} for i in range(20_000)]).encode(),
        "text": lambda: Path(__file__).read_bytes() * 200,
        "random": lambda: os.urandom(size),
        "zeros": lambda: bytes(size),
        "ramp": lambda: bytes(range(256)) * (size // 256),
        "int64": lambda: np.arange(size // 8, dtype="<i8").tobytes(),
        "short": lambda: weights("bf16")[:PROBE_MIN_BYTES - 1],
    }[what]()
    assert len(data) >= PROBE_MIN_BYTES or what == "short"
    assert probe_floats(data) is None


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_a_small_file_is_probed_from_the_small_minimum_on(dtype: str) -> None:
    """A small file's probe (``min_bytes=SMALL_PROBE_MIN_BYTES``) finds float elements in a
    file of exactly that size at every phase, none in one a byte shorter, and none in small
    files of anything else."""
    width, small = WIDTH[dtype], SMALL_PROBE_MIN_BYTES
    body = weights(dtype, small)
    for shift in range(width):
        chunk = (os.urandom(shift) + body)[:small]
        assert probe_floats(chunk, small) == (width, shift % width), (dtype, shift)
        assert probe_floats(chunk[:-1], small) is None
    for other in (json.dumps([{"id": i, "score": i / 7} for i in range(3_000)]).encode()[:small],
                  (Path(__file__).read_bytes() * 2)[:small], os.urandom(small), bytes(small)):
        assert len(other) == small and probe_floats(other, small) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=3 * PROBE_MIN_BYTES), st.integers(0, 255))
def test_any_bytes_give_a_valid_hint_or_none(data: bytes, fill: int) -> None:
    raw = data + bytes([fill]) * max(0, PROBE_MIN_BYTES - len(data))  # reach the minimum half the time
    hint = probe_floats(raw)
    assert hint is None or (hint[0] in (2, 4) and 0 <= hint[1] < hint[0])
    assert probe_floats(memoryview(raw)) == hint  # a pure function of the bytes


def codecs_of(reg: Registry, ref: str) -> dict[str, set[int]]:
    return {e.path: {c.codec for c in e.chunks} for e in reg.manifest(ref).entries if e.type != "d"}


def model_dir(root: Path) -> Path:
    root.mkdir()
    (root / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + os.urandom(60) + weights("bf16", 3 << 19, 1)
                                             + weights("f32", 1 << 18, 2) + b"PK\x05\x06" + bytes(18))
    (root / "small.bin").write_bytes(weights("bf16", 50_000, 3))  # a small file (one chunk), probed
    (root / "tiny.bin").write_bytes(weights("bf16", 4_000, 4))  # under SMALL_PROBE_MIN_BYTES: not probed
    (root / "tokenizer.json").write_bytes(json.dumps({f"tok{i}": i for i in range(60_000)}).encode())
    (root / "noise.dat").write_bytes(blake3(b"noise").digest(length=1 << 18))
    return root


def test_files_without_a_header_get_planes_where_the_probe_finds_floats(tmp_path: Path) -> None:
    src = model_dir(tmp_path / "model")
    reg = Registry(tmp_path / "reg")
    v = reg.push("m", src)
    codecs = codecs_of(reg, "m:1")
    assert Codec.PLANES in codecs["pytorch_model.bin"] and codecs["tiny.bin"] == {Codec.ZSTD}
    # a small file is probed from SMALL_PROBE_MIN_BYTES on where its batch is coded with few calls
    assert codecs["small.bin"] == {Codec.PLANES if CODES_BATCHES else Codec.ZSTD}
    assert codecs["tokenizer.json"] == {Codec.ZSTD} and codecs["noise.dat"] == {Codec.RAW}
    reg.pull("m:1", tmp_path / "back")
    for f in src.iterdir():
        assert (tmp_path / "back" / f.name).read_bytes() == f.read_bytes(), f.name

    # The same files in a casreg/2 registry (no PLANES codec): zstd only, and more bytes.
    old = Registry(tmp_path / "old")
    init_config(old.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/2")
    zstd_only = old.push("m", src)
    assert all(c <= {Codec.RAW, Codec.ZSTD} for c in codecs_of(old, "m:1").values())
    assert v.stored_bytes < 0.93 * zstd_only.stored_bytes  # measured: 0.89

    # Pushed again, every chunk deduplicates whatever codec it was stored with.
    assert reg.push("m", src).new_bytes == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["bf16", "f16", "f32", "noise", "zeros", "text"]), min_size=1, max_size=4),
       st.integers(0, 3))
def test_whatever_the_probe_guesses_pulls_back_byte_for_byte(tmp_path_factory: pytest.TempPathFactory,
                                                             parts: list[str], shift: int) -> None:
    """Float runs glued to other bytes at odd offsets: the probe may guess right, wrong or
    nothing for any chunk; the version reads back exactly."""
    tmp = tmp_path_factory.mktemp("mix")
    blob = os.urandom(shift)
    for i, p in enumerate(parts):
        if p in WIDTH:
            blob += weights(p, 400_000 // WIDTH[p], i)
        else:
            blob += {"noise": os.urandom(300_000), "zeros": bytes(300_000), "text": b"casreg " * 40_000}[p]
    (tmp / "blob.bin").write_bytes(blob)
    reg = Registry(tmp / "reg")
    reg.push("b", tmp / "blob.bin")
    reg.pull("b:1", tmp / "out.bin")
    assert (tmp / "out.bin").read_bytes() == blob


def test_a_checkpoint_without_a_header_is_delta_coded_against_its_parent(tmp_path: Path) -> None:
    """The probe's hints let a plain file (here a raw dump of bf16 and f32 weights) be
    coded against the previous version, as a safetensors file is: a fine-tune that moves
    every weight a little stores a fraction of its size."""
    base = weights("bf16", 3 << 19, 4) + weights("f32", 1 << 18, 5)
    x = np.frombuffer(base[:3 << 20], "<u2").copy()
    x[::3] ^= 1  # the lowest mantissa bit of a third of the bf16 weights
    tuned = x.tobytes() + (f32(1 << 18, 5) * np.float32(1.001)).tobytes()
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir(), v2.mkdir()
    (v1 / "model.bin").write_bytes(base)
    (v2 / "model.bin").write_bytes(tuned)
    reg = Registry(tmp_path / "reg")
    first = reg.push("m", v1)
    second = reg.push("m", v2)
    assert Codec.DELTA in codecs_of(reg, "m:2")["model.bin"]
    assert second.stored_bytes < 0.5 * first.stored_bytes  # measured: 0.22
    for ref, want in (("m:1", base), ("m:2", tuned)):
        reg.pull(ref, tmp_path / ref.replace(":", "-"))
        assert (tmp_path / ref.replace(":", "-") / "model.bin").read_bytes() == want


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=6000), pad=st.integers(0, 3))
def test_distinct_per_offset_counts_as_numpy_does(raw: bytes, pad: int) -> None:
    """The probe's counts (the C loop's where built, and plain Python's) against a numpy
    count of the same sample: distinct byte values at each offset modulo 4 of the 2 KiB
    in the middle, at any length."""
    from casreg.content import float_probe

    data = bytes(pad) + raw
    start = max(0, len(data) // 2 - 1024) & ~3
    sample = np.frombuffer(data, np.uint8)[start:start + (min(2048, len(data) - start) & ~3)]
    want = [len(np.unique(sample[i::4])) for i in range(4)]
    assert float_probe.distinct_per_offset(data) == want
    built = float_probe.distinct_bytes
    try:
        float_probe.distinct_bytes = None  # (the plain Python count, as without the C loops)
        assert float_probe.distinct_per_offset(data) == want
    finally:
        float_probe.distinct_bytes = built
