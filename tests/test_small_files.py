"""Many small files: a push hands them to its workers in batches, and a pull of a fresh
tree lets the worker that read a file whole create it. Both must keep every guarantee
of the one-file-at-a-time paths: the same bytes, modes and digests, duplicates stored
once, no write through a link planted in the partial tree, and after a failure nothing
at the destination (a damaged registry: nothing beside it either)."""

from __future__ import annotations

import os
import random
import stat
import threading
from pathlib import Path

import pytest
from test_planes import bf16_weights

from casreg import IntegrityError, Registry, StorageError
from casreg.content import push as push_mod
from casreg.content.chunking import ChunkParams
from casreg.content.codec import Codec, FloatHint, encode, encode_many
from casreg.content.config import init_config
from casreg.content.manifest import Entry, Manifest
from casreg.content.pull import materialize, partial_path
from casreg.keys import pack_key
from casreg.storage import ByteRange, ObjectStore
from casreg.storage.local import LocalStore
from casreg.testing.wrapper import StoreWrapper

#: Every file of :func:`small_tree` but one is at most ``min_size`` (one chunk, the small
#: file path); the 700 KB one is cut into several chunks.
PARAMS = ChunkParams(avg_size=128 << 10, min_size=64 << 10, max_size=256 << 10)


def small_tree(root: Path, n: int = 150, seed: int = 3) -> Path:
    """``n`` files of 1-40 KB in a few directories (some JSON-like, some bf16 weights
    starting at either phase, some random, a few identical, one executable, one empty),
    plus one file larger than a chunk's minimum in the middle (the path that cuts chunks),
    and an empty directory."""
    rnd = random.Random(seed)
    for i in range(n):
        d = root / f"d{i % 4}" / ("deep" if i % 7 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            data = (b'{"k": %d, "v": "%s"}\n' % (i, b"x" * rnd.randrange(100, 400))) * rnd.randrange(3, 60)
        elif i % 5 == 1:  # bf16 weights: PLANES from SMALL_PROBE_MIN_BYTES on, zstd below
            data = bf16_weights(rnd.randrange(2_000, 20_000), seed=i)[rnd.randrange(2):]
        else:
            data = rnd.randbytes(rnd.randrange(1, 40_000))
        (d / f"f{i:03}.bin").write_bytes(data)
    for i in range(3):
        (root / "d1" / f"dup{i}.bin").write_bytes(b"the same bytes " * 500)
    (root / "d2" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "d2" / "run.sh").chmod(0o755)
    (root / "d3" / "empty.txt").write_bytes(b"")
    (root / "d0" / "big.bin").write_bytes(rnd.randbytes(700_000))  # more than min_size: cut in chunks
    (root / "empty-dir").mkdir()
    return root


def snapshot(root: Path) -> dict[str, tuple[str, bytes | None, bool]]:
    """Every entry below ``root`` (kind, bytes, executable), following no link."""
    out: dict[str, tuple[str, bytes | None, bool]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            kind = "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out[p.relative_to(root).as_posix()] = (kind, p.read_bytes() if kind == "file" else None,
                                                   bool(st.st_mode & 0o100) if kind == "file" else False)
    return out


@pytest.fixture
def pushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Registry, Path, Manifest]:
    # small batches, so that 150 files make many of them (and a batch is cut by the big file)
    monkeypatch.setattr(push_mod, "SMALL_BATCH_FILES", 8)
    monkeypatch.setattr(push_mod, "SMALL_BATCH_BYTES", 64 << 10)
    reg = Registry(tmp_path / "reg", threads=3)
    init_config(reg.store, PARAMS)
    src = small_tree(tmp_path / "src")
    v = reg.push("m", src)
    return reg, src, reg.manifest(v.ref)


def test_a_batched_push_records_every_file_and_pulls_back_identical(pushed: tuple[Registry, Path, Manifest],
                                                                   tmp_path: Path) -> None:
    reg, src, manifest = pushed
    files = {e.path: e for e in manifest.files}
    assert len(files) == sum(1 for p in src.rglob("*") if p.is_file()) == 156
    for e in manifest.files:
        data = (src / e.path).read_bytes()
        assert e.size == len(data)
        assert sum(c.raw_size for c in e.chunks) == len(data)
    dups = {files[f"d1/dup{i}.bin"].chunks[0] for i in range(3)}
    assert len(dups) == 1  # one chunk, stored once, named three times
    assert len(files["d0/big.bin"].chunks) > 1
    assert files["d2/run.sh"].type == "x"
    res = reg.pull("m", tmp_path / "out")
    assert res.files == 156
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_small_payloads_lie_back_to_back_in_file_order(pushed: tuple[Registry, Path, Manifest]) -> None:
    """Batches are drained in order, so a directory's new small files are stored in one
    pack in the order of the manifest: a pull reads runs of them with one request."""
    _, _, manifest = pushed
    small = [e.chunks[0] for e in manifest.files if len(e.chunks) == 1 and e.path.startswith("d3/")]
    assert len(small) > 20
    assert len({c.pack for c in small}) == 1
    assert all(b.offset == a.offset + a.stored_size for a, b in zip(small, small[1:]))


