"""Ledger compaction (casreg/ledger/compact.py) and the compacted reading rule (casreg/ledger/segments.py).

The property every test comes back to: readers give exactly the same ``versions``,
``events`` and ``files`` views and the same ``ls`` before and after any compaction, never
lose or duplicate a record, whatever runs concurrently and whatever happens to the
compacted files (superseded, missing, damaged); segments stay the source of truth.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import casreg.ledger.compact as compact_mod
from casreg import ConflictError, Registry, StorageError
from casreg.keys import HEAD_KEY, event_key
from casreg.keys import version_segment_key as segment_key
from casreg.ledger.compact import compact, maybe_compact
from casreg.ledger.head import LedgerHead, read_head
from casreg.ledger.pointers import list_pointers, move_alias
from casreg.ledger.segments import append_event, commit_version, list_versions, read_version, versions_table
from casreg.ledger.sql import connect, query, tables_for
from casreg.records import AliasEvent, Lineage, Version, utcnow
from casreg.storage import ObjectStore
from casreg.storage.local import LocalStore
from casreg.storage.memory import MemoryStore
from casreg.testing.wrapper import StoreWrapper

NAMES = ("alpha", "beta", "alpha-b")  # "alpha-b" sorts before "alpha/" as a key: order must not matter
ALIASES = ("prod", "staging")


# -- helpers ---------------------------------------------------------------------------------------
def record(name: str, auc: float, *, tag: str = "") -> Version:
    digest = "blake3:" + blake3(f"{name}/{auc}/{tag}/{uuid.uuid4()}".encode()).hexdigest()
    return Version(
        name=name, version=0, digest=digest, kind="file", size=10, stored_bytes=5, new_bytes=5, file_count=1,
        chunk_count=1, created_at=utcnow(), author="tester@example.test", framework="fw", description=f"d {tag}",
        metrics={"auc": auc, "loss": 1 - auc}, params={"lr": "0.1"}, tags={"t": tag},
        lineage=Lineage(git_commit="c" * 40, git_dirty=False, hostname="h", python_version="3", casreg_version="0",
                        parent=None, run_id=tag or None, dataset="ds"),
    )


def commit(store: ObjectStore, name: str, auc: float = 0.5, tag: str = "") -> Version:
    rec = record(name, auc, tag=tag)
    return commit_version(store, rec, [{"path": f"{name}.bin", "type": "f", "size": 10, "digest": "ab" * 32}])


def views(store: ObjectStore) -> tuple[Any, ...]:
    """Every view, fully, in a fixed order (all columns; maps and structs included)."""
    con = connect(store)
    try:
        return (
            con.sql("SELECT * FROM versions ORDER BY name, version").to_arrow_table().to_pylist(),
            con.sql("SELECT * FROM events ORDER BY kind, event_id").to_arrow_table().to_pylist(),
            con.sql("SELECT * FROM files ORDER BY name, version, path").to_arrow_table().to_pylist(),
            con.sql("SELECT * FROM aliases ORDER BY name, alias").to_arrow_table().to_pylist(),
            {n: list_versions(store, n) for n in NAMES},
        )
    finally:
        con.close()


class Model:
    """What the ledger must say: every committed version and every alias event."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], Version] = {}
        self.events: dict[str, AliasEvent] = {}

    def check(self, store: ObjectStore) -> None:
        rows = query(store, "SELECT name, version, digest, metrics['auc'] AS auc FROM versions ORDER BY name, version")
        want = [{"name": v.name, "version": v.version, "digest": v.digest, "auc": v.metrics["auc"]}
                for _, v in sorted(self.versions.items())]
        assert rows == want
        ev = query(store, "SELECT event_id, kind, name, alias, to_version FROM events WHERE kind <> 'push' "
                          "ORDER BY event_id")
        assert ev == [{"event_id": e.event_id, "kind": e.kind, "name": e.name, "alias": e.alias,
                       "to_version": e.to_version} for _, e in sorted(self.events.items())]
        [pushes] = query(store, "SELECT count(*) AS n, count(DISTINCT name || ':' || to_version) AS d "
                                "FROM events WHERE kind = 'push'")
        assert pushes == {"n": len(self.versions), "d": len(self.versions)}
        for name in NAMES:
            listed = list_versions(store, name)
            assert [v.version for v in listed] == [n for (m, n) in sorted(self.versions) if m == name]
            assert listed == [read_version(store, name, v.version) for v in listed]
            assert [v.digest for v in listed] == [self.versions[(name, v.version)].digest for v in listed]


def compacted_keys(store: ObjectStore) -> set[str]:
    return {k for k in store.list("ledger/compacted") if k.endswith(".parquet")}


