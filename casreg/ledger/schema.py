"""The ledger's tables: Arrow schemas of version and event records, and conversions
between Parquet segments, Arrow tables and records (no store I/O here).

pyarrow is imported inside each function, so importing this module costs nothing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from casreg.digest import Digest
from casreg.errors import IntegrityError
from casreg.records import AliasEvent, Lineage, Version, lineage_field

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LINEAGE_JSON", "RECORD_KEY", "EVENT_KEY", "record_metadata", "record_from_metadata", "event_metadata",
           "event_from_metadata", "check_segment", "segment_error",
           "SEGMENT_COLUMN", "RECORD_COLUMNS", "version_schema", "event_schema", "compacted_event_schema",
           "parquet_bytes", "version_row", "project", "conform", "read_segment", "segments_table",
           "sort_versions", "sort_events", "versions_from_table", "load_compacted", "arrow_reader"]

#: The extra column of compacted events files: the key of the segment each row came from.
SEGMENT_COLUMN = "segment"
#: The footer metadata key of a version segment holding its record as JSON (§6).
RECORD_KEY = "casreg.record"
#: The footer metadata key of an event segment holding its event as JSON (§7).
EVENT_KEY = "casreg.event"


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
            # issue 16 (docs/lineage.md); absent from older files, read as nulls
            # JSON text (objects: docs/lineage.md): one leaf column each keeps one-row segments
            # small and quick to read; the SQL view ``versions`` parses them into structs
            ("hardware", pa.string()),
            ("code", pa.string()),
            ("dependencies", pa.map_(pa.string(), pa.string())),
            ("dependencies_source", pa.string()),
            ("schema", pa.string()),
            ("links", pa.map_(pa.string(), pa.string())),
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


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", **options)
    return buf.getvalue()


def version_row(v: Version, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The Arrow row of a version record (maps as key/item lists, the time as a datetime)."""
    d: dict[str, Any] = dict(v.to_dict())
    d["created_at"] = v.created_at
    for k in ("metrics", "params", "tags"):
        d[k] = list(getattr(v, k).items())
    lineage = dict(d["lineage"])
    for k in ("dependencies", "links"):
        lineage[k] = list(getattr(v.lineage, k).items())
    for k in LINEAGE_JSON:
        if lineage[k] is not None:
            lineage[k] = json.dumps(lineage[k], separators=(",", ":"), ensure_ascii=False)
    d["lineage"] = lineage
    d["files"] = files
    return d


