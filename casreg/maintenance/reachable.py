"""What the ledger reaches: every live version's digest, its manifest, its packs.

A deleted version (a tombstone, :mod:`casreg.ledger.tombstones`) is no root: what only
deleted versions use becomes garbage like the leftovers of an interrupted push, and gc
reclaims it by the same two phases. The one exception is a deleted version an alias
still points at (an alias moved to it while it was being deleted): it stays a root until
the alias moves, so gc never deletes bytes under a pointer.

gc computes this to know what it may reclaim and verify to know what to check. The
ledger is read exactly as SQL reads it (compacted files plus uncovered segments), with a
guard: every version segment listed beforehand must be in what was read, or nothing is
computed from it (a silently short read would make gc delete live objects).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass, field

from blake3 import blake3

from casreg.concurrency import bounded_map, io_threads
from casreg.content.manifest import Manifest
from casreg.content.packs import decode_index
from casreg.digest import Digest
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import (
    EVENT_SIGNATURES,
    INDEXES,
    MANIFESTS,
    PACKS,
    SIGNATURES,
    VERSIONS,
    manifest_key,
    parse_object_key,
    parse_signature_key,
    parse_version_segment_key,
)
from casreg.storage import ObjectStore

__all__ = ["Reachability", "VersionRef", "deleted_versions", "ledger_versions", "scan"]


@dataclass(frozen=True, slots=True)
class VersionRef:
    """A version as the ledger records it: name, number, digest."""

    name: str
    version: int
    digest: Digest

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def hexdigest(self) -> str:
        return self.digest.hex


def ledger_versions(store: ObjectStore) -> list[VersionRef]:
    """Every version the ledger records, read through :func:`casreg.ledger.segments.versions_table`
    (the same source as SQL, so it stays right when segments are compacted).

    As a guard against a ledger read that silently misses records, every per-version
    segment listed beforehand must be in the table; otherwise this raises, and gc, which
    would treat the missing versions' objects as garbage, does not run."""
    from casreg.ledger.segments import versions_table

    listed = {parsed for key in store.list(VERSIONS) if (parsed := parse_version_segment_key(key)) is not None}
    try:
        table = versions_table(store, columns=["name", "version", "digest"])
    except CasregError:
        raise
    except Exception as err:  # pyarrow refusing a damaged segment
        first = str(err).splitlines()[0] if str(err) else ""
        raise IntegrityError(f"the ledger cannot be read ({type(err).__name__}: {first}); run casreg verify") from None
    out = []
    for row in table.to_pylist():
        try:
            digest = Digest.parse(row["digest"] or "")
        except ValueError:
            raise IntegrityError(f"the ledger record of {row['name']}:{row['version']} has a malformed digest "
                                 f"{str(row['digest'])[:80]!r}") from None
        out.append(VersionRef(row["name"], int(row["version"]), digest))
    missing = listed - {(v.name, v.version) for v in out}
    if missing:
        name, number = sorted(missing)[0]
        raise IntegrityError(f"the ledger read missed {len(missing)} listed version(s), e.g. {name}:{number}; "
                             "refusing to compute reachability from it")
    return out


def deleted_versions(store: ObjectStore, versions: list[VersionRef]) -> tuple[set[tuple[str, int]], list[str]]:
    """``(name, version)`` of the ``versions`` that are deleted and that no alias points
    at, i.e. that are no gc roots, and warnings. Every tombstone of a listed version is
    read and must name the digest the ledger records (else an :class:`IntegrityError`:
    gc computes nothing from a registry it cannot read). A model whose alias pointers do
    not read keeps all its deleted versions as roots (with a warning): nothing is deleted
    that a pointer might hold."""
    from casreg.ledger.pointers import read_pointer_events
    from casreg.ledger.tombstones import read_tombstones, tombstoned

    recorded = {(v.name, v.version): v.digest for v in versions}
    listed = [nv for nv in tombstoned(store) if nv in recorded]
    if not listed:
        return set(), []
    events = read_tombstones(store, only=listed)
    for (name, number), event in events.items():
        if event.to_digest != recorded[name, number]:
            raise IntegrityError(f"the tombstone of {name}:{number} deletes it as {event.to_digest}, but the ledger "
                                 f"records {recorded[name, number]}; refusing to compute reachability; "
                                 "run casreg verify")
    dead = set(events)
    warnings: list[str] = []
    for name in sorted({n for n, _ in dead}):
        mine = {(m, n) for m, n in dead if m == name}
        try:
            held = {(name, e.to_version) for e in read_pointer_events(store, name)
                    if e.to_digest is not None and e.to_version is not None}
        except CasregError as err:
            warnings.append(f"the alias pointers of {name} do not read ({err}); its deleted versions are kept for now")
            dead -= mine
            continue
        for m, number in sorted(held & mine):
            dead.discard((m, number))
            warnings.append(f"{m}:{number} is deleted but an alias still points at it; its objects are kept until "
                            "the alias moves")
    return dead, warnings


