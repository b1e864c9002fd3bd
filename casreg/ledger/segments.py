"""The append-only ledger: one immutable Parquet segment per version and per event, plus
compacted copies of many segments (see :mod:`casreg.ledger.compact`).

Version numbers are allocated by the commit itself: the segment for version N of a model
lives at ``ledger/versions/<name>/<N:010d>.parquet`` and is written with
create-if-absent, so of two pushers that both try N exactly one wins and the other moves
on to N+1; a push that dies before this write holds no number. Segments are never
rewritten or deleted. After the commit a small JSON copy of the record is written to
``refs/<name>/<N:010d>.json`` so that resolving needs neither pyarrow nor duckdb; if a
crash loses that copy, readers fall back to the Parquet segment and restore it.

**Reading rule** (docs/FORMAT.md §6.1, :mod:`casreg.ledger.head`). ``ledger/compacted/HEAD.json`` names the current
compacted files and what they cover: for versions, per model the highest number N such
that versions 1..N are all in the compacted versions files (numbers are gap-free, so a
number is enough); for events, the exact set of event segment keys, stored as the
``segment`` column of the compacted events files. A reader reads HEAD once, then the
files it lists (checked against the size and BLAKE3 that HEAD records), then lists the
segment keys and reads only those not covered. Covered segments are never read, and no
row is counted twice: a compacted file holds exactly the rows of the segments HEAD says
it covers. A compacted file that disappears (a newer HEAD superseded it) makes the reader
start again from the newer HEAD; one that is missing or damaged while HEAD still lists it
makes the reader ignore compaction altogether and read every segment (correct, slower).

pyarrow is imported only where Parquet is read or written; HEAD is JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from casreg.concurrency import map_concurrently
from casreg.errors import ConflictError, IntegrityError, NotFoundError, StorageError
from casreg.keys import (
    EVENTS,
    VERSIONS,
    event_segment_key,
    parse_event_segment_key,
    parse_version_segment_key,
    version_copy_key,
    version_segment_key,
)
from casreg.ledger.footer import key_value_metadata
from casreg.ledger.head import (
    LedgerHead,
    read_compacted,
    read_compacted_events,
    read_compacted_versions,
    read_head,
    with_head,
)
from casreg.ledger.schema import (
    RECORD_COLUMNS,
    SEGMENT_COLUMN,
    check_segment,
    compacted_event_schema,
    event_metadata,
    event_schema,
    parquet_bytes,
    project,
    read_segment,
    record_from_metadata,
    record_metadata,
    segments_table,
    sort_events,
    sort_versions,
    version_row,
    version_schema,
    versions_from_table,
)
from casreg.records import AliasEvent, Version
from casreg.redact import redact_url
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "MAX_SEGMENT_BYTES",
    "commit_version",
    "version_numbers",
    "latest_number",
    "read_version",
    "segment_disagreement",
    "list_versions",
    "append_event",
    "is_event_key",
    "read_many",
    "versions_table",
    "versions_parts",
    "events_table",
]

log = logging.getLogger(__name__)

MAX_NUMBER_ATTEMPTS = 10_000
#: A version segment is one row (its file list included): a few KiB, or a few MiB for a
#: directory of 10,000 files. Reads stop here.
MAX_SEGMENT_BYTES = 64 << 20
#: An event segment is one small row; a format-1 ``refs/`` copy one small JSON record.
MAX_EVENT_BYTES = 4 << 20
MAX_COPY_BYTES = 4 << 20


def is_event_key(key: str) -> bool:
    """Whether ``key`` is an event segment's (:func:`casreg.keys.event_segment_key`)."""
    return parse_event_segment_key(key) is not None


def _list(store: ObjectStore, prefix: str, after: str | None) -> Iterable[str]:
    """Keys under ``prefix``; only those sorting after ``after`` where the store can list
    from a key on (``list_after``, S3's ``StartAfter``), else all of them."""
    if after and store.capabilities.list_after:
        return store.list_after(prefix, after)
    from casreg.ledger.cache import cached_list

    return cached_list(store, prefix)


