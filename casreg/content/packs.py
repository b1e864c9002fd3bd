"""Packs: many stored chunks in one immutable object, so request counts stay low.

A 10 GB model cut into ~1 MiB chunks is ~10,000 chunks; one object per chunk would cost
10,000 PUTs. Chunks are appended to a pack until it reaches ``PACK_TARGET`` bytes, then the
pack is written once, named by the BLAKE3 of its index (about 32 PUTs per GB). Each pack
ends with a trailer listing its chunks, and the same list is written as a small index
object, so a pusher learns which chunks exist by reading indexes, never packs.

Layout (docs/FORMAT.md): ``packs/<aa>/<id>.pack`` and ``index/<aa>/<id>.idx``.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from blake3 import blake3

from casreg.content.bundles import USE_AT_LEAST, Bundle, cache_bundle, open_best_bundle, private_copy, read_bundled
from casreg.content.cache import AUTO, CacheArg, ChunkCache, resolve_cache
from casreg.content.codec import Codec, check_decodes
from casreg.content.config import MAX_CHUNK_BYTES, max_chunk_size
from casreg.content.delta import parse_header
from casreg.content.index_table import ENTRY_SIZE, IndexTable, TableBuilder
from casreg.content.listing import list_indexes
from casreg.content.manifest import ChunkRef, stored_bound
from casreg.errors import CasregError, IntegrityError, NotFoundError
from casreg.keys import index_key, pack_key, parse_index_key
from casreg.storage import ByteRange, ObjectStore, ObjectWriter

__all__ = [
    "PACK_TARGET",
    "COMPACT_ABOVE",
    "PackBuilder",
    "ChunkIndex",
    "encode_index",
    "decode_index",
    "pack_layout",
    "read_index",
    "index_limit",
    "verify_pack",
]

PACK_TARGET = 32 << 20
PACK_MAGIC = b"CASRPACK\x01\x00\x00\x00\x00\x00\x00\x00"  # 16 bytes
INDEX_MAGIC = b"CASRIDX\x01"
_ENTRY = struct.Struct("<32sQIIB3x")  # digest, offset, stored size, raw size, codec
_TAIL = struct.Struct("<Q8s")  # entry count, INDEX_MAGIC
VERIFY_SPAN = 4 << 20  # stored bytes read at once while verifying a pack (bounds memory)
_CODECS = frozenset(int(c) for c in Codec)
assert _ENTRY.size == ENTRY_SIZE
#: A push's index of more entries than this is kept in an :class:`~casreg.content.index_table.IndexTable`
#: (about 64 bytes and 0.3-0.7 us of building a chunk, 3-5 us a lookup; 10 bytes and 6-14 us
#: for the entries of indexes read from a local bundle, which it reads back) rather than a dict of
#: :class:`ChunkRef` (about 275 bytes and 1.7-3 us a chunk, under 0.6 us a lookup, and no numpy
#: to import). At 50,000 chunks the dict costs about 0.09 s and 14 MB; the table 0.05 s for
#: importing numpy, 0.02 s of building and, for a push of 5,000 small files, 0.02 s more of
#: lookups (``python -m benchmarks.index_scale``; docs/benchmarks.md, "The chunk index at scale").
COMPACT_ABOVE = 50_000


@dataclass(frozen=True, slots=True)
class _Slot:
    digest: bytes
    offset: int
    stored_size: int
    raw_size: int
    codec: int


def encode_index(slots: Iterable[_Slot]) -> bytes:
    """Entries then ``<count u64><"CASRIDX\\1">``; the same bytes end every pack."""
    slots = list(slots)
    body = b"".join(_ENTRY.pack(s.digest, s.offset, s.stored_size, s.raw_size, s.codec) for s in slots)
    return body + _TAIL.pack(len(slots), INDEX_MAGIC)


def _entry_count(data: bytes, where: str) -> int:
    """How many entries the index ``data`` holds, as its tail says and its size agrees."""
    if len(data) < _TAIL.size:
        raise IntegrityError(f"index {where} is truncated")
    count, magic = _TAIL.unpack_from(data, len(data) - _TAIL.size)
    if magic != INDEX_MAGIC or len(data) != count * _ENTRY.size + _TAIL.size:
        raise IntegrityError(f"index {where} is corrupt")
    return int(count)


def _slots(data: bytes | bytearray, first: int, count: int) -> list[_Slot]:
    """The ``count`` entries of ``data`` from entry number ``first`` on."""
    return [_Slot(*_ENTRY.unpack_from(data, (first + i) * _ENTRY.size)) for i in range(count)]


def decode_index(data: bytes, where: str) -> list[_Slot]:
    return _slots(data, 0, _entry_count(data, where))


def pack_layout(slots: Sequence[_Slot], index_size: int, max_chunk: int, where: str) -> int:
    """The size the pack of this index must have, if the index is laid out as
    :class:`casreg.content.packs.PackBuilder` lays one out: the first payload right after
    the 16-byte magic, each next one right after the previous, every codec known, no raw
    size above ``max_chunk`` and no stored size above what a codec can produce for it.
    Anything else (overlapping or scattered offsets, a 4 GiB chunk) is not a pack a
    writer made: :class:`IntegrityError` naming ``where``."""
    expected = len(PACK_MAGIC)
    for s in slots:
        if s.offset != expected:
            raise IntegrityError(f"index {where} is not a pack's layout: chunk blake3:{s.digest.hex()} at offset "
                                 f"{s.offset}, expected {expected}")
        if s.codec not in _CODECS or s.raw_size > max_chunk or s.stored_size > stored_bound(s.raw_size):
            raise IntegrityError(f"index {where} is corrupt: chunk blake3:{s.digest.hex()} has codec {s.codec}, "
                                 f"{s.raw_size} raw and {s.stored_size} stored bytes")
        expected += s.stored_size
    return expected + index_size


#: The largest index object any reader accepts: 52 bytes per chunk and a 16-byte tail,
#: far more than any pack a push writes has (a pack holds about ``PACK_TARGET`` stored
#: bytes; 64 MiB of index would be 1.3 million chunks of 25 stored bytes each).
MAX_INDEX_BYTES = 64 << 20


def _index_limit(max_chunk: int) -> int:
    """A bound on the index of a pack a writer makes: it seals a pack once it holds
    ``PACK_TARGET`` stored bytes, so it has at most that plus one chunk's payloads, of
    at least one byte each; and never more than :data:`MAX_INDEX_BYTES`, so reading a
    planted index costs bounded memory."""
    return min((PACK_TARGET + stored_bound(max_chunk) + 1) * _ENTRY.size + _TAIL.size, MAX_INDEX_BYTES)


def index_limit(store: ObjectStore) -> int:
    """The largest index object a reader of ``store`` accepts (:func:`_index_limit` of its
    chunk bound)."""
    return _index_limit(max_chunk_size(store))


def read_index(store: ObjectStore, pack_id: str, cache: ChunkCache | None, limit: int) -> bytes:
    """The index object of ``pack_id``, from ``cache`` when it holds it (checked there),
    else from the store (at most ``limit`` bytes) and checked against its name."""
    if cache is not None and (data := cache.get(bytes.fromhex(pack_id), index=True)) is not None:
        return data
    key = index_key(pack_id)
    try:
        data = store.read(key, ByteRange(0, limit + 1))
    except NotFoundError:
        raise IntegrityError(f"object {key} is missing") from None
    if blake3(data).hexdigest() != pack_id:
        raise IntegrityError(f"index {key} does not hash to its name")
    return data


def verify_pack(store: ObjectStore, pack_id: str, index: bytes, slots: Sequence[_Slot], max_chunk: int) -> None:
    """Prove that ``packs/<pack_id>.pack`` holds what its index (``index``, already
    checked to hash to ``pack_id``, decoded into ``slots``) says: exactly the size the
    layout fixes, the pack magic first, the index bytes last, and every payload decoding
    with its codec, at its offset, to its raw size and digest. Reads the pack once, in
    ranges of at most :data:`VERIFY_SPAN` stored bytes (plus one chunk), so memory stays
    bounded whatever the pack claims. Raises :class:`IntegrityError` naming the pack
    and what is wrong (a missing pack included)."""
    key = pack_key(pack_id)
    size = pack_layout(slots, len(index), max_chunk, index_key(pack_id))
    try:
        # One read checks the size (a longer object returns a byte more, a shorter one less) and the trailer.
        tail = store.read(key, ByteRange(size - len(index), size + 1))
        if len(tail) != len(index):
            raise IntegrityError(f"pack {key} has the wrong size (its index says {size} bytes)")
        if tail != index:
            raise IntegrityError(f"pack {key} does not end with its index")
        start = 0  # the first range also covers the magic
        i = 0
        while i < len(slots):
            j = i
            end = slots[i].offset + slots[i].stored_size
            while j + 1 < len(slots) and slots[j + 1].offset + slots[j + 1].stored_size - start <= VERIFY_SPAN:
                j += 1
                end = slots[j].offset + slots[j].stored_size
            data = store.read(key, ByteRange(start, end))
            if len(data) != end - start:
                raise IntegrityError(f"pack {key} is truncated at offset {start + len(data)}")
            view = memoryview(data)
            if start == 0 and bytes(view[:len(PACK_MAGIC)]) != PACK_MAGIC:
                raise IntegrityError(f"pack {key} does not start with the pack magic")
            for s in slots[i:j + 1]:
                try:
                    payload = view[s.offset - start:s.offset - start + s.stored_size]
                    if s.codec == Codec.DELTA:  # needs its bases: a push decodes one before relying on it
                        parse_header(payload, s.raw_size)
                    else:
                        check_decodes(s.codec, payload, s.raw_size, s.digest)
                except IntegrityError as err:
                    raise IntegrityError(f"pack {key}: chunk blake3:{s.digest.hex()} at offset {s.offset} is "
                                         f"not what its index says ({err})") from None
            start, i = end, j + 1
        if not slots:
            head = store.read(key, ByteRange(0, len(PACK_MAGIC)))
            if head != PACK_MAGIC:
                raise IntegrityError(f"pack {key} does not start with the pack magic")
    except NotFoundError:
        raise IntegrityError(f"pack {key} is missing (its index {index_key(pack_id)} is there)") from None


class PackBuilder:
    """Streams stored chunk payloads into one pack (an :class:`ObjectWriter`: a temporary
    file on a local disk, memory for an object store); :meth:`seal` appends the index."""

    def __init__(self, writer: ObjectWriter) -> None:
        self.writer = writer
        writer.write(PACK_MAGIC)
        self._size = len(PACK_MAGIC)  # counted here: a writer may land its writes later
        self.slots: list[_Slot] = []
        self.raw_bytes = 0
        self.pack_id: str | None = None  # known once sealed

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def size(self) -> int:
        return self._size

    def add(self, digest: bytes, codec: int, stored: bytes | memoryview, raw_size: int) -> int:
        """Append a payload; return its offset in the pack."""
        offset = self._size
        self.writer.write(stored)
        self._size += len(stored)
        self.slots.append(_Slot(digest, offset, len(stored), raw_size, codec))
        self.raw_bytes += raw_size
        return offset

    def seal(self) -> tuple[str, bytes]:
        """Append the index; return (pack id, index bytes). The pack's bytes are the
        writer's, to be published under :func:`pack_key` of the id."""
        index = encode_index(self.slots)
        self.writer.write(index)
        self._size += len(index)
        # Named by the hash of the index, which lists every chunk's BLAKE3, offset, sizes
        # and codec: it identifies the content as well as hashing all the bytes would,
        # at a fraction of the cost (each payload is verified by its chunk digest).
        self.pack_id = blake3(index).hexdigest()
        return self.pack_id, index


