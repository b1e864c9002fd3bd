"""A compact table of many pack indexes' entries: what a push dedups against in a large registry.

:class:`casreg.content.packs.ChunkIndex` keeps one :class:`ChunkRef` per chunk in a dict,
about 275 bytes each, built at about 2.7 us a chunk (``python -m benchmarks.index_scale``):
a million chunks, a terabyte of models, cost a push 2.7 s and 275 MB before its first byte,
and the 8 million of DESIGN.md's 10 TB store 24 s and 2.2 GB.
Above :data:`casreg.content.packs.COMPACT_ABOVE` entries it builds an :class:`IndexTable`
instead, with numpy's whole-array operations and no Python object per chunk:

- the entries themselves, 52 bytes each as the index objects store them (docs/FORMAT.md §4),
  in the one buffer the load copied them into;
- the first 8 bytes of every digest as an integer, sorted (8 bytes an entry), with the
  entry each came from (4 bytes) and each entry's pack (4 bytes).

That is 68 bytes a chunk (73-75 measured: 0.3-0.7 s and 73 MB at a million chunks,
2.5-6.3 s and 600 MB at 8 million; the load allocates about 90 bytes a chunk at its peak).
A lookup binary-searches the sorted prefixes and compares the whole digest with each entry
whose prefix matches, in the load's order (by pack id), so it answers what the dict answers: the first
entry in that order (pack by pack, entry by entry) with that digest.
The entries are checked as :func:`casreg.content.packs.pack_layout` checks one index (each
payload right after the previous one, from the pack magic on; a known codec; no raw size
above the registry's maximum; no stored size above what a codec can produce), a whole
index at a time: an index with one bad entry is left out whole, as the dict's loader leaves
it out.
"""

from __future__ import annotations

import struct
import typing
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from casreg.content.manifest import ChunkRef, stored_bound

if TYPE_CHECKING:
    import numpy as np

__all__ = ["IndexTable", "build_table", "ENTRY_SIZE"]

#: The size of one index entry: digest (32), offset (u64), stored size (u32), raw size (u32),
#: codec (u8) and 3 bytes of padding, little-endian (``casreg.content.packs._ENTRY``).
ENTRY_SIZE = 52
_FIELDS = [("digest", "V32"), ("offset", "<u8"), ("stored", "<u4"), ("raw", "<u4"), ("codec", "u1"), ("pad", "V3")]
_WHERE = struct.Struct("<QIIB")  # an entry after its digest: offset, stored size, raw size, codec