@dataclass(slots=True)
class _PackTable:
    """A pack's chunk offsets and stored sizes (ascending), and which ones a reachable
    manifest uses: ~13 bytes per stored chunk."""

    offsets: array  # type: ignore[type-arg]
    sizes: array  # type: ignore[type-arg]
    used: bytearray | None = None

    def mark(self, offset: int) -> None:
        i = bisect_left(self.offsets, offset)
        if i < len(self.offsets) and self.offsets[i] == offset:
            if self.used is None:
                self.used = bytearray(len(self.offsets))
            self.used[i] = 1

    def unused_bytes(self) -> int:
        if self.used is None:
            return sum(self.sizes)
        return sum(s for s, u in zip(self.sizes, self.used) if not u)


@dataclass(slots=True)
class Reachability:
    """Every object by kind, the versions, and what they reach (see :func:`scan`)."""

    packs: dict[str, str] = field(default_factory=dict)  # pack id -> key
    indexes: dict[str, str] = field(default_factory=dict)  # pack id -> index key
    manifests: dict[str, str] = field(default_factory=dict)  # hex -> key
    versions: list[VersionRef] = field(default_factory=list)
    deleted: set[tuple[str, int]] = field(default_factory=set)  # deleted versions, no roots
    warnings: list[str] = field(default_factory=list)
    reachable: set[str] = field(default_factory=set)  # manifest hexes the ledger reaches
    reachable_packs: set[str] = field(default_factory=set)
    leftovers: dict[str, frozenset[str]] = field(default_factory=dict)  # unreachable manifest -> its packs
    signatures: dict[str, list[str]] = field(default_factory=dict)  # version hex -> its signature objects
    repack_packs: int = 0
    repack_bytes: int = 0


def _read_index_table(store: ObjectStore, pack_id: str, key: str) -> _PackTable | None:
    try:
        data = store.read(key)
        if blake3(data).hexdigest() != pack_id:
            return None
        slots = decode_index(data, key)
    except (NotFoundError, IntegrityError):
        return None
    slots.sort(key=lambda s: s.offset)
    return _PackTable(array("Q", (s.offset for s in slots)), array("Q", (s.stored_size for s in slots)))


def _read_manifest(store: ObjectStore, hexd: str) -> Manifest | CasregError:
    key = manifest_key(hexd)
    try:
        return Manifest.from_bytes(store.read(key), expected=bytes.fromhex(hexd), where=key)
    except NotFoundError:
        return NotFoundError(f"object {key} is missing")
    except CasregError as err:
        return err


def scan(store: ObjectStore, *, threads: int | None = None, repack: bool = True) -> Reachability:
    """List every object, read the ledger, and follow every version to its manifest and
    packs. Listing comes first, so an object written later is never taken for garbage
    for want of the version that references it. Raises if a reachable manifest is
    missing or corrupt: its packs are then unknown, and nothing could be deleted safely."""
    s = Reachability()
    for prefix, target in ((PACKS, s.packs), (INDEXES, s.indexes), (MANIFESTS, s.manifests)):
        for key in store.list(prefix):
            parsed = parse_object_key(key)
            if parsed is not None and parsed[0] == prefix:
                target[parsed[1]] = key
    for key in store.list(f"{SIGNATURES}/"):  # version signatures; governance events' are never collected
        sig = None if key.startswith(f"{EVENT_SIGNATURES}/") else parse_signature_key(key)
        if sig is not None:
            s.signatures.setdefault(sig[0], []).append(key)
    s.versions = ledger_versions(store)
    s.deleted, s.warnings = deleted_versions(store, s.versions)
    s.reachable = {v.hexdigest for v in s.versions if (v.name, v.version) not in s.deleted}
    nthreads = io_threads(threads)

    tables: dict[str, _PackTable] = {}
    if repack:
        ids = sorted(s.indexes)
        for pid, table in zip(ids, bounded_map(lambda p: _read_index_table(store, p, s.indexes[p]), ids, nthreads)):
            if table is not None:
                tables[pid] = table

    by_version: dict[str, str] = {}
    for v in s.versions:
        if (v.name, v.version) not in s.deleted:
            by_version.setdefault(v.hexdigest, v.ref)
    order = sorted(s.reachable)
    for hexd, m in zip(order, bounded_map(lambda h: _read_manifest(store, h), order, nthreads)):
        if isinstance(m, CasregError):
            raise IntegrityError(f"cannot compute what is reachable: {m} (needed by {by_version[hexd]}); "
                                 "run casreg verify") from None
        for c in [c for e in m.entries for c in e.chunks] + m.bases:  # a delta's bases are as live as it
            s.reachable_packs.add(c.pack)
            t = tables.get(c.pack)
            if t is not None:
                t.mark(c.offset)
    order = sorted(set(s.manifests) - s.reachable)
    for hexd, m in zip(order, bounded_map(lambda h: _read_manifest(store, h), order, nthreads)):
        # an unreadable leftover cannot be used by any push (they verify it): it protects nothing
        s.leftovers[hexd] = frozenset() if isinstance(m, CasregError) else frozenset(m.pack_ids)
    for pid in s.reachable_packs:
        t = tables.get(pid)
        if t is not None and t.used is not None:
            unused = t.unused_bytes()
            if unused:
                s.repack_packs += 1
                s.repack_bytes += unused
    return s
