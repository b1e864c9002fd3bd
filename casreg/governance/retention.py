"""Deleting versions and applying retention rules, audited (docs/retention.md).

**Deleting** a version records a tombstone and a ``delete`` event
(:mod:`casreg.ledger.tombstones`): the ledger stays append-only, the version's record
stays, but it no longer resolves or pulls, and ``gc`` reclaims what only deleted
versions use. A deletion is refused (nothing written) when:

- an alias points at the version (exit 2, naming the aliases: move them first);
- the policy's ``delete`` permission does not grant it to the current user (exit 8);
- the policy's ``[protect]`` section protects it: ``ever_in = ["production"]`` (judged
  from the pointer history: any move of that alias to it, ever), or a rule it matches
  (exit 8, naming the rule);
- it is already deleted (exit 2, saying by whom and when; a ``delete`` event a crash cut
  off after the tombstone is appended then, so retrying repairs the log).

**Retention** (:func:`plan_retention`, :func:`retain`) selects the versions a
:class:`~casreg.governance.retention_rule.RetentionRule` does not keep, says what gc will
reclaim once they are deleted (whole objects only live versions no longer use: manifests,
packs and their indexes; and the stored bytes of chunks only they use that sit in packs a
kept version still needs, which gc does not reclaim since it never rewrites a pack), and
deletes them one by one through the same checks. Nothing here deletes an object: that is
gc's job (:mod:`casreg.maintenance.gc`), which the façade runs after it for
``gc --retain``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from casreg.concurrency import map_concurrently
from casreg.content.manifest import Manifest, read_manifest
from casreg.digest import Digest
from casreg.errors import DeletedVersionError, InvalidInputError, PolicyError
from casreg.governance.event_signing import EventSigner, load_signer, require_signer, sign_event
from casreg.governance.policy import Policy
from casreg.governance.retention_rule import RetentionRule
from casreg.governance.state import policy_for, was_in
from casreg.keys import VERSIONS, index_key, manifest_key, pack_key, parse_version_segment_key
from casreg.ledger.events import EventSink
from casreg.ledger.history import read_events
from casreg.ledger.pointers import confirm_event, read_pointer_events
from casreg.ledger.resolve import resolve_in_model
from casreg.ledger.segments import list_versions, read_version, versions_table
from casreg.ledger.tombstones import deletion_event, read_tombstone, record_deletion, repair_event, tombstoned
from casreg.lineage import current_author
from casreg.records import AliasEvent, JsonValue, Version, iso_utc, utcnow
from casreg.refs import validate_name
from casreg.storage import ObjectStore

__all__ = [
    "Deletion",
    "KeptVersion",
    "RetentionPlan",
    "delete_version",
    "plan_retention",
    "policy_retention",
    "protection",
    "retain",
]

#: The stages ``keep_stages`` keeps every version that was ever at.
_KEPT_STAGES = ("staging", "production")


@dataclass(frozen=True, slots=True)
class Deletion:
    """A version deleted: its record and the ``delete`` event (the tombstone's content).
    ``warnings``: an alias moved to it while it was being deleted (it then keeps its
    objects until the alias moves, and resolving the alias fails: move it)."""

    version: Version
    event: AliasEvent
    warnings: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return self.version.ref

    def to_dict(self) -> dict[str, JsonValue]:
        return {"name": self.version.name, "version": self.version.version, "digest": self.version.digest,
                "deleted_by": self.event.author, "deleted_at": iso_utc(self.event.time), "reason": self.event.reason,
                "event_id": self.event.event_id, "warnings": list(self.warnings)}


def protection(policy: Policy, version: Version, events: Sequence[AliasEvent]) -> str | None:
    """Why ``policy`` protects ``version`` from deletion (``None``: it does not).
    ``events``: the model's events (pointer moves included)."""
    for stage in policy.protect.ever_in:
        if was_in(events, version.version, stage):
            return f"it was in {stage} (protect.ever_in)"
    for rule in policy.protect.rules:
        ok, _ = rule.check(version, None)
        if ok:
            return f"it matches protect rule {rule.text!r}"
    return None


def _holding(store: ObjectStore, name: str, number: int) -> list[str]:
    """The aliases of ``name`` at version ``number`` now, each pointer confirmed against
    the ledger (a lying pointer is an IntegrityError, never an answer)."""
    moves = read_pointer_events(store, name)
    for move in moves:
        confirm_event(store, move)
    return sorted(str(e.alias) for e in moves if e.to_digest is not None and e.to_version == number)


def _already_deleted(store: ObjectStore, err: DeletedVersionError) -> InvalidInputError:
    """The error for deleting a deleted version; first appends its ``delete`` event if a
    crash cut it off after the tombstone (idempotent)."""
    event = read_tombstone(store, err.name, err.version)
    if event is not None:
        repair_event(store, event)
    why = f": {err.reason}" if err.reason else ""
    return InvalidInputError(f"{err.name}:{err.version} is already deleted (by {err.deleted_by} at "
                             f"{err.deleted_at}{why}); nothing was changed")


def _check_deletable(store: ObjectStore, version: Version, policy: Policy, user: str,
                     events: Sequence[AliasEvent] | None = None) -> None:
    """Refuse the deletion of ``version`` if the policy or an alias forbids it (see the
    module docstring); the permission first, then the aliases, then protection."""
    policy.require_permission(user, "delete", None, what=f"deleting {version.ref}")
    holding = _holding(store, version.name, version.version)
    if holding:
        raise InvalidInputError(f"{version.ref} is at {', '.join(f'{version.name}@{a}' for a in holding)}; move or "
                                "remove those aliases first, then delete it")
    if policy.protect.ever_in or policy.protect.rules:
        why = protection(policy, version, events if events is not None else read_events(store, version.name))
        if why is not None:
            raise PolicyError(f"deleting {version.ref} refused by policy version {policy.version}: {why}")


def _deletion_signer(store: ObjectStore, name: str, key: str | os.PathLike[str] | None,
                     what: str) -> EventSigner | None:
    """The key a deletion is signed with (``key``, else ``$CASREG_SIGNING_KEY``, else
    none); when the policy has ``[keys]`` it is required, as a key of a person the policy
    allows to delete (with a trust root pinned, an untrusted policy is refused first)."""
    from casreg.governance.lifecycle import rules_and_keys

    signer = load_signer(key)
    policy, keys = rules_and_keys(store, name)
    if keys:
        require_signer(signer, keys, policy, "delete", None, what)
    return signer


def delete_version(store: ObjectStore, name: str, ref: str | int, *, notify: EventSink, reason: str | None,
                   policy: Policy | None = None, events: Sequence[AliasEvent] | None = None,
                   key: str | os.PathLike[str] | None = None, signer: EventSigner | None | bool = False
                   ) -> Deletion:
    """Delete version ``ref`` of ``name`` (a number, reference or digest): check it may
    be deleted, write its tombstone (create-if-absent: of two concurrent deletions one
    wins, the other is told it is already deleted), append the ``delete`` event and hand
    it to ``notify``. ``reason`` is required (the deletion is audited). ``policy`` and
    ``events``: already read by a caller deleting several versions of ``name``.
    ``key`` (default ``$CASREG_SIGNING_KEY``) signs the ``delete`` event before its
    tombstone is written; required when the policy has ``[keys]`` (docs/signing.md).
    ``signer``: already loaded and checked by a caller deleting several versions."""
    validate_name(name)
    if reason is None or not reason.strip():
        raise InvalidInputError("a deletion needs a reason (--reason TEXT): it is recorded in the ledger")
    try:
        target = resolve_in_model(store, name, ref)
    except DeletedVersionError as err:
        if err.name != name:
            raise
        raise _already_deleted(store, err) from None
    assert target.version is not None
    version = read_version(store, name, target.version)
    policy = policy if policy is not None else policy_for(store, name)
    _check_deletable(store, version, policy, current_author(), events)
    chosen = _deletion_signer(store, name, key, f"deleting {version.ref}") if signer is False else signer
    event = deletion_event(name, version.version, version.digest, reason)
    if isinstance(chosen, EventSigner):
        sign_event(store, event, chosen)  # before the tombstone: a deletion is never unsigned for a moment
    if not record_deletion(store, event):
        gone = read_tombstone(store, name, version.version)
        raise InvalidInputError(f"{version.ref} was deleted meanwhile" + (
            f" (by {gone.author} at {iso_utc(gone.time)})" if gone is not None else "") + "; nothing was changed")
    warnings: tuple[str, ...] = ()
    late = _holding(store, name, version.version)  # an alias moved to it between the check and the tombstone
    if late:
        warnings = (f"{', '.join(f'{name}@{a}' for a in late)} moved to {version.ref} while it was being deleted: "
                    "it no longer resolves; move the alias (gc keeps its objects until then)",)
    notify(event.to_dict())
    return Deletion(version, event, warnings)


# -- retention ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeptVersion:
    """A version a retention plan keeps, and why (the first reason that applies)."""

    version: int
    why: str


@dataclass(slots=True)
class RetentionPlan:
    """What a retention rule keeps and deletes of one model, and what gc then reclaims.

    ``frees_bytes`` (``frees_objects``): the stored size of the objects no live version
    uses once ``delete`` is deleted (manifests, packs, their indexes): what the next gc
    runs reclaim (after its grace and delay), provided nothing else changes meanwhile.
    ``repack_bytes``: stored bytes of chunks only the deleted versions use, in packs a
    kept version still needs; gc leaves them (it never rewrites a pack) and reports them
    as reclaimable by repacking. ``deleted``: filled in when the plan was carried out."""

    name: str
    rule: RetentionRule
    dry_run: bool
    delete: list[Version] = field(default_factory=list)
    keep: list[KeptVersion] = field(default_factory=list)
    already_deleted: list[int] = field(default_factory=list)
    frees_bytes: int = 0
    frees_objects: int = 0
    repack_bytes: int = 0
    deleted: list[Deletion] = field(default_factory=list)

    @property
    def delete_refs(self) -> list[str]:
        return [v.ref for v in self.delete]

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "name": self.name, "rule": self.rule.to_dict(), "description": self.rule.describe(),
            "dry_run": self.dry_run,
            "delete": [{"version": v.version, "digest": v.digest, "created_at": iso_utc(v.created_at),
                        "size": v.size} for v in self.delete],
            "keep": [{"version": k.version, "why": k.why} for k in self.keep],
            "already_deleted": list(self.already_deleted),
            "frees_bytes": self.frees_bytes, "frees_objects": self.frees_objects,
            "repack_bytes": self.repack_bytes,
            "deleted": [d.to_dict() for d in self.deleted],
        }


