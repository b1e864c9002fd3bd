"""Lifecycle moves: promotion through stages with gates and approvals, archive,
rollback, approvals and policy changes. ``casreg.Registry`` exposes all of it; this
module holds the rules so the registry class stays a thin front (the state they are
checked against is read by :mod:`casreg.governance.state`).

Stages ``staging`` and ``production`` are aliases with a meaning: moving one checks the
policy's gates for it, and promoting to production archives the version it replaces
(recorded in the same pointer move, so a crash cannot separate the two). ``archived``
is a state of a version, not a pointer: nothing is ever deleted by the lifecycle.
``promote`` moves only the stages and the aliases the policy gates; other aliases are
moved by ``set_alias`` (an ``alias.set`` move, gated the same way but never archiving).

**A version an alias points at is never archived**, whichever call would archive it:
:func:`archive` refuses it, and the automatic archive of promoting to production or of
rolling production back skips a version another alias still holds (it is at staging,
say): the move happens, the version stays unarchived.

Every move is a compare-and-swap against the exact pointer state the gates were checked
against: if someone else moves the alias in between, this move fails with a
:class:`ConflictError` naming the winner, and nothing changes. Every recorded event is
handed to ``notify`` (the registry's hooks) after it is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from casreg.digest import Digest
from casreg.errors import ConflictError, InvalidInputError, PolicyError, UnknownReferenceError
from casreg.governance.event_signing import (
    EventSigner,
    load_signer,
    person_keys,
    pusher_persons,
    require_signer,
    signed_approvers,
    signs_event,
    signs_move,
)
from casreg.governance.policy import (
    DamagedPolicyError,
    GateResult,
    Policy,
    UnpinnedPolicyError,
    read_policy,
    restore_policy,
    write_policy,
)
from casreg.governance.signatures import PublicKey
from casreg.governance.state import (
    archived_versions,
    check_promotable,
    check_stage_name,
    decisions,
    was_in,
)
from casreg.keys import REGISTRY_EVENTS
from casreg.ledger.events import EventSink, record_event
from casreg.ledger.history import read_events
from casreg.ledger.pointers import (
    confirm_event,
    confirm_pointer,
    move_alias,
    read_pointer,
    read_pointer_event,
    read_pointer_events,
)
from casreg.ledger.resolve import resolve_in_model
from casreg.ledger.segments import read_version
from casreg.ledger.tombstones import deleted_error, read_tombstone
from casreg.lineage import current_author
from casreg.records import AliasEvent, JsonValue, Version, iso_utc
from casreg.refs import validate_alias, validate_name
from casreg.storage import ObjectStore

#: A private key file to sign an event with (``None``: ``$CASREG_SIGNING_KEY``, if set).
KeyPath = str | os.PathLike[str] | None

__all__ = [
    "Promotion",
    "version_of",
    "held_by",
    "gate_refusal",
    "promote",
    "archive",
    "rollback",
    "decide",
    "evaluate",
    "set_policy",
    "remove_alias",
    "clean_annotations",
]

MAX_ANNOTATIONS = 32


@dataclass(frozen=True, slots=True)
class Promotion:
    """The outcome of a promotion (or of its ``dry_run``)."""

    name: str
    stage: str
    version: int
    digest: Digest
    checks: tuple[GateResult, ...]
    event: AliasEvent | None  # None for a dry run or when nothing had to change
    previous: int | None  # the version the stage pointed at before
    archived: int | None  # the previous version, archived by this promotion
    dry_run: bool = False
    changed: bool = True

    @property
    def allowed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, JsonValue]:
        return {"name": self.name, "stage": self.stage, "version": self.version, "digest": self.digest,
                "allowed": self.allowed, "dry_run": self.dry_run, "changed": self.changed,
                "previous": self.previous, "archived": self.archived,
                "checks": [c.to_dict() for c in self.checks],
                "event": self.event.to_dict() if self.event else None}


# -- helpers ---------------------------------------------------------------------------------
def version_of(store: ObjectStore, name: str, ref: str | int) -> Version:
    """The record of a version of ``name`` (a number, reference or digest)."""
    target = resolve_in_model(store, name, ref)
    assert target.version is not None
    return read_version(store, name, target.version)


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


def rules_and_keys(store: ObjectStore, name: str | None) -> tuple[Policy, dict[str, PublicKey]]:
    """The policy in force for ``name`` and its ``[keys]`` (fingerprint -> key named for
    its person; empty: signing is not required). With a trust root pinned
    (:mod:`casreg.governance.trust`), a policy not signed by a pinned key is refused
    first (fail closed)."""
    from casreg.governance.trust import require_trusted_policy

    require_trusted_policy(store)
    current = read_policy(store)
    if current is None:
        return Policy(), {}
    return current.for_model(name), (person_keys(current.doc) if "keys" in current.doc else {})


def held_by(store: ObjectStore, name: str, version: int, *, besides: str | None = None,
            moves: list[AliasEvent] | None = None) -> list[str]:
    """The aliases of ``name`` (but ``besides``) that point at ``version``; "is it
    deployed?" is answered only by pointers the ledger agrees with (each is confirmed)."""
    if moves is None:
        moves = read_pointer_events(store, name)
    for move in moves:
        confirm_event(store, move)
    return sorted(str(e.alias) for e in moves
                  if e.to_digest is not None and e.to_version == version and e.alias != besides)


