"""The append-only ledger: one immutable Parquet segment per version and per event, plus
compacted copies of many segments (see :mod:`casreg.ledger.compact`).

Version numbers are allocated by the commit itself: the segment for version N of a model
lives at ``ledger/versions/<name>/<N:010d>.parquet`` and is written with
create-if-absent, so of two pushers that both try N exactly one wins and the other moves
on to N+1; a push that dies before this write holds no number. Segments are never
rewritten or deleted. After the commit a small JSON copy of the record is written to
``refs/<name>/<N:010d>.json`` so that resolving needs neither pyarrow nor duckdb; if a
crash loses that copy, readers fall back to the Parquet segment and restore it.

**Reading rule** (docs/FORMAT.md §6.1). ``ledger/compacted/HEAD.json`` names the current
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

import io
import json
import logging
import re
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from casreg.concurrency import map_concurrently
from casreg.digest import HEX64, Digest
from casreg.errors import ConflictError, IntegrityError, NotFoundError, StorageError
from casreg.keys import (
    COMPACTED,
    EVENTS,
    HEAD_KEY,
    VERSIONS,
    event_segment_key,
    parse_event_segment_key,
    parse_version_segment_key,
    version_copy_key,
    version_segment_key,
)
from casreg.records import AliasEvent, Lineage, Version
from casreg.storage import ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "commit_version",
    "version_numbers",
    "latest_number",
    "read_version",
    "list_versions",
    "append_event",
    "version_schema",
    "event_schema",
    "versions_table",
    "versions_parts",
    "events_table",
    "CompactedFile",
    "LedgerHead",
    "read_head",
]

log = logging.getLogger(__name__)

MAX_NUMBER_ATTEMPTS = 10_000
HEAD_FORMAT = "casreg-ledger-head/1"
#: The extra column of compacted events files: the key of the segment each row came from.
SEGMENT_COLUMN = "segment"

T = TypeVar("T")


def is_event_key(key: str) -> bool:
    """Whether ``key`` is an event segment's (:func:`casreg.keys.event_segment_key`)."""
    return parse_event_segment_key(key) is not None


def _list(store: ObjectStore, prefix: str, after: str | None) -> Iterable[str]:
    """Keys under ``prefix``; only those sorting after ``after`` where the store can list
    from a key on (``list_after``, S3's ``StartAfter``), else all of them."""
    return store.list_after(prefix, after) if after and store.capabilities.list_after else store.list(prefix)


def version_numbers(store: ObjectStore, name: str, *, after: int = 0) -> list[int]:
    """Committed version numbers of ``name`` above ``after``, ascending (one listing, no
    reads; on a store with ``list_after``, a listing of those keys only)."""
    numbers = []
    for key in _list(store, f"{VERSIONS}/{name}", version_segment_key(name, after) if after else None):
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


def read_many(store: ObjectStore, keys: Sequence[str], *, threads: int = 16) -> list[bytes]:
    """``store.read`` of every key, in order; concurrently when there are several (on a
    remote store each read is a round trip)."""
    return map_concurrently(store.read, keys, threads=threads)


# -- schemas -------------------------------------------------------------------------------
def version_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("name", pa.string()), ("version", pa.int64()), ("digest", pa.string()), ("kind", pa.string()),
        ("size", pa.int64()), ("stored_bytes", pa.int64()), ("new_bytes", pa.int64()),
        ("file_count", pa.int64()), ("chunk_count", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")), ("author", pa.string()),
        ("framework", pa.string()), ("description", pa.string()),
        ("metrics", pa.map_(pa.string(), pa.float64())),
        ("params", pa.map_(pa.string(), pa.string())),
        ("tags", pa.map_(pa.string(), pa.string())),
        ("lineage", pa.struct([
            ("git_commit", pa.string()), ("git_dirty", pa.bool_()), ("hostname", pa.string()),
            ("python_version", pa.string()), ("casreg_version", pa.string()), ("parent", pa.string()),
            ("run_id", pa.string()), ("dataset", pa.string()),
        ])),
        ("files", pa.list_(pa.struct([
            ("path", pa.string()), ("type", pa.string()), ("size", pa.int64()), ("digest", pa.string()),
        ]))),
    ])


def event_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("event_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")), ("kind", pa.string()),
        ("name", pa.string()), ("alias", pa.string()),
        ("from_digest", pa.string()), ("to_digest", pa.string()),
        ("from_version", pa.int64()), ("to_version", pa.int64()),
        ("author", pa.string()), ("host", pa.string()), ("reason", pa.string()),
        ("details", pa.string()),  # JSON object; absent from segments written before it existed
    ])


