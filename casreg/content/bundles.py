"""Index bundles: many pack indexes in one object, so a push into a large registry reads one.

Every push reads every pack index it has not cached (:meth:`casreg.content.packs.ChunkIndex.load`).
A registry of 8 million 1 MiB chunks has about 180,000 packs: from a local directory that was
about 60% of a 6.3 s load (each read walks to its file without following links), and from S3
on a machine without the indexes cached, 180,000 GETs. ``casreg compact`` writes a bundle of
the indexes listed at the time (:func:`write_bundle`); a load then reads the ones the bundle
holds in a few large ranges of it (:func:`read_bundled`), and only newer ones one by one.

A bundle is trusted no more than the index objects it copies (docs/FORMAT.md §4.3):

- its name is the BLAKE3 of its directory and tail, so a directory read back is the one
  written, or the bundle is not used;
- every index taken from it must hash to its pack id, as an index object must, or that pack's
  index is read on its own;
- it is used only for the packs whose index the load's listing shows: a pack gc removed
  since is not looked for in it.

A damaged, truncated, missing or hostile bundle therefore costs reads, never a wrong answer.

Layout: the indexes back to back in the directory's order; the directory, ``count`` entries
of ``<32-byte pack id><u64 index size>`` with pack ids strictly ascending; the tail
``<u64 count><"CASRBDL\\x01">``.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from blake3 import blake3

from casreg.errors import CasregError, NotFoundError
from casreg.keys import BUNDLES, INDEXES, bundle_key, parse_bundle_key, parse_index_key
from casreg.storage import ByteRange, ObjectStore

__all__ = ["BUNDLE_MAGIC", "Bundle", "BundleResult", "open_best_bundle", "read_bundled", "write_bundle",
           "USE_AT_LEAST", "SPAN_BYTES"]

_S = TypeVar("_S")
_R = TypeVar("_R")

BUNDLE_MAGIC = b"CASRBDL\x01"
_DIR = struct.Struct("<32sQ")  # pack id, index size
_TAIL = struct.Struct("<Q8s")  # count, BUNDLE_MAGIC
#: A load reads a bundle only when it would otherwise read at least this many indexes one by one.
USE_AT_LEAST = 64
#: Bytes of a bundle read at once (bounds what a load holds besides the entries it keeps).
SPAN_BYTES = 8 << 20
#: The most bundles a load opens to choose one (``casreg compact`` leaves one, two meanwhile).
_MAX_OPENED = 8
#: The smallest index object: an empty one is its 16-byte tail (docs/FORMAT.md §4).
_MIN_INDEX = 16


@dataclass(frozen=True, slots=True)
class Bundle:
    """An opened bundle: its key and where each pack's index lies in it."""

    key: str
    places: dict[bytes, tuple[int, int]]  # pack id (raw) -> (offset, size)

    def __contains__(self, pack_id: str) -> bool:
        return bytes.fromhex(pack_id) in self.places


def _open(store: ObjectStore, key: str, bundle_id: str, max_packs: int, max_index: int) -> Bundle | None:
    """The bundle at ``key`` if its tail and directory are what its name says and lay out
    the object exactly; ``None`` otherwise (gone, damaged, or holding more than
    ``max_packs`` indexes or one of more than ``max_index`` bytes)."""
    try:
        size = store.size(key)
        if size < _TAIL.size:
            return None
        tail = store.read(key, ByteRange(size - _TAIL.size, size))
        count, magic = _TAIL.unpack(tail) if len(tail) == _TAIL.size else (0, b"")
        if magic != BUNDLE_MAGIC or count > max_packs or count * _DIR.size + _TAIL.size > size:
            return None
        start = size - _TAIL.size - count * _DIR.size
        directory = store.read(key, ByteRange(start, size - _TAIL.size))
    except CasregError:
        return None  # removed since the listing, or not a regular file: read the indexes one by one
    if len(directory) != count * _DIR.size or blake3(directory + tail).hexdigest() != bundle_id:
        return None
    places: dict[bytes, tuple[int, int]] = {}
    offset, previous = 0, b""
    for pack, length in _DIR.iter_unpack(directory):
        if pack <= previous or not _MIN_INDEX <= length <= max_index:
            return None
        places[pack] = (offset, length)
        offset, previous = offset + length, pack
    return Bundle(key, places) if offset == start else None


def open_best_bundle(store: ObjectStore, wanted: Sequence[str], max_index: int) -> Bundle | None:
    """Of the bundles listed, the one holding the most of the pack ids ``wanted`` (hex),
    ``None`` if none holds any. A bundle of more than twice as many packs as ``wanted``
    (plus 1,024) is not opened: it is mostly packs removed since, or not a bundle
    casreg wrote, and reading its directory would cost more than it saves."""
    try:
        keys = sorted(k for k in store.list(BUNDLES) if parse_bundle_key(k) is not None)[:_MAX_OPENED]
    except CasregError:
        return None  # a link planted at bundles/, say: the indexes are read one by one, verify reports damage
    best, best_count = None, 0
    wanted_raw = [bytes.fromhex(p) for p in wanted]
    for key in keys:
        bundle = _open(store, key, str(parse_bundle_key(key)), 2 * len(wanted) + 1024, max_index)
        if bundle is None:
            continue
        count = sum(1 for p in wanted_raw if p in bundle.places)
        if count > best_count:
            best, best_count = bundle, count
    return best