class Hooked(StoreWrapper):
    """A real store with hooks run before chosen operations (to interleave another actor
    exactly there); everything else passes straight through."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.before_swap: Callable[[str], None] | None = None
        self.after_swap: Callable[[str], None] | None = None
        self.before_read: Callable[[str], None] | None = None
        self.hide: set[str] = set()
        self.reads: list[str] = []

    def read(self, key, byte_range=None):  # type: ignore[no-untyped-def]
        if self.before_read:
            self.before_read(key)
        self.reads.append(key)
        return self.inner.read(key, byte_range)

    def read_versioned(self, key):  # type: ignore[no-untyped-def]
        self.reads.append(key)
        return self.inner.read_versioned(key)

    def list(self, prefix):  # type: ignore[no-untyped-def]
        return iter([k for k in self.inner.list(prefix) if k not in self.hide])

    def swap(self, key, data, expected):  # type: ignore[no-untyped-def]
        if self.before_swap:
            self.before_swap(key)
        token = self.inner.swap(key, data, expected)
        if self.after_swap:
            self.after_swap(key)
        return token


def populate(store: ObjectStore, model: Model, n: int = 6) -> None:
    for i in range(n):
        for name in NAMES[:2]:
            v = commit(store, name, auc=round(0.5 + i / 100, 3), tag=str(i))
            model.versions[(v.name, v.version)] = v
    for alias, target in (("prod", 1), ("staging", min(2, n)), ("prod", n)):
        v = model.versions[("alpha", target)]
        e = move_alias(store, "alpha", alias, (v.digest, v.version), reason="r")
        model.events[e.event_id] = e


# -- the reading rule under random interleavings ---------------------------------------------------
OPS = st.lists(st.one_of(
    st.tuples(st.just("push"), st.sampled_from(NAMES), st.integers(0, 999)),
    st.tuples(st.just("alias"), st.sampled_from(NAMES), st.sampled_from(ALIASES), st.integers(0, 50)),
    st.tuples(st.just("late-event"), st.sampled_from(NAMES), st.integers(1, 10_000)),
    st.tuples(st.just("compact"), st.booleans(), st.integers(1, 4)),
), min_size=1, max_size=20)


@pytest.mark.parametrize("kind", ["memory", "local"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_views_are_identical_before_and_after_any_compaction(kind: str, tmp_path: Path, ops: list[tuple]) -> None:
    if kind == "memory":
        url = f"memory://compact-{uuid.uuid4().hex}"
        store: ObjectStore = MemoryStore(url)
    else:
        store = LocalStore(tmp_path / uuid.uuid4().hex)
    model = Model()
    try:
        for op in ops:
            if op[0] == "push":
                v = commit(store, op[1], auc=op[2] / 1000, tag=str(op[2]))
                model.versions[(v.name, v.version)] = v
            elif op[0] == "alias":
                _, name, alias, pick = op
                mine = sorted(n for (m, n) in model.versions if m == name)
                target = None if not mine or pick == 0 else model.versions[(name, mine[pick % len(mine)])]
                e = move_alias(store, name, alias, (target.digest, target.version) if target else None)
                model.events[e.event_id] = e
            elif op[0] == "late-event":
                # a repair appends an event written long ago (its key sorts before covered ones).
                # Its alias is one no op moves: a real late event came from a pointer that held
                # it, and a move of an alias whose ledger says "set" but which has no pointer is
                # refused as a deleted pointer (tests/test_pointer_integrity.py)
                e = AliasEvent(uuid.uuid4().hex, utcnow() - timedelta(days=op[2]), "alias.set", op[1], "late",
                               None, "blake3:" + "0" * 64, None, 1, "a@b", "h", "late")
                assert append_event(store, e)
                model.events[e.event_id] = e
            else:
                _, full, max_files = op
                before = views(store)
                compact(store, full=full, max_files=max_files, grace=timedelta(0))
                assert views(store) == before
                head = read_head(store)
                if head is None:  # only an empty ledger has nothing to compact
                    assert not model.versions and not model.events
                    continue
                assert len(head.versions) <= max_files and len(head.events) <= max_files
                if full:
                    assert len(head.versions) <= 1 and len(head.events) <= 1
        model.check(store)
        before = views(store)
        compact(store)
        assert views(store) == before
        model.check(store)
        assert compact(store).changed is False  # everything covered: nothing to do
    finally:
        if kind == "memory":
            MemoryStore.wipe(url)


# -- compaction basics, on every backend -----------------------------------------------------------
def test_compact_covers_everything_and_keeps_segments(store: ObjectStore) -> None:
    model = Model()
    assert compact(store).changed is False  # empty ledger: nothing written
    assert read_head(store) is None
    populate(store, model)
    segments = set(store.list("ledger/versions")) | set(store.list("ledger/events"))
    res = compact(store)
    assert res.changed and res.versions_added == 12 and res.events_added == 3
    assert (res.versions_total, res.events_total, res.generation) == (12, 3, 1)
    head = read_head(store)
    assert head is not None and head.covered == {"alpha": 6, "beta": 6}
    assert set(store.list("ledger/versions")) | set(store.list("ledger/events")) == segments  # nothing deleted
    model.check(store)
    # covered segments are not read at all
    hooked = Hooked(store)
    assert [v.version for v in list_versions(hooked, "alpha")] == list(range(1, 7))
    assert not [k for k in hooked.reads if k.startswith(("ledger/versions", "refs/"))]
    hooked.reads.clear()
    query(hooked, "SELECT count(*) FROM events")
    assert not [k for k in hooked.reads if k.startswith(("ledger/versions", "ledger/events"))]
    # new records after the compaction are read from their segments
    v = commit(store, "alpha", 0.9)
    model.versions[(v.name, v.version)] = v
    model.check(store)
    assert compact(store).versions_added == 1
    model.check(store)


def test_ls_reads_only_uncovered_sidecars_and_no_pyarrow_needed_when_uncovered(store: ObjectStore) -> None:
    model = Model()
    populate(store, model, n=3)
    compact(store)
    for i in range(2):
        v = commit(store, "alpha", 0.7, tag=f"new{i}")
        model.versions[(v.name, v.version)] = v
    hooked = Hooked(store)
    versions = list_versions(hooked, "alpha")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5]
    # the uncovered records are read from their segments' footers (format 2), not from refs/ copies
    records = sorted(k for k in hooked.reads if k.startswith(("refs/", "ledger/versions/")))
    assert records == [segment_key("alpha", 4), segment_key("alpha", 5)]
    hooked.reads.clear()
    assert [v.version for v in list_versions(hooked, "alpha-b")] == []
    assert not [k for k in hooked.reads if "compacted/" in k and k != HEAD_KEY]  # model not covered: no Parquet


def test_head_format(store: ObjectStore) -> None:
    populate(store, Model(), n=2)
    compact(store)
    doc = json.loads(store.read(HEAD_KEY))
    assert (doc["format"] == "casreg-ledger-head/1" and doc["generation"] == 1
            and doc["covered"] == {"alpha": 2, "beta": 2})
    for kind in ("versions", "events"):
        [f] = doc[kind]
        data = store.read(f["key"])
        assert f["key"].startswith(f"ledger/compacted/{kind}/") and f["size"] == len(data)
        assert f["blake3"] == blake3(data).hexdigest()
    assert doc["versions"][0]["rows"] == 4 and doc["events"][0]["rows"] == 3
    # the events file records which segment every row came from
    import io

    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(store.read(doc["events"][0]["key"])))
    assert sorted(t.column("segment").to_pylist()) == sorted(store.list("ledger/events"))


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(format="casreg-ledger-head/2"),
    lambda d: d.update(id="nothex"),
    lambda d: d.update(generation=0),
    lambda d: d.update(covered={"../x": 1}),
    lambda d: d.update(covered={"alpha": -1}),
    lambda d: d.update(covered={"alpha": True}),
    lambda d: d["versions"][0].update(key="packs/aa/evil.parquet"),
    lambda d: d["versions"][0].update(key="ledger/compacted/versions/../../../x.parquet"),
    lambda d: d["versions"][0].update(key="ledger/compacted/events/x.parquet"),
    lambda d: d["versions"][0].update(rows=-1),
    lambda d: d["versions"][0].update(blake3="00"),
    lambda d: d.pop("events"),
])
def test_malformed_head_is_refused(store: ObjectStore, mutate: Callable[[dict], None]) -> None:
    populate(store, Model(), n=1)
    compact(store)
    doc = json.loads(store.read(HEAD_KEY))
    LedgerHead.from_json(json.dumps(doc).encode())  # the original parses
    mutate(doc)
    with pytest.raises(ValueError):
        LedgerHead.from_json(json.dumps(doc).encode())
    with pytest.raises(ValueError):
        LedgerHead.from_json(b"\xff not json")


# -- races -----------------------------------------------------------------------------------------
def test_a_compaction_that_loses_the_swap_retries_and_leaves_no_garbage(store: ObjectStore) -> None:
    model = Model()
    populate(store, model)
    compact(store)
    v = commit(store, "beta", 0.8)
    model.versions[(v.name, v.version)] = v
    hooked = Hooked(store)
    rival: list[Any] = []

    def race(key: str) -> None:
        if key == HEAD_KEY and not rival:  # another compactor wins first; then one more push
            w = commit(store, "alpha", 0.81)
            model.versions[(w.name, w.version)] = w
            rival.append(compact(store, grace=timedelta(0)))
            w = commit(store, "alpha", 0.82)
            model.versions[(w.name, w.version)] = w

    hooked.before_swap = race
    res = compact(hooked, grace=timedelta(0))
    assert rival[0].changed and rival[0].versions_added == 2
    assert res.changed and res.attempts == 2 and res.versions_added == 1  # only what the rival had not covered
    head = read_head(store)
    assert head is not None and head.generation == 3
    # the loser's first files were deleted; what remains is exactly what HEAD lists
    assert compacted_keys(store) == {f.key for f in head.files}
    model.check(store)


def test_a_swap_that_went_through_but_reported_a_conflict_is_kept(store: ObjectStore) -> None:
    """On S3 a retried conditional PUT can report PreconditionFailed although the first
    attempt succeeded: the compactor must notice HEAD is its own and keep its files."""
    model = Model()
    populate(store, model)

    class Lying(Hooked):
        def swap(self, key, data, expected):  # type: ignore[no-untyped-def]
            self.inner.swap(key, data, expected)
            raise ConflictError("precondition failed (on the retry)")

    res = compact(Lying(store), grace=timedelta(0))
    assert res.changed and res.attempts == 1
    head = read_head(store)
    assert head is not None and all(store.exists(f.key) for f in head.files)
    model.check(store)


def test_stale_reader_restarts_from_the_newer_head(store: ObjectStore, caplog: pytest.LogCaptureFixture) -> None:
    model = Model()
    populate(store, model)
    compact(store)
    v = commit(store, "alpha", 0.3)
    model.versions[(v.name, v.version)] = v
    hooked = Hooked(store)
    fired: list[bool] = []

    def supersede(key: str) -> None:
        if key.startswith("ledger/compacted/versions/") and not fired:
            fired.append(True)  # a compaction replaces (and deletes) the file this reader is about to read
            compact(store, full=True, grace=timedelta(0))
            assert not store.exists(key)

    hooked.before_read = supersede
    with caplog.at_level(logging.WARNING):
        rows = versions_table(hooked, columns=["name", "version", "digest"]).to_pylist()
    assert fired and not caplog.records  # a retry, not a fallback
    assert [(r["name"], r["version"], r["digest"]) for r in rows] == [
        (n, k, v.digest) for (n, k), v in sorted(model.versions.items())]


@pytest.mark.parametrize("damage", ["delete", "flip", "head"])
def test_missing_or_damaged_compacted_files_fall_back_to_segments(store: ObjectStore, damage: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    model = Model()
    populate(store, model)
    compact(store)
    expected = views(store)
    head = read_head(store)
    assert head is not None
    key = head.versions[0].key
    if damage == "delete":
        store.delete(key)
    elif damage == "flip":
        data = bytearray(store.read(key))
        data[len(data) // 2] ^= 0x01
        store.delete(key)
        store.create(key, bytes(data))
    else:
        current = store.read_versioned(HEAD_KEY)
        assert current is not None
        store.swap(HEAD_KEY, b'{"format": "casreg-ledger-head/1", "id": 3', current.token)
    with caplog.at_level(logging.WARNING, logger="casreg"):
        assert views(store) == expected
    assert any("reading the ledger segments instead" in r.getMessage() for r in caplog.records)
    model.check(store)
    # the next compaction notices a missing file; a full one re-reads (and so checks) every file;
    # either rebuilds a sound compacted ledger from the segments
    res = compact(store, full=damage == "flip")
    assert res.changed and res.versions_total == len(model.versions) and res.events_total == len(model.events)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="casreg"):
        assert views(store) == expected
    assert not caplog.records


def test_a_damaged_file_met_while_merging_makes_the_compaction_rebuild(store: ObjectStore,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    model = Model()
    populate(store, model)
    compact(store)
    v = commit(store, "alpha", 0.3)
    model.versions[(v.name, v.version)] = v
    compact(store)
    head = read_head(store)
    assert head is not None and [f.rows for f in head.versions] == [12, 1]
    small = head.versions[1].key  # same size, one bit flipped: only reading it shows the damage
    data = bytearray(store.read(small))
    data[len(data) // 2] ^= 0x10
    store.delete(small)
    store.create(small, bytes(data))
    v = commit(store, "beta", 0.4)
    model.versions[(v.name, v.version)] = v
    with caplog.at_level(logging.WARNING, logger="casreg"):
        res = compact(store)  # merges the small file with the new row: meets the damage
    assert res.changed and res.attempts == 2 and res.versions_total == 14
    assert any("rebuilding the compacted ledger" in r.getMessage() for r in caplog.records)
    head = read_head(store)
    assert head is not None and [f.rows for f in head.versions] == [14] and small not in {f.key for f in head.files}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="casreg"):
        model.check(store)
    assert not caplog.records


def test_coverage_never_skips_a_number_the_listing_missed(store: ObjectStore) -> None:
    """A listing that runs while segments are created may miss one; coverage must stop at
    the gap, or the missed version would be hidden forever."""
    model = Model()
    for i in range(8):
        v = commit(store, "alpha", i / 10)
        model.versions[(v.name, v.version)] = v
    hooked = Hooked(store)
    hooked.hide = {segment_key("alpha", 5)}
    res = compact(hooked)
    assert res.versions_added == 4
    head = read_head(store)
    assert head is not None and head.covered == {"alpha": 4}
    model.check(store)
    assert compact(store).versions_added == 4
    model.check(store)


def test_late_event_is_counted_once(store: ObjectStore) -> None:
    model = Model()
    populate(store, model, n=2)
    compact(store)
    late = AliasEvent(uuid.uuid4().hex, datetime(2001, 1, 1, tzinfo=UTC), "alias.set", "alpha", "prod",
                      None, model.versions[("alpha", 1)].digest, None, 1, "x@y", "h", "repair")
    covered = set(store.list("ledger/events"))
    assert append_event(store, late)
    assert event_key(late) < min(covered)  # sorts before every covered event: no watermark could take it
    model.events[late.event_id] = late
    model.check(store)
    assert compact(store).events_added == 1
    model.check(store)
    assert not append_event(store, late)  # idempotent repair
    assert compact(store).changed is False
    model.check(store)


# -- file layout: tiers and garbage ----------------------------------------------------------------
def test_tiers_stay_few_and_full_merges(store: ObjectStore) -> None:
    model = Model()
    sizes = []
    for i in range(40):
        v = commit(store, NAMES[i % 2], i / 100)
        model.versions[(v.name, v.version)] = v
        compact(store, grace=timedelta(0))
        head = read_head(store)
        assert head is not None
        sizes.append([f.rows for f in head.versions])
    assert max(len(s) for s in sizes) <= 6  # O(log n) files
    assert all(s == sorted(s, reverse=True) for s in sizes)  # older files are the bigger ones
    model.check(store)
    res = compact(store, full=True, grace=timedelta(0))
    head = read_head(store)
    assert res.changed and head is not None and [f.rows for f in head.versions] == [40]
    assert compacted_keys(store) == {f.key for f in head.files}
    model.check(store)
    assert compact(store, full=True).changed is False  # already one file


def test_superseded_files_wait_out_the_grace_period(store: ObjectStore) -> None:
    populate(store, Model(), n=2)
    compact(store)
    first = read_head(store)
    assert first is not None
    commit(store, "alpha", 0.1)
    res = compact(store, full=True)  # default grace: the superseded versions file stays
    assert res.removed == [] and {f.key for f in first.files} < compacted_keys(store)
    later = lambda: datetime.now(UTC) + timedelta(hours=2)  # noqa: E731
    res = compact(store, clock=later)  # nothing new, but the old file has aged out
    assert not res.changed and res.removed == [first.versions[0].key]  # the events file is still in use
    head = read_head(store)
    assert head is not None and compacted_keys(store) == {f.key for f in head.files}


def test_fresh_unreferenced_files_of_a_concurrent_compaction_are_not_deleted(store: ObjectStore) -> None:
    populate(store, Model(), n=2)
    compact(store)
    # another compactor has written its file and not swapped HEAD yet
    pending = f"ledger/compacted/versions/{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex}.parquet"
    store.create(pending, b"not yet referenced")
    commit(store, "alpha", 0.2)
    res = compact(store, grace=timedelta(minutes=10))
    assert res.changed and pending not in res.removed and store.exists(pending)


# -- concurrency -----------------------------------------------------------------------------------
def test_concurrent_pushes_moves_compactions_and_reads(store_factory: Callable[[], ObjectStore]) -> None:
    store = store_factory()
    committed: dict[tuple[str, int], str] = {}
    events: dict[str, AliasEvent] = {}
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []
    snapshots: list[list[tuple[str, int, str]]] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
        return run

    def pusher(name: str, count: int) -> None:
        for i in range(count):
            v = commit(store, name, i / 100, tag=f"{name}-{i}")
            with lock:
                committed[(v.name, v.version)] = v.digest

    def mover() -> None:
        i = 0
        while not done.is_set() or i < 3:
            with lock:
                mine = [(n, d) for (m, n), d in committed.items() if m == "alpha"]
            if mine:
                n, d = random.choice(mine)
                try:
                    e = move_alias(store, "alpha", "prod", (d, n))
                except ConflictError:
                    continue
                with lock:
                    events[e.event_id] = e
                i += 1

    def compactor() -> None:
        while not done.is_set():
            compact(store, grace=timedelta(0), max_files=3)

    def reader() -> None:
        while not done.is_set():
            rows = versions_table(store, columns=["name", "version", "digest"]).to_pylist()
            snap = [(r["name"], r["version"], r["digest"]) for r in rows]
            assert len(set((n, v) for n, v, _ in snap)) == len(snap), "a record was read twice"
            snapshots.append(snap)
            ev = query(store, "SELECT event_id FROM events WHERE kind <> 'push'")
            assert len({r["event_id"] for r in ev}) == len(ev), "an event was read twice"

    pushers = [threading.Thread(target=guarded(lambda n=n: pusher(n, 15))) for n in ("alpha", "beta", "alpha")]
    others = [threading.Thread(target=guarded(f)) for f in (mover, compactor, compactor, reader)]
    for t in pushers + others:
        t.start()
    for t in pushers:
        t.join()
    done.set()
    for t in others:
        t.join()
    assert not errors, errors
    assert len(committed) == 45 and snapshots
    for snap in snapshots:  # every record ever read was a committed one
        for name, number, digest in snap:
            assert committed[(name, number)] == digest
    compact(store)
    model = Model()
    for (name, number), digest in committed.items():
        model.versions[(name, number)] = dataclasses.replace(read_version(store, name, number))
        assert model.versions[(name, number)].digest == digest
    model.events = events
    model.check(store)
    assert [n for (m, n) in sorted(committed) if m == "alpha"] == list(range(1, 31))  # gap-free numbers


def _process_pusher(root: str, name: str, count: int, ready_dir: str) -> None:
    import time

    while len(os.listdir(ready_dir)) < 2:  # both compactors are running
        time.sleep(0.01)
    store = LocalStore(root)
    for i in range(count):
        commit(store, name, i / 1000, tag=f"p{os.getpid()}-{i}")


def _process_compactor(root: str, stop_file: str, ready_dir: str) -> tuple[int, int]:
    store = LocalStore(root)
    runs = changed = 0
    while not os.path.exists(stop_file):
        changed += compact(store, grace=timedelta(0), max_files=2).changed
        runs += 1
        Path(ready_dir, str(os.getpid())).touch()
    return runs, changed


def test_processes_push_and_compact_at_once(tmp_path: Path) -> None:
    """Real processes on one local registry: two pushers of one model, two compactors."""
    root = str(tmp_path / "reg")
    stop = str(tmp_path / "stop")
    ready = tmp_path / "ready"
    ready.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        compactors = [pool.apply_async(_process_compactor, (root, stop, str(ready))) for _ in range(2)]
        pushers = [pool.apply_async(_process_pusher, (root, "alpha", 25, str(ready))) for _ in range(2)]
        for p in pushers:
            p.get(timeout=300)
        Path(stop).touch()
        runs = [c.get(timeout=300) for c in compactors]
    assert sum(changed for _, changed in runs) >= 2, runs  # compactions really ran during the pushes
    store = LocalStore(root)
    before = [(v.version, v.digest) for v in list_versions(store, "alpha")]
    assert [n for n, _ in before] == list(range(1, 51))
    compact(store)
    assert [(v.version, v.digest) for v in list_versions(store, "alpha")] == before
    head = read_head(store)
    assert head is not None and head.covered == {"alpha": 50}
    assert compacted_keys(store) == {f.key for f in head.files}  # losers cleaned up after themselves
    rows = query(store, "SELECT version, digest FROM versions ORDER BY version")
    assert [(r["version"], r["digest"]) for r in rows] == before


# -- the automatic trigger -------------------------------------------------------------------------
def _push(reg: Registry, tmp_path: Path, i: int, name: str = "m") -> Version:
    f = tmp_path / f"src-{i}.bin"
    f.write_bytes(f"content {i}".encode())
    return reg.push(name, f, metrics={"auc": i / 100})


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CASREG_USER", "tester@example.test")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("CASREG_COMPACT_THRESHOLD", raising=False)


def test_pushes_compact_past_the_threshold(registry: Registry, tmp_path: Path, quiet_env: None) -> None:
    registry.compact_threshold = 3
    for i in range(1, 4):
        _push(registry, tmp_path, i)
    assert read_head(registry.store) is None  # 3 segments: not more than the threshold
    _push(registry, tmp_path, 4)
    head = read_head(registry.store)
    assert head is not None and head.covered == {"m": 4}
    for i in range(5, 8):
        _push(registry, tmp_path, i)
    assert read_head(registry.store).covered == {"m": 4}  # type: ignore[union-attr]
    _push(registry, tmp_path, 8, name="other")  # another model, under the threshold: nothing
    assert read_head(registry.store).covered == {"m": 4}  # type: ignore[union-attr]
    _push(registry, tmp_path, 9)  # m has 4 uncovered > 3; "other" is compacted along
    assert read_head(registry.store).covered == {"m": 8, "other": 1}  # type: ignore[union-attr]
    assert [v.version for v in registry.ls("m")] == list(range(1, 9))
    rows = registry.sql("SELECT name, version, metrics['auc'] AS auc FROM versions ORDER BY name, version")
    assert [(r["name"], r["version"]) for r in rows] == [("m", n) for n in range(1, 9)] + [("other", 1)]


def test_an_old_head_triggers_compaction_of_any_uncovered_version(store: ObjectStore) -> None:
    for i in range(3):
        commit(store, "alpha", i / 10)
    compact(store)
    v = commit(store, "beta", 0.4)
    assert maybe_compact(store, "beta", v.version, threshold=64) is None  # fresh HEAD, 1 uncovered
    later = lambda: datetime.now(UTC) + timedelta(minutes=16)  # noqa: E731
    res = maybe_compact(store, "beta", v.version, threshold=64, clock=later)
    assert res is not None and res.changed and read_head(store).covered == {"alpha": 3, "beta": 1}  # type: ignore[union-attr]
    assert maybe_compact(store, "beta", v.version, threshold=64, clock=later) is None  # covered now
    assert maybe_compact(store, "beta", v.version, threshold=0, clock=later) is None  # 0: off


def test_threshold_from_environment(registry: Registry, tmp_path: Path, quiet_env: None,
                                    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CASREG_COMPACT_THRESHOLD", "1")
    _push(registry, tmp_path, 1)
    assert read_head(registry.store) is None
    _push(registry, tmp_path, 2)
    assert read_head(registry.store) is not None
    monkeypatch.setenv("CASREG_COMPACT_THRESHOLD", "0")
    for i in range(3, 6):
        _push(registry, tmp_path, i)
    assert read_head(registry.store).covered == {"m": 2}  # type: ignore[union-attr]
    monkeypatch.setenv("CASREG_COMPACT_THRESHOLD", "lots")
    with caplog.at_level(logging.WARNING, logger="casreg"):
        v = _push(registry, tmp_path, 6)  # a bad setting never fails a push
    assert v.version == 6
    assert any("CASREG_COMPACT_THRESHOLD" in r.getMessage() for r in caplog.records)


def test_a_failing_compaction_never_fails_the_push(store: ObjectStore, tmp_path: Path, quiet_env: None,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    class NoHeadWrites(Hooked):
        def swap(self, key, data, expected):  # type: ignore[no-untyped-def]
            if key == HEAD_KEY:
                raise StorageError("HEAD is not writable here")
            return self.inner.swap(key, data, expected)

    reg = Registry.from_store(NoHeadWrites(store))
    reg.compact_threshold = 1
    _push(reg, tmp_path, 1)
    with caplog.at_level(logging.WARNING, logger="casreg"):
        v = _push(reg, tmp_path, 2)
    assert v.version == 2 and [x.version for x in reg.ls("m")] == [1, 2]
    assert any("automatic ledger compaction failed" in r.getMessage() for r in caplog.records)
    assert read_head(store) is None


# -- reads: row groups, projections, which tables SQL reads ------------------------------------------
def test_name_filter_over_many_row_groups(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compact_mod, "ROW_GROUP_ROWS", 3)
    model = Model()
    for i in range(7):
        for name in NAMES:
            v = commit(store, name, i / 10)
            model.versions[(v.name, v.version)] = v
    compact(store, full=True)
    import io

    import pyarrow.parquet as pq

    head = read_head(store)
    assert head is not None
    assert pq.ParquetFile(io.BytesIO(store.read(head.versions[0].key))).metadata.num_row_groups == 7
    for name in NAMES:
        t = versions_table(store, name=name, columns=["name", "version", "digest"])
        assert t.to_pylist() == [{"name": name, "version": n, "digest": model.versions[(name, n)].digest}
                                 for n in range(1, 8)]
    model.check(store)


def test_sql_reads_only_the_tables_a_query_names(store: ObjectStore) -> None:
    populate(store, Model(), n=2)
    hooked = Hooked(store)
    assert query(hooked, "SELECT count(*) AS n FROM versions") == [{"n": 4}]
    assert not [k for k in hooked.reads if k.startswith(("pointers/", "ledger/events"))]
    hooked.reads.clear()
    assert query(hooked, "SELECT count(*) AS n FROM Aliases") == [{"n": 2}]
    assert [k for k in hooked.reads if k.startswith("pointers/")]
    # each pointer is confirmed against its version's record (one bounded segment read,
    # as resolve does); nothing else of the ledger is read
    pointed = {segment_key(p.name, p.version) for p in list_pointers(store)}
    assert {k for k in hooked.reads if k.startswith("ledger/")} == pointed
    assert query(store, "SELECT (SELECT count(*) FROM versions) AS v, (SELECT count(*) FROM events) AS e, "
                        "(SELECT count(*) FROM files) AS f") == [{"v": 4, "e": 7, "f": 4}]
    assert tables_for("select 1") == set()
    assert tables_for('SELECT * FROM "EVENTS"') == {"_versions", "_events"}
    assert tables_for("SELECT * FROM files") == {"_versions"}
    assert tables_for("SELECT * FROM versions2") == set()


# -- CLI -------------------------------------------------------------------------------------------
def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), CASREG_USER="cli@example.test", NO_COLOR="1",
             HOME=str(tmp_path), GIT_CEILING_DIRECTORIES=str(tmp_path), **env)
    e.pop("CASREG_COMPACT_THRESHOLD", None)
    script = Path(sys.executable).with_name("casreg")
    return subprocess.run([str(script), *args], env=e, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_cli_compact(tmp_path: Path) -> None:
    p = _cli(tmp_path, "compact")
    assert p.returncode == 0 and "ledger is empty" in p.stdout
    for i in range(3):
        (tmp_path / f"f{i}").write_text(f"model {i}")
        assert _cli(tmp_path, "push", "m", str(tmp_path / f"f{i}"), "-q", "--metric", f"auc=0.{i}").returncode == 0
    assert _cli(tmp_path, "alias", "set", "m@prod", "2", "-q").returncode == 0
    p = _cli(tmp_path, "compact", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["changed"] and res["versions_added"] == 3 and res["events_added"] == 1 and res["generation"] == 1
    p = _cli(tmp_path, "compact")
    assert p.returncode == 0 and "nothing to compact" in p.stdout and "3 versions, 1 event)" in p.stdout
    assert _cli(tmp_path, "compact", "-q").stdout == ""
    (tmp_path / "f3").write_text("model 3")
    _cli(tmp_path, "push", "m", str(tmp_path / "f3"), "-q")
    p = _cli(tmp_path, "compact", "--full", "--grace", "0")
    assert p.returncode == 0 and "compacted 1 new version record and 0 new events" in p.stdout
    assert "removed 1 superseded compacted file\n" in p.stdout  # the versions file; events had nothing new
    rows = json.loads(_cli(tmp_path, "ls", "m", "--json").stdout)
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, []), (2, ["prod"]), (3, []), (4, [])]
    rows = json.loads(_cli(tmp_path, "sql", "SELECT count(*) AS n FROM versions WHERE metrics['auc'] > 0.05",
                           "--json").stdout)
    assert rows == [{"n": 2}]
    p = _cli(tmp_path, "compact", "--grace", "-1")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    # resolving a compacted registry still imports neither pyarrow nor duckdb
    for ref in ("m", "m@prod", "m:1"):
        code = (f"import sys; from casreg_cli.main import run; rc = run(['resolve', {ref!r}]); "
                "print(rc, sorted(m for m in ('duckdb', 'pyarrow') if m in sys.modules))")
        e = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), HOME=str(tmp_path))
        q = subprocess.run([sys.executable, "-c", code], env=e, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
        assert q.returncode == 0 and q.stdout.splitlines()[-1] == "0 []", (q.stdout, q.stderr)


def test_both_sql_paths_and_both_record_paths_agree(store: ObjectStore) -> None:
    """``query`` lets DuckDB read the compacted Parquet itself; ``connect`` hands it Arrow;
    ``ls`` builds records from Arrow columns, ``read_version`` from JSON: all must agree."""
    from casreg.ledger.sql import _plain

    model = Model()
    populate(store, model, n=4)
    compact(store)
    for i in range(3):
        v = commit(store, "beta", 0.1 * i)
        model.versions[(v.name, v.version)] = v
    for view, order in (("versions", "name, version"), ("files", "name, version, path"), ("events", "event_id")):
        sql = f"SELECT * FROM {view} ORDER BY {order}"
        con = connect(store)
        try:
            t = con.sql(sql).to_arrow_table()
        finally:
            con.close()
        via_arrow = [{f.name: _plain(row[f.name], f.type) for f in t.schema} for row in t.to_pylist()]
        assert query(store, sql) == via_arrow
        assert len(via_arrow) == {"versions": 11, "files": 11, "events": 14}[view]
    for name in ("alpha", "beta"):
        listed = list_versions(store, name)
        assert listed == [read_version(store, name, v.version) for v in listed]
        assert [v.to_dict() for v in listed] == [read_version(store, name, v.version).to_dict() for v in listed]
    model.check(store)


def test_every_ledger_read_hands_arrow_memory_it_owns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI once saw ``casreg compact`` abort at exit (-6, "terminate called without an
    active exception"): an Arrow worker thread dropped the last reference to a reader over
    a Python ``bytes`` after the interpreter began to exit, and releasing it needs the GIL
    (apache/arrow#34314; the core dump showed ``PyBuffer::~PyBuffer``). So no Parquet read
    of the ledger may give Arrow a reader over Python memory: compacted files (threaded
    reads), segments, the SQL dataset and verify's segment-by-segment fallback."""
    import pyarrow as pa

    from casreg.maintenance.verify import verify_registry

    real = pa.BufferReader
    given: list[tuple[str, bool]] = []

    def recording(obj: object) -> Any:
        given.append((type(obj).__name__, isinstance(obj, pa.Buffer) and obj.is_mutable))
        return real(obj)

    store = LocalStore(str(tmp_path / "reg"))
    model = Model()
    populate(store, model, n=3)
    monkeypatch.setattr(pa, "BufferReader", recording)
    compact(store)
    commit(store, "beta", 0.9)
    views(store)
    assert len(query(store, "SELECT name, version FROM versions")) == 7
    assert len(list_versions(store, "alpha")) == 3
    key = segment_key("alpha", 2)
    store.delete(key)
    store.create(key, b"PAR1 not a segment PAR1")  # the ledger no longer reads: verify reads segment by segment
    report = verify_registry(store)
    assert any(p.key == key for p in report.problems)
    assert len(given) >= 10
    assert all(owned for _, owned in given), [t for t, owned in given if not owned]


