"""Index bundles (casreg/content/bundles.py): a load that reads them answers what a load of
the index objects answers, whatever is wrong with the bundle, in far fewer reads.

A bundle is a copy of many pack indexes in one object, written by ``casreg compact``. It is
trusted no more than the index objects: its directory must hash to its name, every index
taken from it must hash to its pack id, and only packs whose index is listed are looked up
in it. So each property builds a registry of index objects, bundles some, damages the
bundle or the registry, and compares the load against one that ignores bundles.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import casreg.content.bundles as bundles
import casreg.content.index_table as index_table
import casreg.content.packs as packs
from casreg import Registry
from casreg.content.bundles import BUNDLE_MAGIC, open_best_bundle, write_bundle
from casreg.content.cache import ChunkCache
from casreg.content.packs import PACK_MAGIC, ChunkIndex, _Slot, encode_index, index_limit
from casreg.keys import BUNDLES, bundle_key, index_key, parse_bundle_key, parse_index_key
from casreg.storage import ByteRange, ObjectStore
from casreg.storage.local import LocalStore
from casreg.storage.memory import MemoryStore
from casreg.testing.counting import CountingStore


def _store() -> MemoryStore:
    return MemoryStore(f"memory://bundles-{uuid.uuid4().hex}")


def _index(digests: list[bytes], stored: int = 700) -> bytes:
    slots, offset = [], len(PACK_MAGIC)
    for d in digests:
        slots.append(_Slot(d, offset, stored, 1000, 2))
        offset += stored
    return encode_index(slots)


def _plant(store: MemoryStore, index: bytes) -> str:
    pack_id = blake3(index).hexdigest()
    store.create(index_key(pack_id), index)
    return pack_id


def _bundles(store: MemoryStore) -> list[str]:
    return sorted(k for k in store.list(BUNDLES))


def _load(store: ObjectStore, *, bundles: bool, compact_above: int | None = None,
          cache: ChunkCache | None = None) -> ChunkIndex:
    """The load as a push does it, reading bundles from the first missing index on (or never)."""
    with mock.patch.object(packs, "USE_AT_LEAST", 1 if bundles else 1 << 40):
        return ChunkIndex.load(store, cache=cache, compact_above=compact_above)


def _assert_same(got: ChunkIndex, want: ChunkIndex, digests: set[bytes]) -> None:
    for d in digests:
        assert got.get(d) == want.get(d), d.hex()
    assert got.pack_sizes == want.pack_sizes
    assert list(got) == list(want)


_POOL = [os.urandom(32) for _ in range(12)]
_damage = st.sampled_from(["none", "none", "data", "directory", "tail", "truncate", "gone", "renamed", "swapped",
                           "huge-count"])


def _damage_bundle(store: ObjectStore, key: str, how: str) -> None:
    data = store.read(key)
    bundle_id = str(parse_bundle_key(key))
    count = struct.unpack_from("<Q", data, len(data) - 16)[0]
    dir_start = len(data) - 16 - 40 * count
    if how == "data":  # one index's bytes changed: that index is read on its own
        data = data[:5] + bytes([data[5] ^ 1]) + data[6:]
    elif how == "directory":  # no longer what the name says
        data = data[:dir_start + 33] + bytes([data[dir_start + 33] ^ 1]) + data[dir_start + 34:]
    elif how == "tail":
        data = data[:-1] + b"\x00"
    elif how == "truncate":
        data = data[:len(data) // 2]
    elif how == "huge-count":  # a count no store could hold, its name made to match
        tail = struct.pack("<Q8s", 1 << 60, BUNDLE_MAGIC)
        store.delete(key)
        store.create(bundle_key(blake3(tail).hexdigest()), tail)
        return
    elif how == "swapped":  # two indexes' bytes exchanged, the directory unchanged
        first = struct.unpack_from("<Q", data, dir_start + 32)[0]
        second = struct.unpack_from("<Q", data, dir_start + 72)[0] if count > 1 else 0
        if count > 1 and first == second:
            data = data[first:2 * first] + data[:first] + data[2 * first:]
    if how == "renamed":  # the same bytes under another bundle's name
        store.delete(key)
        store.create(bundle_key(blake3(b"other" + bundle_id.encode()).hexdigest()), data)
        return
    store.delete(key)
    if how != "gone":
        store.create(key, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(st.lists(st.sampled_from(_POOL), min_size=0, max_size=5), min_size=1, max_size=8),
       after=st.lists(st.lists(st.sampled_from(_POOL), min_size=1, max_size=4), max_size=3),
       removed=st.sets(st.integers(0, 7), max_size=3), damage=_damage, compact=st.booleans(),
       rebundle=st.booleans(), cached=st.booleans(), later=st.sampled_from(["nothing", "damaged", "gone"]))
def test_a_load_through_a_bundle_answers_what_the_indexes_answer(
        before: list[list[bytes]], after: list[list[bytes]], removed: set[int], damage: str, compact: bool,
        rebundle: bool, cached: bool, later: str) -> None:
    """(``later``: what happens to the bundles after the load, while a table reads entries
    back from them: nothing, every copy damaged in place, or every copy removed. The table
    keeps no index read back here, so each lookup reads again.)"""
    with mock.patch.object(index_table, "RECENT", 0):
        _load_through_a_bundle(before, after, removed, damage, compact, rebundle, cached, later)


def _load_through_a_bundle(before: list[list[bytes]], after: list[list[bytes]], removed: set[int], damage: str,
                           compact: bool, rebundle: bool, cached: bool, later: str) -> None:
    store = _store()
    ids = [_plant(store, _index(ds)) for ds in before]
    store.create(index_key("ab" * 32), b"not an index at all, under a pack id it does not hash to")
    result = write_bundle(store, max_index=index_limit(store), at_least=1)
    assert result.key is not None and _bundles(store) == [result.key]
    assert result.packs == len(set(ids))  # the planted non-index is left out
    for ds in after:  # pushed since the bundle was written
        _plant(store, _index(ds))
    for i in removed:  # gc removed these packs since (their indexes go with them)
        if i < len(ids):
            store.delete(index_key(ids[i]))
    _damage_bundle(store, result.key, damage)
    if rebundle:  # a second bundle, copied from the damaged one where that one still serves
        again = write_bundle(store, max_index=index_limit(store), at_least=1)
        assert again.key is None or _bundles(store) == [again.key]
    threshold = -1 if compact else None
    want = _load(store, bundles=False, compact_above=threshold)
    if not cached:
        got = _load(store, bundles=True, compact_above=threshold)
        _assert_same(got, want, set(_POOL) | {os.urandom(32)})
        _disturb(store, None, later)
        _assert_same(got, want, set(_POOL) | {os.urandom(32)})
        return
    root = tempfile.mkdtemp(prefix="bundle-cache-")
    try:  # a machine's first load (the bundle copied into its cache), then its next two
        for _ in range(3):
            got = _load(store, bundles=True, compact_above=threshold, cache=ChunkCache(root))
            _assert_same(got, want, set(_POOL) | {os.urandom(32)})
        _disturb(store, Path(root), later)
        _assert_same(got, want, set(_POOL) | {os.urandom(32)})
        got.close()
        _assert_same(got, want, set(_POOL) | {os.urandom(32)})
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _disturb(store: MemoryStore, cache_root: Path | None, how: str) -> None:
    """Damage (one byte of each index, in place) or remove every bundle in ``store`` and,
    given ``cache_root``, every cached copy."""
    if how == "nothing":
        return
    for key in _bundles(store):
        if how == "gone":
            store.delete(key)
        else:
            data = bytearray(store.read(key))
            data[:-16:53] = bytes(b ^ 1 for b in data[:-16:53])  # (every index has at least 16 bytes)
            store.delete(key)
            store.create(key, bytes(data))
    copies = ChunkCache(cache_root).bundle_path("00" * 32).parent.parent if cache_root is not None else None
    for path in (p for p in copies.rglob("*") if p.is_file()) if copies is not None else ():
        if how == "gone":
            path.unlink()
        else:
            with open(path, "r+b") as f:  # in place: the open copy sees it
                data = bytearray(f.read())
                data[:-16:53] = bytes(b ^ 1 for b in data[:-16:53])
                f.seek(0)
                f.write(data)


@pytest.mark.parametrize("damage", ["data", "directory", "tail", "truncate", "gone", "renamed", "swapped",
                                    "huge-count"])
def test_each_kind_of_damaged_bundle_costs_reads_not_answers(damage: str) -> None:
    """Every kind of damage, on a registry where it hits an index a lookup needs (the
    indexes have the same size, so "swapped" exchanges the first two)."""
    store = _store()
    digests = [os.urandom(32) for _ in range(6)]
    for group in (digests[:2], digests[2:4], digests[4:]):
        _plant(store, _index(group))
    result = write_bundle(store, max_index=index_limit(store), at_least=1)
    assert result.key is not None
    _damage_bundle(store, result.key, damage)
    counting = CountingStore(store)
    with mock.patch.object(packs, "USE_AT_LEAST", 1):
        got = ChunkIndex.load(counting, cache=None)
    assert counting.reads["index"] >= 1  # what the bundle could not give was read on its own
    _assert_same(got, _load(store, bundles=False), set(digests))
    assert all(d in got for d in digests)


def test_a_bundle_saves_reads_and_a_second_one_replaces_the_first() -> None:
    inner = _store()
    for _ in range(300):
        _plant(inner, _index([os.urandom(32), os.urandom(32), os.urandom(32)]))
    store = CountingStore(inner)
    plain = _load(inner, bundles=False)
    store.reset()
    ChunkIndex.load(store, cache=None)
    assert store.reads["index"] == 300
    assert write_bundle(inner, max_index=index_limit(inner), at_least=1000).key is None  # 300 < 1000
    first = write_bundle(inner, max_index=index_limit(inner), at_least=300)
    assert first.key is not None and first.packs == 300 and first.unbundled == 300
    store.reset()
    got = ChunkIndex.load(store, cache=None)
    assert store.reads["index"] == 0 and 1 <= store.reads["bundles"] <= 6  # tail, directory, a few spans
    _assert_same(got, plain, {ref.digest for ref in plain})
    for _ in range(5):
        _plant(inner, _index([os.urandom(32)]))
    assert write_bundle(inner, max_index=index_limit(inner), at_least=6).key is None  # 5 unbundled
    store.reset()
    second = write_bundle(store, max_index=index_limit(inner), at_least=5)
    assert second.key != first.key and second.packs == 305 and second.removed == [first.key]
    assert store.reads["index"] == 5  # the 300 bundled before were copied from the first bundle
    assert _bundles(inner) == [second.key]
    store.reset()
    got = ChunkIndex.load(store, cache=None)
    assert store.reads["index"] == 0 and len(list(got)) == 300 * 3 + 5


def test_the_bundle_holding_most_of_what_is_wanted_is_chosen() -> None:
    store = _store()
    ids = [_plant(store, _index([os.urandom(32)])) for _ in range(4)]
    small = write_bundle(store, max_index=index_limit(store), at_least=1)
    assert small.key is not None
    saved = store.read(small.key)
    more = [_plant(store, _index([os.urandom(32)])) for _ in range(3)]
    big = write_bundle(store, max_index=index_limit(store), at_least=1)
    store.create(str(small.key), saved)  # as if the older one were still there
    chosen = open_best_bundle(store, sorted(ids + more), index_limit(store))
    assert chosen is not None and chosen[0].key == big.key and len(chosen[0]) == 7 and min(chosen[1]) >= 0
    chosen = open_best_bundle(store, sorted(ids[:2] + ["cd" * 32]), index_limit(store))
    assert chosen is not None and sorted(chosen[1])[0] == -1  # both hold the two: either will do
    assert open_best_bundle(store, ["cd" * 32], index_limit(store)) is None


def test_bundle_format_golden_vector() -> None:
    """Two fixed indexes give this bundle, byte for byte (docs/FORMAT.md §4.3)."""
    store = _store()
    one = _index([bytes(range(32))], stored=10)
    two = _index([bytes(range(1, 33)), bytes(range(2, 34))], stored=20)
    ids = sorted([_plant(store, one), _plant(store, two)])
    result = write_bundle(store, max_index=index_limit(store), at_least=1)
    assert result.key is not None
    data = store.read(result.key)
    by_id = {blake3(one).hexdigest(): one, blake3(two).hexdigest(): two}
    body = by_id[ids[0]] + by_id[ids[1]]
    directory = b"".join(bytes.fromhex(i) + struct.pack("<Q", len(by_id[i])) for i in ids)
    tail = struct.pack("<Q", 2) + b"CASRBDL\x01"
    assert data == body + directory + tail
    assert ids == ["058a78ed98cb509b7d7bf510776741fcc1e7883f5f6bb980b5f639da5cbd6fb1",
                   "5750757d8c1154ae2838881ab14ae06127055c98da70fdfd2ea2b8ae4e7967c6"]
    assert result.key == "bundles/0c/0cc52619f4f602c5e79b9493239104433b37c95239a3630513d72e4c49760bae.bundle"
    assert result.key == bundle_key(blake3(directory + tail).hexdigest())


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("casreg")
    env = {**os.environ, "CASREG_REGISTRY": str(root / "reg"), "CASREG_CACHE": "off"}
    return subprocess.run([str(script), *args], env=env, cwd=root, capture_output=True, text=True, timeout=300)


def test_cli_compact_bundles_and_pushes_dedup_through_it(tmp_path: Path) -> None:
    """End to end on a local registry: compact writes the bundle, a push after it reads the
    bundle instead of the index objects, still stores only what is new, and gc, verify and
    pull are unaffected."""
    reg = Registry(tmp_path / "reg")
    files = []
    for i in range(70):  # 70 versions of 3 small chunks each: 70+ packs to read
        f = tmp_path / f"m{i}.bin"
        f.write_bytes(os.urandom(3000) + bytes([i]) * 5)
        reg.push(f"m{i % 3}", f)
        files.append(f)
    p = _cli(tmp_path, "compact", "--bundle-at", "1", "--json")
    assert p.returncode == 0, p.stderr
    bundle = json.loads(p.stdout)["index_bundle"]
    store = LocalStore(tmp_path / "reg")
    n_indexes = sum(1 for _ in store.list("index"))
    assert bundle["indexes"] == n_indexes >= 70 and bundle["key"] in set(store.list(BUNDLES))
    p = _cli(tmp_path, "compact", "--bundle-at", "1")
    assert p.returncode == 0 and "bundled" not in p.stdout  # nothing new to bundle
    counting = CountingStore(store)
    with mock.patch.object(packs, "USE_AT_LEAST", 1):
        index = ChunkIndex.load(counting, cache=None)
    assert counting.reads["index"] == 0 and counting.reads["bundles"] >= 3
    assert len(list(index)) >= 70 * 1
    again = reg.push("again", files[5])  # every chunk known: nothing stored
    assert again.new_bytes == 0 and again.stored_bytes == 0
    assert _cli(tmp_path, "verify", "--json").returncode == 0
    assert _cli(tmp_path, "gc", "--grace", "0", "-q").returncode == 0
    out = tmp_path / "out.bin"
    assert _cli(tmp_path, "pull", "again", str(out), "-q").returncode == 0
    assert out.read_bytes() == files[5].read_bytes()
    assert store.read(bundle["key"], ByteRange(0, 1))  # gc leaves bundles to compact


def test_a_push_that_read_many_indexes_one_by_one_bundles_them(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """After a push that read ``bundle_at`` or more indexes on their own, the registry bundles
    them, so the next push reads the bundle; not again until as many are unbundled."""
    monkeypatch.setattr(packs, "USE_AT_LEAST", 1)
    reg = Registry(f"memory://auto-bundle-{uuid.uuid4().hex}")
    reg.bundle_at = 6
    store = reg.store
    assert isinstance(store, MemoryStore)
    seen = []
    for i in range(14):
        path = tmp_path / f"v{i}"
        path.write_bytes(os.urandom(2000) + bytes([i]))
        reg.push("m", path)
        seen.append(_bundles(store))
    assert sum(1 for _ in store.list("index")) == 14
    # pushes 1-6 read 0-5 indexes alone; push 7 read 6 and bundled the 7 listed after it
    assert [len(b) for b in seen[:6]] == [0] * 6 and len(seen[6]) == 1
    assert seen[7:13] == [seen[6]] * 6  # pushes 8-13 read 0-5 alone: no new bundle
    assert len(seen[13]) == 1 and seen[13] != seen[6]  # push 14 read 6 alone and bundled again
    reg.bundle_at = 0
    monkeypatch.setenv("CASREG_BUNDLE_AT", "1")
    for i in range(7):
        path = tmp_path / f"w{i}"
        path.write_bytes(os.urandom(2000))
        reg.push("m", path)
    assert _bundles(store) == seen[13]  # 0: never


def test_bundle_at_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from casreg.content.bundles import bundle_at_from_env
    from casreg.errors import InvalidInputError

    monkeypatch.delenv("CASREG_BUNDLE_AT", raising=False)
    assert bundle_at_from_env() == 1000
    monkeypatch.setenv("CASREG_BUNDLE_AT", "0")
    assert bundle_at_from_env() == 0
    for bad in ("x", "-1"):
        monkeypatch.setenv("CASREG_BUNDLE_AT", bad)
        with pytest.raises(InvalidInputError, match="CASREG_BUNDLE_AT"):
            bundle_at_from_env()


def test_a_writer_that_may_not_delete_leaves_the_older_bundle(tmp_path: Path) -> None:
    """A pusher's IAM role has no DeleteObject (docs/security.md): its bundle is written
    all the same, the older one stays, and a load chooses the one holding more."""
    from casreg.errors import StorageError
    from casreg.testing.wrapper import StoreWrapper

    class NoDeletes(StoreWrapper):
        def delete(self, key: str) -> None:
            raise StorageError(f"AccessDenied: cannot delete {key}")

    inner = LocalStore(tmp_path / "reg")
    for _ in range(3):
        inner.create(index_key(blake3(ix := _index([os.urandom(32)])).hexdigest()), ix)
    first = write_bundle(inner, max_index=index_limit(inner), at_least=1)
    inner.create(index_key(blake3(ix := _index([os.urandom(32)])).hexdigest()), ix)
    second = write_bundle(NoDeletes(inner), max_index=index_limit(inner), at_least=1)
    assert second.key is not None and second.removed == [] and second.packs == 4
    assert sorted(inner.list(BUNDLES)) == sorted([str(first.key), second.key])
    listed = sorted(str(parse_index_key(k)) for k in inner.list("index"))
    chosen = open_best_bundle(inner, listed, index_limit(inner))
    assert chosen is not None and chosen[0].key == second.key


def test_of_many_bundles_the_newest_are_opened(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "reg")
    ids = []
    for i in range(10):  # ten bundles of one index each, written a minute apart
        ix = _index([os.urandom(32)])
        ids.append(blake3(ix).hexdigest())
        store.create(index_key(ids[-1]), ix)
        one = write_bundle(store, max_index=index_limit(store), at_least=1)
        assert one.key is not None
        os.utime(tmp_path / "reg" / one.key, (1_000_000 + 60 * i, 1_000_000 + 60 * i))
    assert len(list(store.list(BUNDLES))) == 1  # each new one removed the one before
    keys = []
    for i in range(10):  # now ten that each hold only index i, the first written last
        directory = bytes.fromhex(ids[i]) + struct.pack("<Q", len(store.read(index_key(ids[i]))))
        tail = struct.pack("<Q8s", 1, BUNDLE_MAGIC)
        key = bundle_key(blake3(directory + tail).hexdigest())
        store.create(key, store.read(index_key(ids[i])) + directory + tail)
        os.utime(tmp_path / "reg" / key, (2_000_000 - 60 * i, 2_000_000 - 60 * i))
        keys.append(key)
    for k in set(store.list(BUNDLES)) - set(keys):
        store.delete(k)
    wanted = sorted(ids)
    chosen = open_best_bundle(store, wanted, index_limit(store))
    assert chosen is not None and chosen[0].key in keys[:8]  # the two oldest were not opened
    assert open_best_bundle(store, sorted(ids[8:]), index_limit(store)) is None


def _pushed(tmp_path: Path, versions: int) -> Registry:
    """A local registry under ``tmp_path/reg`` holding ``versions`` small versions of m."""
    reg = Registry(tmp_path / "reg")
    for i in range(versions):
        (tmp_path / f"f{i}").write_bytes(os.urandom(3000))
        reg.push("m", tmp_path / f"f{i}")
    return reg


@pytest.mark.parametrize("damage", ["none", "data", "directory", "tail", "truncate", "renamed", "huge-count"])
def test_verify_names_a_damaged_bundle(tmp_path: Path, damage: str) -> None:
    """A damaged bundle costs pushes only reads, but verify names every damaged object."""
    reg = _pushed(tmp_path, 4)
    store = reg.store
    result = write_bundle(store, max_index=index_limit(store), at_least=1)
    assert result.key is not None
    _damage_bundle(store, result.key, damage)
    report = reg.verify()
    bad = [p for p in report.problems if p.key.startswith("bundles/")]
    assert [p for p in report.problems if p not in bad] == []
    if damage == "none":
        assert report.ok and bad == []
    else:
        assert len(bad) == 1 and bad[0].kind == "corrupt" and not report.ok, report.problems
        assert bad[0].key in set(store.list(BUNDLES))


def _registry_of(indexes: int) -> MemoryStore:
    store = _store()
    for _ in range(indexes):
        _plant(store, _index([os.urandom(32), os.urandom(32)]))
    assert write_bundle(store, max_index=index_limit(store), at_least=1).key is not None
    return store


def test_with_a_cache_the_bundle_is_copied_once_and_then_read_locally(tmp_path: Path) -> None:
    """A machine with a cache (every remote registry's default) copies the bundle into it
    whole on its first load and reads every index the bundle holds from that copy: no
    index entry per pack in the cache, no store reads of indexes or the bundle after."""
    inner = _registry_of(100)
    store = CountingStore(inner)
    want = _load(inner, bundles=False)
    digests = {ref.digest for ref in want}
    cache = ChunkCache(tmp_path / "cache", max_size="1GiB")
    got = ChunkIndex.load(store, cache=cache)
    _assert_same(got, want, digests)
    info = cache.info()
    assert info.bundles == 1 and info.indexes == 0 and store.reads["index"] == 0 and store.reads["bundles"] >= 3
    for _ in range(2):
        store.reset()
        got = ChunkIndex.load(store, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"))
        _assert_same(got, want, digests)
        assert store.reads["index"] == 0 and store.reads["bundles"] == 0  # only the listings
    _plant(inner, _index([os.urandom(32)]))  # pushed since: read on its own, and cached as an index
    store.reset()
    got = ChunkIndex.load(store, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"))
    assert store.reads["index"] == 1 and store.reads["bundles"] == 0 and cache.info().indexes == 1
    assert got.read_alone == 1
    assert cache.prune(0).removed_entries == 2 and cache.info().bundles == 0


def test_a_damaged_cached_bundle_is_dropped_and_costs_only_reads(tmp_path: Path) -> None:
    inner = _registry_of(80)
    want = _load(inner, bundles=False)
    digests = {ref.digest for ref in want}
    cache = ChunkCache(tmp_path / "cache", max_size="1GiB")
    ChunkIndex.load(inner, cache=cache)
    (copy,) = [p for p in (tmp_path / "cache" / "bundles").rglob("*") if p.is_file()]
    data = bytearray(copy.read_bytes())
    data[40] ^= 1  # inside the first index: its hash no longer matches its pack id
    copy.write_bytes(bytes(data))
    store = CountingStore(inner)
    got = ChunkIndex.load(store, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"))
    _assert_same(got, want, digests)
    assert store.reads["index"] == 1 and not copy.exists()  # that index read alone; the copy dropped
    store.reset()
    got = ChunkIndex.load(store, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"))
    _assert_same(got, want, digests)
    assert copy.exists() and store.reads["index"] == 0  # copied again
    copy.unlink()
    copy.symlink_to(tmp_path / "elsewhere")  # a planted link is not followed, and is replaced
    (tmp_path / "elsewhere").write_bytes(b"x" * 100)
    got = ChunkIndex.load(CountingStore(inner), cache=ChunkCache(tmp_path / "cache", max_size="1GiB"))
    _assert_same(got, want, digests)
    assert not copy.is_symlink() and (tmp_path / "elsewhere").read_bytes() == b"x" * 100


def test_a_bundle_too_big_for_the_cache_is_read_from_the_store(tmp_path: Path) -> None:
    """More than half of the cache's bound is not copied (it would push out everything
    else): the missing indexes are read from the store's bundle and cached one by one."""
    inner = _registry_of(100)
    want = _load(inner, bundles=False)
    store = CountingStore(inner)
    cache = ChunkCache(tmp_path / "cache", max_size=10_000)  # the bundle is about 12 KB
    got = ChunkIndex.load(store, cache=cache)
    _assert_same(got, want, {ref.digest for ref in want})
    assert cache.info().bundles == 0 and store.reads["index"] == 0 and store.reads["bundles"] >= 3


