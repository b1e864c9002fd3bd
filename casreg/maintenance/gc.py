"""Garbage collection: reclaim objects no version references, safely while others push.

What becomes garbage is what interrupted pushes leave behind and what only deleted
versions use (a deleted version's ledger record stays, but it is no root:
:mod:`casreg.maintenance.reachable`): packs (with their indexes) and manifests that no
live version reaches, and the store's leftovers (a local disk's temporary files of writes that never completed). ``gc``
removes them in two phases, so that a push running at the same time never loses an
object it relies on (docs/gc.md gives the protocol and the argument):

1. **mark**: compute what the ledger reaches; write the unreachable objects older than
   the grace period G as an immutable *condemnation record* ``gc/condemned/<time>-<id>.json``.
   Nothing is deleted.
2. **sweep** (a later run, at least D after the record was written): announce the sweep
   (``gc/sweeping/<id>/<run>.json``), read the *rescues* pushes wrote for the record
   (``gc/rescued/<id>/...``), recompute reachability, and delete the condemned objects that
   are still unreachable and not rescued; then delete the record.

The push side is :func:`check_before_commit`, which :meth:`casreg.Registry.push` calls
right before it commits: a version that relies on a condemned object rescues it, or fails
with a retryable :class:`GcConflictError` when a sweep may already be deleting it. The
protocol's objects are in :mod:`casreg.maintenance.condemned`, reachability in
:mod:`casreg.maintenance.reachable`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from casreg.concurrency import bounded_map, io_threads
from casreg.content.manifest import Manifest
from casreg.errors import CasregError, ConflictError, IntegrityError, InvalidInputError, NotFoundError
from casreg.keys import (
    GC_CONDEMNED,
    GC_RESCUED,
    GC_SWEEPING,
    INDEXES,
    MANIFESTS,
    PACKS,
    index_key,
    manifest_key,
    pack_key,
    parse_condemned_key,
    parse_object_key,
    parse_rescue_key,
    parse_signature_key,
    parse_sweeping_key,
)
from casreg.maintenance.condemned import (
    Condemned,
    Record,
    announce_sweep,
    drop_announcement,
    iso,
    list_records,
    read_record,
    rescued_keys,
    sweep_announced,
    write_record,
    write_rescue,
)
from casreg.maintenance.reachable import Reachability, scan
from casreg.records import JsonValue, sum_time_units, utcnow
from casreg.storage import ObjectStore

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_DELAY",
    "GcConflictError",
    "GcObject",
    "GcRecordInfo",
    "GcReport",
    "CommitCheck",
    "check_before_commit",
    "collect",
    "parse_duration",
]

DEFAULT_GRACE = timedelta(hours=24)
DEFAULT_DELAY = timedelta(hours=1)
#: A sweep announcement whose record is gone and that is older than this belongs to a
#: sweep that died; only then is it removed (a live sweep's announcement must stay).
STALE_SWEEP = timedelta(days=7)

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?")
_UNITS: dict[str | None, float] = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class GcConflictError(ConflictError):
    """A push relied on an object a concurrent ``gc`` is deleting or has deleted; nothing
    was committed, and pushing again succeeds (it stores what is missing)."""


# -- small helpers ----------------------------------------------------------------------------
def parse_duration(text: str | float | int | timedelta) -> timedelta:
    """``"24h"``, ``"90m"``, ``"1h30m"``, ``"2d"``, ``"500ms"``, ``"0"`` or plain seconds."""
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if not s:
            raise InvalidInputError("invalid duration '': use e.g. 24h, 90m, 1h30m, 2d, 30s or 0")
        spelled = sum_time_units(s, _DURATION, _UNITS)
        if spelled is None:
            raise InvalidInputError(f"invalid duration {text!r}: use e.g. 24h, 90m, 1h30m, 2d, 30s or 0")
        seconds = spelled
    if not seconds >= 0 or seconds == float("inf"):
        raise InvalidInputError(f"invalid duration {text!r}: it must be a finite, non-negative time")
    return timedelta(seconds=seconds)


def object_stat(store: ObjectStore, key: str) -> tuple[int, datetime | None] | None:
    """``(size, last-modified time)`` of an object, ``None`` if it does not exist. The
    time is ``None`` where the backend keeps none (``memory://``): such objects count as
    older than any grace period (docs/gc.md)."""
    info = store.stat(key)
    return None if info is None else (info.size, info.modified)


# -- the push side ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CommitCheck:
    """What :func:`check_before_commit` found."""

    records: int  # live condemnation records read
    rescued: tuple[str, ...]  # condemned objects this version relies on, rescued from their sweep
    manifest_written: bool  # the manifest had been swept since the push wrote it, and was rewritten


def check_before_commit(store: ObjectStore, manifest: Manifest, *, threads: int | None = None,
                        data: bytes | None = None) -> CommitCheck:
    """Run by a push after its manifest is stored and right before its ledger commit.

    1. Read the live condemnation records.
    2. Read the manifest stored under this version's digest (the one readers will get,
       which may predate this push), re-creating it if a sweep removed it meanwhile.
    3. If the version relies on condemned objects (the manifest, its packs, their
       indexes), rescue them: write ``gc/rescued/<record>/<id>.json``, then make sure no
       sweep of that record has been announced; if one has, fail (retryable).
    4. Check that every pack it relies on still exists (a sweep that finished while this
       push ran may have deleted one it learned about from an index).

    The commit must follow within much less than the gc delay D (docs/gc.md). ``data``:
    the manifest's bytes as the push wrote them, if it has them (``manifest.to_bytes()``
    otherwise: what they are, as compression is deterministic)."""
    mkey = manifest_key(manifest.hexdigest)
    records = list_records(store)  # (1) before anything else is checked

    written = False
    ours = data if data is not None else manifest.to_bytes()
    try:  # (2)
        found = store.read(mkey)
    except NotFoundError:
        found = ours
        written = store.create(mkey, found)
        if not written:
            found = store.read(mkey)
    # the bytes this push wrote need no second parse
    stored = manifest if found == ours else Manifest.from_bytes(found, expected=manifest.digest, where=mkey)
    packs = sorted(stored.pack_ids)  # its delta bases' packs too
    used = {mkey} | {pack_key(p) for p in packs} | {index_key(p) for p in packs}

    rescued: set[str] = set()
    hits = [(rec, sorted(used & rec.keys)) for rec in records]
    hits = [(rec, keys) for rec, keys in hits if keys]
    for rec, keys in hits:  # (3) announce first...
        write_rescue(store, rec.id, manifest.version_digest, keys, utcnow())
        rescued.update(keys)
    for rec, keys in hits:  # ...then look for a sweep that could have missed the announcement
        if sweep_announced(store, rec.id):
            # (an index this push created after the sweep deleted it, of a pack it is deleting)
            _drop_orphan_indexes(store, sorted({kind[1] for k in keys if (kind := parse_object_key(k)) is not None
                                                and kind[0] in (PACKS, INDEXES)}))
            raise GcConflictError(
                f"a concurrent gc is sweeping {keys[0]}, which this version relies on; nothing was committed: "
                "push again (it stores what is missing)")

    # (4) after the records were read and rescues announced
    needed = [mkey] + [pack_key(p) for p in packs]
    gone = [k for k, ok in zip(needed, bounded_map(store.exists, needed, io_threads(threads))) if not ok]
    if gone:
        _drop_orphan_indexes(store, [kind[1] for key in gone if (kind := parse_object_key(key)) and kind[0] == PACKS])
        raise GcConflictError(
            f"{gone[0]} was deleted by a concurrent gc while this push ran ({len(gone)} object(s) gone); "
            "nothing was committed: push again (it stores what is missing)")
    return CommitCheck(len(records), tuple(sorted(rescued)), written)


def _drop_orphan_indexes(store: ObjectStore, packs: list[str]) -> None:
    """Delete the index of each of ``packs`` that is gone. An index whose pack is gone
    advertises chunks that are not stored: every later push would dedup against it and fail
    its commit check. Indexes can always be rebuilt from their pack's trailer, so removing
    one loses nothing, even if the pack is written again meanwhile. Such an index is left
    by a push that uploaded a pack a sweep was deleting (the same chunks make the same pack
    name): its ``publish`` found the pack still there, its index was created after the
    sweep deleted the old one, then the sweep deleted the pack."""
    for pid in packs:
        if store.exists(index_key(pid)) and not store.exists(pack_key(pid)):
            store.delete(index_key(pid))


# -- gc report --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GcObject:
    key: str
    size: int

    def to_dict(self) -> dict[str, JsonValue]:
        return {"key": self.key, "size": self.size}


@dataclass(frozen=True, slots=True)
class GcRecordInfo:
    key: str
    created_at: datetime
    sweep_after: datetime  # created_at + D
    objects: int
    bytes: int

    def to_dict(self) -> dict[str, JsonValue]:
        return {"key": self.key, "created_at": iso(self.created_at), "sweep_after": iso(self.sweep_after),
                "objects": self.objects, "bytes": self.bytes}


@dataclass(slots=True)
class GcReport:
    """What a ``gc`` run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    grace_seconds: float
    delay_seconds: float
    versions: int = 0
    #: versions the ledger records that are deleted (tombstoned): no roots (docs/retention.md)
    deleted_versions: int = 0
    reachable_manifests: int = 0
    reachable_packs: int = 0
    #: phase 2: condemned at least D ago, still unreachable, not rescued: deleted
    deleted: list[GcObject] = field(default_factory=list)
    #: condemned, but reachable again or rescued by a push: kept
    spared: list[GcObject] = field(default_factory=list)
    swept_records: list[str] = field(default_factory=list)
    #: phase 1: unreachable and older than the grace period: condemned by this run
    condemned: list[GcObject] = field(default_factory=list)
    record: str | None = None  # the condemnation record written (None: nothing, or dry run)
    pending: list[GcRecordInfo] = field(default_factory=list)  # records not yet due
    #: bytes of unreferenced chunks inside packs that reachable versions still use
    repack_packs: int = 0
    repack_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    #: what ``gc --retain`` deleted before collecting, one plan per model (filled in by
    #: the façade from :mod:`casreg.governance.retention`; empty otherwise)
    retention: list[dict[str, JsonValue]] = field(default_factory=list)
    #: index bundles a newer one replaced, older than the grace period: removed (listed
    #: only, with ``dry_run``). The bundle a push would read is always kept.
    superseded_bundles: list[str] = field(default_factory=list)

    @property
    def deleted_bytes(self) -> int:
        return sum(o.size for o in self.deleted)

    @property
    def condemned_bytes(self) -> int:
        return sum(o.size for o in self.condemned)

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "dry_run": self.dry_run, "grace_seconds": self.grace_seconds, "delay_seconds": self.delay_seconds,
            "versions": self.versions, "deleted_versions": self.deleted_versions,
            "reachable_manifests": self.reachable_manifests,
            "reachable_packs": self.reachable_packs,
            "deleted": [o.to_dict() for o in self.deleted], "deleted_count": len(self.deleted),
            "deleted_bytes": self.deleted_bytes,
            "spared": [o.to_dict() for o in self.spared], "swept_records": list(self.swept_records),
            "condemned": [o.to_dict() for o in self.condemned], "condemned_count": len(self.condemned),
            "condemned_bytes": self.condemned_bytes, "record": self.record,
            "pending": [p.to_dict() for p in self.pending],
            "reclaimable_by_repacking": {"packs": self.repack_packs, "bytes": self.repack_bytes},
            "warnings": list(self.warnings), "retention": list(self.retention),
            "superseded_bundles": list(self.superseded_bundles),
        }


