"""Signed versions: storing, finding and checking signatures of versions (docs/signing.md).

A signature is an object ``signatures/<version hex>/<key fingerprint>.sig.json`` written by
create-if-absent (:func:`casreg.keys.signature_key`): one per version and key, the
model_signing bundle :mod:`casreg.governance.signatures` makes from the version's manifest.
Private keys never enter the registry; public keys come from files the caller gives, or
from the policy's ``[keys]`` table (name = PEM, or a list of PEMs), where a ``--signed-by``
word is a key name or a role whose member patterns (``[roles]``) match key names.

A signature proves who vouched for which bytes only against a public key obtained outside
the bucket (a file, or a policy the reader trusts): anyone who can write the bucket can
write a signature object with their own key, and can delete signatures.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from casreg.content.manifest import Manifest
from casreg.errors import IntegrityError, InvalidInputError, NotFoundError, PolicyError
from casreg.governance.signatures import (
    MAX_SIGNATURE_BYTES,
    PublicKey,
    check_bundle,
    load_public_key,
    parse_bundle,
    read_private_key,
    read_public_key,
    sign_statement,
    statement,
)
from casreg.keys import parse_signature_key, signature_key, signatures_prefix
from casreg.records import JsonValue
from casreg.storage import ByteRange, ObjectStore

__all__ = ["SignatureCheck", "sign_version", "check_signatures", "require_signed", "policy_keys", "trusted_keys",
           "signature_bundle"]

Status = Literal["verified", "invalid", "unknown key"]


@dataclass(frozen=True)
class SignatureCheck:
    """One signature object of a version, and what checking it found: ``verified`` (by a
    key given or named in the policy), ``invalid`` (``detail`` says why: forged, damaged,
    made for other contents) or ``unknown key`` (no public key with that fingerprint was
    given, so it proves nothing)."""

    fingerprint: str
    key: str  # the object's key in the store
    status: Status
    signer: str | None = None  # the key's name in the policy, or the file it was read from
    detail: str = ""

    def to_dict(self) -> dict[str, JsonValue]:
        return {"fingerprint": self.fingerprint, "signer": self.signer, "status": self.status,
                "detail": self.detail or None, "key": self.key}


def _read(store: ObjectStore, key: str) -> bytes:
    return store.read(key, ByteRange(0, MAX_SIGNATURE_BYTES + 1))


def sign_version(store: ObjectStore, manifest: Manifest, *, name: str, ref: str | None,
                 private_key: str | os.PathLike[str]) -> SignatureCheck:
    """Sign the version ``manifest`` describes with the key in PEM file ``private_key``
    and store the signature (create-if-absent). If that key already signed the version,
    the stored signature is kept (and checked: a damaged one is an
    :class:`IntegrityError`)."""
    private, public = read_private_key(private_key)
    key = signature_key(manifest.hexdigest, public.fingerprint)
    data = sign_statement(statement(manifest, name=name, ref=ref), private, public)
    if not store.create(key, data):
        check_bundle(parse_bundle(_read(store, key), key), public, manifest, key)
        return SignatureCheck(public.fingerprint, key, "verified", public.name, "already signed by this key")
    return SignatureCheck(public.fingerprint, key, "verified", public.name)


def signature_bundle(store: ObjectStore, manifest: Manifest, key: PublicKey) -> bytes:
    """The stored signature of this version by ``key``, checked (:func:`check_bundle`), as
    bytes model_signing reads; :class:`NotFoundError` if that key did not sign it."""
    where = signature_key(manifest.hexdigest, key.fingerprint)
    try:
        data = _read(store, where)
    except NotFoundError:
        raise NotFoundError(f"version {manifest.version_digest} has no signature by key {key.short}") from None
    check_bundle(parse_bundle(data, where), key, manifest, where)
    return data


def check_signatures(store: ObjectStore, manifest: Manifest, keys: Iterable[PublicKey]) -> list[SignatureCheck]:
    """Every signature object of the version, each checked against the public key with
    its fingerprint among ``keys`` (``unknown key`` when there is none); the objects are
    listed, so a signature by a key not given is reported too."""
    by_fp = {k.fingerprint: k for k in keys}
    out = []
    for key in sorted(store.list(signatures_prefix(manifest.hexdigest))):
        parsed = parse_signature_key(key)
        if parsed is None or parsed[0] != manifest.hexdigest:
            continue
        fp = parsed[1]
        public = by_fp.get(fp)
        if public is None:
            out.append(SignatureCheck(fp, key, "unknown key"))
            continue
        try:
            check_bundle(parse_bundle(_read(store, key), key), public, manifest, key)
        except IntegrityError as err:
            out.append(SignatureCheck(fp, key, "invalid", public.name, str(err)))
        except NotFoundError:
            continue  # deleted since listed
        else:
            out.append(SignatureCheck(fp, key, "verified", public.name))
    return out


def require_signed(store: ObjectStore, manifest: Manifest, keys: Sequence[PublicKey], label: str) -> SignatureCheck:
    """The check of a signature of the version by one of ``keys`` that verifies. None of
    them signed it: :class:`PolicyError` (exit 8). One did but its signature does not
    verify (forged, damaged, or made for other contents) and none verifies:
    :class:`IntegrityError` (exit 6), naming the object."""
    failures: list[IntegrityError] = []
    for public in keys:
        where = signature_key(manifest.hexdigest, public.fingerprint)
        try:
            data = _read(store, where)
        except NotFoundError:
            continue
        try:
            check_bundle(parse_bundle(data, where), public, manifest, where)
        except IntegrityError as err:
            failures.append(err)
            continue
        return SignatureCheck(public.fingerprint, where, "verified", public.name)
    if failures:
        raise IntegrityError(f"{label}: {failures[0]}")
    who = ", ".join(f"{k.name} ({k.short})" for k in keys)
    raise PolicyError(f"{label} is not signed by {who}; refused")


# -- public keys from the policy ------------------------------------------------------------------------
def policy_keys(doc: object) -> dict[str, list[PublicKey]]:
    """The policy's ``[keys]``: name -> its public keys (a PEM text, or a list of them while
    a key is rotated). :class:`InvalidInputError` naming the entry if one is malformed."""
    table = doc.get("keys") if isinstance(doc, dict) else None
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise InvalidInputError("keys: expected a table of name = public key PEM (or a list of them)")
    out: dict[str, list[PublicKey]] = {}
    for name, value in table.items():
        pems = [value] if isinstance(value, str) else value
        if not isinstance(pems, list) or not pems or not all(isinstance(p, str) for p in pems):
            raise InvalidInputError(f"keys.{name}: expected a public key PEM text or a list of them")
        out[name] = [load_public_key(p.encode(), f"keys.{name}", name) for p in pems]
    return out


def trusted_keys(words: Sequence[str], keys: dict[str, list[PublicKey]],
                 roles: dict[str, tuple[str, ...]]) -> list[PublicKey]:
    """The public keys ``words`` name: each a public key file (a path that exists), a name
    in the policy's ``[keys]``, or a role whose ``[roles]`` patterns match key names.
    :class:`InvalidInputError` for a word that is none of these."""
    out: dict[str, PublicKey] = {}
    for word in words:
        if os.path.isfile(word):
            found = [read_public_key(word)]
        elif word in keys:
            found = keys[word]
        elif word in roles:
            found = [k for name, ks in keys.items() if any(fnmatch.fnmatchcase(name, p) for p in roles[word])
                     for k in ks]
            if not found:
                raise InvalidInputError(f"role {word!r} matches no key in the policy's [keys]")
        else:
            raise InvalidInputError(f"{word!r} is neither a public key file nor a key or role of the policy "
                                    f"(keys: {', '.join(sorted(keys)) or 'none'})")
        for k in found:
            out.setdefault(k.fingerprint, k)
    return list(out.values())
