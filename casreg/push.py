"""Storing a version's content: chunk, hash, compress, pack, and write the manifest.

The main thread reads and cuts each file (FastCDC releases the GIL) and feeds the
whole-file BLAKE3; a small pool of worker threads hashes each chunk and, only if the
registry lacks it, compresses it (BLAKE3 and zstd release the GIL too, so both cores
work). Results are consumed in order; new payloads go into a pack, and sealed packs are
written by uploader threads (as many as the store's ``io_concurrency``) while the next one
fills. At most ``MAX_INFLIGHT`` chunks and ``io_concurrency + 1`` sealed packs are in
memory at once, whatever the file size.

Write order gives atomic visibility: packs, then their indexes, then the manifest. The
caller commits the version by writing its ledger record last; a crash before that
leaves only unreferenced objects for ``gc``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from blake3 import blake3

from casreg.chunking import ChunkParams, iter_chunks
from casreg.codec import encode
from casreg.errors import IntegrityError, InvalidInputError, NotFoundError
from casreg.manifest import ChunkRef, Entry, Manifest, manifest_key
from casreg.packs import PACK_TARGET, ChunkIndex, PackBuilder, index_key, pack_key
from casreg.progress import NullProgress, Progress
from casreg.source import Source, SourceFile
from casreg.storage import ObjectStore

log = logging.getLogger("casreg.push")

__all__ = ["PushStats", "store_source", "manifest_key"]

MAX_INFLIGHT = 12  # chunks queued or being processed; ~12 x 4 MiB at worst


@dataclass(slots=True)
class PushStats:
    size: int = 0  # logical bytes of the version
    chunks: int = 0
    new_chunks: int = 0
    new_raw_bytes: int = 0  # logical bytes of chunks the registry lacked
    stored_bytes: int = 0  # bytes this push wrote: packs, indexes, manifest
    packs: int = 0

    @property
    def dedup_ratio(self) -> float:
        """Share of the version's bytes that were already stored."""
        return 1.0 - self.new_raw_bytes / self.size if self.size else 1.0


class _Pending:
    """A chunk placed in a pack whose id is known only once the pack is sealed."""

    __slots__ = ("digest", "builder", "offset", "stored_size", "raw_size", "codec")

    def __init__(self, digest: bytes, builder: PackBuilder, offset: int, stored: int, raw: int, codec: int):
        self.digest, self.builder, self.offset = digest, builder, offset
        self.stored_size, self.raw_size, self.codec = stored, raw, codec

    def resolve(self) -> ChunkRef:
        pack_id = self.builder.pack_id
        assert pack_id is not None, "chunk resolved before its pack was sealed"
        return ChunkRef(self.digest, pack_id, self.offset, self.stored_size, self.raw_size, self.codec)


def _replace_damaged(store: ObjectStore, key: str, parts: list[bytes | memoryview], intact: Callable[[], bool]) -> bool:
    """``key`` already exists: the same pack (or index) pushed before, which is fine, or
    the remains of a writer killed mid-upload (an S3 server may keep an empty object when a
    client dies after sending the headers). Its name fixes its size and bytes, so anything
    else is damage: replace it rather than trust it, or this push would record chunks that
    cannot be read back. Returns True if it wrote the object."""
    try:
        if intact():
            return False
    except NotFoundError:  # gone meanwhile (gc of an unreferenced leftover): write it again
        return store.create(key, parts)
    log.warning("casreg: %s in %s is damaged (a killed upload?); writing it again", key, store.url)
    store.delete(key)
    if store.create(key, parts):
        return True
    if not intact():  # someone else wrote it meanwhile; theirs must be right too
        raise IntegrityError(f"{key} in {store.url} is damaged and could not be replaced; nothing was committed")
    return False


