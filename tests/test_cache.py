"""The local chunk cache (casreg/content/cache.py, docs/cache.md): a second pull over S3 makes no
data GETs, only missing chunks are fetched, damaged entries are dropped and refetched,
LRU pruning, an unusable cache directory, which registries use it, and the CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from casreg import Registry
from casreg.content.cache import ChunkCache, cache_for, default_cache_dir, parse_size
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.content.fetch import read_chunk, read_span, read_span_stats, spans
from casreg.content.manifest import ChunkRef
from casreg.errors import InvalidInputError
from casreg.storage import ByteRange
from casreg.storage.local import LocalStore
from casreg.storage.memory import MemoryStore

CLI = Path(sys.executable).with_name("casreg")
MiB = 1 << 20
SMALL = ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10)


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


class CountingMemory(MemoryStore):
    """A real memory:// store that records every pack read (key, ranges)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.pack_reads: list[tuple[str, list[ByteRange]]] = []

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if key.startswith("packs/"):
            self.pack_reads.append((key, [byte_range] if byte_range else []))
        return super().read(key, byte_range)

    def read_ranges(self, key, ranges):  # type: ignore[no-untyped-def]
        if key.startswith("packs/"):
            self.pack_reads.append((key, list(ranges)))
        return [MemoryStore.read(self, key, r) for r in ranges]


@pytest.fixture
def mem() -> CountingMemory:
    url = f"memory://cache-test-{uuid.uuid4().hex}"
    MemoryStore.wipe(url)
    yield CountingMemory(url)
    MemoryStore.wipe(url)


def push_random(store, tmp_path: Path, size: int = 3 * MiB, seed: int = 1):
    reg = Registry.from_store(store)
    init_config(reg.store, SMALL)  # small chunks (a new registry only): many chunks per pack
    src = tmp_path / f"m{seed}.bin"
    src.write_bytes(random_bytes(size, seed))
    v = reg.push("m", src)
    return reg, v, src


def chunk_refs(reg: Registry, ref: str) -> list[ChunkRef]:
    return list(reg.manifest(ref).entries[0].chunks)


