"""What the ledger pins: the policy version in force and the digest of its bytes.

A policy file (``policy/versions/<N>.toml``) is an ordinary object a bucket writer can
overwrite or delete; the ``policy.set`` event that made it the policy in force is an
immutable ledger segment (``ledger/events/_registry/...``) whose ``details`` record the
version number and the BLAKE3 digest of its bytes. So the policy in force is the one the
latest ``policy.set`` event pins, and its bytes count only if they have the pinned digest:
a file that is missing or differs is a :class:`DamagedPolicyError` naming the key and what
the event pins. Parsing the policy is the governance layer's
(:mod:`casreg.governance.policy`); ``casreg verify`` checks digests from here.

Registry events are few (policy and hooks changes), and event segments are never deleted
(compaction only adds copies), so listing ``ledger/events/_registry/`` finds every one.
"""

from __future__ import annotations

from dataclasses import dataclass

from casreg.concurrency import map_concurrently
from casreg.digest import Digest
from casreg.errors import IntegrityError, NotFoundError
from casreg.keys import EVENTS, REGISTRY_EVENTS, event_key, parse_event_segment_key, policy_key
from casreg.records import AliasEvent
from casreg.storage import ByteRange, ObjectStore

__all__ = ["MAX_POLICY_BYTES", "MAX_EVENT_SEGMENT_BYTES", "PolicyPin", "DamagedPolicyError", "latest_pin",
           "policy_pins", "pinned_bytes"]

MAX_POLICY_BYTES = 1 << 20
#: A registry event is one small Parquet row; anything much larger is not ours.
MAX_EVENT_SEGMENT_BYTES = 1 << 20
_PIN_BATCH = 8  # registry events read at once, newest first


@dataclass(frozen=True, slots=True)
class PolicyPin:
    """What one ``policy.set`` event pins: a policy version and the digest of its bytes."""

    version: int
    digest: Digest
    event_key: str  # the event's ledger segment
    event: AliasEvent


class DamagedPolicyError(IntegrityError):
    """A pinned policy file is missing, differs from the digest its ``policy.set`` event
    pins, or does not parse; ``pin`` is what the ledger pins (for the restore path)."""

    def __init__(self, message: str, pin: PolicyPin) -> None:
        super().__init__(message)
        self.pin = pin


def _registry_event(store: ObjectStore, key: str) -> AliasEvent | None:
    """The registry event in segment ``key`` (``None`` if it vanished since the listing);
    a damaged segment is an :class:`IntegrityError` naming it: the policy in force cannot
    be known without it, so nothing the policy governs may proceed."""
    import pyarrow as pa

    from casreg.ledger.schema import event_schema, read_segment

    try:
        data = store.read(key, ByteRange(0, MAX_EVENT_SEGMENT_BYTES + 1))
    except NotFoundError:
        return None
    try:
        if len(data) > MAX_EVENT_SEGMENT_BYTES:
            raise ValueError(f"larger than {MAX_EVENT_SEGMENT_BYTES:,} bytes")
        rows = read_segment(data, event_schema()).to_pylist()
        if len(rows) != 1:
            raise ValueError(f"it holds {len(rows)} rows, not one")
        event = AliasEvent.from_dict(rows[0])
        if event_key(event) != key:
            raise ValueError(f"it records event {event.name}/{event.event_id}, which belongs elsewhere")
    except (ValueError, TypeError, KeyError, IndexError, OSError, RecursionError, pa.ArrowException) as err:
        why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise IntegrityError(f"ledger event segment {key} is corrupt ({why}); the policy in force cannot be "
                             "known without it; run casreg verify") from None
    return event


def _pin(event: AliasEvent, key: str) -> PolicyPin:
    details = event.details or {}
    number, digest = details.get("policy_version"), details.get("digest")
    try:
        if type(number) is not int or number < 1:
            raise ValueError(f"policy_version {str(number)[:40]!r} is not a version number")
        return PolicyPin(number, Digest(str(digest)), key, event)
    except ValueError as err:
        raise IntegrityError(f"ledger event segment {key} is a policy.set event that pins no policy "
                             f"({str(err)[:200]}); run casreg verify") from None


def _registry_event_keys(store: ObjectStore) -> list[str]:
    """The registry's event segment keys, in time order."""
    return sorted(k for k in store.list(f"{EVENTS}/{REGISTRY_EVENTS}")
                  if (parsed := parse_event_segment_key(k)) is not None and parsed.name == REGISTRY_EVENTS)


def latest_pin(store: ObjectStore) -> PolicyPin | None:
    """What the latest ``policy.set`` event pins, or ``None`` if the registry never had a
    policy: one listing of the registry's events, then their segments newest first (a
    few at a time, concurrently) until a ``policy.set``. pyarrow is imported only if the
    registry has events."""
    keys = _registry_event_keys(store)
    while keys:
        batch, keys = keys[-_PIN_BATCH:], keys[:-_PIN_BATCH]
        events = map_concurrently(lambda k: _registry_event(store, k), batch)
        for key, event in reversed(list(zip(batch, events))):
            if event is not None and event.kind == "policy.set":
                return _pin(event, key)
    return None


def policy_pins(store: ObjectStore) -> list[PolicyPin]:
    """What every ``policy.set`` event pins, oldest first."""
    keys = _registry_event_keys(store)
    events = map_concurrently(lambda k: _registry_event(store, k), keys)
    return [_pin(e, k) for k, e in zip(keys, events) if e is not None and e.kind == "policy.set"]


def pinned_bytes(store: ObjectStore, pin: PolicyPin, *, latest: bool = True) -> bytes:
    """The bytes of the policy file ``pin`` names, which must have the pinned digest:
    :class:`DamagedPolicyError` naming the key and what the event pins if the file is
    missing, empty or altered (one bounded read). ``latest``: ``pin`` is the policy in
    force (the message then says how to restore it)."""
    key = policy_key(pin.version)
    which = "the latest policy.set event" if latest else "its policy.set event"
    pinned = f"{which} ({pin.event_key}) pins policy version {pin.version} as {pin.digest}"
    restore = ("; everything the policy governs is refused until it is restored: "
               "casreg policy set FILE, with the file of that digest") if latest else ""
    try:
        data = store.read(key, ByteRange(0, MAX_POLICY_BYTES + 1))
    except NotFoundError:
        raise DamagedPolicyError(f"policy {key} is missing, but {pinned}{restore}", pin) from None
    if Digest.of(data) != pin.digest:
        state = "is empty" if not data else f"was altered (its digest is {Digest.of(data)})"
        raise DamagedPolicyError(f"policy {key} {state}, but {pinned}{restore}", pin)
    return data
