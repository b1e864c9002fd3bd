"""``verify``: re-read and re-hash everything reachable, report what is bad or missing.

One version (``verify(ref)``): its manifest (trailer, fields, recomputed tree digest) and
every chunk it references, each decoded and checked against its BLAKE3, exactly as a
pull would, but without writing anything.

The whole registry (``verify()``): every ledger record, every alias pointer, every
manifest a version references, and every pack, whole: its magic, every chunk its index
lists (decoded and hashed, referenced or not, since pushes dedup against any indexed
chunk), its trailer, its size, and its index object (``BLAKE3(index) == pack id`` and
equal to the trailer). Each chunk a manifest references must then be one of the verified
chunks of its pack (same offset, sizes, codec and digest).

Packs are read with a few large ranged reads each (up to ``SPAN`` bytes, several chunks
per request), never one request per chunk; at most ``threads`` spans are in memory. For
the whole registry the verified indexes are kept for the manifest checks: 52 bytes per
stored chunk (the same order as a pusher's chunk index, docs/FORMAT.md §10).

Bad and missing objects are reported by key with the reason; unreferenced leftovers of
interrupted pushes are not problems (``gc`` reclaims them) and are only counted.
"""

from __future__ import annotations

import json
import os
import struct
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from casreg.concurrency import bounded_map
from casreg.content.codec import Codec, decode_verified
from casreg.content.config import RegistryConfig, max_chunk_size
from casreg.content.delta import parse_header
from casreg.content.fetch import read_chunk, read_span_stats, spans
from casreg.content.manifest import MAX_STORED_MANIFEST, ChunkRef, Entry, Manifest, layout_digest
from casreg.content.packs import _ENTRY, _TAIL, INDEX_MAGIC, MAX_INDEX_BYTES, PACK_MAGIC, decode_index
from casreg.digest import Digest
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import (
    CONFIG_KEY,
    EVENTS,
    HEAD_KEY,
    HOOKS_KEY,
    INDEXES,
    MANIFESTS,
    PACKS,
    POINTERS,
    REFS,
    REGISTRY_EVENTS,
    TOMBSTONES,
    VERSIONS,
    index_key,
    manifest_key,
    pack_key,
    parse_event_segment_key,
    parse_object_key,
    parse_pointer_key,
    parse_version_copy_key,
    parse_version_segment_key,
    version_segment_key,
)
from casreg.ledger.head import MAX_HEAD_BYTES, CompactedFile, LedgerHead
from casreg.ledger.schema import (
    SEGMENT_COLUMN,
    check_segment,
    compacted_event_schema,
    event_schema,
    load_compacted,
    version_schema,
    versions_from_table,
)
from casreg.ledger.segments import MAX_COPY_BYTES, MAX_EVENT_BYTES, MAX_SEGMENT_BYTES, segment_disagreement
from casreg.maintenance.reachable import VersionRef, ledger_versions
from casreg.progress import NullProgress, Progress
from casreg.records import AliasEvent, AliasPointer, JsonValue, Version
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Problem", "VerifyReport", "verify_registry", "verify_version"]

SPAN = 16 << 20  # bytes per ranged read
GAP = 1 << 20  # unreferenced bytes a single-version read may skip over instead of splitting
MAX_AFFECTED = 20  # version refs listed per problem