# -- gc ---------------------------------------------------------------------------------------
def _delete_order(key: str) -> int:
    """Manifests first (they lead to packs), then indexes (they advertise chunks to
    pushers), then packs: an interrupted sweep never leaves a path to a missing object."""
    kind = parse_object_key(key)
    if kind is None and parse_signature_key(key) is not None:
        return -1  # a deleted version's signature: before its manifest, so none is left naming nothing
    return {MANIFESTS: 0, INDEXES: 1, PACKS: 2}.get(kind[0] if kind else "", 3)


@dataclass(slots=True)
class _Run:
    """One gc run's parameters and what it has done so far."""

    store: ObjectStore
    report: GcReport
    grace: timedelta
    delay: timedelta
    start: datetime
    run_id: str
    dry_run: bool
    threads: int | None
    now: Callable[[], datetime]
    #: this run's sweep announcements by record id, taken back when the sweep ends (or fails)
    announcements: dict[str, str] = field(default_factory=dict)
    deleted_keys: set[str] = field(default_factory=set)

    def withdraw(self, record_id: str) -> None:
        drop_announcement(self.store, self.announcements.pop(record_id, None))


def collect(
    store: ObjectStore,
    *,
    dry_run: bool = False,
    grace: timedelta | float | str = DEFAULT_GRACE,
    delay: timedelta | float | str = DEFAULT_DELAY,
    threads: int | None = None,
    now: Callable[[], datetime] = utcnow,
) -> GcReport:
    """One gc run: sweep every condemnation record written at least ``delay`` ago, then
    condemn what is unreachable and older than ``grace``. See the module docstring."""
    g, d = parse_duration(grace), parse_duration(delay)
    run = _Run(store, GcReport(dry_run, g.total_seconds(), d.total_seconds()), g, d, now(), uuid.uuid4().hex,
               dry_run, threads, now)
    # Leftovers of earlier runs are listed before the records: a rescue can only exist
    # once its record did, so one listed now whose record is gone below is an orphan.
    old_rescues = list(store.list(GC_RESCUED))
    old_sweeps = list(store.list(GC_SWEEPING))
    records = list_records(store)
    due = [r for r in records if r.created_at + d <= run.start]
    pending = [r for r in records if r.created_at + d > run.start]
    for r in pending:
        run.report.pending.append(GcRecordInfo(r.key, r.created_at, r.created_at + d,
                                               len(r.objects) + len(r.temporaries),
                                               sum(o.size for o in r.objects + r.temporaries)))
    try:
        sweeping = _announce_sweeps(run, due)
        s = scan(store, threads=threads)  # at least D after every record being swept
        run.report.versions = len(s.versions)
        run.report.deleted_versions = len(s.deleted)
        run.report.warnings += s.warnings
        run.report.reachable_manifests = len(s.reachable)
        run.report.reachable_packs = len(s.reachable_packs)
        run.report.repack_packs, run.report.repack_bytes = s.repack_packs, s.repack_bytes
        _sweep(run, s, sweeping)
        _mark(run, s, pending)
        _superseded_bundles(run, sorted(s.indexes))
        if not dry_run:
            _tidy(run, records, old_rescues, old_sweeps)
        return run.report
    finally:
        # If the run fails midway, take back its sweep announcements: every deletion it
        # made happened before, so a push checking later finds them by looking (docs/gc.md).
        for record_id in list(run.announcements):
            try:
                run.withdraw(record_id)
            except CasregError:
                pass  # the store is failing: the next gc run finishes this record's sweep


