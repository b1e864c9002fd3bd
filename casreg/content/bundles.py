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
import logging
import os
import struct
import tempfile
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from blake3 import blake3

from casreg.content.cache import CachedBundle, ChunkCache
from casreg.content.listing import list_indexes
from casreg.env import count_from_env
from casreg.errors import CasregError
from casreg.keys import BUNDLES, bundle_key, parse_bundle_key, parse_index_key
from casreg.storage import ByteRange, ObjectStore
from casreg.storage.fileio import write_all

__all__ = ["BUNDLE_MAGIC", "Bundle", "BundleResult", "open_best_bundle", "read_bundled", "write_bundle", "check_bundle",
           "list_bundles", "most_packs", "USE_AT_LEAST", "SPAN_BYTES", "cache_bundle", "private_copy",
           "DEFAULT_BUNDLE_AT", "BUNDLE_AT_ENV", "bundle_at_from_env"]

log = logging.getLogger(__name__)

_S = TypeVar("_S")
_R = TypeVar("_R")

BUNDLE_MAGIC = b"CASRBDL\x01"
_DIR = struct.Struct("<32sQ")  # pack id, index size
_TAIL = struct.Struct("<Q8s")  # count, BUNDLE_MAGIC
#: A new bundle is written (by ``casreg compact``, or after a push that read this many
#: indexes one by one) when at least this many listed indexes are in none.
DEFAULT_BUNDLE_AT = 1000
BUNDLE_AT_ENV = "CASREG_BUNDLE_AT"
#: A load reads a bundle only when it would otherwise read at least this many indexes one by one.
USE_AT_LEAST = 64
#: Bytes of a bundle read at once (bounds what a load holds besides the entries it keeps).
SPAN_BYTES = 8 << 20
#: Bytes of a bundle one read of :func:`private_copy` takes: with eight reads ahead (S3),
#: 16 MiB in flight rather than 64 (docs/benchmarks.md, "A push to S3").
_COPY_PART = 2 << 20
#: A bundle is copied (:func:`private_copy`) only if at most twice the bytes the load reads
#: from it, plus this: an honest one holds little a load does not want (indexes of packs
#: gc removed since), and a store may hold anything.
_COPY_SLACK = 64 << 20
#: ... and only if this much stays free in the temporary directory after the copy.
_COPY_FREE = 512 << 20
#: The most bundles a load opens to choose one, the newest (``casreg compact`` leaves one).
_MAX_OPENED = 8
#: The smallest index object: an empty one is its 16-byte tail (docs/FORMAT.md §4).
_MIN_INDEX = 16


_Read = Callable[[int, int], "bytes | None"]  # bytes [start, end) of a bundle, None if they cannot all be read


@dataclass(frozen=True, slots=True)
class Bundle:
    """An opened bundle: its key, its pack ids and where each one's index lies in it, and
    how to read it (from the store, or from a copy on this machine's disk when ``cached``:
    the local cache's, or a load's private one, :func:`private_copy`)."""

    key: str
    ids: bytes  # the directory's pack ids, 32 bytes each, ascending
    offsets: array[int]  # where each index starts in the object, then where the directory starts
    read: _Read
    size: int
    cached: bool = False
    close: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def bundle_id(self) -> str:
        return str(parse_bundle_key(self.key))

    def positions(self, packs: Sequence[str]) -> list[int]:
        """Where each of ``packs`` (hex pack ids, ascending) is in the bundle, ``-1`` where
        it is not: one walk along both."""
        found, i, n = [], 0, len(self)
        for pack in packs:
            raw = bytes.fromhex(pack)
            while i < n and self.ids[32 * i:32 * i + 32] < raw:
                i += 1
            found.append(i if i < n and self.ids[32 * i:32 * i + 32] == raw else -1)
        return found


