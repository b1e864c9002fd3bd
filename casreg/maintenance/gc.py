"""Garbage collection: reclaim objects no version references, safely while others push.

Versions are never deleted, so what becomes garbage is what interrupted pushes leave
behind: packs (with their indexes) and manifests that no ledger record reaches, and, on a
local disk, temporary files of writes that never completed. ``gc`` removes them in two
phases, so that a push running at the same time never loses an object it relies on
(docs/gc.md gives the protocol and the argument):

1. **mark**: compute what the ledger reaches; write the unreachable objects older than
   the grace period G as an immutable *condemnation record* ``gc/condemned/<time>-<id>.json``.
   Nothing is deleted.
2. **sweep** (a later run, at least D after the record was written): announce the sweep
   (``gc/sweeping/<id>/<run>.json``), read the *rescues* pushes wrote for the record
   (``gc/rescued/<id>/...``), recompute reachability, and delete the condemned objects that
   are still unreachable and not rescued; then delete the record.

The push side is :func:`check_before_commit`, which :meth:`casreg.Registry.push` calls
right before it commits: a version that relies on a condemned object rescues it, or fails
with a retryable :class:`GcConflictError` when a sweep may already be deleting it.

This module also holds what :mod:`casreg.maintenance.verify` shares with gc: reading the ledger's
versions and naming objects by key.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from blake3 import blake3

from casreg.errors import CasregError, ConflictError, IntegrityError, InvalidInputError, NotFoundError
from casreg.content.manifest import HEX64, Manifest, manifest_key
from casreg.content.packs import decode_index, index_key, pack_key
from casreg.records import utcnow
from casreg.storage import ObjectStore

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_DELAY",
    "GcConflictError",
    "GcObject",
    "GcRecordInfo",
    "GcReport",
    "CommitCheck",
    "VersionRef",
    "check_before_commit",
    "collect",
    "ledger_versions",
    "parse_duration",
    "parse_object_key",
]

DEFAULT_GRACE = timedelta(hours=24)
DEFAULT_DELAY = timedelta(hours=1)
#: A sweep announcement whose record is gone and that is older than this belongs to a
#: sweep that died; only then is it removed (a live sweep's announcement must stay).
STALE_SWEEP = timedelta(days=7)

RECORD_FORMAT = "casreg-gc/1"
CONDEMNED = "gc/condemned"
SWEEPING = "gc/sweeping"
RESCUED = "gc/rescued"

_STAMP = "%Y%m%dT%H%M%S%fZ"
_RECORD_NAME = re.compile(r"(\d{8}T\d{12}Z)-([0-9a-f]{32})\.json")
_OBJECT = re.compile(r"(packs|index|manifests)/([0-9a-f]{2})/([0-9a-f]{64})\.(pack|idx|manifest)")
_SUFFIX = {"packs": "pack", "index": "idx", "manifests": "manifest"}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

T = TypeVar("T")
R = TypeVar("R")


class GcConflictError(ConflictError):
    """A push relied on an object a concurrent ``gc`` is deleting or has deleted; nothing
    was committed, and pushing again succeeds (it stores what is missing)."""


# -- small shared helpers ----------------------------------------------------------------------
def parse_duration(text: str | float | int | timedelta) -> timedelta:
    """``"24h"``, ``"90m"``, ``"1h30m"``, ``"2d"``, ``"500ms"``, ``"0"`` or plain seconds."""
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        pos, seconds = 0, 0.0
        while pos < len(s):
            m = _DURATION.match(s, pos)
            if not m or m.end() == pos:
                raise InvalidInputError(f"invalid duration {text!r}: use e.g. 24h, 90m, 1h30m, 2d, 30s or 0")
            seconds += float(m[1]) * _UNITS[m[2]]
            pos = m.end()
            while pos < len(s) and s[pos] == " ":
                pos += 1
        if not s:
            raise InvalidInputError("invalid duration '': use e.g. 24h, 90m, 1h30m, 2d, 30s or 0")
    if not seconds >= 0 or seconds == float("inf"):
        raise InvalidInputError(f"invalid duration {text!r}: it must be a finite, non-negative time")
    return timedelta(seconds=seconds)


def parse_object_key(key: str) -> tuple[str, str] | None:
    """``("packs"|"index"|"manifests", id)`` for a well-formed object key, else ``None``."""
    m = _OBJECT.fullmatch(key)
    if m is None or m[2] != m[3][:2] or _SUFFIX[m[1]] != m[4]:
        return None
    return m[1], m[3]


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``window``
    results pending: memory stays bounded however many items there are."""
    window = window or 2 * workers
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="casreg-gc") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def io_threads(threads: int | None) -> int:
    return threads or min(16, 4 * (os.cpu_count() or 2))