def compacted_event_schema() -> pa.Schema:
    import pyarrow as pa

    return event_schema().append(pa.field(SEGMENT_COLUMN, pa.string()))


def _parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", **options)
    return buf.getvalue()


def _version_row(v: Version, files: list[dict[str, Any]]) -> dict[str, Any]:
    d = v.to_dict()
    d["created_at"] = v.created_at
    for k in ("metrics", "params", "tags"):
        d[k] = list(d[k].items())
    d["files"] = files
    return d


def _project(schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    import pyarrow as pa

    if columns is None:
        return schema
    return pa.schema([schema.field(c) for c in columns])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types; a column added to the format
    later (absent from older files) reads as nulls."""
    import pyarrow as pa

    if table.schema == schema:
        return table
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def _present(pf: Any, schema: pa.Schema) -> list[str]:
    have = set(pf.schema_arrow.names)
    return [n for n in schema.names if n in have]


def _read_segment(data: bytes, schema: pa.Schema) -> pa.Table:
    """One segment's rows, with exactly ``schema``'s columns and types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(pa.BufferReader(data))
    return _conform(pf.read(columns=_present(pf, schema)), schema)


# -- versions --------------------------------------------------------------------------------
def commit_version(store: ObjectStore, record: Version, files: list[dict[str, Any]]) -> Version:
    """Write ``record`` as the next version of its model and return it with its number.

    ``record.version`` is ignored: numbering starts after the latest committed version
    and climbs past any number a concurrent pusher takes first."""
    import dataclasses

    import pyarrow as pa

    schema = version_schema()
    number = (latest_number(store, record.name) or 0) + 1
    for attempt in range(1, MAX_NUMBER_ATTEMPTS + 1):
        rec = dataclasses.replace(record, version=number)
        data = _parquet_bytes(pa.Table.from_pylist([_version_row(rec, files)], schema=schema))
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
    store.create(version_copy_key(rec.name, number), json.dumps(rec.to_dict()).encode())
    return rec


def read_version(store: ObjectStore, name: str, number: int) -> Version:
    """The record of ``name:number``: from its JSON copy, else from the Parquet segment
    (which is the record; the copy is a cache for resolving without pyarrow, rebuilt here
    when it is missing). A copy that does not parse is passed over for the segment; a
    segment that does not parse is an :class:`IntegrityError` naming it."""
    copy = version_copy_key(name, number)
    try:
        return Version.from_dict(json.loads(store.read(copy)))
    except NotFoundError:
        missing = True
    except (ValueError, KeyError, TypeError) as err:
        log.warning("casreg: %s in %s does not parse (%s); reading the ledger segment instead", copy, store.url, err)
        missing = False
    key = version_segment_key(name, number)
    try:
        data = store.read(key)
    except NotFoundError:
        raise NotFoundError(f"{name}:{number} does not exist") from None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        row = pq.read_table(io.BytesIO(data)).to_pylist()[0]
        for k in ("metrics", "params", "tags"):
            row[k] = dict(row[k] or [])
        row.pop("files", None)
        rec = Version.from_dict(row)
    except (ValueError, KeyError, TypeError, IndexError, pa.ArrowException) as err:
        raise IntegrityError(f"ledger segment {key} in {store.url} is corrupt ({_first_line(err)}); "
                             "run casreg verify") from None
    if (rec.name, rec.version) != (name, number):
        raise IntegrityError(f"ledger segment {key} in {store.url} records {rec.ref}, not {name}:{number}")
    if missing:  # best effort: a reader of a read-only registry must not fail for a cache
        try:
            store.create(copy, json.dumps(rec.to_dict()).encode())
        except StorageError:
            pass
    return rec


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


#: What ``Registry.ls`` needs: every column but ``files``.
RECORD_COLUMNS = ("name", "version", "digest", "kind", "size", "stored_bytes", "new_bytes", "file_count",
                  "chunk_count", "created_at", "author", "framework", "description", "metrics", "params",
                  "tags", "lineage")


def versions_from_table(table: pa.Table) -> list[Version]:
    """Arrow rows (with at least :data:`RECORD_COLUMNS`) → :class:`Version` records, equal
    to those :func:`read_version` returns for the same versions. Column by column (maps
    from their flat keys and items, times from integers): about twice as fast as
    ``to_pylist`` row by row, which matters at 100,000 versions."""
    import pyarrow as pa

    def plain(c: str) -> list[Any]:
        return table.column(c).to_pylist()

    def times(c: str) -> list[Any]:
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        us = table.column(c).cast(pa.int64()).to_pylist()
        return [None if x is None else epoch + timedelta(microseconds=x) for x in us]

    def dicts(c: str) -> list[dict[Any, Any]]:
        arr = table.column(c).combine_chunks()
        offsets, keys, items = arr.offsets.to_pylist(), arr.keys.to_pylist(), arr.items.to_pylist()
        valid = arr.is_valid().to_pylist()
        return [dict(zip(keys[offsets[i]:offsets[i + 1]], items[offsets[i]:offsets[i + 1]])) if valid[i] else {}
                for i in range(len(arr))]

    lin = table.column("lineage").combine_chunks()
    names = [f.name for f in lin.type]
    fields = [lin.field(i).to_pylist() for i in range(lin.type.num_fields)]
    parent = names.index("parent")
    for i, p in enumerate(fields[parent]):
        if p is not None:
            fields[parent][i] = Digest(p)
    lineages = [Lineage(**dict(zip(names, vals))) if ok else Lineage()
                for ok, *vals in zip(lin.is_valid().to_pylist(), *fields)]
    rows = zip(
        plain("name"), plain("version"), [Digest(d) for d in plain("digest")], plain("kind"), plain("size"), plain("stored_bytes"),
        plain("new_bytes"), plain("file_count"), plain("chunk_count"), times("created_at"), plain("author"),
        plain("framework"), plain("description"), dicts("metrics"), dicts("params"), dicts("tags"), lineages,
    )
    if tuple(Version.__dataclass_fields__) == RECORD_COLUMNS:  # positional: the fast way
        return [Version(*row) for row in rows]
    return [Version(**dict(zip(RECORD_COLUMNS, row))) for row in rows]


def list_versions(store: ObjectStore, name: str, newest: int | None = None) -> list[Version]:
    """Every version of ``name`` (or its ``newest`` ones), oldest first: the covered ones
    from the compacted files (one read, filtered before any record is built), the others
    from their JSON copies (one small read each, concurrently). pyarrow is imported only
    if the compacted files cover ``name``."""

    def run(head: LedgerHead | None) -> list[Version]:
        covered = head.covered.get(name, 0) if head else 0
        numbers = version_numbers(store, name, after=covered)  # the uncovered ones
        latest = numbers[-1] if numbers else covered
        if newest is not None and newest <= 0:
            return []
        first = 1 if newest is None else max(1, latest - newest + 1)  # numbers are gap-free
        numbers = [n for n in numbers if n >= first]
        out: list[Version] = []
        if covered and first <= covered:
            assert head is not None
            import pyarrow.compute as pc

            table = _read_compacted_versions(store, head, name=name, columns=RECORD_COLUMNS)
            table = table.filter(pc.greater_equal(table["version"], first))
            out = versions_from_table(table)
        rest = [n for n in numbers if n > covered]
        out.extend(map_concurrently(lambda n: read_version(store, name, n), rest))
        out.sort(key=lambda v: v.version)
        return out

    return with_head(store, run)


# -- events ----------------------------------------------------------------------------------
def append_event(store: ObjectStore, event: AliasEvent) -> bool:
    """Record an event; idempotent (the key is derived from the event), so a repair that
    re-appends an event already written is a no-op."""
    import pyarrow as pa

    row = event.to_dict()
    row["time"] = event.time
    row["details"] = json.dumps(event.details, sort_keys=True) if event.details else None
    table = pa.Table.from_pylist([row], schema=event_schema())
    return store.create(event_segment_key(event.name, event.time, event.event_id), _parquet_bytes(table))


# -- the compacted ledger's HEAD -------------------------------------------------------------
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class CompactedFile:
    """One immutable compacted Parquet file, as HEAD lists it."""

    key: str
    rows: int
    size: int
    blake3: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "rows": self.rows, "size": self.size, "blake3": self.blake3}