def project(schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    import pyarrow as pa

    if columns is None:
        return schema
    return pa.schema([schema.field(c) for c in columns])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types; a column added to the format
    later (absent from older files) reads as nulls."""
    import pyarrow as pa

    if table.schema == schema:
        return table
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def present(pf: Any, schema: pa.Schema) -> list[str]:
    have = set(pf.schema_arrow.names)
    return [n for n in schema.names if n in have]


def arrow_reader(data: bytes) -> pa.BufferReader:
    """A reader over a copy of ``data`` in memory Arrow owns; every Parquet read of the
    ledger goes through one.

    A reader straight over ``data`` keeps the Python object alive from Arrow's side, and
    whichever thread drops the last reference must take the GIL to release it. When that
    is one of Arrow's worker threads and the interpreter has begun to exit, Python ends the
    thread from inside C++ code that must not be unwound and the process aborts ("terminate
    called without an active exception", exit -6, after all output was written;
    apache/arrow#34314). Memory Arrow owns is freed without the GIL. The copy costs about
    a millisecond for 8 MiB."""
    import pyarrow as pa

    buf = pa.allocate_buffer(len(data))
    memoryview(buf).cast("B")[:] = data
    return pa.BufferReader(buf)


def read_segment(data: bytes, schema: pa.Schema) -> pa.Table:
    """One segment's rows, with exactly ``schema``'s columns and types."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(arrow_reader(data))
    # one small segment: not worth Arrow's threads (several Python threads read at once)
    return conform(pf.read(columns=present(pf, schema), use_threads=False), schema)


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
        values: list[Any] = table.column(c).to_pylist()
        return values

    def times(c: str) -> list[Any]:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
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
    extra = [i for i, n in enumerate(names) if n in _LINEAGE_EXTRAS]
    if extra:  # nested: built by the records' own rule, once per distinct value (versions share most)
        valid = lin.is_valid().to_pylist()
        raw = {j: fields[j] for j in extra}  # as pyarrow gives them: JSON text, (key, item) pairs, None
        having = sorted({i for j in extra for i, value in enumerate(raw[j]) if value and valid[i]})
        for j in extra:
            if names[j] in ("dependencies", "links"):
                fields[j] = [{} for _ in fields[j]]  # maps: filled below where not empty
        built: dict[tuple[str, Any], Any] = {}
        for i in having:
            for j in extra:
                value = raw[j][i]
                if not value:
                    continue
                key = (names[j], value if isinstance(value, str) else tuple(value))
                got = built.get(key, _UNBUILT)
                if got is _UNBUILT:
                    try:
                        got = built[key] = lineage_field(names[j], value)
                    except (ValueError, RecursionError) as err:
                        raise IntegrityError(f"the ledger record of {table.column('name')[i].as_py()}:"
                                             f"{table.column('version')[i].as_py()} has a malformed lineage "
                                             f"({str(err)[:200]}); run casreg verify") from None
                fields[j][i] = dict(got) if isinstance(got, dict) else got  # records never share a dict
    if tuple(names) == tuple(Lineage.__dataclass_fields__):  # positional: the fast way
        lineages = [Lineage(*vals) if ok else Lineage() for ok, *vals in zip(lin.is_valid().to_pylist(), *fields)]
    else:
        lineages = [Lineage(**dict(zip(names, vals))) if ok else Lineage()
                    for ok, *vals in zip(lin.is_valid().to_pylist(), *fields)]
    rows = zip(
        plain("name"), plain("version"), [Digest(d) for d in plain("digest")], plain("kind"), plain("size"),
        plain("stored_bytes"), plain("new_bytes"), plain("file_count"), plain("chunk_count"), times("created_at"),
        plain("author"), plain("framework"), plain("description"), dicts("metrics"), dicts("params"), dicts("tags"),
        lineages,
    )
    if tuple(Version.__dataclass_fields__) == RECORD_COLUMNS:  # positional: the fast way
        return [Version(*row) for row in rows]
    return [Version(**dict(zip(RECORD_COLUMNS, row))) for row in rows]


def load_compacted(data: bytes, schema: pa.Schema, name: str | None = None) -> pa.Table:
    """A compacted file's rows with ``schema``'s columns; only the rows of model ``name``
    if given (row groups whose statistics exclude it are not decoded)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(arrow_reader(data))
    names = present(pf, schema)
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
    return conform(table, schema)


def segments_table(keys: Sequence[str], blobs: Iterable[bytes], schema: pa.Schema, *,
                   with_key: bool = False) -> pa.Table:
    """Concatenate one-row segments (``with_key``: plus a ``segment`` column), each checked
    by :func:`check_segment` against its key: a damaged one is an :class:`IntegrityError`
    naming it."""
    import pyarrow as pa

    tables = []
    for key, data in zip(keys, blobs):
        t = check_segment(key, data, schema)
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


def _canonical(record: Mapping[str, object]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_metadata(v: Version) -> dict[str, str]:
    """The footer metadata a version segment carries: the record as JSON with its BLAKE3,
    so a reader gets the record from the segment itself without pyarrow, and notices a
    damaged copy of it."""
    record = dict(v.to_dict())
    doc = {"record": record, "blake3": blake3(_canonical(record)).hexdigest()}
    return {RECORD_KEY: json.dumps(doc, ensure_ascii=False)}


def record_from_metadata(metadata: dict[str, str]) -> Version | None:
    """The record a segment's footer metadata holds, ``None`` if it holds none (segments
    written before format 2); ``ValueError`` if it is there but damaged or malformed."""
    text = metadata.get(RECORD_KEY)
    if text is None:
        return None
    doc = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("record"), dict) or not isinstance(doc.get("blake3"), str):
        raise ValueError(f"{RECORD_KEY} metadata is malformed")
    if blake3(_canonical(doc["record"])).hexdigest() != doc["blake3"]:
        raise ValueError(f"{RECORD_KEY} metadata does not match its checksum")
    return Version.from_dict(doc["record"])


def event_metadata(event: AliasEvent) -> dict[str, str]:
    """The footer metadata an event segment carries: the event as JSON with its BLAKE3,
    so a reader notices a damaged row (docs/FORMAT.md §7)."""
    record = dict(event.to_dict())
    doc = {"event": record, "blake3": blake3(_canonical(record)).hexdigest()}
    return {EVENT_KEY: json.dumps(doc, ensure_ascii=False)}


def event_from_metadata(metadata: Mapping[str, str]) -> AliasEvent | None:
    """The event an event segment's footer metadata holds, ``None`` if none (segments
    written before it); ``ValueError`` if it is there but damaged or malformed."""
    text = metadata.get(EVENT_KEY)
    if text is None:
        return None
    doc = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), dict) or not isinstance(doc.get("blake3"), str):
        raise ValueError(f"{EVENT_KEY} metadata is malformed")
    if blake3(_canonical(doc["event"])).hexdigest() != doc["blake3"]:
        raise ValueError(f"{EVENT_KEY} metadata does not match its checksum")
    return AliasEvent.from_dict(doc["event"])


#: The lineage fields of issue 16: nested, built by :func:`casreg.records.lineage_extras`.
_LINEAGE_EXTRAS = frozenset({"hardware", "code", "dependencies", "dependencies_source", "schema", "links"})
_UNBUILT = object()
#: Those of them stored as JSON text in the Parquet row (objects in the footer record).
LINEAGE_JSON = ("hardware", "code", "schema")
#: Version columns a record cannot be without.
_REQUIRED_VERSION = ("name", "version", "digest", "kind", "size", "created_at")
#: Event columns an event cannot be without.
_REQUIRED_EVENT = ("event_id", "time", "kind", "name")


def segment_error(key: str, why: BaseException | str) -> IntegrityError:
    """The error for a damaged ledger segment: one line naming it."""
    text = str(why).strip()
    text = (text.splitlines()[0] if text else type(why).__name__)[:200]
    return IntegrityError(f"ledger segment {key} is damaged ({text}); run casreg verify")


def check_segment(key: str, data: bytes, schema: pa.Schema) -> pa.Table:
    """One version or event segment's row, with exactly ``schema``'s columns, checked:
    a Parquet file (magic at both ends) of one row whose required columns are present
    and valid, that names the version or event its key names, and that agrees with the
    record its footer metadata carries (when it carries one). Anything else is an
    :class:`IntegrityError` naming ``key``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from casreg.keys import event_key, parse_event_segment_key, parse_version_segment_key

    is_event = "event_id" in schema.names
    try:
        if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
            raise ValueError("not a Parquet file")
        pf = pq.ParquetFile(arrow_reader(data))
        have = set(pf.schema_arrow.names)
        required = _REQUIRED_EVENT if is_event else _REQUIRED_VERSION
        missing = [c for c in required if c not in have]
        if missing:
            raise ValueError(f"no column {missing[0]!r}")
        if pf.metadata.num_rows != 1:
            raise ValueError(f"{pf.metadata.num_rows} rows, not one")
        full = event_schema() if is_event else version_schema()
        wanted = pa.schema([f for f in full if f.name in schema.names or f.name in
                            (_EVENT_FIELDS if is_event else RECORD_COLUMNS)])
        both = conform(pf.read(columns=present(pf, wanted), use_threads=False), wanted)
        table = both.select(schema.names).cast(schema)
        metadata = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                    for k, v in (pf.metadata.metadata or {}).items()}
        if is_event:
            row = dict(both.select(list(_EVENT_FIELDS)).to_pylist()[0])
            event = AliasEvent.from_dict(row)
            parsed = parse_event_segment_key(key)
            if parsed is not None and event_key(event) != key:
                raise ValueError(f"its row is event {event.event_id} of {event.name} at {event.time.isoformat()}, "
                                 "which is not the event its key names")
            footer = event_from_metadata(metadata)
            if footer is not None and footer != event:
                raise ValueError("its row differs from the event its footer metadata records")
        else:
            rec = versions_from_table(both.select(list(RECORD_COLUMNS)))[0]
            parsed_v = parse_version_segment_key(key)
            if parsed_v is not None and (rec.name, rec.version) != parsed_v:
                raise ValueError(f"its row records {rec.ref}, not {parsed_v[0]}:{parsed_v[1]}")
            footer_v = record_from_metadata(metadata)
            if footer_v is not None and footer_v != rec:
                raise ValueError("its row differs from the record its footer metadata carries")
    except IntegrityError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError, OSError,
            pa.ArrowException) as err:
        raise segment_error(key, err) from None
    return table


_EVENT_FIELDS = ("event_id", "time", "kind", "name", "alias", "from_digest", "to_digest", "from_version",
                 "to_version", "author", "host", "reason", "details")
