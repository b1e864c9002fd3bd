"""The compact chunk index (casreg/content/index_table.py) answers what the dict answers.

Above ``COMPACT_ABOVE`` entries a push keeps the registry's index entries in numpy arrays
instead of a dict of ChunkRefs. The two must accept the same indexes (a bad entry leaves
its whole index out), find the same chunk for every digest (the first pack, by pack id, that
has it, the first entry of that pack), and agree on every pack's size. Each property
builds both from the same index objects in a ``memory://`` store and compares them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from unittest import mock

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_index_bundles import _open_bundles, _private_copies

import casreg.content.index_table as index_table
import casreg.content.packs as packs
from casreg import Registry
from casreg.content.bundles import write_bundle
from casreg.content.cache import resolve_cache
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.config import MAX_CHUNK_BYTES
from casreg.content.manifest import stored_bound
from casreg.content.packs import _TAIL, INDEX_MAGIC, PACK_MAGIC, ChunkIndex, _Slot, encode_index, index_limit
from casreg.keys import index_key
from casreg.storage.memory import MemoryStore

MAGIC = len(PACK_MAGIC)


def _store() -> MemoryStore:
    return MemoryStore(f"memory://index-table-{uuid.uuid4().hex}")


def _plant(store: MemoryStore, index: bytes) -> str:
    """An index object under its own name, as a push writes one (no pack: load reads none)."""
    pack_id = blake3(index).hexdigest()
    store.create(index_key(pack_id), index)
    return pack_id


def _laid_out(entries: list[tuple[bytes, int, int, int]]) -> list[_Slot]:
    """Slots as a pack lays them out: each payload right after the previous one."""
    slots, offset = [], MAGIC
    for digest, stored, raw, codec in entries:
        slots.append(_Slot(digest, offset, stored, raw, codec))
        offset += stored
    return slots


def _both(store: MemoryStore) -> tuple[ChunkIndex, ChunkIndex]:
    small = ChunkIndex.load(store, cache=None, compact_above=1 << 40)
    table = ChunkIndex.load(store, cache=None, compact_above=-1)
    assert not small.compact and table.compact
    return small, table


def _assert_same(small: ChunkIndex, table: ChunkIndex, digests: set[bytes]) -> None:
    for d in digests:
        assert table.get(d) == small.get(d), d.hex()
        assert (d in table) == (d in small)
    assert table.pack_sizes == small.pack_sizes
    assert len(table) == len(small)
    assert list(table) == list(small)


# A few digests, some sharing their first 8 bytes (what the table sorts by) with another.
_POOL = [os.urandom(32) for _ in range(6)]
_POOL += [d[:8] + os.urandom(24) for d in _POOL[:3]]

_entry = st.tuples(st.sampled_from(_POOL), st.integers(1, 5000), st.integers(0, 4000), st.sampled_from([0, 1, 2, 3]))
# What may be wrong with one index: nothing (most), an entry's offset, its codec, its raw
# size, its stored size, or the index's tail.
_damage = st.sampled_from(["none"] * 6 + ["offset", "codec", "raw", "stored", "tail", "magic"])


def _index(entries: list[tuple[bytes, int, int, int]], damage: str, at: int) -> bytes:
    slots = _laid_out(entries)
    if slots and damage != "none":
        s = slots[at % len(slots)]
        if damage == "offset":
            slots[at % len(slots)] = _Slot(s.digest, s.offset + 1, s.stored_size, s.raw_size, s.codec)
        elif damage == "codec":
            slots[at % len(slots)] = _Slot(s.digest, s.offset, s.stored_size, s.raw_size, 9)
        elif damage == "raw":
            slots[at % len(slots)] = _Slot(s.digest, s.offset, s.stored_size, MAX_CHUNK_BYTES + 1, s.codec)
        elif damage == "stored":
            # (the next payloads move with it, so only the bound is broken)
            slots = _laid_out([(d, stored_bound(r) + 1 if i == at % len(slots) else st_, r, c)
                               for i, (d, st_, r, c) in enumerate(entries)])
    index = encode_index(slots)
    if damage == "tail":
        index = index[:-1]
    elif damage == "magic":
        index = index[:-len(INDEX_MAGIC)] + b"CASRIDX\x02"
    return index


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(_entry, max_size=8), _damage, st.integers(0, 7)), max_size=8),
       st.lists(st.binary(min_size=32, max_size=32), max_size=3), st.integers(1, 12), st.integers(0, 8))
def test_the_table_answers_what_the_dict_answers(indexes, strangers, batch, bundled) -> None:
    """(``batch``: how many entries the table checks at once, so that indexes fall into
    several batches, left-out ones among them. ``bundled``: how many of the indexes are
    copied into an index bundle before the others are written, so that the table reads
    their entries back from it, between entries it keeps, in the same batches.)"""
    store = _store()
    for i, (entries, damage, at) in enumerate(indexes):
        if i == bundled:
            write_bundle(store, max_index=index_limit(store), at_least=1)
        _plant(store, _index(entries, damage, at))
    with mock.patch.object(index_table, "CHECK_BATCH", batch), mock.patch.object(packs, "USE_AT_LEAST", 1):
        small, table = _both(store)
    _assert_same(small, table, set(_POOL) | set(strangers))


def test_the_first_pack_by_id_wins_and_prefix_twins_are_told_apart() -> None:
    """Of two packs holding a chunk, the one with the lower pack id answers, whatever order
    the store lists them in (it was the first listed until the load sorted by pack id, and
    memory:// lists in the order written: this test then passed for half the pack ids)."""
    store = _store()
    a = os.urandom(32)
    twin = a[:8] + os.urandom(24)  # the same first 8 bytes, another chunk
    ids = [_plant(store, encode_index(_laid_out([(a, 10, 20, 1), (twin, 30, 40, 1), (a, 50, 60, 1)])))]
    ids.append(_plant(store, encode_index(_laid_out([(twin, 70, 80, 2), (a, 90, 100, 0)]))))
    small, table = _both(store)
    _assert_same(small, table, {a, twin, os.urandom(32)})
    first = min(ids)
    assert table.get(a).pack == first and table.get(twin).pack == first
    if first == ids[0]:
        assert table.get(a).offset == MAGIC  # the first entry of that pack, not the third
    else:
        assert (table.get(twin).offset, table.get(a).offset) == (MAGIC, MAGIC + 70)
    assert len(table) == 2


def test_an_index_with_one_bad_entry_is_left_out_whole() -> None:
    store = _store()
    good, bad = os.urandom(32), os.urandom(32)
    _plant(store, encode_index(_laid_out([(good, 10, 20, 1)])))
    slots = _laid_out([(bad, 10, 20, 1), (os.urandom(32), 10, 20, 1)])
    slots[1] = _Slot(slots[1].digest, slots[1].offset, slots[1].stored_size, slots[1].raw_size, 77)
    bad_id = _plant(store, encode_index(slots))
    small, table = _both(store)
    assert table.get(good) is not None and table.get(bad) is None
    assert bad_id not in table.pack_sizes
    _assert_same(small, table, {good, bad})


def test_an_empty_index_and_no_index() -> None:
    store = _store()
    small, table = _both(store)
    assert len(table) == 0 and table.get(os.urandom(32)) is None
    pack_id = _plant(store, encode_index([]))
    small, table = _both(store)
    assert table.pack_sizes == {pack_id: MAGIC + _TAIL.size} == small.pack_sizes


@pytest.mark.parametrize(("bundle", "cached"), [(False, False), (True, False), (True, True)])
def test_a_push_dedups_against_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: bool,
                                         cached: bool) -> None:
    """A local registry whose index is kept in the table: a second push of the same model
    stores no chunk, a changed one only its changed chunks, and both pull back whole. With
    an index bundle, read from the registry or from a cache (``cached``), the table reads
    the entries back from it, and the push closes the bundle when done (a cached copy is an
    open file)."""
    if cached:
        monkeypatch.setenv("CASREG_CACHE", "on")
        monkeypatch.setenv("CASREG_CACHE_DIR", str(tmp_path / "cache"))
    _dedups_through_the_table(Registry(tmp_path / "reg"), tmp_path, monkeypatch, bundle=bundle)


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_every_backend_dedups_through_a_table_read_back(registry: Registry, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path, cache: str) -> None:
    """The same on each backend, its index read back from a bundle: S3 through its default
    cache, or with none from a private copy of the bundle; local and memory:// from the
    bundle itself."""
    monkeypatch.setenv("CASREG_CACHE", cache)
    _dedups_through_the_table(registry, tmp_path, monkeypatch, bundle=True)