def _store_read(store: ObjectStore, key: str) -> _Read:
    def read(start: int, end: int) -> bytes | None:
        try:
            data = store.read(key, ByteRange(start, end))
        except CasregError:
            return None  # removed since the listing, or not a regular file: read the indexes one by one
        return data if len(data) == end - start else None
    return read


def _open(key: str, read: _Read, size: int, max_packs: int, max_index: int, *, cached: bool = False,
          close: Callable[[], None] = lambda: None) -> Bundle | None:
    """The bundle at ``key`` (``size`` bytes, read through ``read``) if its tail and
    directory are what its name says and lay out the object exactly; ``None`` otherwise
    (gone, damaged, or holding more than ``max_packs`` indexes or one of more than
    ``max_index`` bytes)."""
    bundle_id = parse_bundle_key(key)
    if bundle_id is None or size < _TAIL.size:
        return None
    tail = read(size - _TAIL.size, size)
    count, magic = _TAIL.unpack(tail) if tail is not None else (0, b"")
    if magic != BUNDLE_MAGIC or count > max_packs or count * _DIR.size + _TAIL.size > size:
        return None
    assert tail is not None
    start = size - _TAIL.size - count * _DIR.size
    directory = read(start, size - _TAIL.size)
    if directory is None or blake3(directory + tail).hexdigest() != bundle_id:
        return None
    ids = bytearray()
    offsets = array("Q", [0])
    previous = b""
    for pack, length in _DIR.iter_unpack(directory):
        if pack <= previous or not _MIN_INDEX <= length <= max_index:
            return None
        ids += pack
        offsets.append(offsets[-1] + length)
        previous = pack
    if offsets[-1] != start:
        return None
    return Bundle(key, bytes(ids), offsets, read, size, cached, close)


def _open_stored(store: ObjectStore, key: str, max_packs: int, max_index: int) -> Bundle | None:
    try:
        size = store.size(key)
    except CasregError:
        return None
    return _open(key, _store_read(store, key), size, max_packs, max_index)


def _open_cached(cache: ChunkCache, key: str, max_packs: int, max_index: int) -> Bundle | None:
    """The cached copy of the bundle at ``key``, if there is one and it is what its name
    says (a damaged copy is dropped)."""
    handle = cache.open_bundle(str(parse_bundle_key(key)))
    if handle is None:
        return None
    bundle = _open(key, handle.read, handle.size, max_packs, max_index, cached=True, close=handle.close)
    if bundle is None:
        handle.close()
        cache.drop_bundle(str(parse_bundle_key(key)))
    return bundle


def _parts(bundle: Bundle, pool: ThreadPoolExecutor | None = None, ahead: int = 1,
           part: int = SPAN_BYTES) -> Iterator[bytes | None]:
    """The bytes of ``bundle``, ``part`` bytes at a time, in order (``None`` for a part that
    could not be read); with ``pool``, up to ``ahead`` parts read ahead on it."""
    ranges = [(start, min(start + part, bundle.size)) for start in range(0, bundle.size, part)]
    if pool is not None:
        return _ahead(pool, lambda r: bundle.read(*r), ranges, ahead)
    return (bundle.read(*r) for r in ranges)


def cache_bundle(bundle: Bundle, cache: ChunkCache, max_index: int) -> Bundle | None:
    """Copy ``bundle`` (read from the store) whole into ``cache``, :data:`SPAN_BYTES` at a
    time, and open the copy; ``None`` if it could not be stored (see
    :meth:`~casreg.content.cache.ChunkCache.put_bundle`) or does not open as the bundle
    (its name fixes its directory, so a good copy holds exactly ``len(bundle)`` indexes)."""
    if not cache.put_bundle(bundle.bundle_id, _parts(bundle), bundle.size):
        return None
    return _open_cached(cache, bundle.key, len(bundle), max_index)


