"""The registry's policy: required metadata, promotion gates, approvals and roles.

A policy is a TOML file kept in the registry and versioned: ``policy set`` writes
``policy/versions/<N>.toml`` by create-if-absent (so two writers never share a number)
and records a ``policy.set`` event that pins it: its number and the BLAKE3 digest of its
bytes. **The policy in force is the one the latest ``policy.set`` event pins**, checked
against that digest on every read (:func:`read_policy`): the event is an immutable ledger
segment, the file is not. A pinned file that is missing, altered, emptied or unreadable
is a :class:`DamagedPolicyError` (an :class:`~casreg.errors.IntegrityError`, exit 6,
naming the key and what the event pins), so everything the policy governs fails closed,
never falls back to "no policy"; ``policy set`` with the pinned bytes restores it
(:func:`restore_policy`). A registry that never recorded a ``policy.set`` has no policy.
A policy file no event pins (a ``policy set`` interrupted between its two writes) is never
in force; ``casreg verify`` warns about it. docs/lifecycle.md documents the format; in
short::

    [push]
    require = ["metrics.auc", "lineage.dataset", "params.lr", "framework"]

    [gates.production]
    rules = ["metrics.auc >= 0.95", "metrics.auc > @production", "lineage.code.dirty == false",
             "schema.unchanged_from @production"]
    after = ["staging"]        # must have been in staging first
    approvals = 2              # distinct approvers, none rejecting
    self_approval = false      # the pusher's approval does not count

    [roles]
    admin = ["alice@example.com"]
    release = ["bob@example.com", "*@release.example.com"]

    [permissions]
    push = ["*"]
    promote = { production = ["release"], "*" = ["*"] }
    approve = ["release", "admin"]
    policy = ["admin"]

    [aliases]
    allowed = ["champion", "canary"]   # free-form aliases allowed besides the stages

    [models."fraud-detector".gates.production]   # per-model override
    rules = ["metrics.auc >= 0.97"]

    [protect]                          # versions nobody may delete (docs/retention.md)
    ever_in = ["production"]           # ever at these aliases, judged from the pointer history
    rules = ["tags.keep == 'yes'"]     # or matching any of these rules

    [retention]                        # applied by casreg gc --retain (governance/retention_rule.py)
    keep_last = 20

The client enforces this; storage access control enforces what must not depend on every
client being honest (docs/security.md).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from casreg.digest import Digest
from casreg.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidPolicyError,
    MissingMetadataError,
    PolicyError,
)
from casreg.governance.retention_rule import RetentionRule, parse_retention
from casreg.keys import POLICIES, parse_policy_key, policy_key
from casreg.ledger.pins import MAX_POLICY_BYTES, DamagedPolicyError, PolicyPin, latest_pin, pinned_bytes, policy_pins
from casreg.records import JsonValue, Version
from casreg.refs import validate_alias
from casreg.storage import ObjectStore

__all__ = [
    "Policy",
    "Rule",
    "Gate",
    "GateResult",
    "PolicyFile",
    "PolicyPin",
    "DamagedPolicyError",
    "parse_policy",
    "read_policy",
    "write_policy",
    "policy_pins",
    "latest_pin",
    "UnpinnedPolicyError",
    "check_pinned",
    "restore_policy",
    "field_value",
    "check_push",
    "STAGES",
    "Protect",
]

STAGES = ("staging", "production", "archived")
#: Role names a permission grants an action to.
Roles = tuple[str, ...]
_ACTIONS = ("push", "promote", "archive", "approve", "policy", "alias", "delete")
_FIELD = r"(?:metrics|params|tags|lineage)\.[A-Za-z0-9_.\-]+|framework|description|author|size|file_count|version"
_RULE = re.compile(
    rf"^\s*(?P<field>{_FIELD})\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<value>@[a-z][a-z0-9_-]*|'[^']*'|\"[^\"]*\"|true|false|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
#: ``schema.unchanged_from @ALIAS``: the version's schema (tensor schema digest and
#: signature) equals that of the version at ALIAS (docs/lineage.md).
_SCHEMA_RULE = re.compile(r"^\s*schema\.unchanged_from\s+@(?P<alias>[a-z][a-z0-9_-]*)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
_MISSING = object()


def field_value(version: Version, path: str) -> Any:
    """The value of ``metrics.auc``, ``lineage.dataset``, ``framework``, ... on a version
    (``_MISSING`` if it has none)."""
    head, _, rest = path.partition(".")
    if head in ("metrics", "params", "tags"):
        return getattr(version, head).get(rest, _MISSING)
    if head == "lineage":
        sub, dot, leaf = rest.partition(".")
        if dot and sub in ("dependencies", "links"):  # lineage.dependencies.torch: a map's key
            return getattr(version.lineage, sub).get(leaf, _MISSING)
        value: Any = version.lineage
        for part in rest.split("."):  # lineage.hardware.gpu_count: a nested record's field
            value = getattr(value, part, None) if part and not part.startswith("_") else None
            if value is None:
                return _MISSING
        return value if isinstance(value, (str, int, float, bool)) else _MISSING
    value = getattr(version, head, None)
    return _MISSING if value in (None, "") else value


def has_field(version: Version, path: str) -> bool:
    return field_value(version, path) is not _MISSING


@dataclass(frozen=True, slots=True)
class Rule:
    """``FIELD OP VALUE``; VALUE is a number, a quoted string, or ``@alias``: the same
    field of the version that alias points at now (the rule passes when it is unset)."""

    text: str
    field: str
    op: str
    value: float | str | bool | None
    alias: str | None  # compare against NAME@alias

    @classmethod
    def parse(cls, text: str, where: str) -> Rule:
        if not isinstance(text, str):
            raise InvalidPolicyError(f"{where}: a rule must be a string like \"metrics.auc >= 0.95\"")
        s = _SCHEMA_RULE.match(text)
        if s:
            return cls(text.strip(), "schema", "unchanged_from", None, s["alias"])
        m = _RULE.match(text)
        if not m:
            raise InvalidPolicyError(
                f"{where}: cannot read rule {text!r}; write FIELD OP VALUE, e.g. \"metrics.auc >= 0.95\", "
                "\"tags.team == 'fraud'\" or \"metrics.auc > @production\"")
        raw = m["value"]
        if raw in ("true", "false"):
            if m["op"] not in ("==", "!="):
                raise InvalidPolicyError(f"{where}: rule {text!r} compares a boolean with {m['op']}; use == or !=")
            return cls(text.strip(), m["field"], m["op"], raw == "true", None)
        if raw.startswith("@"):
            return cls(text.strip(), m["field"], m["op"], None, raw[1:])
        if raw[0] in "'\"":
            if m["op"] not in ("==", "!="):
                raise InvalidPolicyError(f"{where}: rule {text!r} compares a string with {m['op']}; use == or !=")
            return cls(text.strip(), m["field"], m["op"], raw[1:-1], None)
        return cls(text.strip(), m["field"], m["op"], float(raw), None)

    def check(self, version: Version, current: Version | None) -> tuple[bool, str]:
        """(passed, explanation naming the actual value and what would satisfy it)."""
        if self.op == "unchanged_from":
            return _schema_unchanged(version, current, self.alias or "")
        have = field_value(version, self.field)
        if have is _MISSING:
            return False, f"{version.ref} has no {self.field} (the rule needs one)"
        if self.alias is not None:
            if current is None:
                return True, f"no version is at @{self.alias} yet"
            want = field_value(current, self.field)
            if want is _MISSING:
                return True, f"{current.ref} (@{self.alias}) has no {self.field} to compare with"
            target = f"{want} ({current.ref} @{self.alias})"
        else:
            want = self.value
            target = repr(want) if isinstance(want, str) else f"{want:g}"
        if isinstance(want, bool):
            target = str(want).lower()
        if isinstance(want, bool) or isinstance(have, bool):
            if not (isinstance(want, bool) and isinstance(have, bool)):
                return False, f"{version.ref} has {self.field} = {have!r}, not a boolean like {target}"
            shown_bool = str(have).lower()
            return _OPS[self.op](have, want), f"{version.ref} has {self.field} = {shown_bool}; needs {self.op} {target}"
        try:
            a, b = (float(have), float(want)) if not isinstance(want, str) else (str(have), want)
        except (TypeError, ValueError):
            return False, f"{version.ref} has {self.field} = {have!r}, not a number"
        ok = _OPS[self.op](a, b)
        shown = f"{a:g}" if isinstance(a, float) else repr(a)
        return ok, f"{version.ref} has {self.field} = {shown}; needs {self.op} {target}"


def _schema_unchanged(version: Version, current: Version | None, alias: str) -> tuple[bool, str]:
    """``schema.unchanged_from @ALIAS``: passes when nothing is at the alias, else when
    both versions have a schema and their tensor digests and signatures are equal."""
    if current is None:
        return True, f"no version is at @{alias} yet"
    mine, theirs = version.lineage.schema, current.lineage.schema
    if mine is None:
        return False, f"{version.ref} has no schema recorded (no safetensors header, no --signature)"
    if theirs is None:
        return True, f"{current.ref} (@{alias}) has no schema to compare with"
    if mine.digest != theirs.digest:
        return False, (f"{version.ref} has tensor schema {mine.digest or 'none'}, {current.ref} (@{alias}) has "
                       f"{theirs.digest or 'none'}; casreg diff {current.ref} {version.ref} shows the changes")
    if mine.signature != theirs.signature:
        return False, f"{version.ref}'s signature differs from {current.ref}'s (@{alias})"
    return True, f"{version.ref} has the schema of {current.ref} (@{alias})"


@dataclass(frozen=True, slots=True)
class Gate:
    """What a version needs before it may be moved to one stage or alias."""

    rules: tuple[Rule, ...] = ()
    after: tuple[str, ...] = ()  # stages it must have been in before
    approvals: int = 0
    self_approval: bool = True


@dataclass(frozen=True, slots=True)
class GateResult:
    rule: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, JsonValue]:
        return {"rule": self.rule, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Protect:
    """Versions nobody may delete (``[protect]``): those ever at one of ``ever_in``
    (judged from the pointer history, e.g. "never delete anything that was ever in
    production"), and those matching any of ``rules`` (constants only, no ``@alias``)."""

    ever_in: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


def _protect(spec: Any) -> Protect:
    if spec is None:
        return Protect()
    if not isinstance(spec, Mapping) or set(spec) - {"ever_in", "rules"}:
        raise InvalidPolicyError("protect: expected a table with ever_in = [stages or aliases] and rules = [rules]")
    ever_in = _strings(spec.get("ever_in", []), "protect.ever_in") if spec.get("ever_in") else ()
    for stage in ever_in:
        try:
            validate_alias(stage)
        except Exception as err:  # noqa: BLE001
            raise InvalidPolicyError(f"protect.ever_in: {err}") from None
    rules = tuple(Rule.parse(r, f"protect.rules[{i}]") for i, r in enumerate(spec.get("rules", [])))
    for r in rules:
        if r.alias is not None:
            raise InvalidPolicyError(f"protect.rules: rule {r.text!r} compares with @{r.alias}; protect rules "
                                     "compare with constants")
    return Protect(ever_in, rules)


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective policy for one model (top level merged with its ``[models.NAME]``)."""

    require: tuple[str, ...] = ()
    gates: Mapping[str, Gate] = field(default_factory=dict)
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    permissions: Mapping[str, Roles | Mapping[str, Roles]] = field(default_factory=dict)
    version: int = 0  # 0: no policy in force
    aliases: tuple[str, ...] | None = None  # free-form aliases allowed besides the stages; None: any
    protect: Protect = field(default_factory=Protect)  # what may never be deleted
    retention: RetentionRule | None = None  # what gc --retain keeps (None: it deletes nothing)

    def missing_metadata(self, version: Version) -> list[str]:
        return [f for f in self.require if not has_field(version, f)]

    def roles_of(self, user: str) -> set[str]:
        held = {"*"}
        for role, patterns in self.roles.items():
            if any(fnmatch.fnmatchcase(user, p) for p in patterns):
                held.add(role)
        return held

    def allowed(self, user: str, action: str, target: str | None = None) -> tuple[bool, tuple[str, ...] | None]:
        """(may ``user`` do ``action`` [to ``target`` stage/alias], the roles that may);
        an action the policy does not mention is open to everyone."""
        spec = self.permissions.get(action)
        if spec is None:
            return True, None
        if isinstance(spec, Mapping):
            roles = spec.get(target) if target is not None and target in spec else spec.get("*")
            if roles is None:
                return True, None
        else:
            roles = spec
        roles = tuple(roles)
        return bool(self.roles_of(user) & set(roles)), roles

    def require_permission(self, user: str, action: str, target: str | None = None, what: str = "") -> None:
        ok, roles = self.allowed(user, action, target)
        if not ok:
            label = f"{action} {target}" if target else action
            assert roles is not None
            raise PolicyError(
                f"{what or label} refused: {user} holds none of the roles allowed to {label} "
                f"({', '.join(roles)}) under policy version {self.version}")

    def gate(self, stage: str) -> Gate | None:
        return self.gates.get(stage)


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One stored policy version: its number, text and the parsed document."""

    version: int
    text: str
    doc: Mapping[str, object]
    digest: Digest

    def for_model(self, name: str | None) -> Policy:
        return _effective(self.doc, name, self.version)


def _line_of(text: str, needle: str) -> str:
    for i, line in enumerate(text.splitlines(), 1):
        if needle and needle in line:
            return f"line {i}: "
    return ""


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidPolicyError(f"{where}: expected a list of strings")
    return tuple(value)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _gate(spec: Any, where: str) -> Gate:
    if not isinstance(spec, Mapping):
        raise InvalidPolicyError(f"{where}: expected a table")
    unknown = set(spec) - {"rules", "after", "approvals", "self_approval"}
    if unknown:
        raise InvalidPolicyError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                                 "(known: rules, after, approvals, self_approval)")
    rules = tuple(Rule.parse(r, f"{where}.rules[{i}]") for i, r in enumerate(spec.get("rules", [])))
    after = _strings(spec.get("after", []), f"{where}.after")
    for stage in after:
        try:
            validate_alias(stage)
        except Exception as err:  # noqa: BLE001
            raise InvalidPolicyError(f"{where}.after: {err}") from None
    approvals = spec.get("approvals", 0)
    if not isinstance(approvals, int) or isinstance(approvals, bool) or not 0 <= approvals <= 100:
        raise InvalidPolicyError(f"{where}.approvals: expected a whole number from 0 to 100")
    self_approval = spec.get("self_approval", True)
    if not isinstance(self_approval, bool):
        raise InvalidPolicyError(f"{where}.self_approval: expected true or false")
    return Gate(rules, after, approvals, self_approval)