def test_a_remote_listing_of_many_indexes_lists_the_prefixes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 lists a thousand keys a request, in key order; past a few pages, the prefixes
    still to come are listed at once. The keys found are the same, with fewer rounds."""
    import dataclasses

    import casreg.content.listing as listing
    from casreg.testing.wrapper import StoreWrapper

    class Remote(StoreWrapper):
        """memory://, listing in key order as S3 does, counting listings."""

        def __init__(self, inner: MemoryStore) -> None:
            super().__init__(inner)
            self.capabilities = dataclasses.replace(inner.capabilities, remote=True, list_after=True)
            self.calls: list[str] = []

        def list(self, prefix: str) -> Iterator[str]:
            self.calls.append(prefix)
            return iter(sorted(self.inner.list(prefix)))

        def list_after(self, prefix: str, start_after: str) -> Iterator[str]:
            self.calls.append(f"{prefix} after")
            return self.inner.list_after(prefix, start_after)

    monkeypatch.setattr(listing, "_PAGE", 100)
    monkeypatch.setattr(listing, "LIST_THREADS", 64)
    inner = _store()
    for _ in range(5000):
        inner.create(index_key(os.urandom(32).hex()), b"")
    inner.create("index/zz-not-an-index", b"")
    store = Remote(inner)
    got = listing.list_indexes(store)
    want = sorted(k for k in inner.list("index") if parse_index_key(k) is not None)
    assert sorted(k for k in got if parse_index_key(k) is not None) == want
    assert store.calls[0] == "index" and len([c for c in store.calls if c.endswith(" after")]) == 1
    assert 200 <= len(store.calls) <= 257  # the prefixes after the first pages, each once
    store.calls.clear()
    few = Remote(_store())
    for _ in range(150):
        few.inner.create(index_key(os.urandom(32).hex()), b"")
    assert len(listing.list_indexes(few)) == 150 and few.calls == ["index"]  # too few to be worth it
    unordered = Remote(inner)
    unordered.list = lambda prefix: (unordered.calls.append(prefix), iter(list(inner.list(prefix))))[1]  # type: ignore[method-assign]
    assert sorted(listing.list_indexes(unordered)) == sorted(inner.list("index"))
    assert unordered.calls == ["index"]  # not in key order: page by page, to the end