def _kept_reasons(rule: RetentionRule, live: list[Version], holding: dict[int, list[str]], policy: Policy,
                  events: Sequence[AliasEvent], now: datetime) -> dict[int, str]:
    """version -> why it is kept, for every live version the rule (or an alias, or the
    policy's protection) keeps."""
    name = live[0].name if live else ""
    newest = {v.version for v in live[-rule.keep_last:]} if rule.keep_last else set()
    why: dict[int, str] = {}
    for v in live:
        if v.version in holding:
            why[v.version] = "at " + ", ".join(f"{name}@{a}" for a in holding[v.version])
        elif v.version in newest:
            why[v.version] = f"one of the last {rule.keep_last}"
        elif rule.keep_since is not None and v.created_at >= now - rule.keep_since:
            why[v.version] = f"created {iso_utc(v.created_at)}, within keep-since"
        elif rule.keep_stages and (stage := next((s for s in _KEPT_STAGES if was_in(events, v.version, s)), None)):
            why[v.version] = f"was in {stage} (keep-stages)"
        elif (protected := protection(policy, v, events)) is not None:
            why[v.version] = f"protected by policy version {policy.version}: {protected}"
    return why


def _live_digests(store: ObjectStore, dead: set[tuple[str, int]]) -> dict[Digest, list[str]]:
    """Every live version's digest in the registry, with the versions holding it."""
    table = versions_table(store, columns=["name", "version", "digest"])
    out: dict[Digest, list[str]] = {}
    for row in table.to_pylist():
        if (row["name"], int(row["version"])) not in dead:
            out.setdefault(Digest.parse(str(row["digest"])), []).append(f"{row['name']}:{row['version']}")
    return out