def version_numbers(store: ObjectStore, name: str, *, after: int = 0) -> list[int]:
    """Committed version numbers of ``name`` above ``after``, ascending (one listing, no
    reads; on a store with ``list_after``, a listing of those keys only)."""
    import bisect

    from casreg.ledger.cache import cached_under

    prefix = f"{VERSIONS}/{name}"
    if after and store.capabilities.list_after:
        keys: Iterable[str] = store.list_after(prefix, version_segment_key(name, after))
    else:  # every number, kept while the listing is unchanged (a long list: parse it once)
        def derive() -> list[int]:
            return sorted(p[1] for key in store.list(prefix)
                          if (p := parse_version_segment_key(key)) is not None and p[0] == name)

        numbers = cached_under(store, prefix, "version numbers", derive)
        return numbers[bisect.bisect_right(numbers, after):]
    numbers = []
    for key in keys:
        parsed = parse_version_segment_key(key)
        if parsed is not None and parsed[0] == name and parsed[1] > after:
            numbers.append(parsed[1])
    return sorted(numbers)


def latest_number(store: ObjectStore, name: str) -> int | None:
    """The highest committed number of ``name``. On a store that can list from a key on,
    HEAD's coverage (numbers are gap-free: covered ones exist) saves listing them."""
    after = 0
    if store.capabilities.list_after:
        head = read_head(store)
        after = head.covered.get(name, 0) if head else 0
    numbers = version_numbers(store, name, after=after)
    return numbers[-1] if numbers else (after or None)


def read_bounded(store: ObjectStore, key: str, limit: int, what: str = "ledger segment") -> bytes:
    """The whole object ``key``, read at most ``limit + 1`` bytes: a larger one is damaged
    (an :class:`IntegrityError` naming it), and costs no more memory than ``limit``."""
    data = store.read(key, ByteRange(0, limit + 1))
    if len(data) > limit:
        raise IntegrityError(f"{what} {key} in {store.url} is larger than {limit:,} bytes: damaged; "
                             "run casreg verify")
    return data


def read_many(store: ObjectStore, keys: Sequence[str], *, threads: int = 16,
              limit: int = MAX_SEGMENT_BYTES) -> list[bytes]:
    """Every segment ``keys`` names, whole, in order, each at most ``limit`` bytes
    (:func:`read_bounded`); concurrently when there are several (on a remote store each
    read is a round trip)."""
    return map_concurrently(lambda k: read_bounded(store, k, limit), keys, threads=threads)


# -- versions --------------------------------------------------------------------------------
def commit_version(store: ObjectStore, record: Version, files: list[dict[str, Any]], *,
                   tree: int = 2) -> Version:
    """Write ``record`` as the next version of its model and return it with its number.

    ``record.version`` is ignored: numbering starts after the latest committed version
    and climbs past any number a concurrent pusher takes first. In a registry of format 2
    (``tree=2``) the segment carries the record in its footer metadata too
    (:func:`casreg.ledger.schema.record_metadata`); format 1 writes the segment as older
    versions of casreg did, followed by the ``refs/`` JSON copy its readers resolve with
    (docs/FORMAT.md §6)."""
    import dataclasses

    import pyarrow as pa

    schema = version_schema()
    number = (latest_number(store, record.name) or 0) + 1
    for attempt in range(1, MAX_NUMBER_ATTEMPTS + 1):
        rec = dataclasses.replace(record, version=number)
        table = pa.Table.from_pylist([version_row(rec, files)], schema=schema)
        data = parquet_bytes(table.replace_schema_metadata(record_metadata(rec)) if tree >= 2 else table)
        if tree >= 2:
            _check_reads_back(data, rec)
        key = version_segment_key(rec.name, number)
        if store.create(key, data):
            break
        if not store.exists(key):  # "already there" for a key that is not: never loop on it
            raise StorageError(f"registry {store.url}: creating {key} was refused as existing, but it does not "
                               "exist; the store does not honour create-if-absent, nothing was committed")
        if attempt % 64 == 0:  # a crowd of pushers: jump to the newest number rather than climb one by one
            number = max(number, latest_number(store, record.name) or 0)
        number += 1
    else:
        raise ConflictError(f"could not allocate a version number for {record.name} after {MAX_NUMBER_ATTEMPTS:,} "
                            "attempts (other pushers took every one); nothing was committed, push again")
    if tree < 2:
        store.create(version_copy_key(rec.name, number), json.dumps(rec.to_dict()).encode())
    return rec