@dataclass(slots=True)
class Problem:
    """One bad or missing object."""

    key: str  # the object's key (or a ledger/pointer key)
    kind: str  # "missing" or "corrupt"
    reason: str  # one line
    versions: list[str] = field(default_factory=list)  # versions that rely on it, when known

    def affect(self, ref: str) -> None:
        if ref not in self.versions and len(self.versions) < MAX_AFFECTED:
            self.versions.append(ref)

    def line(self) -> str:
        affects = f" (needed by {', '.join(self.versions)}{', ...' if len(self.versions) >= MAX_AFFECTED else ''})" \
            if self.versions else ""
        return f"{self.kind} {self.key}: {self.reason}{affects}"

    def to_dict(self) -> dict[str, JsonValue]:
        return {"key": self.key, "kind": self.kind, "reason": self.reason, "versions": list(self.versions)}


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` checked and found. ``ok`` means no problem (warnings allowed)."""

    url: str
    ref: str | None = None  # None: the whole registry
    digest: Digest | None = None  # the version verified, for ``verify(ref)``
    versions: int = 0
    manifests: int = 0
    packs: int = 0
    indexes: int = 0
    chunks: int = 0
    bytes_read: int = 0
    deleted_versions: int = 0  # versions deleted (tombstoned): their objects are not checked
    unreferenced_manifests: int = 0  # leftovers of interrupted pushes: not problems
    unreferenced_packs: int = 0
    records: int = 0  # version records compared with their manifests
    read_data: bool = False  # whether file digests were checked (``--read-data``)
    files_hashed: int = 0  # distinct files (digest and chunk layout) read and hashed whole
    bytes_hashed: int = 0
    files_reused: int = 0  # files whose digest and layout were already checked in this run
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What was not checked, and why, when nothing is wrong with that (signing not
    #: configured, no trust root pinned): said once, neither a problem nor a warning.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "url": self.url, "ref": self.ref, "digest": self.digest, "ok": self.ok,
            "versions": self.versions, "deleted_versions": self.deleted_versions,
            "manifests": self.manifests, "packs": self.packs,
            "indexes": self.indexes, "chunks": self.chunks, "bytes_read": self.bytes_read,
            "unreferenced_manifests": self.unreferenced_manifests, "unreferenced_packs": self.unreferenced_packs,
            "records": self.records, "read_data": self.read_data, "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed, "files_reused": self.files_reused,
            "problem_count": len(self.problems), "problems": [p.to_dict() for p in self.problems],
            "warnings": list(self.warnings), "notes": list(self.notes),
        }


# -- checking chunks -------------------------------------------------------------------------------
def _check_chunk(payload: memoryview, codec: int, raw_size: int, digest: bytes) -> str | None:
    """``None`` if the stored payload decodes to ``raw_size`` bytes hashing to ``digest``,
    else why not (as :func:`casreg.content.fetch.read_chunk` would refuse it). A delta
    chunk (codec 3) needs its bases, which only a version's manifest records: here its
    header is checked, and each version that uses it decodes it whole
    (:func:`_check_delta`)."""
    try:
        if codec == Codec.DELTA:
            parse_header(payload, raw_size)
            return None
        decode_verified(codec, payload, raw_size, digest)
    except IntegrityError as err:
        return str(err)
    return None


def _check_delta(store: ObjectStore, ref: ChunkRef, m: Manifest) -> str | None:
    """``None`` if the delta chunk ``ref`` of version ``m`` decodes, with the bases its
    manifest records (read from the registry, not a cache), to its digest; else why not."""
    try:
        read_chunk(store, ref, cache=None, bases=m.base_map)
    except CasregError as err:
        return str(err)
    return None


class _Bad:
    """Chunk failures of one pack, folded into one problem line."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self.offsets: set[int] = set()

    def add(self, offset: int, digest: bytes, why: str) -> None:
        self.count += 1
        self.offsets.add(offset)
        if self.first is None:
            self.first = f"chunk blake3:{digest.hex()} at offset {offset} {why}"

    def problem(self, key: str, total: int) -> Problem | None:
        if not self.count:
            return None
        kind = "corrupt"
        return Problem(key, kind, f"{self.count} of {total} chunk(s) bad, first: {self.first}")


def _spans(items: list[tuple[int, int]], gap: int) -> list[tuple[int, int, int, int]]:
    """Group ``(offset, length)`` items sorted by offset into reads ``(start, end, i, j)``
    covering items ``i..j-1``, each at most ``SPAN`` bytes (unless one item is larger),
    skipping gaps wider than ``gap``."""
    out = []
    i = 0
    while i < len(items):
        start, end = items[i][0], items[i][0] + items[i][1]
        j = i + 1
        while j < len(items):
            o, n = items[j]
            if o - end > gap or max(end, o + n) - start > SPAN:
                break
            end = max(end, o + n)
            j += 1
        out.append((start, end, i, j))
        i = j
    return out


# -- one version ----------------------------------------------------------------------------------
def _verify_refs(store: ObjectStore, pack: str, refs: list[ChunkRef]) -> tuple[Problem | None, int, int]:
    """Read the referenced chunks of one pack with coalesced ranged reads and check each.
    Returns (problem, chunks checked, bytes read)."""
    key = pack_key(pack)
    bad = _Bad()
    nbytes = 0
    items = [(r.offset, r.stored_size) for r in refs]
    for start, end, i, j in _spans(items, GAP):
        try:
            data = store.read(key, ByteRange(start, end))
        except NotFoundError:
            return Problem(key, "missing", f"the pack is missing ({len(refs)} referenced chunk(s))"), len(refs), nbytes
        nbytes += len(data)
        view = memoryview(data)
        for r in refs[i:j]:
            lo = r.offset - start
            if lo + r.stored_size > len(view):
                bad.add(r.offset, r.digest, f"is truncated (the pack ends at {start + len(view)})")
                continue
            why = _check_chunk(view[lo:lo + r.stored_size], r.codec, r.raw_size, r.digest)
            if why:
                bad.add(r.offset, r.digest, f"is corrupt: {why}")
    return bad.problem(key, len(refs)), len(refs), nbytes


def verify_version(store: ObjectStore, digest: Digest, *, label: str, progress: Progress | None = None,
                   threads: int | None = None, version: tuple[str, int] | None = None,
                   read_data: bool = False) -> VerifyReport:
    """Verify one version: its manifest and every chunk it references; its record
    (``version``: the name and number it was resolved to) against its manifest; and
    with ``read_data``, every file's bytes against its digest."""
    progress = progress or NullProgress()
    report = VerifyReport(store.url, label, digest, versions=1)
    key = manifest_key(digest)
    try:
        data = store.read(key, ByteRange(0, MAX_STORED_MANIFEST + 1))
    except NotFoundError:
        report.problems.append(Problem(key, "missing", "the version's manifest is missing", [label]))
        return report
    report.bytes_read += len(data)
    try:
        manifest = Manifest.from_bytes(data, expected=digest.raw, where=key, max_chunk=max_chunk_size(store))
    except IntegrityError as err:
        report.problems.append(Problem(key, "corrupt", _reason(str(err), key), [label]))
        return report
    report.manifests = 1
    by_pack: dict[str, dict[tuple[int, int], ChunkRef]] = {}
    for c in [c for e in manifest.entries for c in e.chunks] + manifest.bases:  # a delta's bases too
        by_pack.setdefault(c.pack, {})[(c.offset, c.stored_size)] = c
    report.packs = len(by_pack)
    total = sum(c.stored_size for refs in by_pack.values() for c in refs.values())
    jobs = [(p, sorted(refs.values(), key=lambda c: c.offset)) for p, refs in sorted(by_pack.items())]
    progress.start("verify", total)
    try:
        for (_pack, refs), (problem, n, nbytes) in zip(
                jobs, bounded_map(lambda job: _verify_refs(store, *job), jobs, _threads(threads), 2)):
            report.chunks += n
            report.bytes_read += nbytes
            progress.advance(sum(c.stored_size for c in refs))
            if problem is not None:
                problem.affect(label)
                report.problems.append(problem)
    finally:
        progress.finish()
    bad = {p.key for p in report.problems}  # a delta in or based on a bad pack is already reported with it
    deltas = {c.digest: c for refs in by_pack.values() for c in refs.values() if c.codec == Codec.DELTA
              and pack_key(c.pack) not in bad and not ({pack_key(b.pack) for b in manifest.bases} & bad)}
    for why in bounded_map(lambda c: _check_delta(store, c, manifest), list(deltas.values()), _threads(threads)):
        if why:
            report.problems.append(Problem(key, "corrupt", f"a delta chunk does not decode: {why}", [label]))
    _version_contents(store, manifest, label, version, report, progress, _threads(threads), read_data=read_data)
    return report


def _version_order(ref: str) -> tuple[str, int]:
    name, _, number = ref.rpartition(":")
    return (name, int(number)) if number.isdigit() else (ref, 0)


def _threads(threads: int | None) -> int:
    return threads or os.cpu_count() or 2


def _reason(message: str, key: str) -> str:
    """``"manifest K is corrupt: why"`` → ``"why"`` (the key is printed once, in front)."""
    for prefix in (f"manifest {key} is corrupt: ", f"manifest {key} is hostile: ", f"index {key} is "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


# -- whole packs ------------------------------------------------------------------------------------
@dataclass(slots=True)
class _PackResult:
    index: bytes | None = None  # the verified trailer: what manifest references are checked against
    bad_offsets: set[int] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chunks: int = 0
    bytes_read: int = 0
    size: int = 0
    missing: bool = False


def _pack_trailer(store: ObjectStore, key: str, size: int) -> bytes:
    if size < len(PACK_MAGIC) + _TAIL.size:
        raise IntegrityError(f"is truncated ({size} bytes)")
    count, magic = _TAIL.unpack(store.read(key, ByteRange(size - _TAIL.size, size)))
    length = count * _ENTRY.size + _TAIL.size
    if magic != INDEX_MAGIC or length > size - len(PACK_MAGIC):
        raise IntegrityError("does not end with an index")
    return store.read(key, ByteRange(size - length, size))


def _verify_pack(store: ObjectStore, pack_id: str, index: bytes | None, max_chunk: int) -> _PackResult:
    """Read one pack in a few ranged reads and check all of it (see the module docstring).
    ``index`` is the pack's verified index object, or ``None`` if it has none."""
    key = pack_key(pack_id)
    res = _PackResult()
    try:
        size = res.size = store.size(key)
        trailer_known = index is not None
        if index is None:
            index = _pack_trailer(store, key, size)
            res.bytes_read += len(index) + _TAIL.size
            if blake3(index).hexdigest() != pack_id:
                raise IntegrityError("its trailing index does not hash to its name")
        try:
            slots = sorted(decode_index(index, key), key=lambda s: s.offset)
        except IntegrityError:
            raise IntegrityError("its trailing index is malformed") from None
    except NotFoundError:
        res.missing = True  # a problem if a version needs it or its index remains (decided later)
        return res
    except IntegrityError as err:
        res.problems.append(Problem(key, "corrupt", str(err)))
        return res
    reasons: list[str] = []
    expected = len(PACK_MAGIC)
    for s in slots:
        if s.offset != expected:
            res.problems.append(Problem(key, "corrupt", f"its index does not lay chunks end to end "
                                                        f"(offset {s.offset}, expected {expected})"))
            return res
        expected += s.stored_size
    expected += len(index)
    res.chunks = len(slots)
    if size != expected:
        reasons.append(f"it has {size} bytes, its index says {expected}")

    bad = _Bad()
    items = [(0, len(PACK_MAGIC))] + [(s.offset, s.stored_size) for s in slots] + [(expected - len(index), len(index))]
    for start, end, i, j in _spans(items, 0):
        data = store.read(key, ByteRange(start, end)) if start < size else b""
        res.bytes_read += len(data)
        view = memoryview(data)
        for n in range(i, j):
            lo = items[n][0] - start
            part = view[lo:lo + items[n][1]]
            if n == 0:
                if part != PACK_MAGIC:
                    reasons.append("it does not start with the pack magic")
            elif n == len(items) - 1:
                if trailer_known and part != index:
                    reasons.append("it does not end with its index (the index object differs)")
            else:
                s = slots[n - 1]
                if len(part) < s.stored_size:
                    bad.add(s.offset, s.digest, f"is truncated (the pack ends at {start + len(view)})")
                    continue
                if s.raw_size > max_chunk:  # never decoded: a claim of up to 4 GiB would be allocated
                    bad.add(s.offset, s.digest, f"claims {s.raw_size:,} bytes, more than the registry's "
                                                f"maximum chunk size {max_chunk:,}")
                    continue
                why = _check_chunk(part, s.codec, s.raw_size, s.digest)
                if why:
                    bad.add(s.offset, s.digest, f"is corrupt: {why}")
    if bad.count:
        reasons.append(f"{bad.count} of {len(slots)} chunk(s) bad, first: {bad.first}")
    if reasons:
        res.problems.append(Problem(key, "corrupt", "; ".join(reasons)))
    res.bad_offsets = bad.offsets
    res.index = index
    return res


def _index_pack_size(index: bytes) -> int:
    """The size of the pack an index describes (entries are written in offset order)."""
    count = (len(index) - _TAIL.size) // _ENTRY.size
    if not count:
        return len(PACK_MAGIC) + len(index)
    _, offset, stored, _, _ = _ENTRY.unpack_from(index, (count - 1) * _ENTRY.size)
    return int(offset) + int(stored) + len(index)


class _Slots:
    """A verified index, searched by offset without unpacking it (52 bytes per chunk)."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offsets = _OffsetView(data, (len(data) - _TAIL.size) // _ENTRY.size)

    def find(self, ref: ChunkRef) -> bool | None:
        """True if ``ref`` is exactly one of the pack's chunks, False if a different chunk
        starts there, None if none does."""
        i = bisect_left(self.offsets, ref.offset)
        if i >= len(self.offsets) or self.offsets[i] != ref.offset:
            return None
        digest, offset, stored, raw, codec = _ENTRY.unpack_from(self.data, i * _ENTRY.size)
        return (digest, stored, raw, codec) == (ref.digest, ref.stored_size, ref.raw_size, ref.codec)


class _OffsetView:
    """Offsets of an index's entries as a sequence, read on demand (for bisect)."""

    __slots__ = ("data", "count")

    def __init__(self, data: bytes, count: int) -> None:
        self.data, self.count = data, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> int:
        return int(struct.unpack_from("<Q", self.data, i * _ENTRY.size + 32)[0])


# -- the whole registry -----------------------------------------------------------------------------
def _ledger(store: ObjectStore, report: VerifyReport) -> list[VersionRef]:
    """Every version the ledger records; if the ledger does not read as a whole, the
    damaged segments are reported one by one and the readable ones kept."""
    try:
        return ledger_versions(store)
    except IntegrityError as err:
        first = str(err)
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: list[VersionRef] = []
    bad = 0
    for key in sorted(store.list(VERSIONS)):
        if parse_version_segment_key(key) is None:
            continue
        try:
            pf = pq.ParquetFile(pa.BufferReader(store.read(key)))  # not read_table: apache/arrow#34314
            rows = pf.read(columns=["name", "version", "digest"], use_threads=False).to_pylist()
            for row in rows:
                out.append(VersionRef(row["name"], int(row["version"]), Digest.parse(str(row["digest"]))))
        except NotFoundError:
            continue
        except Exception as err:  # noqa: BLE001 - whatever pyarrow says about a damaged file
            bad += 1
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            report.problems.append(Problem(key, "corrupt", f"the ledger segment does not read: {msg[:200]}"))
    if not bad and not first.startswith(f"ledger segment {VERSIONS}/"):  # a named segment: _segments reports it
        report.problems.append(Problem(VERSIONS, "corrupt", first))
    return out


def _read_pointers(store: ObjectStore, report: VerifyReport) -> list[AliasPointer]:
    """Every alias that is set. Read before the ledger: an alias can only point at a
    version committed before it moved. A pointer that is malformed or holds a move of
    another model or alias than its key names is reported (:func:`decode_pointer`)."""
    from casreg.ledger.pointers import MAX_POINTER_BYTES, decode_pointer

    out = []
    for key in sorted(store.list(POINTERS)):
        if parse_pointer_key(key) is None:
            continue
        try:
            event = decode_pointer(store.read(key, ByteRange(0, MAX_POINTER_BYTES + 1)), key)
        except NotFoundError:
            continue
        except IntegrityError as err:
            reason = str(err).removeprefix(f"alias pointer {key} ").removesuffix("; run casreg verify")
            report.problems.append(Problem(key, "corrupt", reason))
            continue
        if event.alias is not None and event.to_digest is not None and event.to_version is not None:
            out.append(AliasPointer(event.name, event.alias, event.to_digest, event.to_version, event))
    return out


def _check_pointers_and_policy(store: ObjectStore, pointers: list[AliasPointer], versions: list[VersionRef],
                               report: VerifyReport) -> None:
    """Each alias must point at a version the ledger records under the pointer's model,
    number and digest; each policy version a ``policy.set`` event pins must be stored
    with that digest (the latest one missing is a problem too: gated actions are refused
    until it is restored). Policy files no event pins are warnings (an interrupted
    ``policy set``): never in force."""
    from casreg.keys import EVENTS, POLICIES, REGISTRY_EVENTS, parse_policy_key, pointer_key, policy_key
    from casreg.ledger.pins import PolicyPin, pinned_bytes, policy_pins
    from casreg.ledger.pointers import deleted_pointers, missing_pointer_message, pointer_disagreement

    ledger = {(v.name, v.version): v.digest for v in versions}
    damaged = {parsed for p in report.problems if (parsed := parse_version_segment_key(p.key)) is not None}
    try:
        deleted = deleted_pointers(store)
    except IntegrityError:
        deleted = []  # a damaged event segment: reported by the ledger check
    for gone in deleted:
        key = pointer_key(gone.name, gone.alias or "")
        reason = (missing_pointer_message(gone).removeprefix(f"alias pointer {key} is missing: ")
                  + f" (nothing deletes a pointer; casreg alias restore {gone.name}@{gone.alias} writes it back)")
        report.problems.append(Problem(key, "missing", reason))
    for p in pointers:
        if (p.name, p.version) in damaged:
            continue  # its ledger segment is reported already
        why = pointer_disagreement(p, ledger.get((p.name, p.version)))
        if why is not None:
            key = pointer_key(p.name, p.alias)
            reason = why.removeprefix(f"alias pointer {key} ").removesuffix("; run casreg verify")
            report.problems.append(Problem(key, "corrupt", reason))
    try:
        pins = policy_pins(store)
    except IntegrityError as err:  # a damaged registry event: the policy in force cannot be known
        key = next((w for w in str(err).split() if w.startswith(f"{EVENTS}/")), f"{EVENTS}/{REGISTRY_EVENTS}")
        report.problems.append(Problem(key, "corrupt", str(err).removesuffix("; run casreg verify")))
        pins = []
    latest: dict[int, PolicyPin] = {}
    for pin in pins:
        latest[pin.version] = pin
    for i, pin in enumerate(pins):
        if latest[pin.version] is not pin:
            continue  # pinned again later: the later event is the one that counts
        try:
            pinned_bytes(store, pin, latest=i == len(pins) - 1)
        except IntegrityError as err:
            kind = "missing" if " is missing, " in str(err) else "corrupt"
            key = policy_key(pin.version)
            report.problems.append(Problem(key, kind, str(err).removeprefix(f"policy {key} ")))
    pinned = {pin.version for pin in pins}
    newest_pin = max(pinned, default=0)
    for number in sorted(n for k in store.list(POLICIES) if (n := parse_policy_key(k)) is not None):
        if number in pinned:
            continue
        if number > newest_pin:  # governed actions fail closed on it (UnpinnedPolicyError)
            report.problems.append(Problem(policy_key(number), "corrupt", "is not pinned by any policy.set event, "
                                           "but is newer than every pinned version: a policy set was interrupted or "
                                           "its policy.set event was deleted; governed actions are refused until "
                                           "casreg policy set pins a policy again"))
        else:
            report.warnings.append(f"{policy_key(number)} is not pinned by any policy.set event (an interrupted "
                                   "policy set?); it is not in force")


def _segments(store: ObjectStore, keys: list[str], report: VerifyReport, threads: int, scan: _Scan) -> None:
    """Each version segment must be one consistent record of the version its key names:
    ``resolve NAME:N`` reads the copy of the record in the segment's footer, SQL and
    ``ls`` read its row, so the two must agree (docs/FORMAT.md §6). The good ones'
    records and row fingerprints go to ``scan`` (for the compacted files and copies)."""
    damaged = {p.key for p in report.problems}

    def check(key: str) -> Problem | tuple[str, Version, str] | None:
        named = parse_version_segment_key(key)
        if named is None:
            return None
        if key in damaged:
            scan.damaged.add(key)
            return None
        try:
            data = store.read(key, ByteRange(0, MAX_SEGMENT_BYTES + 1))
            if len(data) > MAX_SEGMENT_BYTES:
                return Problem(key, "corrupt", f"the ledger segment is larger than {MAX_SEGMENT_BYTES:,} bytes")
            reason = segment_disagreement(data, *named)
            if reason is None:
                table = check_segment(key, data, version_schema())
        except NotFoundError:
            return None
        except (ValueError, IntegrityError) as err:
            return Problem(key, "corrupt", f"the ledger segment does not read: {str(err)[:200]}",
                           [f"{named[0]}:{named[1]}"])
        if reason is not None:
            return Problem(key, "corrupt", reason, [f"{named[0]}:{named[1]}"])
        return key, versions_from_table(table)[0], _fingerprint(table.to_pylist()[0])

    for got in bounded_map(check, keys, threads):
        if isinstance(got, Problem):
            report.problems.append(got)
            scan.damaged.add(got.key)
        elif got is not None:
            key, rec, fp = got
            scan.records[rec.name, rec.version] = rec
            scan.rows[key] = fp


def _copy_agrees(doc: object, canon: object) -> bool:
    """Whether a version's JSON copy says exactly what the ledger's record does: the same
    values, no key the record does not have (a damaged key name would otherwise pass as a
    missing field), and nothing missing but what an older casreg did not write yet (keys
    whose value in the record is empty)."""
    if isinstance(canon, dict):
        if not isinstance(doc, dict) or set(doc) - set(canon):
            return False
        return (all(_copy_agrees(doc[k], canon[k]) for k in doc)
                and all(canon[k] in (None, {}, []) for k in set(canon) - set(doc)))
    return doc == canon


def _sidecars(store: ObjectStore, keys: list[str], versions: list[VersionRef], report: VerifyReport,
              threads: int, records: dict[tuple[str, int], Version]) -> None:
    """``resolve NAME:N`` reads ``refs/<name>/<N>.json``: it must agree with the ledger.
    ``keys`` were listed before the ledger was read (a copy is written after its record)."""
    ledger = {(v.name, v.version): v.hexdigest for v in versions}
    damaged = {parsed for p in report.problems if (parsed := parse_version_segment_key(p.key)) is not None}

    def check(key: str) -> Problem | None:
        named = parse_version_copy_key(key)
        if named is None:
            return None
        try:
            data = store.read(key, ByteRange(0, MAX_COPY_BYTES + 1))
            if len(data) > MAX_COPY_BYTES:
                return Problem(key, "corrupt", f"the version's JSON copy is larger than {MAX_COPY_BYTES:,} bytes")
            doc = json.loads(data)
            digest = str(doc["digest"]).removeprefix("blake3:")
            same_id = (doc["name"], doc["version"]) == named
        except NotFoundError:
            return None
        except IntegrityError as err:  # not a regular file
            return Problem(key, "corrupt", _reason(str(err), key))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return Problem(key, "corrupt", "the version's JSON copy does not parse")
        want = ledger.get(named)
        if named in damaged:
            return None  # its ledger segment is already reported
        if want is None:
            return Problem(key, "corrupt", "a JSON copy of a version the ledger does not record")
        if not same_id or digest != want:
            return Problem(key, "corrupt", f"the JSON copy says {doc.get('name')}:{doc.get('version')} is "
                                           f"blake3:{digest[:64]}, the ledger says blake3:{want}",
                           [f"{named[0]}:{named[1]}"])
        record = records.get(named)
        try:
            same = record is None or (Version.from_dict(doc) == record
                                      and _copy_agrees(doc, json.loads(json.dumps(record.to_dict()))))
        except (ValueError, KeyError, TypeError, AttributeError):
            same = False
        if not same:
            return Problem(key, "corrupt", "the JSON copy differs from the record in the ledger segment",
                           [f"{named[0]}:{named[1]}"])
        return None

    for problem in bounded_map(check, keys, threads):
        if problem is not None:
            report.problems.append(problem)


@dataclass(slots=True)
class _Objects:
    """Every object of the registry by kind (id -> key), as listed after the ledger was read."""

    packs: dict[str, str] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)


def _list_objects(store: ObjectStore, report: VerifyReport) -> _Objects:
    objects = _Objects()
    for prefix, target in ((PACKS, objects.packs), (INDEXES, objects.indexes), (MANIFESTS, objects.manifests)):
        for key in store.list(prefix):
            parsed = parse_object_key(key)
            if parsed is None or parsed[0] != prefix:
                report.warnings.append(f"unexpected object {key} (not written by casreg; ignored)")
            else:
                target[parsed[1]] = key
    return objects


def _verify_indexes(store: ObjectStore, objects: _Objects, report: VerifyReport, threads: int) -> dict[str, bytes]:
    """Every index object must hash to its name and decode; returns the good ones by pack id."""

    def read_index(pid: str) -> bytes | Problem | None:
        key = objects.indexes[pid]
        try:
            data = store.read(key, ByteRange(0, MAX_INDEX_BYTES + 1))
        except NotFoundError:
            return None  # deleted since the listing (gc): nothing to check
        except IntegrityError as err:  # not a regular file (a planted FIFO, link, device)
            return Problem(key, "corrupt", _reason(str(err), key))
        if len(data) > MAX_INDEX_BYTES:
            return Problem(key, "corrupt", f"the index is larger than {MAX_INDEX_BYTES:,} bytes")
        if blake3(data).hexdigest() != pid:
            return Problem(key, "corrupt", "its bytes do not hash to its name")
        try:
            decode_index(data, key)
        except IntegrityError as err:
            return Problem(key, "corrupt", _reason(str(err), key))
        return data

    good: dict[str, bytes] = {}
    ids = sorted(objects.indexes)
    for pid, got in zip(ids, bounded_map(read_index, ids, threads)):
        if got is None:
            continue
        report.indexes += 1
        if isinstance(got, Problem):
            report.problems.append(got)
        else:
            good[pid] = got
    return good


@dataclass(slots=True)
class _Packs:
    """What reading every pack whole found."""

    tables: dict[str, _Slots] = field(default_factory=dict)  # verified indexes, searchable by offset
    problems: dict[str, Problem] = field(default_factory=dict)  # the first problem of each bad pack
    vanished: list[str] = field(default_factory=list)  # listed (or indexed) but gone when read


def _verify_packs(store: ObjectStore, objects: _Objects, good_index: dict[str, bytes], report: VerifyReport,
                  progress: Progress, threads: int) -> _Packs:
    """Every pack, whole (an index without its pack is a missing pack)."""
    out = _Packs()
    pack_ids = sorted(set(objects.packs) | set(good_index))
    max_chunk = max_chunk_size(store)
    total = sum(_index_pack_size(good_index[pid]) for pid in pack_ids if pid in good_index)
    progress.start("verify", total)
    try:
        for pid, res in zip(pack_ids, bounded_map(lambda p: _verify_pack(store, p, good_index.get(p), max_chunk),
                                                  pack_ids, threads, threads)):
            if res.missing:
                out.vanished.append(pid)
                continue
            report.packs += int(pid in objects.packs)
            report.chunks += res.chunks
            report.bytes_read += res.bytes_read
            progress.advance(res.size if pid in good_index else 0)
            for p in res.problems:
                report.problems.append(p)
                out.problems.setdefault(pid, p)
            if res.index is not None:
                out.tables[pid] = _Slots(res.index)
            if pid in objects.packs and pid not in objects.indexes:
                report.warnings.append(f"{pack_key(pid)} has no index object (left by an interrupted push, "
                                       "or removed): pushes cannot dedup against its chunks")
    finally:
        progress.finish()
    return out


def _verify_manifests(store: ObjectStore, versions: list[VersionRef], packs: _Packs, report: VerifyReport,
                      threads: int) -> set[str]:
    """The manifest of every version, and each chunk reference against its pack's verified
    index (or, where the index does not list it, against the bytes themselves, as a pull
    would read them). Returns the packs the manifests reference."""
    by_digest: dict[str, list[str]] = {}
    for v in versions:
        by_digest.setdefault(v.hexdigest, []).append(v.ref)
    order = sorted(by_digest)
    referenced: set[str] = set()
    max_chunk = max_chunk_size(store)

    def read_manifest(hexd: str) -> tuple[Manifest | Problem, int]:
        key = manifest_key(hexd)
        try:
            data = store.read(key, ByteRange(0, MAX_STORED_MANIFEST + 1))
        except NotFoundError:
            return Problem(key, "missing", "the version's manifest is missing"), 0
        except IntegrityError as err:  # not a regular file
            return Problem(key, "corrupt", _reason(str(err), key)), 0
        try:
            return Manifest.from_bytes(data, expected=bytes.fromhex(hexd), where=key, max_chunk=max_chunk), len(data)
        except IntegrityError as err:
            return Problem(key, "corrupt", _reason(str(err), key)), len(data)

    for hexd, (m, nbytes) in zip(order, bounded_map(read_manifest, order, threads)):
        refs = by_digest[hexd]
        report.bytes_read += nbytes
        if isinstance(m, Problem):
            for r in refs:
                m.affect(r)
            report.problems.append(m)
            continue
        report.manifests += 1
        wrong = _check_references(store, m, refs, packs, referenced, report)
        if wrong:
            p = Problem(manifest_key(hexd), "corrupt",
                        f"{len(wrong)} chunk reference(s) do not lead to their bytes, first: {wrong[0]}")
            for r in refs:
                p.affect(r)
            report.problems.append(p)
    return referenced


def _check_references(store: ObjectStore, m: Manifest, refs: list[str], packs: _Packs, referenced: set[str],
                      report: VerifyReport) -> list[str]:
    """Check every chunk reference of one manifest; return why each wrong one is wrong."""
    wrong: list[str] = []
    for c in [c for e in m.entries for c in e.chunks] + m.bases:  # a delta's bases are references too
        referenced.add(c.pack)
        table = packs.tables.get(c.pack)
        if table is None:
            p = packs.problems.get(c.pack)
            if p is None:
                p = packs.problems[c.pack] = Problem(pack_key(c.pack), "missing", "the pack is missing")
                report.problems.append(p)
            for r in refs:
                p.affect(r)
            continue
        if table.find(c):
            if c.pack in packs.problems:  # a good chunk of a damaged pack, or a bad one
                for r in refs:
                    packs.problems[c.pack].affect(r)
        else:  # not one of the pack's chunks: check the bytes themselves, as a pull would
            try:
                read_chunk(store, c, cache=None, bases=m.base_map)  # the registry's bytes, not a cached copy
                report.chunks += 1
            except CasregError as err:
                wrong.append(str(err))
            continue
        if c.codec == Codec.DELTA and c.pack not in packs.problems \
                and not any(b.pack in packs.problems for b in m.bases) \
                and (why := _check_delta(store, c, m)):  # whole-pack checks read headers only
            wrong.append(why)
    return wrong


def verify_registry(store: ObjectStore, *, progress: Progress | None = None,
                    threads: int | None = None, read_data: bool = False) -> VerifyReport:
    """Verify the whole registry (see the module docstring); the report names every bad
    or missing object and the versions that rely on it."""
    progress = progress or NullProgress()
    report = VerifyReport(store.url)
    nthreads = _threads(threads)
    # Order matters while others push: JSON copies and pointers are read before the ledger
    # (each is written after the record it names), objects are listed after it (every
    # object of a recorded version was written before its record).
    sidecars = sorted(store.list(REFS))
    tombstones = sorted(store.list(TOMBSTONES))  # before the events: each is written before its event
    event_keys = sorted(k for k in store.list(EVENTS) if parse_event_segment_key(k) is not None)
    pointers = _read_pointers(store, report)
    versions = _ledger(store, report)
    report.versions = len(versions)
    objects = _list_objects(store, report)
    dead = _verify_tombstones(store, tombstones, versions, pointers, set(event_keys), report)
    report.deleted_versions = len(dead)
    all_versions, versions = versions, [v for v in versions if (v.name, v.version) not in dead]
    digests = {v.hexdigest for v in versions}
    _check_pointers_and_policy(store, pointers, all_versions, report)
    scan = _Scan()
    segment_keys = sorted(store.list(VERSIONS))
    _segments(store, segment_keys, report, 2 * nthreads, scan)
    _sidecars(store, sidecars, all_versions, report, 2 * nthreads, scan.records)
    verify_ledger(store, report, scan, segment_keys, event_keys, 2 * nthreads)
    good_index = _verify_indexes(store, objects, report, 2 * nthreads)
    packs = _verify_packs(store, objects, good_index, report, progress, nthreads)
    referenced = _verify_manifests(store, versions, packs, report, 2 * nthreads)
    report.read_data = read_data
    _verify_contents(store, versions, report, progress, nthreads, read_data=read_data)
    for pid in packs.vanished:  # gone since the listing, and no version needs it: gc at work, unless
        if pid not in referenced and store.exists(index_key(pid)):  # its index is still there
            report.problems.append(Problem(pack_key(pid), "missing",
                                           "the pack is missing but its index exists (pushes dedup against it)"))
    for p in report.problems:
        p.versions.sort(key=_version_order)
    report.unreferenced_manifests = len(set(objects.manifests) - digests)
    report.unreferenced_packs = len(set(objects.packs) - referenced - set(packs.vanished))
    return report


def _verify_tombstones(store: ObjectStore, keys: list[str], versions: list[VersionRef], pointers: list[AliasPointer],
                       event_keys: set[str], report: VerifyReport) -> set[tuple[str, int]]:
    """Check every tombstone (docs/retention.md): it reads, deletes a version the ledger
    records with the digest it records, and its ``delete`` event is in the ledger.
    Returns the deleted versions whose objects gc may have reclaimed (those no alias
    points at), which verify does not read; a tombstone that does not check out deletes
    nothing here (its version is verified as live)."""
    from casreg.keys import event_key, parse_tombstone_key
    from casreg.ledger.tombstones import MAX_TOMBSTONE_BYTES, decode_tombstone

    recorded = {(v.name, v.version): v.digest for v in versions}
    held = {(p.name, p.version) for p in pointers}
    dead: set[tuple[str, int]] = set()
    for key in keys:
        named = parse_tombstone_key(key)
        if named is None:
            continue
        data = _read_small(store, key, MAX_TOMBSTONE_BYTES)
        if data is None:
            continue  # gone since the listing: tombstones are never deleted, so it never was
        try:
            event = decode_tombstone(data, key)
        except IntegrityError as err:
            report.problems.append(Problem(key, "corrupt", str(err)))
            continue
        ref = f"{named[0]}:{named[1]}"
        if named not in recorded:
            report.problems.append(Problem(key, "corrupt", f"it deletes {ref}, which the ledger does not record"))
            continue
        if event.to_digest != recorded[named]:
            report.problems.append(Problem(key, "corrupt", f"it deletes {ref} as {event.to_digest}, but the ledger "
                                                           f"records {recorded[named]}"))
            continue
        if event_key(event) not in event_keys:
            report.warnings.append(f"{key}: the delete event of {ref} is not in the ledger yet (a delete was "
                                   f"interrupted, or is running); casreg delete {ref} records it")
        if named in held:
            report.warnings.append(f"{ref} is deleted but an alias points at it (moved there while it was being "
                                   "deleted); move the alias")
            continue
        dead.add(named)
    return dead


# -- file digests and version records ----------------------------------------------------------------
#: The record fields a manifest determines (``files`` as the ledger stores it).
_RECORD_FIELDS = ["name", "version", "kind", "size", "file_count", "chunk_count", "files"]
_UNREADABLE = ""  # a file whose chunk did not read, in a pack already reported: nothing more to say


def _file_key(e: Entry) -> bytes:
    """What a file's check depends on: its digest and its chunk layout (chunk digests and
    sizes, in order). Two entries with the same key hold the same bytes once every chunk
    is proven genuine, so one hash settles both."""
    return e.digest + layout_digest(e.chunks)


@dataclass(slots=True)
class _FileChecks:
    """File digests checked in one run: a file already checked (in another version, or
    twice in one) is not read again. 64 bytes per distinct file, plus its verdict."""

    results: dict[bytes, str | None] = field(default_factory=dict)  # None: good; else why not
    known_bad: frozenset[str] = frozenset()  # keys of objects already reported (their chunks fail)


def _file_digests(store: ObjectStore, m: Manifest, refs: list[str], checks: _FileChecks, report: VerifyReport,
                  progress: Progress, threads: int) -> None:
    """Every file of ``m`` must hash, its chunks in manifest order, to its recorded digest
    (what a pull checks last). Files are streamed: at most ``2 * threads`` runs of chunks
    (each at most ``SPAN_RAW_BYTES`` decoded, or one chunk) are held at once."""
    key = manifest_key(m.hexdigest)
    todo: dict[bytes, Entry] = {}
    for e in m.files:
        k = _file_key(e)
        if k in checks.results or k in todo:
            report.files_reused += 1
            progress.advance(e.size)
        else:
            todo[k] = e
    for k, why in zip(todo, _hash_files(store, list(todo.values()), checks, report, progress, threads,
                                        m.base_map)):
        checks.results[k] = why
    bad = [why for e in m.files if (why := checks.results.get(_file_key(e)))]
    if bad:
        p = Problem(key, "corrupt", f"{len(bad)} of {len(m.files)} file(s) do not match their digest, first: {bad[0]}")
        for r in refs:
            p.affect(r)
        report.problems.append(p)


def _hash_files(store: ObjectStore, files: list[Entry], checks: _FileChecks, report: VerifyReport,
                progress: Progress, threads: int, bases: dict[bytes, ChunkRef] | None = None) -> list[str | None]:
    """For each file: ``None`` if its bytes hash to its digest, else why not. Runs of
    chunks are fetched and verified on ``threads`` workers through the fetch path (the
    local chunk cache serves those it holds), in order; this thread hashes them."""
    out: list[str | None] = [None] * len(files)

    def runs() -> Iterator[tuple[int, list[ChunkRef]]]:
        for i, e in enumerate(files):
            if not e.chunks:
                yield i, []
            for run in spans(e.chunks):
                yield i, run

    def fetch(item: tuple[int, list[ChunkRef]]) -> tuple[int, list[bytes] | CasregError, int]:
        i, run = item
        if not run:
            return i, [], 0
        try:
            got = read_span_stats(store, run, bases=bases)
        except CasregError as err:
            return i, err, 0
        return i, got.chunks, got.fetched_bytes

    def done(i: int, h: blake3) -> None:
        e = files[i]
        if out[i] is None and h.digest() != e.digest:
            out[i] = (f"file {e.path!r} ({e.size:,} bytes in {len(e.chunks):,} chunk(s)) does not hash to its digest "
                      f"blake3:{e.digest.hex()}: its chunks give blake3:{h.hexdigest()}")
        report.files_hashed += 1

    current, h = -1, blake3()
    for i, got, fetched in bounded_map(fetch, runs(), threads, 2 * threads):
        if i != current:
            if current >= 0:
                done(current, h)
            current, h = i, blake3()
        report.bytes_read += fetched
        if isinstance(got, CasregError):
            if out[i] is None:
                text = str(got).removesuffix("; run casreg verify")
                out[i] = _UNREADABLE if any(k in text for k in checks.known_bad) else \
                    f"file {files[i].path!r} does not read: {text}"
            continue
        for chunk in got:
            if out[i] is None:
                h.update(chunk)
                report.bytes_hashed += len(chunk)
            progress.advance(len(chunk))
    if current >= 0:
        done(current, h)
    return out


def _record_disagreement(row: dict[str, Any], m: Manifest, key: str) -> str | None:
    """Why a version record (its kind, size, counts and files) does not describe the
    manifest ``key`` of its digest; ``None`` if it does."""
    files = m.files
    fields = [("kind", row.get("kind"), m.kind), ("size", row.get("size"), m.size),
              ("file_count", row.get("file_count"), len(files)),
              ("chunk_count", row.get("chunk_count"), sum(len(e.chunks) for e in files))]
    diffs = [f"{name} {mine!r} (the manifest: {theirs!r})" for name, mine, theirs in fields if mine != theirs]
    listed = row.get("files")
    if listed is not None:
        try:
            said = sorted(((f["path"], f["type"], f["size"], f["digest"]) for f in listed), key=repr)
        except (KeyError, TypeError):
            said = None
        actual = sorted(((e.path, e.type, e.size, e.digest.hex() if e.digest else None) for e in m.entries), key=repr)
        if said != actual:
            first = next((a for a, b in zip(actual, said or []) if a != b), actual[0] if actual else None)
            diffs.append(f"files ({len(listed)} listed, {len(actual)} in the manifest"
                         + (f"; first difference at {str(first[0])[:200]!r})" if first else ")"))
    if not diffs:
        return None
    return f"the version record disagrees with its manifest {key}: " + ", ".join(diffs)


def _record_rows(store: ObjectStore, keys: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The record fields of each version (``name, number``) a manifest determines: from
    the ledger as SQL reads it; if it does not read as a whole (damaged segments are
    reported by then), segment by segment, skipping those that do not read."""
    from casreg.ledger.segments import versions_table

    wanted = set(keys)
    try:
        table = versions_table(store, columns=_RECORD_FIELDS)
        names, numbers = table.column("name").to_pylist(), table.column("version").to_pylist()
        rows = {}
        for i, named in enumerate(zip(names, numbers)):
            if named in wanted:
                rows[named] = table.slice(i, 1).to_pylist()[0]
        return rows
    except Exception:  # noqa: BLE001 - whatever pyarrow says of a damaged segment (reported already)
        pass
    return {named: row for named in keys if (row := _segment_row(store, named)) is not None}


def _segment_row(store: ObjectStore, named: tuple[str, int]) -> dict[str, Any] | None:
    """The record fields of one version, from its own segment (``None`` if it does not
    read as one row: the ledger checks report that)."""
    from casreg.ledger.schema import project, read_segment, version_schema

    try:
        data = store.read(version_segment_key(*named), ByteRange(0, MAX_SEGMENT_BYTES + 1))
        rows: list[dict[str, Any]] = read_segment(data, project(version_schema(), _RECORD_FIELDS)).to_pylist()
    except Exception:  # noqa: BLE001 - missing or damaged
        return None
    return rows[0] if len(rows) == 1 and (rows[0].get("name"), rows[0].get("version")) == named else None


def _check_record(row: dict[str, Any] | None, m: Manifest, ref: VersionRef, report: VerifyReport) -> None:
    if row is None:
        return
    report.records += 1
    why = _record_disagreement(row, m, manifest_key(m.hexdigest))
    if why is not None:
        report.problems.append(Problem(version_segment_key(ref.name, ref.version), "corrupt", why, [ref.ref]))


def _verify_contents(store: ObjectStore, versions: list[VersionRef], report: VerifyReport, progress: Progress,
                     threads: int, *, read_data: bool) -> None:
    """After the manifests and packs are checked: each version record against its
    manifest, and (``read_data``) every distinct file's bytes against its digest. Each
    sound manifest is read again, one at a time (nothing is kept from one to the next
    but the verdicts on files)."""
    reported = {p.key for p in report.problems}
    by_digest: dict[str, list[VersionRef]] = {}
    for v in versions:
        if version_segment_key(v.name, v.version) not in reported:
            by_digest.setdefault(v.hexdigest, []).append(v)
    order = [h for h in sorted(by_digest) if manifest_key(h) not in reported]
    rows = _record_rows(store, [(v.name, v.version) for h in order for v in by_digest[h]])
    checks = _FileChecks(known_bad=frozenset(reported))
    max_chunk = max_chunk_size(store)

    def read(hexd: str) -> Manifest | None:
        try:
            data = store.read(manifest_key(hexd), ByteRange(0, MAX_STORED_MANIFEST + 1))
            return Manifest.from_bytes(data, expected=bytes.fromhex(hexd), where=manifest_key(hexd),
                                       max_chunk=max_chunk)
        except (NotFoundError, IntegrityError):
            return None  # changed since it was verified: only a forger would; reported by the next verify

    if read_data:
        total = sum(int(rows.get((vs[0].name, vs[0].version), {}).get("size") or 0) for vs in by_digest.values())
        progress.start("read data", total)
    try:
        for hexd, m in zip(order, bounded_map(read, order, 2, 2)):
            if m is None:
                continue
            for v in by_digest[hexd]:
                _check_record(rows.get((v.name, v.version)), m, v, report)
            if read_data:
                _file_digests(store, m, [v.ref for v in by_digest[hexd]], checks, report, progress, threads)
    finally:
        if read_data:
            progress.finish()


def _version_contents(store: ObjectStore, m: Manifest, label: str, version: tuple[str, int] | None,
                      report: VerifyReport, progress: Progress, threads: int, *, read_data: bool) -> None:
    """:func:`_verify_contents` for ``verify REF``, with the manifest already read."""
    if version is not None:
        ref = VersionRef(version[0], version[1], m.version_digest)
        _check_record(_segment_row(store, version), m, ref, report)
    report.read_data = read_data
    if read_data:
        checks = _FileChecks(known_bad=frozenset(p.key for p in report.problems))
        progress.start("read data", m.size)
        try:
            _file_digests(store, m, [label], checks, report, progress, threads)
        finally:
            progress.finish()


# -- the ledger beyond version records: events, compaction, configuration ----------------------------
#: Small objects verify reads whole are refused beyond these sizes (a planted huge object costs no memory).
MAX_CONFIG_BYTES = 64 << 10
MAX_HOOKS_BYTES = 1 << 20
#: Problems of one kind reported per model at most (a ledger with thousands of holes says so once).
MAX_PER_MODEL = 20


@dataclass(slots=True)
class _Scan:
    """What reading the ledger's segments found, for the checks that compare against them."""

    records: dict[tuple[str, int], Version] = field(default_factory=dict)  # good version segments
    rows: dict[str, str] = field(default_factory=dict)  # segment key -> fingerprint of its row
    events: dict[str, AliasEvent] = field(default_factory=dict)  # good event segments by key
    damaged: set[str] = field(default_factory=set)  # segments already reported


def _fingerprint(row: dict[str, object]) -> str:
    """A digest of one ledger row as pyarrow gives it (same schema, same fingerprint)."""
    return blake3(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()


def _read_small(store: ObjectStore, key: str, limit: int) -> bytes | None:
    """``key``'s bytes, read at most ``limit + 1`` of them; ``None`` if it does not exist.
    An object that is not a regular file (a planted FIFO or link) reads as ``limit + 1``
    bytes of nothing, so the caller reports it as too large: never a hang, never a stop."""
    try:
        return store.read(key, ByteRange(0, limit + 1))
    except NotFoundError:
        return None
    except IntegrityError:
        return bytes(limit + 1)


def verify_ledger(store: ObjectStore, report: VerifyReport, scan: _Scan, segment_keys: list[str],
                  event_keys: list[str], threads: int) -> None:
    """Everything of the ledger but the version records themselves (docs/FORMAT.md §6-§7):

    - ``casreg.json`` is there (once anything is committed) and parses;
    - version numbers are gap-free: a missing number below a committed one (or below
      HEAD's coverage) is a missing segment;
    - every event segment is one valid event (its footer checksum, its key);
    - events name versions the ledger records, with the digests it records;
    - HEAD parses; every compacted file it lists is there with the size and BLAKE3 HEAD
      records, and holds exactly the rows of the segments it covers, each equal to the
      segment's row (a covered segment that is gone is reported: its row survives only in
      the compacted file);
    - ``config/hooks.toml`` is what the latest ``hooks.set`` event recorded (its digest).
    """
    _verify_config(store, report, bool(segment_keys))
    numbers = _verify_numbering(store, report, segment_keys)
    _verify_events(store, report, scan, event_keys, threads)
    _verify_compacted(store, report, scan, numbers)
    _verify_event_references(store, report, scan, numbers)
    _verify_hooks(store, report, scan)


def _verify_config(store: ObjectStore, report: VerifyReport, committed: bool) -> None:
    data = _read_small(store, CONFIG_KEY, MAX_CONFIG_BYTES)
    if data is None:
        if committed:
            report.problems.append(Problem(CONFIG_KEY, "missing", "the registry's configuration is missing (its "
                                           "format and chunking parameters; the next push would write other ones)"))
        return
    if len(data) > MAX_CONFIG_BYTES:
        report.problems.append(Problem(CONFIG_KEY, "corrupt", f"larger than {MAX_CONFIG_BYTES:,} bytes"))
        return
    try:
        RegistryConfig.from_json(data, store.url).chunk_params()
    except CasregError as err:
        report.problems.append(Problem(CONFIG_KEY, "corrupt", _reason(str(err), CONFIG_KEY)))


def _verify_numbering(store: ObjectStore, report: VerifyReport, segment_keys: list[str]) -> dict[str, int]:
    """Per model, the highest number committed; every number below it must have its segment."""
    have: dict[str, set[int]] = {}
    for key in segment_keys:
        parsed = parse_version_segment_key(key)
        if parsed is not None:
            have.setdefault(parsed[0], set()).add(parsed[1])
    head = _head_or_none(store)
    highest = {name: max(ns) for name, ns in have.items()}
    for name, covered in (head.covered.items() if head else ()):
        highest[name] = max(highest.get(name, 0), covered)
    for name, top in sorted(highest.items()):
        gaps = [n for n in range(1, top + 1) if n not in have.get(name, set())]
        for n in gaps[:MAX_PER_MODEL]:
            report.problems.append(Problem(
                version_segment_key(name, n), "missing",
                f"the ledger segment of {name}:{n} is missing, but {name}:{top} is committed or compacted "
                "(numbers are gap-free)", [f"{name}:{n}"]))
    return highest


def _head_or_none(store: ObjectStore) -> LedgerHead | None:
    data = _read_small(store, HEAD_KEY, MAX_HEAD_BYTES)
    if data is None or len(data) > MAX_HEAD_BYTES:
        return None
    try:
        return LedgerHead.from_json(data)
    except ValueError:
        return None


def _verify_events(store: ObjectStore, report: VerifyReport, scan: _Scan, keys: list[str], threads: int) -> None:
    def check(key: str) -> Problem | tuple[str, AliasEvent, str] | None:
        try:
            data = store.read(key, ByteRange(0, MAX_EVENT_BYTES + 1))
        except NotFoundError:
            return None
        except IntegrityError as err:  # not a regular file
            return Problem(key, "corrupt", _reason(str(err), key))
        if len(data) > MAX_EVENT_BYTES:
            return Problem(key, "corrupt", f"the event segment is larger than {MAX_EVENT_BYTES:,} bytes")
        try:
            table = check_segment(key, data, event_schema())
            row = table.to_pylist()[0]
            return key, AliasEvent.from_dict(row), _fingerprint(row)
        except (IntegrityError, ValueError) as err:
            return Problem(key, "corrupt", f"the event segment does not read: {_reason(str(err), key)[:200]}")

    for got in bounded_map(check, keys, threads):
        if isinstance(got, Problem):
            report.problems.append(got)
            scan.damaged.add(got.key)
        elif got is not None:
            key, event, fp = got
            scan.events[key] = event
            scan.rows[key] = fp


def _verify_compacted(store: ObjectStore, report: VerifyReport, scan: _Scan, numbers: dict[str, int]) -> None:
    data = _read_small(store, HEAD_KEY, MAX_HEAD_BYTES)
    if data is None:
        return  # no compaction (or HEAD removed: readers read the segments; compact rebuilds it)
    if len(data) > MAX_HEAD_BYTES:
        report.problems.append(Problem(HEAD_KEY, "corrupt", f"larger than {MAX_HEAD_BYTES:,} bytes"))
        return
    try:
        head = LedgerHead.from_json(data)
    except ValueError as err:
        report.problems.append(Problem(HEAD_KEY, "corrupt", f"the compacted ledger's HEAD does not parse ({err}); "
                                       "readers ignore it (casreg compact --full rebuilds it)"))
        return
    seen_versions: set[tuple[str, int]] = set()
    for f in head.versions:
        table = _compacted_table(store, report, f, version_schema())
        if table is None:
            continue
        for row in table.to_pylist():
            name, number = row.get("name"), row.get("version")
            if not isinstance(name, str) or type(number) is not int:
                report.problems.append(Problem(f.key, "corrupt", "a row without a name or version"))
                break
            try:
                seg = version_segment_key(name, number)
            except ValueError:
                seg = f"{name}:{number}"
            if number > head.covered.get(name, 0) or (name, number) in seen_versions:
                report.problems.append(Problem(f.key, "corrupt", f"holds {name}:{number}, which HEAD does not cover "
                                               "or another compacted row holds already"))
                break
            seen_versions.add((name, number))
            want = scan.rows.get(seg)
            if want is not None and want != _fingerprint(row):
                report.problems.append(Problem(f.key, "corrupt", f"its row of {name}:{number} differs from "
                                               f"ledger segment {seg}", [f"{name}:{number}"]))
                break
    for name, covered in sorted(head.covered.items()):
        lost = [n for n in range(1, covered + 1) if (name, n) not in seen_versions]
        if lost and all(f.key not in {p.key for p in report.problems} for f in head.versions):
            report.problems.append(Problem(HEAD_KEY, "corrupt", f"covers {name}:{lost[0]}, which no compacted "
                                           "versions file it lists holds"))
    seen_segments: set[str] = set()
    for f in head.events:
        table = _compacted_table(store, report, f, compacted_event_schema())
        if table is None:
            continue
        for row in table.to_pylist():
            seg = row.pop(SEGMENT_COLUMN, None)
            if not isinstance(seg, str) or parse_event_segment_key(seg) is None or seg in seen_segments:
                report.problems.append(Problem(f.key, "corrupt", f"a row names no event segment, or one another "
                                               f"row names already ({str(seg)[:120]!r})"))
                break
            seen_segments.add(seg)
            if seg in scan.damaged:
                continue
            want = scan.rows.get(seg)
            if want is None:
                report.problems.append(Problem(seg, "missing", f"the event segment is gone; only compacted file "
                                               f"{f.key} still holds its row"))
            elif want != _fingerprint(row):
                report.problems.append(Problem(f.key, "corrupt", f"its row of {seg} differs from the event segment"))
            else:
                continue
            try:
                scan.events.setdefault(seg, AliasEvent.from_dict(row))  # still counts for the checks below
            except ValueError:
                pass


def _compacted_table(store: ObjectStore, report: VerifyReport, f: CompactedFile, schema: pa.Schema) -> pa.Table | None:
    """A compacted file HEAD lists, checked against HEAD's size, BLAKE3 and row count."""
    import pyarrow as pa

    try:
        data = store.read(f.key, ByteRange(0, f.size + 1))
    except IntegrityError as err:  # not a regular file
        report.problems.append(Problem(f.key, "corrupt", _reason(str(err), f.key)))
        return None
    except NotFoundError:
        report.problems.append(Problem(f.key, "missing", "HEAD lists this compacted file, which is gone "
                                       "(readers fall back to the segments; casreg compact --full rebuilds it)"))
        return None
    report.bytes_read += len(data)
    if len(data) != f.size or blake3(data).hexdigest() != f.blake3:
        report.problems.append(Problem(f.key, "corrupt", f"its size or BLAKE3 is not what {HEAD_KEY} records "
                                       "(one of the two is damaged; readers fall back to the segments; "
                                       "casreg compact --full rebuilds both)"))
        return None
    try:
        table = load_compacted(data, schema)
    except (ValueError, KeyError, TypeError, OSError, pa.ArrowException) as err:
        report.problems.append(Problem(f.key, "corrupt", f"does not read: {_reason(str(err), f.key)[:200]}"))
        return None
    if table.num_rows != f.rows:
        report.problems.append(Problem(f.key, "corrupt", f"holds {table.num_rows} rows; HEAD records {f.rows}"))
        return None
    return table


def _verify_event_references(store: ObjectStore, report: VerifyReport, scan: _Scan, numbers: dict[str, int]) -> None:
    """Every version an event names must be in the ledger, with the digest the event gives.
    A number above the highest committed one is reported as a missing segment when the
    version's manifest exists (it was committed: an alias or approval can only name a
    committed version); a digest nothing ever stored is the pointer's problem alone."""
    reported: set[str] = {p.key for p in report.problems}
    for key, e in sorted(scan.events.items()):
        if e.name == REGISTRY_EVENTS:
            continue
        for number, digest in ((e.to_version, e.to_digest), (e.from_version, e.from_digest)):
            if number is None:
                continue
            rec = scan.records.get((e.name, number))
            seg = version_segment_key(e.name, number)
            if rec is None and number > numbers.get(e.name, 0) and seg not in reported and digest is not None \
                    and store.exists(manifest_key(digest)):  # the version was committed: its manifest is there
                reported.add(seg)
                report.problems.append(Problem(seg, "missing", f"event {key} records {e.name}:{number}, which "
                                               "the ledger lacks: its segment is gone", [f"{e.name}:{number}"]))
            elif rec is not None and digest is not None and rec.digest != digest and key not in reported:
                reported.add(key)
                report.problems.append(Problem(key, "corrupt", f"the event records {e.name}:{number} as {digest}; "
                                               f"the ledger records {rec.digest}"))


def _verify_hooks(store: ObjectStore, report: VerifyReport, scan: _Scan) -> None:
    """``config/hooks.toml`` must be the config the latest ``hooks.set`` event records."""
    sets = sorted((e for e in scan.events.values() if e.kind == "hooks.set" and e.name == REGISTRY_EVENTS),
                  key=lambda e: (e.time, e.event_id))
    if not sets:
        return
    want = (sets[-1].details or {}).get("digest")
    data = _read_small(store, HOOKS_KEY, MAX_HOOKS_BYTES)
    if data is None:
        if want is not None:
            report.problems.append(Problem(HOOKS_KEY, "missing", f"the hooks config is gone; the latest hooks.set "
                                           f"event ({sets[-1].time.isoformat()}) recorded {want}"))
        return
    if len(data) > MAX_HOOKS_BYTES or str(Digest.of(data)) != want:
        report.problems.append(Problem(HOOKS_KEY, "corrupt", f"the hooks config is not the one the latest hooks.set "
                                       f"event ({sets[-1].time.isoformat()}) recorded ({want}); set it again with "
                                       "casreg hooks set"))
