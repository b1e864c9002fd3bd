"""The trust root: admin public keys a reader pins outside the registry, and whether the
policy in force is signed by one of them (docs/signing.md, "The trust root").

Pinned keys come from ``$CASREG_TRUSTED_KEYS`` (paths of PEM public keys, separated by
``os.pathsep``) and from a TOML file, ``$CASREG_TRUST_FILE`` or else
``~/.config/casreg/trust.toml``::

    keys = ["/etc/casreg/admin.pem.pub"]      # paths (relative ones: to the file's directory)

With a root pinned, the policy in force counts only if its ``policy.set`` event carries a
signature that verifies with a pinned key (:mod:`casreg.governance.event_signing`: the
claims include the policy's version and digest): anything else, or no policy at all, is
an :class:`UntrustedPolicyError` (exit 6), and everything that relies on the policy (gates,
approvals, ``pull --require-signed-by ROLE``) fails closed. Without a root, the policy's
``[keys]`` are taken as the registry holds them, which is what a bucket writer controls.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from casreg.errors import IntegrityError, InvalidInputError, PolicyError
from casreg.governance.event_signing import EventSigner, check_event
from casreg.governance.signatures import PublicKey, read_public_key
from casreg.ledger.pins import latest_pin
from casreg.records import JsonValue
from casreg.storage import ObjectStore

__all__ = ["TRUSTED_KEYS_ENV", "TRUST_FILE_ENV", "UntrustedPolicyError", "PolicyTrust", "pinned_keys",
           "trust_file", "policy_trust", "require_trusted_policy", "require_root_signer"]

TRUSTED_KEYS_ENV = "CASREG_TRUSTED_KEYS"
TRUST_FILE_ENV = "CASREG_TRUST_FILE"


class UntrustedPolicyError(IntegrityError):
    """A trust root is pinned, and the policy in force is not signed by a pinned key."""


def trust_file() -> Path:
    """Where the trust file is looked for: ``$CASREG_TRUST_FILE``, else
    ``~/.config/casreg/trust.toml``."""
    named = os.environ.get(TRUST_FILE_ENV)
    if named:
        return Path(named)
    try:
        home = Path.home()
    except RuntimeError:  # no home directory: no default trust file
        return Path("/nonexistent/casreg/trust.toml")
    return home / ".config" / "casreg" / "trust.toml"


def pinned_keys() -> list[PublicKey]:
    """The admin public keys pinned on this machine (module docstring); empty when none
    is. A path that does not hold a public key is an :class:`InvalidInputError` naming it:
    a root that cannot be read is never silently no root."""
    paths = [p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p.strip()]
    out = [read_public_key(p) for p in paths]
    file = trust_file()
    if file.is_file():
        try:
            doc = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise InvalidInputError(f"trust file {file}: {str(err)[:160]}") from None
        listed = doc.get("keys", [])
        if not isinstance(listed, list) or not all(isinstance(p, str) and p for p in listed) or set(doc) - {"keys"}:
            raise InvalidInputError(f"trust file {file}: expected keys = [paths of PEM public keys]")
        out += [read_public_key(p if os.path.isabs(p) else file.parent / p) for p in listed]
    return list({k.fingerprint: k for k in out}.values())


@dataclass(frozen=True)
class PolicyTrust:
    """Whether the policy in force is signed by a pinned admin key: ``pinned`` (a root is
    configured here), ``trusted`` (pinned and verified), by whom, and one line saying so."""

    pinned: bool
    trusted: bool
    signer: str | None
    detail: str
    version: int | None

    def to_dict(self) -> dict[str, JsonValue]:
        return {"pinned": self.pinned, "trusted": self.trusted, "signer": self.signer, "detail": self.detail,
                "policy_version": self.version}


def policy_trust(store: ObjectStore, root: list[PublicKey] | None = None) -> PolicyTrust:
    """Check the policy in force against the pinned keys (``root``; default
    :func:`pinned_keys`): one listing of the registry's events and of the policy.set
    event's signatures."""
    root = pinned_keys() if root is None else root
    if not root:  # nothing to check: the registry is not even read
        return PolicyTrust(False, False, None, f"no trust root is pinned ({TRUSTED_KEYS_ENV} or {trust_file()}): "
                           "the policy's [keys] are taken as the registry holds them", None)
    pin = latest_pin(store)
    number = pin.version if pin is not None else None
    if pin is None:
        return PolicyTrust(True, False, None, "a trust root is pinned, but the registry has no policy signed by it",
                           None)
    check = check_event(store, pin.event, {k.fingerprint: k for k in root})
    if check.signed:
        return PolicyTrust(True, True, check.signer, f"policy version {pin.version} is signed by pinned key "
                           f"{check.signer} ({(check.fingerprint or '')[:16]})", number)
    why = {"unsigned": "is not signed", "unknown key": "is signed by no pinned key"}.get(
        check.status, f"is badly signed ({check.detail})")
    return PolicyTrust(True, False, None, f"policy version {pin.version} (policy.set event {pin.event.event_id}) "
                       f"{why}: it is not trusted", number)


def require_trusted_policy(store: ObjectStore) -> PolicyTrust:
    """:func:`policy_trust`, failing closed: with a root pinned, a policy not signed by a
    pinned key (or no policy) is an :class:`UntrustedPolicyError` naming why."""
    trust = policy_trust(store)
    if trust.pinned and not trust.trusted:
        raise UntrustedPolicyError(f"{trust.detail}; refused (the trust root is pinned by {TRUSTED_KEYS_ENV} or "
                                   f"{trust_file()})")
    return trust


def require_root_signer(signer: EventSigner | None, what: str) -> None:
    """Where a trust root is pinned, an admin change (``policy.set``, ``policy.restore``,
    ``hooks.set``) must be signed by a pinned key: anything else would be refused, or
    reported by ``verify``, for every reader who pinned it. A :class:`PolicyError` naming
    what to give; nothing where no root is pinned."""
    root = pinned_keys()
    if root and (signer is None or signer.public.fingerprint not in {k.fingerprint for k in root}):
        who = f"key {signer.public.short}" if signer is not None else "an unsigned change"
        raise PolicyError(f"{what} refused: a trust root is pinned here ({TRUSTED_KEYS_ENV} or the trust file) and "
                          f"{who} is not one of its keys; sign it with a pinned admin key (--key ADMIN_KEY)")
