"""Signed governance events: approvals, rejections, moves, archives and policy changes
signed by the actor's private key (docs/signing.md, "Signed decisions").

A signature is an object ``signatures/events/<event id>/<key fingerprint>.json``
(:func:`casreg.keys.event_signature_key`), written by create-if-absent *before* the event
it signs is appended (or, for a move, before the pointer is swapped): a DSSE envelope
(``payloadType`` :data:`EVENT_PAYLOAD_TYPE`) whose payload is the event's canonical claims
(:func:`claims`: JSON, sorted keys, no whitespace) and whose one signature is ECDSA over
DSSE's pre-authentication encoding, made with the same keys and helpers as signed versions
(:mod:`casreg.governance.signatures`). The ledger's schema is unchanged: a signature is
found by the event id, and checked by recomputing the claims from the event the ledger
(or the pointer) holds, so a signature copied onto another event, or an event edited
after it was signed, does not verify.

The claims: kind, event id, model, alias (the stage), the version number and digest it
moves to or decides on, the version and digest it moves from, time (UTC, microseconds),
actor, reason, the previous move of the alias (its event id, or ``"none"``), and for a
``policy.set`` (or ``policy.restore``) the policy version and digest it pins (a restore:
also the ``policy.set`` event it restores), for a ``hooks.set`` the digests of the hooks
config it installs and of the one it replaces. A ``delete`` (a version's tombstone) is
covered by the version, digest and reason; an ``alias.remove`` by the version it removes.

Who a key is comes from the policy's ``[keys]`` (:func:`person_keys`): a key counts only
as the person the policy names it for, so ``BOB@`` and ``Bob@`` are one person if they are
one key, and two people only if the policy gives them two keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from casreg.errors import NotFoundError, PolicyError
from casreg.governance.signatures import PublicKey, dsse_sign, dsse_verifies, read_private_key
from casreg.keys import EVENT_SIGNATURES, event_signature_key, event_signatures_prefix, parse_event_signature_key
from casreg.records import AliasEvent, JsonValue, Version
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    from casreg.governance.policy import Policy

__all__ = ["EVENT_PAYLOAD_TYPE", "SIGNED_KINDS", "ADMIN_KINDS", "SIGNING_KEY_ENV", "EventSigner", "EventCheck",
           "load_signer", "claims", "sign_event", "check_event", "list_event_signatures", "person_keys",
           "signed_decisions", "pusher_persons", "require_signer", "signed_approvers"]

EVENT_PAYLOAD_TYPE = "application/vnd.casreg.event.v1+json"
#: The event kinds casreg signs when a key is given.
SIGNED_KINDS = frozenset({"approve", "reject", "promote", "alias.set", "alias.remove", "rollback", "archive",
                          "policy.set", "policy.restore", "hooks.set", "delete"})
#: The kinds only an admin signs: checked with the pinned root's keys as well as the policy's.
ADMIN_KINDS = frozenset({"policy.set", "policy.restore", "hooks.set"})
#: The environment variable naming the private key events are signed with by default.
SIGNING_KEY_ENV = "CASREG_SIGNING_KEY"
#: An event signature object read from a store, at most (claims are well under 4 KiB).
MAX_EVENT_SIGNATURE_BYTES = 64 << 10
_ID32 = re.compile(r"[0-9a-f]{32}")

Status = Literal["verified", "invalid", "unsigned", "unknown key"]


class _Event(Protocol):
    """What :func:`claims` reads of an event: an :class:`AliasEvent` or a log entry."""

    @property
    def event_id(self) -> str | None: ...
    @property
    def time(self) -> datetime: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def alias(self) -> str | None: ...
    @property
    def from_version(self) -> int | None: ...
    @property
    def to_version(self) -> int | None: ...
    @property
    def from_digest(self) -> str | None: ...
    @property
    def to_digest(self) -> str | None: ...
    @property
    def author(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def details(self) -> Mapping[str, Any] | None: ...


def _utc(t: datetime) -> str:
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claims(event: _Event, previous: str | None) -> dict[str, JsonValue]:
    """What a signature of ``event`` covers (module docstring); ``previous``: the event id
    of the alias's move this one replaced (``None``: none, or not a move)."""
    details = event.details or {}
    out: dict[str, JsonValue] = {
        "type": "casreg.event/v1", "kind": event.kind, "event_id": event.event_id, "name": event.name,
        "alias": event.alias, "version": event.to_version,
        "digest": str(event.to_digest) if event.to_digest is not None else None,
        "from_version": event.from_version,
        "from_digest": str(event.from_digest) if event.from_digest is not None else None,
        "time": _utc(event.time), "actor": event.author, "reason": event.reason,
        "previous": previous or "none",
    }
    if event.kind in ("policy.set", "policy.restore"):
        out["policy_version"] = details.get("policy_version")
        out["policy_digest"] = str(details.get("digest"))
    if event.kind == "policy.restore":
        out["pinned_by"] = str(details.get("pinned_by"))
    if event.kind == "hooks.set":  # the config it installs and the one it replaces
        out["hooks_digest"] = str(details.get("digest"))
        out["previous_hooks_digest"] = str(details.get("previous"))
    archived = details.get("archived")
    if isinstance(archived, Mapping):
        out["archived"] = {"version": archived.get("version"), "digest": str(archived.get("digest"))}
    if details.get("undoes") is not None:
        out["undoes"] = str(details.get("undoes"))
    return out


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- signing -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventSigner:
    """A private key events are signed with, and its public key (``path``: its file)."""

    private: EllipticCurvePrivateKey
    public: PublicKey
    path: str


