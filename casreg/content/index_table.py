"""A compact table of many pack indexes' entries: what a push dedups against in a large registry.

:class:`casreg.content.packs.ChunkIndex` keeps one :class:`ChunkRef` per chunk in a dict,
about 275 bytes each, built at about 2.7 us a chunk (``python -m benchmarks.index_scale``):
a million chunks, a terabyte of models, cost a push 2.7 s and 275 MB before its first byte,
and the 8 million of DESIGN.md's 10 TB store 24 s and 2.2 GB.
Above :data:`casreg.content.packs.COMPACT_ABOVE` entries it builds an :class:`IndexTable`
instead, with numpy's whole-array operations and no Python object per chunk:

- the entries themselves, 52 bytes each as the index objects store them (docs/FORMAT.md §4);
- the first 8 bytes of every digest as an integer, sorted (8 bytes an entry), with the
  entry each came from (4 bytes) and each entry's pack (4 bytes).

That is 68 bytes a chunk (72 measured; 0.4-0.7 s and 73 MB at a million chunks, 3-7 s
and 580 MB at 8 million; the load allocates 120-175 bytes a chunk at its peak, the index
objects it read included). A lookup binary-searches the sorted prefixes and compares the whole
digest with each entry whose prefix matches, in listing order, so it answers what the dict
answers: the first entry in listing order (pack by pack, entry by entry) with that digest.
The entries are checked as :func:`casreg.content.packs.pack_layout` checks one index (each
payload right after the previous one, from the pack magic on; a known codec; no raw size
above the registry's maximum; no stored size above what a codec can produce), a whole
index at a time: an index with one bad entry is left out whole, as the dict's loader leaves
it out.
"""

from __future__ import annotations

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


class IndexTable:
    """The entries of many indexes, looked up by digest (module docstring). Immutable once
    built, so any number of threads may look up at once."""

    def __init__(self, packs: list[str], entries: bytes, pack_of: np.ndarray, prefixes: np.ndarray,
                 order: np.ndarray, distinct: int) -> None:
        self.packs = packs  # pack ids, in listing order
        self.entries = entries  # every entry, 52 bytes each, pack by pack in listing order
        self.pack_of = pack_of  # the pack number of each entry (uint32)
        self.prefixes = prefixes  # the digests' first 8 bytes, big-endian, sorted (uint64)
        self.order = order  # the entry each sorted prefix belongs to; equal prefixes in entry order
        self.distinct = distinct  # how many different digests the entries hold

    def __len__(self) -> int:
        return self.distinct

    @staticmethod
    def _uint64(key: int) -> np.uint64:
        import numpy as np

        return np.uint64(key)

    @property
    def nbytes(self) -> int:
        """The memory the table holds (the entries and the three arrays)."""
        return len(self.entries) + self.pack_of.nbytes + self.prefixes.nbytes + self.order.nbytes

    def _ref(self, pos: int, digest: bytes) -> ChunkRef:
        import struct

        offset, stored, raw, codec = struct.unpack_from("<QIIB", self.entries, pos * ENTRY_SIZE + 32)
        return ChunkRef(digest, self.packs[int(self.pack_of[pos])], offset, stored, raw, codec)

    def _find(self, digest: bytes) -> int | None:
        """The position of the first entry in listing order whose digest is ``digest``."""
        key = int.from_bytes(digest[:8], "big")
        # (as a uint64: numpy compares a Python int of 2**63 or more by converting the whole array)
        i = int(self.prefixes.searchsorted(self._uint64(key)))
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
            digest = self.entries[pos * ENTRY_SIZE:pos * ENTRY_SIZE + 32]
            if self._find(digest) == pos:
                yield self._ref(pos, digest)


def build_table(items: Sequence[tuple[str, memoryview | bytes, int]], *, first_offset: int,
                codecs: frozenset[int], max_chunk: int) -> tuple[IndexTable, dict[str, int]]:
    """The table of ``items``, ``(pack id, entries, index size)`` in listing order: each
    one index's entries without its tail (a whole number of :data:`ENTRY_SIZE` records;
    the caller checks the tail), and the index's whole size. Also the size each accepted
    index fixes for its pack: ``first_offset`` (the pack magic), its payloads, the index.
    An index whose entries are not a pack's layout (module docstring) is left out of both."""
    import numpy as np

    dtype = np.dtype(_FIELDS)
    assert dtype.itemsize == ENTRY_SIZE
    counts = np.array([len(body) // ENTRY_SIZE for _, body, _ in items], dtype=np.int64)
    body = b"".join([entries for _, entries, _ in items])
    entries = np.frombuffer(body, dtype=dtype)
    ends = np.cumsum(counts)
    starts = ends - counts

    # Each payload must start where the previous one of its pack ends, the first right after the magic.
    stored = entries["stored"].astype(np.uint64)
    raw = entries["raw"].astype(np.uint64)
    total = np.concatenate(([np.uint64(0)], np.cumsum(stored, dtype=np.uint64)))  # stored bytes before each entry
    expected = np.uint64(first_offset) + total[:-1] - np.repeat(total[starts], counts)
    good = entries["offset"] == expected
    good &= np.isin(entries["codec"], np.array(sorted(codecs), dtype=np.uint8))
    good &= raw <= np.uint64(max_chunk)
    good &= stored <= typing.cast("np.ndarray", stored_bound(typing.cast(int, raw)))  # (its arithmetic, on arrays)
    del expected, raw
    bad = np.concatenate(([0], np.cumsum(~good, dtype=np.int64)))
    valid = (bad[ends] - bad[starts]) == 0
    payloads = total[ends] - total[starts]
    del good, bad, stored, total

    packs = [pack_id for (pack_id, _, _), ok in zip(items, valid.tolist(), strict=True) if ok]
    sizes = {pack_id: first_offset + int(size) + index_size for (pack_id, _, index_size), size, ok
             in zip(items, payloads.tolist(), valid.tolist(), strict=True) if ok}
    if not valid.all():
        entries = entries[np.repeat(valid, counts)]
        counts = counts[valid]
        body = entries.tobytes()
    n = len(entries)
    pack_of = np.repeat(np.arange(len(counts), dtype=np.uint32), counts)

    raw_bytes = np.frombuffer(body, dtype=np.uint8).reshape(n, ENTRY_SIZE)
    prefixes = np.ascontiguousarray(raw_bytes[:, :8]).view(">u8").reshape(n).astype(np.uint64)
    order = np.argsort(prefixes, kind="stable").astype(np.uint32 if n < 1 << 32 else np.int64)
    prefixes = prefixes[order]
    return IndexTable(packs, body, pack_of, prefixes, order, _distinct(body, prefixes, order)), sizes


def _distinct(body: bytes, prefixes: np.ndarray, order: np.ndarray) -> int:
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
            run = {body[int(order[i]) * ENTRY_SIZE:int(order[i]) * ENTRY_SIZE + 32]}
        pos = int(order[i + 1]) * ENTRY_SIZE
        digest = body[pos:pos + 32]
        repeats += digest in run
        run.add(digest)
        last = i
    return n - repeats
