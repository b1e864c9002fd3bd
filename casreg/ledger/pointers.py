"""Deployment pointers: ``name@alias`` → digest, one small JSON object per alias at
``pointers/<name>/<alias>.json``.

A pointer changes only by compare-and-swap, so two racing moves end with one winner and
one :class:`ConflictError`. The pointer holds the complete event of its last move; the
same event is appended to the ledger right after the swap. If a crash falls between the
two, the next move (or ``repair``) appends the missing event first, because it is
already in the pointer: the log never disagrees with the pointers for long, and never
loses a move. One object per alias keeps resolving to a single small read and lets
storage access control guard production pointers by key pattern.

A pointer is mutable, so nothing about it is taken on trust (docs/FORMAT.md §7): on every
read its event must name the model and alias of its key, be a move (a pointer kind) and
either name both a version and a digest or neither; and before anything acts on where it
points, :func:`confirm_pointer` checks against the ledger that the version exists and has
that digest (one bounded read of the version's segment). A pointer that fails either
check is an :class:`IntegrityError` naming its key, never a target.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from casreg.concurrency import map_concurrently
from casreg.digest import Digest
from casreg.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from casreg.keys import POINTERS, event_segment_key, parse_pointer_key, pointer_key
from casreg.ledger.events import POINTER_KINDS, implied_events, new_event
from casreg.ledger.segments import append_event, events_table, read_version
from casreg.records import AliasEvent, AliasPointer, Version
from casreg.storage import ByteRange, ObjectStore

__all__ = ["read_pointer", "read_pointer_event", "read_pointer_events", "move_alias",
           "list_pointers", "decode_pointer", "confirm_pointer", "confirm_event", "pointer_disagreement",
           "lying_pointers", "deleted_pointers", "missing_pointer_message", "require_not_deleted",
           "restore_pointer",
           "MAX_POINTER_BYTES"]

#: A pointer holds one event (annotations at most 32 x 1 KiB): anything larger is damage.
MAX_POINTER_BYTES = 256 << 10


def _corrupt(key: str, why: str) -> IntegrityError:
    return IntegrityError(f"alias pointer {key} is corrupt ({why}); run casreg verify")


def decode_pointer(data: bytes, key: str) -> AliasEvent:
    """A pointer's bytes → the event of its last move, checked against its key: the event
    must parse, name the model and alias of ``key``, be a pointer move, and set both
    ``to_version`` and ``to_digest`` or neither (a removal). Anything else is an
    :class:`IntegrityError` naming ``key`` (exit 6)."""
    named = parse_pointer_key(key)
    if len(data) > MAX_POINTER_BYTES:
        raise _corrupt(key, f"larger than {MAX_POINTER_BYTES:,} bytes")
    try:
        event = AliasEvent.from_dict(json.loads(data))
        implied_events(event)  # what the move implies must be well-formed too
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise _corrupt(key, str(err).splitlines()[0][:200] if str(err) else type(err).__name__) from None
    if event.alias is None:
        raise _corrupt(key, "its event names no alias")
    if named is not None and (event.name, event.alias) != named:
        raise IntegrityError(f"alias pointer {key} holds a move of {event.name}@{event.alias}, not of "
                             f"{named[0]}@{named[1]}; run casreg verify")
    if event.kind not in POINTER_KINDS:
        raise _corrupt(key, f"its event is a {event.kind[:64]!r}, not a move of the alias")
    if (event.to_digest is None) != (event.to_version is None):
        raise _corrupt(key, "its event names a version without a digest, or a digest without a version")
    return event


_decode = decode_pointer


def _lie(key: str, verb: str, name: str, number: int, digest: Digest, recorded: Digest | None) -> str | None:
    ref = f"{name}:{number}"
    if recorded is None:
        return (f"alias pointer {key} {verb} {ref} as {digest}, which no version records (the ledger has no "
                f"{ref}); run casreg verify")
    if recorded != digest:
        return (f"alias pointer {key} {verb} {ref} as {digest}, but the ledger records {ref} as {recorded}; "
                "run casreg verify")
    return None


def pointer_disagreement(pointer: AliasPointer, recorded: Digest | None) -> str | None:
    """Why ``pointer`` lies, given the digest the ledger records for the version it names
    (``None``: the ledger has no such version); ``None`` when they agree. One line that
    names the pointer's key."""
    return _lie(pointer_key(pointer.name, pointer.alias), "points at", pointer.name, pointer.version,
                pointer.digest, recorded)


def lying_pointers(pointers: Iterable[AliasPointer], versions: Iterable[Version]) -> list[tuple[AliasPointer, str]]:
    """The pointers that name one of ``versions`` (records a caller has already read)
    with another digest than that record, each with why (one line naming its key): the
    free check for whoever shows where aliases point. Pointers at versions not among
    ``versions`` are not checked."""
    recorded = {(v.name, v.version): v.digest for v in versions}
    out = []
    for p in pointers:
        digest = recorded.get((p.name, p.version))
        if digest is not None and (why := pointer_disagreement(p, digest)) is not None:
            out.append((p, why))
    return out