def private_copy(bundle: Bundle, max_index: int, useful: int, pool: ThreadPoolExecutor | None = None,
                 ahead: int = 1) -> Bundle | None:
    """Copy ``bundle`` (read from the store; with ``pool``, up to ``ahead`` parts at a time)
    whole into a temporary file of this process's own, unlinked as soon as it is created
    (so nothing is left behind, even by a crash), and open the copy. Where there is no
    cache, a table reads entries back from it instead of keeping them
    (:meth:`casreg.content.packs.ChunkIndex.load`). The file is in Python's temporary
    directory (``$TMPDIR``) and closed by the copy's ``close``. ``None`` if it could not be
    written (no space, say) or does not open as the bundle; then nothing is left open.
    Every index a reader takes from the copy is still checked against its pack id.

    Not copied (``None``), since a store may hold anything: a bundle more than twice the
    ``useful`` bytes the load will read from it (plus :data:`_COPY_SLACK`), or one that
    would leave less than :data:`_COPY_FREE` free in the temporary directory."""
    if bundle.size > 2 * useful + _COPY_SLACK:
        log.debug("casreg: no private copy of %s: %d bytes, %d of them wanted", bundle.key, bundle.size, useful)
        return None
    try:
        fs = os.statvfs(tempfile.gettempdir())
        if fs.f_bavail * fs.f_frsize < bundle.size + _COPY_FREE:
            log.debug("casreg: no private copy of %s: too little free space", bundle.key)
            return None
        fd, path = tempfile.mkstemp(prefix="casreg-bundle-")
    except OSError as err:
        log.debug("casreg: no private copy of %s: %s", bundle.key, err)
        return None
    handle = CachedBundle(fd, bundle.size)
    try:
        os.unlink(path)
        written = 0
        for part in _parts(bundle, pool, ahead, _COPY_PART):
            if part is None:
                break
            write_all(fd, [part])
            written += len(part)
    except OSError as err:
        log.debug("casreg: no private copy of %s: %s", bundle.key, err)
        written = -1
    except BaseException:
        handle.close()
        raise
    copy = _open(bundle.key, handle.read, bundle.size, len(bundle), max_index, cached=True, close=handle.close) \
        if written == bundle.size else None
    if copy is None:
        handle.close()
    return copy


def check_bundle(store: ObjectStore, key: str, max_index: int, max_packs: int) -> str | None:
    """What is wrong with the bundle at ``key`` (for ``casreg verify``), ``None`` if its
    tail and directory are what its name says and lay the object out exactly, and every
    index in it hashes to its pack id; also ``None`` if it is gone (compact at work).
    A bundle of more than ``max_packs`` indexes is reported unread."""
    if parse_bundle_key(key) is None:
        return "not an index bundle's key"
    bundle = _open_stored(store, key, max_packs, max_index)
    if bundle is None:
        if not store.exists(key):
            return None
        return (f"its tail and directory are not what its name says, do not lay the object out, or list more than "
                f"{max_packs:,} indexes")
    for p, index in enumerate(read_bundled(bundle, range(len(bundle)))):
        if index is None:
            if not store.exists(key):
                return None
            return f"the index of pack {bundle.ids[32 * p:32 * p + 32].hex()} in it does not hash to that pack id"
    return None


def most_packs(indexes: int) -> int:
    """The most indexes a bundle is opened with, when ``indexes`` are listed: a bundle of
    more is mostly packs removed since, or not one casreg wrote, and reading its directory
    would cost more than it saves."""
    return 2 * indexes + 1024


def list_bundles(store: ObjectStore) -> list[str]:
    """The keys of the index bundles listed, sorted (anything else under ``bundles/`` left out)."""
    return sorted(k for k in store.list(BUNDLES) if parse_bundle_key(k) is not None)