def _choose_bundle(store: ObjectStore, wanted: list[str], uncached: list[bool],
                   missing: list[str], cache: ChunkCache | None,
                   limit: int) -> tuple[Bundle, list[int]] | None:
    """The index bundle a load reads, with each of ``wanted``'s place in it (``-1``: read
    that index as before), or ``None``. Without a cache: the bundle holding most of the
    ``missing`` indexes, if they are :data:`~casreg.content.bundles.USE_AT_LEAST` or more.
    With one: the bundle holding most of ``wanted``, copied into the cache whole if it is
    not there yet, for every index it holds; if it cannot be copied, for the missing ones
    only, as without a cache."""
    if cache is None:
        if len(missing) < USE_AT_LEAST:
            return None
        return open_best_bundle(store, missing, limit)  # missing is wanted: nothing is cached
    if len(wanted) < USE_AT_LEAST:
        return None
    found = open_best_bundle(store, wanted, limit, cache)
    if found is None:
        return None
    bundle, where = found
    if sum(1 for p in where if p >= 0) < USE_AT_LEAST:
        bundle.close()
        return None
    if not bundle.cached:
        copy = cache_bundle(bundle, cache, limit)
        if copy is not None:  # the same directory, so the same places
            bundle.close()
            return copy, where
        where = [p if lacked else -1 for p, lacked in zip(where, uncached, strict=True)]
        if sum(1 for p in where if p >= 0) < USE_AT_LEAST:
            bundle.close()
            return None
    return bundle, where