def _recorded(store: ObjectStore, name: str, number: int) -> Digest | None:
    try:
        return read_version(store, name, number).digest
    except NotFoundError:
        return None


def confirm_pointer(store: ObjectStore, pointer: AliasPointer) -> None:
    """Check that the ledger records the version ``pointer`` names with the pointer's
    digest (one bounded read of the version's segment,
    :func:`~casreg.ledger.segments.read_version`); an :class:`IntegrityError` naming the
    pointer's key if it does not."""
    why = pointer_disagreement(pointer, _recorded(store, pointer.name, pointer.version))
    if why is not None:
        raise IntegrityError(why)


def confirm_event(store: ObjectStore, event: AliasEvent, *, source: bool = False) -> None:
    """Check a pointer's last move against the ledger: where it points (``to_*``) and,
    with ``source``, where it pointed before (``from_*``: what a rollback returns to).
    An :class:`IntegrityError` naming the pointer's key on any disagreement."""
    assert event.alias is not None
    key = pointer_key(event.name, event.alias)
    checks = [("points at", event.to_version, event.to_digest)]
    if source:
        checks.append(("says it was at", event.from_version, event.from_digest))
    for verb, number, digest in checks:
        if number is not None and digest is not None:
            why = _lie(key, verb, event.name, number, digest, _recorded(store, event.name, number))
            if why is not None:
                raise IntegrityError(why)


def _as_pointer(event: AliasEvent) -> AliasPointer | None:
    if event.to_digest is None or event.to_version is None or event.alias is None:
        return None  # removed
    return AliasPointer(event.name, event.alias, event.to_digest, event.to_version, event)


def read_pointer(store: ObjectStore, name: str, alias: str) -> AliasPointer | None:
    """Where ``name@alias`` points, or ``None``: exactly one small read."""
    key = pointer_key(name, alias)
    try:
        data = store.read(key, ByteRange(0, MAX_POINTER_BYTES + 1))
    except NotFoundError:
        return None
    return _as_pointer(_decode(data, key))


def read_pointer_event(store: ObjectStore, name: str, alias: str) -> AliasEvent | None:
    """The last move of ``name@alias`` (also when that move removed it), or ``None`` if
    it was never set."""
    key = pointer_key(name, alias)
    try:
        return _decode(store.read(key, ByteRange(0, MAX_POINTER_BYTES + 1)), key)
    except NotFoundError:
        return None


def _read_events(store: ObjectStore, prefix: str) -> list[AliasEvent]:
    """The last move held by every pointer under ``prefix``, in key order (one small read
    each, concurrently)."""

    def read(key: str) -> AliasEvent | None:
        try:
            return _decode(store.read(key, ByteRange(0, MAX_POINTER_BYTES + 1)), key)
        except NotFoundError:  # removed since the listing
            return None

    def derive() -> list[AliasEvent]:
        keys = sorted(k for k in store.list(prefix) if parse_pointer_key(k) is not None)
        return [e for e in map_concurrently(read, keys) if e is not None]

    from casreg.ledger.cache import cached_under

    return list(cached_under(store, prefix, "pointer events", derive))