def _effective(doc: Mapping[str, Any], name: str | None, version: int) -> Policy:
    base = {k: v for k, v in doc.items() if k != "models"}
    if name is not None:
        base = _merge(base, (doc.get("models") or {}).get(name) or {})
    push = base.get("push") or {}
    if not isinstance(push, Mapping):
        raise InvalidPolicyError("push: expected a table")
    require = _strings(push.get("require", []), "push.require")
    for f in require:
        if not re.fullmatch(_FIELD, f):
            raise InvalidPolicyError(f"push.require: unknown field {f!r} (metrics.X, params.X, tags.X, "
                                     "lineage.X, framework, description)")
    gates_doc = base.get("gates") or {}
    if not isinstance(gates_doc, Mapping):
        raise InvalidPolicyError("gates: expected a table of stages")
    gates = {}
    for stage, spec in gates_doc.items():
        if stage == "archived":
            raise InvalidPolicyError("gates.archived: archiving is not gated (use permissions.archive)")
        try:
            validate_alias(stage)
        except Exception as err:  # noqa: BLE001
            raise InvalidPolicyError(f"gates.{stage}: {err}") from None
        gates[stage] = _gate(spec, f"gates.{stage}")
    roles_doc = base.get("roles") or {}
    if not isinstance(roles_doc, Mapping):
        raise InvalidPolicyError("roles: expected a table of role = [users or patterns]")
    roles = {role: _strings(users, f"roles.{role}") for role, users in roles_doc.items()}
    perms_doc = base.get("permissions") or {}
    if not isinstance(perms_doc, Mapping):
        raise InvalidPolicyError("permissions: expected a table")
    perms: dict[str, Any] = {}
    for action, spec in perms_doc.items():
        if action not in _ACTIONS:
            raise InvalidPolicyError(f"permissions.{action}: unknown action (known: {', '.join(_ACTIONS)})")
        if isinstance(spec, Mapping):
            perms[action] = {t: _strings(r, f"permissions.{action}.{t}") for t, r in spec.items()}
            granted = {r for rs in perms[action].values() for r in rs}
        else:
            perms[action] = _strings(spec, f"permissions.{action}")
            granted = set(perms[action])
        undefined = granted - set(roles) - {"*"}
        if undefined:
            raise InvalidPolicyError(f"permissions.{action}: role {sorted(undefined)[0]!r} is not defined in [roles]")
    aliases_doc = base.get("aliases")
    allowed: tuple[str, ...] | None = None
    if aliases_doc is not None:
        if not isinstance(aliases_doc, Mapping) or set(aliases_doc) - {"allowed"}:
            raise InvalidPolicyError("aliases: expected a table with allowed = [alias names]")
        allowed = _strings(aliases_doc.get("allowed", []), "aliases.allowed") if aliases_doc.get("allowed") else ()
        for a in allowed:
            try:
                validate_alias(a)
            except Exception as err:  # noqa: BLE001
                raise InvalidPolicyError(f"aliases.allowed: {err}") from None
    return Policy(require, gates, roles, perms, version, allowed, _protect(base.get("protect")),
                  parse_retention(base.get("retention")))