# -- the ledger: which versions exist -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionRef:
    name: str
    version: int
    hexdigest: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


_SEGMENT = re.compile(r"ledger/versions/([^/]+)/(\d+)\.parquet")


def ledger_versions(store: ObjectStore) -> list[VersionRef]:
    """Every version the ledger records, read through :func:`casreg.ledger.segments.versions_table`
    (the same source as SQL, so it stays right when segments are compacted).

    As a guard against a ledger read that silently misses records, every per-version
    segment listed beforehand must be in the table; otherwise this raises, and gc, which
    would treat the missing versions' objects as garbage, does not run."""
    from casreg.ledger.segments import versions_table

    listed: set[tuple[str, int]] = set()
    for key in store.list("ledger/versions"):
        m = _SEGMENT.fullmatch(key)
        if m:
            listed.add((m[1], int(m[2])))
    try:
        table = versions_table(store, columns=["name", "version", "digest"])
    except CasregError:
        raise
    except Exception as err:  # pyarrow refusing a damaged segment
        raise IntegrityError(f"the ledger cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                             "run casreg verify") from None
    out = []
    for row in table.to_pylist():
        digest = row["digest"] or ""
        hexd = digest.removeprefix("blake3:")
        if not digest.startswith("blake3:") or not HEX64.fullmatch(hexd):
            raise IntegrityError(f"the ledger record of {row['name']}:{row['version']} has a malformed digest {digest[:80]!r}")
        out.append(VersionRef(row["name"], int(row["version"]), hexd))
    missing = listed - {(v.name, v.version) for v in out}
    if missing:
        name, number = sorted(missing)[0]
        raise IntegrityError(f"the ledger read missed {len(missing)} listed version(s), e.g. {name}:{number}; "
                             "refusing to compute reachability from it")
    return out


# -- object times -----------------------------------------------------------------------------
def object_stat(store: ObjectStore, key: str) -> tuple[int, datetime | None] | None:
    """``(size, last-modified time)`` of an object, ``None`` if it does not exist. The
    time is ``None`` where the backend keeps none (``memory://``): such objects count as
    older than any grace period (docs/gc.md)."""
    info = store.stat(key)
    return None if info is None else (info.size, info.modified)


def _local_temporaries(store: ObjectStore) -> list[tuple[str, int, datetime]]:
    """Temporary files of interrupted local writes (``.tmp-*`` beside their target): not
    objects, invisible to ``list``, but they hold disk space."""
    from casreg.storage.local import _TMP_PREFIX, LocalStore

    if not isinstance(store, LocalStore) or not store.root.is_dir():
        return []
    out = []
    for dirpath, dirs, files in os.walk(store.root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith(_TMP_PREFIX):
                path = os.path.join(dirpath, f)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                rel = os.path.relpath(path, store.root).replace(os.sep, "/")
                out.append((rel, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)))
    return out


def _delete_temporary(store: ObjectStore, rel: str, *, dry_run: bool = False) -> bool:
    from casreg.storage.local import _TMP_PREFIX, LocalStore

    if not isinstance(store, LocalStore):
        return False
    parts = rel.split("/")
    if ".." in parts or not parts[-1].startswith(_TMP_PREFIX) or rel.startswith("/"):
        return False  # a damaged record must not make gc delete anything else
    path = store.root / rel
    if dry_run:
        return path.is_file()
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# -- records ----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Record:
    id: str
    key: str
    created_at: datetime
    objects: list[dict[str, Any]]  # {"key": ..., "size": ...}
    temporaries: list[dict[str, Any]]  # {"path": ..., "size": ...}

    @property
    def keys(self) -> set[str]:
        return {o["key"] for o in self.objects}


def _record_key(created_at: datetime, rid: str) -> str:
    return f"{CONDEMNED}/{created_at.astimezone(timezone.utc).strftime(_STAMP)}-{rid}.json"


def _record_time(key: str) -> tuple[datetime, str] | None:
    m = _RECORD_NAME.fullmatch(key.rsplit("/", 1)[-1])
    if m is None:
        return None
    return datetime.strptime(m[1], _STAMP).replace(tzinfo=timezone.utc), m[1] + "-" + m[2]


def _read_record(store: ObjectStore, key: str) -> _Record | None:
    """A condemnation record, or ``None`` if it is gone or not one of ours. Pushes and
    sweeps use this same reader, so a record one of them cannot read, the other ignores too."""
    named = _record_time(key)
    if named is None:
        return None
    try:
        doc = json.loads(store.read(key))
        if doc.get("format") != RECORD_FORMAT:
            return None
        objects = [{"key": str(o["key"]), "size": int(o.get("size") or 0)} for o in doc.get("objects", [])]
        temps = [{"path": str(t["path"]), "size": int(t.get("size") or 0)} for t in doc.get("temporaries", [])]
    except NotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return _Record(named[1], key, named[0], objects, temps)


def _list_records(store: ObjectStore) -> list[_Record]:
    records = []
    for key in sorted(store.list(CONDEMNED)):
        rec = _read_record(store, key)
        if rec is not None:
            records.append(rec)
    return records


def _rescued_keys(store: ObjectStore, rid: str) -> set[str]:
    keys: set[str] = set()
    for key in store.list(f"{RESCUED}/{rid}"):
        try:
            doc = json.loads(store.read(key))
            keys.update(str(k) for k in doc.get("keys", []))
        except NotFoundError:
            continue
        except (ValueError, TypeError, AttributeError):
            # an unreadable rescue might have named anything: spare the whole record
            raise IntegrityError(f"rescue {key} is unreadable; not sweeping record {rid}") from None
    return keys


# -- the push side ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CommitCheck:
    """What :func:`check_before_commit` found."""

    records: int  # live condemnation records read
    rescued: tuple[str, ...]  # condemned objects this version relies on, rescued from their sweep
    manifest_written: bool  # the manifest had been swept since the push wrote it, and was rewritten


def check_before_commit(store: ObjectStore, manifest: Manifest, *, threads: int | None = None) -> CommitCheck:
    """Run by a push after its manifest is stored and right before its ledger commit.

    1. Read the live condemnation records.
    2. Read the manifest stored under this version's digest (the one readers will get,
       which may predate this push), re-creating it if a sweep removed it meanwhile.
    3. If the version relies on condemned objects (the manifest, its packs, their
       indexes), rescue them: write ``gc/rescued/<record>/<id>.json``, then make sure no
       sweep of that record has been announced; if one has, fail (retryable).
    4. Check that every pack it relies on still exists (a sweep that finished while this
       push ran may have deleted one it learned about from an index).

    The commit must follow within much less than the gc delay D (docs/gc.md)."""
    digest = manifest.hexdigest
    mkey = manifest_key(digest)
    records = _list_records(store)  # (1) before anything else is checked

    written = False
    try:  # (2)
        data = store.read(mkey)
    except NotFoundError:
        data = manifest.to_bytes()
        written = store.create(mkey, data)
        if not written:
            data = store.read(mkey)
    stored = Manifest.from_bytes(data, expected=manifest.digest, where=mkey)
    packs = sorted({c.pack for e in stored.entries for c in e.chunks})
    used = {mkey} | {pack_key(p) for p in packs} | {index_key(p) for p in packs}

    rescued: set[str] = set()
    hits = [(rec, sorted(used & rec.keys)) for rec in records]
    hits = [(rec, keys) for rec, keys in hits if keys]
    for rec, keys in hits:  # (3) announce first...
        doc = {"format": RECORD_FORMAT, "record": rec.id, "digest": "blake3:" + digest,
               "time": _iso(utcnow()), "keys": keys}
        store.create(f"{RESCUED}/{rec.id}/{uuid.uuid4().hex}.json", json.dumps(doc).encode())
        rescued.update(keys)
    for rec, keys in hits:  # ...then look for a sweep that could have missed the announcement
        if next(iter(store.list(f"{SWEEPING}/{rec.id}")), None) is not None:
            raise GcConflictError(
                f"a concurrent gc is sweeping {keys[0]}, which this version relies on; nothing was committed: "
                "push again (it stores what is missing)")

    # (4) after the records were read and rescues announced
    needed = [mkey] + [pack_key(p) for p in packs]
    gone = [k for k, ok in zip(needed, bounded_map(store.exists, needed, io_threads(threads))) if not ok]
    if gone:
        for key in gone:
            kind = parse_object_key(key)
            if kind and kind[0] == "packs" and store.exists(index_key(kind[1])):
                # An index whose pack is gone advertises chunks that are not stored: every
                # later push would dedup against it and fail here. Indexes can always be
                # rebuilt from their pack's trailer, so removing it loses nothing.
                store.delete(index_key(kind[1]))
        raise GcConflictError(
            f"{gone[0]} was deleted by a concurrent gc while this push ran ({len(gone)} object(s) gone); "
            "nothing was committed: push again (it stores what is missing)")
    return CommitCheck(len(records), tuple(sorted(rescued)), written)


# -- reachability -------------------------------------------------------------------------------
@dataclass(slots=True)
class _PackTable:
    """A pack's chunk offsets and stored sizes (ascending), and which ones a reachable
    manifest uses: ~13 bytes per stored chunk."""

    offsets: array  # type: ignore[type-arg]
    sizes: array  # type: ignore[type-arg]
    used: bytearray | None = None

    def mark(self, offset: int) -> None:
        i = bisect_left(self.offsets, offset)
        if i < len(self.offsets) and self.offsets[i] == offset:
            if self.used is None:
                self.used = bytearray(len(self.offsets))
            self.used[i] = 1

    def unused_bytes(self) -> int:
        if self.used is None:
            return sum(self.sizes)
        return sum(s for s, u in zip(self.sizes, self.used) if not u)


@dataclass(slots=True)
class _Scan:
    packs: dict[str, str] = field(default_factory=dict)  # pack id -> key
    indexes: dict[str, str] = field(default_factory=dict)  # pack id -> index key
    manifests: dict[str, str] = field(default_factory=dict)  # hex -> key
    versions: list[VersionRef] = field(default_factory=list)
    reachable: set[str] = field(default_factory=set)  # manifest hexes the ledger reaches
    reachable_packs: set[str] = field(default_factory=set)
    leftovers: dict[str, frozenset[str]] = field(default_factory=dict)  # unreachable manifest -> its packs
    repack_packs: int = 0
    repack_bytes: int = 0


def _read_index_table(store: ObjectStore, pack_id: str, key: str) -> _PackTable | None:
    try:
        data = store.read(key)
        if blake3(data).hexdigest() != pack_id:
            return None
        slots = decode_index(data, key)
    except (NotFoundError, IntegrityError):
        return None
    slots.sort(key=lambda s: s.offset)
    return _PackTable(array("Q", (s.offset for s in slots)), array("Q", (s.stored_size for s in slots)))


def _read_manifest(store: ObjectStore, hexd: str) -> Manifest | CasregError:
    key = manifest_key(hexd)
    try:
        return Manifest.from_bytes(store.read(key), expected=bytes.fromhex(hexd), where=key)
    except NotFoundError:
        return NotFoundError(f"object {key} is missing")
    except CasregError as err:
        return err


def scan(store: ObjectStore, *, threads: int | None = None, repack: bool = True) -> _Scan:
    """List every object, read the ledger, and follow every version to its manifest and
    packs. Listing comes first, so an object written later is never taken for garbage
    for want of the version that references it. Raises if a reachable manifest is
    missing or corrupt: its packs are then unknown, and nothing could be deleted safely."""
    s = _Scan()
    for prefix, target in (("packs", s.packs), ("index", s.indexes), ("manifests", s.manifests)):
        for key in store.list(prefix):
            parsed = parse_object_key(key)
            if parsed is not None and parsed[0] == prefix:
                target[parsed[1]] = key
    s.versions = ledger_versions(store)
    s.reachable = {v.hexdigest for v in s.versions}
    nthreads = io_threads(threads)

    tables: dict[str, _PackTable] = {}
    if repack:
        ids = sorted(s.indexes)
        for pid, table in zip(ids, bounded_map(lambda p: _read_index_table(store, p, s.indexes[p]), ids, nthreads)):
            if table is not None:
                tables[pid] = table

    by_version: dict[str, str] = {}
    for v in s.versions:
        by_version.setdefault(v.hexdigest, v.ref)
    order = sorted(s.reachable)
    for hexd, m in zip(order, bounded_map(lambda h: _read_manifest(store, h), order, nthreads)):
        if isinstance(m, CasregError):
            raise IntegrityError(f"cannot compute what is reachable: {m} (needed by {by_version[hexd]}); "
                                 "run casreg verify") from None
        for e in m.entries:
            for c in e.chunks:
                s.reachable_packs.add(c.pack)
                t = tables.get(c.pack)
                if t is not None:
                    t.mark(c.offset)
    order = sorted(set(s.manifests) - s.reachable)
    for hexd, m in zip(order, bounded_map(lambda h: _read_manifest(store, h), order, nthreads)):
        # an unreadable leftover cannot be used by any push (they verify it): it protects nothing
        s.leftovers[hexd] = frozenset() if isinstance(m, CasregError) else frozenset(
            c.pack for e in m.entries for c in e.chunks)
    for pid in s.reachable_packs:
        t = tables.get(pid)
        if t is not None and t.used is not None:
            unused = t.unused_bytes()
            if unused:
                s.repack_packs += 1
                s.repack_bytes += unused
    return s


# -- gc report --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GcObject:
    key: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size}