def load_signer(key: str | os.PathLike[str] | None) -> EventSigner | None:
    """The signer of private key file ``key``, else of ``$CASREG_SIGNING_KEY``, else
    ``None`` (signing is opt-in)."""
    path = os.fspath(key) if key is not None else os.environ.get(SIGNING_KEY_ENV) or None
    if path is None:
        return None
    private, public = read_private_key(path)
    return EventSigner(private, public, path)


def sign_event(store: ObjectStore, event: AliasEvent, signer: EventSigner, previous: str | None = None) -> str:
    """Store ``signer``'s signature of ``event`` (create-if-absent) and return its key."""
    payload = _canonical(claims(event, previous))
    sig = dsse_sign(payload, EVENT_PAYLOAD_TYPE, signer.private, signer.public)
    envelope = {"payloadType": EVENT_PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": signer.public.fingerprint, "sig": base64.b64encode(sig).decode()}]}
    key = event_signature_key(event.event_id, signer.public.fingerprint)
    store.create(key, json.dumps(envelope, indent=2).encode() + b"\n")
    return key


def signs_event(store: ObjectStore, signer: EventSigner | None) -> Callable[[AliasEvent], None] | None:
    """What signs an event before it is appended (``record_event``'s ``before``);
    ``None`` when there is nothing to sign with."""
    if signer is None:
        return None
    chosen = signer

    def sign(event: AliasEvent) -> None:
        sign_event(store, event, chosen)

    return sign


def signs_move(store: ObjectStore,
               signer: EventSigner | None) -> Callable[[AliasEvent, AliasEvent | None], None] | None:
    """What signs a move before its pointer is swapped (``move_alias``'s ``before_swap``,
    given the move and the pointer's previous event); ``None`` when there is nothing to
    sign with."""
    if signer is None:
        return None
    chosen = signer

    def sign(event: AliasEvent, previous: AliasEvent | None) -> None:
        sign_event(store, event, chosen, previous.event_id if previous is not None else None)

    return sign


# -- checking ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventCheck:
    """What checking an event's signatures found: ``verified`` (by ``signer``, a person of
    the keys given), ``invalid`` (a signature by a known key does not verify, or was made
    for another event: ``detail``), ``unknown key`` (signed, by no key given) or
    ``unsigned``. ``previous``: the previous move the verified signature names."""

    event_id: str | None
    status: Status
    signer: str | None = None
    fingerprint: str | None = None
    detail: str = ""
    previous: str | None = None
    key: str | None = None

    @property
    def signed(self) -> bool:
        return self.status == "verified"

    def to_dict(self) -> dict[str, JsonValue]:
        return {"status": self.status, "signed": self.signed, "signer": self.signer,
                "fingerprint": self.fingerprint, "detail": self.detail or None, "key": self.key}

    def line(self) -> str:
        """One line for ``log`` and ``verify``."""
        if self.status == "verified":
            return f"signed by {self.signer} ({(self.fingerprint or '')[:16]})"
        if self.status == "unknown key":
            return f"signed by key {(self.fingerprint or '')[:16]}, which no trusted [keys] entry names"
        if self.status == "invalid":
            return f"BADLY SIGNED: {self.detail}"
        return "unsigned"


def list_event_signatures(store: ObjectStore) -> dict[str, list[str]]:
    """Every event signature object, by event id (one listing)."""
    out: dict[str, list[str]] = {}
    for key in store.list(f"{EVENT_SIGNATURES}/"):
        parsed = parse_event_signature_key(key)
        if parsed is not None:
            out.setdefault(parsed[0], []).append(key)
    return out


def _open(data: bytes, where: str, fingerprint: str) -> tuple[bytes, bytes]:
    """(payload, signature) of an envelope; ValueError saying why it is malformed."""
    if len(data) > MAX_EVENT_SIGNATURE_BYTES:
        raise ValueError(f"larger than {MAX_EVENT_SIGNATURE_BYTES >> 10} KiB")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("payloadType") != EVENT_PAYLOAD_TYPE:
            raise ValueError(f"payload type is not {EVENT_PAYLOAD_TYPE}")
        sigs = doc.get("signatures")
        if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
            raise ValueError("not exactly one signature")
        if sigs[0].get("keyid") != fingerprint:
            raise ValueError("its keyid is not the key its name says")
        return (base64.b64decode(str(doc.get("payload")), validate=True),
                base64.b64decode(str(sigs[0].get("sig")), validate=True))
    except (UnicodeDecodeError, binascii.Error, RecursionError) as err:
        raise ValueError(str(err)[:120]) from None


def check_event(store: ObjectStore, event: _Event, keys: Mapping[str, PublicKey], *,
                listed: Iterable[str] | None = None) -> EventCheck:
    """Check ``event``'s signature objects against ``keys`` (fingerprint -> public key
    named for its person): the first that verifies and whose claims are exactly those of
    ``event`` (the ``previous`` it names aside, returned) makes it ``verified``.
    ``listed``: the event's signature object keys, if the caller listed them
    (:func:`list_event_signatures`); else one listing. Hostile objects give ``invalid``,
    never an exception."""
    eid = event.event_id
    if eid is None or _ID32.fullmatch(eid) is None:
        return EventCheck(eid, "unsigned")
    objects = sorted(listed) if listed is not None else sorted(store.list(event_signatures_prefix(eid)))
    expected = claims(event, None)
    del expected["previous"]
    failure: EventCheck | None = None
    unknown: EventCheck | None = None
    for where in objects:
        parsed = parse_event_signature_key(where)
        if parsed is None or parsed[0] != eid:
            continue
        fp = parsed[1]
        public = keys.get(fp)
        if public is None:
            unknown = unknown or EventCheck(eid, "unknown key", fingerprint=fp, key=where)
            continue
        try:
            data = store.read(where, ByteRange(0, MAX_EVENT_SIGNATURE_BYTES + 1))
        except NotFoundError:
            continue
        bad = None
        try:
            payload, sig = _open(data, where, fp)
            if not dsse_verifies(sig, payload, EVENT_PAYLOAD_TYPE, public):
                raise ValueError(f"it does not verify with key {public.short} (forged or damaged)")
            signed = json.loads(payload)
            if not isinstance(signed, dict):
                raise ValueError("its payload is not a JSON object")
            previous = signed.pop("previous", None)
            differ = sorted(k for k in set(signed) | set(expected) if signed.get(k) != expected.get(k))
            if differ:
                raise ValueError(f"it was made for another event ({', '.join(differ[:4])} differ)")
        except ValueError as err:
            bad = str(err)
        if bad is None:
            return EventCheck(eid, "verified", public.name, fp, previous=previous if previous != "none" else None,
                              key=where)
        failure = failure or EventCheck(eid, "invalid", public.name, fp, f"event signature {where}: {bad}", key=where)
    return failure or unknown or EventCheck(eid, "unsigned")


# -- who a key is ---------------------------------------------------------------------------------------
def person_keys(doc: object) -> dict[str, PublicKey]:
    """The policy's ``[keys]`` as fingerprint -> public key (named for its person); a
    key listed under two names is the first name's. Empty: the policy has no keys."""
    from casreg.governance.signing import policy_keys

    out: dict[str, PublicKey] = {}
    for _name, keys in policy_keys(doc).items():
        for k in keys:
            out.setdefault(k.fingerprint, k)
    return out


def require_signer(signer: EventSigner | None, keys: Mapping[str, PublicKey], policy: Policy, action: str,
                   target: str | None, what: str) -> str:
    """The person ``signer``'s key is under ``keys``, who must hold a role the policy
    allows ``action`` on ``target``: else a :class:`PolicyError` saying what to give."""
    if signer is None:
        raise PolicyError(f"{what} refused: policy version {policy.version} has [keys], so this needs a signed "
                          f"event: give --key PRIVATE_KEY (or set {SIGNING_KEY_ENV})")
    public = keys.get(signer.public.fingerprint)
    if public is None:
        raise PolicyError(f"{what} refused: key {signer.public.short} ({signer.path}) is not in the [keys] of "
                          f"policy version {policy.version}")
    allowed, roles = policy.allowed(public.name, action, target)
    if not allowed:
        raise PolicyError(f"{what} refused: key {signer.public.short} is {public.name}'s, who holds none of the "
                          f"roles allowed to {action} {target or ''} ({', '.join(roles or ())}) under policy "
                          f"version {policy.version}")
    return public.name


def pusher_persons(store: ObjectStore, version: Version, keys: Mapping[str, PublicKey]) -> set[str]:
    """Who pushed ``version``, judged by key: the people whose key signed its bytes (a
    signature that verifies), and those whose ``[keys]`` name is its recorded author
    (case-insensitively)."""
    from casreg.content.manifest import read_manifest
    from casreg.governance.signing import check_signatures
    from casreg.keys import signatures_prefix

    author = version.author.casefold()
    people = {k.name for k in keys.values() if k.name.casefold() == author}
    if any(True for _ in store.list(signatures_prefix(version.digest))):
        manifest = read_manifest(store, version.digest)
        people |= {c.signer for c in check_signatures(store, manifest, keys.values())
                   if c.status == "verified" and c.signer is not None}
    return people


def signed_decisions(store: ObjectStore, events: Iterable[AliasEvent], version: Version, stage: str,
                     keys: Mapping[str, PublicKey]) -> dict[str, AliasEvent]:
    """Each person's latest approval or rejection of ``version`` (its number and digest)
    for ``stage`` whose signature verifies with their key; unsigned or badly signed
    decisions are not anyone's."""
    latest: dict[str, AliasEvent] = {}
    for e in sorted(events, key=lambda e: (e.time, e.event_id)):
        if e.kind in ("approve", "reject") and e.alias == stage and e.to_version == version.version \
                and e.to_digest == version.digest:
            check = check_event(store, e, keys)
            if check.signed and check.signer is not None:
                latest[check.signer] = e
    return latest


def signed_approvers(store: ObjectStore, policy: Policy, events: Iterable[AliasEvent], version: Version, stage: str,
                     keys: Mapping[str, PublicKey], *, self_approval: bool) -> list[str]:
    """The people whose latest signed decision on ``version`` for ``stage`` approves it,
    who may approve for ``stage`` under ``policy``, and (unless ``self_approval``) did
    not push it (:func:`pusher_persons`): what a keyed gate counts."""
    pushers = set() if self_approval else pusher_persons(store, version, keys)
    return sorted(p for p, e in signed_decisions(store, events, version, stage, keys).items()
                  if e.kind == "approve" and policy.allowed(p, "approve", stage)[0] and p not in pushers)