def _announce_sweeps(run: _Run, due: list[Record]) -> list[tuple[Record, set[str]]]:
    """Phase 2 begins: announce the sweep of every due record, then read its rescues and
    confirm the record still exists (in that order: docs/gc.md). Returns the records to
    sweep with the keys rescued from each."""
    sweeping: list[tuple[Record, set[str]]] = []
    for r in due:
        if not run.dry_run:
            run.announcements[r.id] = announce_sweep(run.store, r.id, run.run_id, run.now())
        try:
            rescued = rescued_keys(run.store, r.id)
        except IntegrityError as err:
            run.report.warnings.append(str(err))
            run.withdraw(r.id)
            continue
        current = read_record(run.store, r.key)  # after the rescues
        if current is None:  # another gc swept it meanwhile
            run.withdraw(r.id)
            continue
        sweeping.append((current, rescued))
    return sweeping


def _sweep(run: _Run, s: Reachability, sweeping: list[tuple[Record, set[str]]]) -> None:
    """Phase 2: delete what the records condemned that is still unreachable and was not
    rescued (manifests, then indexes, then packs), and the condemned leftovers; then the
    records, their rescues and this run's announcements."""
    doomed_manifests: set[str] = set()
    for r, rescued in sweeping:
        for o in r.objects:
            kind = parse_object_key(o.key)
            if kind and kind[0] == MANIFESTS and kind[1] not in s.reachable and o.key not in rescued:
                doomed_manifests.add(kind[1])
    protected = set(s.reachable_packs)  # packs that surviving manifests still use
    for hexd, packs in s.leftovers.items():
        if hexd not in doomed_manifests:
            protected |= packs

    to_delete: list[Condemned] = []
    temps: list[Condemned] = []
    for r, spare in sweeping:
        for o in r.objects:
            signed = parse_signature_key(o.key)
            if signed is not None:  # a deleted version's signature goes with its manifest, never before
                hexd = signed[0]
                alive = hexd in s.reachable or (hexd in s.manifests and hexd not in doomed_manifests)
                if alive or o.key in spare or manifest_key(hexd) in spare:
                    run.report.spared.append(GcObject(o.key, o.size))
                else:
                    to_delete.append(o)
                continue
            kind = parse_object_key(o.key)
            if kind is None:
                run.report.warnings.append(f"record {r.key} names {o.key[:80]!r}, which is not an object key; ignored")
                continue
            rescued_unit = o.key in spare or (kind[0] != MANIFESTS and (
                pack_key(kind[1]) in spare or index_key(kind[1]) in spare))
            alive = kind[1] in s.reachable if kind[0] == MANIFESTS else kind[1] in protected
            if alive or rescued_unit:
                run.report.spared.append(GcObject(o.key, o.size))
            else:
                to_delete.append(o)
        temps += r.temporaries

    store, report = run.store, run.report
    for o in sorted(to_delete, key=lambda o: _delete_order(o.key)):
        if o.key in run.deleted_keys:
            continue
        if store.exists(o.key):
            if not run.dry_run:
                store.delete(o.key)
            report.deleted.append(GcObject(o.key, o.size))
        run.deleted_keys.add(o.key)
    if not run.dry_run:  # an index a racing push created between its deletion and its pack's
        _drop_orphan_indexes(store, [kind[1] for o in to_delete
                                     if (kind := parse_object_key(o.key)) is not None and kind[0] == PACKS])
    for t in temps:
        if store.delete_leftover(t.key, dry_run=run.dry_run):
            report.deleted.append(GcObject(t.key, t.size))
    for r, _ in sweeping:
        report.swept_records.append(r.key)
        if not run.dry_run:
            store.delete(r.key)  # the record, then its rescues, then this sweep's announcement
            for key in list(store.list(f"{GC_RESCUED}/{r.id}")):
                store.delete(key)
            run.withdraw(r.id)