@dataclass(frozen=True, slots=True)
class LedgerHead:
    """The content of ``ledger/compacted/HEAD.json`` (docs/FORMAT.md §6.1)."""

    id: str  # unique per HEAD written, so a swap token never comes back (no ABA)
    generation: int
    created_at: str
    covered: dict[str, int] = field(default_factory=dict)
    versions: tuple[CompactedFile, ...] = ()
    events: tuple[CompactedFile, ...] = ()

    @property
    def files(self) -> tuple[CompactedFile, ...]:
        return self.versions + self.events

    def to_json(self) -> bytes:
        return json.dumps({
            "format": HEAD_FORMAT, "id": self.id, "generation": self.generation, "created_at": self.created_at,
            "versions": [f.to_dict() for f in self.versions], "events": [f.to_dict() for f in self.events],
            "covered": dict(sorted(self.covered.items())),
        }, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LedgerHead:
        """Parse and check a HEAD; ``ValueError`` if anything is off."""
        from casreg.refs import validate_name

        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"not JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != HEAD_FORMAT:
            raise ValueError(f"format is not {HEAD_FORMAT!r}")
        ident, gen, created = doc.get("id"), doc.get("generation"), doc.get("created_at")
        if not isinstance(ident, str) or not _ID.fullmatch(ident):
            raise ValueError("bad id")
        if not isinstance(gen, int) or isinstance(gen, bool) or gen < 1:
            raise ValueError("bad generation")
        if not isinstance(created, str):
            raise ValueError("bad created_at")
        covered = doc.get("covered")
        if not isinstance(covered, dict):
            raise ValueError("bad covered")
        for name, n in covered.items():
            try:
                validate_name(name)
            except Exception:
                raise ValueError(f"bad model name {name!r} in covered") from None
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"bad covered number for {name!r}")

        def files(kind: str) -> tuple[CompactedFile, ...]:
            items = doc.get(kind)
            if not isinstance(items, list):
                raise ValueError(f"bad {kind} list")
            out = []
            for item in items:
                if not isinstance(item, dict):
                    raise ValueError(f"bad {kind} entry")
                key, rows, size, digest = item.get("key"), item.get("rows"), item.get("size"), item.get("blake3")
                if (not isinstance(key, str) or not key.startswith(f"{COMPACTED}/{kind}/")
                        or not key.endswith(".parquet") or key.count("/") != 3 or "/." in key or "/../" in key):
                    raise ValueError(f"bad {kind} key {key!r}")
                for v in (rows, size):
                    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                        raise ValueError(f"bad {kind} entry for {key}")
                if not isinstance(digest, str) or not HEX64.fullmatch(digest):
                    raise ValueError(f"bad digest for {key}")
                out.append(CompactedFile(key, rows, size, digest))
            return tuple(out)

        return cls(ident, gen, created, dict(covered), files("versions"), files("events"))