def test_a_planted_link_among_the_indexes_is_left_out_of_a_bundle(tmp_path: Path) -> None:
    """An index that is not a regular file (a hostile store, docs/security.md) is left
    out, and the rest bundled; with nothing readable, no bundle is written."""
    store = LocalStore(tmp_path / "reg")
    good = [_index([os.urandom(32)]) for _ in range(2)]
    for ix in good:
        store.create(index_key(blake3(ix).hexdigest()), ix)
    planted = tmp_path / "reg" / index_key("ef" * 32)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(tmp_path / "reg" / index_key(blake3(good[0]).hexdigest()))
    result = write_bundle(store, max_index=index_limit(store), at_least=1)
    assert result.key is not None and result.packs == 2
    only_link = LocalStore(tmp_path / "other")
    (tmp_path / "other" / "index" / "ef").mkdir(parents=True)
    (tmp_path / "other" / index_key("ef" * 32)).symlink_to(planted)
    assert write_bundle(only_link, max_index=index_limit(only_link), at_least=1).key is None
    assert list(only_link.list(BUNDLES)) == []


def test_writing_a_bundle_reads_the_indexes_a_cache_holds_from_it(tmp_path: Path) -> None:
    """A push that read every index one by one has cached them: the bundle it writes
    after its commit reads none of them from the store again."""
    inner = _store()
    for _ in range(30):
        _plant(inner, _index([os.urandom(32)]))
    cache = ChunkCache(tmp_path / "cache", max_size="1GiB")
    ChunkIndex.load(inner, cache=cache)  # fewer than 64: each read alone, and cached
    assert cache.info().indexes == 30
    store = CountingStore(inner)
    result = write_bundle(store, max_index=index_limit(inner), at_least=1, cache=cache)
    assert result.packs == 30 and store.reads["index"] == 0
    _plant(inner, _index([os.urandom(32)]))
    store.reset()
    assert write_bundle(store, max_index=index_limit(inner), at_least=1, cache=None).packs == 31
    assert store.reads["index"] == 1  # the next copies the 30 from the bundle, reads the new one


