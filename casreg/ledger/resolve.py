"""Resolving a reference (:mod:`casreg.refs`) to the digest it names, once.

Every operation resolves its reference here exactly once and from then on works by
digest only, so a pointer that moves mid-operation can never mix two versions. What a
reference costs: ``NAME@ALIAS`` one pointer read and one bounded read of the version's
ledger segment, which must record the pointer's version with the pointer's digest
(:func:`~casreg.ledger.pointers.confirm_pointer`: a pointer is mutable, the ledger is
not; a disagreement is an :class:`~casreg.errors.IntegrityError` naming the pointer);
``NAME:N`` one read of the version's ledger segment; ``NAME`` a listing of its segments
(from HEAD's coverage on where the store lists from a key) and one read; ``blake3:HEX``
one existence check or, for a prefix, one listing of ``manifests/<aa>/``. A reference
that names a version (all but a bare digest) also reads the version's tombstone key
(:mod:`casreg.ledger.tombstones`; absent unless it was deleted): a deleted version is a
:class:`~casreg.errors.DeletedVersionError` saying who deleted it, when and why; ``NAME``
then means the newest version not deleted. A bare digest names content, not a version:
it resolves while the content is stored (until ``gc`` reclaims a deleted version's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from casreg.digest import Digest
from casreg.errors import (
    AmbiguousReferenceError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    UnknownReferenceError,
)
from casreg.keys import CONFIG_KEY, MANIFESTS, manifest_key, parse_manifest_key
from casreg.ledger.pointers import confirm_pointer, read_pointer, require_not_deleted
from casreg.ledger.segments import latest_number, list_versions, read_version, versions_table
from casreg.ledger.tombstones import deleted_error, read_tombstone, require_live, tombstoned
from casreg.records import Version
from casreg.refs import FULL_HEX, Ref, RefKind, parse_ref
from casreg.storage import ObjectStore

__all__ = ["Resolved", "resolve", "resolve_in_model", "unknown", "version_record"]


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a reference pointed at when it was resolved."""

    digest: Digest
    name: str | None = None  # None for a bare digest reference
    version: int | None = None
    #: The alias's annotations when the reference was NAME@ALIAS (from the same pointer
    #: read that gave the digest); not part of equality.
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def hexdigest(self) -> str:
        return self.digest.hex

    @property
    def label(self) -> str:
        """``NAME:N`` where known, else the digest."""
        return f"{self.name}:{self.version}" if self.name is not None else str(self.digest)


def unknown(store: ObjectStore, message: str) -> UnknownReferenceError:
    """The error for a reference that names nothing, saying so when the registry itself
    does not exist yet (the usual cause: a wrong ``--registry``)."""
    if not store.exists(CONFIG_KEY):
        return UnknownReferenceError(f"{message}: there is no registry at {store.url} yet (push a model first)")
    return UnknownReferenceError(message)


def resolve(store: ObjectStore, ref: str | Ref) -> Resolved:
    """The digest (and name and number, where the reference has them) ``ref`` names now;
    :class:`UnknownReferenceError` if it names nothing, :class:`AmbiguousReferenceError`
    for a digest prefix that matches several versions."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.kind is RefKind.DIGEST and r.name is None:
        return Resolved(Digest.from_hex(_find_digest(store, r.digest or "")))
    assert r.name is not None
    if r.kind is RefKind.ALIAS:
        assert r.alias is not None
        p = read_pointer(store, r.name, r.alias)
        if p is None:
            require_not_deleted(store, r.name, r.alias)
            p = read_pointer(store, r.name, r.alias)  # set meanwhile (the ledger saw the move)?
        if p is None:
            raise unknown(store, f"{r} is not set")
        pointer, name = p, r.name
        _both(store,
              # the pointer names its own model (checked on read) and the ledger agrees
              lambda: confirm_pointer(store, pointer),
              # an alias moved to it as it was deleted (docs/retention.md)
              lambda: require_live(store, name, pointer.version, pointer.digest))
        return Resolved(p.digest, r.name, p.version, p.annotations)
    if r.kind is RefKind.DIGEST:
        prefix = r.digest or ""
        matches = [v for v in list_versions(store, r.name) if v.digest.hex.startswith(prefix)]
        dead = tombstoned(store, r.name) if matches else set()
        live = [v for v in matches if (v.name, v.version) not in dead]
        if matches and not live:
            gone = read_tombstone(store, r.name, matches[-1].version)
            if gone is not None:
                raise deleted_error(gone)
        matches = live
        digests = sorted({v.digest for v in matches})
        if not digests:
            raise unknown(store, f"{r.name} has no version with digest {r.digest}")
        if len(digests) > 1:
            raise AmbiguousReferenceError(
                f"{r} matches {len(digests)} versions of {r.name} with different digests; give more digits")
        v = matches[-1]  # the same content pushed more than once: its newest version
        return Resolved(v.digest, v.name, v.version)
    if r.kind is RefKind.NUMBER:
        assert r.number is not None
        try:
            v = read_version(store, r.name, r.number)
        except NotFoundError:
            latest = latest_number(store, r.name)
            hint = f" (latest is {r.name}:{latest})" if latest else f" ({r.name} has no versions)"
            raise unknown(store, f"{r} does not exist{hint}") from None
        require_live(store, v.name, v.version, v.digest)
        return Resolved(v.digest, v.name, v.version)
    latest = latest_number(store, r.name)
    if latest is None:
        raise unknown(store, f"model {r.name!r} has no versions in {store.url}")
    gone = read_tombstone(store, r.name, latest)
    if gone is not None:  # the newest version that was not deleted (one listing, only in this case)
        numbers = {n for _, n in tombstoned(store, r.name)}
        left = next((n for n in range(latest - 1, 0, -1) if n not in numbers), None)
        if left is None:
            raise deleted_error(gone, prefix=f"every version of {r.name} was deleted; the latest, ")
        latest = left
    v = read_version(store, r.name, latest)
    return Resolved(v.digest, v.name, v.version)


def _both(store: ObjectStore, first: Callable[[], object], second: Callable[[], object]) -> None:
    """Run two independent checks; on a remote store at once (one round trip instead of
    two). Either failing fails the call, ``first``'s error taking precedence."""
    if not store.capabilities.remote:
        first()
        second()
        return
    from concurrent.futures import ThreadPoolExecutor  # only for remote stores: resolving is start-up

    with ThreadPoolExecutor(1, thread_name_prefix="casreg-resolve") as pool:
        later = pool.submit(second)
        try:
            first()
        finally:
            error = later.exception()  # waits; if first() raised, its error propagates instead
        if error is not None:
            raise error


