"""A compact table of many pack indexes' entries: what a push dedups against in a large registry.

:class:`casreg.content.packs.ChunkIndex` keeps one :class:`ChunkRef` per chunk in a dict,
about 275 bytes each, built at about 2.7 us a chunk (``python -m benchmarks.index_scale``):
a million chunks, a terabyte of models, cost a push 2.7 s and 275 MB before its first byte,
and the 8 million of DESIGN.md's 10 TB store 24 s and 2.2 GB.
Above :data:`casreg.content.packs.COMPACT_ABOVE` entries it builds an :class:`IndexTable`
instead (:class:`TableBuilder`), with numpy's whole-array operations and no Python object
per chunk:

- a sorted key per entry, 8 bytes: the top bits of its digest's first 8 bytes, then the
  entry's number in as many low bits as the count of entries needs (23 at 8 million, which
  leaves 41 bits of digest: there, a lookup meets another chunk with the same bits about
  once in 275,000, and compares one more digest when it does);
- the entries themselves, 52 bytes each as the index objects store them (docs/FORMAT.md §4),
  for the indexes that must be kept in memory; an index the load read from an index bundle
  on a local disk (a cached copy, a local registry's own, or a private copy of a remote
  one: :func:`casreg.content.bundles.private_copy`) is **read back** from there
  when a lookup needs one of its entries, and checked against its pack id again each time
  (a few recently read are kept), so it costs the table nothing per entry;
- per pack, 64 bytes: its id, where its entries begin, where they are kept or read back,
  and the size its index fixes for it (:class:`PackSizes`).

That is 8 bytes a chunk whose index is read back and 60 for one kept (measured with the
packs' share: 10 and 62-64 bytes a chunk; 83 MB at 8 million chunks read back, 510 MB
kept, where every chunk took 73-75 bytes and 600 MB before; docs/benchmarks.md, "The chunk
index at scale"). The keys are sorted in place, so building them holds little more.
A lookup binary-searches the keys and compares the whole digest with each entry whose key
has the digest's top bits, in the load's order (by pack id), so it answers what the dict answers:
the first entry in that order (pack by pack, entry by entry) with that digest. An index
that can no longer be read back as its pack id says (its bundle removed or damaged since,
and its own index object too) answers nothing: the push stores the chunk again.
The entries are checked as :func:`casreg.content.packs.pack_layout` checks one index (each
payload right after the previous one, from the pack magic on; a known codec; no raw size
above the registry's maximum; no stored size above what a codec can produce), a whole
index at a time: an index with one bad entry is left out whole, as the dict's loader leaves
it out.
"""

from __future__ import annotations

import struct
import threading
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from casreg.content.manifest import ChunkRef, stored_bound

if TYPE_CHECKING:
    import numpy as np

__all__ = ["IndexTable", "TableBuilder", "PackSizes", "ENTRY_SIZE", "Reread"]

#: The size of one index entry: digest (32), offset (u64), stored size (u32), raw size (u32),
#: codec (u8) and 3 bytes of padding, little-endian (``casreg.content.packs._ENTRY``).
ENTRY_SIZE = 52
_FIELDS = [("digest", "V32"), ("offset", "<u8"), ("stored", "<u4"), ("raw", "<u4"), ("codec", "u1"), ("pad", "V3")]
_PREFIX = [("p", ">u8"), ("rest", f"V{ENTRY_SIZE - 8}")]  # an entry's first 8 bytes, big-endian
_WHERE = struct.Struct("<QIIB")  # an entry after its digest: offset, stored size, raw size, codec
#: Entries checked at once: bounds the temporary arrays of the checks (about 45 bytes an entry, 12 MB).
CHECK_BATCH = 1 << 18
#: Indexes read back that a table keeps for the next lookups (a known file's chunks come
#: from a few packs in turn): at most this many, about 2.4 KB each for 1 MiB chunks.
RECENT = 64

