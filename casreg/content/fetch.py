"""Fetching chunks from packs, each decoded and checked against its BLAKE3.

Every byte a pull, a ``casreg://`` read or a lazy tensor read hands over comes through
:func:`read_span_stats`: one ranged read per run of chunks stored back to back in a
pack (:func:`spans` groups them), each chunk decoded with its codec and hashed before it
is returned, and, where a local chunk cache is in use (docs/cache.md), served from or
stored into it verified. Nothing here writes to the registry or to a destination.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from casreg.content.cache import AUTO, CacheArg, ChunkCache, resolve_cache
from casreg.content.codec import Codec, decode_into, decode_verified, decode_verified_into
from casreg.content.delta import BaseSource, decode_delta, decode_delta_into, decode_inner_into
from casreg.content.manifest import ChunkRef
from casreg.errors import IntegrityError, NotFoundError
from casreg.keys import pack_key
from casreg.storage import ByteRange, ObjectStore

__all__ = ["SPAN_BYTES", "SpanRead", "Bases", "DecodedBases", "concurrent_bases_bytes", "read_chunk", "read_span",
           "read_span_stats", "spans"]

#: Where a version's delta bases are stored (:attr:`casreg.content.manifest.Manifest.base_map`).
Bases = Mapping[bytes, ChunkRef]

SPAN_BYTES = 4 << 20  # stored bytes fetched by one ranged read at most
#: Raw (decoded) bytes of one run at most (unless its one chunk is larger): a run of tiny
#: stored chunks that each decode to the maximum chunk size (zeros compress ~30,000:1)
#: must not decode gigabytes at once.
SPAN_RAW_BYTES = 8 << 20


#: Decoded bytes of base chunks one :class:`DecodedBases` keeps, at most (and at least one
#: chunk): four 4 MiB chunks, sixteen of the 1 MiB average; a pull or push of any size
#: holds at most this beside its buffers.
BASES_BYTES = 16 << 20


def concurrent_bases_bytes(store: ObjectStore) -> int:
    """What a :class:`DecodedBases` keeps for a reader whose ranged reads of ``store`` run
    ``io_concurrency`` at once, in any order (a pull, a lazy read): the bases of that many
    runs, at least :data:`BASES_BYTES`. With less, a base one run read is evicted before
    the run beside it needs it, and read again: a pull of a delta-coded 512 MB version,
    eight reads at a time, read 6-12% more than its chunks and their bases."""
    return max(BASES_BYTES, store.io_concurrency * SPAN_RAW_BYTES)


class DecodedBases:
    """Base chunks of delta chunks, read (through a chunk cache), decoded and verified once
    and kept for the reads that follow: one per pull or push, shared by its threads. The
    deltas of a run, of neighbouring runs and a push's new and known deltas mostly name
    the same few parent chunks, and each was decoded again per run before (profiled: a
    third of a pull's decoding of a delta-coded version was its bases').

    Bounded: the most recently used bases up to :data:`BASES_BYTES` decoded bytes (and at
    least the last one). Thread-safe; a base two threads want at once is read by one of
    them while the other waits. Every byte handed out was verified against its digest
    when it was read (:func:`read_span_stats`); a failed read raises to the thread that
    asked and is not kept."""

    def __init__(self, store: ObjectStore, limit: int = BASES_BYTES) -> None:
        self.store, self.limit = store, limit
        self.lock = threading.Lock()
        self.kept: OrderedDict[bytes, bytes] = OrderedDict()
        self.size = 0
        self.loading: dict[bytes, threading.Event] = {}
        self.reads = 0  # bases read from the store or cache (each read once while kept)

    def get(self, ref: ChunkRef, cache: CacheArg = AUTO) -> bytes:
        """The verified raw bytes of the plain (non-delta) chunk ``ref``."""
        digest = ref.digest
        while True:
            with self.lock:
                raw = self.kept.get(digest)
                if raw is not None:
                    self.kept.move_to_end(digest)
                    return raw
                wait = self.loading.get(digest)
                if wait is None:
                    self.loading[digest] = threading.Event()
                    break
            wait.wait()  # another thread reads it; if that failed (or it was evicted), try ourselves
        try:
            raw = read_span_stats(self.store, [ref], cache).chunks[0]
            with self.lock:
                self.reads += 1
                self.kept[digest] = raw
                self.size += len(raw)
                while self.size > self.limit and len(self.kept) > 1:
                    self.size -= len(self.kept.popitem(last=False)[1])
        finally:
            with self.lock:
                self.loading.pop(digest).set()
        return raw


def _base_source(store: ObjectStore, bases: Bases | None, cache: ChunkCache | None,
                 shared: DecodedBases | None = None) -> BaseSource:
    """Each base a delta names, read (through ``cache``) and verified where the version's
    manifest records it; :class:`IntegrityError` for one it does not record. Bases come
    from ``shared`` when given (kept across reads); otherwise the last two bases read are
    kept: neighbouring deltas of a run share the parent chunk between them."""
    kept: dict[bytes, bytes] = {}

    def source(digest: bytes) -> tuple[bytes | memoryview, bool]:
        ref = bases.get(digest) if bases is not None else None
        if ref is None:
            raise IntegrityError(f"its base blake3:{digest.hex()} is not recorded in the version's manifest")
        if ref.codec == Codec.DELTA:
            return b"", True  # refused by the decoder: chains are bounded to one level
        if shared is not None:
            return shared.get(ref, cache), False
        raw = kept.get(digest)
        if raw is None:
            raw = read_span_stats(store, [ref], cache).chunks[0]
            if len(kept) >= 2:
                del kept[next(iter(kept))]
            kept[digest] = raw
        return raw, False
    return source


def _check_chunk(ref: ChunkRef, stored: bytes | memoryview, key: str, out: memoryview | None = None,
                 bases: BaseSource | None = None, verify: bool = True) -> bytes | memoryview:
    """The chunk's verified bytes: its own ``bytes``, or ``out`` (its raw size) filled.
    A delta chunk is decoded with ``bases``. ``verify=False`` (only with ``out``): decoded
    into ``out`` but not hashed (:func:`read_span_stats`)."""
    where = f"chunk blake3:{ref.digest.hex()} in {key} at offset {ref.offset}"
    if len(stored) != ref.stored_size:
        raise IntegrityError(f"{where} is truncated ({len(stored)} of {ref.stored_size} bytes)")
    try:
        if ref.codec == Codec.DELTA:
            if bases is None:
                raise IntegrityError("a delta chunk cannot be decoded without its bases")
            if out is not None:
                decode_delta_into(stored, out, ref.digest, bases, decode_inner_into, verify=verify)
                return out
            return bytes(decode_delta(stored, ref.raw_size, ref.digest, bases))
        if out is not None:
            if verify:
                decode_verified_into(ref.codec, stored, out, ref.digest)
            else:
                decode_into(ref.codec, stored, out)
            return out
        raw = decode_verified(ref.codec, stored, ref.raw_size, ref.digest)
    except IntegrityError as err:
        raise IntegrityError(f"{where} is corrupt: {err}") from None
    return raw if isinstance(raw, bytes) else bytes(raw)


@dataclass(slots=True)
class SpanRead:
    """What one :func:`read_span` call returned and what it cost."""

    chunks: list[bytes]  # empty when they were decoded into the caller's buffer
    fetched_bytes: int = 0  # stored bytes read from the registry
    requests: int = 0  # ranged reads asked of the registry
    cached_bytes: int = 0  # raw bytes served by the local cache


def _fetch(store: ObjectStore, key: str, runs: list[list[ChunkRef]]) -> list[bytes]:
    """One ranged read per run (several runs of one pack in one ``read_ranges`` call, which
    S3 coalesces and issues concurrently)."""
    ranges = [ByteRange(run[0].offset, run[-1].offset + run[-1].stored_size) for run in runs]
    try:
        if len(ranges) == 1:
            blobs = [store.read(key, ranges[0])]
        else:
            blobs = store.read_ranges(key, ranges)
    except NotFoundError:
        raise IntegrityError(
            f"object {key} is missing (needed for chunk blake3:{runs[0][0].digest.hex()}); run casreg verify") from None
    for r, data in zip(ranges, blobs):
        if len(data) != r.length:
            raise IntegrityError(f"object {key} is truncated: {len(data)} of {r.length} bytes at offset {r.start}")
    return blobs


def read_span_stats(store: ObjectStore, refs: list[ChunkRef], cache: CacheArg = AUTO,
                    into: memoryview | None = None, bases: Bases | None = None,
                    shared: DecodedBases | None = None, verify: bool = True) -> SpanRead:
    """:func:`read_span`, also saying how many bytes and requests it took. With a cache,
    chunks it holds are taken from it (each re-verified) and only the missing ones are
    fetched, each run of adjacent missing chunks with one ranged read; every fetched chunk
    is verified, then stored in the cache.

    ``into``: a writable buffer of at least the run's raw size; the chunks are decoded
    into it back to back, and ``chunks`` is empty. A pull reuses a few such buffers, so
    its memory is that of its buffers however the allocator would treat a ``bytes`` per
    chunk allocated in many threads.

    ``bases``: where the version's delta bases are stored (its manifest's
    :attr:`~casreg.content.manifest.Manifest.base_map`); a delta chunk's bases are read
    through the cache and verified, and the decoded chunk checked against its digest.
    ``shared``: where bases are kept across calls (:class:`DecodedBases`), so that each is
    read and decoded once per pull rather than once per call.

    ``verify=False`` (with ``into``, and no cache: a chunk is cached only once verified):
    the chunks are decoded into ``into`` but not hashed, for a caller that checks every
    byte of them another way and, if they fail, reads them again verified to name the
    damaged one. A pull writes whole files and checks each against its digest, so on a
    local registry it skips the chunk hashes (a third of a large pull's CPU)."""
    cache = resolve_cache(store, cache)
    if not verify and (into is None or cache is not None):
        raise ValueError("chunks are read unverified only into a buffer, and never through a cache")
    source = _base_source(store, bases, cache, shared) if any(r.codec == Codec.DELTA for r in refs) else None
    slots: list[memoryview | None] = [None] * len(refs)
    if into is not None:
        pos = 0
        for i, r in enumerate(refs):
            slots[i] = into[pos:pos + r.raw_size]
            pos += r.raw_size
        if pos > len(into):
            raise ValueError(f"a buffer of {len(into)} bytes cannot hold a run of {pos}")
    key = pack_key(refs[0].pack)
    if cache is None:
        runs = [refs]
        out: list[bytes | memoryview | None] = [None] * len(refs)
    else:
        out = [cache.get(r.digest, r.raw_size) for r in refs]
        if into is not None:
            for i, got in enumerate(out):
                slot = slots[i]
                if got is not None and slot is not None:
                    slot[:] = got
        runs, run = [], []
        for r, got in zip(refs, out):
            if got is None:
                run.append(r)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
    res = SpanRead([], requests=len(runs))
    if runs:
        missing = iter(i for i, got in enumerate(out) if got is None)
        for run, data in zip(runs, _fetch(store, key, runs)):
            view = memoryview(data)
            start = run[0].offset
            for r in run:
                i = next(missing)
                raw = _check_chunk(r, view[r.offset - start:r.offset - start + r.stored_size], key, slots[i], source,
                                   verify)
                out[i] = raw
                res.fetched_bytes += r.stored_size
                if cache is not None:
                    cache.put_verified(r.digest, raw)
    res.chunks = [] if into is not None else out  # type: ignore[assignment]  # every slot is filled now
    res.cached_bytes = sum(r.raw_size for r in refs) - sum(r.raw_size for run in runs for r in run)
    return res


def read_span(store: ObjectStore, refs: list[ChunkRef], cache: CacheArg = AUTO, bases: Bases | None = None,
              ) -> list[bytes]:
    """Fetch chunks stored back to back in one pack with a single ranged read; decode and
    verify each. Never returns bytes that fail their digest. Reads go through the local
    chunk cache when ``cache`` (default: the one ``CASREG_CACHE`` picks for the store,
    docs/cache.md) is not ``None``."""
    return read_span_stats(store, refs, cache, bases=bases).chunks


def read_chunk(store: ObjectStore, ref: ChunkRef, cache: CacheArg = AUTO, bases: Bases | None = None) -> bytes:
    """Fetch, decode and verify one chunk (through the cache, as :func:`read_span`)."""
    return read_span(store, [ref], cache, bases)[0]


def spans(chunks: list[ChunkRef], limit: int | None = None) -> Iterator[list[ChunkRef]]:
    """Group a file's chunks into runs that are contiguous in one pack (push writes a
    file's new chunks in order, so runs are long), each at most ``limit`` stored bytes and
    :data:`SPAN_RAW_BYTES` decoded bytes (a run of one chunk may exceed either)."""
    limit = limit or SPAN_BYTES
    run: list[ChunkRef] = []
    size = raw = 0
    for ref in chunks:
        if run and (ref.pack != run[-1].pack or ref.offset != run[-1].offset + run[-1].stored_size
                    or size + ref.stored_size > limit or raw + ref.raw_size > SPAN_RAW_BYTES):
            yield run
            run, size, raw = [], 0, 0
        run.append(ref)
        size += ref.stored_size
        raw += ref.raw_size
    if run:
        yield run
