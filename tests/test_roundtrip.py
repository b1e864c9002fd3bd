"""Byte-identical round trips: push → pull gives back exactly what was pushed.

Every test runs on a local directory registry and on a ``memory://`` registry.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casreg import Registry
from casreg.content.chunking import BLOCK_SIZE, DEFAULT_CHUNK_PARAMS, ChunkParams, chunk_bytes
from casreg.content.config import init_config
from casreg.storage.memory import MemoryStore

MIN = DEFAULT_CHUNK_PARAMS.min_size
AVG = DEFAULT_CHUNK_PARAMS.avg_size
MAX = DEFAULT_CHUNK_PARAMS.max_size


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture
def reg(registry: Registry) -> Registry:
    """A fresh registry on every backend of ``conftest.BACKENDS``."""
    return registry

def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (relative, incl. directories) → what it holds."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            p = Path(dirpath, d)
            out[p.relative_to(root).as_posix()] = ("dir",)
        for f in files:
            p = Path(dirpath, f)
            st_ = p.lstat()
            assert stat.S_ISREG(st_.st_mode), p
            out[p.relative_to(root).as_posix()] = ("file", p.read_bytes(), bool(st_.st_mode & stat.S_IXUSR))
    return out


def store_bytes(reg: Registry) -> int:
    return sum(reg.store.size(k) for k in reg.store.list(""))


def periodic(n: int) -> bytes:
    """Content without FastCDC cut points (so cuts land exactly at max_size), but with no
    two max_size chunks equal (period 251 does not divide max_size)."""
    return (np.arange(n, dtype=np.uint64) % 251).astype(np.uint8).tobytes()


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


SIZES = sorted({
    0, 1, 2,
    MIN - 1, MIN, MIN + 1,
    AVG - 1, AVG, AVG + 1,
    MAX - 1, MAX, MAX + 1,
    2 * MAX - 1, 2 * MAX, 2 * MAX + 1,
    3 * MAX - 1, 3 * MAX, 3 * MAX + 1,
    # push reads files in blocks of BLOCK_SIZE bytes and re-cuts each block's last chunk
    BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1,
    2 * BLOCK_SIZE - 1, 2 * BLOCK_SIZE, 2 * BLOCK_SIZE + 1,
})


# -- single files at the chunk bounds ---------------------------------------------------------
@pytest.mark.parametrize("content", ["periodic", "random"])
@pytest.mark.parametrize("size", SIZES)
def test_file_roundtrip_at_chunk_bounds(reg: Registry, tmp_path: Path, size: int, content: str) -> None:
    data = periodic(size) if content == "periodic" else random_bytes(size, seed=size)
    src = tmp_path / "weights.bin"
    src.write_bytes(data)

    v = reg.push("bounds", src)
    assert v.kind == "file" and v.size == size and v.file_count == 1

    manifest = reg.manifest(v.ref)
    [entry] = manifest.entries
    sizes = [c.raw_size for c in entry.chunks]
    assert sum(sizes) == size
    assert entry.digest == blake3(data).digest()
    assert all(0 < s <= MAX for s in sizes)
    assert all(s >= MIN for s in sizes[:-1])  # only a file's last chunk may be short
    # the streamed, block-wise cut equals cutting the whole file at once
    assert sizes == [length for _, length in chunk_bytes(data)]
    if content == "periodic":  # no content cut points: cuts exactly every max_size bytes
        assert v.chunk_count == len(sizes) == math.ceil(size / MAX)
        assert sizes[:-1] == [MAX] * (len(sizes) - 1)

    dest = tmp_path / "out" / "weights.bin"
    res = reg.pull(v.ref, dest)
    assert res.size == size and res.files == 1 and not res.up_to_date
    assert dest.read_bytes() == data
    assert sorted(os.listdir(dest.parent)) == ["weights.bin"]  # no temp files left beside it
    dest.unlink()
    src.unlink()


def test_periodic_chunks_dedup_within_a_file(reg: Registry, tmp_path: Path) -> None:
    """A file made of one max_size block repeated: the block is stored once."""
    block = random_bytes(MAX, seed=7)
    src = tmp_path / "rep.bin"
    src.write_bytes(block * 3)
    v = reg.push("rep", src)
    assert v.size == 3 * MAX
    assert v.new_bytes <= MAX + MAX // 2  # repeated content is not stored three times
    dest = tmp_path / "rep.out"
    reg.pull(v.ref, dest)
    assert dest.read_bytes() == block * 3


# -- hypothesis: arbitrary trees --------------------------------------------------------------
_special = st.sampled_from(["ü", "模型", "🤖", "ﬁle", "e\u0301", "a b", " lead", "trail ", "-x", ".hidden",
                            "...", "name.with.dots", "UPPER", "upper", "Ωmega", "\u2028sep", "#%&;'\"$"])
_plain = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\:\x00"),
    min_size=1, max_size=10,
)
NAMES = st.one_of(_special, _plain).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 200)
FILE = st.tuples(
    st.one_of(st.binary(max_size=300), st.binary(min_size=1, max_size=8).map(lambda b: b * 997)),
    st.booleans(),
)
TREE = st.recursive(
    st.dictionaries(NAMES, FILE, max_size=4),
    lambda children: st.dictionaries(NAMES, st.one_of(FILE, children), max_size=4),
    max_leaves=16,
)


def _has_file(tree: dict) -> bool:
    return any(isinstance(v, tuple) or _has_file(v) for v in tree.values())


def materialize_tree(root: Path, tree: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, node in tree.items():
        p = root / name
        if isinstance(node, dict):
            materialize_tree(p, node)
        else:
            data, executable = node
            p.write_bytes(data)
            p.chmod(0o755 if executable else 0o644)


HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPO
@given(tree=TREE.filter(_has_file))
def test_tree_roundtrip(reg: Registry, tmp_path: Path, tree: dict) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        src = work / "src"
        materialize_tree(src, tree)
        expected = snapshot(src)

        v = reg.push("tree", src)
        assert v.kind == "dir"
        assert v.file_count == sum(1 for x in expected.values() if x[0] == "file")
        assert v.size == sum(len(x[1]) for x in expected.values() if x[0] == "file")

        dest = work / "dest"
        res = reg.pull(v.ref, dest)
        assert res.digest == v.digest
        assert snapshot(dest) == expected
        assert sorted(os.listdir(work)) == ["dest", "src"]  # no temp trees left behind

        # the same content elsewhere (fresh copy, new mtimes) has the same digest
        copy = work / "copy"
        shutil.copytree(src, copy)
        assert reg.push("tree-copy", copy).digest == v.digest
    finally:
        shutil.rmtree(work)


@HYPO
@given(tree=TREE.filter(_has_file), data=st.data())
def test_tree_digest_is_sensitive_to_names_and_modes(reg: Registry, tmp_path: Path, tree: dict,
                                                     data: st.DataObject) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        src = work / "src"
        materialize_tree(src, tree)
        base = reg.push("sens", src).digest
        files = sorted(p for p in src.rglob("*") if p.is_file())
        target = data.draw(st.sampled_from(files))

        mode = target.stat().st_mode
        target.chmod(mode ^ 0o111)  # toggle the exec bit
        assert reg.push("sens", src).digest != base
        target.chmod(mode)
        assert reg.push("sens", src).digest == base

        renamed = target.with_name(target.name + "~")
        if not renamed.exists():
            target.rename(renamed)
            assert reg.push("sens", src).digest != base
            renamed.rename(target)
            assert reg.push("sens", src).digest == base
    finally:
        shutil.rmtree(work)


# -- fixed trees ------------------------------------------------------------------------------
def test_empty_files_empty_dirs_and_exec_bits(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "model"
    materialize_tree(src, {
        "empty.bin": (b"", False),
        "run.sh": (b"#!/bin/sh\necho hi\n", True),
        "empty-dir": {},
        "nested": {"deeper": {"deepest": {}}, "ü": {"模型.bin": (b"\x00" * 10, False)}},
        "🤖": {"x": (b"", True)},
    })
    v = reg.push("fixed", src)
    assert v.file_count == 4
    types = {f.path: f.type for f in reg.files(v.ref)}
    assert types == {"empty.bin": "f", "run.sh": "x", "empty-dir": "d", "nested/deeper/deepest": "d",
                     "nested/ü/模型.bin": "f", "🤖/x": "x"}
    dest = tmp_path / "pulled"
    reg.pull(v.ref, dest)
    assert snapshot(dest) == snapshot(src)
    assert os.access(dest / "run.sh", os.X_OK)
    assert not os.access(dest / "empty.bin", os.X_OK)


def test_single_empty_file_roundtrip(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "empty.onnx"
    src.write_bytes(b"")
    v = reg.push("empty", src)
    assert v.size == 0 and v.chunk_count == 0 and v.kind == "file"
    dest = tmp_path / "o" / "e.onnx"
    reg.pull(v.ref, dest)
    assert dest.read_bytes() == b""


def test_single_executable_file_keeps_exec_bit(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "tool"
    src.write_bytes(b"#!/bin/sh\n")
    src.chmod(0o755)
    v = reg.push("tool", src)
    assert [f.type for f in reg.files(v.ref)] == ["x"]
    dest = tmp_path / "tool.out"
    reg.pull(v.ref, dest)
    assert os.access(dest, os.X_OK) and dest.read_bytes() == b"#!/bin/sh\n"


# -- digests and dedup -----------------------------------------------------------------------
def test_same_content_same_digest_and_nothing_new_stored(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "a"
    materialize_tree(src, {"w.bin": (random_bytes(3 * MAX + 12345, seed=1), False),
                           "cfg.json": (b'{"layers": 3}', False), "sub": {"t.bin": (periodic(MAX + 1), True)}})
    v1 = reg.push("dedup", src)
    assert v1.new_bytes == v1.size > 0
    before = store_bytes(reg)

    copy = tmp_path / "b"
    shutil.copytree(src, copy)
    for p in copy.rglob("*"):  # different mtimes must not matter
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    v2 = reg.push("dedup", copy)
    assert (v2.version, v1.version) == (2, 1)
    assert v2.digest == v1.digest
    assert v2.new_bytes == 0
    assert v2.stored_bytes < v1.size / 1000
    growth = store_bytes(reg) - before  # only ledger records, no chunk data
    assert 0 < growth < v1.size / 100

    v3 = reg.push("another-name", src)  # dedup spans model names too
    assert v3.digest == v1.digest and v3.new_bytes == 0 and v3.stored_bytes < v1.size / 1000


def test_renaming_changes_digest(reg: Registry, tmp_path: Path) -> None:
    a = tmp_path / "model.bin"
    a.write_bytes(b"same bytes")
    b = tmp_path / "other" / "renamed.bin"
    b.parent.mkdir()
    b.write_bytes(b"same bytes")
    va, vb = reg.push("f", a), reg.push("f", b)
    assert va.digest != vb.digest
    assert vb.new_bytes == 0  # the bytes themselves are shared

    d = tmp_path / "tree"
    materialize_tree(d, {"x.bin": (b"payload", False), "y": {}})
    d1 = reg.push("t", d).digest
    (d / "x.bin").rename(d / "z.bin")
    d2 = reg.push("t", d).digest
    (d / "y").rename(d / "w")
    d3 = reg.push("t", d).digest
    assert len({d1, d2, d3}) == 3


def test_digest_is_the_same_on_both_backends(tmp_path: Path) -> None:
    src = tmp_path / "s"
    materialize_tree(src, {"a.bin": (random_bytes(AVG + 3, seed=3), False), "e": {}, "x": (b"", True)})
    url = f"memory://roundtrip-{uuid.uuid4().hex}"
    try:
        dm = Registry(url).push("m", src).digest
    finally:
        MemoryStore.wipe(url)
    dl = Registry(tmp_path / "r").push("m", src).digest
    assert dm == dl


@pytest.mark.parametrize("fmt, hello_digest, tree_digest", [
    ("casreg/2", "23f5d1e5c614edc7750551e20266882280774d050f09063e58330e086a133f4d",
     "eeee1dc5c16feebbbad3f199fb4cbc9777e178b0e086b299801e91ccf8eb8959"),
    ("casreg/1", "8a6aa4815a96ca56f0c28a5a19ee401d4a2b4eb866a84ea06622784760bcf488",
     "46d89a0fd04b858c16e334d7f4f8260de07a7ad3c5dd0bc7e9ad010b19802f3d"),
])
def test_worked_examples_of_docs_format(reg: Registry, tmp_path: Path, fmt: str, hello_digest: str,
                                        tree_digest: str) -> None:
    """The worked examples of docs/FORMAT.md §5 (format 2, and format 1 for older
    registries), end to end through push."""
    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format=fmt)
    hello = tmp_path / "hello.txt"
    hello.write_bytes(b"hello\n")
    assert reg.push("hello", hello).digest == "blake3:" + hello_digest
    d = tmp_path / "example"
    materialize_tree(d, {"a.txt": (b"a", False), "bin": {"run.sh": (b"#!/bin/sh\n", True)}, "empty": {}})
    assert reg.push("example", d).digest == "blake3:" + tree_digest


def test_digest_does_not_depend_on_chunking_parameters(reg: Registry, tmp_path: Path) -> None:
    """Format 1: a registry created with other chunking parameters (casreg.json written
    first) cuts differently but gives the same version digest, and round-trips."""
    small = {"avg_size": 64 << 10, "min_size": 16 << 10, "max_size": 256 << 10, "normalization": 1,
             "algorithm": "fastcdc2020"}
    config = {"format": "casreg/1", "created_at": "2026-01-01T00:00:00Z", "chunking": small, "zstd_level": 3}
    assert reg.store.create("casreg.json", json.dumps(config).encode())
    src = tmp_path / "s"
    data = random_bytes(2 * MAX + 99, seed=11)
    materialize_tree(src, {"w.bin": (data, False), "p.bin": (periodic(MAX + 5), True)})
    v = reg.push("m", src)
    sizes = [c.raw_size for e in reg.manifest(v.ref).entries for c in e.chunks]
    assert max(sizes) <= small["max_size"] and len(sizes) > (2 * MAX) // small["max_size"]

    url = f"memory://roundtrip-{uuid.uuid4().hex}"
    try:
        other = Registry(url)
        init_config(other.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/1")
        default = other.push("m", src)
        assert default.chunk_count < v.chunk_count
        assert default.digest == v.digest
    finally:
        MemoryStore.wipe(url)
    dest = tmp_path / "d"
    reg.pull(v.ref, dest)
    assert snapshot(dest) == snapshot(src)


def test_format_2_digest_commits_the_chunk_layout(reg: Registry, tmp_path: Path) -> None:
    """Format 2: the version digest covers where chunk boundaries fall, so registries with
    the same chunking parameters agree on it and registries with others do not (the price
    of verifying ranged reads against the version; docs/FORMAT.md §5)."""
    src = tmp_path / "s"
    materialize_tree(src, {"w.bin": (random_bytes(2 * MAX + 99, seed=12), False)})
    v = reg.push("m", src)
    same, small = f"memory://roundtrip-{uuid.uuid4().hex}", f"memory://roundtrip-{uuid.uuid4().hex}"
    try:
        assert Registry(same).push("m", src).digest == v.digest
        other = Registry(small)
        init_config(other.store, ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10))
        w = other.push("m", src)
        assert w.digest != v.digest and w.chunk_count > v.chunk_count
        assert other.manifest(w.ref).files[0].digest == reg.manifest(v.ref).files[0].digest  # same bytes
    finally:
        MemoryStore.wipe(same)
        MemoryStore.wipe(small)