def _mark(run: _Run, s: Reachability, pending: list[Record]) -> None:
    """Phase 1: condemn what is unreachable and older than the grace period (objects a
    pending record already names wait for that record's sweep), in one new record."""
    store, g, start = run.store, run.grace, run.start
    pending_keys: set[str] = set()
    pending_temps: set[str] = set()
    for r in pending:
        pending_keys |= r.keys
        pending_temps |= {t.key for t in r.temporaries}
    leftover_protected = set(s.reachable_packs)
    candidates: list[GcObject] = []
    for hexd in sorted(s.leftovers):
        key = s.manifests[hexd]
        if key in run.deleted_keys or key in pending_keys:
            if key in pending_keys:
                leftover_protected |= s.leftovers[hexd]  # still there until its own sweep
            continue
        st = object_stat(store, key)
        if st is None:
            continue
        if st[1] is not None and start - st[1] < g:
            leftover_protected |= s.leftovers[hexd]  # a push may be about to commit it
            continue
        candidates.append(GcObject(key, st[0]))
    for pid in sorted((set(s.packs) | set(s.indexes)) - leftover_protected):
        # A pack with its index, one unit; what this run's sweep deleted of it is no longer
        # part of it (a record can name an index alone, when its pack was gone at marking
        # and a racing push has uploaded it since: the pack is condemned now, not next run).
        unit = [k for k in (s.packs.get(pid), s.indexes.get(pid)) if k is not None and k not in run.deleted_keys]
        if not unit or any(k in pending_keys for k in unit):
            continue
        stats = [(k, st) for k in unit if (st := object_stat(store, k)) is not None]
        if not stats or any(st[1] is not None and start - st[1] < g for _, st in stats):
            continue
        candidates += [GcObject(k, st[0]) for k, st in stats]
    candidates += _condemned_signatures(run, s, {o.key for o in candidates}, pending_keys)
    temporaries = [GcObject(t.name, t.size) for t in store.leftovers()
                   if start - t.modified >= g and t.name not in pending_temps]
    run.report.condemned = candidates + temporaries
    if run.report.condemned and not run.dry_run:
        created = run.now()
        key = write_record(store, created, g.total_seconds(), [Condemned(o.key, o.size) for o in candidates],
                           [Condemned(o.key, o.size, temporary=True) for o in temporaries])
        run.report.record = key
        run.report.pending.append(GcRecordInfo(key, created, created + run.delay, len(run.report.condemned),
                                               run.report.condemned_bytes))


