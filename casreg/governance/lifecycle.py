"""Lifecycle: promotion through stages with gates and approvals, archive, rollback,
history and time travel. ``casreg.Registry`` exposes all of it; this module holds the
rules so the registry class stays a thin front.

Stages ``staging`` and ``production`` are aliases with a meaning: moving one checks the
policy's gates for it, and promoting to production archives the version it replaces
(recorded in the same pointer move, so a crash cannot separate the two). ``archived``
is a state of a version, not a pointer: nothing is ever deleted by the lifecycle.

Every move is a compare-and-swap against the exact pointer state the gates were checked
against: if someone else moves the alias in between, this move fails with a
:class:`ConflictError` naming the winner, and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from casreg.errors import ConflictError, InvalidInputError, PolicyError, UnknownReferenceError
from casreg.ledger.events import POINTER_KINDS, REGISTRY_EVENTS, read_events, record_event
from casreg.ledger.segments import list_versions, read_version
from casreg.lineage import current_author
from casreg.ledger.pointers import move_alias, read_pointer, read_pointer_event, read_pointer_events
from casreg.governance.policy import STAGES, GateResult, Policy, read_policy, write_policy
from casreg.records import AliasEvent, Version, _iso, utcnow
from casreg.refs import validate_alias, validate_name

if TYPE_CHECKING:
    from casreg.registry import Registry, Resolved

__all__ = [
    "Promotion",
    "LogEntry",
    "promote",
    "archive",
    "rollback",
    "decide",
    "history",
    "resolve_at",
    "parse_when",
    "archived_versions",
    "set_policy",
]

MAX_ANNOTATIONS = 32


@dataclass(frozen=True, slots=True)
class Promotion:
    """The outcome of a promotion (or of its ``dry_run``)."""

    name: str
    stage: str
    version: int
    digest: str
    checks: tuple[GateResult, ...]
    event: AliasEvent | None  # None for a dry run or when nothing had to change
    previous: int | None  # the version the stage pointed at before
    archived: int | None  # the previous version, archived by this promotion
    dry_run: bool = False
    changed: bool = True

    @property
    def allowed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "version": self.version, "digest": self.digest,
                "allowed": self.allowed, "dry_run": self.dry_run, "changed": self.changed,
                "previous": self.previous, "archived": self.archived,
                "checks": [c.to_dict() for c in self.checks],
                "event": self.event.to_dict() if self.event else None}


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
    details: Mapping[str, Any] = field(default_factory=dict)
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"time": _iso(self.time), "kind": self.kind, "name": self.name, "alias": self.alias,
                "from_version": self.from_version, "to_version": self.to_version, "author": self.author,
                "host": self.host, "reason": self.reason, "from_digest": self.from_digest,
                "to_digest": self.to_digest, "details": dict(self.details), "event_id": self.event_id}


# -- helpers ---------------------------------------------------------------------------------
def _policy(reg: Registry, name: str | None) -> Policy:
    current = read_policy(reg.store)
    return current.for_model(name) if current is not None else Policy()


def _check_stage_name(stage: str, policy: Policy | None = None) -> None:
    """A valid alias name that is not a likely typo of a stage (``stagign``), and, if the
    policy lists the aliases it allows, one of those."""
    import difflib

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


def _version(reg: Registry, name: str, ref: str | int) -> Version:
    target = reg._target(name, ref)
    assert target.version is not None
    return read_version(reg.store, name, target.version)


def clean_annotations(annotations: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (annotations or {}).items():
        if not isinstance(k, str) or not k or len(k) > 64 or any(c.isspace() for c in k):
            raise InvalidInputError(f"invalid annotation name {k!r}: non-empty, no spaces, at most 64 characters")
        text = str(v)
        if len(text) > 1024:
            raise InvalidInputError(f"annotation {k} is {len(text)} characters; at most 1024")
        out[k] = text
    if len(out) > MAX_ANNOTATIONS:
        raise InvalidInputError(f"{len(out)} annotations; at most {MAX_ANNOTATIONS}")
    return out


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


def evaluate(reg: Registry, policy: Policy, version: Version, stage: str,
             load_events: Callable[[], list[AliasEvent]]) -> list[GateResult]:
    """Every check of ``stage``'s gate on ``version``, passed or not (the model's events
    are read only if the gate needs them)."""
    gate = policy.gate(stage)
    if gate is None:
        return []
    events = load_events()  # approvals, rejections and stage history
    results: list[GateResult] = []
    currents: dict[str, Version | None] = {}
    for rule in gate.rules:
        current = None
        if rule.alias is not None:
            if rule.alias not in currents:
                p = read_pointer(reg.store, version.name, rule.alias)
                currents[rule.alias] = read_version(reg.store, version.name, p.version) if p else None
            current = currents[rule.alias]
            if current is not None and current.version == version.version:
                current = None  # compared with itself: nothing to beat
        ok, detail = rule.check(version, current)
        results.append(GateResult(rule.text, ok, detail))
    for before in gate.after:
        ok = was_in(events, version.version, before)
        detail = (f"{version.ref} was in {before}" if ok else
                  f"{version.ref} has never been in {before}; promote it to {before} first")
        results.append(GateResult(f"after {before}", ok, detail))
    if gate.approvals or any(e.kind == "reject" for e in decisions(events, version.version, stage).values()):
        decided = decisions(events, version.version, stage)
        rejected = [e for e in decided.values() if e.kind == "reject"]
        approvers = sorted(a for a, e in decided.items() if e.kind == "approve"
                           and (gate.self_approval or a != version.author))
        label = f"approvals >= {gate.approvals}"
        if rejected:
            r = rejected[-1]
            results.append(GateResult(label, False, f"{version.ref} was rejected for {stage} by {r.author} at "
                                                   f"{_iso(r.time)}" + (f": {r.reason}" if r.reason else "")))
        else:
            ok = len(approvers) >= gate.approvals
            who = f" ({', '.join(approvers)})" if approvers else ""
            more = "" if ok else (f"; needs {gate.approvals - len(approvers)} more: casreg approve "
                                  f"{version.name} {version.version} --stage {stage}")
            own = "" if gate.self_approval else " (the pusher's own approval does not count)"
            results.append(GateResult(label, ok, f"{len(approvers)} approval(s){who} of {gate.approvals}{own}{more}"))
    return results


def _refusal(version: Version, stage: str, checks: list[GateResult], policy: Policy) -> PolicyError:
    failed = [c for c in checks if not c.passed]
    text = "; ".join(f"rule '{c.rule}' failed: {c.detail}" for c in failed)
    return PolicyError(f"promotion of {version.ref} to {stage} refused by policy version {policy.version}: {text}")


# -- moving ----------------------------------------------------------------------------------
def promote(reg: Registry, name: str, ref: str | int, stage: str, *, reason: str | None = None,
            keep_previous: bool = False, dry_run: bool = False, annotations: Mapping[str, Any] | None = None,
            if_current: str | int | None = None, kind: str = "promote") -> Promotion:
    """Move ``name@stage`` to a version after checking the policy; see the module doc."""
    validate_name(name)
    validate_alias(stage)  # the grammar now; typos and the policy's alias list once the policy is read
    if stage == "archived":
        if dry_run or annotations:
            raise InvalidInputError("archived is a state, not an alias: use casreg archive NAME REF")
        archive(reg, name, ref, reason=reason)
        v = _version(reg, name, ref)
        return Promotion(name, stage, v.version, v.digest, (), None, None, v.version)
    notes = clean_annotations(annotations)
    version = _version(reg, name, ref)
    user = current_author()
    policy = _policy(reg, name)
    _check_stage_name(stage, policy)
    policy.require_permission(user, "promote", stage, what=f"moving {name}@{stage}")
    seen = read_pointer_event(reg.store, name, stage)  # the state the checks are made against
    current_version = seen.to_version if seen is not None and seen.to_digest is not None else None
    if if_current is not None:
        expected = reg._target(name, if_current).version
        if current_version != expected:
            by = f" (moved by {seen.author} at {_iso(seen.time)})" if seen is not None else ""
            where = f"{name}:{current_version}" if current_version else "unset"
            raise ConflictError(f"{name}@{stage} is at {where}{by}, not {name}:{expected}; nothing was changed")
    checks = evaluate(reg, policy, version, stage, lambda: read_events(reg.store, name))
    archive_previous = (stage == "production" and kind == "promote" and not keep_previous
                        and current_version is not None and current_version != version.version)
    archived = current_version if archive_previous else None
    if dry_run:
        return Promotion(name, stage, version.version, version.digest, tuple(checks), None, current_version,
                         archived, dry_run=True)
    if not all(c.passed for c in checks):
        raise _refusal(version, stage, checks, policy)
    if kind == "promote" and current_version == version.version and seen is not None and not notes:
        return Promotion(name, stage, version.version, version.digest, tuple(checks), None, current_version,
                         None, changed=False)
    details: dict[str, Any] = {}
    if notes:
        details["annotations"] = notes
    if policy.version:
        details["policy_version"] = policy.version
        details["checks"] = [c.rule for c in checks]
    if archive_previous:
        assert seen is not None and seen.to_digest is not None
        details["archived"] = {"version": current_version, "digest": seen.to_digest}
    event = move_alias(reg.store, name, stage, (version.digest, version.version), reason=reason,
                       kind=kind, details=details or None, seen=seen)
    reg._notify(event.to_dict())
    return Promotion(name, stage, version.version, version.digest, tuple(checks), event, current_version, archived)


def rollback(reg: Registry, name: str, alias: str, *, reason: str | None = None,
             keep_previous: bool = False) -> AliasEvent:
    """Move ``name@alias`` back to the target it had before its last move (also undoing a
    removal); a new recorded event, gated by permissions but not by gates: rolling back
    is the emergency exit."""
    validate_name(name)
    _check_stage_name(alias)
    last = read_pointer_event(reg.store, name, alias)
    if last is None:
        raise UnknownReferenceError(f"{name}@{alias} was never set; nothing to roll back")
    if last.from_digest is None or last.from_version is None:
        raise InvalidInputError(f"{name}@{alias} has no previous target to roll back to "
                                f"(its first move set it to {name}:{last.to_version})")
    policy = _policy(reg, name)
    policy.require_permission(current_author(), "promote", alias, what=f"rolling back {name}@{alias}")
    details: dict[str, Any] = {"undoes": last.event_id}
    leaving = last.to_version if last.to_digest is not None else None
    if alias == "production" and not keep_previous and leaving is not None and leaving != last.from_version:
        details["archived"] = {"version": leaving, "digest": last.to_digest}
    event = move_alias(reg.store, name, alias, (last.from_digest, last.from_version), reason=reason,
                       kind="rollback", details=details, seen=last)
    reg._notify(event.to_dict())
    return event


def archive(reg: Registry, name: str, ref: str | int, *, reason: str | None = None) -> AliasEvent:
    """Mark a version archived (kept, listed under ``--stage archived``); refused while an
    alias points at it, so nothing serving it loses its model."""
    validate_name(name)
    version = _version(reg, name, ref)
    _policy(reg, name).require_permission(current_author(), "archive", None, what=f"archiving {version.ref}")
    moves = read_pointer_events(reg.store, name)  # each alias's last move: read once, used twice
    holding = sorted(str(e.alias) for e in moves if e.to_digest is not None and e.to_version == version.version)
    if holding:
        raise InvalidInputError(f"{version.ref} is at {', '.join(f'{name}@{a}' for a in holding)}; "
                                "move those first (casreg promote or casreg alias rm), then archive it")
    events = read_events(reg.store, name, pointers=moves)
    already = archived_versions(events).get(version.version)
    if already is not None:
        raise InvalidInputError(f"{version.ref} is already archived (by {already.author} at {_iso(already.time)})")
    event = record_event(reg.store, name=name, kind="archive", to=(version.digest, version.version), reason=reason)
    reg._notify(event.to_dict())
    return event


def decide(reg: Registry, name: str, ref: str | int, stage: str, *, approve: bool,
           comment: str | None = None) -> AliasEvent:
    """Record the current author's approval (or rejection) of a version for ``stage``."""
    validate_name(name)
    validate_alias(stage)  # the grammar now; typos and the policy's alias list once the policy is read
    if stage == "archived":
        raise InvalidInputError("archiving takes no approvals; approve for staging, production or an alias")
    version = _version(reg, name, ref)
    user = current_author()
    policy = _policy(reg, name)
    _check_stage_name(stage, policy)
    word = "approve" if approve else "reject"
    policy.require_permission(user, "approve", stage, what=f"{word} {version.ref} for {stage}")
    gate = policy.gate(stage)
    if approve and gate is not None and not gate.self_approval and user == version.author:
        raise PolicyError(f"{user} pushed {version.ref}; policy version {policy.version} does not let a pusher "
                          f"approve their own version for {stage}")
    mine = decisions(read_events(reg.store, name, pointers=False), version.version, stage).get(user)
    if mine is not None and mine.kind == word:
        past = "approved" if approve else "rejected"
        raise InvalidInputError(f"{user} already {past} {version.ref} for {stage} at {_iso(mine.time)}")
    event = record_event(reg.store, name=name, kind=word, alias=stage, to=(version.digest, version.version),
                         reason=comment)
    reg._notify(event.to_dict())
    return event


