"""The compacted ledger's HEAD (``ledger/compacted/HEAD.json``) and the reading rule.

**Reading rule** (docs/FORMAT.md §6.1). HEAD names the current compacted files and what
they cover: for versions, per model the highest number N such that versions 1..N are all
in the compacted versions files (numbers are gap-free, so a number is enough); for events,
the exact set of event segment keys, stored as the ``segment`` column of the compacted
events files. A reader reads HEAD once, then the files it lists (checked against the size
and BLAKE3 that HEAD records), then lists the segment keys and reads only those not
covered. Covered segments are never read, and no row is counted twice. A compacted file
that disappears (a newer HEAD superseded it) makes the reader start again from the newer
HEAD (:func:`with_head`); one that is missing or damaged while HEAD still lists it makes
the reader ignore compaction altogether and read every segment (correct, slower).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from casreg.digest import HEX64
from casreg.errors import NotFoundError
from casreg.keys import COMPACTED, HEAD_KEY
from casreg.ledger.schema import compacted_event_schema, load_compacted, project, version_schema
from casreg.redact import redact_url
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["HEAD_FORMAT", "MAX_HEAD_BYTES", "CompactedFile", "CompactedUnavailable", "LedgerHead", "read_compacted",
           "read_compacted_events", "read_compacted_versions", "read_head", "with_head"]

log = logging.getLogger(__name__)

HEAD_FORMAT = "casreg-ledger-head/1"
#: HEAD is read at most this large (it lists O(log rows) files and one number per model).
MAX_HEAD_BYTES = 16 << 20

T = TypeVar("T")


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
                if not _count(rows) or not _count(size):
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
        data = store.read(HEAD_KEY, ByteRange(0, MAX_HEAD_BYTES + 1))
    except NotFoundError:
        return None
    try:
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError(f"larger than {MAX_HEAD_BYTES:,} bytes")
        return LedgerHead.from_json(data)
    except (ValueError, RecursionError) as err:
        log.warning("casreg: ignoring %s in %s (%s); reading the ledger segments instead "
                    "(run casreg compact to rebuild it)", HEAD_KEY, redact_url(store.url), err)
        return None


def _count(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


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
        data = store.read(f.key, ByteRange(0, f.size + 1))
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


def read_compacted_versions(store: ObjectStore, head: LedgerHead, *, name: str | None = None,
                             columns: Sequence[str] | None = None) -> pa.Table:
    import pyarrow as pa

    schema, full = project(version_schema(), columns), version_schema()
    parts = [_rows(store, f, full, name).select(schema.names) for f in head.versions]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def read_compacted_events(store: ObjectStore, head: LedgerHead, name: str | None = None) -> pa.Table:
    import pyarrow as pa

    schema = compacted_event_schema()
    parts = [_rows(store, f, schema, name) for f in head.events]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _rows(store: ObjectStore, f: CompactedFile, schema: pa.Schema, name: str | None) -> pa.Table:
    """The rows of compacted file ``f`` (of model ``name`` only, if given): read and
    checked by :func:`read_compacted` and :func:`_load`, decoded rows kept while unchanged
    (:func:`casreg.ledger.cache.compacted_rows`)."""
    from casreg.ledger.cache import compacted_rows

    return compacted_rows(store, f, schema, lambda: read_compacted(store, f), lambda data: _load(f, data, schema),
                          name)


def _load(f: CompactedFile, data: bytes, schema: pa.Schema) -> pa.Table:
    """Every row of a compacted file (its bytes, checked by :func:`read_compacted`); one
    that matches HEAD's digest but does not read as the table it should be, or not with
    the rows HEAD records (written damaged), is unavailable, so readers use the segments."""
    import pyarrow as pa

    try:
        table = load_compacted(data, schema)
    except (ValueError, KeyError, IndexError, TypeError, OSError, pa.ArrowException):
        raise CompactedUnavailable(f.key, damaged=True) from None
    if table.num_rows != f.rows:
        raise CompactedUnavailable(f.key, damaged=True)
    return table