def _dedups_through_the_table(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                              bundle: bool) -> None:
    """Push a model into ``reg`` with its index in a table (read back from a bundle with
    ``bundle``), push it again, push it changed, and pull both versions back."""
    monkeypatch.setattr(packs, "COMPACT_ABOVE", 0)
    monkeypatch.setattr(packs, "USE_AT_LEAST", 1)
    model = tmp_path / "model.bin"
    data = bytearray(os.urandom(12 << 20))
    model.write_bytes(data)
    original = bytes(data)
    first = reg.push("m", model)
    if bundle:
        assert reg.bundle_indexes(at_least=1).key is not None
    cache = resolve_cache(reg.store)
    cache_root = cache.root if cache is not None else tmp_path / "no-cache"
    copies = set(_private_copies())  # (others may be open: earlier tests' indexes not collected yet)
    loaded = ChunkIndex.load(reg.store)
    assert loaded._table is not None and loaded._table.kept_bytes == (0 if bundle else 52 * first.chunk_count)
    assert (_open_bundles(cache_root) != []) == (bundle and cache is not None)  # (what the checks below would see)
    private = bundle and cache is None and reg.store.io_concurrency > 1
    assert len(set(_private_copies()) - copies) == private
    loaded.close()
    again = reg.push("m", model)
    assert again.new_bytes == 0 and again.digest == first.digest
    assert _open_bundles(cache_root) == [] and set(_private_copies()) <= copies
    data[6 << 20:(6 << 20) + 100] = os.urandom(100)
    model.write_bytes(data)
    changed = reg.push("m", model)
    assert 0 < changed.new_bytes <= 2 * DEFAULT_CHUNK_PARAMS.max_size < len(data)  # the chunk or two around the change
    for version, want in ((first, original), (changed, bytes(data))):
        out = tmp_path / f"out-{version.version}"
        reg.pull(version.ref, out)
        assert out.read_bytes() == want


