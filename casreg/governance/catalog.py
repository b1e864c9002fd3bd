"""Registry-wide and per-model summaries for overview pages (``casreg ui``): every
model with its latest version and totals, and a numeric field sampled over a model's
versions, each in one SQL query over the ledger views, bounded in what it returns
(one row per model; at most ``points`` rows per series) whatever the ledger holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from casreg.concurrency import map_concurrently
from casreg.digest import HEX64
from casreg.governance.search import field_sql
from casreg.keys import POINTERS, VERSIONS, parse_pointer_key, parse_version_segment_key
from casreg.ledger.segments import read_version
from casreg.ledger.sql import snapshot_cached
from casreg.ledger.sql import snapshot_query as query
from casreg.records import JsonValue, Version, iso_utc, parse_time
from casreg.refs import validate_name
from casreg.storage import ObjectStore

__all__ = ["ModelSummary", "ancestors", "model_summaries", "series", "MAX_POINTS", "model_names", "alias_names"]

#: The most rows :func:`series` returns.
MAX_POINTS = 2000


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A model at a glance: its latest version, how many versions it has, their logical
    size and the bytes their pushes really stored, and when it last changed (its latest
    push or recorded event)."""

    latest: Version
    versions: int
    logical_bytes: int
    stored_bytes: int
    last_activity: datetime

    @property
    def name(self) -> str:
        return self.latest.name

    def to_dict(self) -> dict[str, JsonValue]:
        """The totals (the latest version's own record is :attr:`latest`; these keys do not
        collide with its fields, so the two merge into one JSON object)."""
        return {"versions": self.versions, "total_size": self.logical_bytes, "total_stored_bytes": self.stored_bytes,
                "last_activity": iso_utc(self.last_activity)}


def _utc(t: object) -> datetime:
    """A time as the SQL rows give it (ISO 8601 text, or a datetime), in UTC."""
    if isinstance(t, str):
        t = parse_time(t)
    if not isinstance(t, datetime):
        raise TypeError(f"not a time: {t!r}")
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def model_summaries(store: ObjectStore) -> list[ModelSummary]:
    """Every model, by name: one query over the ``versions`` view (and ``events`` for
    the last activity), whatever the number of versions."""
    return list(snapshot_cached(store, "model_summaries", lambda: _model_summaries(store)))


def _model_summaries(store: ObjectStore) -> list[ModelSummary]:
    rows = query(store, """
        WITH t AS (SELECT name, max(version) AS n, sum(size) AS logical, sum(stored_bytes) AS stored
                   FROM versions GROUP BY name),
             e AS (SELECT name, max(time) AS moved FROM events GROUP BY name)
        SELECT v.* EXCLUDE (files), t.n AS _n, t.logical AS _logical, t.stored AS _stored, e.moved AS _moved
        FROM versions v JOIN t ON v.name = t.name AND v.version = t.n LEFT JOIN e ON e.name = v.name
        ORDER BY v.name""")  # one query: one connection, one read of the ledger
    out = []
    for r in rows:
        last = max(_utc(r["created_at"]), _utc(r["_moved"])) if r["_moved"] is not None else _utc(r["created_at"])
        out.append(ModelSummary(Version.from_dict({k: v for k, v in r.items() if not k.startswith("_")}),
                                int(r["_n"]), int(r["_logical"] or 0), int(r["_stored"] or 0), last))
    out.sort(key=lambda s: s.name)
    return out


