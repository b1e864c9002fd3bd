"""A model's history and time travel: ``casreg log`` and ``resolve --at``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from casreg.errors import InvalidInputError, UnknownReferenceError
from casreg.governance.state import check_stage_name
from casreg.keys import REGISTRY_EVENTS
from casreg.ledger.events import POINTER_KINDS
from casreg.ledger.history import read_events
from casreg.ledger.resolve import Resolved, resolve
from casreg.ledger.segments import latest_number, list_versions, read_version
from casreg.records import AliasEvent, JsonValue, Version, iso_utc, utcnow
from casreg.refs import RefKind, parse_ref, validate_name
from casreg.storage import ObjectStore

__all__ = ["LogEntry", "LogPage", "history", "history_page", "parse_when", "resolve_at"]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of ``casreg log``: a push or a recorded event."""

    time: datetime
    kind: str
    name: str
    alias: str | None
    from_version: int | None
    to_version: int | None
    author: str
    host: str | None
    reason: str | None
    from_digest: str | None = None
    to_digest: str | None = None
    details: Mapping[str, JsonValue] = field(default_factory=dict)
    event_id: str | None = None

    def to_dict(self) -> dict[str, JsonValue]:
        return {"time": iso_utc(self.time), "kind": self.kind, "name": self.name, "alias": self.alias,
                "from_version": self.from_version, "to_version": self.to_version, "author": self.author,
                "host": self.host, "reason": self.reason, "from_digest": self.from_digest,
                "to_digest": self.to_digest, "details": dict(self.details), "event_id": self.event_id}


def _push_entry(v: Version) -> LogEntry:
    return LogEntry(time=v.created_at, kind="push", name=v.name, alias=None, from_version=None,
                    to_version=v.version, author=v.author, host=v.lineage.hostname, reason=v.description,
                    from_digest=v.lineage.parent, to_digest=v.digest, details={}, event_id=f"push-{v.name}-{v.version}")


def _event_entry(e: AliasEvent) -> LogEntry:
    return LogEntry(time=e.time, kind=e.kind, name=e.name, alias=e.alias, from_version=e.from_version,
                    to_version=e.to_version, author=e.author, host=e.host, reason=e.reason,
                    from_digest=e.from_digest, to_digest=e.to_digest, details=dict(e.details or {}),
                    event_id=e.event_id)


def history(store: ObjectStore, name: str, *, alias: str | None = None, kinds: Iterable[str] | None = None,
            since: datetime | None = None, until: datetime | None = None) -> list[LogEntry]:
    """Every push and event of ``name`` (and the registry's policy changes), oldest
    first; ``alias`` keeps only that alias's moves and approvals (and the archives its
    moves caused). ``name`` may be :data:`~casreg.ledger.events.REGISTRY_EVENTS` (``_registry``)
    for the registry's own events: policy and hooks changes and their failed deliveries."""
    registry_only = name == REGISTRY_EVENTS
    if not registry_only:
        validate_name(name)
    if alias is not None:
        check_stage_name(alias)
    events = read_events(store, name, registry_wide=alias is None and not registry_only,
                         pointers=not registry_only)
    wanted = set(kinds) if kinds else None
    # pushes are version records: read (every one of them) only when the filter keeps them
    pushes = alias is None and not registry_only and (wanted is None or "push" in wanted)
    versions = list_versions(store, name) if pushes else []
    if not versions and not events and alias is None and (
            pushes or registry_only or latest_number(store, name) is None):
        raise UnknownReferenceError(f"model {name!r} has no versions in {store.url}")
    if alias is not None:
        mine = {e.event_id for e in events if e.alias == alias}
        events = [e for e in events if e.event_id in mine
                  or (e.kind == "archive" and (e.details or {}).get("cause") in mine)]
    entries = [_push_entry(v) for v in versions] + [_event_entry(e) for e in events]
    entries = [e for e in entries if (wanted is None or e.kind in wanted)
               and (since is None or e.time >= since) and (until is None or e.time <= until)]
    entries.sort(key=lambda e: (e.time, e.event_id or ""))
    return entries