def evaluate(store: ObjectStore, policy: Policy, version: Version, stage: str,
             load_events: Callable[[], list[AliasEvent]], *,
             keys: Mapping[str, PublicKey] | None = None) -> list[GateResult]:
    """Every check of ``stage``'s gate on ``version``, passed or not (the model's events
    are read only if the gate needs them). ``keys`` (the policy's ``[keys]``, when it has
    them): approvals count only when signed by a key of a person allowed to approve,
    one per person, and the pusher is judged by key
    (:func:`~casreg.governance.event_signing.signed_approvers`)."""
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
                p = read_pointer(store, version.name, rule.alias)
                if p is not None:
                    confirm_pointer(store, p)  # compare with what the ledger records, not with a lie
                currents[rule.alias] = read_version(store, version.name, p.version) if p else None
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
        if keys:
            approvers = signed_approvers(store, policy, events, version, stage, keys,
                                         self_approval=gate.self_approval)
        label = f"approvals >= {gate.approvals}"
        if rejected:
            r = rejected[-1]
            results.append(GateResult(label, False, f"{version.ref} was rejected for {stage} by {r.author} at "
                                                   f"{iso_utc(r.time)}" + (f": {r.reason}" if r.reason else "")))
        else:
            ok = len(approvers) >= gate.approvals
            who = f" ({', '.join(approvers)})" if approvers else ""
            more = "" if ok else (f"; needs {gate.approvals - len(approvers)} more: casreg approve "
                                  f"{version.name} {version.version} --stage {stage}")
            own = "" if gate.self_approval else " (the pusher's own approval does not count)"
            if keys:
                own += " (only approvals signed by a key of the policy's [keys] count)"
            results.append(GateResult(label, ok, f"{len(approvers)} approval(s){who} of {gate.approvals}{own}{more}"))
    return results


def gate_refusal(version: Version, stage: str, checks: list[GateResult], policy: Policy) -> PolicyError:
    """The error refusing ``version``'s move to ``stage`` that names every failed gate."""
    failed = [c for c in checks if not c.passed]
    text = "; ".join(f"rule '{c.rule}' failed: {c.detail}" for c in failed)
    return PolicyError(f"promotion of {version.ref} to {stage} refused by policy version {policy.version}: {text}")