def _bundled_bytes(bundle: Bundle, where: Sequence[int]) -> int:
    """The bytes of the indexes a load takes from ``bundle``, as its directory says."""
    offsets = bundle.offsets
    return sum(offsets[p + 1] - offsets[p] for p in where if p >= 0)


def _bundled_entries(bundle: Bundle, where: Sequence[int]) -> int:
    """How many entries the indexes a load takes from ``bundle`` hold, as its directory says."""
    offsets = bundle.offsets
    return sum((offsets[p + 1] - offsets[p] - _TAIL.size) // _ENTRY.size for p in where if p >= 0)


def _table_builder(max_chunk: int) -> TableBuilder:
    return TableBuilder(first_offset=len(PACK_MAGIC), codecs=_CODECS, max_chunk=max_chunk)


def _builder_of(entries: bytearray, packs: Sequence[tuple[str, int, int]], max_chunk: int) -> TableBuilder:
    """A table builder given the indexes a load has kept so far (``entries``, joined; ``packs``:
    (pack id, entries, index size) of each, in order)."""
    builder = _table_builder(max_chunk)
    view = memoryview(entries)
    first = 0
    for pack_id, n, size in packs:
        builder.add(pack_id, view[first * _ENTRY.size:(first + n) * _ENTRY.size], size)
        first += n
    view.release()
    return builder


def _reread(store: ObjectStore, bundle: Bundle, cache: ChunkCache | None,
            limit: int) -> Callable[[str, int], bytes | None]:
    """How a table reads back an index it took from ``bundle`` at a place: from the bundle
    again, else (the bundle removed or changed since) from the cache or the index object;
    each time checked against the pack id, ``None`` if no copy is as it says."""
    def reread(pack_id: str, place: int) -> bytes | None:
        data = bundle.read(bundle.offsets[place], bundle.offsets[place + 1])
        if data is not None and blake3(data).hexdigest() == pack_id:
            return data
        try:
            return read_index(store, pack_id, cache, limit)  # (checked against the pack id there)
        except CasregError:
            return None  # gone (gc removed the pack) or damaged: the chunk is stored again
    return reread


class ChunkIndex:
    """Which chunks the registry already holds, and where (digest → :class:`ChunkRef`).

    Built by reading every ``index/`` object. Up to :data:`COMPACT_ABOVE` entries they
    are kept as a dict of :class:`ChunkRef`, about 275 bytes a chunk; above, in an
    :class:`~casreg.content.index_table.IndexTable`, about 64 bytes a chunk, or about 10
    for the chunks of indexes it read from an index bundle on a local disk, whose entries
    it reads back from there: the 8 million chunks of a 10 TB store ~510 MB, or ~83 MB
    through a bundle (docs/benchmarks.md, "The chunk index at scale"). :meth:`close` it
    when done (a push does).
    """

    def __init__(self, max_chunk: int = MAX_CHUNK_BYTES) -> None:
        self._refs: dict[bytes, ChunkRef] = {}
        self._table: IndexTable | None = None  # the entries load() found, above COMPACT_ABOVE of them
        self.cache: ChunkCache | None = None  # where load() found and kept index objects
        self.max_chunk = max_chunk  # the registry's bound on a chunk's raw size
        self.pack_sizes: Mapping[str, int] = {}  # pack id -> the size its index fixes (pack_layout)
        self.read_alone = 0  # how many indexes load() read from the store one by one (not cached, not bundled)
        self._close: weakref.finalize[[], ChunkIndex] | None = None  # closes the bundle a table reads entries back from

    def close(self) -> None:
        """Close the index bundle the table reads entries back from, if it does (also done
        when the index is garbage collected). Lookups after it still answer, from the
        index objects."""
        if self._close is not None:
            self._close()

    @property
    def compact(self) -> bool:
        """Whether the entries are kept in an :class:`~casreg.content.index_table.IndexTable`."""
        return self._table is not None

    def remember(self, pack_id: str, index: bytes) -> None:
        """A push wrote this pack's index: keep it in the cache too, so the next push
        from this machine does not fetch what it wrote itself. ``pack_id`` is the index's
        BLAKE3 by construction (:meth:`PackBuilder.seal`)."""
        if self.cache is not None:
            self.cache.put_verified(bytes.fromhex(pack_id), index, index=True)

    def __contains__(self, digest: bytes) -> bool:
        return self.get(digest) is not None

    def __len__(self) -> int:
        """How many different chunks (a chunk both in the table and added since counts twice)."""
        return len(self._refs) + (len(self._table) if self._table is not None else 0)

    def get(self, digest: bytes) -> ChunkRef | None:
        """Where the registry holds the chunk ``digest`` (the first pack, by pack id, that has
        it), or ``None``."""
        if self._table is not None and (ref := self._table.get(digest)) is not None:
            return ref
        return self._refs.get(digest)

    def verify(self, store: ObjectStore, pack_id: str) -> None:
        """Read the pack ``pack_id`` back whole and prove it holds what its index says
        (:func:`verify_pack`; the index is taken from the cache or read again). Raises
        :class:`IntegrityError` naming what is wrong."""
        index = read_index(store, pack_id, self.cache, _index_limit(self.max_chunk))
        verify_pack(store, pack_id, index, decode_index(index, index_key(pack_id)), self.max_chunk)

    def add_pack(self, pack_id: str, slots: Iterable[_Slot]) -> None:
        for s in slots:
            self._refs.setdefault(s.digest, ChunkRef(s.digest, pack_id, s.offset, s.stored_size, s.raw_size, s.codec))

    @classmethod
    def load(cls, store: ObjectStore, cache: CacheArg = AUTO, *, compact_above: int | None = None) -> ChunkIndex:
        """Read every ``index/`` object (one listing, one read each).

        An index is immutable and named by its own BLAKE3 (the pack id), so it can live in
        the local chunk cache like a chunk, checked on every read: with a cache (``cache``,
        by default the one ``CASREG_CACHE`` picks, i.e. for remote registries only,
        docs/cache.md) a push reads only the indexes it has not seen before, instead of
        one per pack in the registry. Only indexes the listing shows are used, so a pack
        gc removed is forgotten even while its index is still cached. Reads that do go to
        the store run ``io_concurrency`` at a time. More than ``compact_above`` entries
        (default :data:`COMPACT_ABOVE`) are kept in a table rather than a dict: the same
        indexes are accepted and the same lookups answered either way."""
        chosen = resolve_cache(store, cache)
        # The pack ids listed, in pack id order (the same answers from every backend, and a
        # bundle's order); an index's key is made again from its id where it is read, rather
        # than kept from the listing (at 8 million chunks the keys and their pairs with the
        # ids held 34 MB more for the whole load).
        wanted = sorted(pack_id for key in list_indexes(store) if (pack_id := parse_index_key(key)) is not None)
        max_chunk = max_chunk_size(store)
        limit = _index_limit(max_chunk)

        def fetch(pack_id: str) -> bytes | None:
            key = index_key(pack_id)
            try:
                data = store.read(key, ByteRange(0, limit + 1))  # bounded: no writer makes a larger index
            except NotFoundError:
                return None  # removed since the listing (gc of an unreferenced pack)
            if len(data) > limit or blake3(data).hexdigest() != pack_id:
                return None  # damaged: trusting it would make new versions point at wrong bytes
            if chosen is not None:
                chosen.put_verified(bytes.fromhex(pack_id), data, index=True)
            return data

        # Each index's entries are copied into one buffer as it is read, in pack id order,
        # and the index object dropped: the load holds the entries it keeps, not every index
        # object besides (a table's load peaked at 175 bytes a chunk that way, now at about
        # 90: docs/benchmarks.md, "The chunk index at scale"). The ones the cache lacks are
        # read from the store in that order, one at a time, or io_concurrency at a time
        # where the store takes that many.
        uncached = [chosen is None or not chosen.has_index(bytes.fromhex(pack_id)) for pack_id in wanted]
        missing = [pack_id for pack_id, lacked in zip(wanted, uncached, strict=True) if lacked]
        # Many to read one by one: those an index bundle holds are read from it instead, a few
        # large ranges at a time, each checked as if read on its own (casreg/content/bundles.py).
        # With a cache, the bundle is copied into it whole and serves every index it holds
        # from then on: one local file instead of an entry per index.
        opened = _choose_bundle(store, wanted, uncached, missing, chosen, limit)
        where = opened[1] if opened is not None else [-1] * len(wanted)  # each index's place in the bundle
        singles = [pack_id for pack_id, lacked, p in zip(wanted, uncached, where, strict=True) if lacked and p < 0]
        pool = ThreadPoolExecutor(min(store.io_concurrency, len(missing)), thread_name_prefix="casreg-index") \
            if store.io_concurrency > 1 and len(missing) > 1 else None
        threshold = COMPACT_ABOVE if compact_above is None else compact_above
        # Through a bundle on a local disk (a cached copy, or a local registry's own), a table
        # does not keep the entries of the indexes read from it: it reads them back when a
        # lookup needs them (casreg/content/index_table.py), 52 bytes a chunk fewer. A remote
        # bundle with no cache to copy it into is copied into a private temporary file for
        # that, unless it cannot be (then the table keeps those entries).
        large = opened is not None and _bundled_entries(opened[0], where) > threshold
        if large and opened is not None and not opened[0].cached and store.io_concurrency > 1:
            try:
                copy = private_copy(opened[0], limit, _bundled_bytes(opened[0], where), pool, store.io_concurrency)
            except BaseException:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
                raise
            if copy is not None:  # the same object, so the same places
                opened[0].close()
                opened = copy, where
        read_back = large and opened is not None and (opened[0].cached or store.io_concurrency == 1)
        fetched: Iterator[bytes | None] = pool.map(fetch, singles) if pool is not None else map(fetch, singles)
        from_bundle: Iterator[bytes | None] = iter(()) if opened is None else \
            read_bundled(opened[0], [p for p in where if p >= 0], pool, store.io_concurrency)
        builder = _table_builder(max_chunk) if read_back else None
        fallbacks = 0
        damaged_copy = False
        entries = bytearray()  # the entries of the indexes not given to a builder yet, in pack id order
        packs: list[tuple[str, int, int]] = []  # (pack id, entries, index size) of each, in that order
        try:
            for pack_id, lacked, place in zip(wanted, uncached, where, strict=True):  # pack id order: the first
                bundled = False                                                   # pack holding a chunk wins
                if place >= 0:
                    assert opened is not None
                    data = next(from_bundle)
                    bundled = data is not None
                    if data is None:  # not as its pack id says, or the bundle is gone: read it on its own
                        damaged_copy = damaged_copy or opened[0].cached
                        fallbacks += 1
                        data = (None if lacked or chosen is None else chosen.get(bytes.fromhex(pack_id), index=True)) \
                            or fetch(pack_id)
                    elif chosen is not None and not opened[0].cached:
                        chosen.put_verified(bytes.fromhex(pack_id), data, index=True)
                elif lacked:
                    data = next(fetched)
                else:  # cached, unless the entry was damaged (then dropped) or removed meanwhile
                    assert chosen is not None
                    data = chosen.get(bytes.fromhex(pack_id), index=True) or fetch(pack_id)
                if data is None:
                    continue
                try:
                    count = _entry_count(data, pack_id)  # (the message is not shown)
                except IntegrityError:
                    continue  # a bad index only costs dedup; verify reports it
                body = memoryview(data)[:len(data) - _TAIL.size]
                if builder is None and (len(entries) + len(body)) // _ENTRY.size > threshold:
                    builder = _builder_of(entries, packs, max_chunk)  # bounded from here on
                    entries, packs = bytearray(), []
                if builder is not None:
                    builder.add(pack_id, body, len(data), place if read_back and bundled else -1)
                else:
                    packs.append((pack_id, count, len(data)))
                    entries += body
        except BaseException:
            if read_back and opened is not None:
                opened[0].close()
            raise
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if opened is not None and not read_back:
                opened[0].close()
            if damaged_copy and chosen is not None and opened is not None:
                chosen.drop_bundle(opened[0].bundle_id)
        index = cls(max_chunk)
        index.cache = chosen
        index.read_alone = len(singles) + fallbacks
        # what the load knew of each pack (about 350 bytes a pack, 60 MB at 177,778) is not
        # needed by the table, whose sort comes next
        del wanted, uncached, missing, singles, where, fetched, from_bundle
        if builder is None and len(entries) // _ENTRY.size > threshold:
            builder = _builder_of(entries, packs, max_chunk)
        if builder is not None:
            reread = None
            if read_back and opened is not None:  # the table reads from the bundle until the index is closed
                reread = _reread(store, opened[0], chosen, limit)
                index._close = weakref.finalize(index, opened[0].close)
            index._table = builder.finish(reread)
            index.pack_sizes = index._table.pack_sizes
            return index
        sizes: dict[str, int] = {}
        first = 0
        for pack_id, n, size in packs:
            slots = _slots(entries, first, n)
            first += n
            try:
                # no writer lays a pack out otherwise:
                pack_size = pack_layout(slots, size, index.max_chunk, index_key(pack_id))
            except IntegrityError:
                continue  # a bad index only costs dedup; verify reports it
            index.add_pack(pack_id, slots)
            sizes[pack_id] = pack_size
        index.pack_sizes = sizes
        return index

    def __iter__(self) -> Iterator[ChunkRef]:
        if self._table is not None:
            yield from self._table
        yield from self._refs.values()