def test_a_small_file_that_changes_during_a_batched_push_fails_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = small_tree(tmp_path / "src", n=40)
    reg = Registry(tmp_path / "reg", threads=2)
    real = push_mod._Pusher._read_small_batch

    def grow_one(self: push_mod._Pusher, files: list[push_mod.SourceFile]) -> list[object]:
        victim = next((f for f in files if f.relpath == "d1/f013.bin"), None)
        if victim is not None:
            with open(victim.abspath, "ab") as fh:
                fh.write(b"more")
        return real(self, files)  # type: ignore[return-value]

    monkeypatch.setattr(push_mod._Pusher, "_read_small_batch", grow_one)
    with pytest.raises(push_mod.InvalidInputError, match="d1/f013.bin changed while it was being pushed"):
        reg.push("m", src)


@pytest.mark.parametrize("threads", [1, 4])
def test_a_fresh_pull_creates_files_on_its_workers_with_modes_and_umask(
        pushed: tuple[Registry, Path, Manifest], tmp_path: Path, threads: int) -> None:
    reg, src, manifest = pushed
    old = os.umask(0o027)
    try:
        dest = tmp_path / f"out-{threads}"
        stats = materialize(reg.store, manifest, dest, threads=threads, cache=None)
    finally:
        os.umask(old)
    assert stats.files == 156
    assert snapshot(dest) == snapshot(src)
    assert stat.S_IMODE((dest / "d2" / "run.sh").stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "d1" / "dup0.bin").stat().st_mode) == 0o640
    assert not partial_path(dest, manifest).exists()


class PlantingStore(StoreWrapper):
    """A real store that, at its first pack read (the partial tree and its directories
    exist by then, the files not yet), plants a symbolic link to a victim file at the
    place of every file of ``manifest`` whose directory is there."""

    def __init__(self, inner: ObjectStore, manifest: Manifest, partial: Path, victim: Path) -> None:
        super().__init__(inner)
        self.io_concurrency = inner.io_concurrency
        self.manifest, self.partial, self.victim = manifest, partial, victim
        self.planted = 0
        self.lock = threading.Lock()  # the first read plants; any other waits until it has

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        with self.lock:
            if key.startswith("packs/") and not self.planted:
                for e in self.manifest.files:
                    p = self.partial / e.path
                    if p.parent.is_dir() and not os.path.lexists(p):
                        p.symlink_to(self.victim)
                        self.planted += 1
        return self.inner.read(key, byte_range)


def test_links_planted_in_a_fresh_tree_are_never_written_through(pushed: tuple[Registry, Path, Manifest],
                                                                 tmp_path: Path) -> None:
    reg, src, manifest = pushed
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "out"
    planting = PlantingStore(reg.store, manifest, partial_path(dest, manifest), victim)
    materialize(planting, manifest, dest, threads=3, cache=None)
    assert planting.planted > 10
    assert victim.read_bytes() == b"precious"
    assert snapshot(dest) == snapshot(src)  # no link in the result, every file right


class FailingStore(StoreWrapper):
    """A real store whose pack reads fail after ``budget`` of them (a lost connection)."""

    def __init__(self, inner: ObjectStore, budget: int) -> None:
        super().__init__(inner)
        self.io_concurrency = inner.io_concurrency
        self.budget = budget

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if key.startswith("packs/"):
            if self.budget <= 0:
                raise StorageError(f"registry {self.url}: connection lost")
            self.budget -= 1
        return self.inner.read(key, byte_range)