def series(store: ObjectStore, name: str, fields: list[str], *, points: int = 500,
           cumulative: bool = False) -> list[dict[str, float | int | None]]:
    """``fields`` (``metrics.auc``, ``size``, ``stored_bytes``... as ``--sort`` names
    them; numbers) of the versions of ``name``, oldest first, as rows ``{"version": N,
    FIELD: value}``: every version if there are at most ``points``, else an even sample
    of ``points`` of them (the first and the last included). ``cumulative``: each value
    is the running sum up to that version (over every version, sampled or not)."""
    validate_name(name)
    points = max(2, min(int(points), MAX_POINTS))
    if not fields:
        return []
    exprs = [f"TRY_CAST({field_sql(f, 'field')} AS DOUBLE)" for f in fields]
    if cumulative:
        exprs = [f"sum({e}) OVER (ORDER BY version)" for e in exprs]
    cols = ", ".join(f"{e} AS c{i}" for i, e in enumerate(exprs))
    rows = query(store, f"""
        WITH s AS (SELECT version, {cols}, count(*) OVER () AS total, row_number() OVER (ORDER BY version) - 1 AS i
                   FROM versions WHERE name = '{name}')
        SELECT * FROM s WHERE total <= {points} OR i = total - 1
               OR floor(i * ({points} - 1) / (total - 1)) <> floor((i - 1) * ({points} - 1) / (total - 1))
        ORDER BY version""")
    return [{"version": int(r["version"]), **{f: r[f"c{i}"] for i, f in enumerate(fields)}} for r in rows]


def ancestors(store: ObjectStore, parent: str | None, *, limit: int = 10) -> list[Version]:
    """The lineage chain above a version whose ``lineage.parent`` is ``parent``: the
    newest version holding that digest, then the newest holding its parent, and so on,
    at most ``limit`` of them (a chain that loops stops there too): one query, instead
    of one lookup per link."""
    if parent is None or limit <= 0:
        return []
    hexd = str(parent).removeprefix("blake3:")
    if not HEX64.fullmatch(hexd):
        return []
    newest = snapshot_cached(store, "newest version holding each digest", lambda: _newest_holders(store))
    chain: list[tuple[str, int]] = []
    digest: str | None = f"blake3:{hexd}"
    while digest is not None and len(chain) < limit:
        hit = newest.get(digest)
        if hit is None:
            break
        chain.append((hit[0], hit[1]))
        digest = hit[2]
    return map_concurrently(lambda nv: read_version(store, nv[0], nv[1]), chain)


def _newest_holders(store: ObjectStore) -> dict[str, tuple[str, int, str | None]]:
    """Each version digest → the newest version holding it (name, number, its parent)."""
    rows = query(store, """
        SELECT digest, name, version, lineage.parent AS parent FROM versions
        QUALIFY row_number() OVER (PARTITION BY digest ORDER BY created_at DESC, name, version) = 1""")
    return {str(r["digest"]): (str(r["name"]), int(str(r["version"])),
                               None if r["parent"] is None else str(r["parent"])) for r in rows}


def _listed(store: ObjectStore, prefix: str, parse: Callable[[str], tuple[str, Any] | None], pick: int,
            starts: str, limit: int, seconds: float) -> list[str]:
    found: set[str] = set()
    until = time.monotonic() + seconds
    for n, key in enumerate(store.list(prefix), start=1):
        parsed = parse(key)
        if parsed is not None and str(parsed[pick]).startswith(starts):
            found.add(str(parsed[pick]))
        # the clock is read every 256 keys: a small registry is always listed whole, however
        # busy the machine (completion answered in part only where the listing is long)
        if len(found) >= limit or (n % 256 == 0 and time.monotonic() > until):
            break
    return sorted(found)


def model_names(store: ObjectStore, prefix: str = "", *, limit: int = 500, seconds: float = 0.3) -> list[str]:
    """Names of the models that start with ``prefix``, from a listing of the version
    segments (no ledger is read): for shell completion. Bounded: the listing stops after
    ``limit`` names or ``seconds``, so a large registry answers quickly, maybe in part."""
    return _listed(store, VERSIONS, parse_version_segment_key, 0, prefix, limit, seconds)


def alias_names(store: ObjectStore, name: str, prefix: str = "", *, limit: int = 500,
                seconds: float = 0.3) -> list[str]:
    """The aliases of model ``name`` that start with ``prefix`` (set or removed: every
    alias that has a pointer), from a listing of its pointers; bounded as :func:`model_names`."""
    validate_name(name)
    return _listed(store, f"{POINTERS}/{name}", parse_pointer_key, 1, prefix, limit, seconds)