# -- moving ----------------------------------------------------------------------------------
def promote(store: ObjectStore, name: str, ref: str | int, stage: str, *, notify: EventSink, reason: str | None = None,
            keep_previous: bool = False, dry_run: bool = False, annotations: Mapping[str, Any] | None = None,
            if_current: str | int | None = None, kind: str = "promote", key: KeyPath = None) -> Promotion:
    """Move ``name@stage`` to a version after checking the policy; see the module doc.
    ``key``: the private key file the move is signed with (default
    ``$CASREG_SIGNING_KEY``); required, as a key of a person allowed to promote, when the
    policy has ``[keys]`` and gates ``stage``."""
    validate_name(name)
    validate_alias(stage)  # the grammar now; typos and the policy's alias list once the policy is read
    if stage == "archived":
        if dry_run or annotations:
            raise InvalidInputError("archived is a state, not an alias: archive the version instead")
        archive(store, name, ref, notify=notify, reason=reason)
        v = version_of(store, name, ref)
        return Promotion(name, stage, v.version, v.digest, (), None, None, v.version)
    notes = clean_annotations(annotations)
    version = version_of(store, name, ref)
    user = current_author()
    policy, keys = rules_and_keys(store, name)
    signer = load_signer(key)
    if kind == "promote":
        check_promotable(stage, policy)  # first: a typo is named with the stage it resembles
    check_stage_name(stage, policy)
    if not (keys and policy.gate(stage) is not None):  # else the signing key is who moves it (below)
        policy.require_permission(user, "promote", stage, what=f"moving {name}@{stage}")
    seen = read_pointer_event(store, name, stage)  # the state the checks are made against
    if seen is not None:
        confirm_event(store, seen)  # a pointer that lies about its target is refused, never replaced blindly
    current_version = seen.to_version if seen is not None and seen.to_digest is not None else None
    if if_current is not None:
        expected = resolve_in_model(store, name, if_current).version
        if current_version != expected:
            by = f" (moved by {seen.author} at {iso_utc(seen.time)})" if seen is not None else ""
            where = f"{name}:{current_version}" if current_version else "unset"
            raise ConflictError(f"{name}@{stage} is at {where}{by}, not {name}:{expected}; nothing was changed")
    checks = evaluate(store, policy, version, stage, lambda: read_events(store, name), keys=keys)
    archive_previous = (stage == "production" and kind == "promote" and not keep_previous
                        and current_version is not None and current_version != version.version
                        and not held_by(store, name, current_version, besides=stage))
    archived = current_version if archive_previous else None
    if dry_run:
        return Promotion(name, stage, version.version, version.digest, tuple(checks), None, current_version,
                         archived, dry_run=True)
    if not all(c.passed for c in checks):
        raise gate_refusal(version, stage, checks, policy)
    if keys and policy.gate(stage) is not None:
        require_signer(signer, keys, policy, "promote", stage, f"moving {name}@{stage}")
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
    event = move_alias(store, name, stage, (version.digest, version.version), reason=reason,
                       kind=kind, details=details or None, seen=seen, before_swap=signs_move(store, signer))
    notify(event.to_dict())
    return Promotion(name, stage, version.version, version.digest, tuple(checks), event, current_version, archived)


def rollback(store: ObjectStore, name: str, alias: str, *, notify: EventSink, reason: str | None = None,
             keep_previous: bool = False, key: KeyPath = None) -> AliasEvent:
    """Move ``name@alias`` back to the target it had before its last move (also undoing a
    removal); a new recorded event, gated by permissions but not by gates: rolling back
    is the emergency exit. When the policy has ``[keys]`` and gates ``alias``, the
    rollback must be signed (``key``, default ``$CASREG_SIGNING_KEY``) by a person allowed
    to promote there, and the version it returns to must have the gate's signed approvals
    (a version that predates the policy has none)."""
    validate_name(name)
    check_stage_name(alias)
    last = read_pointer_event(store, name, alias)
    if last is None:
        raise UnknownReferenceError(f"{name}@{alias} was never set; nothing to roll back")
    confirm_event(store, last, source=True)  # both where it is and where it would go back to
    if last.from_digest is None or last.from_version is None:
        raise InvalidInputError(f"{name}@{alias} has no previous target to roll back to "
                                f"(its first move set it to {name}:{last.to_version})")
    gone = read_tombstone(store, name, last.from_version)
    if gone is not None:  # a deleted version is never deployed again (docs/retention.md)
        raise deleted_error(gone, prefix=f"cannot roll {name}@{alias} back: ")
    policy, keys = rules_and_keys(store, name)
    signer = load_signer(key)
    gate = policy.gate(alias)
    if not (keys and gate is not None):  # else the signing key is who moves it (below)
        policy.require_permission(current_author(), "promote", alias, what=f"rolling back {name}@{alias}")
    if keys and gate is not None:
        require_signer(signer, keys, policy, "promote", alias, f"rolling back {name}@{alias}")
        if gate.approvals:
            target = read_version(store, name, last.from_version)
            approvers = signed_approvers(store, policy, read_events(store, name), target, alias, keys,
                                         self_approval=gate.self_approval)
            if len(approvers) < gate.approvals:
                raise PolicyError(f"rolling {name}@{alias} back to {target.ref} refused by policy version "
                                  f"{policy.version}: {target.ref} has {len(approvers)} signed approval(s) for "
                                  f"{alias} of {gate.approvals} (approve it with a key of the policy first)")
    details: dict[str, Any] = {"undoes": last.event_id}
    leaving = last.to_version if last.to_digest is not None else None
    if (alias == "production" and not keep_previous and leaving is not None and leaving != last.from_version
            and not held_by(store, name, leaving, besides=alias)):
        details["archived"] = {"version": leaving, "digest": last.to_digest}
    event = move_alias(store, name, alias, (last.from_digest, last.from_version), reason=reason,
                       kind="rollback", details=details, seen=last, before_swap=signs_move(store, signer))
    notify(event.to_dict())
    return event


