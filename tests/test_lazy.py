"""Lazy safetensors reads: the header, then only the chunks covering the tensor asked for;
verified, pinned to one resolution, and defensive against hostile headers."""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest

import casreg
from casreg import IntegrityError, Registry
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.content.lazy import MAX_HEADER_BYTES
from casreg.fs import CasregFileSystem
from casreg.keys import pack_key
from casreg.testing.counting import CountingStore

SMALL = ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]],
                      metadata: dict[str, str] | None = None) -> Path:
    """The format by hand (8-byte little-endian length, JSON, data), so BF16 can be written
    too; ``tensors`` maps name -> (safetensors dtype, array holding the raw values)."""
    header: dict[str, object] = {}
    blobs, off = [], 0
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    return raw_file(path, json.dumps(header).encode(), b"".join(blobs))


def raw_file(path: Path, header: bytes, data: bytes, length: int | None = None) -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def memory_registry() -> Registry:
    return Registry(f"memory://casreg-test-lazy-{uuid.uuid4().hex}")


def test_every_dtype_round_trips_like_safetensors_loads_it(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    tensors = {
        "f64": ("F64", rng.standard_normal((3, 4))), "f32": ("F32", rng.standard_normal((5, 7)).astype("<f4")),
        "f16": ("F16", rng.standard_normal(9).astype("<f2")), "i64": ("I64", np.arange(-6, 6, dtype="<i8")),
        "i32": ("I32", np.arange(10, dtype="<i4").reshape(2, 5)), "i16": ("I16", np.arange(4, dtype="<i2")),
        "i8": ("I8", np.arange(-3, 3, dtype="i1")), "u8": ("U8", np.arange(256, dtype="u1").reshape(16, 16)),
        "u16": ("U16", np.arange(7, dtype="<u2")), "u32": ("U32", np.arange(3, dtype="<u4")),
        "u64": ("U64", np.arange(3, dtype="<u8")), "bool": ("BOOL", np.array([True, False, True])),
        "scalar": ("F32", np.array(3.5, dtype="<f4")), "empty": ("F32", np.zeros((0, 4), dtype="<f4")),
    }
    path = write_safetensors(tmp_path / "all.safetensors", tensors, {"format": "np", "note": "hi"})
    expected = load_file(path)  # the reference implementation agrees the file is valid
    reg = memory_registry()
    reg.push("all", path)
    with casreg.open_safetensors("all", registry=reg) as st:
        assert st.keys() == list(tensors) and len(st) == len(tensors) and "f32" in st
        assert st.metadata() == {"format": "np", "note": "hi"}
        for name in tensors:
            got = st.get_tensor(name)
            assert got.dtype == expected[name].dtype and got.shape == expected[name].shape, name
            assert np.array_equal(got, expected[name]), name
            got.flat[:1] = 0  # writable, like safetensors' own arrays
        with pytest.raises(FileNotFoundError, match="no tensor 'nope'"):
            st.get_tensor("nope")


def test_bf16_comes_back_as_bits_or_widened_exactly(tmp_path: Path) -> None:
    values = np.array([[1.0, -2.5, 3.140625], [0.0, 65280.0, -0.0078125]], dtype="<f4")  # exact in bf16
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    path = write_safetensors(tmp_path / "b.safetensors",
                             {"w": ("BF16", bits), "x": ("F8_E4M3", np.arange(4, dtype="u1"))})
    reg = memory_registry()
    reg.push("b", path)
    assert np.array_equal(reg.open_safetensors("b", bf16="uint16").get_tensor("w"), bits)
    widened = reg.open_safetensors("b", bf16="float32").get_tensor("w")
    assert widened.dtype == np.float32 and np.array_equal(widened, values)
    try:
        import ml_dtypes
    except ImportError:  # without it "auto" says so (tests/test_snapshot.py checks the message)
        with pytest.raises(casreg.errors.MissingDependencyError):
            reg.open_safetensors("b").get_tensor("w")
        assert reg.open_safetensors("b", bf16="uint16").get_tensor("x").tolist() == [0, 1, 2, 3]
    else:
        auto = reg.open_safetensors("b").get_tensor("w")
        assert auto.dtype == ml_dtypes.bfloat16 and np.array_equal(auto.astype(np.float32), values)
        assert reg.open_safetensors("b").get_tensor("x").view(np.uint8).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="bf16="):
        reg.open_safetensors("b", bf16="half")  # type: ignore[arg-type]


