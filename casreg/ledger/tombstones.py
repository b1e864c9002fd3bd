"""Tombstones: which versions were deleted, by whom, when and why (docs/retention.md).

Deleting a version never removes or rewrites its ledger record: it writes a *tombstone*,
``tombstones/<name>/<N:010d>.json``, by create-if-absent, holding the ``delete`` event,
and then appends that same event to the ledger (``ledger/events/<name>/``; its key is
derived from the event, so re-appending it after a crash between the two writes is a
no-op). The tombstone is the authority, the event its audit copy: resolving ``NAME:N``
costs one more small read (the tombstone's key is known from the reference, no listing),
and ``gc`` learns which versions are no longer roots from one listing of ``tombstones/``.

A tombstone is checked like a pointer: at most :data:`MAX_TOMBSTONE_BYTES`, its event
must parse, be a ``delete`` and name the model and version of its key; anything else is
an :class:`~casreg.errors.IntegrityError` naming the key (exit 6).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from casreg.concurrency import map_concurrently
from casreg.digest import Digest
from casreg.errors import DeletedVersionError, IntegrityError, InvalidInputError, NotFoundError
from casreg.keys import TOMBSTONES, parse_tombstone_key, tombstone_key
from casreg.ledger.events import new_event
from casreg.ledger.segments import append_event
from casreg.records import AliasEvent, iso_utc
from casreg.storage import ObjectStore

__all__ = [
    "DELETE_KIND",
    "MAX_TOMBSTONE_BYTES",
    "decode_tombstone",
    "deleted_error",
    "deletion_event",
    "read_tombstone",
    "read_tombstones",
    "record_deletion",
    "repair_event",
    "require_live",
    "tombstoned",
]

#: The event kind a deletion records.
DELETE_KIND = "delete"
MAX_TOMBSTONE_BYTES = 256 * 1024


def deletion_event(name: str, number: int, digest: Digest, reason: str | None) -> AliasEvent:
    """The ``delete`` event of ``name:number`` by the current author, now."""
    return new_event(DELETE_KIND, name, to=(digest, number), reason=reason)


def decode_tombstone(data: bytes, key: str) -> AliasEvent:
    """A tombstone's bytes → its ``delete`` event, checked against ``key``; an
    :class:`IntegrityError` naming the key otherwise."""
    named = parse_tombstone_key(key)

    def corrupt(why: str) -> IntegrityError:
        return IntegrityError(f"tombstone {key} is corrupt ({why}); run casreg verify")

    if len(data) > MAX_TOMBSTONE_BYTES:
        raise corrupt(f"larger than {MAX_TOMBSTONE_BYTES:,} bytes")
    try:
        event = AliasEvent.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise corrupt(str(err).splitlines()[0][:200] if str(err) else type(err).__name__) from None
    if event.kind != DELETE_KIND:
        raise corrupt(f"its event is a {event.kind[:64]!r}, not a delete")
    if event.to_digest is None or event.to_version is None:
        raise corrupt("its event names no version")
    if named is not None and (event.name, event.to_version) != named:
        raise IntegrityError(f"tombstone {key} holds the deletion of {event.name}:{event.to_version}, not of "
                             f"{named[0]}:{named[1]}; run casreg verify")
    return event


def read_tombstone(store: ObjectStore, name: str, number: int) -> AliasEvent | None:
    """The ``delete`` event of ``name:number``, or ``None`` if it was not deleted (one
    bounded read; a missing key is the common case and costs one request)."""
    from casreg.storage import ByteRange

    key = tombstone_key(name, number)
    try:
        data = store.read(key, ByteRange(0, MAX_TOMBSTONE_BYTES + 1))
    except NotFoundError:
        return None
    return decode_tombstone(data, key)


def deleted_error(event: AliasEvent, *, prefix: str = "") -> DeletedVersionError:
    """The one-line error for a reference to the deleted version ``event`` names:
    ``NAME:N was deleted by X at T: reason``."""
    assert event.to_version is not None
    ref = f"{event.name}:{event.to_version}"
    when = iso_utc(event.time)
    why = f": {event.reason}" if event.reason else " (no reason given)"
    return DeletedVersionError(f"{prefix}{ref} was deleted by {event.author} at {when}{why}",
                               name=event.name, version=event.to_version, deleted_by=event.author,
                               deleted_at=when, reason=event.reason)


def require_live(store: ObjectStore, name: str, number: int, digest: Digest | None = None) -> None:
    """Raise :class:`DeletedVersionError` if ``name:number`` was deleted. ``digest``: the
    digest the ledger records for it, which the tombstone must name too (else the
    tombstone is damage, an :class:`IntegrityError`)."""
    event = read_tombstone(store, name, number)
    if event is None:
        return
    if digest is not None and event.to_digest != digest:
        raise IntegrityError(f"tombstone {tombstone_key(name, number)} deletes {name}:{number} as "
                             f"{event.to_digest}, but the ledger records {digest}; run casreg verify")
    raise deleted_error(event)


def tombstoned(store: ObjectStore, name: str | None = None) -> set[tuple[str, int]]:
    """``(name, version)`` of every deleted version (of ``name`` only, if given), from one
    listing and no read: for listings that only hide deleted versions."""
    prefix = f"{TOMBSTONES}/{name}/" if name is not None else TOMBSTONES
    return {parsed for key in store.list(prefix) if (parsed := parse_tombstone_key(key)) is not None}


def read_tombstones(store: ObjectStore, name: str | None = None,
                    only: Iterable[tuple[str, int]] | None = None) -> dict[tuple[str, int], AliasEvent]:
    """Every deleted version (of ``name``, or among ``only``) with its ``delete`` event:
    one listing and one read per tombstone (concurrent). A tombstone that does not read is
    an :class:`IntegrityError` naming it."""
    keys = sorted(tombstoned(store, name)) if only is None else sorted(set(only))
    events = map_concurrently(lambda nv: read_tombstone(store, nv[0], nv[1]), keys)
    return {nv: e for nv, e in zip(keys, events) if e is not None}


def record_deletion(store: ObjectStore, event: AliasEvent) -> bool:
    """Write the tombstone of ``event`` (create-if-absent), then append the event to the
    ledger. ``False`` if the version already had a tombstone (someone deleted it first;
    nothing is written then). The append is idempotent, so :func:`repair_event` after a
    crash between the two writes writes the very same segment."""
    assert event.kind == DELETE_KIND and event.to_version is not None
    data = json.dumps(event.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_TOMBSTONE_BYTES:
        raise InvalidInputError(f"the deletion record of {event.name}:{event.to_version} would be {len(data):,} bytes; "
                             f"at most {MAX_TOMBSTONE_BYTES:,} (give a shorter reason)")
    if not store.create(tombstone_key(event.name, event.to_version), data):
        return False
    append_event(store, event)
    return True


def repair_event(store: ObjectStore, event: AliasEvent) -> bool:
    """Append the ``delete`` event a tombstone holds (a no-op if it is already in the
    ledger: the segment's key is derived from the event). ``True`` if it was missing."""
    return append_event(store, event)