# -- the acceptance test: S3 ------------------------------------------------------------------
def test_second_pull_over_s3_makes_no_data_gets(s3_env, tmp_path: Path) -> None:
    from casreg.storage.s3 import S3Store

    class Counting(S3Store):
        """The real S3 store; counts GETs of pack objects (the data)."""

        pack_gets = 0

        def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
            if key.startswith("packs/"):
                type(self).pack_gets += 1
            return super().read(key, byte_range)

        def read_ranges(self, key, ranges):  # type: ignore[no-untyped-def]
            if key.startswith("packs/"):
                type(self).pack_gets += len(ranges)
            return super().read_ranges(key, ranges)

    store = Counting(s3_env.url())
    assert cache_for(store) is not None  # s3:// is cached by default
    reg, v, src = push_random(store, tmp_path, 3 * MiB, seed=7)

    store.requests.clear()
    first = reg.pull(v.ref, tmp_path / "a.bin")
    first_gets, first_pack_gets = store.requests["get_object"], Counting.pack_gets
    assert (tmp_path / "a.bin").read_bytes() == src.read_bytes()
    assert first.fetched_bytes > 0 and first_pack_gets > 0

    store.requests.clear()
    Counting.pack_gets = 0
    second = reg.pull(v.ref, tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    assert Counting.pack_gets == 0 and second.fetched_bytes == 0 and second.requests == 0
    # what is left are the small reads that resolve the reference and load the manifest
    assert store.requests["get_object"] == first_gets - first_pack_gets, dict(store.requests)

    # CASREG_CACHE=off: the same pull goes to S3 for its data again
    os.environ["CASREG_CACHE"] = "off"
    try:
        third = reg.pull(v.ref, tmp_path / "c.bin")
    finally:
        del os.environ["CASREG_CACHE"]
    assert Counting.pack_gets == first_pack_gets and third.fetched_bytes == first.fetched_bytes


# -- pack indexes: a push reads only the ones it has not seen ---------------------------------------
def _index_keys(store) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(store.list("index"))


def test_push_over_s3_reads_only_the_pack_indexes_it_has_not_seen(s3_env, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Index objects are immutable and named by their BLAKE3, so they live in the chunk
    cache: a push GETs only the indexes this machine has neither read nor written before
    (with the cache off: every index in the registry, every time). Two "machines" are two
    cache directories."""
    import casreg.content.push
    from casreg.storage.s3 import S3Store
    from casreg.testing.counting import CountingStore

    monkeypatch.setattr(casreg.content.push, "PACK_TARGET", 256 << 10)  # many packs from a few MiB
    store = CountingStore(S3Store(s3_env.url()))
    machine = lambda name: monkeypatch.setenv("CASREG_CACHE_DIR", str(tmp_path / f"cache-{name}"))  # noqa: E731
    machine("a")
    reg, _, _ = push_random(store, tmp_path, 3 * MiB, seed=21)
    assert len(_index_keys(store)) >= 8

    def push(seed: int) -> tuple[int, int]:
        """(index GETs during the push, bytes it stored)"""
        src = tmp_path / f"p{seed}.bin"
        if not src.exists():
            src.write_bytes(random_bytes(3 * MiB, seed))
        store.reset()
        v = reg.push("m", src)
        return store.reads["index"], v.stored_bytes

    assert push(22)[0] == 0  # machine a wrote every index there is: none fetched
    machine("b")
    before_b = len(_index_keys(store))
    assert push(23)[0] == before_b  # a new machine reads each index once ...
    assert push(24)[0] == 0  # ... and never again
    machine("a")
    written_by_b = len(_index_keys(store)) - before_b
    assert written_by_b > 0 and push(25)[0] == written_by_b  # only what machine b wrote
    gets, stored = push(25)  # the same content again: nothing fetched, nothing new stored
    assert gets == 0 and stored < 64 << 10
    monkeypatch.setenv("CASREG_CACHE", "off")
    everything = len(_index_keys(store))
    assert push(26)[0] == everything  # without the cache: every index in the registry


def test_cached_indexes_of_removed_packs_are_not_used_and_damaged_ones_are_refetched(
        mem: CountingMemory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only indexes the listing shows count: once gc removed a pack (and its index), its
    chunks are not claimed from a cached copy (a push would otherwise point a new version
    at bytes that are gone). A damaged cached index is dropped and read again."""
    import casreg.content.push
    from casreg.content.packs import ChunkIndex
    from casreg.keys import index_key, pack_key

    monkeypatch.setattr(casreg.content.push, "PACK_TARGET", 256 << 10)
    cache = ChunkCache(tmp_path / "cache")
    reg, va, _ = push_random(mem, tmp_path, 2 * MiB, seed=31)
    (tmp_path / "b.bin").write_bytes(random_bytes(2 * MiB, 32))
    vb = reg.push("m", tmp_path / "b.bin")
    full = ChunkIndex.load(mem, cache)
    b_packs = {c.pack for c in chunk_refs(reg, vb.ref)}
    b_chunks = [c.digest for c in chunk_refs(reg, vb.ref)]
    assert all(d in full for d in b_chunks)
    for pack in b_packs:  # what gc does to an unreferenced pack
        mem.delete(index_key(pack))
        mem.delete(pack_key(pack))
    assert all(cache.has_index(bytes.fromhex(p)) for p in b_packs)  # still cached ...
    after = ChunkIndex.load(mem, cache)
    assert not any(d in after for d in b_chunks)  # ... but not used
    assert all(c.digest in after for c in chunk_refs(reg, va.ref))
    a_pack = chunk_refs(reg, va.ref)[0].pack
    cache.path(bytes.fromhex(a_pack), index=True).write_bytes(b"not the index")
    again = ChunkIndex.load(mem, cache)
    assert sorted(c.digest for c in again) == sorted(c.digest for c in after) and cache.dropped == 1
    assert cache.get(bytes.fromhex(a_pack), index=True) == mem.read(index_key(a_pack))  # refetched and kept
    assert cache.info().indexes == len(_index_keys(mem)) + len(b_packs)  # b's stay until pruned


# -- what read_span fetches ---------------------------------------------------------------------
def test_read_span_fetches_only_the_missing_runs(mem: CountingMemory, tmp_path: Path) -> None:
    reg, v, _ = push_random(mem, tmp_path, 2 * MiB)
    refs = chunk_refs(reg, v.ref)
    run = next(r for r in spans(refs, limit=64 << 20) if len(r) >= 8)[:8]
    cache = ChunkCache(tmp_path / "cache")
    for i in (0, 1, 4):  # cached: 0, 1, 4; missing runs: [2, 3] and [5, 6, 7]
        assert cache.put(run[i].digest, read_chunk(mem, run[i], cache=None))
    mem.pack_reads.clear()
    got = read_span_stats(mem, run, cache)
    assert got.chunks == read_span(mem, run, cache=None)
    key, ranges = mem.pack_reads[0]
    assert key.startswith("packs/") and ranges == [ByteRange(run[2].offset, run[3].offset + run[3].stored_size),
                      ByteRange(run[5].offset, run[7].offset + run[7].stored_size)]
    assert got.requests == 2 and got.fetched_bytes == sum(run[i].stored_size for i in (2, 3, 5, 6, 7))
    assert got.cached_bytes == sum(run[i].raw_size for i in (0, 1, 4))
    # everything fetched went into the cache: the next read makes no request at all
    mem.pack_reads.clear()
    again = read_span_stats(mem, run, cache)
    assert again.chunks == got.chunks and again.requests == 0 and mem.pack_reads == []


def test_default_reads_of_a_local_registry_bypass_the_cache(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "reg")
    reg, v, _ = push_random(store, tmp_path)
    assert cache_for(store) is None and cache_for(MemoryStore("memory://x")) is None
    reg.pull(v.ref, tmp_path / "out.bin")
    assert not default_cache_dir().exists()  # nothing was cached
    os.environ["CASREG_CACHE"] = "on"  # e.g. a registry directory on NFS
    try:
        assert cache_for(store) is not None
        reg.pull(v.ref, tmp_path / "out2.bin")
        assert ChunkCache().info().entries == len(chunk_refs(reg, v.ref))
    finally:
        del os.environ["CASREG_CACHE"]


def test_cache_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CASREG_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CASREG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "casreg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "casreg"
    monkeypatch.setenv("CASREG_CACHE", "sometimes")
    with pytest.raises(InvalidInputError, match="CASREG_CACHE"):
        cache_for(MemoryStore("memory://x"))
    assert parse_size("10GB") == 10 * 10**9 and parse_size("10GiB") == 10 << 30
    assert parse_size("1.5 MB") == 1_500_000 and parse_size("512") == 512 and parse_size("2k") == 2000
    for bad in ("ten", "10XB", "-1GB", ""):
        with pytest.raises(InvalidInputError):
            parse_size(bad)


# -- verified on write and on read ---------------------------------------------------------------
def test_put_refuses_bytes_that_do_not_match(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "c")
    from blake3 import blake3

    digest = blake3(b"right").digest()
    with pytest.raises(ValueError, match="do not match"):
        cache.put(digest, b"wrong")
    assert cache.get(digest) is None and cache.info().entries == 0
    assert cache.put(digest, b"right") and cache.get(digest, 5) == b"right"


def test_damaged_entries_are_dropped_and_refetched(mem: CountingMemory, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    reg, v, src = push_random(mem, tmp_path, 1 * MiB)
    refs = chunk_refs(reg, v.ref)
    cache = ChunkCache(tmp_path / "cache")
    for run in spans(refs):
        read_span(mem, run, cache)
    flipped, truncated, emptied = cache.path(refs[0].digest), cache.path(refs[1].digest), cache.path(refs[2].digest)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 1
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-1])
    emptied.write_bytes(b"")  # what a crash can leave behind an unsynced rename
    mem.pack_reads.clear()
    with caplog.at_level(logging.WARNING, logger="casreg.content.cache"):
        reg_cached = [c for run in spans(refs) for c in read_span(mem, run, cache)]
    assert b"".join(reg_cached) == src.read_bytes()  # never the damaged bytes
    assert cache.dropped == 3
    assert sum(len(r) for _, r in mem.pack_reads) >= 1  # refetched from the registry
    assert "dropped damaged entry" in caplog.text and caplog.text.count("dropped damaged entry") == 1
    for ref in refs[:3]:  # and repaired in the cache
        assert cache.get(ref.digest, ref.raw_size) is not None


def test_planted_links_fifos_and_huge_entries_are_misses(mem: CountingMemory, tmp_path: Path) -> None:
    """Whatever sits at an entry's name that is not a regular file of the right size is
    dropped like a damaged entry: a FIFO does not block the read, a link is not followed
    (not even to the right bytes), a huge index entry is not read into memory."""
    reg, v, src = push_random(mem, tmp_path, 1 * MiB)
    refs = chunk_refs(reg, v.ref)
    cache = ChunkCache(tmp_path / "cache")
    for run in spans(refs):
        read_span(mem, run, cache)
    fifo, link, folder = (cache.path(r.digest) for r in refs[:3])
    genuine = tmp_path / "genuine"
    genuine.write_bytes(link.read_bytes())
    for p in (fifo, link, folder):
        p.unlink()
    os.mkfifo(fifo)
    link.symlink_to(genuine)
    folder.mkdir()
    index = cache.path(b"\x07" * 32, index=True)
    index.parent.mkdir(parents=True, exist_ok=True)
    with open(index, "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: costs no disk
    done: list[bytes] = []
    reader = threading.Thread(target=lambda: done.extend(c for run in spans(refs) for c in read_span(mem, run, cache)),
                              daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "a FIFO in the cache blocked the read"
    assert b"".join(done) == src.read_bytes()
    assert cache.dropped >= 2 and genuine.exists()  # the link's target was left alone
    assert cache.get(b"\x07" * 32, index=True) is None
    for ref in refs[:2]:  # repaired: regular files again
        assert cache.path(ref.digest).is_file() and not cache.path(ref.digest).is_symlink()


# -- bounded: LRU ----------------------------------------------------------------------------------
def test_prune_removes_least_recently_used_first(tmp_path: Path) -> None:
    from blake3 import blake3

    cache = ChunkCache(tmp_path / "c", max_size="1GB")
    blobs = [random_bytes(1000, i) for i in range(6)]
    digests = [blake3(b).digest() for b in blobs]
    now = time.time()
    for i, (d, b) in enumerate(zip(digests, blobs)):
        cache.put(d, b)
        os.utime(cache.path(d), (now - 1000 + i, now - 1000 + i))  # 0 oldest ... 5 newest
    assert cache.get(digests[0]) == blobs[0]  # a hit makes 0 the most recently used
    res = cache.prune(3000)
    assert (res.removed_entries, res.entries, res.bytes) == (3, 3, 3000)
    left = {i for i, d in enumerate(digests) if d in cache}
    assert left == {0, 4, 5}
    assert cache.info().entries == 3 and cache.info().bytes == 3000


def test_cache_prunes_itself_to_its_bound(mem: CountingMemory, tmp_path: Path) -> None:
    reg, v, src = push_random(mem, tmp_path, 3 * MiB)
    cache = ChunkCache(tmp_path / "cache", max_size=1 * MiB)
    out = [c for run in spans(chunk_refs(reg, v.ref)) for c in read_span(mem, run, cache)]
    assert b"".join(out) == src.read_bytes()
    info = cache.info()
    assert 0 < info.bytes <= 1 * MiB + MiB // 10 + (256 << 10), info  # bound + the 10 % slack + one chunk


# -- a cache directory that cannot be used ---------------------------------------------------------
def _read_all_through(cache: ChunkCache, mem: CountingMemory, refs: list[ChunkRef]) -> bytes:
    return b"".join(c for run in spans(refs) for c in read_span(mem, run, cache))


def test_cache_dir_under_a_file_warns_once_and_reads_from_the_registry(
        mem: CountingMemory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg, v, src = push_random(mem, tmp_path, 1 * MiB)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache's parent should be")
    cache = ChunkCache(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="casreg.content.cache"):
        assert _read_all_through(cache, mem, chunk_refs(reg, v.ref)) == src.read_bytes()
        assert _read_all_through(cache, mem, chunk_refs(reg, v.ref)) == src.read_bytes()
    warnings = [r for r in caplog.records if r.name == "casreg.content.cache"]
    assert len(warnings) == 1, caplog.text
    assert "cannot store chunks" in warnings[0].message and "a file is in the way" in warnings[0].message


def test_read_only_cache_dir_warns_and_reads_from_the_registry(
        mem: CountingMemory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg, v, src = push_random(mem, tmp_path, 1 * MiB)
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        probe = root / "probe"
        try:
            probe.write_bytes(b"x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root: chmod 555 does not stop writes (the parent-is-a-file "
                        "and full-disk tests cover an unusable cache)")
        cache = ChunkCache(root)
        with caplog.at_level(logging.WARNING, logger="casreg.content.cache"):
            assert _read_all_through(cache, mem, chunk_refs(reg, v.ref)) == src.read_bytes()
        assert "is read-only" in caplog.text and caplog.text.count("cannot store chunks") == 1
    finally:
        root.chmod(0o755)


def test_full_cache_disk_warns_and_reads_from_the_registry(tmp_path: Path) -> None:
    """A real write failure for lack of space: the child process may not write files past
    64 KiB (RLIMIT_FSIZE, so write(2) fails with EFBIG, as on a full disk); its registry is
    in memory, so only the cache writes hit the limit."""
    script = textwrap.dedent(f"""
        import logging, resource, signal, sys
        import numpy as np
        from casreg import Registry
        from casreg.content.cache import ChunkCache
        from casreg.content.fetch import read_span, spans
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        reg = Registry("memory://full")
        data = np.random.default_rng(3).bytes(3 << 20)
        src = {str(tmp_path / "src.bin")!r}
        open(src, "wb").write(data)
        v = reg.push("m", src)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        cache = ChunkCache({str(tmp_path / "cache")!r})
        refs = reg.manifest(v.ref).entries[0].chunks
        out = b"".join(c for run in spans(refs) for c in read_span(reg.store, run, cache))
        assert out == data, "wrong bytes"
        print("entries", cache.info().entries)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "entries 0" in p.stdout
    assert p.stderr.count("cannot store chunks") == 1 and "the disk is full" in p.stderr, p.stderr


# -- the CLI ---------------------------------------------------------------------------------------
def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_cache_info_prune_clear(tmp_path: Path) -> None:
    import json

    env = dict(os.environ, CASREG_CACHE="on", CASREG_CACHE_DIR=str(tmp_path / "cache"),
               CASREG_REGISTRY=str(tmp_path / "reg"))
    (tmp_path / "m.bin").write_bytes(random_bytes(3 * MiB, 5))
    assert run_cli("push", "m", str(tmp_path / "m.bin"), "-q", env=env).returncode == 0
    p = run_cli("pull", "m", str(tmp_path / "out.bin"), "--json", env=env)
    assert p.returncode == 0, p.stderr
    info = json.loads(run_cli("cache", "info", "--json", env=env).stdout)
    assert info["path"] == str(tmp_path / "cache") and info["mode"] == "on"
    assert info["entries"] >= 2 and info["bytes"] == 3 * MiB
    p = run_cli("pull", "m", str(tmp_path / "again.bin"), "--json", env=env)
    assert json.loads(p.stdout)["fetched_bytes"] == 0
    text = run_cli("cache", "info", env=env).stdout
    assert str(tmp_path / "cache") in text and "3.0 MiB" in text

    p = run_cli("cache", "prune", "--max-size", "2MB", "--json", env=env)
    res = json.loads(p.stdout)
    assert res["removed_entries"] >= 1 and res["bytes"] <= 2_000_000
    p = run_cli("cache", "prune", "--max-size", "lots", env=env)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "'lots'" in p.stderr
    assert (tmp_path / "cache" / "verified-packs").is_dir()  # the push confirmed its pack here
    assert run_cli("cache", "clear", "-q", env=env).stdout == ""
    assert json.loads(run_cli("cache", "info", "--json", env=env).stdout)["entries"] == 0
    assert not (tmp_path / "cache" / "verified-packs").exists()  # clear forgets confirmations too


def test_a_cache_cleared_by_another_process_keeps_working(mem: CountingMemory, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    reg, v, src = push_random(mem, tmp_path, 1 * MiB)
    refs = chunk_refs(reg, v.ref)
    cache = ChunkCache(tmp_path / "cache")
    assert _read_all_through(cache, mem, refs) == src.read_bytes()
    ChunkCache(tmp_path / "cache").clear()  # another instance (another process) clears it
    with caplog.at_level(logging.WARNING, logger="casreg.content.cache"):
        assert _read_all_through(cache, mem, refs) == src.read_bytes()
    assert caplog.text == "" and cache.info().entries == len(refs)


def test_casreg_fsspec_reads_over_s3_come_from_the_cache_the_second_time(s3_env, tmp_path: Path) -> None:
    """casreg:// reads go through read_span too: once read, a file is served from the
    cache even with every pack object gone from the bucket."""
    import fsspec

    url = s3_env.url()
    reg = Registry(url)
    src = tmp_path / "w.bin"
    src.write_bytes(random_bytes(3 * MiB, 9))
    reg.push("w", src)
    with fsspec.open("casreg://w/w.bin", "rb", registry=url) as f:
        f.seek(MiB)
        assert f.read(MiB) == src.read_bytes()[MiB:2 * MiB]  # a range: only its chunks are cached
    partial = ChunkCache().info().entries
    assert 0 < partial < len(chunk_refs(reg, "w"))
    assert fsspec.filesystem("casreg", registry=url).cat_file("w/w.bin") == src.read_bytes()
    for key in [k for k in reg.store.list("packs")]:
        reg.store.delete(key)  # the data is gone from the registry...
    fs = fsspec.filesystem("casreg", registry=url, skip_instance_cache=True)
    assert fs.cat_file("w/w.bin") == src.read_bytes()  # ...and still read, verified, from the cache
