"""SQL over the ledger with DuckDB.

Views (documented in docs/FORMAT.md):

- ``versions``: one row per version (maps ``metrics``, ``params``, ``tags``; struct
  ``lineage``, its ``hardware``, ``code`` and ``schema`` parsed from the JSON text the
  Parquet rows hold into structs; list ``files``).
- ``files``: one row per file of every version.
- ``events``: every push and recorded event (``kind``: ``push``, ``alias.set``,
  ``alias.remove``, ``promote``, ``rollback``, ``archive``, ``approve``, ``reject``,
  ``policy.set``, ``hook.failed``, ``delete``; ``details`` is a JSON object).
- ``aliases``: where each alias points now (with its ``annotations`` map).
- ``approvals``: approvals and rejections (``stage``, ``decision``, ``comment``).
- ``alias_history``: intervals: which version each alias pointed at from ``from_time`` to
  ``to_time`` (NULL while current).
- ``lineage``: parent → child, from each push's ``--parent``.
- ``dependencies``, ``links``, ``tensors``: one row per recorded dependency
  (``package``, ``requirement``, ``source``), link (``link``, ``url``) and safetensors
  tensor (``file``, ``tensor``, ``dtype``, ``shape``) of every version (docs/lineage.md).
- ``version_state``: one row per version with its lifecycle state: ``archived``
  (BOOLEAN; ``archived_at``, ``archived_by``), ``aliases`` (LIST of VARCHAR, the
  aliases at it now) and ``deleted`` (BOOLEAN; ``deleted_at``, ``deleted_by``,
  ``deleted_reason``: from its ``delete`` event, docs/retention.md). A view of its own,
  not columns of ``versions``: it reads the events and every alias pointer, which a
  query on ``versions`` alone never does.

Ledger files are read through the store (compacted files plus the segments they do not
cover, see :mod:`casreg.ledger.segments`), so the same views work on every backend, and registered
in DuckDB as Arrow objects. :func:`query` reads only the tables its SQL names: a query on
``versions`` reads no events and no alias pointers.

The SQL cannot touch the machine: every connection is opened with DuckDB's external access
off (no file or URL is read or written, no database attached from a file, no extension
installed or loaded, no Python variable scanned, nothing spilled to a temporary directory)
and its configuration is locked once the views exist, so a query cannot turn any of that
back on. The views read only what casreg handed DuckDB from the store, in memory.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import re
import threading
from collections.abc import Callable, Collection, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from casreg.errors import InvalidInputError, NotFoundError
from casreg.ledger.pointers import list_pointers
from casreg.ledger.schema import arrow_reader, event_schema, version_schema
from casreg.ledger.segments import events_table, versions_parts, versions_table
from casreg.records import JsonValue
from casreg.storage import ObjectStore

if TYPE_CHECKING:
    import duckdb

__all__ = ["Snapshot", "SqlResult", "connect", "consistent_reads", "query", "query_result", "snapshot",
           "snapshot_cached", "snapshot_query"]

_VIEWS = """
CREATE VIEW versions AS SELECT * REPLACE (struct_update(lineage,
    hardware := from_json(lineage.hardware, '{"gpu_count": "BIGINT", "gpu_type": "VARCHAR", "cpu_model": "VARCHAR",
      "cpu_count": "BIGINT", "memory_bytes": "BIGINT", "cuda_visible_devices": "VARCHAR", "source": "VARCHAR",
      "text": "VARCHAR"}'),
    code := from_json(lineage.code, '{"commit": "VARCHAR", "branch": "VARCHAR", "dirty": "BOOLEAN",
      "remote": "VARCHAR", "source": "VARCHAR"}'),
    schema := from_json(lineage.schema, '{"digest": "VARCHAR", "tensor_count": "BIGINT", "truncated": "BOOLEAN",
      "tensors": [{"file": "VARCHAR", "name": "VARCHAR", "dtype": "VARCHAR", "shape": ["BIGINT"]}],
      "signature": "VARCHAR"}')) AS lineage) FROM _versions;
CREATE VIEW files AS
  SELECT name, version, digest AS version_digest, f.path AS path, f.type AS type,
         f.size AS size, f.digest AS digest
  FROM (SELECT name, version, digest, unnest(files) AS f FROM _versions);
CREATE VIEW events AS
  SELECT 'push-' || name || '-' || version AS event_id, created_at AS time, 'push' AS kind,
         name, NULL::VARCHAR AS alias, lineage.parent AS from_digest, digest AS to_digest,
         NULL::BIGINT AS from_version, version AS to_version, author,
         lineage.hostname AS host, description AS reason, NULL::VARCHAR AS details
  FROM _versions
  UNION ALL
  SELECT event_id, time, kind, name, alias, from_digest, to_digest, from_version,
         to_version, author, host, reason, details FROM _events;
CREATE VIEW aliases AS SELECT * FROM _aliases;
CREATE VIEW approvals AS
  SELECT time, name, to_version AS version, to_digest AS digest, alias AS stage,
         kind AS decision, author, host, reason AS comment, event_id
  FROM _events WHERE kind IN ('approve', 'reject');
CREATE VIEW alias_history AS
  SELECT name, alias, version, digest, from_time, to_time, kind, author, reason, event_id
  FROM (
    SELECT name, alias, to_version AS version, to_digest AS digest, time AS from_time,
           LEAD(time) OVER (PARTITION BY name, alias ORDER BY time, event_id) AS to_time,
           kind, author, reason, event_id
    FROM _events WHERE kind IN ('alias.set', 'alias.remove', 'promote', 'rollback')
  ) WHERE version IS NOT NULL;
CREATE VIEW version_state AS
  SELECT v.name, v.version, v.digest,
         coalesce(s.kind = 'archive', false) AS archived,
         CASE WHEN s.kind = 'archive' THEN s.time END AS archived_at,
         CASE WHEN s.kind = 'archive' THEN s.author END AS archived_by,
         coalesce(a.aliases, []::VARCHAR[]) AS aliases,
         d.time IS NOT NULL AS deleted, d.time AS deleted_at, d.author AS deleted_by, d.reason AS deleted_reason
  FROM _versions v
  LEFT JOIN (
    SELECT name, to_version AS version, kind, time, author,
           row_number() OVER (PARTITION BY name, to_version ORDER BY time DESC, event_id DESC) AS rn
    FROM _events
    WHERE to_version IS NOT NULL AND kind IN ('archive', 'alias.set', 'alias.remove', 'promote', 'rollback')
  ) s ON s.name = v.name AND s.version = v.version AND s.rn = 1
  LEFT JOIN (SELECT name, version, list(alias ORDER BY alias) AS aliases FROM _aliases GROUP BY name, version) a
    ON a.name = v.name AND a.version = v.version
  LEFT JOIN (
    SELECT name, to_version AS version, time, author, reason,
           row_number() OVER (PARTITION BY name, to_version ORDER BY time, event_id) AS rn
    FROM _events WHERE kind = 'delete' AND to_version IS NOT NULL
  ) d ON d.name = v.name AND d.version = v.version AND d.rn = 1;
CREATE VIEW dependencies AS
  SELECT name, version, digest, lineage.dependencies_source AS source, d.key AS package, d.value AS requirement
  FROM (SELECT name, version, digest, lineage, unnest(map_entries(lineage.dependencies)) AS d FROM _versions
        WHERE lineage.dependencies IS NOT NULL);
CREATE VIEW links AS
  SELECT name, version, digest, l.key AS link, l.value AS url
  FROM (SELECT name, version, digest, unnest(map_entries(lineage.links)) AS l FROM _versions
        WHERE lineage.links IS NOT NULL);
CREATE VIEW tensors AS
  SELECT name, version, digest, t.file AS file, t.name AS tensor, t.dtype AS dtype, t.shape AS shape
  FROM (SELECT name, version, digest, unnest(lineage.schema.tensors) AS t FROM versions
        WHERE lineage.schema IS NOT NULL);
CREATE VIEW lineage AS
  SELECT p.name AS parent_name, p.version AS parent_version, c.lineage.parent AS parent_digest,
         c.name AS child_name, c.version AS child_version, c.digest AS child_digest,
         c.created_at AS created_at
  FROM _versions c
  LEFT JOIN (SELECT name, version, digest,
                    row_number() OVER (PARTITION BY digest ORDER BY created_at, name, version) AS rn
             FROM _versions) p
    ON p.digest = c.lineage.parent AND p.rn = 1
  WHERE c.lineage.parent IS NOT NULL;
CREATE VIEW event_signatures AS SELECT event_id, fingerprint, key FROM _event_signatures;
"""


#: The underlying tables, and the views that read each.
_SOURCES = {
    "_versions": ("versions", "files", "events", "lineage", "version_state", "dependencies", "links", "tensors"),
    "_events": ("events", "approvals", "alias_history", "version_state"),
    "_aliases": ("aliases", "version_state"),
    "_event_signatures": ("event_signatures",),
}
_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def tables_for(sql: str) -> set[str]:
    """The underlying tables a query can reach: those behind every view it names (a view
    name anywhere in the text counts, even in a string or comment: reading too much is
    harmless, too little is not)."""
    words = set(_WORD.findall(sql.lower()))
    return {table for table, views in _SOURCES.items() if words & set(views)}


def _aliases_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("name", pa.string()), ("alias", pa.string()), ("digest", pa.string()), ("version", pa.int64()),
        ("updated_at", pa.timestamp("us", tz="UTC")), ("author", pa.string()), ("reason", pa.string()),
        ("annotations", pa.map_(pa.string(), pa.string())),
    ])


def _event_signatures_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("event_id", pa.string()), ("fingerprint", pa.string()), ("key", pa.string())])


def _event_signatures_table(store: ObjectStore) -> Any:
    """Every event signature object, named by its key (one listing; no object is read)."""
    import pyarrow as pa

    from casreg.keys import EVENT_SIGNATURES, parse_event_signature_key

    rows = [{"event_id": parsed[0], "fingerprint": parsed[1], "key": key}
            for key in store.list(f"{EVENT_SIGNATURES}/") if (parsed := parse_event_signature_key(key)) is not None]
    return pa.Table.from_pylist(rows, schema=_event_signatures_schema())


def _aliases_table(store: ObjectStore) -> Any:
    """Every alias currently set (the pointers, read concurrently: one small read each),
    each confirmed against the ledger (one more small read): a pointer that lies about
    its version fails the query naming its key, as every other reader of it does."""
    import pyarrow as pa

    rows = [{"name": p.name, "alias": p.alias, "digest": p.digest, "version": p.version,
             "updated_at": p.event.time, "author": p.event.author, "reason": p.event.reason,
             "annotations": list(p.annotations.items())} for p in list_pointers(store, confirm=True)]
    return pa.Table.from_pylist(rows, schema=_aliases_schema())


#: The settings every connection is opened with (DuckDB 2.x accepts each at connect time);
#: ``lock_configuration`` follows once the views exist.
_LOCKED_DOWN: dict[str, str | bool] = {
    # no file system or network: read_text/read_csv/read_parquet/glob of a path or URL,
    # COPY TO/FROM, EXPORT/IMPORT DATABASE, ATTACH of a file, INSTALL and LOAD of an
    # extension file all fail with a Permission Error (and so do Python replacement scans)
    "enable_external_access": False,
    # no extension fetched or loaded behind a query's back (built-in ones still work)
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    # CREATE PERSISTENT SECRET would write under ~/.duckdb
    "allow_persistent_secrets": False,
    # a bare name never reads a Python variable of the calling frames
    "python_enable_replacements": False,
    # no spilling to ./.tmp: a query larger than memory fails instead of writing files
    "temp_directory": "",
}


def connect(store: ObjectStore, tables: Collection[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the ledger views over a snapshot of ``store``,
    every table handed over as Arrow. ``tables`` limits which of ``_versions``,
    ``_events``, ``_aliases`` are read (the others are empty); default all.

    The connection cannot reach the file system, the network or extensions, and its
    configuration is locked (see the module doc): statements that try fail with a
    ``duckdb.Error``."""
    return _connect(store, tables, lazy=False)


def _compacted_dataset(blobs: list[bytes]) -> Any:
    """The compacted versions files as one pyarrow dataset over their bytes (in memory), in
    the current versions schema (a column older files lack reads as nulls). DuckDB scans it
    as an Arrow source, pushing projections and filters down, so only the columns and row
    groups a query needs are decoded. DuckDB's own Parquet reader is not used: it reads
    file-like objects through a file system of the connection, which external access off
    refuses, and allowing those paths would let a query overwrite them."""
    import pyarrow.dataset as ds

    fmt = ds.ParquetFileFormat()
    fragments = [fmt.make_fragment(arrow_reader(b)) for b in blobs]
    return ds.FileSystemDataset(fragments, schema=version_schema(), format=fmt)


def _connect(store: ObjectStore, tables: Collection[str] | None, *, lazy: bool) -> duckdb.DuckDBPyConnection:
    """``lazy``: the compacted versions files are handed over undecoded (see
    :func:`_compacted_dataset`) instead of as one decoded Arrow table. Either way the
    connection is opened locked down (:data:`_LOCKED_DOWN`) and its configuration is
    locked before it is returned."""
    import duckdb

    wanted = set(_SOURCES) if tables is None else set(tables)
    con = duckdb.connect(":memory:", config=dict(_LOCKED_DOWN))
    try:
        con.execute("SET TimeZone = 'UTC'")  # not accepted at connect time; before the lock
        if "_versions" not in wanted:
            con.register("_versions", version_schema().empty_table())
        elif not lazy:
            con.register("_versions", versions_table(store))
        else:
            blobs, rest = versions_parts(store)
            con.register("_versions_rest", rest)
            if blobs:
                con.register("_versions_compacted", _compacted_dataset(blobs))
                con.execute("CREATE VIEW _versions AS SELECT * FROM _versions_compacted "
                            "UNION ALL BY NAME SELECT * FROM _versions_rest")
            else:
                con.execute("CREATE VIEW _versions AS SELECT * FROM _versions_rest")
        con.register("_events", events_table(store) if "_events" in wanted else event_schema().empty_table())
        con.register("_aliases", _aliases_table(store) if "_aliases" in wanted else _aliases_schema().empty_table())
        con.register("_event_signatures", _event_signatures_table(store) if "_event_signatures" in wanted
                     else _event_signatures_schema().empty_table())
        con.execute(_VIEWS)
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _plain(value: Any, typ: Any) -> Any:
    """Arrow values → JSON-friendly Python values (maps become dicts, times ISO strings)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_map(typ):
        return {str(k): _plain(v, typ.item_type) for k, v in value}
    if pa.types.is_struct(typ):
        return {f.name: _plain(value.get(f.name), f.type) for f in typ}
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return [_plain(v, typ.value_type) for v in value]
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):  # DuckDB's SUM of integers is a DECIMAL/HUGEINT
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


@dataclass(frozen=True, slots=True)
class SqlResult:
    """What a query returned: its column names, in order (also when it returned no rows),
    and its rows as dicts of plain values."""

    columns: list[str]
    rows: list[dict[str, JsonValue]]


def query(store: ObjectStore, sql: str) -> list[dict[str, Any]]:
    """Run ``sql`` against the views; rows as dicts of plain values (those of the last
    statement, if ``sql`` holds several). The connection is locked down (see the module
    doc): any statement DuckDB refuses, a file, URL, extension or setting included, fails
    the whole query with a one-line :class:`InvalidInputError` ``SQL error: ...``."""
    return query_result(store, sql).rows


def query_result(store: ObjectStore, sql: str) -> SqlResult:
    """:func:`query`, with the result's column names (a statement that returns no
    relation, ``CREATE``, ``SET``..., has none)."""
    import duckdb

    con = _connect(store, tables_for(sql), lazy=True)
    try:
        relation: duckdb.DuckDBPyRelation | None = con.sql(sql)  # None for CREATE, SET, ...
        if relation is None:
            return SqlResult([], [])
        table = relation.to_arrow_table()
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidInputError(f"SQL error: {first}") from None
    finally:
        con.close()
    try:
        columns = [(f.name, f.type, table.column(i).to_pylist()) for i, f in enumerate(table.schema)]
    except (OverflowError, ValueError) as err:
        raise InvalidInputError(
            f"SQL result holds a value Python cannot represent ({err}); cast it to VARCHAR") from None
    return SqlResult([f.name for f in table.schema], [
        {name: _plain(values[i], typ) for name, typ, values in columns}
        for i in range(table.num_rows)
    ])


T = TypeVar("T")


class Snapshot:
    """One locked-down DuckDB connection over the ledger of one store, for casreg's own
    queries (:func:`snapshot_query`), reused while the ledger is unchanged.

    Before each query it takes the ledger's fingerprint: HEAD's bytes and the store's
    listing tokens of the version and event segments, the compacted files and the alias
    pointers (:meth:`~casreg.storage.ObjectStore.listing_token`; taken *before* anything
    is read, so data loaded after a change is at least as new as the fingerprint says).
    While it matches the one the loaded tables were read under, they are reused; else,
    or where the store cannot give tokens, the tables a query needs are read again (the
    decoded compacted files come from :mod:`casreg.ledger.cache`) and registered in
    place of the old ones. The connection is made as :func:`connect` makes them (external
    access off, configuration locked) and never runs anything but one ``SELECT``
    statement at a time, under a lock: no query can create, drop or replace anything in
    it, change a setting, or see another query's state. SQL a user typed never runs here
    (``casreg sql`` uses :func:`query`, a fresh connection each time)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.con: duckdb.DuckDBPyConnection | None = None
        self.fingerprint: Hashable | None = None
        self.loaded: set[str] = set()
        self.memo: dict[Hashable, object] = {}

    def _fingerprint(self) -> Hashable | None:
        pins = getattr(_pins, "by_snapshot", None)
        if pins is not None and id(self) in pins:  # inside consistent_reads(): one look per block
            if pins[id(self)] is _UNSET:
                pins[id(self)] = self._look()
            return cast(Hashable | None, pins[id(self)])
        return self._look()

    def _look(self) -> Hashable | None:
        from casreg.keys import COMPACTED, EVENTS, HEAD_KEY, POINTERS, VERSIONS
        from casreg.ledger.head import MAX_HEAD_BYTES
        from casreg.storage import ByteRange

        tokens = tuple(self.store.listing_token(p) for p in (VERSIONS, EVENTS, POINTERS, COMPACTED))
        if any(t is None for t in tokens):
            return None
        try:  # bounded as read_head reads it (a larger one is ignored there, and differs here)
            head = self.store.read(HEAD_KEY, ByteRange(0, MAX_HEAD_BYTES + 1))
        except NotFoundError:
            head = b""
        return (head, tokens)

    def _open(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        con = duckdb.connect(":memory:", config=dict(_LOCKED_DOWN))
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("_versions", version_schema().empty_table())
            con.register("_events", event_schema().empty_table())
            con.register("_aliases", _aliases_schema().empty_table())
            con.register("_event_signatures", _event_signatures_schema().empty_table())
            con.execute(_VIEWS)
            con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        return con

    def _load(self, table: str) -> None:
        assert self.con is not None
        if table == "_versions":  # SQL needs no order: not sorting saves seconds at 1M rows
            data = versions_table(self.store, sort=False)
        elif table == "_events":
            data = events_table(self.store, sort=False)
        elif table == "_event_signatures":  # not in the fingerprint: listed again for every query
            self.con.register(table, _event_signatures_table(self.store))
            return
        else:
            data = _aliases_table(self.store)
        self.con.register(table, data)
        self.loaded.add(table)

    def cached(self, key: Hashable, make: Callable[[Hashable | None], T], store: ObjectStore | None = None) -> T:
        """``make(fingerprint)``, kept while the ledger's fingerprint stays the one it was
        made under (a value derived only from the snapshot's tables, as the rows of a
        deterministic query are); ``make`` passes the fingerprint on to :meth:`run`.
        Where the store gives no fingerprint, made every time."""
        if store is not None:
            self.store = store
        fingerprint = self._fingerprint()
        with self.lock:
            if fingerprint is not None and fingerprint == self.fingerprint and key in self.memo:
                return cast(T, self.memo[key])
        value = make(fingerprint)
        with self.lock:
            if fingerprint is not None and fingerprint == self.fingerprint:
                self.memo[key] = value
                while len(self.memo) > MAX_MEMO:
                    self.memo.pop(next(iter(self.memo)))
        return value

    def run(self, sql: str, store: ObjectStore | None = None, *, fingerprint: Hashable | None = None) -> Any:
        """The Arrow result of ``sql``, one ``SELECT`` statement (anything else is refused
        with :class:`InvalidInputError` before it runs); read through ``store`` (another
        object over the same registry, say a wrapper) if given. ``fingerprint``: the
        ledger's, taken by the caller just now (else it is taken here)."""
        import duckdb

        if fingerprint is None:
            fingerprint = self._fingerprint()
        with self.lock:
            if store is not None:
                self.store = store
            if self.con is None:
                self.con = self._open()
            try:
                statements = self.con.extract_statements(sql)
            except duckdb.Error as err:  # it parses: a syntax error is the caller's input
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise InvalidInputError(f"SQL error: {first}") from None
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise InvalidInputError("a ledger snapshot runs one SELECT statement only")
            if fingerprint is None or fingerprint != self.fingerprint:
                for table in self.loaded:
                    self.con.register(table, {"_versions": version_schema, "_events": event_schema,
                                              "_aliases": _aliases_schema}[table]().empty_table())
                self.loaded = set()
                self.memo = {}
                self.fingerprint = fingerprint
            for table in sorted(tables_for(sql) - self.loaded):
                self._load(table)
            try:
                return self.con.sql(sql).to_arrow_table()
            except duckdb.Error as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise InvalidInputError(f"SQL error: {first}") from None


_snapshots: dict[tuple[str, str], Snapshot] = {}
_pins = threading.local()
_UNSET = object()
#: Results a snapshot keeps (per ledger state; cleared when it changes; the oldest go
#: first): a model's sorted history is the largest (~20 MB at 100,000 entries).
MAX_MEMO = 64
_snapshots_lock = threading.Lock()


def snapshot(store: ObjectStore) -> Snapshot:
    """The :class:`Snapshot` of ``store``'s ledger (one per store URL in this process)."""
    key = (type(store).__name__, store.url)
    with _snapshots_lock:
        snap = _snapshots.get(key)
        if snap is None:
            snap = _snapshots[key] = Snapshot(store)
        return snap


@contextmanager
def consistent_reads(store: ObjectStore) -> Iterator[None]:
    """Within the block, on this thread, :func:`snapshot_query` and
    :func:`snapshot_cached` look once (at their first call) at whether ``store``'s ledger
    changed, instead of at every call: the reads of one request then cost one look, and
    all see the same state, none older than the block. For reads: a change made inside
    the block need not show in the block's later snapshot reads."""
    snap = snapshot(store)
    pins = getattr(_pins, "by_snapshot", None)
    if pins is None:
        pins = _pins.by_snapshot = {}
    if id(snap) in pins:  # nested: the outer block's look stands
        yield
        return
    pins[id(snap)] = _UNSET
    try:
        yield
    finally:
        pins.pop(id(snap), None)


def snapshot_query(store: ObjectStore, sql: str) -> list[dict[str, Any]]:
    """:func:`query` for casreg's own SQL (one ``SELECT``, built from validated pieces):
    the same rows, from the store's :class:`Snapshot` (no new connection, no re-read of
    a ledger that has not changed)."""
    snap = snapshot(store)

    def make(fingerprint: Hashable | None) -> list[dict[str, Any]]:
        table = snap.run(sql, store, fingerprint=fingerprint)
        columns = [(f.name, f.type, table.column(i).to_pylist()) for i, f in enumerate(table.schema)]
        return [{name: _plain(values[i], typ) for name, typ, values in columns} for i in range(table.num_rows)]

    return [dict(r) for r in snap.cached(("rows", sql), make, store)]


def snapshot_cached(store: ObjectStore, key: Hashable, make: Callable[[], T]) -> T:
    """``make()``, a value derived only from :func:`snapshot_query` results, kept while
    the ledger is unchanged (:meth:`Snapshot.cached`); callers must not mutate it."""
    return snapshot(store).cached(("value", key), lambda _: make(), store)
