"""What ``verify`` checks beyond the stored bytes: each version's record against its
manifest, and with ``--read-data`` every file's bytes against its digest and chunk
layout (each distinct file read once per run)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from casreg.concurrency import bounded_map
from casreg.content.config import max_chunk_size
from casreg.content.fetch import read_span_stats, spans
from casreg.content.manifest import MAX_STORED_MANIFEST, ChunkRef, Entry, Manifest, layout_digest
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import (
    manifest_key,
    version_segment_key,
)
from casreg.ledger.segments import MAX_SEGMENT_BYTES
from casreg.maintenance.reachable import VersionRef
from casreg.maintenance.verify_report import Problem, VerifyReport
from casreg.progress import Progress
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    pass

__all__ = ["verify_contents", "version_contents"]

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


def verify_contents(store: ObjectStore, versions: list[VersionRef], report: VerifyReport, progress: Progress,
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


def version_contents(store: ObjectStore, m: Manifest, label: str, version: tuple[str, int] | None,
                      report: VerifyReport, progress: Progress, threads: int, *, read_data: bool) -> None:
    """:func:`verify_contents` for ``verify REF``, with the manifest already read."""
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
