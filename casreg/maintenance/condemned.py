"""The objects of gc's two-phase protocol (docs/gc.md): condemnation records, the
rescues pushes write for them, and the announcements of sweeps.

- ``gc/condemned/<time>-<id>.json``: what a mark phase found unreachable and old enough;
  nothing is deleted when it is written.
- ``gc/rescued/<record>/<id>.json``: a push that relies on objects of a record names them
  here before it commits, so the sweep spares them.
- ``gc/sweeping/<record>/<run>.json``: a sweep announces itself before it reads the
  rescues; a push that finds one fails (retryably) instead of committing.

Pushes and sweeps read records through this one reader, so a record one of them cannot
read, the other ignores too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from casreg.errors import IntegrityError, NotFoundError
from casreg.keys import (
    GC_CONDEMNED,
    GC_RESCUED,
    GC_SWEEPING,
    condemned_key,
    parse_condemned_key,
    rescue_key,
    sweeping_key,
)
from casreg.storage import ObjectStore

__all__ = ["RECORD_FORMAT", "Record", "Condemned", "iso", "list_records", "read_record", "rescued_keys",
           "write_record", "write_rescue", "sweep_announced", "announce_sweep", "drop_announcement"]

RECORD_FORMAT = "casreg-gc/1"


def iso(t: datetime) -> str:
    """UTC time as gc's records spell it (``...Z``)."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Condemned:
    """One condemned thing: an object key, or (``temporary``) a store leftover's name."""

    key: str
    size: int
    temporary: bool = False


@dataclass(slots=True)
class Record:
    """A condemnation record as read back."""

    id: str  # "<time>-<uuid>", the key's stem
    key: str
    created_at: datetime
    objects: list[Condemned] = field(default_factory=list)
    temporaries: list[Condemned] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        return {o.key for o in self.objects}


def read_record(store: ObjectStore, key: str) -> Record | None:
    """A condemnation record, or ``None`` if it is gone or not one of ours."""
    named = parse_condemned_key(key)
    if named is None:
        return None
    try:
        doc = json.loads(store.read(key))
        if doc.get("format") != RECORD_FORMAT:
            return None
        objects = [Condemned(str(o["key"]), int(o.get("size") or 0)) for o in doc.get("objects", [])]
        temps = [Condemned(str(t["path"]), int(t.get("size") or 0), temporary=True)
                 for t in doc.get("temporaries", [])]
    except NotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return Record(named[0], key, named[1], objects, temps)


def list_records(store: ObjectStore) -> list[Record]:
    """Every readable condemnation record, oldest first."""
    records = []
    for key in sorted(store.list(GC_CONDEMNED)):
        rec = read_record(store, key)
        if rec is not None:
            records.append(rec)
    return records


def write_record(store: ObjectStore, created: datetime, grace_seconds: float, objects: Iterable[Condemned],
                 temporaries: Iterable[Condemned]) -> str:
    """Write a condemnation record (create-if-absent under a fresh name); its key."""
    uid = uuid.uuid4().hex
    key = condemned_key(created, uid)
    rid = key.rsplit("/", 1)[-1].removesuffix(".json")
    doc = {"format": RECORD_FORMAT, "id": rid, "created_at": iso(created), "grace_seconds": grace_seconds,
           "objects": [{"key": o.key, "size": o.size} for o in objects],
           "temporaries": [{"path": t.key, "size": t.size} for t in temporaries]}
    store.create(key, json.dumps(doc, indent=0).encode())
    return key


def rescued_keys(store: ObjectStore, record_id: str) -> set[str]:
    """Every object key the pushes rescued from record ``record_id``. An unreadable rescue
    might have named anything: then the whole record is spared (:class:`IntegrityError`)."""
    keys: set[str] = set()
    for key in store.list(f"{GC_RESCUED}/{record_id}"):
        try:
            doc = json.loads(store.read(key))
            keys.update(str(k) for k in doc.get("keys", []))
        except NotFoundError:
            continue
        except (ValueError, TypeError, AttributeError):
            raise IntegrityError(f"rescue {key} is unreadable; not sweeping record {record_id}") from None
    return keys


def write_rescue(store: ObjectStore, record_id: str, digest: str, keys: list[str], now: datetime) -> None:
    """A push's announcement that version ``digest`` relies on ``keys`` of a record."""
    doc = {"format": RECORD_FORMAT, "record": record_id, "digest": digest, "time": iso(now), "keys": keys}
    store.create(rescue_key(record_id, uuid.uuid4().hex), json.dumps(doc).encode())


def sweep_announced(store: ObjectStore, record_id: str) -> bool:
    """Whether any gc run has announced a sweep of record ``record_id``."""
    return next(iter(store.list(f"{GC_SWEEPING}/{record_id}")), None) is not None


def announce_sweep(store: ObjectStore, record_id: str, run_id: str, now: datetime) -> str:
    """Announce that run ``run_id`` sweeps record ``record_id``; the announcement's key."""
    key = sweeping_key(record_id, run_id)
    store.create(key, json.dumps({"format": RECORD_FORMAT, "time": iso(now)}).encode())
    return key


def drop_announcement(store: ObjectStore, key: str | None) -> None:
    if key is not None:
        store.delete(key)
