"""Deployment pointers: ``name@alias`` → digest, one small JSON object per alias at
``pointers/<name>/<alias>.json``.

A pointer changes only by compare-and-swap, so two racing moves end with one winner and
one :class:`ConflictError`. The pointer holds the complete event of its last move; the
same event is appended to the ledger right after the swap. If a crash falls between the
two, the next move (or ``repair``) appends the missing event first, because it is
already in the pointer: the log never disagrees with the pointers for long, and never
loses a move. One object per alias keeps resolving to a single small read and lets
storage access control guard production pointers by key pattern.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from casreg.concurrency import map_concurrently
from casreg.digest import Digest
from casreg.errors import ConflictError, IntegrityError, NotFoundError
from casreg.keys import POINTERS, event_segment_key, parse_pointer_key, pointer_key
from casreg.ledger.events import implied_events, new_event
from casreg.ledger.segments import append_event
from casreg.records import AliasEvent, AliasPointer
from casreg.storage import ObjectStore

__all__ = ["read_pointer", "read_pointer_event", "read_pointer_events", "move_alias",
           "list_pointers"]


def _decode(data: bytes, key: str) -> AliasEvent:
    """A pointer's bytes → the event of its last move; anything malformed is an
    :class:`IntegrityError` naming the pointer."""
    try:
        event = AliasEvent.from_dict(json.loads(data))
        implied_events(event)  # what the move implies must be well-formed too
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise IntegrityError(f"alias pointer {key} is corrupt ({str(err)[:200]}); run casreg verify") from None
    if event.alias is None:
        raise IntegrityError(f"alias pointer {key} is corrupt (its event names no alias); run casreg verify")
    return event


def _as_pointer(event: AliasEvent) -> AliasPointer | None:
    if event.to_digest is None or event.to_version is None or event.alias is None:
        return None  # removed
    return AliasPointer(event.name, event.alias, event.to_digest, event.to_version, event)


def read_pointer(store: ObjectStore, name: str, alias: str) -> AliasPointer | None:
    """Where ``name@alias`` points, or ``None``: exactly one small read."""
    try:
        data = store.read(pointer_key(name, alias))
    except NotFoundError:
        return None
    return _as_pointer(_decode(data, pointer_key(name, alias)))


def read_pointer_event(store: ObjectStore, name: str, alias: str) -> AliasEvent | None:
    """The last move of ``name@alias`` (also when that move removed it), or ``None`` if
    it was never set."""
    try:
        key = pointer_key(name, alias)
        return _decode(store.read(key), key)
    except NotFoundError:
        return None


def _read_events(store: ObjectStore, prefix: str) -> list[AliasEvent]:
    """The last move held by every pointer under ``prefix``, in key order (one small read
    each, concurrently)."""

    def read(key: str) -> AliasEvent | None:
        try:
            return _decode(store.read(key), key)
        except NotFoundError:  # removed since the listing
            return None

    keys = sorted(k for k in store.list(prefix) if parse_pointer_key(k) is not None)
    return [e for e in map_concurrently(read, keys) if e is not None]


def read_pointer_events(store: ObjectStore, name: str) -> list[AliasEvent]:
    """The last move of every alias of ``name``, removed ones included."""
    return _read_events(store, f"{POINTERS}/{name}")


def list_pointers(store: ObjectStore, name: str | None = None) -> list[AliasPointer]:
    """Every alias that is set (of model ``name``, or of every model), in key order."""
    events = _read_events(store, f"{POINTERS}/{name}" if name else POINTERS)
    return [p for e in events if (p := _as_pointer(e)) is not None]


def _log(store: ObjectStore, event: AliasEvent) -> None:
    """Append a move and the events it implies (idempotent: keys derive from the event)."""
    append_event(store, event)
    for implied in implied_events(event):
        append_event(store, implied)


def _ensure_logged(store: ObjectStore, event: AliasEvent) -> None:
    if not store.exists(event_segment_key(event.name, event.time, event.event_id)):
        _log(store, event)


def move_alias(
    store: ObjectStore,
    name: str,
    alias: str,
    target: tuple[Digest, int] | None,
    *,
    reason: str | None = None,
    expected: AliasPointer | None | bool = True,
    kind: str | None = None,
    details: Mapping[str, Any] | None = None,
    seen: AliasEvent | None | bool = False,
) -> AliasEvent:
    """Point ``name@alias`` at ``target`` = (digest, version), or remove it (``None``).

    ``expected=True`` means "whatever is there now" (read, then swap against it); passing
    the pointer a caller saw earlier (or ``None`` for "unset") makes the move fail with
    :class:`ConflictError` if anyone moved it since. ``seen`` (an event, or ``None`` for
    "never set") is the stricter form used after checking gates: the move must replace
    exactly that last move, removals included. ``kind`` defaults to ``alias.set`` /
    ``alias.remove``; ``details`` go into the event (annotations, the archived version).
    """
    key = pointer_key(name, alias)
    current = store.read_versioned(key)
    current_event = _decode(current.data, key) if current else None
    if current_event is not None:
        _ensure_logged(store, current_event)
    current_pointer = _as_pointer(current_event) if current_event else None
    if seen is not False:
        last = seen.event_id if isinstance(seen, AliasEvent) else None
        if last != (current_event.event_id if current_event else None):
            raise _conflict(name, alias, current_pointer)
    elif expected is not True:
        was = expected.event.event_id if isinstance(expected, AliasPointer) else None
        now = current_pointer.event.event_id if current_pointer else None
        if was != now:
            raise _conflict(name, alias, current_pointer)
    source = (current_pointer.digest, current_pointer.version) if current_pointer else None
    event = new_event(kind or ("alias.set" if target else "alias.remove"), name, alias=alias, to=target,
                      source=source, reason=reason, details=details)
    try:
        store.swap(key, json.dumps(event.to_dict()).encode(), current.token if current else None)
    except ConflictError:
        raise _conflict(name, alias, read_pointer(store, name, alias)) from None
    _log(store, event)
    return event


def _conflict(name: str, alias: str, winner: AliasPointer | None) -> ConflictError:
    if winner is None:
        return ConflictError(f"{name}@{alias} was changed by someone else meanwhile "
                             "(it is now unset); nothing was changed")
    e = winner.event
    return ConflictError(
        f"{name}@{alias} was moved to {name}:{winner.version} by {e.author} at "
        f"{e.time.isoformat(timespec='seconds')} meanwhile; nothing was changed"
    )