class ListsAfter(Hooked):
    """A store that can list from a key on (what S3's ``StartAfter`` offers); counts the
    keys every listing returns."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.listed: list[str] = []
        self.capabilities = dataclasses.replace(inner.capabilities, list_after=True)  # declared, as backends do

    def list(self, prefix):  # type: ignore[no-untyped-def]
        keys = list(super().list(prefix))
        self.listed += keys
        return iter(keys)

    def list_after(self, prefix: str, start_after: str):  # type: ignore[no-untyped-def]
        keys = sorted(k for k in super().list(prefix) if k > start_after)
        self.listed += keys
        return iter(keys)


def test_readers_list_only_uncovered_keys_where_the_store_can(store: ObjectStore) -> None:
    model = Model()
    for i in range(12):
        v = commit(store, "alpha", i / 100)
        model.versions[(v.name, v.version)] = v
    compact(store)
    for i in range(3):
        v = commit(store, "alpha", 0.5 + i / 100)
        model.versions[(v.name, v.version)] = v
    plain = Hooked(store)
    smart = ListsAfter(store)
    reg_plain, reg_smart = Registry.from_store(plain), Registry.from_store(smart)
    assert reg_smart.ls("alpha") == reg_plain.ls("alpha") and len(reg_smart.ls("alpha")) == 15
    assert reg_smart.ls("alpha", newest=4) == reg_plain.ls("alpha", newest=4) == reg_plain.ls("alpha")[-4:]
    assert reg_smart.ls("alpha", newest=2)[0].version == 14
    assert reg_smart.resolve("alpha") == reg_plain.resolve("alpha")
    assert reg_smart.resolve("alpha").version == 15
    assert versions_table(smart, name="alpha").equals(versions_table(plain, name="alpha"))
    smart.listed.clear()
    reg_smart.ls("alpha")
    reg_smart.resolve("alpha")
    versions_table(smart, name="alpha")
    assert sorted(set(smart.listed)) == [segment_key("alpha", n) for n in (13, 14, 15)]  # never the covered ones
    compact(store)  # everything covered: the latest number comes from HEAD, nothing is listed
    smart.listed.clear()
    assert reg_smart.resolve("alpha").version == 15 and reg_smart.ls("alpha", newest=1)[0].version == 15
    assert smart.listed == []
    with pytest.raises(FileNotFoundError):
        reg_smart.resolve("beta")
    model.check(store)