def test_the_table_builds_behind_the_clis_numpy_gate() -> None:
    """The CLI blocks numpy for everyone but casreg's own modules (casreg_cli/imports.py):
    the table, which imports it, must still build there."""
    import subprocess
    import sys

    code = """
import os, sys
from casreg_cli.imports import install
install()
assert "numpy" not in sys.modules
from blake3 import blake3
from casreg.content.packs import PACK_MAGIC, ChunkIndex, _Slot, encode_index
from casreg.keys import index_key
from casreg.storage.memory import MemoryStore
store = MemoryStore("memory://gate")
index = encode_index([_Slot(os.urandom(32), len(PACK_MAGIC), 10, 20, 1)])
store.create(index_key(blake3(index).hexdigest()), index)
loaded = ChunkIndex.load(store, cache=None, compact_above=-1)
print(loaded.compact, len(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1"]


def test_cli_pushes_into_a_registry_past_the_threshold(tmp_path: Path) -> None:
    """End to end, as a user runs it: the ``casreg`` command (its numpy gate installed)
    pushes into a local registry whose indexes list more than ``COMPACT_ABOVE`` chunks, so
    the table is built; a second push of the same file stores nothing, a changed one only
    its changed chunks, and both pull back byte for byte."""
    import json
    import subprocess
    import sys

    script = Path(sys.executable).with_name("casreg")
    reg = tmp_path / "reg"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(script), *args, "--registry", str(reg)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "CASREG_USER": "test@example.test"})
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        return out

    model = tmp_path / "model.bin"
    data = bytearray(os.urandom(12 << 20))
    model.write_bytes(data)
    original = bytes(data)
    first = json.loads(cli("push", "m", str(model), "--json").stdout)
    # Other chunks' entries, as a large registry's indexes list them (their packs are never
    # read: none of them is a chunk of this model).
    per_pack, total = 600, packs.COMPACT_ABOVE + 1
    for start in range(0, total, per_pack):
        index = encode_index(_laid_out([(os.urandom(32), 1000, 2000, 1) for _ in range(min(per_pack, total - start))]))
        path = reg / index_key(blake3(index).hexdigest())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(index)
    from casreg.storage.local import LocalStore

    assert ChunkIndex.load(LocalStore(reg), cache=None).compact
    again = json.loads(cli("push", "m", str(model), "--json").stdout)
    assert again["new_bytes"] == 0 and again["digest"] == first["digest"]
    data[6 << 20:(6 << 20) + 10] = os.urandom(10)
    model.write_bytes(data)
    changed = json.loads(cli("push", "m", str(model), "--json").stdout)
    assert 0 < changed["new_bytes"] <= 2 * DEFAULT_CHUNK_PARAMS.max_size < len(data)  # the chunk(s) changed
    for number, want in ((first["version"], original), (changed["version"], bytes(data))):
        out = tmp_path / f"out-{number}"
        cli("pull", f"m:{number}", str(out), "--quiet")
        assert out.read_bytes() == want
