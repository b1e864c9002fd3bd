"""Checking stored chunks and whole packs for ``verify``: a chunk decodes to its digest
(a delta with the bases its version records), a pack's magic, index, trailer and size
agree, and the chunks a manifest references are the pack's. Packs are read in a few
large ranged reads (up to ``SPAN`` bytes), never one request per chunk."""

from __future__ import annotations

import struct
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blake3 import blake3

from casreg.content.codec import Codec, decode_verified
from casreg.content.delta import parse_header
from casreg.content.fetch import read_chunk
from casreg.content.manifest import ChunkRef, Manifest
from casreg.content.packs import _ENTRY, _TAIL, INDEX_MAGIC, PACK_MAGIC, decode_index
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import (
    pack_key,
)
from casreg.maintenance.verify_report import Problem
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:
    pass

__all__ = ["SPAN", "GAP", "IndexSlots", "PackResult", "check_delta", "index_pack_size", "verify_pack", "verify_refs"]

SPAN = 16 << 20  # bytes per ranged read
GAP = 1 << 20  # unreferenced bytes a single-version read may skip over instead of splitting


# -- checking chunks -------------------------------------------------------------------------------
def _check_chunk(payload: memoryview, codec: int, raw_size: int, digest: bytes) -> str | None:
    """``None`` if the stored payload decodes to ``raw_size`` bytes hashing to ``digest``,
    else why not (as :func:`casreg.content.fetch.read_chunk` would refuse it). A delta
    chunk (codec 3) needs its bases, which only a version's manifest records: here its
    header is checked, and each version that uses it decodes it whole
    (:func:`check_delta`)."""
    try:
        if codec == Codec.DELTA:
            parse_header(payload, raw_size)
            return None
        decode_verified(codec, payload, raw_size, digest)
    except IntegrityError as err:
        return str(err)
    return None


def check_delta(store: ObjectStore, ref: ChunkRef, m: Manifest) -> str | None:
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


def verify_refs(store: ObjectStore, pack: str, refs: list[ChunkRef]) -> tuple[Problem | None, int, int]:
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


# -- whole packs ------------------------------------------------------------------------------------
@dataclass(slots=True)
class PackResult:
    """What checking one whole pack found (:func:`verify_pack`)."""

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


def verify_pack(store: ObjectStore, pack_id: str, index: bytes | None, max_chunk: int) -> PackResult:
    """Read one pack in a few ranged reads and check all of it (see the module docstring).
    ``index`` is the pack's verified index object, or ``None`` if it has none."""
    key = pack_key(pack_id)
    res = PackResult()
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


def index_pack_size(index: bytes) -> int:
    """The size of the pack an index describes (entries are written in offset order)."""
    count = (len(index) - _TAIL.size) // _ENTRY.size
    if not count:
        return len(PACK_MAGIC) + len(index)
    _, offset, stored, _, _ = _ENTRY.unpack_from(index, (count - 1) * _ENTRY.size)
    return int(offset) + int(stored) + len(index)


class IndexSlots:
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
