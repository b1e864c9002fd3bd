"""Detecting what no valid signed event explains (docs/signing.md, docs/audit.md): the
checks behind ``casreg verify``, the signature marker of ``casreg log`` and the
``signed``/``trusted`` fields of ``casreg resolve --json``.

Keys are the ``[keys]`` of the policy in force; ``trusted`` says whether that policy is
signed by a pinned admin key (:mod:`casreg.governance.trust`). Without ``[keys]`` signing
is not configured (opt-in) and nothing here reports a problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from casreg.errors import NotFoundError
from casreg.governance.event_signing import (
    SIGNED_KINDS,
    EventCheck,
    _Event,
    check_event,
    list_event_signatures,
    person_keys,
    signed_approvers,
)
from casreg.governance.policy import Policy, read_policy
from casreg.governance.signatures import PublicKey
from casreg.governance.trust import PolicyTrust, pinned_keys, policy_trust
from casreg.keys import event_key, parse_event_signature_key, pointer_key
from casreg.ledger.events import POINTER_KINDS
from casreg.ledger.history import read_all_events, read_events
from casreg.ledger.pointers import read_pointer_event, read_pointer_events
from casreg.ledger.segments import read_version
from casreg.records import AliasEvent, JsonValue
from casreg.storage import ObjectStore

__all__ = ["SigningState", "signing_state", "MoveCheck", "check_move", "check_entries", "SigningAudit",
           "audit_signed_events", "NOT_CONFIGURED"]

NOT_CONFIGURED = ("signing is not configured (opt-in): the policy has no [keys], so moves and approvals are not "
                  "checked against signatures (docs/signing.md)")


@dataclass(frozen=True)
class SigningState:
    """The keys events are checked with, the policy they come from, and its trust."""

    keys: dict[str, PublicKey]
    trust: PolicyTrust
    policy_version: int | None
    root: dict[str, PublicKey] = field(default_factory=dict)  # the pinned admin keys

    @property
    def configured(self) -> bool:
        return bool(self.keys)

    @property
    def trusted(self) -> bool:
        """The keys can be relied on: the policy is signed by a pinned root (with no root
        pinned the keys are the bucket's word, so never trusted)."""
        return self.trust.trusted


def signing_state(store: ObjectStore) -> SigningState:
    """The policy's keys and trust, never failing on an untrusted policy (it is reported)."""
    root = pinned_keys()
    trust = policy_trust(store, root)
    current = read_policy(store)
    keys = person_keys(current.doc) if current is not None and "keys" in current.doc else {}
    return SigningState(keys, trust, current.version if current is not None else None,
                        {k.fingerprint: k for k in root})


@dataclass(frozen=True)
class MoveCheck:
    """The last move of one alias and what checking its signature found."""

    event: AliasEvent
    check: EventCheck
    trusted: bool

    def to_dict(self) -> dict[str, JsonValue]:
        return {"event_id": self.event.event_id, "kind": self.event.kind, "signed": self.check.signed,
                "trusted": self.trusted and self.check.signed, "signature": self.check.to_dict()}


def check_move(store: ObjectStore, name: str, alias: str, state: SigningState | None = None) -> MoveCheck | None:
    """The signature check of ``name@alias``'s last move (``None``: never set)."""
    state = state if state is not None else signing_state(store)
    event = read_pointer_event(store, name, alias)
    if event is None:
        return None
    return MoveCheck(event, check_event(store, event, state.keys), state.trusted)


def check_entries(store: ObjectStore, entries: Iterable[_Event],
                  state: SigningState | None = None) -> dict[str, EventCheck]:
    """The signature check of every signable entry of a log, by event id (one listing of
    the event signatures, then a read of each signature object found)."""
    state = state if state is not None else signing_state(store)
    listed = list_event_signatures(store)
    admin = state.root | state.keys  # a policy change is an admin's: the pinned keys check it too
    return {e.event_id: check_event(store, e, admin if e.kind == "policy.set" else state.keys,
                                    listed=listed.get(e.event_id, []))
            for e in entries if e.kind in SIGNED_KINDS and e.event_id is not None
            and not (e.details or {}).get("cause")}  # an implied archive: its cause's signature covers it


@dataclass
class SigningAudit:
    """What ``verify`` found about signed events: ``problems`` (key, one line each) and
    ``notes`` (warnings: signing not configured, no root pinned, ...)."""

    configured: bool
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _who(e: AliasEvent) -> str:
    return f"{e.kind} by {e.author} at {e.time.isoformat(timespec='seconds')}"


def _previous_moves(events: list[AliasEvent]) -> dict[str, str | None]:
    """Each move's previous move of the same alias (event id -> its event id or None)."""
    last: dict[tuple[str, str], str] = {}
    out: dict[str, str | None] = {}
    for e in events:  # oldest first
        if e.kind in POINTER_KINDS and e.alias is not None:
            out[e.event_id] = last.get((e.name, e.alias))
            last[e.name, e.alias] = e.event_id
    return out


def _audit_pointer(store: ObjectStore, state: SigningState, policy: Policy, move: AliasEvent,
                   listed: dict[str, list[str]], audit: SigningAudit) -> None:
    assert move.alias is not None
    key = pointer_key(move.name, move.alias)
    check = check_event(store, move, state.keys, listed=listed.get(move.event_id, []))
    where = f"{move.name}@{move.alias}"
    if not check.signed:
        audit.problems.append((key, f"no valid signed event explains {where}: its last move ({_who(move)}) is "
                                    f"{check.line()}"))
        return
    events = read_events(store, move.name)
    previous = _previous_moves(events).get(move.event_id)
    if check.previous != previous:
        audit.problems.append((key, f"the signed last move of {where} names previous move {check.previous or 'none'}"
                                    f", but the ledger's is {previous or 'none'} (replayed or reordered)"))
    gate = policy.gate(move.alias)
    if gate is None or move.to_version is None:
        return
    if not policy.allowed(check.signer or "", "promote", move.alias)[0]:
        audit.problems.append((key, f"{where} was moved by {check.signer}, whose key holds no role allowed to move it"))
    if gate.approvals:
        try:
            version = read_version(store, move.name, move.to_version)
        except NotFoundError:
            return  # a pointer at no version: verify's own checks name it
        approvers = signed_approvers(store, policy, events, version, move.alias, state.keys,
                                     self_approval=gate.self_approval)
        if len(approvers) < gate.approvals:
            audit.problems.append((key, f"{where} points at {version.ref}, which has {len(approvers)} signed "
                                        f"approval(s) for {move.alias} of the {gate.approvals} policy version "
                                        f"{policy.version} requires"))


def audit_signed_events(store: ObjectStore) -> SigningAudit:
    """Every pointer whose current state no valid signed event explains (unsigned, badly
    signed, signed for another previous state, moved by a key not allowed to, or at a
    version without the gate's signed approvals), every event signature object by a
    known key that does not verify against its event, and an untrusted policy."""
    state = signing_state(store)
    audit = SigningAudit(state.configured)
    if state.trust.pinned and not state.trust.trusted:
        audit.problems.append(("policy", state.trust.detail))
    elif not state.trust.pinned and state.configured:
        audit.notes.append(state.trust.detail)
    if not state.configured:
        audit.notes.append(NOT_CONFIGURED)
        return audit
    current = read_policy(store)
    listed = list_event_signatures(store)
    for move in read_pointer_events(store, None):
        policy = current.for_model(move.name) if current is not None else Policy()
        _audit_pointer(store, state, policy, move, listed, audit)
    events = {e.event_id: e for e in read_all_events(store, SIGNED_KINDS | {"policy.restore"})}
    for eid, keys in sorted(listed.items()):
        event = events.get(eid)
        if event is None:
            audit.notes.append(f"event signature(s) {keys[0]} sign an event the ledger does not hold (a move that "
                               "failed after signing, or a deleted event)")
            continue
        check = check_event(store, event, state.keys, listed=keys)
        if check.status == "invalid":
            audit.problems.append((check.key or keys[0], f"{check.detail} (event {event_key(event)})"))
        elif check.status == "verified" and len(keys) > 1:
            for other in keys:
                parsed = parse_event_signature_key(other)
                if parsed is not None and parsed[1] in state.keys and other != check.key:
                    again = check_event(store, event, state.keys, listed=[other])
                    if again.status == "invalid":
                        audit.problems.append((other, f"{again.detail} (event {event_key(event)})"))
    return audit