@dataclass(frozen=True, slots=True)
class GcRecordInfo:
    key: str
    created_at: datetime
    sweep_after: datetime  # created_at + D
    objects: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "created_at": _iso(self.created_at), "sweep_after": _iso(self.sweep_after),
                "objects": self.objects, "bytes": self.bytes}


@dataclass(slots=True)
class GcReport:
    """What a ``gc`` run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    grace_seconds: float
    delay_seconds: float
    versions: int = 0
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

    @property
    def deleted_bytes(self) -> int:
        return sum(o.size for o in self.deleted)

    @property
    def condemned_bytes(self) -> int:
        return sum(o.size for o in self.condemned)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "grace_seconds": self.grace_seconds, "delay_seconds": self.delay_seconds,
            "versions": self.versions, "reachable_manifests": self.reachable_manifests,
            "reachable_packs": self.reachable_packs,
            "deleted": [o.to_dict() for o in self.deleted], "deleted_count": len(self.deleted),
            "deleted_bytes": self.deleted_bytes,
            "spared": [o.to_dict() for o in self.spared], "swept_records": list(self.swept_records),
            "condemned": [o.to_dict() for o in self.condemned], "condemned_count": len(self.condemned),
            "condemned_bytes": self.condemned_bytes, "record": self.record,
            "pending": [p.to_dict() for p in self.pending],
            "reclaimable_by_repacking": {"packs": self.repack_packs, "bytes": self.repack_bytes},
            "warnings": list(self.warnings),
        }


# -- gc ---------------------------------------------------------------------------------------
def _delete_order(key: str) -> int:
    """Manifests first (they lead to packs), then indexes (they advertise chunks to
    pushers), then packs: an interrupted sweep never leaves a path to a missing object."""
    kind = parse_object_key(key)
    return {"manifests": 0, "index": 1, "packs": 2}.get(kind[0] if kind else "", 3)


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
    report = GcReport(dry_run, g.total_seconds(), d.total_seconds())
    run_id = uuid.uuid4().hex
    start = now()

    # Leftovers of earlier runs are listed before the records: a rescue can only exist
    # once its record did, so one listed now whose record is gone below is an orphan.
    old_rescues = list(store.list(RESCUED))
    old_sweeps = list(store.list(SWEEPING))
    records = _list_records(store)
    due = [r for r in records if r.created_at + d <= start]
    due_ids = {r.id for r in due}
    for r in records:
        if r.id not in due_ids:
            report.pending.append(GcRecordInfo(r.key, r.created_at, r.created_at + d,
                                               len(r.objects) + len(r.temporaries),
                                               sum(o["size"] for o in r.objects + r.temporaries)))

    flags: dict[str, str] = {}
    try:
        return _run(store, report, records, due, flags, old_rescues, old_sweeps, g, d, start, run_id,
                    dry_run, threads, now)
    finally:
        # If the run fails midway, take back its sweep announcements: every deletion it
        # made happened before, so a push checking later finds them by looking (docs/gc.md).
        for flag in flags.values():
            try:
                _drop_flag(store, flag)
            except CasregError:
                pass  # the store is failing: the next gc run finishes this record's sweep


def _run(store: ObjectStore, report: GcReport, records: list[_Record], due: list[_Record], flags: dict[str, str],
         old_rescues: list[str], old_sweeps: list[str], g: timedelta, d: timedelta, start: datetime, run_id: str,
         dry_run: bool, threads: int | None, now: Callable[[], datetime]) -> GcReport:
    # -- phase 2, sweep: announce, read rescues, confirm the record still exists --------------
    rescued: dict[str, set[str]] = {}
    sweeping: list[_Record] = []
    for r in due:
        flag = f"{SWEEPING}/{r.id}/{run_id}.json"
        if not dry_run:
            store.create(flag, json.dumps({"format": RECORD_FORMAT, "time": _iso(now())}).encode())
            flags[r.id] = flag
        try:
            rescued[r.id] = _rescued_keys(store, r.id)
        except IntegrityError as err:
            report.warnings.append(str(err))
            _drop_flag(store, flags.pop(r.id, None))
            continue
        current = _read_record(store, r.key)  # after the rescues: see docs/gc.md
        if current is None:  # another gc swept it meanwhile
            _drop_flag(store, flags.pop(r.id, None))
            continue
        sweeping.append(current)

    s = scan(store, threads=threads)  # at least D after every record being swept
    report.versions = len(s.versions)
    report.reachable_manifests = len(s.reachable)
    report.reachable_packs = len(s.reachable_packs)
    report.repack_packs, report.repack_bytes = s.repack_packs, s.repack_bytes

    doomed_manifests: set[str] = set()
    for r in sweeping:
        for o in r.objects:
            kind = parse_object_key(o["key"])
            if kind and kind[0] == "manifests" and kind[1] not in s.reachable and o["key"] not in rescued[r.id]:
                doomed_manifests.add(kind[1])
    protected = set(s.reachable_packs)  # packs that surviving manifests still use
    for hexd, packs in s.leftovers.items():
        if hexd not in doomed_manifests:
            protected |= packs

    to_delete: list[tuple[str, int]] = []
    temps: list[tuple[str, int]] = []
    for r in sweeping:
        spare = rescued[r.id]
        for o in r.objects:
            key, size = o["key"], o["size"]
            kind = parse_object_key(key)
            if kind is None:
                report.warnings.append(f"record {r.key} names {key[:80]!r}, which is not an object key; ignored")
                continue
            rescued_unit = key in spare or (kind[0] != "manifests" and (
                pack_key(kind[1]) in spare or index_key(kind[1]) in spare))
            alive = kind[1] in s.reachable if kind[0] == "manifests" else kind[1] in protected
            if alive or rescued_unit:
                report.spared.append(GcObject(key, size))
            else:
                to_delete.append((key, size))
        temps += [(t["path"], t["size"]) for t in r.temporaries]

    to_delete.sort(key=lambda ks: _delete_order(ks[0]))
    deleted_keys: set[str] = set()
    for key, size in to_delete:
        if key in deleted_keys:
            continue
        if dry_run:
            if store.exists(key):
                report.deleted.append(GcObject(key, size))
        elif store.exists(key):
            store.delete(key)
            report.deleted.append(GcObject(key, size))
        deleted_keys.add(key)
    for path, size in temps:
        if _delete_temporary(store, path, dry_run=dry_run):
            report.deleted.append(GcObject(path, size))
    for r in sweeping:
        report.swept_records.append(r.key)
        if not dry_run:
            store.delete(r.key)  # the record, then its rescues, then this sweep's announcement
            for key in list(store.list(f"{RESCUED}/{r.id}")):
                store.delete(key)
            _drop_flag(store, flags.pop(r.id, None))

    # -- phase 1, mark ------------------------------------------------------------------------
    pending_keys: set[str] = set()
    pending_temps: set[str] = set()
    due_ids = {r.id for r in due}
    for r in records:
        if r.id not in due_ids:
            pending_keys |= r.keys
            pending_temps |= {t["path"] for t in r.temporaries}
    leftover_protected = set(s.reachable_packs)
    candidates: list[GcObject] = []
    for hexd in sorted(s.leftovers):
        key = s.manifests[hexd]
        if key in deleted_keys or key in pending_keys:
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
        unit = [k for k in (s.packs.get(pid), s.indexes.get(pid)) if k is not None]
        if any(k in deleted_keys or k in pending_keys for k in unit):
            continue
        stats = [(k, object_stat(store, k)) for k in unit]
        stats = [(k, st) for k, st in stats if st is not None]
        if not stats or any(st[1] is not None and start - st[1] < g for _, st in stats):
            continue
        candidates += [GcObject(k, st[0]) for k, st in stats]
    temporaries = [GcObject(rel, size) for rel, size, mtime in _local_temporaries(store)
                   if start - mtime >= g and rel not in pending_temps]
    report.condemned = candidates + temporaries

    if report.condemned and not dry_run:
        created = now()
        rid = f"{created.strftime(_STAMP)}-{uuid.uuid4().hex}"
        key = _record_key(created, rid.split("-", 1)[1])
        doc = {"format": RECORD_FORMAT, "id": rid, "created_at": _iso(created), "grace_seconds": g.total_seconds(),
               "objects": [o.to_dict() for o in candidates],
               "temporaries": [{"path": o.key, "size": o.size} for o in temporaries]}
        store.create(key, json.dumps(doc, indent=0).encode())
        report.record = key
        report.pending.append(GcRecordInfo(key, created, created + d, len(report.condemned), report.condemned_bytes))

    # -- tidy what earlier runs left: rescues of swept records, dead sweeps' announcements ----
    if not dry_run:
        existing = {named[1] for k in store.list(CONDEMNED) if (named := _record_time(k)) is not None}
        for key in old_rescues:  # listed before the records: their record is gone for good
            rid = key.split("/")[2] if key.count("/") >= 3 else None
            if rid is not None and rid not in existing:
                store.delete(key)
        for key in old_sweeps:  # a live sweep's announcement must stay, so only very old ones
            rid = key.split("/")[2] if key.count("/") >= 3 else None
            if rid is None or rid in existing or any(r.id == rid for r in records):
                continue
            st = object_stat(store, key)
            if st is not None and st[1] is not None and start - st[1] >= STALE_SWEEP:
                store.delete(key)
    return report


def _drop_flag(store: ObjectStore, flag: str | None) -> None:
    if flag is not None:
        store.delete(flag)