def _reclaim(store: ObjectStore, plan: RetentionPlan, dead: set[tuple[str, int]]) -> None:
    """Fill in ``frees_*`` and ``repack_bytes``: what only ``plan.delete`` uses among the
    registry's live versions (of every model: other models share chunks too)."""
    if not plan.delete:
        return
    going = {(v.name, v.version) for v in plan.delete}
    holders = _live_digests(store, dead)
    doomed = {v.digest for v in plan.delete}
    staying = {d for d, refs in holders.items() if any(_parse(r) not in going for r in refs)}
    doomed -= staying
    order = sorted(doomed | staying, key=str)
    manifests: dict[Digest, Manifest] = dict(zip(order, map_concurrently(lambda d: read_manifest(store, d), order)))
    kept_packs: set[str] = set()
    kept_chunks: set[tuple[str, int]] = set()
    for d in staying:
        for e in manifests[d].entries:
            for c in e.chunks:
                kept_packs.add(c.pack)
                kept_chunks.add((c.pack, c.offset))
    freed_packs: set[str] = set()
    repack: dict[tuple[str, int], int] = {}
    for d in doomed:
        for e in manifests[d].entries:
            for c in e.chunks:
                if c.pack not in kept_packs:
                    freed_packs.add(c.pack)
                elif (c.pack, c.offset) not in kept_chunks:
                    repack[c.pack, c.offset] = c.stored_size
    keys = [manifest_key(d.hex) for d in doomed] + [k for p in sorted(freed_packs) for k in (pack_key(p), index_key(p))]
    sizes = map_concurrently(store.stat, keys)
    plan.frees_objects = sum(1 for s in sizes if s is not None)
    plan.frees_bytes = sum(s.size for s in sizes if s is not None)
    plan.repack_bytes = sum(repack.values())


