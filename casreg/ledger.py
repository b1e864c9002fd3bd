"""The append-only ledger: one immutable Parquet segment per version and per event.

Version numbers are allocated by the commit itself: the segment for version N of a model
lives at ``ledger/versions/<name>/<N:010d>.parquet`` and is written with
create-if-absent, so of two pushers that both try N exactly one wins and the other moves
on to N+1; a push that dies before this write holds no number. Segments are never
rewritten or deleted. After the commit a small JSON copy of the record is written to
``refs/<name>/<N:010d>.json`` so that resolving needs neither pyarrow nor duckdb; if a
crash loses that copy, readers fall back to the Parquet segment and restore it.

pyarrow is imported only where Parquet is read or written.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from casreg.errors import NotFoundError
from casreg.records import AliasEvent, Version
from casreg.storage import ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "commit_version",
    "version_numbers",
    "latest_number",
    "read_version",
    "append_event",
    "event_key",
    "version_schema",
    "event_schema",
    "versions_table",
    "events_table",
]

_WIDTH = 10


def segment_key(name: str, number: int) -> str:
    return f"ledger/versions/{name}/{number:0{_WIDTH}d}.parquet"


def sidecar_key(name: str, number: int) -> str:
    return f"refs/{name}/{number:0{_WIDTH}d}.json"


def event_key(event: AliasEvent) -> str:
    stamp = event.time.strftime("%Y%m%dT%H%M%S%fZ")
    return f"ledger/events/{event.name}/{stamp}-{event.event_id}.parquet"


def version_numbers(store: ObjectStore, name: str) -> list[int]:
    """Committed version numbers of ``name``, ascending (one listing, no reads)."""
    numbers = []
    for key in store.list(f"ledger/versions/{name}"):
        stem = key.rsplit("/", 1)[-1]
        if stem.endswith(".parquet") and stem[:-8].isdigit():
            numbers.append(int(stem[:-8]))
    return sorted(numbers)


def latest_number(store: ObjectStore, name: str) -> int | None:
    numbers = version_numbers(store, name)
    return numbers[-1] if numbers else None


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
    ])


def _parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _version_row(v: Version, files: list[dict[str, Any]]) -> dict[str, Any]:
    d = v.to_dict()
    d["created_at"] = v.created_at
    for k in ("metrics", "params", "tags"):
        d[k] = list(d[k].items())
    d["files"] = files
    return d


# -- versions --------------------------------------------------------------------------------
def commit_version(store: ObjectStore, record: Version, files: list[dict[str, Any]]) -> Version:
    """Write ``record`` as the next version of its model and return it with its number.

    ``record.version`` is ignored: numbering starts after the latest committed version
    and climbs past any number a concurrent pusher takes first."""
    import dataclasses

    import pyarrow as pa

    schema = version_schema()
    number = (latest_number(store, record.name) or 0) + 1
    while True:
        rec = dataclasses.replace(record, version=number)
        data = _parquet_bytes(pa.Table.from_pylist([_version_row(rec, files)], schema=schema))
        if store.create(segment_key(rec.name, number), data):
            break
        number += 1
    store.create(sidecar_key(rec.name, number), json.dumps(rec.to_dict()).encode())
    return rec


def read_version(store: ObjectStore, name: str, number: int) -> Version:
    """The record of ``name:number``: from its JSON copy, else from the Parquet segment."""
    try:
        return Version.from_dict(json.loads(store.read(sidecar_key(name, number))))
    except NotFoundError:
        pass
    try:
        data = store.read(segment_key(name, number))
    except NotFoundError:
        raise NotFoundError(f"{name}:{number} does not exist") from None
    import pyarrow.parquet as pq

    row = pq.read_table(io.BytesIO(data)).to_pylist()[0]
    for k in ("metrics", "params", "tags"):
        row[k] = dict(row[k] or [])
    row.pop("files", None)
    rec = Version.from_dict(row)
    store.create(sidecar_key(name, number), json.dumps(rec.to_dict()).encode())
    return rec


# -- events ----------------------------------------------------------------------------------
def append_event(store: ObjectStore, event: AliasEvent) -> bool:
    """Record an event; idempotent (the key is derived from the event), so a repair that
    re-appends an event already written is a no-op."""
    import pyarrow as pa

    row = event.to_dict()
    row["time"] = event.time
    table = pa.Table.from_pylist([row], schema=event_schema())
    return store.create(event_key(event), _parquet_bytes(table))


# -- whole tables (for SQL) ------------------------------------------------------------------
def _read_segments(store: ObjectStore, prefix: str, schema: pa.Schema) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [
        pq.read_table(io.BytesIO(store.read(key))).cast(schema)
        for key in sorted(store.list(prefix))
        if key.endswith(".parquet")
    ]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def versions_table(store: ObjectStore) -> pa.Table:
    return _read_segments(store, "ledger/versions", version_schema())


def events_table(store: ObjectStore) -> pa.Table:
    return _read_segments(store, "ledger/events", event_schema())


def iter_sidecars(store: ObjectStore, name: str) -> Iterator[Version]:
    for n in version_numbers(store, name):
        yield read_version(store, name, n)
