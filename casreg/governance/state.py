"""The lifecycle state of versions, read from a model's events: approvals and
rejections per stage, archived versions, which versions a stage holds.

Nothing here writes; :mod:`casreg.governance.lifecycle` moves versions and
:mod:`casreg.governance.history` tells the story.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from casreg.concurrency import map_concurrently
from casreg.errors import InvalidInputError, UnknownStageError
from casreg.governance.policy import STAGES, Policy, read_policy
from casreg.keys import pointer_key
from casreg.ledger.events import POINTER_KINDS
from casreg.ledger.history import read_all_events, read_events
from casreg.ledger.pointers import confirm_pointer, read_pointer
from casreg.records import AliasEvent, AliasPointer, JsonValue, iso_utc
from casreg.refs import validate_alias
from casreg.storage import ObjectStore

__all__ = ["VersionState", "archived_everywhere", "archived_versions", "check_promotable", "check_stage_name",
           "decisions", "policy_for", "stage_members", "version_state", "was_in"]


def policy_for(store: ObjectStore, name: str | None) -> Policy:
    """The policy in force for model ``name`` (the registry-wide part for ``None``); an
    empty policy where the registry has none."""
    current = read_policy(store)
    return current.for_model(name) if current is not None else Policy()


def check_stage_name(stage: str, policy: Policy | None = None) -> None:
    """A valid alias name that is not a likely typo of a stage (``stagign``), and, if the
    policy lists the aliases it allows, one of those."""
    validate_alias(stage)
    if stage in STAGES:
        return
    close = difflib.get_close_matches(stage, STAGES, n=1, cutoff=0.75)
    if close and stage.startswith(close[0]) and stage[len(close[0])] in "-_0123456789":
        close = []  # a deliberate variant: production-eu, staging2
    if close:
        raise InvalidInputError(f"unknown stage {stage!r}: did you mean {close[0]!r}? (stages: {', '.join(STAGES)}; "
                                "other aliases must not look like one)")
    if policy is not None and policy.aliases is not None and stage not in policy.aliases:
        raise InvalidInputError(f"alias {stage!r} is not allowed by policy version {policy.version} "
                                f"(stages: {', '.join(STAGES)}; aliases: {', '.join(policy.aliases) or 'none'})")


def check_promotable(stage: str, policy: Policy) -> None:
    """``promote`` moves only the stages and the aliases ``policy`` gates
    (``[gates.champion]``); anything else is a :class:`UnknownStageError` naming the
    closest of those (``prod``: did you mean ``production``?). Free-form aliases are
    moved by ``set_alias``, which the policy's alias list and gates still govern."""
    if stage in STAGES or stage in policy.gates:
        return
    gated = sorted(a for a in policy.gates if a not in STAGES)
    choices = [*STAGES, *gated]
    close = difflib.get_close_matches(stage, choices, n=1, cutoff=0.6) or [c for c in choices if c.startswith(stage)]
    suggestion = close[0] if close else None
    guess = f"did you mean {suggestion!r}? " if suggestion else ""
    raise UnknownStageError(f"unknown stage {stage!r}: {guess}promote moves the stages ({', '.join(STAGES)}) and "
                            f"the aliases the policy gates ({', '.join(gated) or 'none'}); other aliases are moved "
                            "by set_alias, not promoted", stage=stage, suggestion=suggestion)


def decisions(events: Iterable[AliasEvent], version: int, stage: str) -> dict[str, AliasEvent]:
    """Each author's latest approval or rejection of ``version`` for ``stage``."""
    latest: dict[str, AliasEvent] = {}
    for e in events:
        if e.kind in ("approve", "reject") and e.alias == stage and e.to_version == version:
            latest[e.author] = e
    return latest


def was_in(events: Iterable[AliasEvent], version: int, stage: str) -> bool:
    return any(e.kind in POINTER_KINDS and e.alias == stage and e.to_version == version for e in events)


def archived_versions(events: Iterable[AliasEvent]) -> dict[int, AliasEvent]:
    """Versions whose latest lifecycle event archived them (a later move of any alias to a
    version brings it back), with that archive event."""
    state: dict[int, AliasEvent | None] = {}
    for e in sorted(events, key=lambda e: (e.time, e.event_id)):
        if e.to_version is None:
            continue
        if e.kind == "archive":
            state[e.to_version] = e
        elif e.kind in POINTER_KINDS:
            state[e.to_version] = None
    return {v: e for v, e in state.items() if e is not None}