def open_best_bundle(store: ObjectStore, wanted: Sequence[str], max_index: int,
                     cache: ChunkCache | None = None,
                     listed: list[str] | None = None) -> tuple[Bundle, list[int]] | None:
    """Of the bundles listed (``listed``, if the caller has just listed them:
    :func:`list_bundles`), the one holding the most of the pack ids ``wanted`` (hex,
    ascending), with where each is in it (:meth:`Bundle.positions`); ``None`` if none
    holds any. With a ``cache``, a bundle's cached copy is read instead of the store's.
    A bundle of more than :func:`most_packs` indexes is not opened. The caller closes the
    bundle returned."""
    try:
        keys = _newest(store, listed if listed is not None else list_bundles(store))
    except CasregError:
        return None  # a link planted at bundles/, say: the indexes are read one by one, verify reports damage
    best: tuple[Bundle, list[int]] | None = None
    best_count = 0
    max_packs = most_packs(len(wanted))
    for key in keys:
        bundle = (_open_cached(cache, key, max_packs, max_index) if cache is not None else None) \
            or _open_stored(store, key, max_packs, max_index)
        if bundle is None:
            continue
        where = bundle.positions(wanted)
        count = sum(1 for p in where if p >= 0)
        if count > best_count:
            if best is not None:
                best[0].close()
            best, best_count = (bundle, where), count
        else:
            bundle.close()
    return best


def _newest(store: ObjectStore, keys: list[str]) -> list[str]:
    """``keys``, or the :data:`_MAX_OPENED` newest of them if there are more (a pusher
    that may not delete leaves the bundles it replaced to gc and ``casreg compact``)."""
    if len(keys) <= _MAX_OPENED:
        return keys
    times = {}
    for key in keys:
        info = store.stat(key)
        if info is not None:
            times[key] = info.modified.timestamp() if info.modified is not None else 0.0
    return sorted(times, key=lambda k: (-times[k], k))[:_MAX_OPENED]


_Span = tuple[int, int, list[int]]  # start, end, the positions of the indexes it holds


def _spans(bundle: Bundle, positions: Sequence[int]) -> list[_Span]:
    """``positions`` (ascending) grouped into ranges of the bundle to read: consecutive
    indexes with at most 64 KiB between them, up to :data:`SPAN_BYTES` a range."""
    spans: list[_Span] = []
    offsets = bundle.offsets
    for p in positions:
        begin, end = offsets[p], offsets[p + 1]
        if spans:
            first, last, members = spans[-1]
            if last <= begin <= last + (64 << 10) and end - first <= SPAN_BYTES:
                members.append(p)
                spans[-1] = (first, end, members)
                continue
        spans.append((begin, end, [p]))
    return spans


def read_bundled(bundle: Bundle, positions: Sequence[int], pool: ThreadPoolExecutor | None = None,
                 ahead: int = 1) -> Iterator[bytes | None]:
    """The index at each of ``positions`` (ascending) of the bundle, in that order, read a
    span at a time (``pool``: up to ``ahead`` spans read ahead on it, in order); ``None``
    for one that does not hash to its pack id or could not be read (the bundle removed
    meanwhile, say): the caller reads that index on its own."""

    def read(span: _Span) -> bytes | None:
        return bundle.read(span[0], span[1])

    spans = _spans(bundle, positions)
    datas = _ahead(pool, read, spans, ahead) if pool is not None and not bundle.cached else map(read, spans)
    for (start, _end, members), data in zip(spans, datas, strict=True):
        view = memoryview(data) if data is not None else None
        for p in members:
            if view is None:
                yield None
                continue
            index = bytes(view[bundle.offsets[p] - start:bundle.offsets[p + 1] - start])
            yield index if blake3(index).digest() == bundle.ids[32 * p:32 * p + 32] else None


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

    def to_dict(self) -> dict[str, object]:
        """The JSON form ``casreg compact --json`` prints under ``index_bundle``."""
        return {"key": self.key, "indexes": self.packs, "bytes": self.size, "removed": list(self.removed),
                "unbundled_before": self.unbundled}


