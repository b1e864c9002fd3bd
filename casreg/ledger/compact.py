"""Ledger compaction: merge one-row ledger segments into a few compacted Parquet files.

The segments stay (a version's segment is the allocation of its number and is never
deleted or rewritten); compaction only adds immutable files under ``ledger/compacted/``
and moves one pointer, ``ledger/compacted/HEAD.json``, by compare-and-swap. HEAD lists
the compacted files (with size and BLAKE3) and what they cover: per model the highest
version number N with 1..N all compacted, and, through the ``segment`` column of the
compacted events files, the exact set of event segment keys (events can arrive late, so
no time watermark would do). The reading rule is in :mod:`casreg.ledger.segments` and
docs/FORMAT.md §6.1.

One compaction:

1. read HEAD with its swap token, and the compacted events files it lists (checked
   against their digests; their ``segment`` column is the set of covered events);
2. list the segments; per model take the *contiguous* run of numbers after the covered
   one (a listing may miss a number being created while it runs; coverage never jumps
   over a gap), and every event segment not covered;
3. read those segments and write, per table that changed, ONE new compacted file with
   create-if-absent under a unique name: the new rows plus the rows of the newest
   compacted files it absorbs (a file absorbs the newer ones once they hold as many rows
   as it does, so a table has O(log rows) files and a compaction rewrites amortised
   O(new rows), not the whole ledger; ``full`` merges everything into one file);
4. swap HEAD from the token read in step 1 to one listing the older files it kept, the
   new file, and the new coverage.

If the swap loses (another compaction moved HEAD first), the files of step 3 are
unreferenced: they are deleted and the compaction starts again from the new HEAD. So
HEAD only ever moves from one complete, consistent state to another: rows come only from
segments, each covered segment's rows are in exactly one of the files HEAD lists, and a
segment is covered only once its rows are in one of them. Appends need no coordination
with compaction at all: a segment created meanwhile is simply not covered yet.

After a successful swap, compacted files HEAD no longer lists are deleted once they are
older than a grace period (their names start with their UTC creation time). Only files
of a compaction still between steps 3 and 4 need that protection; readers holding an
older HEAD whose files disappear start again from the newer HEAD, and a reader that
finds a listed file missing or damaged reads the segments instead.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from casreg.env import count_from_env
from casreg.errors import ConflictError, NotFoundError
from casreg.keys import (
    COMPACTED,
    EVENTS,
    HEAD_KEY,
    VERSIONS,
    compacted_key,
    parse_compacted_key,
    parse_version_segment_key,
    version_segment_key,
)
from casreg.ledger.head import CompactedFile, CompactedUnavailable, LedgerHead, read_compacted, read_head
from casreg.ledger.schema import (
    SEGMENT_COLUMN,
    compacted_event_schema,
    event_schema,
    load_compacted,
    parquet_bytes,
    segments_table,
    sort_events,
    sort_versions,
    version_schema,
)
from casreg.ledger.segments import is_event_key, read_many
from casreg.records import JsonValue
from casreg.storage import ObjectStore, Versioned

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["compact", "maybe_compact", "CompactResult", "DEFAULT_THRESHOLD", "DEFAULT_MAX_AGE", "DEFAULT_GRACE",
           "threshold_from_env"]

log = logging.getLogger(__name__)

#: Compact after a push once the pushed model has more uncompacted versions than this
#: (reading one uncompacted segment costs ~2 ms with pyarrow: 64 of them stay well inside
#: the 1 s budget of ``casreg sql`` at 100,000 versions; see docs/benchmarks-ledger.md).
DEFAULT_THRESHOLD = 64
#: ... or once it has any and HEAD is older than this.
DEFAULT_MAX_AGE = timedelta(minutes=15)
THRESHOLD_ENV = "CASREG_COMPACT_THRESHOLD"
#: Unreferenced compacted files younger than this are left alone (a concurrent compaction
#: may be about to reference them).
DEFAULT_GRACE = timedelta(hours=1)
#: Rows per Parquet row group: ``ls NAME`` decodes only the groups holding NAME.
ROW_GROUP_ROWS = 16384


@dataclass(frozen=True, slots=True)
class CompactResult:
    """What one ``compact`` did. ``changed`` is False when HEAD already covered everything."""

    changed: bool
    generation: int  # of the HEAD in force afterwards (0: there is none)
    versions_added: int = 0
    events_added: int = 0
    versions_total: int = 0
    events_total: int = 0
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    attempts: int = 1
    seconds: float = 0.0

    def to_dict(self) -> dict[str, JsonValue]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def threshold_from_env(default: int = DEFAULT_THRESHOLD) -> int:
    """``$CASREG_COMPACT_THRESHOLD`` (0: no automatic compaction), else ``default``."""
    return count_from_env(THRESHOLD_ENV, default, "automatic compaction")


def _file_key(kind: Literal["versions", "events"], now: datetime) -> str:
    return compacted_key(kind, now, uuid.uuid4().hex)


def _stamp_of(key: str) -> datetime | None:
    parsed = parse_compacted_key(key)
    return parsed[1] if parsed is not None else None


def _write(store: ObjectStore, kind: Literal["versions", "events"], table: pa.Table, now: datetime) -> CompactedFile:
    from blake3 import blake3

    data = parquet_bytes(table, row_group_size=ROW_GROUP_ROWS)
    while True:
        key = _file_key(kind, now)
        if store.create(key, data):  # a uuid collision is practically impossible; still never overwrite
            return CompactedFile(key, table.num_rows, len(data), blake3(data).hexdigest())


def _load(store: ObjectStore, files: tuple[CompactedFile, ...], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    parts = [load_compacted(read_compacted(store, f), schema) for f in files]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _check_present(store: ObjectStore, files: tuple[CompactedFile, ...], *, read: bool = False) -> None:
    """Every file exists with the size HEAD records (one cheap call each); ``read``: and
    its bytes match the BLAKE3 HEAD records."""
    for f in files:
        if read:
            read_compacted(store, f)
            continue
        try:
            size = store.size(f.key)
        except NotFoundError:
            raise CompactedUnavailable(f.key, damaged=False) from None
        if size != f.size:
            raise CompactedUnavailable(f.key, damaged=True)


def _garbage(store: ObjectStore, head: LedgerHead, grace: timedelta, now: datetime) -> list[str]:
    """Delete compacted files ``head`` does not list that are older than ``grace``."""
    keep = {f.key for f in head.files} | {HEAD_KEY}
    removed = []
    for key in sorted(store.list(COMPACTED)):
        if key in keep or not key.endswith(".parquet"):
            continue
        stamp = _stamp_of(key)
        if stamp is None or now - stamp < grace:
            continue
        store.delete(key)
        removed.append(key)
    return removed


def _plan(files: tuple[CompactedFile, ...], new_rows: int, *, full: bool, max_files: int) -> int:
    """How many of the newest ``files`` to merge with ``new_rows`` new rows: each file
    absorbs the newer ones once they hold as many rows as it does (so sizes grow
    geometrically, a compaction rewrites O(new rows) amortised, and a table has
    O(log rows) files); everything when ``full`` or when the table would exceed
    ``max_files`` files."""
    if full:
        return len(files)
    if not new_rows:  # nothing new; but an earlier run with a larger max_files may have left too many
        return len(files) if len(files) > max_files else 0
    merge, run = 0, new_rows
    while merge < len(files) and files[-1 - merge].rows <= run:
        run += files[-1 - merge].rows
        merge += 1
    if len(files) - merge + 1 > max_files:
        merge = len(files)
    return merge


def compact(
    store: ObjectStore,
    *,
    full: bool = False,
    grace: timedelta = DEFAULT_GRACE,
    max_attempts: int = 20,
    max_files: int = 16,
    until: Callable[[LedgerHead], bool] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CompactResult:
    """Compact every segment HEAD does not cover yet; safe to run while others push,
    move aliases or compact. New rows go to a new file that also absorbs the smaller
    recent compacted files (see :func:`_plan`); ``full`` merges everything into one file
    per table (re-reading, and so checking, every compacted file). A listed file found
    missing or damaged while HEAD stays the same makes it rebuild from the segments.
    ``until(head)`` returning True for the HEAD in force stops early without
    work (used by the automatic trigger: someone else compacted meanwhile).

    Each attempt runs four phases: read the HEAD in force, list what it does not cover,
    merge and write the new files, swap HEAD. A lost race or a HEAD whose files proved
    unavailable starts the next attempt."""
    started = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - started

    distrusted: str | None = None  # token of a HEAD one of whose files proved missing or damaged
    for attempt in range(1, max_attempts + 1):
        current, head = _head_in_force(store, distrusted)
        if head is not None and until is not None and until(head):
            return CompactResult(False, head.generation, versions_total=_rows(head.versions),
                                 events_total=_rows(head.events), attempts=attempt, seconds=elapsed())
        try:
            work = _uncovered(store, head, full=full, max_files=max_files)
            if work.is_empty(head):
                if head is not None:
                    return CompactResult(False, head.generation, versions_total=_rows(head.versions),
                                         events_total=_rows(head.events),
                                         removed=_garbage(store, head, grace, clock()), attempts=attempt,
                                         seconds=elapsed())
                if current is None:
                    return CompactResult(False, 0, attempts=attempt, seconds=elapsed())
            now = clock()
            new_versions, new_events, written, versions_files, events_files = _merge_and_write(store, work, now)
        except CompactedUnavailable:
            # superseded meanwhile (start from the newer HEAD), or, if HEAD is unchanged
            # on the next attempt, missing or damaged (rebuild)
            distrusted = current.token if current is not None else None
            continue
        new_head = LedgerHead(
            id=uuid.uuid4().hex,
            generation=(head.generation if head else 0) + 1,
            created_at=now.isoformat().replace("+00:00", "Z"),
            covered=work.new_covered,
            versions=versions_files,
            events=events_files,
        )
        if not _swap_head(store, current, new_head, written, attempt):
            continue
        return CompactResult(
            True, new_head.generation, versions_added=new_versions, events_added=new_events,
            versions_total=_rows(versions_files), events_total=_rows(events_files),
            written=[f.key for f in written], removed=_garbage(store, new_head, grace, now), attempts=attempt,
            seconds=elapsed(),
        )
    raise ConflictError(f"ledger compaction lost {max_attempts} races for {HEAD_KEY} in a row "
                        "(others keep compacting); nothing is lost, try again later")


def _head_in_force(store: ObjectStore, distrusted: str | None) -> tuple[Versioned | None, LedgerHead | None]:
    """The stored HEAD and its parsed form; the parsed form is None when there is none, when it
    is unreadable, or when its token is ``distrusted`` (the same HEAD as when one of its files
    failed: not superseded, so missing or damaged): compaction then rebuilds from the segments."""
    current = store.read_versioned(HEAD_KEY)
    if current is None:
        return None, None
    try:
        head = LedgerHead.from_json(current.data)
    except ValueError as err:
        log.warning("casreg: %s is unreadable (%s); rebuilding it from the segments", HEAD_KEY, err)
        return current, None
    if current.token == distrusted:
        log.warning("casreg: a file %s lists is missing or damaged; rebuilding the compacted ledger "
                    "from the segments", HEAD_KEY)
        return current, None
    return current, head


@dataclass(frozen=True)
class _Work:
    """What one attempt compacts: the segments HEAD does not cover, and how many of the newest
    compacted files of each table are merged with them (``merge_*`` of ``old_*``)."""

    version_keys: list[str]
    event_keys: list[str]
    new_covered: dict[str, int]
    old_versions: tuple[CompactedFile, ...]
    old_events: tuple[CompactedFile, ...]
    merge_versions: int
    merge_events: int

    def is_empty(self, head: LedgerHead | None) -> bool:
        """Nothing to write: no new segment and no file to merge."""
        if head is None:
            return not self.version_keys and not self.event_keys
        return not (self.version_keys or self.event_keys or self.merge_versions or self.merge_events)


def _uncovered(store: ObjectStore, head: LedgerHead | None, *, full: bool, max_files: int) -> _Work:
    """List the segments ``head`` does not cover and plan the merge. Raises
    :class:`CompactedUnavailable` when a file ``head`` lists is missing or damaged."""
    base_events = compacted_event_schema().empty_table()
    if head is not None:
        _check_present(store, head.versions, read=full)  # (else their bytes are checked when merged)
        base_events = _load(store, head.events, compacted_event_schema())
    covered = dict(head.covered) if head else {}
    covered_events = set(base_events.column(SEGMENT_COLUMN).to_pylist())

    # Versions: per model, the contiguous run of numbers right after the covered one
    # (a listing may miss a number created while it runs; coverage never skips one).
    numbers: dict[str, set[int]] = defaultdict(set)
    for key in store.list(VERSIONS):
        parsed = parse_version_segment_key(key)
        if parsed is not None:
            numbers[parsed[0]].add(parsed[1])
    version_keys: list[str] = []
    new_covered = dict(covered)
    for name in sorted(numbers):
        n = covered.get(name, 0)
        while n + 1 in numbers[name]:
            n += 1
            version_keys.append(version_segment_key(name, n))
        if n:
            new_covered[name] = n
    # Events: every segment whose key is not in the compacted events' segment column.
    event_keys = sorted(k for k in store.list(EVENTS) if is_event_key(k) and k not in covered_events)

    old_v = head.versions if head else ()
    old_e = head.events if head else ()
    # full: one file per table in the end (nothing to do for a table already in one file)
    merge_v = _plan(old_v, len(version_keys), full=full and (len(old_v) > 1 or bool(version_keys)),
                    max_files=max_files)
    merge_e = _plan(old_e, len(event_keys), full=full and (len(old_e) > 1 or bool(event_keys)),
                    max_files=max_files)
    return _Work(version_keys, event_keys, new_covered, old_v, old_e, merge_v, merge_e)


def _merge_and_write(
    store: ObjectStore, work: _Work, now: datetime,
) -> tuple[int, int, list[CompactedFile], tuple[CompactedFile, ...], tuple[CompactedFile, ...]]:
    """Read the new segments and the files to merge, then write one new file per table that
    changed. Returns (new version rows, new event rows, files written, the versions files and
    the events files of the next HEAD). Every read happens before the first write, so a
    :class:`CompactedUnavailable` leaves nothing behind."""
    import pyarrow as pa

    vschema, eschema = version_schema(), compacted_event_schema()
    new_versions = segments_table(work.version_keys, read_many(store, work.version_keys), vschema)
    new_events = segments_table(work.event_keys, read_many(store, work.event_keys), event_schema(), with_key=True)
    old_v, old_e, merge_v, merge_e = work.old_versions, work.old_events, work.merge_versions, work.merge_events
    merged_v = [_load(store, old_v[len(old_v) - merge_v:], vschema)] if merge_v else []
    merged_e = [_load(store, old_e[len(old_e) - merge_e:], eschema)] if merge_e else []
    written: list[CompactedFile] = []
    versions_files, events_files = old_v, old_e
    if merge_v or new_versions.num_rows:
        table = sort_versions(pa.concat_tables([*merged_v, new_versions]).combine_chunks())
        f = _write(store, "versions", table, now)
        written.append(f)
        versions_files = old_v[:len(old_v) - merge_v] + (f,)
    if merge_e or new_events.num_rows:
        table = sort_events(pa.concat_tables([*merged_e, new_events]).combine_chunks())
        f = _write(store, "events", table, now)
        written.append(f)
        events_files = old_e[:len(old_e) - merge_e] + (f,)
    return new_versions.num_rows, new_events.num_rows, written, versions_files, events_files


def _swap_head(store: ObjectStore, current: Versioned | None, new_head: LedgerHead,
               written: list[CompactedFile], attempt: int) -> bool:
    """Swap HEAD to ``new_head``; False (after deleting ``written``, which nobody else knows)
    when another compaction won the race."""
    try:
        store.swap(HEAD_KEY, new_head.to_json(), current.token if current else None)
    except ConflictError:
        # A lost race, or (on a remote store) a swap that went through but reported a
        # conflict when retried: HEAD tells which.
        in_force = read_head(store)
        if in_force is None or in_force.id != new_head.id:
            for f in written:
                store.delete(f.key)
            log.info("casreg: compaction lost a race for %s (attempt %d); retrying", HEAD_KEY, attempt)
            return False
    return True


def _rows(files: tuple[CompactedFile, ...]) -> int:
    return sum(f.rows for f in files)


def maybe_compact(
    store: ObjectStore,
    name: str,
    number: int,
    threshold: int,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    **options: Any,
) -> CompactResult | None:
    """The automatic trigger, run after ``name:number`` was committed. Compacts when

    - there is no HEAD yet and the ledger holds more than ``threshold`` version segments
      (one listing, of at most about ``threshold`` keys unless compaction was off), or
    - ``name`` has more than ``threshold`` versions HEAD does not cover, or
    - ``name`` has any such version and HEAD is older than ``max_age`` (so models that
      each stay under the threshold are still compacted, at most ``max_age`` late).

    Otherwise it costs one small read. Stops early if a concurrent compaction already
    did the work. ``threshold`` 0 turns it off."""
    if threshold <= 0:
        return None
    head = read_head(store)
    if head is None:
        if sum(1 for k in store.list(VERSIONS) if parse_version_segment_key(k)) <= threshold:
            return None
        return compact(store, clock=clock, **options)
    uncovered = number - head.covered.get(name, 0)
    if uncovered <= 0:
        return None
    if uncovered <= threshold and clock() - _created(head) <= max_age:
        return None
    return compact(store, until=lambda h: number <= h.covered.get(name, 0), clock=clock, **options)


def _created(head: LedgerHead) -> datetime:
    try:
        t = datetime.fromisoformat(head.created_at.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return t if t.tzinfo else t.replace(tzinfo=UTC)