def _find_digest(store: ObjectStore, hexd: str) -> str:
    """The one stored version digest ``hexd`` (full, or a prefix of 12+ digits) names."""
    if len(hexd) == FULL_HEX:
        if store.exists(manifest_key(hexd)):
            return hexd
        _missing_manifest(store, hexd)
        raise unknown(store, f"no version has digest blake3:{hexd}")
    found = sorted({h for key in store.list(f"{MANIFESTS}/{hexd[:2]}")
                    if (h := parse_manifest_key(key)) is not None and h.startswith(hexd)})
    if not found:
        _missing_manifest(store, hexd)
        raise unknown(store, f"no version has a digest starting with {hexd}")
    if len(found) > 1:
        raise AmbiguousReferenceError(
            f"digest prefix {hexd} matches {len(found)} versions ({', '.join(f[:16] for f in found[:4])}...); "
            "give more digits")
    return found[0]


def _missing_manifest(store: ObjectStore, hexd: str) -> None:
    """A digest (or prefix) no manifest has: if the ledger records a version with it, the
    manifest was lost or deleted, which is damage (:class:`IntegrityError` naming the
    manifest), not a reference to nothing. Only looked up on this failure path."""
    table = versions_table(store, columns=["name", "version", "digest"])
    for name, number, digest in zip(*(table.column(c).to_pylist() for c in ("name", "version", "digest"))):
        full = str(digest).removeprefix("blake3:")
        if full.startswith(hexd):
            raise IntegrityError(f"manifest {manifest_key(full)} is missing, but {name}:{number} records digest "
                                 f"blake3:{full}; run casreg verify")


def resolve_in_model(store: ObjectStore, name: str, ref: str | int) -> Resolved:
    """A version of model ``name``: a number (``3`` or ``"3"``), a reference, or a digest
    that must be one of ``name``'s versions."""
    text = str(ref)
    if text.isdigit():
        text = f"{name}:{text}"
    r = parse_ref(text)
    if r.name is None:  # a bare digest must be a version of this model
        assert r.digest is not None
        r = Ref(name=name, digest=r.digest)
    resolved = resolve(store, r)
    if resolved.name != name:
        raise InvalidInputError(f"{text} is a version of {resolved.name}, not of {name}")
    return resolved


def version_record(store: ObjectStore, resolved: Resolved) -> Version:
    """The ledger record of a resolved version; for a bare digest, the newest version
    holding that content."""
    if resolved.name is not None and resolved.version is not None:
        return read_version(store, resolved.name, resolved.version)
    table = versions_table(store, columns=["name", "version", "digest", "created_at"])
    rows = [r for r in table.to_pylist() if r["digest"] == resolved.digest]
    if not rows:
        raise unknown(store, f"{resolved.digest} is stored but no version records it")
    newest = max(rows, key=lambda r: r["created_at"])
    return read_version(store, newest["name"], newest["version"])