def test_an_interrupted_fresh_pull_leaves_nothing_at_dest_and_resumes(pushed: tuple[Registry, Path, Manifest],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    reg, src, manifest = pushed
    monkeypatch.setattr("casreg.content.pull.BATCH_FILES", 4)  # many reads
    dest = tmp_path / "out" / "model"
    with pytest.raises(StorageError, match="connection lost"):
        materialize(FailingStore(reg.store, budget=6), manifest, dest, threads=3, cache=None)
    assert not dest.exists()
    partial = partial_path(dest, manifest)
    written = [p for p in partial.rglob("*") if p.is_file()]
    assert written  # the workers' files are kept beside dest ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reg", "src"]  # ... and nothing else anywhere
    assert os.listdir(tmp_path / "out") == [partial.name]
    stats = materialize(reg.store, manifest, dest, threads=3, cache=None)
    assert stats.resumed_bytes > 0  # a resumed tree keeps what was written
    assert snapshot(dest) == snapshot(src)
    assert not partial.exists()


def test_a_damaged_registry_leaves_nothing_of_a_fresh_pull(pushed: tuple[Registry, Path, Manifest],
                                                           tmp_path: Path) -> None:
    reg, _, manifest = pushed
    last = max((e.chunks[0] for e in manifest.files if len(e.chunks) == 1), key=lambda c: c.offset)
    assert isinstance(reg.store, LocalStore)
    path = Path(reg.url) / pack_key(last.pack)
    raw = bytearray(path.read_bytes())
    raw[last.offset + last.stored_size // 2] ^= 0x01  # the last small payload: after many files were created
    path.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError):
        materialize(reg.store, manifest, dest, threads=3, cache=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reg", "src"]


@pytest.mark.parametrize("which", ["one chunk", "several chunks"])
def test_a_manifest_whose_file_digest_lies_creates_no_file(pushed: tuple[Registry, Path, Manifest],
                                                           tmp_path: Path, which: str) -> None:
    """A worker creates a file only once its digest is checked: for a one-chunk file the
    chunk's digest must be the file's, for a file of several chunks read whole by one
    read the bytes are hashed. A manifest that lies is refused, nothing is kept."""
    reg, _, manifest = pushed
    entries = []
    for e in manifest.entries:
        lie = e.type != "d" and ((which == "one chunk" and e.path == "d3/f003.bin")
                                 or (which == "several chunks" and e.path == "d0/big.bin"))
        entries.append(Entry(e.path, e.type, e.size, bytes(32) if lie else e.digest, e.chunks))
    forged = Manifest(manifest.kind, entries, manifest.chunking, tree=manifest.tree)
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="does not match its digest"):
        materialize(reg.store, forged, dest, threads=3, cache=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reg", "src"]


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.RAW, Codec.PLANES])
def test_the_check_before_write_catches_a_faulty_encoding_of_a_small_file(tmp_path: Path, codec: Codec,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A small file's chunk is checked by comparing what decodes with the bytes read
    (its digest was taken of them): a wrong payload of any codec fails the push."""
    src = small_tree(tmp_path / "src", n=30)
    reg = Registry(tmp_path / "reg", threads=2)

    def damaged(raw: bytes, got: Codec, stored: bytes) -> tuple[Codec, bytes]:
        if not 1000 <= len(raw) <= 40_000:  # small files only (the big one's chunks take the other path)
            return got, bytes(stored)
        wrong = bytearray(stored if got == codec else raw)
        wrong[len(wrong) // 2] ^= 0x40
        return codec, bytes(wrong)

    def faulty(raw: bytes | memoryview, level: int = 3, hint: FloatHint | None = None) -> tuple[Codec, bytes]:
        return damaged(bytes(raw), *encode(raw, level, hint))

    def faulty_many(raws: list[bytes], level: int = 3,
                    hints: list[FloatHint | None] | None = None) -> list[tuple[Codec, bytes]]:
        return [damaged(raw, *payload) for raw, payload in zip(raws, encode_many(raws, level, hints))]

    monkeypatch.setattr(push_mod, "encode", faulty)  # (one file at a time, and the small files coded together)
    monkeypatch.setattr(push_mod, "encode_many", faulty_many)
    wrong = rf"check before write: chunk blake3:[0-9a-f]{{64}} as encoded \({codec.name}\)"
    with pytest.raises(IntegrityError, match=wrong):
        reg.push("m", src)
    assert list(reg.store.list("manifests")) == []


def test_many_small_files_round_trip_on_every_backend(registry: Registry, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched push and the fresh pull whose workers create the files, over each
    backend (an object store pulls with many more threads than a local disk)."""
    monkeypatch.setattr(push_mod, "SMALL_BATCH_FILES", 8)
    monkeypatch.setattr("casreg.content.pull.BATCH_FILES", 5)
    src = small_tree(tmp_path / "src", n=60)
    v = registry.push("m", src)
    res = registry.pull(v.ref, tmp_path / "out")
    assert res.files == sum(1 for p in src.rglob("*") if p.is_file())
    assert snapshot(tmp_path / "out") == snapshot(src)