def parse_policy(text: str) -> dict[str, Any]:
    """Parse and validate a policy document; errors name the line and column (TOML
    syntax) or the key and line (meaning)."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise InvalidPolicyError("policy is not valid TOML: it is nested too deeply") from None
    except tomllib.TOMLDecodeError as err:
        msg = str(err)
        if "(at end of document)" in msg:  # tomllib gives no line here; the end is the last line
            lines = text.split("\n")
            msg = msg.replace("(at end of document)",
                              f"(at line {len(lines)}, column {len(lines[-1]) + 1}: end of document)")
        raise InvalidPolicyError(f"policy is not valid TOML: {msg}") from None
    unknown = set(doc) - {"push", "gates", "roles", "permissions", "models", "aliases", "protect", "retention", "keys"}
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidPolicyError(f"policy: {_line_of(text, key)}unknown table {key!r} "
                                 "(known: push, gates, roles, permissions, aliases, protect, retention, keys, models)")
    if "keys" in doc:  # public keys of signers (docs/signing.md): parsed only when present
        from casreg.governance.signing import policy_keys

        try:
            policy_keys(doc)
        except InvalidInputError as err:
            raise InvalidPolicyError(f"policy: {_line_of(text, 'keys')}{err}") from None
    try:
        _effective(doc, None, 0)
        models = doc.get("models") or {}
        if not isinstance(models, Mapping):
            raise InvalidPolicyError("models: expected a table of model names")
        for name in models:
            _effective(doc, name, 0)
    except InvalidPolicyError as err:
        msg = str(err)
        needle = re.findall(r"'([^']+)'", msg)
        hint = _line_of(text, needle[0]) if needle else ""
        raise InvalidPolicyError(f"policy: {hint}{msg}") from None
    return doc


def policy_numbers(store: ObjectStore) -> list[int]:
    """The numbers of the stored policy versions, ascending (pinned by an event or not)."""
    return sorted(n for key in store.list(POLICIES) if (n := parse_policy_key(key)) is not None)


def check_pinned(store: ObjectStore, pin: PolicyPin, *, latest: bool = True) -> PolicyFile:
    """The policy file ``pin`` names, after checking it has the pinned digest
    (:func:`~casreg.ledger.pins.pinned_bytes`) and parses; :class:`DamagedPolicyError`
    naming the key and what the event pins otherwise."""
    data = pinned_bytes(store, pin, latest=latest)
    try:
        text = data.decode("utf-8")
        doc = parse_policy(text)
    except (UnicodeDecodeError, InvalidPolicyError) as err:
        which = "the latest policy.set event" if latest else "its policy.set event"
        raise DamagedPolicyError(f"policy {policy_key(pin.version)} has the digest {which} ({pin.event_key}) pins "
                                 f"but does not read ({str(err)[:200]}); run casreg verify", pin) from None
    return PolicyFile(pin.version, text, doc, pin.digest)


class UnpinnedPolicyError(IntegrityError):
    """A stored policy version is newer than the one the latest ``policy.set`` event pins:
    either a ``policy set`` stopped between writing the file and recording its event, or
    the event that pinned it was deleted (which would otherwise silently bring an older
    policy, or none, back into force). ``pinned`` is the latest pinned policy (checked),
    or ``None``: the permission basis for setting the policy again."""

    def __init__(self, message: str, pinned: PolicyFile | None) -> None:
        super().__init__(message)
        self.pinned = pinned


def read_policy(store: ObjectStore, number: int | None = None) -> PolicyFile | None:
    """The policy in force, or ``None`` if the registry never had one: the version the
    latest ``policy.set`` event pins, checked against the pinned digest (one listing of
    the registry's events, the newest segments up to that event, one small read). With
    ``number``, that older version, checked against the event that pinned it (``None``
    if there is no such version). A pinned file that is missing, altered or unreadable,
    or a stored version no event pins, is an :class:`IntegrityError` naming its key:
    callers fail closed, they never fall back to no policy."""
    if number is None:
        pin = latest_pin(store)
        current = check_pinned(store, pin) if pin is not None else None
        newer = [n for n in policy_numbers(store) if n > (pin.version if pin is not None else 0)]
        if newer:
            raise UnpinnedPolicyError(
                f"policy {policy_key(newer[-1])} is newer than the policy the latest policy.set event pins "
                f"({f'version {pin.version}' if pin is not None else 'none'}) but no event pins it: a policy set "
                "was interrupted, or its policy.set event was deleted; everything the policy governs is "
                "refused until casreg policy set pins a policy again", current)
        return current
    pins = [p for p in policy_pins(store) if p.version == number]
    if pins:
        return check_pinned(store, pins[-1], latest=False)
    if store.exists(policy_key(number)):
        raise IntegrityError(f"policy {policy_key(number)} is not pinned by any policy.set event (written by an "
                             "interrupted policy set, or not by casreg); it was never in force")
    return None


def write_policy(store: ObjectStore, text: str, *, after: int = 0) -> PolicyFile:
    """Store ``text`` as the next policy version (validated first), numbered above every
    stored one and above ``after`` (the pinned version, even if its file is gone)."""
    data = text.encode("utf-8")
    if len(data) > MAX_POLICY_BYTES:
        raise InvalidPolicyError(f"policy is {len(data):,} bytes; at most {MAX_POLICY_BYTES:,}")
    doc = parse_policy(text)
    numbers = policy_numbers(store)
    number = max([after, *numbers]) + 1
    while not store.create(policy_key(number), data):
        number += 1
    return PolicyFile(number, text, doc, Digest.of(data))


def restore_policy(store: ObjectStore, pin: PolicyPin, data: bytes) -> bool:
    """Put back the pinned policy file from ``data``, which must have the pinned digest
    (so the result is exactly what the ledger already pins: no permission is needed,
    none is gained). ``True`` if anything was written."""
    if Digest.of(data) != pin.digest:
        raise IntegrityError(f"the policy given has digest {Digest.of(data)}, not {pin.digest}, which "
                             f"{pin.event_key} pins for {policy_key(pin.version)}; nothing was changed")
    key = policy_key(pin.version)
    for _ in range(3):  # a concurrent restore or damage: look again
        current = store.read_versioned(key)
        if current is not None and current.data == data:
            return False
        try:
            if current is None:
                if store.create(key, data):
                    return True
            else:
                store.swap(key, data, current.token)
                return True
        except ConflictError:
            continue
    raise ConflictError(f"{key} kept changing while it was being restored; nothing was changed")


def check_push(store: ObjectStore, probe: Version, user: str) -> None:
    """Refuse a push the policy forbids (the ``push`` permission) or that lacks metadata
    the policy requires, before any byte is stored. ``probe`` is the record the push
    would commit, with what is known before the content is stored."""
    current = read_policy(store)
    if current is None:
        return
    policy = current.for_model(probe.name)
    policy.require_permission(user, "push", None, what=f"pushing {probe.name}")
    missing = policy.missing_metadata(probe)
    if missing:
        raise MissingMetadataError(f"push of {probe.name} refused by policy version {policy.version}: missing "
                                   f"{', '.join(missing)} (give them to the push: metrics, params, tags, framework, "
                                   "description, dataset, run_id, parent)", missing=missing)