def test_gc_removes_superseded_bundles_past_the_grace(tmp_path: Path) -> None:
    """Bundles a pusher could not remove are removed by gc, the one a push would read
    kept, and none younger than --grace (a compact may have just written it)."""
    reg = _pushed(tmp_path, 3)
    store = reg.store
    first = write_bundle(store, max_index=index_limit(store), at_least=1)
    saved = store.read(str(first.key))
    (tmp_path / "f3").write_bytes(os.urandom(3000))
    reg.push("m", tmp_path / "f3")
    second = write_bundle(store, max_index=index_limit(store), at_least=1)
    store.create(str(first.key), saved)  # as a pusher that may not delete leaves it
    assert sorted(store.list(BUNDLES)) == sorted([str(first.key), str(second.key)])
    assert reg.gc(grace="1h").superseded_bundles == []  # both just written
    old = 1_000_000
    for key in (first.key, second.key):
        os.utime(tmp_path / "reg" / str(key), (old, old))
    assert reg.gc(grace="1h", dry_run=True).superseded_bundles == [first.key]
    assert len(list(store.list(BUNDLES))) == 2
    p = _cli(tmp_path, "gc", "--grace", "1h")
    assert p.returncode == 0 and "removed 1 superseded index bundle" in p.stdout, p.stdout + p.stderr
    assert list(store.list(BUNDLES)) == [second.key]
    assert reg.verify().ok


