"""Recording the stage and alias state another registry had: the moves of an import
(``casreg import mlflow``, docs/migrate-mlflow.md).

An imported move is an ordinary ``alias.set`` / ``alias.remove`` pointer move (or an
``archive`` event) whose ``details["import"]`` names where it came from, and whose time
is the time the other system gives for it (never later than now, never before the
version existed or before the alias's previous move, so the history stays ordered). The
rules still apply, honestly:

- the importing user (``current_author()``) needs the permission the move needs
  (``promote`` on the alias, ``archive``), as any move; the event's author is that user,
  since the other system records no actor for stage or alias changes;
- the policy's gates for the alias are evaluated as for a promotion; a move that fails
  them is **refused** (reported, nothing changed) unless the caller passes
  ``bypass_gates``, which moves it anyway and lists the failed rules in
  ``details["import"]["bypassed_gates"]`` for the audit trail;
- an import never overrides casreg's own decisions: it moves a pointer only while the
  pointer was never set or its last move was itself an import (outcome ``kept``
  otherwise), and ``archive`` is refused while an alias holds the version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from casreg.errors import InvalidInputError
from casreg.governance.lifecycle import evaluate, gate_refusal, held_by, version_of
from casreg.governance.state import archived_versions, check_stage_name, policy_for
from casreg.ledger.events import EventSink, record_event
from casreg.ledger.history import read_events
from casreg.ledger.pointers import confirm_event, move_alias, read_pointer_event, read_pointer_events
from casreg.lineage import current_author
from casreg.records import AliasEvent, JsonValue, iso_utc, utcnow
from casreg.refs import validate_alias, validate_name
from casreg.storage import ObjectStore

__all__ = ["IMPORT_DETAIL", "ImportedMove", "Outcome", "import_archive", "import_move", "is_imported"]

#: The key of ``AliasEvent.details`` that marks an imported move and names its origin.
IMPORT_DETAIL = "import"
_AFTER = timedelta(microseconds=1)

Outcome = Literal["moved", "removed", "archived", "unchanged", "kept", "refused"]


@dataclass(frozen=True, slots=True)
class ImportedMove:
    """What an imported move did: ``moved``/``removed``/``archived`` (``event`` is the
    recorded event), ``unchanged`` (already so), ``kept`` (casreg moved the alias itself
    since; left alone) or ``refused`` (gates, a held version; ``detail`` says why)."""

    name: str
    alias: str | None  # None for an archive
    version: int | None  # the target; None for a removal
    outcome: Outcome
    detail: str = ""
    event: AliasEvent | None = None

    def to_dict(self) -> dict[str, JsonValue]:
        return {"name": self.name, "alias": self.alias, "version": self.version, "outcome": self.outcome,
                "detail": self.detail, "event": self.event.to_dict() if self.event else None}


def is_imported(event: AliasEvent | None) -> bool:
    """Whether ``event`` was recorded by an import."""
    return event is not None and isinstance((event.details or {}).get(IMPORT_DETAIL), Mapping)


def _when(time: datetime, *, not_before: list[datetime]) -> datetime:
    """``time`` made timezone-aware (UTC if naive), at most now, and after every
    ``not_before`` (so an imported event never precedes what it follows)."""
    t = min(time if time.tzinfo else time.replace(tzinfo=utcnow().tzinfo), utcnow())
    for floor in not_before:
        if t <= floor:
            t = floor + _AFTER
    return t


def _origin(origin: Mapping[str, str]) -> dict[str, Any]:
    if not origin:
        raise InvalidInputError("an imported move needs its origin (for example source=mlflow)")
    return {str(k): str(v) for k, v in origin.items()}


def import_move(store: ObjectStore, name: str, alias: str, ref: str | int | None, *, notify: EventSink,
                time: datetime, origin: Mapping[str, str], bypass_gates: bool = False,
                reason: str | None = None) -> ImportedMove:
    """Point ``name@alias`` at ``ref`` (a version of ``name``), or remove it (``None``),
    as an import recording another registry's state at ``time``; see the module doc for
    the rules. Raises :class:`~casreg.errors.PolicyError` if the importing user may not
    move the alias, :class:`InvalidInputError` for an alias the policy does not allow."""
    validate_name(name)
    validate_alias(alias)
    if alias == "archived":
        raise InvalidInputError("archived is a state of versions, not an alias: import the archive instead")
    policy = policy_for(store, name)
    check_stage_name(alias, policy)
    policy.require_permission(current_author(), "promote", alias, what=f"moving {name}@{alias}")
    details: dict[str, Any] = {IMPORT_DETAIL: _origin(origin)}
    seen = read_pointer_event(store, name, alias)
    if seen is not None:
        confirm_event(store, seen)
    current = seen.to_version if seen is not None and seen.to_digest is not None else None
    target = version_of(store, name, ref) if ref is not None else None
    number = target.version if target is not None else None
    if number == current:
        return ImportedMove(name, alias, number, "unchanged")
    if seen is not None and not is_imported(seen):
        return ImportedMove(name, alias, number, "kept",
                            f"{name}@{alias} was last moved in casreg ({seen.kind} by {seen.author} at "
                            f"{iso_utc(seen.time)}), not by an import; left as it is")
    floors = [seen.time] if seen is not None else []
    if target is not None:
        checks = evaluate(store, policy, target, alias, lambda: read_events(store, name))
        failed = [c for c in checks if not c.passed]
        if failed and not bypass_gates:
            return ImportedMove(name, alias, number, "refused", str(gate_refusal(target, alias, checks, policy)))
        if failed:
            details[IMPORT_DETAIL]["bypassed_gates"] = [c.rule for c in failed]
        if policy.version:
            details["policy_version"] = policy.version
            details["checks"] = [c.rule for c in checks]
        floors.append(target.created_at)
    event = move_alias(store, name, alias, (target.digest, target.version) if target is not None else None,
                       reason=reason, details=details, seen=seen, time=_when(time, not_before=floors))
    notify(event.to_dict())
    return ImportedMove(name, alias, number, "moved" if target is not None else "removed", event=event)


def import_archive(store: ObjectStore, name: str, ref: str | int, *, notify: EventSink, time: datetime,
                   origin: Mapping[str, str], reason: str | None = None) -> ImportedMove:
    """Archive a version of ``name`` as an import recording that it was archived at
    ``time`` in another registry: needs the ``archive`` permission; ``refused`` while an
    alias holds the version, ``unchanged`` if it is archived already."""
    validate_name(name)
    version = version_of(store, name, ref)
    policy_for(store, name).require_permission(current_author(), "archive", None, what=f"archiving {version.ref}")
    moves = read_pointer_events(store, name)
    holding = held_by(store, name, version.version, moves=moves)
    if holding:
        return ImportedMove(name, None, version.version, "refused",
                            f"{version.ref} is at {', '.join(f'{name}@{a}' for a in holding)}; not archived")
    if archived_versions(read_events(store, name, pointers=moves)).get(version.version) is not None:
        return ImportedMove(name, None, version.version, "unchanged")
    event = record_event(store, name=name, kind="archive", to=(version.digest, version.version), reason=reason,
                         details={IMPORT_DETAIL: _origin(origin)},
                         time=_when(time, not_before=[version.created_at]))
    notify(event.to_dict())
    return ImportedMove(name, None, version.version, "archived", event=event)