def set_policy(reg: Registry, text: str, *, reason: str | None = None) -> tuple[int, AliasEvent]:
    """Store a new policy version (whoever the policy in force allows) and record it."""
    current = read_policy(reg.store)
    if current is not None:
        current.for_model(None).require_permission(current_author(), "policy", None, what="changing the policy")
    stored = write_policy(reg.store, text)
    event = record_event(reg.store, name=REGISTRY_EVENTS, kind="policy.set", reason=reason,
                         details={"policy_version": stored.version, "digest": stored.digest,
                                  "previous_version": current.version if current else None})
    reg._notify(event.to_dict())
    return stored.version, event


# -- reading history -------------------------------------------------------------------------
def _push_entry(v: Version) -> LogEntry:
    return LogEntry(time=v.created_at, kind="push", name=v.name, alias=None, from_version=None,
                    to_version=v.version, author=v.author, host=v.lineage.hostname, reason=v.description,
                    from_digest=v.lineage.parent, to_digest=v.digest, details={}, event_id=f"push-{v.name}-{v.version}")


def _event_entry(e: AliasEvent) -> LogEntry:
    return LogEntry(time=e.time, kind=e.kind, name=e.name, alias=e.alias, from_version=e.from_version,
                    to_version=e.to_version, author=e.author, host=e.host, reason=e.reason,
                    from_digest=e.from_digest, to_digest=e.to_digest, details=dict(e.details or {}),
                    event_id=e.event_id)