def archived_everywhere(store: ObjectStore, name: str | None = None) -> dict[tuple[str, int], AliasEvent]:
    """Every archived version of ``name`` (of every model for ``None``), as ``(name,
    version)``, with the event that archived it: one read of the model's events (of the
    whole event table, for every model), whatever the number of versions."""
    return listing_state(store, name).archived


@dataclass(frozen=True, slots=True)
class ListingState:
    """What a listing shows beside the version records, from one read of the events."""

    archived: dict[tuple[str, int], AliasEvent]  # (name, version) -> the event that archived it
    #: The last move of each alias the ledger says is set but whose pointer is gone
    #: (:func:`casreg.ledger.pointers.deleted_pointers`): damage a listing must name.
    deleted: list[AliasEvent]


def listing_state(store: ObjectStore, name: str | None = None,
                  pointers: Iterable[AliasPointer] | None = None) -> ListingState:
    """Archived versions and deleted pointers of ``name`` (of every model for ``None``),
    from one read of the events. ``pointers``: the set aliases the caller has listed;
    an alias whose last move leaves it set but which is not among them is checked for
    existence (so one set meanwhile is not reported), and reported if its pointer is gone.
    Without ``pointers`` nothing is checked."""
    if name is not None:
        events = read_events(store, name)
    else:
        events = read_all_events(store, POINTER_KINDS | {"archive"})
    by_model: dict[str, list[AliasEvent]] = {}
    last: dict[tuple[str, str], AliasEvent] = {}
    for e in events:  # oldest first
        by_model.setdefault(e.name, []).append(e)
        if e.kind in POINTER_KINDS and e.alias:
            last[e.name, e.alias] = e
    archived = {(n, v): e for n, evs in by_model.items() for v, e in archived_versions(evs).items()}
    deleted: list[AliasEvent] = []
    if pointers is not None:
        listed = {(p.name, p.alias) for p in pointers}
        candidates = [e for key, e in sorted(last.items())
                      if key not in listed and e.kind != "alias.remove" and e.to_digest is not None]
        there = map_concurrently(lambda e: store.exists(pointer_key(e.name, e.alias or "")), candidates)
        deleted = [e for e, exists in zip(candidates, there) if not exists]
    return ListingState(archived, deleted)


@dataclass(frozen=True, slots=True)
class VersionState:
    """Where a version stands in the lifecycle: archived or not, and the standing
    approvals and rejections per stage (each author's latest decision)."""

    archived: AliasEvent | None
    approvals: dict[str, list[str]]
    rejections: dict[str, list[str]]

    def to_dict(self) -> dict[str, JsonValue]:
        return {"archived": self.archived is not None,
                "archived_at": iso_utc(self.archived.time) if self.archived else None,
                "archived_by": self.archived.author if self.archived else None,
                "approvals": self.approvals, "rejections": self.rejections}


def version_state(store: ObjectStore, name: str, version: int) -> VersionState:
    events = read_events(store, name)
    stages = sorted({e.alias for e in events if e.kind in ("approve", "reject") and e.to_version == version
                     and e.alias is not None})
    approvals: dict[str, list[str]] = {}
    rejections: dict[str, list[str]] = {}
    for stage in stages:
        decided = decisions(events, version, stage)
        if yes := sorted(a for a, e in decided.items() if e.kind == "approve"):
            approvals[stage] = yes
        if no := sorted(a for a, e in decided.items() if e.kind == "reject"):
            rejections[stage] = no
    return VersionState(archived_versions(events).get(version), approvals, rejections)


def stage_members(store: ObjectStore, name: str, stage: str) -> list[int]:
    """Version numbers in ``stage``: the one an alias points at, or every archived one."""
    if stage == "archived":
        return sorted(archived_versions(read_events(store, name)))
    p = read_pointer(store, name, stage)
    if p is not None:
        confirm_pointer(store, p)  # a lying pointer is an IntegrityError naming it, not a member
    return [p.version] if p else []