def parse_when(text: str) -> datetime:
    """``2026-10-01T12:00:00Z``, ``2026-10-01 12:00``, ``2026-10-01`` (midnight UTC); a
    time without a zone is UTC."""
    s = text.strip()
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            d = date.fromisoformat(s)
        except ValueError:
            raise InvalidInputError(f"cannot read time {text!r}; use ISO 8601, e.g. 2026-10-01T12:00:00Z") from None
        t = datetime(d.year, d.month, d.day)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def resolve_at(store: ObjectStore, ref: str, at: datetime) -> Resolved:
    """What ``ref`` meant at time ``at``: an alias's target then, a model's latest version
    then; a number or digest must have existed by then."""
    r = parse_ref(ref)
    when = iso_utc(at)
    if r.name is None:
        raise InvalidInputError("resolving at a past time needs a model name (NAME, NAME@ALIAS, NAME:N); "
                                "a bare digest never changes")
    if at > utcnow():
        raise InvalidInputError(f"{when} is in the future")
    if r.kind is RefKind.ALIAS:
        assert r.alias is not None
        moves = [e for e in read_events(store, r.name) if e.kind in POINTER_KINDS and e.alias == r.alias
                 and e.time <= at]
        if not moves or moves[-1].to_digest is None or moves[-1].to_version is None:
            raise UnknownReferenceError(f"{r} was not set at {when}")
        return Resolved(moves[-1].to_digest, r.name, moves[-1].to_version)
    if r.kind is RefKind.LATEST:
        existing = [v for v in list_versions(store, r.name) if v.created_at <= at]
        if not existing:
            raise UnknownReferenceError(f"model {r.name!r} had no versions at {when}")
        return Resolved(existing[-1].digest, r.name, existing[-1].version)
    resolved = resolve(store, r)
    assert resolved.version is not None and resolved.name is not None
    v = read_version(store, resolved.name, resolved.version)
    if v.created_at > at:
        raise UnknownReferenceError(f"{r} did not exist yet at {when} (pushed {iso_utc(v.created_at)})")
    return resolved


@dataclass(frozen=True, slots=True)
class LogPage:
    """One page of a model's history, newest entry first, and how many entries the
    whole (filtered) history holds."""

    entries: list[LogEntry]
    total: int


_KIND = re.compile(r"[a-z][a-z0-9._-]{0,40}")


def history_page(store: ObjectStore, name: str, *, alias: str | None = None, kinds: Iterable[str] | None = None,
                 since: datetime | None = None, until: datetime | None = None, limit: int = 100,
                 offset: int = 0) -> LogPage:
    """Entries ``offset`` .. ``offset + limit - 1`` of :func:`history` counted from the
    newest (the same entries, newest first), with the total: one query over the ledger
    snapshot (:func:`casreg.ledger.sql.snapshot_query`), so a page of a model with
    100,000 pushes builds only its own entries. Where the snapshot cannot say it all
    (an ``alias`` filter, a move only a pointer holds yet after a crash cut its ledger
    append) it is :func:`history` sliced."""
    from casreg.governance.search import _quote
    from casreg.ledger.pointers import read_pointer_events
    from casreg.ledger.segments import events_table
    from casreg.ledger.sql import snapshot

    limit, offset = max(0, int(limit)), max(0, int(offset))
    registry_only = name == REGISTRY_EVENTS
    if not registry_only:
        validate_name(name)
    pending = False
    if alias is None and not registry_only:
        logged = set(events_table(store, name=name).column("event_id").to_pylist())
        pending = any(e.event_id not in logged for e in read_pointer_events(store, name))
    if alias is not None or pending:
        everything = history(store, name, alias=alias, kinds=kinds, since=since, until=until)
        newest = everything[::-1]
        return LogPage(newest[offset:offset + limit], len(everything))
    names = [name] if registry_only else [name, REGISTRY_EVENTS]
    clauses = [f"name IN ({', '.join(_quote(n) for n in names)})"]
    wanted = list(kinds) if kinds else None
    if wanted is not None:
        ok = sorted({k for k in wanted if _KIND.fullmatch(k)})
        clauses.append(f"kind IN ({', '.join(_quote(k) for k in ok)})" if ok else "FALSE")
    if registry_only or (wanted is not None and "push" not in wanted):
        clauses.append("kind <> 'push'")
    if since is not None:
        clauses.append(f"time >= {_quote(iso_utc(since))}::TIMESTAMPTZ")
    if until is not None:
        clauses.append(f"time <= {_quote(iso_utc(until))}::TIMESTAMPTZ")
    sql = f"""SELECT * FROM events WHERE {' AND '.join(clauses)}
              ORDER BY time DESC, coalesce(event_id, '') DESC"""
    snap = snapshot(store)
    # the whole filtered history, sorted once per state of the ledger (narrow rows, kept
    # with the snapshot): every page after the first is a slice of it
    table = snap.cached(("history", sql), lambda fingerprint: snap.run(sql, store, fingerprint=fingerprint), store)
    if table.num_rows == 0:  # nothing at all: history() says whether the model exists
        history(store, name, alias=alias, kinds=kinds, since=since, until=until)
        return LogPage([], 0)
    out = []
    for r in table.slice(offset, limit).to_pylist():
        details = r["details"]
        out.append(LogEntry(time=_utc(r["time"]), kind=r["kind"], name=r["name"], alias=r["alias"],
                            from_version=r["from_version"], to_version=r["to_version"], author=r["author"],
                            host=r["host"], reason=r["reason"], from_digest=r["from_digest"],
                            to_digest=r["to_digest"], details=json.loads(details) if details else {},
                            event_id=r["event_id"]))
    return LogPage(out, table.num_rows)


def _utc(t: object) -> datetime:
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    assert isinstance(t, datetime)
    return t if t.tzinfo else t.replace(tzinfo=UTC)