class _Pusher:
    def __init__(self, store: ObjectStore, index: ChunkIndex, level: int, progress: Progress,
                 workers: ThreadPoolExecutor, uploader: ThreadPoolExecutor) -> None:
        self.store, self.index, self.level, self.progress = store, index, level, progress
        self.workers, self.uploader = workers, uploader
        self.claimed: dict[bytes, _Pending] = {}
        self.pack = PackBuilder()
        self.uploads: deque[Future[int]] = deque()
        self.inflight: deque[tuple[list[object], Future[tuple[bytes, int, bytes | None]], int]] = deque()
        self.stats = PushStats()

    # -- worker side -------------------------------------------------------------------
    def _process(self, raw: bytes) -> tuple[bytes, int, bytes | None]:
        digest = blake3(raw).digest()
        if digest in self.index or digest in self.claimed:
            return digest, 0, None
        codec, stored = encode(raw, self.level)
        return digest, int(codec), stored

    def _upload(self, pack_id: str, parts: list[bytes | memoryview], index: bytes) -> int:
        written = 0
        size = sum(len(p) for p in parts)
        if self.store.create(pack_key(pack_id), parts) or _replace_damaged(
                self.store, pack_key(pack_id), parts, lambda: self.store.size(pack_key(pack_id)) == size):
            written += size
        if self.store.create(index_key(pack_id), index) or _replace_damaged(  # only after the pack exists
                self.store, index_key(pack_id), [index], lambda: self.store.read(index_key(pack_id)) == index):
            written += len(index)
        return written

    # -- main thread ---------------------------------------------------------------------
    def _seal(self) -> None:
        if not len(self.pack):
            return
        pack_id, data, index = self.pack.seal()
        self.stats.packs += 1
        while len(self.uploads) > self.store.io_concurrency:  # bounds packs held in memory
            self.stats.stored_bytes += self.uploads.popleft().result()
        self.uploads.append(self.uploader.submit(self._upload, pack_id, data, index))
        self.pack = PackBuilder()

    def _drain_one(self) -> None:
        chunks, fut, raw_size = self.inflight.popleft()
        digest, codec, stored = fut.result()
        self.stats.chunks += 1
        ref: object
        if digest in self.claimed:
            ref = self.claimed[digest]
        elif (known := self.index.get(digest)) is not None:
            ref = known
        else:
            assert stored is not None
            offset = self.pack.add(digest, codec, stored, raw_size)
            ref = self.claimed[digest] = _Pending(digest, self.pack, offset, len(stored), raw_size, codec)
            self.stats.new_chunks += 1
            self.stats.new_raw_bytes += raw_size
            if self.pack.size >= PACK_TARGET:
                self._seal()
        chunks.append(ref)
        self.progress.advance(raw_size)

    def add_file(self, f: SourceFile, params: ChunkParams) -> Entry:
        chunks: list[object] = []
        hasher = blake3()  # one thread: ~4.6 GB/s here; AUTO threading of 8 MiB blocks cost 3x the CPU on 2 busy cores
        size = 0
        try:
            with open(f.abspath, "rb") as fh:
                for raw in iter_chunks(fh, params, on_read=hasher.update):
                    size += len(raw)
                    self.inflight.append((chunks, self.workers.submit(self._process, raw), len(raw)))
                    if len(self.inflight) >= MAX_INFLIGHT:
                        self._drain_one()
                st = os.fstat(fh.fileno())
        except PermissionError:
            raise InvalidInputError(f"cannot push {f.abspath}: permission denied") from None
        except FileNotFoundError:
            raise InvalidInputError(f"cannot push {f.abspath}: it disappeared while being pushed") from None
        if size != f.size or st.st_size != size or st.st_mtime_ns != f.mtime_ns:
            raise InvalidInputError(f"{f.abspath} changed while it was being pushed; push again when it is stable")
        self.stats.size += size
        return Entry(f.relpath, "x" if f.executable else "f", size, hasher.digest(), chunks)  # type: ignore[arg-type]

    def finish(self, entries: list[Entry]) -> None:
        while self.inflight:
            self._drain_one()
        self._seal()
        while self.uploads:
            self.stats.stored_bytes += self.uploads.popleft().result()
        for e in entries:
            e.chunks = [c.resolve() if isinstance(c, _Pending) else c for c in e.chunks]  # type: ignore[union-attr]

    def abort(self) -> None:
        for _, fut, _ in self.inflight:
            fut.cancel()
        for up in self.uploads:
            try:
                up.result()
            except Exception:
                pass


def store_source(
    store: ObjectStore,
    source: Source,
    *,
    params: ChunkParams,
    level: int,
    index: ChunkIndex,
    progress: Progress | None = None,
    threads: int | None = None,
) -> tuple[Manifest, PushStats]:
    """Store every chunk of ``source`` the registry lacks, then its manifest; return the
    manifest (whose digest is the version digest) and what it cost."""
    progress = progress or NullProgress()
    nthreads = threads or os.cpu_count() or 2
    with ThreadPoolExecutor(nthreads, thread_name_prefix="casreg-chunk") as workers, \
         ThreadPoolExecutor(store.io_concurrency, thread_name_prefix="casreg-upload") as uploader:
        pusher = _Pusher(store, index, level, progress, workers, uploader)
        progress.start("push", source.size)
        try:
            entries = [pusher.add_file(f, params) for f in source.files]
            entries += [Entry(d, "d") for d in source.empty_dirs]
            pusher.finish(entries)
        except BaseException:
            pusher.abort()
            raise
        finally:
            progress.finish()
    manifest = Manifest(source.kind, entries, params.to_dict())
    data = manifest.to_bytes()
    if store.create(manifest_key(manifest.hexdigest), data):
        pusher.stats.stored_bytes += len(data)
    return manifest, pusher.stats