def _check_reads_back(data: bytes, rec: Version) -> None:
    """What readers will get from the segment about to be committed must be ``rec``."""
    try:
        back = record_from_metadata(key_value_metadata(data))
    except ValueError as err:
        back, why = None, _first_line(err)
    else:
        why = "it reads back as another record"
    if back != rec:
        raise IntegrityError(f"the ledger segment of {rec.ref} would not read back ({why}); nothing was committed")


def read_version(store: ObjectStore, name: str, number: int) -> Version:
    """The record of ``name:number``, read from its ledger segment (the authority): from
    the copy of the record in the segment's footer metadata, without pyarrow (segments
    of format 2, docs/FORMAT.md §6). For an older segment without one, from the
    ``refs/`` JSON copy (a cache, which ``casreg verify`` checks against the segment),
    else by parsing the segment. Anything that does not parse, or that records another
    version than the one its key names, is an :class:`IntegrityError` naming the key."""
    key = version_segment_key(name, number)
    try:
        data = store.read(key, ByteRange(0, MAX_SEGMENT_BYTES + 1))
    except NotFoundError:
        _missing_segment(store, name, number)
        raise NotFoundError(f"{name}:{number} does not exist") from None
    try:
        if len(data) > MAX_SEGMENT_BYTES:
            raise ValueError(f"larger than {MAX_SEGMENT_BYTES:,} bytes")
        rec = record_from_metadata(key_value_metadata(data))
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(f"ledger segment {key} in {store.url} is corrupt ({_first_line(err)}); "
                             "run casreg verify") from None
    if rec is None:
        rec = _read_old_segment(store, key, data, name, number)
    if (rec.name, rec.version) != (name, number):
        raise IntegrityError(f"ledger segment {key} in {store.url} records {rec.ref}, not {name}:{number}")
    return rec


def _missing_segment(store: ObjectStore, name: str, number: int) -> None:
    """``name:number`` has no segment: if the ledger says it must have one (numbers are
    gap-free, so a higher number proves it was committed; so does HEAD's coverage), its
    segment was removed: an :class:`IntegrityError` naming it. Else it never existed."""
    head = read_head(store)
    higher = head is not None and head.covered.get(name, 0) >= number
    if not higher:
        higher = bool(version_numbers(store, name, after=number))
    if higher:
        raise IntegrityError(f"ledger segment {version_segment_key(name, number)} in {store.url} is missing, "
                             f"but later versions of {name} exist (numbers are gap-free): the ledger is damaged; "
                             "run casreg verify")


def _read_old_segment(store: ObjectStore, key: str, data: bytes, name: str, number: int) -> Version:
    """A segment written before its footer carried the record (format 1): its row, the
    authority, read with pyarrow and checked like any segment. The ``refs/`` copy is a
    cache for older readers, never believed: when it parses it must equal the row (two
    independent copies, so a damaged byte in either is noticed: an :class:`IntegrityError`
    naming both); when it is missing it is written back (best effort); when it does not
    parse the row is used with a warning. A copy that is no regular file or is larger than
    :data:`MAX_COPY_BYTES` is damage (an :class:`IntegrityError` naming it), as for any key."""
    rec = versions_from_table(check_segment_row(key, data))[0]
    copy = version_copy_key(name, number)
    try:
        text = read_bounded(store, copy, MAX_COPY_BYTES, "the version's JSON copy")
    except NotFoundError:
        try:  # best effort: a reader of a read-only registry must not fail for a cache
            store.create(copy, json.dumps(rec.to_dict()).encode())
        except StorageError:
            pass
        return rec
    try:
        cached = Version.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        log.warning("casreg: %s in %s does not parse (%s); using the ledger segment", copy,
                    redact_url(store.url), _first_line(err))
        return rec
    if cached != rec:
        raise IntegrityError(f"ledger segment {key} and its copy {copy} in {store.url} disagree "
                             f"({'; '.join(_differences(rec, cached))}): one of them is damaged; run casreg verify")
    return rec