def test_reading_one_tensor_fetches_about_its_bytes(registry: Registry, tmp_path: Path) -> None:
    """The issue's bound, on every backend: a tensor costs its bytes plus at most the
    rest of one chunk at each end (stored bytes, counted at the store)."""
    init_config(registry.store, SMALL)
    rng = np.random.default_rng(1)
    tensors = {f"layer.{i}": ("F32", rng.standard_normal((256, 1024)).astype("<f4")) for i in range(8)}  # 8 MiB
    path = write_safetensors(tmp_path / "m.safetensors", tensors, {"format": "pt"})
    registry.push("m", path)
    counting = CountingStore(registry.store)
    reg = Registry.from_store(counting)
    st = reg.open_safetensors("m")
    header_cost = st.fetched_bytes
    assert 0 < header_cost <= SMALL.max_size  # the header lies in the first chunk
    assert counting.bytes_read["packs"] == header_cost
    for name in ("layer.5", "layer.0", "layer.7"):
        before = st.fetched_bytes
        got = st.get_tensor(name)
        assert np.array_equal(got, tensors[name][1])
        t = st.tensor_info(name)
        lo, hi = st.file.chunk_bounds(t.start, t.end)
        cost = st.fetched_bytes - before
        assert cost <= hi - lo  # only the chunks covering the tensor...
        assert hi - lo <= t.nbytes + 2 * SMALL.max_size  # ...which reach at most one chunk past each end
        inside = 0  # stored bytes of the chunks lying wholly inside the tensor: those must have been read
        offset = 0
        for c in st.file.entry.chunks:
            if t.start <= offset and offset + c.raw_size <= t.end:
                inside += c.stored_size
            offset += c.raw_size
        assert inside >= t.nbytes * 0.5  # (random floats: stored at 0.9 of raw with the planes codec)
        assert cost + st.cached_bytes >= inside  # S3: some came from the chunk cache
    assert counting.bytes_read["packs"] == st.fetched_bytes  # what the store really served
    assert st.fetched_bytes < 0.5 * path.stat().st_size


def test_a_tensor_read_stays_on_the_version_opened(tmp_path: Path) -> None:
    reg = memory_registry()
    for i in (1, 2):
        write_safetensors(tmp_path / f"v{i}.safetensors", {"w": ("I32", np.full(1000, i, dtype="<i4"))})
        reg.push("m", tmp_path / f"v{i}.safetensors")
    reg.set_alias("m", "production", 1)
    st = casreg.open_safetensors("m@production", registry=reg.url)
    reg.set_alias("m", "production", 2, reason="moves after the header was read")
    assert st.get_tensor("w").tolist() == [1] * 1000
    assert casreg.open_safetensors("m@production", registry=reg.url).get_tensor("w").tolist() == [2] * 1000


