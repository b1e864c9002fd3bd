"""Recording and reading ledger events (everything except pushes, which are the version
records themselves).

Every event is one immutable Parquet segment under ``ledger/events/<name>/`` whose key is
derived from the event, so appending is create-if-absent and repairing a crash by
appending again is a no-op. Events that concern the whole registry (policy changes,
hooks configuration) are filed under the reserved name :data:`casreg.keys.REGISTRY_EVENTS`, which no
model can take (model names start with a letter or digit).

Event kinds (``kind`` column; docs/lifecycle.md):

=================  ==========================================================
``alias.set``      an alias was pointed at a version (``alias set``)
``alias.remove``   an alias was removed
``promote``        a version was promoted to a stage or alias (gates checked)
``rollback``       an alias went back to its previous target
``archive``        a version was archived (by hand, or by a production promotion)
``approve``        an approval of a version for a stage (``alias`` = the stage)
``reject``         a rejection of a version for a stage
``policy.set``     the registry's policy changed (``details.policy_version``)
``hook.failed``    a hook delivery failed after its retries (the event stands)
``delete``         a version was deleted (``to_*`` = the version; its tombstone
                   holds the same event: :mod:`casreg.ledger.tombstones`)
=================  ==========================================================
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from blake3 import blake3

from casreg.digest import Digest
from casreg.ledger.segments import append_event
from casreg.lineage import current_author, hostname
from casreg.records import AliasEvent, utcnow
from casreg.storage import ObjectStore

__all__ = [
    "POINTER_KINDS",
    "new_event",
    "derived_id",
    "record_event",
    "implied_events",
    "EventSink",
    "ignore_events",
]

_AFTER = timedelta(microseconds=1)  # an implied event sorts right after its cause
#: Kinds that move a pointer (their ``to_*`` fields are where the alias points after).
POINTER_KINDS = frozenset({"alias.set", "alias.remove", "promote", "rollback"})


class EventSink(Protocol):
    """Where an operation hands each event after recording it: the registry's hooks
    (:func:`casreg.governance.hooks.dispatch`). A sink never fails the event."""

    def __call__(self, event: Mapping[str, Any], /) -> None: ...


def ignore_events(event: Mapping[str, Any], /) -> None:
    """An :class:`EventSink` that drops every event (for tools and tests)."""


def new_event(
    kind: str,
    name: str,
    *,
    alias: str | None = None,
    to: tuple[Digest, int] | None = None,
    source: tuple[Digest, int] | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> AliasEvent:
    """An event by the current author on this host; ``to``/``source`` are (digest,
    version) pairs: what the event is about and, for moves, what it replaced."""
    return AliasEvent(
        event_id=event_id or uuid.uuid4().hex,
        time=time or utcnow(),
        kind=kind,
        name=name,
        alias=alias,
        from_digest=source[0] if source else None,
        to_digest=to[0] if to else None,
        from_version=source[1] if source else None,
        to_version=to[1] if to else None,
        author=current_author(),
        host=hostname(),
        reason=reason,
        details=dict(details) if details else None,
    )


def derived_id(event_id: str, role: str) -> str:
    """The id of an event implied by another (the archive a production promotion
    causes): deterministic, so whoever repairs a crash writes the very same event."""
    return blake3(f"{event_id}/{role}".encode()).hexdigest()[:32]


def record_event(
    store: ObjectStore,
    *,
    name: str,
    kind: str,
    alias: str | None = None,
    to: tuple[Digest, int] | None = None,
    source: tuple[Digest, int] | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    time: datetime | None = None,
    before: Callable[[AliasEvent], None] | None = None,
) -> AliasEvent:
    """Append an event that moves no pointer (approval, archive, policy change, failed
    hook) and return it; ``time``: the event's time if not now (an import); ``before``
    is called with the event before it is appended (a signer stores its signature)."""
    event = new_event(kind, name, alias=alias, to=to, source=source, reason=reason, details=details, time=time)
    if before is not None:
        before(event)
    append_event(store, event)
    return event


def implied_events(event: AliasEvent) -> list[AliasEvent]:
    """Events a pointer move implies and that are appended right after it: the archive
    of the version a production promotion (or rollback) replaced."""
    archived = (event.details or {}).get("archived")
    if not archived:
        return []
    if not isinstance(archived, Mapping) or not isinstance(archived.get("digest"), str) \
            or type(archived.get("version")) is not int:
        raise ValueError(f"event {event.event_id}: malformed 'archived' detail {str(archived)[:100]!r}")
    digest, version = str(archived["digest"]), int(str(archived["version"]))
    return [AliasEvent(
        event_id=derived_id(event.event_id, "archive"), time=event.time + _AFTER, kind="archive", name=event.name,
        alias=None, from_digest=None, to_digest=Digest(digest), from_version=None,
        to_version=version, author=event.author, host=event.host,
        reason=f"replaced in {event.alias} by {event.name}:{event.to_version}",
        details={"cause": event.event_id})]
