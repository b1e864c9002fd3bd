"""What ``verify`` checks in the ledger beyond version records: event segments, the
compacted files and HEAD, gap-free numbering, ``casreg.json`` and the hooks config."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from blake3 import blake3

from casreg.concurrency import bounded_map
from casreg.content.config import RegistryConfig
from casreg.digest import Digest
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import (
    CONFIG_KEY,
    HEAD_KEY,
    HOOKS_KEY,
    REGISTRY_EVENTS,
    manifest_key,
    parse_event_segment_key,
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
)
from casreg.ledger.segments import MAX_EVENT_BYTES
from casreg.maintenance.verify_report import Problem, VerifyReport, bare_reason
from casreg.records import AliasEvent, Version
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LedgerScan", "verify_ledger", "read_small", "row_fingerprint"]

# -- the ledger beyond version records: events, compaction, configuration ----------------------------
#: Small objects verify reads whole are refused beyond these sizes (a planted huge object costs no memory).
MAX_CONFIG_BYTES = 64 << 10
MAX_HOOKS_BYTES = 1 << 20
#: Problems of one kind reported per model at most (a ledger with thousands of holes says so once).
MAX_PER_MODEL = 20

_T = TypeVar("_T")


@dataclass(slots=True)
class LedgerScan:
    """What reading the ledger's segments found, for the checks that compare against them."""

    records: dict[tuple[str, int], Version] = field(default_factory=dict)  # good version segments
    rows: dict[str, str] = field(default_factory=dict)  # segment key -> fingerprint of its row
    events: dict[str, AliasEvent] = field(default_factory=dict)  # good event segments by key
    damaged: set[str] = field(default_factory=set)  # segments already reported

    def good(self, results: Iterable[Problem | _T | None], report: VerifyReport) -> Iterator[_T]:
        """The good rows among the results of checking segments, in order: a
        :class:`Problem` goes to ``report`` and its key among the damaged ones, ``None``
        (a segment gone meanwhile, or not one to check) is skipped."""
        for got in results:
            if isinstance(got, Problem):
                report.problems.append(got)
                self.damaged.add(got.key)
            elif got is not None:
                yield got


def row_fingerprint(row: dict[str, object]) -> str:
    """A digest of one ledger row as pyarrow gives it (same schema, same fingerprint)."""
    return blake3(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()


def read_small(store: ObjectStore, key: str, limit: int) -> bytes | None:
    """``key``'s bytes, read at most ``limit + 1`` of them; ``None`` if it does not exist.
    An object that is not a regular file (a planted FIFO or link) reads as ``limit + 1``
    bytes of nothing, so the caller reports it as too large: never a hang, never a stop."""
    try:
        return store.read(key, ByteRange(0, limit + 1))
    except NotFoundError:
        return None
    except IntegrityError:
        return bytes(limit + 1)


def verify_ledger(store: ObjectStore, report: VerifyReport, scan: LedgerScan, segment_keys: list[str],
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
    data = read_small(store, CONFIG_KEY, MAX_CONFIG_BYTES)
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
        report.problems.append(Problem(CONFIG_KEY, "corrupt", bare_reason(str(err), CONFIG_KEY)))


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
    data = read_small(store, HEAD_KEY, MAX_HEAD_BYTES)
    if data is None or len(data) > MAX_HEAD_BYTES:
        return None
    try:
        return LedgerHead.from_json(data)
    except ValueError:
        return None


def _verify_events(store: ObjectStore, report: VerifyReport, scan: LedgerScan, keys: list[str], threads: int) -> None:
    def check(key: str) -> Problem | tuple[str, AliasEvent, str] | None:
        try:
            data = store.read(key, ByteRange(0, MAX_EVENT_BYTES + 1))
        except NotFoundError:
            return None
        except IntegrityError as err:  # not a regular file
            return Problem(key, "corrupt", bare_reason(str(err), key))
        if len(data) > MAX_EVENT_BYTES:
            return Problem(key, "corrupt", f"the event segment is larger than {MAX_EVENT_BYTES:,} bytes")
        try:
            table = check_segment(key, data, event_schema())
            row = table.to_pylist()[0]
            return key, AliasEvent.from_dict(row), row_fingerprint(row)
        except (IntegrityError, ValueError) as err:
            return Problem(key, "corrupt", f"the event segment does not read: {bare_reason(str(err), key)[:200]}")

    for key, event, fp in scan.good(bounded_map(check, keys, threads), report):
        scan.events[key] = event
        scan.rows[key] = fp


def _verify_compacted(store: ObjectStore, report: VerifyReport, scan: LedgerScan, numbers: dict[str, int]) -> None:
    data = read_small(store, HEAD_KEY, MAX_HEAD_BYTES)
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
            if want is not None and want != row_fingerprint(row):
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
            elif want != row_fingerprint(row):
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
        report.problems.append(Problem(f.key, "corrupt", bare_reason(str(err), f.key)))
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
        report.problems.append(Problem(f.key, "corrupt", f"does not read: {bare_reason(str(err), f.key)[:200]}"))
        return None
    if table.num_rows != f.rows:
        report.problems.append(Problem(f.key, "corrupt", f"holds {table.num_rows} rows; HEAD records {f.rows}"))
        return None
    return table


def _verify_event_references(store: ObjectStore, report: VerifyReport, scan: LedgerScan,
                             numbers: dict[str, int]) -> None:
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


def _verify_hooks(store: ObjectStore, report: VerifyReport, scan: LedgerScan) -> None:
    """``config/hooks.toml`` must be the config the latest ``hooks.set`` event records."""
    sets = sorted((e for e in scan.events.values() if e.kind == "hooks.set" and e.name == REGISTRY_EVENTS),
                  key=lambda e: (e.time, e.event_id))
    if not sets:
        return
    want = (sets[-1].details or {}).get("digest")
    data = read_small(store, HOOKS_KEY, MAX_HOOKS_BYTES)
    if data is None:
        if want is not None:
            report.problems.append(Problem(HOOKS_KEY, "missing", f"the hooks config is gone; the latest hooks.set "
                                           f"event ({sets[-1].time.isoformat()}) recorded {want}"))
        return
    if len(data) > MAX_HOOKS_BYTES or str(Digest.of(data)) != want:
        report.problems.append(Problem(HOOKS_KEY, "corrupt", f"the hooks config is not the one the latest hooks.set "
                                       f"event ({sets[-1].time.isoformat()}) recorded ({want}); set it again with "
                                       "casreg hooks set"))