def archive(store: ObjectStore, name: str, ref: str | int, *, notify: EventSink,
            reason: str | None = None, key: KeyPath = None) -> AliasEvent:
    """Mark a version archived (kept, listed under ``--stage archived``); refused while an
    alias points at it, so nothing serving it loses its model. ``key``: sign the event
    (default ``$CASREG_SIGNING_KEY``)."""
    validate_name(name)
    version = version_of(store, name, ref)
    rules_and_keys(store, name)[0].require_permission(current_author(), "archive", None,
                                                      what=f"archiving {version.ref}")
    moves = read_pointer_events(store, name)  # each alias's last move: read once, used twice
    holding = held_by(store, name, version.version, moves=moves)
    if holding:
        raise InvalidInputError(f"{version.ref} is at {', '.join(f'{name}@{a}' for a in holding)}; "
                                "move or remove those aliases first, then archive it")
    events = read_events(store, name, pointers=moves)
    already = archived_versions(events).get(version.version)
    if already is not None:
        raise InvalidInputError(f"{version.ref} is already archived (by {already.author} at {iso_utc(already.time)})")
    signer = load_signer(key)
    event = record_event(store, name=name, kind="archive", to=(version.digest, version.version), reason=reason,
                         before=signs_event(store, signer))
    notify(event.to_dict())
    return event


def decide(store: ObjectStore, name: str, ref: str | int, stage: str, *, notify: EventSink, approve: bool,
           comment: str | None = None, key: KeyPath = None) -> AliasEvent:
    """Record the current author's approval (or rejection) of a version for ``stage``,
    signed with ``key`` (default ``$CASREG_SIGNING_KEY``). When the policy has ``[keys]``
    the decision must be signed by a key of a person allowed to approve, and a pusher
    (judged by key: :func:`~casreg.governance.event_signing.pusher_persons`) may not
    approve their own version unless the gate allows it."""
    validate_name(name)
    validate_alias(stage)  # the grammar now; typos and the policy's alias list once the policy is read
    if stage == "archived":
        raise InvalidInputError("archiving takes no approvals; approve for staging, production or an alias")
    version = version_of(store, name, ref)
    user = current_author()
    policy, keys = rules_and_keys(store, name)
    signer = load_signer(key)
    check_stage_name(stage, policy)
    word = "approve" if approve else "reject"
    if not keys:  # with [keys] the signing key is who decides (below), not CASREG_USER
        policy.require_permission(user, "approve", stage, what=f"{word} {version.ref} for {stage}")
    gate = policy.gate(stage)
    if keys:
        person = require_signer(signer, keys, policy, "approve", stage, f"{word} {version.ref} for {stage}")
        if approve and gate is not None and not gate.self_approval and person in pusher_persons(store, version, keys):
            raise PolicyError(f"{person} pushed or signed {version.ref}; policy version {policy.version} does not "
                              f"let a pusher approve their own version for {stage} (judged by key)")
    if approve and gate is not None and not gate.self_approval and user == version.author:
        raise PolicyError(f"{user} pushed {version.ref}; policy version {policy.version} does not let a pusher "
                          f"approve their own version for {stage}")
    mine = decisions(read_events(store, name, pointers=False), version.version, stage).get(user)
    if mine is not None and mine.kind == word:
        past = "approved" if approve else "rejected"
        raise InvalidInputError(f"{user} already {past} {version.ref} for {stage} at {iso_utc(mine.time)}")
    event = record_event(store, name=name, kind=word, alias=stage, to=(version.digest, version.version),
                         reason=comment, before=signs_event(store, signer))
    notify(event.to_dict())
    return event