def test_a_file_inside_a_directory_version(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    write_safetensors(d / "model.safetensors", {"a": ("I64", np.arange(5, dtype="<i8"))})
    (d / "config.json").write_text("{}")
    reg = memory_registry()
    reg.push("dir", d)
    assert reg.open_safetensors("dir", "model.safetensors").get_tensor("a").tolist() == [0, 1, 2, 3, 4]
    assert casreg.open_safetensors("casreg://dir:1/model.safetensors", registry=reg).keys() == ["a"]
    with pytest.raises(FileNotFoundError, match="casreg://dir/nope.safetensors"):
        reg.open_safetensors("dir", "nope.safetensors")
    with pytest.raises(IsADirectoryError):
        reg.open_safetensors("dir")


def test_a_corrupted_chunk_under_a_lazy_read_is_an_integrity_error(tmp_path: Path) -> None:
    reg = memory_registry()
    init_config(reg.store, SMALL)
    rng = np.random.default_rng(2)
    tensors = {f"t{i}": ("F32", rng.standard_normal(200_000).astype("<f4")) for i in range(3)}
    reg.push("m", write_safetensors(tmp_path / "m.safetensors", tensors))
    st = reg.open_safetensors("m")
    t = st.tensor_info("t1")
    entry = reg.manifest("m").entries[0]
    pos, victim = 0, None
    for c in entry.chunks:  # a chunk strictly inside t1
        if pos >= t.start and pos + c.raw_size <= t.end:
            victim = c
            break
        pos += c.raw_size
    assert victim is not None
    data = bytearray(reg.store.read(pack_key(victim.pack)))
    data[victim.offset + 7] ^= 0x01
    reg.store.delete(pack_key(victim.pack))
    reg.store.create(pack_key(victim.pack), bytes(data))
    with pytest.raises(IntegrityError, match=victim.digest.hex()):
        st.get_tensor("t1")
    assert np.array_equal(st.get_tensor("t0"), tensors["t0"][1])  # untouched chunks still read


def _hostile(name: str, tmp_path: Path) -> Path:
    p = tmp_path / f"{name}.safetensors"
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    if name == "huge-length":
        return raw_file(p, b"{}", b"", length=MAX_HEADER_BYTES + 8)
    if name == "length-past-end":
        return raw_file(p, b"{}", b"", length=1 << 20)
    if name == "offsets-outside":
        return raw_file(p, json.dumps({"a": {**t, "data_offsets": [0, 1 << 40]}}).encode(), b"\0" * 8)
    if name == "overlap":
        return raw_file(p, json.dumps({"a": t, "b": {**t, "data_offsets": [4, 12]}}).encode(), b"\0" * 12)
    if name == "shape-mismatch":
        return raw_file(p, json.dumps({"a": {**t, "shape": [3]}}).encode(), b"\0" * 8)
    if name == "negative":
        return raw_file(p, json.dumps({"a": {**t, "data_offsets": [-8, 0]}}).encode(), b"\0" * 8)
    if name == "duplicate":
        return raw_file(p, b'{"a": %s, "a": %s}' % (json.dumps(t).encode(), json.dumps(t).encode()), b"\0" * 8)
    if name == "not-json":
        return raw_file(p, b"{not json", b"")
    if name == "dtype":
        return raw_file(p, json.dumps({"a": {**t, "dtype": "F128"}}).encode(), b"\0" * 8)
    if name == "metadata":
        return raw_file(p, json.dumps({"__metadata__": {"k": 1}}).encode(), b"")
    if name == "short":
        p.write_bytes(b"\x01\x02")
        return p
    raise AssertionError(name)


@pytest.mark.parametrize("name,message", [
    ("huge-length", "exceeds the 100000000-byte limit"), ("length-past-end", "runs past the end"),
    ("offsets-outside", "outside the data area"), ("overlap", "overlap"), ("shape-mismatch", "needs 12 bytes"),
    ("negative", "outside the data area"), ("duplicate", "duplicate key"), ("not-json", "invalid safetensors header"),
    ("dtype", "unknown dtype"), ("metadata", "__metadata__"), ("short", "shorter than the 8-byte"),
])
def test_hostile_headers_are_refused_with_one_clear_line(name: str, message: str, tmp_path: Path) -> None:
    reg = memory_registry()
    reg.push("h", _hostile(name, tmp_path))
    counting = CountingStore(reg.store)
    with pytest.raises(IntegrityError, match=message) as err:
        Registry.from_store(counting).open_safetensors("h")
    assert "\n" not in str(err.value) and "casreg://h" in str(err.value)
    assert counting.bytes_read["packs"] < 1 << 20  # a lying length never makes us fetch it


def test_long_reads_go_in_windows_and_stay_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read longer than WINDOW_BYTES is fetched a window at a time (bounded memory);
    the bytes must not change at window edges."""
    import casreg.content.lazy

    monkeypatch.setattr(casreg.content.lazy, "WINDOW_BYTES", 200_000)
    reg = memory_registry()
    init_config(reg.store, SMALL)
    big = np.random.default_rng(3).standard_normal(600_000).astype("<f4")  # 2.4 MB: a dozen windows
    path = write_safetensors(tmp_path / "w.safetensors",
                             {"small": ("I8", np.arange(3, dtype="i1")), "big": ("F32", big)})
    reg.push("w", path)
    st = reg.open_safetensors("w")
    assert np.array_equal(st.get_tensor("big"), big)
    assert CasregFileSystem(registry=reg).cat_file("w") == path.read_bytes()  # whole file, digest checked at the end