def read_head(store: ObjectStore) -> LedgerHead | None:
    """The current HEAD, or ``None`` if there is none (or it is unreadable: then readers
    use the segments alone, which is always correct)."""
    try:
        data = store.read(HEAD_KEY)
    except NotFoundError:
        return None
    try:
        return LedgerHead.from_json(data)
    except ValueError as err:
        log.warning("casreg: ignoring %s in %s (%s); reading the ledger segments instead "
                    "(run casreg compact to rebuild it)", HEAD_KEY, store.url, err)
        return None


class CompactedUnavailable(Exception):
    """A compacted file HEAD lists is missing or does not match its recorded digest."""

    def __init__(self, key: str, damaged: bool) -> None:
        super().__init__(f"{key} is {'damaged' if damaged else 'missing'}")
        self.key = key
        self.damaged = damaged


def read_compacted(store: ObjectStore, f: CompactedFile) -> bytes:
    """The bytes of a compacted file, checked against the size and BLAKE3 HEAD records."""
    from blake3 import blake3

    try:
        data = store.read(f.key)
    except NotFoundError:
        raise CompactedUnavailable(f.key, damaged=False) from None
    if len(data) != f.size or blake3(data).hexdigest() != f.blake3:
        raise CompactedUnavailable(f.key, damaged=True)
    return data


def with_head(store: ObjectStore, run: Callable[[LedgerHead | None], T], *, attempts: int = 5) -> T:
    """``run(head)`` for the current HEAD. If a compacted file it lists has gone, a newer
    HEAD superseded it: start again from that one. If HEAD has not changed, the file is
    missing or damaged for another reason: warn and ``run(None)`` (segments only)."""
    head = read_head(store)
    for _ in range(attempts):
        if head is None:
            return run(None)
        try:
            return run(head)
        except CompactedUnavailable as err:
            newer = read_head(store)
            if newer is not None and newer.id != head.id and not err.damaged:
                head = newer
                continue
            log.warning("casreg: compacted ledger file %s; reading the ledger segments instead "
                        "(run casreg compact --full to rebuild it)", err)
            return run(None)
    return run(None)