class IndexTable:
    """The entries of many indexes, looked up by digest (module docstring). Immutable once
    built, so any number of threads may look up at once."""

    def __init__(self, packs: list[str], entries: bytearray, pack_of: np.ndarray, prefixes: np.ndarray,
                 order: np.ndarray) -> None:
        self.packs = packs  # pack ids, in the load's order (by pack id)
        self.entries = entries  # every entry, 52 bytes each, pack by pack in that order (never changed)
        self.pack_of = pack_of  # the pack number of each entry (uint32)
        self.prefixes = prefixes  # the digests' first 8 bytes, big-endian, sorted (uint64)
        self.order = order  # the entry each sorted prefix belongs to; equal prefixes in entry order
        # (a key is searched as a uint64: numpy compares a Python int of 2**63 or more by
        # converting the whole array first)
        self._key = prefixes.dtype.type
        self._distinct: int | None = None

    def __len__(self) -> int:
        """How many different digests the entries hold (counted when first asked: a push
        never asks)."""
        if self._distinct is None:
            self._distinct = _distinct(self.entries, self.prefixes, self.order)
        return self._distinct

    def _ref(self, pos: int, digest: bytes) -> ChunkRef:
        offset, stored, raw, codec = _WHERE.unpack_from(self.entries, pos * ENTRY_SIZE + 32)
        return ChunkRef(digest, self.packs[int(self.pack_of[pos])], offset, stored, raw, codec)

    def _find(self, digest: bytes) -> int | None:
        """The position of the first entry in listing order whose digest is ``digest``."""
        key = int.from_bytes(digest[:8], "big")
        i = int(self.prefixes.searchsorted(self._key(key)))
        while i < len(self.prefixes) and int(self.prefixes[i]) == key:
            pos = int(self.order[i])
            if self.entries[pos * ENTRY_SIZE:pos * ENTRY_SIZE + 32] == digest:
                return pos
            i += 1
        return None

    def get(self, digest: bytes) -> ChunkRef | None:
        """Where the first entry in listing order with ``digest`` says its chunk is."""
        pos = self._find(digest)
        return None if pos is None else self._ref(pos, bytes(digest))

    def __iter__(self) -> Iterator[ChunkRef]:
        """The entry each digest resolves to, once each, in listing order (as a dict's
        values iterate)."""
        for pos in range(len(self.entries) // ENTRY_SIZE):
            digest = bytes(self.entries[pos * ENTRY_SIZE:pos * ENTRY_SIZE + 32])
            if self._find(digest) == pos:
                yield self._ref(pos, digest)


#: Entries checked at once: bounds the temporary arrays of the checks (about 45 bytes an entry, 12 MB).
CHECK_BATCH = 1 << 18


def build_table(entries: bytearray, packs: Sequence[tuple[str, int, int]], *, first_offset: int,
                codecs: frozenset[int], max_chunk: int) -> tuple[IndexTable, dict[str, int]]:
    """The table of ``entries``, every index's entries joined in listing order, whose
    indexes ``packs`` lists in the same order as ``(pack id, entry count, index size)``
    (the caller checked each index's tail). Also the size each accepted index fixes for
    its pack: ``first_offset`` (the pack magic), its payloads, the index. An index whose
    entries are not a pack's layout (module docstring) is left out of both, its entries
    cut out of ``entries``, which becomes the table's (no copy of it is made)."""
    import numpy as np

    dtype = np.dtype(_FIELDS)
    assert dtype.itemsize == ENTRY_SIZE
    counts = np.array([n for _, n, _ in packs], dtype=np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    assert len(entries) == (int(ends[-1]) if len(packs) else 0) * ENTRY_SIZE
    valid = np.ones(len(packs), dtype=bool)
    payloads = np.zeros(len(packs), dtype=np.uint64)
    view = np.frombuffer(entries, dtype=dtype)
    p = 0
    while p < len(packs):  # whole indexes at a time, about CHECK_BATCH entries
        q = max(p + 1, int(np.searchsorted(ends, starts[p] + CHECK_BATCH, side="right")))
        valid[p:q], payloads[p:q] = _check(view[starts[p]:ends[q - 1]], counts[p:q], first_offset, codecs,
                                           max_chunk)
        p = q
    del view

    kept = [(pack_id, int(n), size) for (pack_id, n, size), ok in zip(packs, valid.tolist(), strict=True) if ok]
    sizes = {pack_id: first_offset + int(payload) + size for (pack_id, _, size), payload, ok
             in zip(packs, payloads.tolist(), valid.tolist(), strict=True) if ok}
    if len(kept) < len(packs):  # cut the left-out indexes' entries out, moving the others down
        at = 0
        for (_, n, _), start, ok in zip(packs, starts.tolist(), valid.tolist(), strict=True):
            if ok and n:
                if at != start:
                    src = start * ENTRY_SIZE
                    entries[at * ENTRY_SIZE:at * ENTRY_SIZE + n * ENTRY_SIZE] = entries[src:src + n * ENTRY_SIZE]
                at += n
        del entries[at * ENTRY_SIZE:]
    n = len(entries) // ENTRY_SIZE
    pack_of = np.repeat(np.arange(len(kept), dtype=np.uint32), np.array([c for _, c, _ in kept], dtype=np.int64))

    # The digests' first 8 bytes, read big-endian where they lie, sorted (a stable sort:
    # equal prefixes stay in listing order).
    prefixes = np.frombuffer(entries, dtype=np.dtype([("p", ">u8"), ("rest", f"V{ENTRY_SIZE - 8}")]))["p"]
    prefixes = prefixes.astype(np.uint64)
    wide = np.argsort(prefixes, kind="stable")
    order = wide.astype(np.uint32) if n < 1 << 32 else wide
    del wide
    prefixes = prefixes[order]
    return IndexTable([pack_id for pack_id, _, _ in kept], entries, pack_of, prefixes, order), sizes


def _check(view: np.ndarray, counts: np.ndarray, first_offset: int, codecs: frozenset[int],
           max_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """For consecutive indexes whose entries are ``view`` (``counts`` of them each):
    whether each is a pack's layout, and its payloads' size."""
    import numpy as np

    ends = np.cumsum(counts)
    starts = ends - counts
    stored = view["stored"].astype(np.uint64)
    raw = view["raw"].astype(np.uint64)
    total = np.concatenate(([np.uint64(0)], np.cumsum(stored, dtype=np.uint64)))  # stored bytes before each entry
    # Each payload must start where the previous one of its pack ends, the first right after the magic.
    good = view["offset"] == np.uint64(first_offset) + total[:-1] - np.repeat(total[starts], counts)
    good &= np.isin(view["codec"], np.array(sorted(codecs), dtype=np.uint8))
    good &= raw <= np.uint64(max_chunk)
    good &= stored <= typing.cast("np.ndarray", stored_bound(typing.cast(int, raw)))  # (its arithmetic, on arrays)
    bad = np.concatenate(([0], np.cumsum(~good, dtype=np.int64)))
    return (bad[ends] - bad[starts]) == 0, total[ends] - total[starts]


def _distinct(body: bytearray, prefixes: np.ndarray, order: np.ndarray) -> int:
    """How many different digests the entries hold: all of them, less the repeats found
    among entries with equal prefixes (a chunk stored twice; rarely anything else)."""
    import numpy as np

    n = len(prefixes)
    if n < 2:
        return n
    same = np.flatnonzero(prefixes[1:] == prefixes[:-1])  # sorted position i equals i + 1
    if not len(same):
        return n
    repeats = 0
    run: set[bytes] = set()
    last = -2
    for i in same.tolist():
        if i != last + 1:  # a new run of equal prefixes starts at sorted position i
            run = {bytes(body[int(order[i]) * ENTRY_SIZE:int(order[i]) * ENTRY_SIZE + 32])}
        pos = int(order[i + 1]) * ENTRY_SIZE
        digest = bytes(body[pos:pos + 32])
        repeats += digest in run
        run.add(digest)
        last = i
    return n - repeats
