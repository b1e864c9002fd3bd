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
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from blake3 import blake3

from casreg.content.cache import AUTO, CacheArg, ChunkCache, resolve_cache
from casreg.content.manifest import ChunkRef
from casreg.errors import IntegrityError, NotFoundError
from casreg.keys import INDEXES, parse_index_key
from casreg.storage import ObjectStore, ObjectWriter

__all__ = [
    "PACK_TARGET",
    "PackBuilder",
    "ChunkIndex",
    "encode_index",
    "decode_index",
]

PACK_TARGET = 32 << 20
PACK_MAGIC = b"CASRPACK\x01\x00\x00\x00\x00\x00\x00\x00"  # 16 bytes
INDEX_MAGIC = b"CASRIDX\x01"
_ENTRY = struct.Struct("<32sQIIB3x")  # digest, offset, stored size, raw size, codec
_TAIL = struct.Struct("<Q8s")  # entry count, INDEX_MAGIC


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


def decode_index(data: bytes, where: str) -> list[_Slot]:
    if len(data) < _TAIL.size:
        raise IntegrityError(f"index {where} is truncated")
    count, magic = _TAIL.unpack_from(data, len(data) - _TAIL.size)
    if magic != INDEX_MAGIC or len(data) != count * _ENTRY.size + _TAIL.size:
        raise IntegrityError(f"index {where} is corrupt")
    return [_Slot(*_ENTRY.unpack_from(data, i * _ENTRY.size)) for i in range(count)]


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


class ChunkIndex:
    """Which chunks the registry already holds, and where (digest → :class:`ChunkRef`).

    Built by reading every ``index/`` object. Memory is about 200 bytes per chunk, so a
    store of a million chunks costs ~200 MB here; consolidating indexes is future work
    (see docs/FORMAT.md, "Limits").
    """

    def __init__(self) -> None:
        self._refs: dict[bytes, ChunkRef] = {}
        self.cache: ChunkCache | None = None  # where load() found and kept index objects

    def remember(self, pack_id: str, index: bytes) -> None:
        """A push wrote this pack's index: keep it in the cache too, so the next push
        from this machine does not fetch what it wrote itself. ``pack_id`` is the index's
        BLAKE3 by construction (:meth:`PackBuilder.seal`)."""
        if self.cache is not None:
            self.cache.put_verified(bytes.fromhex(pack_id), index, index=True)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._refs

    def __len__(self) -> int:
        return len(self._refs)

    def get(self, digest: bytes) -> ChunkRef | None:
        return self._refs.get(digest)

    def add_pack(self, pack_id: str, slots: Iterable[_Slot]) -> None:
        for s in slots:
            self._refs.setdefault(s.digest, ChunkRef(s.digest, pack_id, s.offset, s.stored_size, s.raw_size, s.codec))

    @classmethod
    def load(cls, store: ObjectStore, cache: CacheArg = AUTO) -> ChunkIndex:
        """Read every ``index/`` object (one listing, one read each).

        An index is immutable and named by its own BLAKE3 (the pack id), so it can live in
        the local chunk cache like a chunk, checked on every read: with a cache (``cache``,
        by default the one ``CASREG_CACHE`` picks, i.e. for remote registries only,
        docs/cache.md) a push reads only the indexes it has not seen before, instead of
        one per pack in the registry. Only indexes the listing shows are used, so a pack
        gc removed is forgotten even while its index is still cached. Reads that do go to
        the store run ``io_concurrency`` at a time."""
        chosen = resolve_cache(store, cache)
        wanted: list[tuple[str, str]] = []
        for key in store.list(INDEXES):
            pack_id = parse_index_key(key)
            if pack_id is not None:
                wanted.append((key, pack_id))
        found: dict[str, bytes | None] = {}
        if chosen is not None:
            for _, pack_id in wanted:
                found[pack_id] = chosen.get(bytes.fromhex(pack_id), index=True)
        missing = [(key, pack_id) for key, pack_id in wanted if found.get(pack_id) is None]

        def fetch(item: tuple[str, str]) -> bytes | None:
            key, pack_id = item
            try:
                data = store.read(key)
            except NotFoundError:
                return None  # removed since the listing (gc of an unreferenced pack)
            if blake3(data).hexdigest() != pack_id:
                return None  # damaged: trusting it would make new versions point at wrong bytes
            if chosen is not None:
                chosen.put_verified(bytes.fromhex(pack_id), data, index=True)
            return data

        if store.io_concurrency > 1 and len(missing) > 1:
            with ThreadPoolExecutor(min(store.io_concurrency, len(missing)), thread_name_prefix="casreg-index") as pool:
                fetched = list(pool.map(fetch, missing))
        else:
            fetched = [fetch(item) for item in missing]
        found.update((pack_id, data) for (_, pack_id), data in zip(missing, fetched))
        index = cls()
        index.cache = chosen
        for key, pack_id in wanted:  # listing order, as before: the first pack holding a chunk wins
            data = found.get(pack_id)
            if data is None:
                continue
            try:
                index.add_pack(pack_id, decode_index(data, key))
            except IntegrityError:
                continue  # a bad index only costs dedup; verify reports it
        return index

    def __iter__(self) -> Iterator[ChunkRef]:
        return iter(self._refs.values())