def _load_compacted(data: bytes, schema: pa.Schema, name: str | None = None) -> pa.Table:
    """A compacted file's rows with ``schema``'s columns; only the rows of model ``name``
    if given (row groups whose statistics exclude it are not decoded)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(pa.BufferReader(data))
    names = _present(pf, schema)
    if name is None:
        table = pf.read(columns=names)
    else:
        col = pf.schema_arrow.get_field_index("name")
        groups = []
        for i in range(pf.metadata.num_row_groups):
            stats = pf.metadata.row_group(i).column(col).statistics
            if stats is None or not stats.has_min_max or stats.min <= name <= stats.max:
                groups.append(i)
        table = pf.read_row_groups(groups, columns=names) if groups else schema.empty_table()
        table = table.filter(pc.equal(table.column("name"), name))
    return _conform(table, schema)


def _read_compacted_versions(store: ObjectStore, head: LedgerHead, *, name: str | None = None,
                             columns: Sequence[str] | None = None) -> pa.Table:
    import pyarrow as pa

    schema = _project(version_schema(), columns)
    parts = [_load_compacted(read_compacted(store, f), schema, name) for f in head.versions]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _read_compacted_events(store: ObjectStore, head: LedgerHead, name: str | None = None) -> pa.Table:
    import pyarrow as pa

    schema = compacted_event_schema()
    parts = [_load_compacted(read_compacted(store, f), schema, name) for f in head.events]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def segments_table(keys: Sequence[str], blobs: Iterable[bytes], schema: pa.Schema, *,
                   with_key: bool = False) -> pa.Table:
    """Concatenate one-row segments (``with_key``: plus a ``segment`` column)."""
    import pyarrow as pa

    tables = []
    for key, data in zip(keys, blobs):
        t = _read_segment(data, schema)
        if with_key:
            t = t.append_column(SEGMENT_COLUMN, pa.array([key] * t.num_rows, pa.string()))
        tables.append(t)
    if not tables:
        out_schema = schema.append(pa.field(SEGMENT_COLUMN, pa.string())) if with_key else schema
        return out_schema.empty_table()
    return pa.concat_tables(tables)


def sort_versions(table: pa.Table) -> pa.Table:
    return table.sort_by([("name", "ascending"), ("version", "ascending")]) if table.num_rows > 1 else table


def sort_events(table: pa.Table) -> pa.Table:
    return table.sort_by([(SEGMENT_COLUMN, "ascending")]) if table.num_rows > 1 else table


# -- whole tables (for SQL) ------------------------------------------------------------------
def versions_table(store: ObjectStore, *, name: str | None = None,
                   columns: Sequence[str] | None = None) -> pa.Table:
    """Every version record (of model ``name`` only, if given), sorted by (name, version):
    compacted rows plus the segments HEAD does not cover."""
    import pyarrow as pa

    schema = _project(version_schema(), columns)
    if "name" not in schema.names or "version" not in schema.names:
        raise ValueError("columns must include name and version")

    def run(head: LedgerHead | None) -> pa.Table:
        parts = [_read_compacted_versions(store, head, name=name, columns=schema.names)] if head else []
        keys = _uncovered_version_keys(store, head, name)
        parts.append(segments_table(keys, read_many(store, keys), schema))
        return sort_versions(pa.concat_tables(parts))

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
    after = version_segment_key(name, covered[name]) if name and covered.get(name) else None
    for key in _list(store, f"{VERSIONS}/{name}" if name else VERSIONS, after):
        parsed = parse_version_segment_key(key)
        if parsed is not None and parsed[1] > covered.get(parsed[0], 0):
            keys.append(key)
    keys.sort()
    return keys


def events_table(store: ObjectStore, *, with_segment: bool = False, name: str | None = None) -> pa.Table:
    """Every event (of model ``name`` only, if given), sorted by segment key: compacted
    rows plus the event segments HEAD does not cover."""
    import pyarrow as pa

    def run(head: LedgerHead | None) -> pa.Table:
        compacted = _read_compacted_events(store, head, name) if head else compacted_event_schema().empty_table()
        covered = set(compacted.column(SEGMENT_COLUMN).to_pylist())
        prefix = f"{EVENTS}/{name}" if name else EVENTS
        keys = sorted(k for k in store.list(prefix) if is_event_key(k) and k not in covered)
        fresh = segments_table(keys, read_many(store, keys), event_schema(), with_key=True)
        table = sort_events(pa.concat_tables([compacted, fresh]))
        return table if with_segment else table.drop_columns([SEGMENT_COLUMN])

    return with_head(store, run)


def iter_sidecars(store: ObjectStore, name: str) -> Iterator[Version]:
    for n in version_numbers(store, name):
        yield read_version(store, name, n)