def history(reg: Registry, name: str, *, alias: str | None = None, kinds: Iterable[str] | None = None,
            since: datetime | None = None, until: datetime | None = None) -> list[LogEntry]:
    """Every push and event of ``name`` (and the registry's policy changes), oldest
    first; ``alias`` keeps only that alias's moves and approvals (and the archives its
    moves caused). ``name`` may be :data:`~casreg.ledger.events.REGISTRY_EVENTS` (``_registry``)
    for the registry's own events: policy and hooks changes and their failed deliveries."""
    registry_only = name == REGISTRY_EVENTS
    if not registry_only:
        validate_name(name)
    if alias is not None:
        _check_stage_name(alias)
    events = read_events(reg.store, name, registry_wide=alias is None and not registry_only,
                         pointers=not registry_only)
    versions = list_versions(reg.store, name) if alias is None and not registry_only else []
    if not versions and not events and alias is None:
        raise UnknownReferenceError(f"model {name!r} has no versions in {reg.url}")
    if alias is not None:
        mine = {e.event_id for e in events if e.alias == alias}
        events = [e for e in events if e.event_id in mine
                  or (e.kind == "archive" and (e.details or {}).get("cause") in mine)]
    entries = [_push_entry(v) for v in versions] + [_event_entry(e) for e in events]
    wanted = set(kinds) if kinds else None
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
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def resolve_at(reg: Registry, ref: str, at: datetime) -> Resolved:
    """What ``ref`` meant at time ``at``: an alias's target then, a model's latest version
    then; a number or digest must have existed by then."""
    from casreg.refs import RefKind, parse_ref
    from casreg.registry import Resolved

    r = parse_ref(ref)
    when = _iso(at)
    if r.name is None:
        raise InvalidInputError("--at needs a model name (NAME, NAME@ALIAS, NAME:N); a bare digest never changes")
    if at > utcnow():
        raise InvalidInputError(f"--at {when} is in the future")
    if r.kind is RefKind.ALIAS:
        assert r.alias is not None
        moves = [e for e in read_events(reg.store, r.name) if e.kind in POINTER_KINDS and e.alias == r.alias
                 and e.time <= at]
        if not moves or moves[-1].to_digest is None or moves[-1].to_version is None:
            raise UnknownReferenceError(f"{r} was not set at {when}")
        return Resolved(moves[-1].to_digest, r.name, moves[-1].to_version)
    if r.kind is RefKind.LATEST:
        existing = [v for v in list_versions(reg.store, r.name) if v.created_at <= at]
        if not existing:
            raise UnknownReferenceError(f"model {r.name!r} had no versions at {when}")
        return Resolved(existing[-1].digest, r.name, existing[-1].version)
    resolved = reg.resolve(r)
    assert resolved.version is not None and resolved.name is not None
    v = read_version(reg.store, resolved.name, resolved.version)
    if v.created_at > at:
        raise UnknownReferenceError(f"{r} did not exist yet at {when} (pushed {_iso(v.created_at)})")
    return resolved


@dataclass(frozen=True, slots=True)
class VersionState:
    """Where a version stands in the lifecycle: archived or not, and the standing
    approvals and rejections per stage (each author's latest decision)."""

    archived: AliasEvent | None
    approvals: dict[str, list[str]]
    rejections: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        return {"archived": self.archived is not None,
                "archived_at": _iso(self.archived.time) if self.archived else None,
                "archived_by": self.archived.author if self.archived else None,
                "approvals": self.approvals, "rejections": self.rejections}


def version_state(reg: Registry, name: str, version: int) -> VersionState:
    events = read_events(reg.store, name)
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


def stage_members(reg: Registry, name: str, stage: str) -> list[int]:
    """Version numbers in ``stage``: the one an alias points at, or every archived one."""
    if stage == "archived":
        return sorted(archived_versions(read_events(reg.store, name)))
    p = read_pointer(reg.store, name, stage)
    return [p.version] if p else []