def _condemned_signatures(run: _Run, s: Reachability, condemned: set[str], pending: set[str]) -> list[GcObject]:
    """The signature objects (``signatures/<hex>/...``) of versions that are deleted and
    whose manifest is gone or condemned now, older than the grace period: they go in the
    same record as the manifest, and the sweep deletes them only with it (a version that
    reuses the digest meanwhile keeps them: the sweep recomputes what is reachable, and a
    rescue of the manifest spares them too). A signature of a digest no version of the
    ledger has is left alone (signing writes it only for an existing version)."""
    deleted = {v.hexdigest for v in s.versions if (v.name, v.version) in s.deleted} - s.reachable
    out: list[GcObject] = []
    for hexd in sorted(deleted & set(s.signatures)):
        manifest = s.manifests.get(hexd)
        if manifest is not None and manifest not in condemned and manifest not in pending:
            continue  # the manifest waits (grace period): so does its signature
        for key in sorted(s.signatures[hexd]):
            if key in run.deleted_keys or key in pending:
                continue
            st = object_stat(run.store, key)
            if st is None or (st[1] is not None and run.start - st[1] < run.grace):
                continue
            out.append(GcObject(key, st[0]))
    return out


def _record_id_of(key: str) -> str | None:
    """The record a rescue or sweep announcement belongs to (also for a malformed one,
    by position, so that it is tidied like the others)."""
    parsed = parse_rescue_key(key) or parse_sweeping_key(key)
    if parsed is not None:
        return parsed[0]
    return key.split("/")[2] if key.count("/") >= 3 else None