def _spans(bundle: Bundle, packs: Sequence[str]) -> list[tuple[int, int, list[tuple[str, int, int]]]]:
    """``packs`` (all in ``bundle``, in order) grouped into ranges of the bundle to read:
    consecutive packs whose indexes follow one another closely, up to :data:`SPAN_BYTES`."""
    spans: list[tuple[int, int, list[tuple[str, int, int]]]] = []
    for pack in packs:
        offset, size = bundle.places[bytes.fromhex(pack)]
        if spans:
            start, end, members = spans[-1]
            if end <= offset <= end + (64 << 10) and offset + size - start <= SPAN_BYTES:
                members.append((pack, offset, size))
                spans[-1] = (start, offset + size, members)
                continue
        spans.append((offset, offset + size, [(pack, offset, size)]))
    return spans


def read_bundled(store: ObjectStore, bundle: Bundle, packs: Sequence[str],
                 pool: ThreadPoolExecutor | None = None) -> Iterator[bytes | None]:
    """The index of each of ``packs`` (hex ids the bundle holds), in that order, read from
    the bundle a span at a time (``pool``: spans read ahead on it, in order); ``None`` for
    one that does not hash to its pack id or could not be read (the bundle removed
    meanwhile, say): the caller reads that index on its own."""

    def read(span: tuple[int, int, list[tuple[str, int, int]]]) -> bytes | None:
        try:
            data = store.read(bundle.key, ByteRange(span[0], span[1]))
        except CasregError:
            return None
        return data if len(data) == span[1] - span[0] else None

    spans = _spans(bundle, packs)
    datas = _ahead(pool, read, spans, store.io_concurrency) if pool is not None else map(read, spans)
    for (start, _end, members), data in zip(spans, datas, strict=True):
        view = memoryview(data) if data is not None else None
        for pack, offset, size in members:
            if view is None:
                yield None
                continue
            index = bytes(view[offset - start:offset - start + size])
            yield index if blake3(index).hexdigest() == pack else None


def _ahead(pool: ThreadPoolExecutor, fn: Callable[[_S], _R], items: Sequence[_S], ahead: int) -> Iterator[_R]:
    """``map(fn, items)`` with at most ``ahead`` calls on ``pool`` ahead of the consumer
    (``Executor.map`` would start them all, holding every result not yet taken)."""
    ahead = max(1, ahead)
    futures: deque[Future[_R]] = deque()
    it = iter(items)
    for item in itertools.islice(it, ahead):
        futures.append(pool.submit(fn, item))
    while futures:
        result = futures.popleft().result()
        for item in itertools.islice(it, 1):
            futures.append(pool.submit(fn, item))
        yield result


@dataclass(frozen=True, slots=True)
class BundleResult:
    """What :func:`write_bundle` did: the bundle written (``None``: not needed), how many
    indexes it holds and its size, and the older bundles it removed."""

    key: str | None
    packs: int = 0
    size: int = 0
    removed: list[str] = field(default_factory=list)
    unbundled: int = 0  # indexes listed that the newest bundle before this did not hold


def write_bundle(store: ObjectStore, *, max_index: int, at_least: int = 1000,
                 read_index: Callable[[str, str], bytes | None] | None = None) -> BundleResult:
    """Bundle every pack index listed (each read whole and checked to hash to its pack id;
    one that does not is left out) into one object, when at least ``at_least`` of them are
    not in the bundle a load would choose now; then remove the other bundles. Safe while
    others push, gc or load: a bundle is only a copy, and a load that finds one gone reads
    the indexes one by one. ``read_index(key, pack id)``: how an index is read (default: a
    bounded read of the store)."""
    listed = sorted((pid, key) for key in store.list(INDEXES) if (pid := parse_index_key(key)) is not None)
    older = sorted(k for k in store.list(BUNDLES) if parse_bundle_key(k) is not None)
    current = open_best_bundle(store, [pid for pid, _ in listed], max_index) if older else None
    unbundled = sum(1 for pid, _ in listed if current is None or pid not in current)
    if unbundled < max(at_least, 1):
        return BundleResult(None, unbundled=unbundled)

    def default_read(key: str, pack_id: str) -> bytes | None:
        try:
            data = store.read(key, ByteRange(0, max_index + 1))
        except NotFoundError:
            return None
        return data if len(data) <= max_index and blake3(data).hexdigest() == pack_id else None

    reader = read_index or default_read
    pool = ThreadPoolExecutor(store.io_concurrency, thread_name_prefix="casreg-bundle") \
        if store.io_concurrency > 1 else None
    directory = bytearray()
    size = 0
    try:
        datas = pool.map(lambda item: reader(item[1], item[0]), listed) if pool is not None \
            else (reader(key, pid) for pid, key in listed)
        with store.open_writer(BUNDLES) as writer:
            for (pid, _key), data in zip(listed, datas, strict=True):
                if data is None or len(data) < _MIN_INDEX:
                    continue  # gone since the listing, or damaged: loads read it on its own (verify reports it)
                writer.write(data)
                directory += _DIR.pack(bytes.fromhex(pid), len(data))
                size += len(data)
            count = len(directory) // _DIR.size
            tail = _TAIL.pack(count, BUNDLE_MAGIC)
            writer.write(bytes(directory))
            writer.write(tail)
            size += len(directory) + len(tail)
            key = bundle_key(blake3(bytes(directory) + tail).hexdigest())
            writer.publish(key, size=size)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    removed = [old for old in older if old != key]
    for old in removed:
        store.delete(old)
    return BundleResult(key, count, size, removed, unbundled)
