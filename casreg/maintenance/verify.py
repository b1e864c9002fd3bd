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

This module runs the checks in order; each kind lives in its own module:
:mod:`~casreg.maintenance.verify_packs` (chunks and whole packs),
:mod:`~casreg.maintenance.verify_contents` (records against manifests, file digests),
:mod:`~casreg.maintenance.verify_ledger` (events, compaction, configuration) and
:mod:`~casreg.maintenance.verify_report` (what is reported).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blake3 import blake3

from casreg.concurrency import bounded_map
from casreg.content.bundles import check_bundle, most_packs
from casreg.content.codec import Codec
from casreg.content.config import max_chunk_size
from casreg.content.fetch import read_chunk
from casreg.content.manifest import MAX_STORED_MANIFEST, ChunkRef, Manifest
from casreg.content.packs import MAX_INDEX_BYTES, decode_index, index_limit
from casreg.digest import Digest
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import (
    BUNDLES,
    EVENTS,
    INDEXES,
    MANIFESTS,
    PACKS,
    POINTERS,
    REFS,
    TOMBSTONES,
    VERSIONS,
    index_key,
    manifest_key,
    pack_key,
    parse_bundle_key,
    parse_event_segment_key,
    parse_object_key,
    parse_pointer_key,
    parse_version_copy_key,
    parse_version_segment_key,
)
from casreg.ledger.schema import (
    arrow_reader,
    check_segment,
    version_schema,
    versions_from_table,
)
from casreg.ledger.segments import MAX_COPY_BYTES, MAX_SEGMENT_BYTES, segment_disagreement
from casreg.maintenance.reachable import VersionRef, ledger_versions
from casreg.maintenance.verify_contents import verify_contents, version_contents
from casreg.maintenance.verify_ledger import LedgerScan, read_small, row_fingerprint, verify_ledger
from casreg.maintenance.verify_packs import IndexSlots, check_delta, index_pack_size, verify_pack, verify_refs
from casreg.maintenance.verify_report import Problem, VerifyReport, bare_reason
from casreg.progress import NullProgress, Progress
from casreg.records import AliasPointer, Version
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    pass

__all__ = ["Problem", "VerifyReport", "verify_registry", "verify_version"]


# -- one version ----------------------------------------------------------------------------------
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
        report.problems.append(Problem(key, "corrupt", bare_reason(str(err), key), [label]))
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
                jobs, bounded_map(lambda job: verify_refs(store, *job), jobs, _threads(threads), 2)):
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
    for why in bounded_map(lambda c: check_delta(store, c, manifest), list(deltas.values()), _threads(threads)):
        if why:
            report.problems.append(Problem(key, "corrupt", f"a delta chunk does not decode: {why}", [label]))
    version_contents(store, manifest, label, version, report, progress, _threads(threads), read_data=read_data)
    return report


def _version_order(ref: str) -> tuple[str, int]:
    name, _, number = ref.rpartition(":")
    return (name, int(number)) if number.isdigit() else (ref, 0)


def _threads(threads: int | None) -> int:
    return threads or os.cpu_count() or 2


# -- the whole registry -----------------------------------------------------------------------------
def _ledger(store: ObjectStore, report: VerifyReport) -> list[VersionRef]:
    """Every version the ledger records; if the ledger does not read as a whole, the
    damaged segments are reported one by one and the readable ones kept."""
    try:
        return ledger_versions(store)
    except IntegrityError as err:
        first = str(err)
    import pyarrow.parquet as pq

    out: list[VersionRef] = []
    bad = 0
    for key in sorted(store.list(VERSIONS)):
        if parse_version_segment_key(key) is None:
            continue
        try:
            pf = pq.ParquetFile(arrow_reader(store.read(key)))
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


def _segments(store: ObjectStore, keys: list[str], report: VerifyReport, threads: int, scan: LedgerScan) -> None:
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
        return key, versions_from_table(table)[0], row_fingerprint(table.to_pylist()[0])

    for key, rec, fp in scan.good(bounded_map(check, keys, threads), report):
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
            return Problem(key, "corrupt", bare_reason(str(err), key))
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
            return Problem(key, "corrupt", bare_reason(str(err), key))
        if len(data) > MAX_INDEX_BYTES:
            return Problem(key, "corrupt", f"the index is larger than {MAX_INDEX_BYTES:,} bytes")
        if blake3(data).hexdigest() != pid:
            return Problem(key, "corrupt", "its bytes do not hash to its name")
        try:
            decode_index(data, key)
        except IntegrityError as err:
            return Problem(key, "corrupt", bare_reason(str(err), key))
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


def _verify_bundles(store: ObjectStore, report: VerifyReport, indexes: int) -> None:
    """Every index bundle must be what its name says, every index in it hash to its pack
    id (docs/FORMAT.md §4.3). A damaged bundle only costs pushes reads (they check it as
    they read it), but verify names every damaged object."""
    limit = index_limit(store)
    for key in sorted(store.list(BUNDLES)):
        if parse_bundle_key(key) is None:
            report.warnings.append(f"unexpected object {key} (not written by casreg; ignored)")
            continue
        reason = check_bundle(store, key, limit, most_packs(indexes))
        if reason is not None:
            report.problems.append(Problem(key, "corrupt", reason))


@dataclass(slots=True)
class _Packs:
    """What reading every pack whole found."""

    tables: dict[str, IndexSlots] = field(default_factory=dict)  # verified indexes, searchable by offset
    problems: dict[str, Problem] = field(default_factory=dict)  # the first problem of each bad pack
    vanished: list[str] = field(default_factory=list)  # listed (or indexed) but gone when read


def _verify_packs(store: ObjectStore, objects: _Objects, good_index: dict[str, bytes], report: VerifyReport,
                  progress: Progress, threads: int) -> _Packs:
    """Every pack, whole (an index without its pack is a missing pack)."""
    out = _Packs()
    pack_ids = sorted(set(objects.packs) | set(good_index))
    max_chunk = max_chunk_size(store)
    total = sum(index_pack_size(good_index[pid]) for pid in pack_ids if pid in good_index)
    progress.start("verify", total)
    try:
        for pid, res in zip(pack_ids, bounded_map(lambda p: verify_pack(store, p, good_index.get(p), max_chunk),
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
                out.tables[pid] = IndexSlots(res.index)
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
            return Problem(key, "corrupt", bare_reason(str(err), key)), 0
        try:
            return Manifest.from_bytes(data, expected=bytes.fromhex(hexd), where=key, max_chunk=max_chunk), len(data)
        except IntegrityError as err:
            return Problem(key, "corrupt", bare_reason(str(err), key)), len(data)

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
                and (why := check_delta(store, c, m)):  # whole-pack checks read headers only
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
    scan = LedgerScan()
    segment_keys = sorted(store.list(VERSIONS))
    _segments(store, segment_keys, report, 2 * nthreads, scan)
    _sidecars(store, sidecars, all_versions, report, 2 * nthreads, scan.records)
    verify_ledger(store, report, scan, segment_keys, event_keys, 2 * nthreads)
    good_index = _verify_indexes(store, objects, report, 2 * nthreads)
    _verify_bundles(store, report, len(objects.indexes))
    packs = _verify_packs(store, objects, good_index, report, progress, nthreads)
    referenced = _verify_manifests(store, versions, packs, report, 2 * nthreads)
    report.read_data = read_data
    verify_contents(store, versions, report, progress, nthreads, read_data=read_data)
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
        data = read_small(store, key, MAX_TOMBSTONE_BYTES)
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