def test_a_table_reads_entries_back_from_a_local_bundle_instead_of_keeping_them(tmp_path: Path) -> None:
    """Through a bundle on a local disk (here memory://, then a cached copy), a table keeps
    no entry of the indexes it read from it: a lookup reads the pack's index back, checked
    against its pack id, and the last few read back serve the next lookups."""
    inner = _registry_of(100)
    want = _load(inner, bundles=False)
    digests = [ref.digest for ref in want]
    store = CountingStore(inner)
    got = ChunkIndex.load(store, cache=None, compact_above=0)
    assert got.compact and got._table is not None and got._table.kept_bytes == 0 and got.read_alone == 0
    store.reset()
    first = [got.get(d) for d in digests]
    assert first == [want.get(d) for d in digests]
    assert store.reads["bundles"] == 100 and store.reads["index"] == 0  # one per pack, its two chunks one read
    store.reset()
    assert [got.get(d) for d in digests[-10:]] == first[-10:] and store.reads["bundles"] == 0  # recently read back
    assert got.get(os.urandom(32)) is None and store.reads["bundles"] == 0  # a miss reads nothing
    # Through a cache, from the cached copy: no store reads at all.
    cache = ChunkCache(tmp_path / "cache", max_size="1GiB")
    ChunkIndex.load(store, cache=cache, compact_above=0).close()
    again = ChunkIndex.load(store, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"), compact_above=0)
    assert again._table is not None and again._table.kept_bytes == 0
    store.reset()
    assert [again.get(d) for d in digests] == first and sum(store.reads.values()) == 0
    # Closed (as a push closes it when done), it still answers, from the index objects.
    again.close()
    with mock.patch.object(index_table, "RECENT", 0):
        closed = ChunkIndex.load(store, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"), compact_above=0)
        closed.close()
        store.reset()
        assert [closed.get(d) for d in digests] == first and store.reads["index"] == 200  # one a lookup


def test_without_a_cache_a_remote_bundle_is_read_back_from_a_private_copy() -> None:
    """Without a cache, reading entries back from a bundle on a store that wants many
    requests in flight (S3) would cost a request a lookup: the load copies the bundle into
    a temporary file of its own, unlinked, and the table reads back from that. The copy is
    read once, whole; lookups read nothing from the store; closing the index closes it."""
    inner = _registry_of(100)
    store = CountingStore(inner)
    store.io_concurrency = 8
    before = _private_copies()
    got = ChunkIndex.load(store, cache=None, compact_above=0)
    assert got._table is not None and got._table.kept_bytes == 0 and got.read_alone == 0
    bundle = _bundles(inner)[0]
    assert store.bytes_read["bundles"] == inner.size(bundle) + 16 + 40 * 100  # the copy, then the tail and directory
    assert store.reads["index"] == 0
    copies = [c for c in _private_copies() if c not in before]
    assert len(copies) == 1 and os.path.basename(copies[0]).startswith("casreg-bundle-")
    want = _load(inner, bundles=False)
    store.reset()
    _assert_same(got, want, {ref.digest for ref in want})
    assert sum(store.reads.values()) == 0
    got.close()
    assert [c for c in _private_copies() if c not in before] == []


def test_a_damaged_private_copy_costs_reads_not_answers() -> None:
    """The private copy is checked as any copy is: an index read back from it that does not
    hash to its pack id is read on its own, from the store."""
    inner = _registry_of(100)
    store = CountingStore(inner)
    store.io_concurrency = 8
    before = _private_copies()
    with mock.patch.object(index_table, "RECENT", 0):
        got = ChunkIndex.load(store, cache=None, compact_above=0)
        (fd,) = [fd for fd, target in _private_copies(fds=True) if target not in before]
        size = os.fstat(fd).st_size
        os.pwrite(fd, bytes(size - 16 - 40 * 100), 0)  # every index zeroed, the directory left as it was
        want = _load(inner, bundles=False)
        store.reset()
        _assert_same(got, want, {ref.digest for ref in want})
        assert store.reads["index"] > 0 and store.reads["bundles"] == 0
    got.close()


def test_where_no_private_copy_can_be_made_the_table_keeps_the_entries(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """With no room for a private copy (here, a temporary directory that does not exist),
    the table keeps the entries of a remote bundle, as it did before private copies: the
    same answers, no store reads for lookups, nothing left open."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "absent"))
    inner = _registry_of(100)
    store = CountingStore(inner)
    store.io_concurrency = 8
    before = _private_copies()
    got = ChunkIndex.load(store, cache=None, compact_above=0)
    assert got._table is not None and got._table.kept_bytes == 200 * 52
    assert set(_private_copies()) <= set(before)  # none opened (one may have closed meanwhile)
    want = _load(inner, bundles=False)
    store.reset()
    _assert_same(got, want, {ref.digest for ref in want})
    assert sum(store.reads.values()) == 0


@pytest.mark.parametrize("guard", ["mostly-unwanted", "no-room"])
def test_a_bundle_is_not_copied_where_it_would_cost_more_than_it_saves(monkeypatch: pytest.MonkeyPatch,
                                                                       guard: str) -> None:
    """A remote bundle mostly of indexes the load does not want (a store may hold anything;
    here the index objects of 300 of its 400 packs are gone), or one that would leave too
    little free in the temporary directory, is not copied: the table keeps the entries it
    takes from it, and answers the same."""
    inner = _registry_of(400)
    if guard == "mostly-unwanted":
        monkeypatch.setattr(bundles, "_COPY_SLACK", 0)
        for key in sorted(inner.list("index/"))[:300]:
            inner.delete(key)
    else:
        monkeypatch.setattr(bundles, "_COPY_FREE", 1 << 62)
    store = CountingStore(inner)
    store.io_concurrency = 8
    before = _private_copies()
    got = ChunkIndex.load(store, cache=None, compact_above=0)
    assert got._table is not None and got._table.kept_bytes == 2 * 52 * (100 if guard == "mostly-unwanted" else 400)
    assert set(_private_copies()) <= set(before)
    want = _load(inner, bundles=False)
    _assert_same(got, want, {ref.digest for ref in want})


def test_a_load_that_fails_closes_the_bundle_it_would_read_back_from(tmp_path: Path) -> None:
    """An error in the middle of a load (here a failing check) leaves no cached bundle open."""
    inner = _registry_of(100)
    ChunkIndex.load(inner, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"), compact_above=0).close()
    calls = 0
    real = packs._entry_count

    def failing(data: bytes, where: str) -> int:
        nonlocal calls
        calls += 1
        if calls == 50:
            raise RuntimeError("planted")
        return real(data, where)

    with mock.patch.object(packs, "_entry_count", failing), pytest.raises(RuntimeError, match="planted"):
        ChunkIndex.load(inner, cache=ChunkCache(tmp_path / "cache", max_size="1GiB"), compact_above=0)
    assert _open_bundles(tmp_path / "cache") == []


def _open_files() -> list[tuple[int, str]]:
    """The descriptors this process has open, with what each points to."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("lists open files through /proc/self/fd (Linux)")
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append((int(fd), os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            continue  # closed meanwhile
    return found


def _private_copies(*, fds: bool = False) -> Any:
    """The private bundle copies (:func:`casreg.content.bundles.private_copy`: unlinked
    files) this process has open, as paths (with ``fds``: as (descriptor, path) pairs)."""
    return [(fd, target) if fds else target for fd, target in _open_files()
            if os.path.basename(target).startswith("casreg-bundle-") and target.endswith(" (deleted)")]


def _open_bundles(cache_root: Path) -> list[str]:
    """The files under ``cache_root``'s bundle directory that this process has open."""
    copies = str(ChunkCache(cache_root).bundle_path("00" * 32).parent.parent)
    return [target for _, target in _open_files() if target.startswith(copies + os.sep)]