def _differences(row: Version, copy: Version) -> list[str]:
    a, b = row.to_dict(), copy.to_dict()
    return [f"{k}: segment {str(a.get(k))[:40]!r}, copy {str(b.get(k))[:40]!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)][:3]


def check_segment_row(key: str, data: bytes) -> pa.Table:
    """The one row (record columns) of version segment ``key``, checked
    (:func:`casreg.ledger.schema.check_segment`)."""
    return check_segment(key, data, project(version_schema(), RECORD_COLUMNS))


def segment_disagreement(data: bytes, name: str, number: int) -> str | None:
    """Why the segment of ``name:number`` is not one consistent record of that version:
    its row names another version, or the record in its footer metadata (which
    ``resolve`` reads) differs from its row. ``None`` if all agree (a segment written
    before format 2 has no footer record to compare). ``ValueError`` if it does not
    parse. For ``casreg verify``."""
    import pyarrow as pa

    footer = record_from_metadata(key_value_metadata(data))
    try:
        rows = versions_from_table(read_segment(data, version_schema()))
    except (KeyError, TypeError, IndexError, OSError, pa.ArrowException) as err:  # pyarrow 26: OSError, bad footer
        raise ValueError(_first_line(err)) from None
    if len(rows) != 1:
        return f"the segment holds {len(rows)} rows, not one"
    row = rows[0]
    if (row.name, row.version) != (name, number):
        return f"the segment's row records {row.ref}, not {name}:{number}"
    if footer is None or row == footer:
        return None
    fields = [k for k, v in row.to_dict().items() if footer.to_dict().get(k) != v]
    return (f"the record in its footer (which resolve reads) says {footer.ref} is {footer.digest}; its row says "
            f"{row.ref} is {row.digest} (fields that differ: {', '.join(fields) or 'none'})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def list_versions(store: ObjectStore, name: str, newest: int | None = None, *,
                  upto: int | None = None) -> list[Version]:
    """Every version of ``name`` (or its ``newest`` ones; with ``upto``, the ``newest``
    ones numbered ``upto`` or below: a page), oldest first: the covered ones
    from the compacted files (one read, filtered before any record is built), the others
    from their JSON copies (one small read each, concurrently). pyarrow is imported only
    if the compacted files cover ``name``."""

    def run(head: LedgerHead | None) -> list[Version]:
        covered = head.covered.get(name, 0) if head else 0
        numbers = version_numbers(store, name, after=covered)  # the uncovered ones
        latest = numbers[-1] if numbers else covered
        if upto is not None:
            latest = min(latest, upto)
        if (newest is not None and newest <= 0) or latest <= 0:
            return []
        first = 1 if newest is None else max(1, latest - newest + 1)  # numbers are gap-free
        numbers = [n for n in numbers if first <= n <= latest]
        out: list[Version] = []
        if covered and first <= covered:
            assert head is not None
            import pyarrow.compute as pc

            table = read_compacted_versions(store, head, name=name, columns=RECORD_COLUMNS)
            table = table.filter(pc.and_(pc.greater_equal(table["version"], first),
                                         pc.less_equal(table["version"], latest)))
            out = versions_from_table(table)
        rest = [n for n in numbers if n > covered]
        _check_gap_free(store, name, max(covered, first - 1), numbers)
        out.extend(map_concurrently(lambda n: read_version(store, name, n), rest))
        out.sort(key=lambda v: v.version)
        return out

    return with_head(store, run)


# -- events ----------------------------------------------------------------------------------
def append_event(store: ObjectStore, event: AliasEvent) -> bool:
    """Record an event; idempotent (the key is derived from the event), so a repair that
    re-appends an event already written is a no-op."""
    import pyarrow as pa

    row: dict[str, Any] = dict(event.to_dict())
    row["time"] = event.time
    row["details"] = json.dumps(event.details, sort_keys=True) if event.details else None
    table = pa.Table.from_pylist([row], schema=event_schema()).replace_schema_metadata(event_metadata(event))
    return store.create(event_segment_key(event.name, event.time, event.event_id), parquet_bytes(table))

# -- whole tables (for SQL) ------------------------------------------------------------------
def versions_table(store: ObjectStore, *, name: str | None = None,
                   columns: Sequence[str] | None = None, sort: bool = True) -> pa.Table:
    """Every version record (of model ``name`` only, if given), sorted by (name, version)
    unless ``sort`` is false: compacted rows plus the segments HEAD does not cover."""
    import pyarrow as pa

    schema = project(version_schema(), columns)
    if "name" not in schema.names or "version" not in schema.names:
        raise ValueError("columns must include name and version")

    def run(head: LedgerHead | None) -> pa.Table:
        parts = [read_compacted_versions(store, head, name=name, columns=schema.names)] if head else []
        keys = _uncovered_version_keys(store, head, name)
        parts.append(segments_table(keys, read_many(store, keys), schema))
        return sort_versions(pa.concat_tables(parts)) if sort else pa.concat_tables(parts)

    return with_head(store, run)


def versions_parts(store: ObjectStore) -> tuple[list[bytes], pa.Table]:
    """The same records as :func:`versions_table`, in two parts: the bytes of the
    compacted versions files (checked against HEAD; for an engine that reads Parquet
    itself) and the rows of the segments they do not cover, sorted."""

    def run(head: LedgerHead | None) -> tuple[list[bytes], pa.Table]:
        blobs = [read_compacted(store, f) for f in head.versions] if head else []
        keys = _uncovered_version_keys(store, head, None)
        return blobs, sort_versions(segments_table(keys, read_many(store, keys), version_schema()))

    return with_head(store, run)


def _uncovered_version_keys(store: ObjectStore, head: LedgerHead | None, name: str | None) -> list[str]:
    covered = head.covered if head else {}
    keys = []
    numbers: dict[str, list[int]] = {}
    after = version_segment_key(name, covered[name]) if name and covered.get(name) else None
    for key in _list(store, f"{VERSIONS}/{name}" if name else VERSIONS, after):
        parsed = parse_version_segment_key(key)
        if parsed is not None and parsed[1] > covered.get(parsed[0], 0):
            keys.append(key)
            numbers.setdefault(parsed[0], []).append(parsed[1])
    for model, ns in numbers.items():
        _check_gap_free(store, model, covered.get(model, 0), sorted(ns))
    keys.sort()
    return keys


def _check_gap_free(store: ObjectStore, name: str, covered: int, numbers: list[int]) -> None:
    """Version numbers are gap-free (docs/FORMAT.md §6): the listed numbers above
    ``covered`` (ascending) must run on from it without a hole, or a segment was removed
    (an :class:`IntegrityError` naming it, rather than a silently shorter listing)."""
    expected = covered + 1
    for n in numbers:
        if n > expected:
            raise IntegrityError(f"ledger segment {version_segment_key(name, expected)} in {store.url} is missing, "
                                 f"but {name}:{n} exists (numbers are gap-free): the ledger is damaged; "
                                 "run casreg verify")
        expected = n + 1


def events_table(store: ObjectStore, *, with_segment: bool = False, name: str | None = None,
                 sort: bool = True) -> pa.Table:
    """Every event (of model ``name`` only, if given), sorted by segment key unless
    ``sort`` is false: compacted rows plus the event segments HEAD does not cover."""
    import pyarrow as pa

    from casreg.ledger.cache import cached_under, covered_keys

    def run(head: LedgerHead | None) -> pa.Table:
        compacted = read_compacted_events(store, head, name) if head else compacted_event_schema().empty_table()
        prefix = f"{EVENTS}/{name}" if name else EVENTS

        def uncovered() -> pa.Table:
            covered = covered_keys(head.events if head else None, compacted)
            keys = sorted(k for k in store.list(prefix) if is_event_key(k) and k not in covered)
            return segments_table(keys, read_many(store, keys, limit=MAX_EVENT_BYTES), event_schema(), with_key=True)

        # segments are immutable: what is not covered, read, is kept while the listing stays
        fresh = cached_under(store, prefix, f"events not covered by {head.id if head else '-'}", uncovered)
        table = pa.concat_tables([compacted, fresh])
        table = sort_events(table) if sort else table
        return table if with_segment else table.drop_columns([SEGMENT_COLUMN])

    return with_head(store, run)


def iter_sidecars(store: ObjectStore, name: str) -> Iterator[Version]:
    for n in version_numbers(store, name):
        yield read_version(store, name, n)