def write_bundle(store: ObjectStore, *, max_index: int, at_least: int = 1000,
                 read_index: Callable[[str, str], bytes | None] | None = None,
                 cache: ChunkCache | None = None) -> BundleResult:
    """Bundle every pack index listed into one object, when at least ``at_least`` of them
    are not in the bundle a load would choose now; then remove the other bundles. The
    indexes that bundle holds are copied from it, the others read one by one (each
    checked to hash to its pack id either way; one that does not, or is gone, is left out).
    Safe while others push, gc or load: a bundle is only a copy, and a load that finds
    one gone reads the indexes one by one. ``read_index(key, pack id)``: how an index is
    read on its own (default: from ``cache`` if it holds it, checked there, else a
    bounded read of the store; a push that read the indexes one by one has just cached
    them, and writing its bundle then reads none of them again)."""
    listed = sorted((pid, key) for key in list_indexes(store) if (pid := parse_index_key(key)) is not None)
    older = list_bundles(store)
    chosen = open_best_bundle(store, [pid for pid, _ in listed], max_index, listed=older) if older else None
    where = chosen[1] if chosen is not None else [-1] * len(listed)
    unbundled = sum(1 for p in where if p < 0)
    if unbundled < max(at_least, 1):
        return BundleResult(None, unbundled=unbundled)

    def default_read(key: str, pack_id: str) -> bytes | None:
        if cache is not None and (data := cache.get(bytes.fromhex(pack_id), index=True)) is not None:
            return data
        try:
            data = store.read(key, ByteRange(0, max_index + 1))
        except CasregError:
            return None  # gone since the listing, or not a regular file: left out (verify names it)
        return data if len(data) <= max_index and blake3(data).hexdigest() == pack_id else None

    reader = read_index or default_read
    singles = [(pid, key) for (pid, key), p in zip(listed, where, strict=True) if p < 0]
    pool = ThreadPoolExecutor(store.io_concurrency, thread_name_prefix="casreg-bundle") \
        if store.io_concurrency > 1 else None
    directory = bytearray()
    size = 0
    try:
        read_alone = _ahead(pool, lambda item: reader(item[1], item[0]), singles, store.io_concurrency) \
            if pool is not None else (reader(key, pid) for pid, key in singles)
        copied: Iterator[bytes | None] = iter(()) if chosen is None else \
            read_bundled(chosen[0], [p for p in where if p >= 0], pool, store.io_concurrency)
        with store.open_writer(BUNDLES) as writer:
            for (pid, listed_key), p in zip(listed, where, strict=True):
                data = next(read_alone) if p < 0 else (next(copied) or reader(listed_key, pid))
                if data is None or len(data) < _MIN_INDEX:
                    continue  # gone since the listing, or damaged: loads read it on its own (verify reports it)
                writer.write(data)
                directory += _DIR.pack(bytes.fromhex(pid), len(data))
                size += len(data)
            count = len(directory) // _DIR.size
            if count == 0:
                return BundleResult(None, unbundled=unbundled)  # not one index could be read
            tail = _TAIL.pack(count, BUNDLE_MAGIC)
            writer.write(bytes(directory))
            writer.write(tail)
            size += len(directory) + len(tail)
            key = bundle_key(blake3(bytes(directory) + tail).hexdigest())
            writer.publish(key, size=size)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if chosen is not None:
            chosen[0].close()
    removed = []
    for old in older:
        if old == key:
            continue
        try:  # best effort: a pusher may not be allowed to delete (docs/security.md); gc removes them
            store.delete(old)
        except CasregError as err:
            log.info("casreg: could not remove the older index bundle %s (%s)", old, err)
            continue
        removed.append(old)
    return BundleResult(key, count, size, removed, unbundled)


def bundle_at_from_env(default: int = DEFAULT_BUNDLE_AT) -> int:
    """``$CASREG_BUNDLE_AT`` (0: never bundle after a push), else ``default``."""
    return count_from_env(BUNDLE_AT_ENV, default, "automatic bundling")
