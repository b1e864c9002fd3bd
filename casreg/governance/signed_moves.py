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
from datetime import datetime

from casreg.digest import Digest
from casreg.errors import CasregError, NotFoundError
from casreg.governance.event_signing import (
    ADMIN_KINDS,
    SIGNED_KINDS,
    EventCheck,
    _Event,
    check_event,
    list_event_signatures,
    person_keys,
    signed_approvers,
)
from casreg.governance.policy import Policy, PolicyFile, read_policy
from casreg.governance.signatures import PublicKey
from casreg.governance.trust import PolicyTrust, pinned_keys, policy_trust
from casreg.keys import HOOKS_KEY, event_key, parse_event_signature_key, pointer_key, tombstone_key
from casreg.ledger.events import POINTER_KINDS
from casreg.ledger.history import read_all_events, read_events
from casreg.ledger.pointers import read_pointer_event, read_pointer_events
from casreg.ledger.segments import read_version
from casreg.records import AliasEvent, JsonValue
from casreg.storage import ObjectStore

__all__ = ["SigningState", "signing_state", "MoveCheck", "check_move", "check_entries", "SigningAudit",
           "audit_signed_events", "audit_version", "keyed_since", "NOT_CONFIGURED"]

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
    return {e.event_id: check_event(store, e, admin if e.kind in ADMIN_KINDS else state.keys,
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
        imported = " (an imported move: unsigned history from another registry, docs/signing.md)" if (
            (move.details or {}).get("import")) else ""
        audit.problems.append((key, f"no valid signed event explains {where}: its last move ({_who(move)}){imported}"
                                    f" is {check.line()}"))
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


def _begin_audit(store: ObjectStore) -> tuple[SigningState, SigningAudit]:
    """The signing state, and an audit holding what the policy's trust says (an untrusted
    policy under a pinned root is a problem; no root pinned, a note) and, when signing is
    not configured, the note that says so (nothing else is then checked)."""
    state = signing_state(store)
    audit = SigningAudit(state.configured)
    if state.trust.pinned and not state.trust.trusted:
        audit.problems.append(("policy", state.trust.detail))
    elif not state.trust.pinned and state.configured:
        audit.notes.append(state.trust.detail)
    if not state.configured:
        audit.notes.append(NOT_CONFIGURED)
    return state, audit


def audit_signed_events(store: ObjectStore) -> SigningAudit:
    """Every pointer whose current state no valid signed event explains (unsigned, badly
    signed, signed for another previous state, moved by a key not allowed to, or at a
    version without the gate's signed approvals), every event signature object by a
    known key that does not verify against its event, and an untrusted policy."""
    state, audit = _begin_audit(store)
    if not state.configured:
        return audit
    current = read_policy(store)
    listed = list_event_signatures(store)
    for move in read_pointer_events(store, None):
        policy = current.for_model(move.name) if current is not None else Policy()
        _audit_pointer(store, state, policy, move, listed, audit)
    events = {e.event_id: e for e in read_all_events(store, SIGNED_KINDS)}
    admin = state.root if state.root else state.root | state.keys
    _audit_admin_and_deletes(store, state, current, list(events.values()), listed, audit)
    for eid, keys in sorted(listed.items()):
        event = events.get(eid)
        if event is None:
            audit.notes.append(f"event signature(s) {keys[0]} sign an event the ledger does not hold (a move that "
                               "failed after signing, or a deleted event)")
            continue
        check = check_event(store, event, admin if event.kind in ADMIN_KINDS else state.keys, listed=keys)
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


def keyed_since(store: ObjectStore, events: Iterable[AliasEvent]) -> datetime | None:
    """When the registry's policy first had ``[keys]``: the time of the earliest
    ``policy.set`` whose policy version has them (``None``: none ever did). Events older
    than that were made before signing was asked for, and are not reported unsigned."""
    for e in sorted((e for e in events if e.kind == "policy.set"), key=lambda e: e.time):
        number = (e.details or {}).get("policy_version")
        if not isinstance(number, int):
            continue
        try:
            stored = read_policy(store, number)
        except CasregError:  # a damaged policy version: verify's policy checks name it
            continue
        if stored is not None and "keys" in stored.doc:
            return e.time
    return None


def _audit_admin_and_deletes(store: ObjectStore, state: SigningState, current: PolicyFile | None,
                             events: list[AliasEvent], listed: dict[str, list[str]], audit: SigningAudit) -> None:
    """The registry-wide signed kinds: the hooks config in force must be explained by a
    ``hooks.set`` signed by an admin (a pinned root key, else a key of the policy's
    ``[keys]`` allowed to change the policy), whatever its age; every ``delete`` and
    ``policy.restore`` since the policy got ``[keys]`` must be signed (a delete by a key
    allowed to delete)."""
    admin = state.root if state.root else state.keys
    policy = current.for_model(None) if current is not None else Policy()
    since = keyed_since(store, events)
    hooks = store.read_versioned(HOOKS_KEY)
    if hooks is not None:
        sets = [e for e in events if e.kind == "hooks.set"]
        last = max(sets, key=lambda e: e.time) if sets else None
        digest = Digest.of(hooks.data)
        if last is None or str((last.details or {}).get("digest")) != str(digest):
            audit.problems.append((HOOKS_KEY, f"the hooks config ({digest}) was written without a hooks.set event "
                                              "that names it (a raw write to the store)"))
        else:
            check = check_event(store, last, admin, listed=listed.get(last.event_id, []))
            who = "a pinned admin key" if state.root else "a key allowed to change the policy"
            if not check.signed or (not state.root and not policy.allowed(check.signer or "", "policy")[0]):
                audit.problems.append((HOOKS_KEY, f"the hooks config in force ({_who(last)}) is not signed by {who}: "
                                                  f"{check.line()} (set it again: casreg hooks set FILE --key KEY)"))
    for e in events:
        if since is None or e.kind not in ("delete", "policy.restore"):
            continue
        if e.kind == "delete":
            assert e.to_version is not None
            where = tombstone_key(e.name, e.to_version)
            created = _created(store, e)
            if e.time < since and (created is None or created < since):
                continue  # deleted before signing was asked for
            check = check_event(store, e, state.keys, listed=listed.get(e.event_id, []))
            rules = current.for_model(e.name) if current is not None else Policy()
            if not check.signed:
                audit.problems.append((where, f"the deletion of {e.name}:{e.to_version} ({_who(e)}) is "
                                              f"{check.line()}; the policy has [keys], so deletions are signed"))
            elif not rules.allowed(check.signer or "", "delete")[0]:
                audit.problems.append((where, f"{e.name}:{e.to_version} was deleted by {check.signer}, whose key "
                                              "holds no role allowed to delete"))
        elif e.time >= since:
            check = check_event(store, e, state.root | state.keys, listed=listed.get(e.event_id, []))
            if not check.signed or (state.root and check.fingerprint not in state.root):
                audit.problems.append((event_key(e), f"the policy restore {_who(e)} is {check.line()}"
                                                     + (" (not by a pinned admin key)" if check.signed else "")))


def _created(store: ObjectStore, e: AliasEvent) -> datetime | None:
    """When the version a ``delete`` deletes was pushed (``None``: unreadable)."""
    try:
        return read_version(store, e.name, e.to_version or 0).created_at
    except CasregError:
        return None


def audit_version(store: ObjectStore, name: str, number: int) -> SigningAudit:
    """The signing checks of :func:`audit_signed_events` that concern version ``number``
    of ``name`` (``verify REF``): the trust of the policy; the version's own signatures
    (one by a key of the policy's ``[keys]`` that does not verify is a problem); the last
    move of every alias of ``name`` that points at it (signed, by a key allowed to move
    it, naming the ledger's previous move, with the gate's signed approvals); and every
    signed event about it (approvals, rejections, archive) whose signature by a known key
    does not verify."""
    from casreg.content.manifest import read_manifest
    from casreg.governance.signing import check_signatures

    state, audit = _begin_audit(store)
    if not state.configured:
        return audit
    version = read_version(store, name, number)
    manifest = read_manifest(store, version.digest)
    for c in check_signatures(store, manifest, state.keys.values()):
        if c.status == "invalid":
            audit.problems.append((c.key, f"the signature of {version.ref} by {c.signer} does not verify: {c.detail}"))
    current = read_policy(store)
    policy = current.for_model(name) if current is not None else Policy()
    listed = list_event_signatures(store)
    for move in read_pointer_events(store, name):
        if move.to_digest is not None and move.to_version == number:
            _audit_pointer(store, state, policy, move, listed, audit)
    for e in read_events(store, name, pointers=False):
        if e.to_version != number or e.kind not in SIGNED_KINDS or e.kind in POINTER_KINDS:
            continue
        check = check_event(store, e, state.keys, listed=listed.get(e.event_id, []))
        if check.status == "invalid":
            audit.problems.append((check.key or event_key(e), f"{check.detail} (event {event_key(e)})"))
    return audit