def _last_moves(store: ObjectStore, name: str | None, alias: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    """The ledger's last move of each alias (of model ``name``; only ``alias``, if given),
    as event rows."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for row in events_table(store, name=name).to_pylist():  # in key (time) order: the last move wins
        if row["kind"] in POINTER_KINDS and row["alias"] and (alias is None or row["alias"] == alias):
            last[row["name"], row["alias"]] = row
    return last


def deleted_pointers(store: ObjectStore, name: str | None = None, alias: str | None = None) -> list[AliasEvent]:
    """The last ledger move of each alias (of model ``name``; only ``alias``, if given)
    that leaves it set although its pointer object does not exist: a deleted pointer.
    Nothing deletes a pointer (a move writes the pointer before the ledger; a removed
    alias keeps its pointer, holding the removal), so such a move is damage, not an
    unset alias. Existence is checked after the ledger is read, so a move that races
    with this call is not reported. Reads the model's events: for failure paths and
    ``verify``."""
    last = _last_moves(store, name, alias)
    moved = [row for _, row in sorted(last.items()) if row["kind"] != "alias.remove" and row["to_digest"]]
    there = map_concurrently(lambda row: store.exists(pointer_key(row["name"], row["alias"])), moved)
    return [AliasEvent.from_dict(row) for row, exists in zip(moved, there) if not exists]


def missing_pointer_message(event: AliasEvent) -> str:
    """Why a pointer :func:`deleted_pointers` found is damage, naming its key."""
    assert event.alias is not None
    return (f"alias pointer {pointer_key(event.name, event.alias)} is missing: the ledger's last move of "
            f"{event.name}@{event.alias} ({event.kind} by {event.author} at {event.time.isoformat()}) set it to "
            f"{event.name}:{event.to_version}")


def require_not_deleted(store: ObjectStore, name: str, alias: str) -> None:
    """For an alias whose pointer does not exist: :class:`IntegrityError` naming the
    pointer if the ledger says the alias is set (:func:`deleted_pointers`), so a deleted
    pointer is never read as an unset alias, nor silently replaced by a new move."""
    for gone in deleted_pointers(store, name, alias):
        raise IntegrityError(f"{missing_pointer_message(gone)}; run casreg verify, then casreg alias restore "
                             f"{name}@{alias}")


def restore_pointer(store: ObjectStore, name: str, alias: str) -> AliasEvent:
    """Make a damaged pointer what the ledger says: a pointer that was deleted, or that
    does not decode or disagrees with the version records (which every read refuses, so
    no move can replace it), is written back as the ledger's last move of
    ``name@alias``, byte for byte the event the pointer held, checked against the version
    records first (:func:`confirm_event`). Compare-and-swap against what was read; no
    event is recorded (the alias's state is the ledger's, unchanged).
    :class:`InvalidInputError` if the pointer is intact or the ledger never moved the
    alias."""
    key = pointer_key(name, alias)
    current = store.read_versioned(key)
    if current is not None:
        try:
            event = _decode(current.data, key)
            pointer = _as_pointer(event)
            if pointer is not None:
                confirm_pointer(store, pointer)
        except IntegrityError:
            pass  # damaged: replaced below
        else:
            raise InvalidInputError(f"{name}@{alias} has an intact pointer: nothing to restore")
    row = _last_moves(store, name, alias).get((name, alias))
    if row is None:
        raise InvalidInputError(f"{name}@{alias} has no move in the ledger to restore its pointer from")
    last = AliasEvent.from_dict(row)
    confirm_event(store, last)
    try:
        store.swap(key, json.dumps(last.to_dict()).encode(), current.token if current else None)
    except ConflictError:
        raise ConflictError(f"{name}@{alias} was changed by someone else meanwhile; nothing was changed") from None
    return last


def read_pointer_events(store: ObjectStore, name: str | None) -> list[AliasEvent]:
    """The last move of every alias of ``name`` (of every model for ``None``), removed
    ones included."""
    return _read_events(store, f"{POINTERS}/{name}" if name is not None else POINTERS)


def list_pointers(store: ObjectStore, name: str | None = None, *, confirm: bool = False) -> list[AliasPointer]:
    """Every alias that is set (of model ``name``, or of every model), in key order, each
    checked against its key. ``confirm``: each also checked against the ledger
    (:func:`confirm_pointer`, one small read per alias, concurrently); without it a
    caller that shows where aliases point must check them against the version records
    it has (:func:`pointer_disagreement`)."""
    events = _read_events(store, f"{POINTERS}/{name}" if name else POINTERS)
    pointers = [p for e in events if (p := _as_pointer(e)) is not None]
    if confirm:
        map_concurrently(lambda p: confirm_pointer(store, p), pointers)
    return pointers


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
    time: datetime | None = None,
    before_swap: Callable[[AliasEvent, AliasEvent | None], None] | None = None,
) -> AliasEvent:
    """Point ``name@alias`` at ``target`` = (digest, version), or remove it (``None``).

    ``expected=True`` means "whatever is there now" (read, then swap against it); passing
    the pointer a caller saw earlier (or ``None`` for "unset") makes the move fail with
    :class:`ConflictError` if anyone moved it since. ``seen`` (an event, or ``None`` for
    "never set") is the stricter form used after checking gates: the move must replace
    exactly that last move, removals included. ``kind`` defaults to ``alias.set`` /
    ``alias.remove``; ``details`` go into the event (annotations, the archived version).
    ``time``: the event's time if not now (an import recording when the move happened in
    the system it came from; :mod:`casreg.governance.imports`). ``before_swap(event,
    previous)`` is called with the new event and the move it replaces (``None``: the
    alias was never set) before the pointer changes: a signer stores the event's
    signature there, so no signed move is ever visible before its signature.
    """
    key = pointer_key(name, alias)
    current = store.read_versioned(key)
    current_event = _decode(current.data, key) if current else None
    current_pointer = _as_pointer(current_event) if current_event else None
    if current_pointer is not None:
        confirm_pointer(store, current_pointer)  # a forged pointer is neither logged nor moved from
    if current_event is not None:
        _ensure_logged(store, current_event)
    if current is None:
        require_not_deleted(store, name, alias)
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
                      source=source, reason=reason, details=details, time=time)
    if before_swap is not None:
        before_swap(event, current_event)
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