#: How a table reads back the index of a pack it did not keep: ``(pack id, place)``, the
#: place the load gave :meth:`TableBuilder.add`, to the index's bytes checked against the
#: pack id, or ``None`` if they cannot be read so.
Reread = Callable[[str, int], "bytes | None"]


class PackSizes(Mapping[str, int]):
    """The size each of a table's packs must have (what its index fixes: the pack magic, its
    payloads, the index), by hex pack id: a binary search of the ids, ascending, rather
    than a dict of their hex strings (33 MB for the 177,778 packs of 8 million chunks)."""

    def __init__(self, ids: bytes, sizes: np.ndarray) -> None:
        self._ids = ids
        self._sizes = sizes

    def __getitem__(self, pack_id: str) -> int:
        try:
            raw = bytes.fromhex(pack_id)
        except (ValueError, TypeError):
            raise KeyError(pack_id) from None
        ids, lo, hi = self._ids, 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[32 * mid:32 * mid + 32] < raw:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self) and ids[32 * lo:32 * lo + 32] == raw:
            return int(self._sizes[lo])
        raise KeyError(pack_id)

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self._ids[32 * i:32 * i + 32].hex()

    def __len__(self) -> int:
        return len(self._ids) // 32


class IndexTable:
    """The entries of many indexes, looked up by digest (module docstring). Its answers
    never change once built, so any number of threads may look up at once."""

    def __init__(self, ids: bytes, starts: np.ndarray, entries: bytearray, kept: np.ndarray, places: np.ndarray,
                 keys: np.ndarray, shift: int, reread: Reread | None, sizes: np.ndarray) -> None:
        #: The size each pack must have, by pack id.
        self.pack_sizes = PackSizes(ids, sizes)
        self._ids = ids  # the pack ids, 32 bytes each, in the load's order (by pack id)
        self._starts = starts  # the number of each pack's first entry, then the entry count (int64)
        self._entries = entries  # the kept packs' entries, 52 bytes each (never changed)
        self._kept = kept  # where each pack's entries begin in _entries (bytes), -1 if read back (int64)
        self._places = places  # what reread is given for each pack read back (int64)
        # Each entry's key: the top 64 - shift bits of its digest's first 8 bytes (big-endian),
        # then its number in the low shift bits; sorted, so equal prefixes are in entry order.
        self.keys = keys
        self._shift = shift
        self._mask = (1 << shift) - 1
        self._reread = reread
        # (a key is searched as a uint64: numpy compares a Python int of 2**63 or more by
        # converting the whole array first)
        self._key = keys.dtype.type
        self._distinct: int | None = None
        self._recent: OrderedDict[int, bytes | None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def packs(self) -> int:
        """How many indexes the table holds."""
        return len(self._ids) // 32

    @property
    def kept_bytes(self) -> int:
        """The bytes of entries kept in memory (the rest are read back)."""
        return len(self._entries)

    def __len__(self) -> int:
        """How many different digests the entries hold (counted when first asked: a push
        never asks; an entry that can no longer be read back counts as different)."""
        if self._distinct is None:
            self._distinct = self._count_distinct()
        return self._distinct

    def _pack_of(self, pos: int) -> int:
        return int(self._starts.searchsorted(pos, side="right")) - 1

    def _entries_size(self, pack: int) -> int:
        """The bytes of a pack's entries."""
        return (int(self._starts[pack + 1]) - int(self._starts[pack])) * ENTRY_SIZE

    def _index(self, pack: int) -> bytes | None:
        """The entries of a pack read back (not kept), checked against its pack id."""
        with self._lock:
            if pack in self._recent:
                self._recent.move_to_end(pack)
                return self._recent[pack]
        assert self._reread is not None
        data = self._reread(self._ids[32 * pack:32 * pack + 32].hex(), int(self._places[pack]))
        entries = None if data is None else data[:self._entries_size(pack)]
        with self._lock:
            self._recent[pack] = entries
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        return entries

    def _entries_of(self, pack: int) -> bytes | bytearray | memoryview | None:
        at = int(self._kept[pack])
        if at < 0:
            return self._index(pack)
        return memoryview(self._entries)[at:at + self._entries_size(pack)]

    def _entry(self, pos: int) -> tuple[int, bytes] | None:
        """The pack of entry ``pos`` and its 52 bytes, or ``None`` if it cannot be read back."""
        pack = self._pack_of(pos)
        entries = self._entries_of(pack)
        if entries is None:
            return None
        at = (pos - int(self._starts[pack])) * ENTRY_SIZE
        return pack, bytes(entries[at:at + ENTRY_SIZE])

    def _find(self, digest: bytes) -> tuple[int, int, bytes] | None:
        """The position, pack and bytes of the first entry in the load's order whose digest
        is ``digest``."""
        top = int.from_bytes(digest[:8], "big") >> self._shift
        keys, n = self.keys, len(self.keys)
        i = int(keys.searchsorted(self._key(top << self._shift)))
        while i < n and int(keys[i]) >> self._shift == top:
            pos = int(keys[i]) & self._mask
            found = self._entry(pos)
            if found is not None and found[1][:32] == digest:
                return pos, found[0], found[1]
            i += 1
        return None

    def _ref(self, pack: int, entry: bytes) -> ChunkRef:
        offset, stored, raw, codec = _WHERE.unpack_from(entry, 32)
        return ChunkRef(entry[:32], self._ids[32 * pack:32 * pack + 32].hex(), offset, stored, raw, codec)

    def get(self, digest: bytes) -> ChunkRef | None:
        """Where the first entry in the load's order with ``digest`` says its chunk is."""
        found = self._find(bytes(digest))
        return None if found is None else self._ref(found[1], found[2])

    def __iter__(self) -> Iterator[ChunkRef]:
        """The entry each digest resolves to, once each, in the load's order (as a dict's
        values iterate)."""
        for pack in range(self.packs):
            entries = self._entries_of(pack)
            if entries is None:
                continue
            first = int(self._starts[pack])
            for j in range(len(entries) // ENTRY_SIZE):
                entry = bytes(entries[j * ENTRY_SIZE:(j + 1) * ENTRY_SIZE])
                found = self._find(entry[:32])
                if found is not None and found[0] == first + j:
                    yield self._ref(pack, entry)

    def _count_distinct(self) -> int:
        """All entries, less the repeats found among entries with equal prefixes (a chunk
        stored twice; rarely anything else)."""
        import numpy as np

        n = len(self.keys)
        if n < 2:
            return n
        tops = self.keys >> np.uint64(self._shift)
        same = np.flatnonzero(tops[1:] == tops[:-1])  # sorted position i has the prefix of i + 1
        del tops
        repeats = 0
        run: set[bytes] = set()
        last = -2
        for i in same.tolist():
            if i != last + 1:  # a new run of equal prefixes starts at sorted position i
                found = self._entry(int(self.keys[i]) & self._mask)
                run = {found[1][:32]} if found is not None else set()
            found = self._entry(int(self.keys[i + 1]) & self._mask)
            if found is not None:
                repeats += found[1][:32] in run
                run.add(found[1][:32])
            last = i
        return n - repeats


class TableBuilder:
    """Builds an :class:`IndexTable` from indexes given in the load's order, checking them
    :data:`CHECK_BATCH` entries at a time, so that a load never holds more than one batch
    of the entries it does not keep."""

    def __init__(self, *, first_offset: int, codecs: frozenset[int], max_chunk: int) -> None:
        self._first_offset = first_offset
        self._codecs = codecs
        self._max_chunk = max_chunk
        self._pending = bytearray()  # the entries of the indexes added since the last check
        self._batch: list[tuple[bytes, int, int, int]] = []  # (pack id, entries, index size, place) of each
        self._ids = bytearray()  # of the indexes accepted, ascending
        self._sizes: list[int] = []  # the size each fixes for its pack
        self._last = b""  # the last pack id added
        self._counts: list[int] = []
        self._kept: list[int] = []
        self._places: list[int] = []
        self._entries = bytearray()
        self._prefixes: list[np.ndarray] = []

    def add(self, pack_id: str, entries: bytes | bytearray | memoryview, index_size: int, place: int = -1) -> None:
        """The index of ``pack_id`` (``index_size`` bytes, its tail checked by the caller),
        whose ``entries`` are the index but its tail. With ``place`` -1 the table keeps
        them; otherwise it reads them back with its ``reread(pack_id, place)``. Pack ids must
        ascend (the load's order); a pack added again is left out (the first one counts, as
        in the dict)."""
        raw = bytes.fromhex(pack_id)
        if raw == self._last:
            return
        if raw < self._last:
            raise ValueError(f"pack {pack_id} added after {self._last.hex()}: pack ids must ascend")
        self._last = raw
        self._pending += entries
        self._batch.append((raw, len(entries) // ENTRY_SIZE, index_size, place))
        if len(self._pending) >= CHECK_BATCH * ENTRY_SIZE:
            self._check_batch()

    def _check_batch(self) -> None:
        import numpy as np

        if not self._batch:
            return
        counts = np.array([n for _, n, _, _ in self._batch], dtype=np.int64)
        valid, payloads = _check(np.frombuffer(self._pending, dtype=np.dtype(_FIELDS)), counts, self._first_offset,
                                 self._codecs, self._max_chunk)
        prefixes = np.frombuffer(self._pending, dtype=np.dtype(_PREFIX))["p"]
        self._prefixes.append(prefixes[np.repeat(valid, counts)].astype(np.uint64))
        del prefixes
        pending = memoryview(self._pending)
        start = 0
        for (pack_id, n, size, place), ok, payload in zip(self._batch, valid.tolist(), payloads.tolist(), strict=True):
            if ok:
                self._sizes.append(self._first_offset + int(payload) + size)
                self._ids += pack_id
                self._counts.append(n)
                self._places.append(place)
                if place < 0:
                    self._kept.append(len(self._entries))
                    self._entries += pending[start * ENTRY_SIZE:(start + n) * ENTRY_SIZE]
                else:
                    self._kept.append(-1)
            start += n
        pending.release()
        self._pending = bytearray()
        self._batch = []

    def finish(self, reread: Reread | None = None) -> IndexTable:
        """The table of every index added (``reread``: how it reads back those added with a
        place; needed if any was)."""
        import numpy as np

        self._check_batch()
        n = sum(len(part) for part in self._prefixes)
        shift = max(1, n.bit_length())  # the low bits of a key: its entry's number
        keys = np.empty(n, dtype=np.uint64)
        at = 0
        self._prefixes.reverse()
        while self._prefixes:  # each part freed once copied: the keys are all this holds
            part = self._prefixes.pop()
            keys[at:at + len(part)] = part
            at += len(part)
            del part
        keys >>= np.uint64(shift)
        keys <<= np.uint64(shift)
        for first in range(0, n, CHECK_BATCH):
            keys[first:first + CHECK_BATCH] |= np.arange(first, min(first + CHECK_BATCH, n), dtype=np.uint64)
        keys.sort()  # in place; keys are distinct, so equal prefixes stay in the load's order
        starts = np.zeros(len(self._counts) + 1, dtype=np.int64)
        np.cumsum(np.array(self._counts, dtype=np.int64), out=starts[1:])
        places = np.array(self._places, dtype=np.int64)
        if reread is None and bool((places >= 0).any()):
            raise ValueError("indexes to read back, and no way to read them")
        return IndexTable(bytes(self._ids), starts, self._entries, np.array(self._kept, dtype=np.int64), places,
                          keys, shift, reread, np.array(self._sizes, dtype=np.int64))


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
