"""SQL over the ledger with DuckDB.

Views (documented in docs/FORMAT.md):

- ``versions``: one row per version (maps ``metrics``, ``params``, ``tags``; struct
  ``lineage``; list ``files``).
- ``files``: one row per file of every version.
- ``events``: every push and alias move (``kind`` = ``push``, ``alias.set``, ``alias.remove``).
- ``aliases``: where each alias points now.

Segments are read through the store, so the same views work on every backend.
"""

from __future__ import annotations

import datetime as _dt
import decimal
from typing import TYPE_CHECKING, Any

from casreg.errors import InvalidInputError
from casreg.ledger import events_table, versions_table
from casreg.pointers import list_pointers
from casreg.storage import ObjectStore

if TYPE_CHECKING:
    import duckdb

__all__ = ["connect", "query"]

_VIEWS = """
CREATE VIEW versions AS SELECT * FROM _versions;
CREATE VIEW files AS
  SELECT name, version, digest AS version_digest, f.path AS path, f.type AS type,
         f.size AS size, f.digest AS digest
  FROM (SELECT name, version, digest, unnest(files) AS f FROM _versions);
CREATE VIEW events AS
  SELECT 'push-' || name || '-' || version AS event_id, created_at AS time, 'push' AS kind,
         name, NULL::VARCHAR AS alias, lineage.parent AS from_digest, digest AS to_digest,
         NULL::BIGINT AS from_version, version AS to_version, author,
         lineage.hostname AS host, description AS reason
  FROM _versions
  UNION ALL
  SELECT event_id, time, kind, name, alias, from_digest, to_digest, from_version,
         to_version, author, host, reason FROM _events;
CREATE VIEW aliases AS SELECT * FROM _aliases;
"""


def _aliases_table(store: ObjectStore) -> Any:
    import pyarrow as pa

    rows = [
        {"name": p.name, "alias": p.alias, "digest": p.digest, "version": p.version,
         "updated_at": p.event.time, "author": p.event.author, "reason": p.event.reason}
        for p in list_pointers(store)
    ]
    schema = pa.schema([
        ("name", pa.string()), ("alias", pa.string()), ("digest", pa.string()), ("version", pa.int64()),
        ("updated_at", pa.timestamp("us", tz="UTC")), ("author", pa.string()), ("reason", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def connect(store: ObjectStore) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the ledger views over a snapshot of ``store``."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.register("_versions", versions_table(store))
    con.register("_events", events_table(store))
    con.register("_aliases", _aliases_table(store))
    con.execute(_VIEWS)
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
            value = value.astimezone(_dt.timezone.utc)
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


def query(store: ObjectStore, sql: str) -> list[dict[str, Any]]:
    """Run ``sql`` against the views; rows as dicts of plain values."""
    import duckdb

    con = connect(store)
    try:
        relation = con.sql(sql)
        if relation is None:  # a statement without a result (CREATE, SET, ...)
            return []
        table = relation.to_arrow_table()
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidInputError(f"SQL error: {first}") from None
    try:
        columns = [(f.name, f.type, table.column(i).to_pylist()) for i, f in enumerate(table.schema)]
    except (OverflowError, ValueError) as err:
        raise InvalidInputError(f"SQL result holds a value Python cannot represent ({err}); cast it to VARCHAR") from None
    return [
        {name: _plain(values[i], typ) for name, typ, values in columns}
        for i in range(table.num_rows)
    ]