def _superseded_bundles(run: _Run, indexes: list[str]) -> None:
    """Remove the index bundles other than the one a push would read now (the one holding
    the most of ``indexes``), once older than the grace period: a push whose role may not
    delete leaves the bundle it replaced (docs/security.md). A load that finds its bundle
    gone reads the indexes one by one, so this needs no protocol of its own."""
    from casreg.content.bundles import list_bundles, open_best_bundle
    from casreg.content.packs import index_limit

    keys = list_bundles(run.store)
    if len(keys) < 2:
        return
    best = open_best_bundle(run.store, indexes, index_limit(run.store), listed=keys)
    keep = best[0].key if best is not None else None
    if best is not None:
        best[0].close()
    for key in keys:
        if key == keep:
            continue
        st = object_stat(run.store, key)
        if st is None or (st[1] is not None and run.start - st[1] < run.grace):
            continue  # gone, or young: a concurrent compact or push may have just written it
        if not run.dry_run:
            run.store.delete(key)
        run.report.superseded_bundles.append(key)


def _tidy(run: _Run, records: list[Record], old_rescues: list[str], old_sweeps: list[str]) -> None:
    """Remove what earlier runs left: rescues of swept records, dead sweeps' announcements."""
    store = run.store
    existing = {parsed[0] for k in store.list(GC_CONDEMNED) if (parsed := parse_condemned_key(k)) is not None}
    for key in old_rescues:  # listed before the records: their record is gone for good
        rid = _record_id_of(key)
        if rid is not None and rid not in existing:
            store.delete(key)
    known = {r.id for r in records}
    for key in old_sweeps:  # a live sweep's announcement must stay, so only very old ones
        rid = _record_id_of(key)
        if rid is None or rid in existing or rid in known:
            continue
        st = object_stat(store, key)
        if st is not None and st[1] is not None and run.start - st[1] >= STALE_SWEEP:
            store.delete(key)
