"""Pulls fetch runs of chunks with one ranged read each, and an interrupted pull resumes:
what it already wrote and verified is kept, only the rest is fetched again."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg import IntegrityError, Registry, StorageError
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.content.fetch import spans
from casreg.content.manifest import ChunkRef
from casreg.content.pull import partial_path
from casreg.storage import ByteRange, ObjectStore
from casreg.testing.wrapper import StoreWrapper

SMALL = ChunkParams(avg_size=16 << 10, min_size=4 << 10, max_size=64 << 10)


class FailingStore(StoreWrapper):
    """A real store whose reads start failing after ``budget`` ranged reads, the way a
    connection dies mid-pull; it also counts the reads it served."""

    def __init__(self, inner: ObjectStore, budget: int | None = None) -> None:
        super().__init__(inner)
        self.budget, self.reads = budget, 0
        self.io_concurrency = inner.io_concurrency

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if key.startswith("packs/"):
            if self.budget is not None and self.reads >= self.budget:
                raise StorageError(f"registry {self.url}: connection lost")
            self.reads += 1
        return self.inner.read(key, byte_range)


@pytest.fixture(autouse=True)
def small_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """256 KiB runs per read, so a few MiB take many reads (production uses 4 MiB)."""
    monkeypatch.setattr("casreg.content.fetch.SPAN_BYTES", 256 << 10)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "reg", threads=1)
    init_config(r.store, SMALL)  # small chunks so a few MiB make many chunks
    return r


def _tree(root: Path) -> Path:
    rnd = random.Random(7)
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(rnd.randbytes(3 << 20))
    (root / "sub" / "a.bin").write_bytes(rnd.randbytes(600 << 10))
    (root / "sub" / "b.txt").write_bytes(b"small\n")
    return root


def _with_store(reg: Registry, store: ObjectStore) -> Registry:
    return Registry.from_store(store, threads=1)


def _same_tree(a: Path, b: Path) -> None:
    fa = sorted(p.relative_to(a) for p in a.rglob("*"))
    fb = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert fa == fb
    for rel in fa:
        if (a / rel).is_file():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_interrupted_pull_resumes_and_fetches_only_the_rest(reg: Registry, tmp_path: Path, kind: str) -> None:
    src = _tree(tmp_path / "src")
    if kind == "file":
        src = src / "weights.bin"
    v = reg.push("m", src)
    full = reg.pull(v.ref, tmp_path / "full")
    assert full.requests >= 4

    dest = tmp_path / "out" / "model"
    failing = FailingStore(reg.store, budget=full.requests // 2)
    with pytest.raises(StorageError):
        _with_store(reg, failing).pull(v.ref, dest)
    assert not dest.exists()  # nothing half-written at the destination
    partial = partial_path(dest.absolute(), reg.manifest(v.ref))
    assert partial.exists()  # ... but the work done so far is kept beside it

    counting = FailingStore(reg.store)
    res = _with_store(reg, counting).pull(v.ref, dest)
    assert not partial.exists()
    assert res.resumed_bytes > 0
    assert 0 < counting.reads < full.requests  # only what was missing
    assert res.fetched_bytes < full.fetched_bytes
    if kind == "dir":
        _same_tree(src, dest)
    else:
        assert dest.read_bytes() == src.read_bytes()


def test_resume_keeps_only_the_verified_prefix(reg: Registry, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src") / "weights.bin"
    v = reg.push("m", src)
    dest = tmp_path / "w.bin"
    partial = partial_path(dest.absolute(), reg.manifest(v.ref))
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage in the middle of what an earlier pull left
    partial.write_bytes(bytes(data))
    res = reg.pull(v.ref, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert 0 < res.resumed_bytes < len(data) // 2 + 1


def test_resume_drops_files_the_version_does_not_have(reg: Registry, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    v = reg.push("m", src)
    dest = tmp_path / "model"
    partial = partial_path(dest.absolute(), reg.manifest(v.ref))
    (partial / "stale" / "deep").mkdir(parents=True)
    (partial / "stale" / "deep" / "x").write_bytes(b"leftover")
    (partial / "extra.bin").write_bytes(b"leftover")
    reg.pull(v.ref, dest)
    _same_tree(src, dest)


def test_corrupt_registry_keeps_no_partial(reg: Registry, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src") / "weights.bin"
    v = reg.push("m", src)
    pack = next(k for k in reg.store.list("packs") if k.endswith(".pack"))
    path = Path(reg.url) / pack
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x01
    path.write_bytes(bytes(raw))
    dest = tmp_path / "w.bin"
    with pytest.raises(IntegrityError) as info:
        reg.pull(v.ref, dest)
    assert pack in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reg", "src"]


def test_spans_are_coalesced_ranged_reads(reg: Registry, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src") / "weights.bin"
    v = reg.push("m", src)
    chunks = reg.manifest(v.ref).entries[0].chunks
    counting = FailingStore(reg.store)
    res = _with_store(reg, counting).pull(v.ref, tmp_path / "w.bin")
    assert len(chunks) > 20
    assert counting.reads == res.requests == len(list(spans(chunks)))
    assert res.requests <= len(chunks) // 4  # one read per 256 KiB run here, not one per chunk


def _ref(pack: str, offset: int, size: int) -> ChunkRef:
    return ChunkRef(bytes(32), pack, offset, size, size, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 3000), st.booleans()), max_size=60),
       st.integers(1, 8000))
def test_spans_partition_chunks_into_contiguous_runs(items: list[tuple[str, int, bool]], limit: int) -> None:
    offsets = {"a": 16, "b": 16}
    chunks = []
    for pack, size, gap in items:
        offsets[pack] += 7 if gap else 0
        chunks.append(_ref(pack * 64, offsets[pack], size))
        offsets[pack] += size
    runs = list(spans(chunks, limit))
    assert [c for run in runs for c in run] == chunks
    for run in runs:
        assert len({c.pack for c in run}) == 1
        assert all(b.offset == a.offset + a.stored_size for a, b in zip(run, run[1:]))
        assert len(run) == 1 or sum(c.stored_size for c in run) <= limit