def _parse(ref: str) -> tuple[str, int]:
    name, _, number = ref.rpartition(":")
    return name, int(number)


def plan_retention(store: ObjectStore, name: str, rule: RetentionRule, *, now: datetime | None = None,
                   dry_run: bool = True) -> RetentionPlan:
    """What ``rule`` keeps and deletes of ``name`` now, and what gc would reclaim (reads
    the model's records, events and pointers, and the manifests of the registry's live
    versions; writes nothing). Every version an alias points at, and every version the
    policy protects, is kept whatever the rule says."""
    validate_name(name)
    versions = list_versions(store, name)
    if not versions:
        from casreg.ledger.resolve import unknown

        raise unknown(store, f"model {name!r} has no versions in {store.url}")
    dead = tombstoned(store)
    plan = RetentionPlan(name, rule, dry_run)
    plan.already_deleted = sorted(n for m, n in dead if m == name)
    live = [v for v in versions if (v.name, v.version) not in dead]
    holding: dict[int, list[str]] = {}
    for move in read_pointer_events(store, name):
        if move.to_digest is not None and move.to_version is not None and move.alias is not None:
            confirm_event(store, move)
            holding.setdefault(move.to_version, []).append(move.alias)
    policy = policy_for(store, name)
    events = read_events(store, name)
    why = _kept_reasons(rule, live, {k: sorted(v) for k, v in holding.items()}, policy, events, now or utcnow())
    plan.keep = [KeptVersion(v, w) for v, w in sorted(why.items())]
    plan.delete = [v for v in live if v.version not in why]
    _reclaim(store, plan, dead)
    return plan


def retain(store: ObjectStore, name: str, rule: RetentionRule, *, notify: EventSink, dry_run: bool = False,
           reason: str | None = None, now: datetime | None = None,
           key: str | os.PathLike[str] | None = None) -> RetentionPlan:
    """Plan ``rule`` for ``name`` and, unless ``dry_run``, delete what it does not keep
    (oldest first; each deletion checked as :func:`delete_version` checks one, so a
    version an alias moved to meanwhile is refused, not deleted). The ``delete``
    permission (and, with ``[keys]``, the signing ``key``) is checked before anything is
    deleted; each ``delete`` event is signed."""
    plan = plan_retention(store, name, rule, now=now, dry_run=dry_run)
    if dry_run or not plan.delete:
        return plan
    policy = policy_for(store, name)
    policy.require_permission(current_author(), "delete", None, what=f"deleting versions of {name}")
    signer = _deletion_signer(store, name, key, f"deleting versions of {name}")
    events = read_events(store, name)
    why = reason or f"retention: {rule.describe()}"
    for v in plan.delete:
        plan.deleted.append(delete_version(store, name, v.version, notify=notify, reason=why, policy=policy,
                                           events=events, signer=signer))
    return plan


def policy_retention(store: ObjectStore) -> list[tuple[str, RetentionRule]]:
    """Every model the policy in force gives a retention rule (``[retention]``, or the
    model's own ``[models.NAME.retention]``), with that rule; empty without a policy."""
    from casreg.governance.policy import read_policy

    current = read_policy(store)
    if current is None:
        return []
    names = sorted({parsed[0] for key in store.list(VERSIONS) if (parsed := parse_version_segment_key(key))})
    out = []
    for name in names:
        rule = current.for_model(name).retention
        if rule is not None:
            out.append((name, rule))
    return out