def set_policy(store: ObjectStore, text: str, *, notify: EventSink,
               reason: str | None = None, key: KeyPath = None) -> tuple[int, AliasEvent]:
    """Store a new policy version (whoever the policy in force allows) and record it.

    If the policy in force is damaged (:class:`~casreg.governance.policy.DamagedPolicyError`:
    its file is missing, altered or unreadable), nobody's permission can be checked, so
    the only change accepted is the restore: ``text`` must have exactly the digest the
    latest ``policy.set`` event pins; its file is put back and a ``policy.restore`` event
    recorded (returned with the restored version's number). Anything else fails closed
    with the damage named. If a stored policy version is newer than the latest pinned one
    (:class:`~casreg.governance.policy.UnpinnedPolicyError`), setting the policy again is
    what repairs it, allowed by the latest pinned policy (or by nobody's, if none is).

    ``key`` (default ``$CASREG_SIGNING_KEY``) signs the ``policy.set`` (or ``policy.restore``)
    event, whose claims
    include the policy's version and digest: signed by an admin key that readers pin
    (:mod:`casreg.governance.trust`), this is what makes the policy trusted. Where a trust
    root is pinned, a policy not signed by a pinned key is refused here too.
    """
    try:
        current = read_policy(store)
    except DamagedPolicyError as err:
        data = text.encode("utf-8")
        if Digest.of(data) != err.pin.digest:
            raise DamagedPolicyError(f"{err} (the policy given has digest {Digest.of(data)})", err.pin) from None
        from casreg.governance.trust import require_root_signer

        restorer = load_signer(key)
        require_root_signer(restorer, "restoring the policy")
        restore_policy(store, err.pin, data)
        event = record_event(store, name=REGISTRY_EVENTS, kind="policy.restore", reason=reason,
                             details={"policy_version": err.pin.version, "digest": err.pin.digest,
                                      "pinned_by": err.pin.event.event_id}, before=signs_event(store, restorer))
        notify(event.to_dict())
        return err.pin.version, event
    except UnpinnedPolicyError as err:  # set it again, as the latest pinned policy allows
        current = err.pinned
    if current is not None:
        current.for_model(None).require_permission(current_author(), "policy", None, what="changing the policy")
    signer = load_signer(key)
    _check_root(signer)
    stored = write_policy(store, text, after=current.version if current else 0)
    event = record_event(store, name=REGISTRY_EVENTS, kind="policy.set", reason=reason,
                         details={"policy_version": stored.version, "digest": stored.digest,
                                  "previous_version": current.version if current else None},
                         before=signs_event(store, signer))
    notify(event.to_dict())
    return stored.version, event


def _check_root(signer: EventSigner | None) -> None:
    """Where a trust root is pinned, a policy must be signed by a pinned key: anything
    else would be refused by every reader who pinned it."""
    from casreg.governance.trust import TRUSTED_KEYS_ENV, pinned_keys

    root = pinned_keys()
    if root and (signer is None or signer.public.fingerprint not in {k.fingerprint for k in root}):
        who = f"key {signer.public.short}" if signer is not None else "an unsigned policy"
        raise PolicyError(f"a trust root is pinned here ({TRUSTED_KEYS_ENV} or the trust file) and {who} is not "
                          "one of its keys: readers who pin it would refuse this policy; sign it with a pinned "
                          "admin key (--key ADMIN_KEY)")


def remove_alias(store: ObjectStore, name: str, alias: str, *, notify: EventSink, reason: str | None = None,
                 key: KeyPath = None) -> AliasEvent:
    """Remove ``name@alias`` (an ``alias.remove`` move; the versions are untouched),
    signed with ``key`` (default ``$CASREG_SIGNING_KEY``). When the policy has ``[keys]``
    and gates ``alias``, the removal must be signed by a person allowed to promote there
    (taking a stage down is a move like any other); else the current author needs the
    permission to move it."""
    policy, keys = rules_and_keys(store, name)
    signer = load_signer(key)
    if keys and policy.gate(alias) is not None:
        require_signer(signer, keys, policy, "promote", alias, f"removing {name}@{alias}")
    else:
        policy.require_permission(current_author(), "promote", alias, what=f"removing {name}@{alias}")
    event = move_alias(store, name, alias, None, reason=reason, before_swap=signs_move(store, signer))
    notify(event.to_dict())
    return event
