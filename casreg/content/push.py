"""Storing a version's content: chunk, hash, compress, pack, and write the manifest.

The main thread reads each file into a few recycled buffers and cuts it (FastCDC
releases the GIL); a small pool of worker threads hashes each chunk (a view into the
buffer, never a copy) and, only if the registry lacks it, compresses it (BLAKE3 and zstd
release the GIL too, so both cores work). Results are consumed in order. One *ordered*
thread does the work that must follow the file's order: the whole-file BLAKE3, and
appending new payloads to the open pack's writer (on a local disk a temporary file, so a
payload's memory is reused at once); it exists because the main thread, doing all of that
itself, was the push's critical path (perf, 512 MiB: 47% of the CPU on one thread).
Sealed packs are published by uploader threads (as many as the store's
``io_concurrency``) while the next one fills. At most ``MAX_INFLIGHT`` chunks,
``READ_BUFFERS`` read buffers, 64 MiB of queued pack writes and, on an object store,
``io_concurrency + 1`` sealed packs are in memory at once, whatever the file size.

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

from casreg.content.chunking import BLOCK_SIZE, ChunkParams, iter_chunk_views
from casreg.content.codec import decode_verified, encode
from casreg.content.manifest import ChunkRef, Entry, Manifest
from casreg.content.packs import PACK_TARGET, ChunkIndex, PackBuilder
from casreg.content.source import Source, SourceFile
from casreg.errors import IntegrityError, InvalidInputError, NotFoundError
from casreg.keys import PACKS, index_key, manifest_key, pack_key
from casreg.progress import NullProgress, Progress
from casreg.redact import redact_url
from casreg.storage import ObjectStore, ObjectWriter
from casreg.storage.base import Buffer

log = logging.getLogger(__name__)

__all__ = ["PushStats", "store_source"]

MAX_INFLIGHT = 12  # chunks queued or being processed
READ_BUFFERS = 3  # one being cut, the others' chunks still being hashed and compressed


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


def _replace_damaged(store: ObjectStore, key: str, write: Callable[[], bool], intact: Callable[[], bool]) -> bool:
    """``key`` already exists: the same pack (or index) pushed before, which is fine, or
    the remains of a writer killed mid-upload (an S3 server may keep an empty object when a
    client dies after sending the headers). Its name fixes its size and bytes, so anything
    else is damage: replace it rather than trust it, or this push would record chunks that
    cannot be read back. Returns True if it wrote the object."""
    try:
        if intact():
            return False
    except NotFoundError:  # gone meanwhile (gc of an unreferenced leftover): write it again
        return write()
    log.warning("casreg: %s in %s is damaged (a killed upload?); writing it again", key, redact_url(store.url))
    store.delete(key)
    if write():
        return True
    if not intact():  # someone else wrote it meanwhile; theirs must be right too
        raise IntegrityError(f"{key} in {store.url} is damaged and could not be replaced; nothing was committed")
    return False


class _ReadBuffers:
    """The buffers files are read into. Chunks are handed to the workers as views, and
    each block to the whole-file hash on the ordered thread, so a buffer is lent again
    only once every chunk cut from it has been consumed and its block hashed; until then
    ``acquire`` drains the oldest results. Buffers are allocated on first use and sized to
    the need (a push of small files never allocates 12 MiB blocks)."""

    SMALL = 1 << 20  # needs up to this get a buffer their size; larger ones a full block

    def __init__(self, count: int, full: int, drain: Callable[[], None]) -> None:
        self.bufs: list[memoryview | None] = [None] * count
        self.users = [0] * count  # chunks cut from each buffer and not consumed yet
        self.hashing: list[Future[object] | None] = [None] * count  # the last hash update given a view of it
        self.next = 0
        self.full = full  # a whole block plus the largest carried chunk
        self.drain = drain

    def acquire(self, need: int) -> tuple[int, memoryview]:
        i = self.next
        self.next = (i + 1) % len(self.bufs)
        while self.users[i]:
            self.drain()
        if (hashing := self.hashing[i]) is not None:
            hashing.result()
            self.hashing[i] = None
        buf = self.bufs[i]
        if buf is None or len(buf) < need:
            buf = self.bufs[i] = memoryview(bytearray(need if need <= self.SMALL else max(need, self.full)))
        return i, buf


class _OrderedWriter(ObjectWriter):
    """A pack's writer whose writes run on the ordered thread (in submission order), so
    the main thread, which cuts chunks and is the push's critical path, does not also
    copy every stored byte into the kernel. Publishing waits for the writes to land; the
    first failed write fails the publish."""

    MAX_PENDING = 64 << 20  # bytes submitted and not written yet, at most

    def __init__(self, inner: ObjectWriter, ordered: ThreadPoolExecutor) -> None:
        super().__init__(inner.store)
        self.inner, self.ordered = inner, ordered
        self.pending: deque[tuple[Future[None], int]] = deque()
        self.pending_bytes = 0
        self.error: BaseException | None = None

    def _write(self, data: Buffer) -> None:
        if self.error is None:
            try:
                self.inner.write(data)
            except BaseException as err:
                self.error = err

    def write(self, data: Buffer) -> None:
        self.pending.append((self.ordered.submit(self._write, data), len(data)))
        self.pending_bytes += len(data)
        self.size += len(data)
        while self.pending_bytes > self.MAX_PENDING:
            self._land_one()

    def _land_one(self) -> None:
        fut, n = self.pending.popleft()
        fut.result()
        self.pending_bytes -= n

    def wait(self) -> None:
        while self.pending:
            self._land_one()
        if self.error is not None:
            raise self.error

    def publish(self, key: str, *, size: int) -> bool:
        self.wait()
        return self.inner.publish(key, size=size)

    def close(self) -> None:
        try:
            while self.pending:  # never close a file a queued write still targets
                self._land_one()
        finally:
            self.inner.close()


class _Pusher:
    def __init__(self, store: ObjectStore, index: ChunkIndex, params: ChunkParams, level: int, progress: Progress,
                 workers: ThreadPoolExecutor, uploader: ThreadPoolExecutor, ordered: ThreadPoolExecutor,
                 check_writes: bool) -> None:
        self.store, self.index, self.params, self.level, self.progress = store, index, params, level, progress
        self.check_writes = check_writes
        self.workers, self.uploader, self.ordered = workers, uploader, ordered
        self.claimed: dict[bytes, _Pending] = {}
        self.pack: PackBuilder | None = None  # opened on the first new chunk
        self.uploads: deque[Future[int]] = deque()
        self.inflight: deque[tuple[list[object], Future[tuple[bytes, int, bytes | None]], int, int]] = deque()
        self.block = max(BLOCK_SIZE, 2 * params.max_size)  # read per block, beside up to max_size carried
        self.buffers = _ReadBuffers(READ_BUFFERS, params.max_size + self.block, self._drain_one)
        self.stats = PushStats()

    # -- worker side -------------------------------------------------------------------
    def _process(self, raw: memoryview) -> tuple[bytes, int, bytes | None]:
        digest = blake3(raw).digest()
        if digest in self.index or digest in self.claimed:
            return digest, 0, None
        codec, stored = encode(raw, self.level)
        if not isinstance(stored, bytes):  # kept raw: a view of a read buffer that will be reused
            stored = bytes(stored)
        if self.check_writes:  # what is stored must decode to the bytes the digest was taken of
            try:
                decode_verified(codec, stored, len(raw), digest)
            except IntegrityError as err:
                raise IntegrityError(f"check before write: chunk blake3:{digest.hex()} as encoded ({codec.name}) "
                                     f"is wrong ({err}); nothing was stored for it (push again)") from None
        return digest, int(codec), stored

    def _upload(self, pack_id: str, writer: ObjectWriter, index: bytes, size: int) -> int:
        written = 0
        with writer:
            key = pack_key(pack_id)
            if writer.publish(key, size=size) or _replace_damaged(
                    self.store, key, lambda: writer.publish(key, size=size), lambda: self.store.size(key) == size):
                written += size
        ikey = index_key(pack_id)
        if self.store.create(ikey, index) or _replace_damaged(  # only after the pack exists
                self.store, ikey, lambda: self.store.create(ikey, index), lambda: self.store.read(ikey) == index):
            written += len(index)
        self.index.remember(pack_id, index)
        return written

    # -- main thread ---------------------------------------------------------------------
    def _seal(self) -> None:
        pack, self.pack = self.pack, None
        if pack is None:
            return
        pack_id, index = pack.seal()
        self.stats.packs += 1
        while len(self.uploads) > self.store.io_concurrency:  # bounds packs held in memory
            self.stats.stored_bytes += self.uploads.popleft().result()
        self.uploads.append(self.uploader.submit(self._upload, pack_id, pack.writer, index, pack.size))

    def _drain_one(self) -> None:
        chunks, fut, raw_size, buf_id = self.inflight.popleft()
        digest, codec, stored = fut.result()
        self.buffers.users[buf_id] -= 1
        self.stats.chunks += 1
        ref: object
        if digest in self.claimed:
            ref = self.claimed[digest]
        elif (known := self.index.get(digest)) is not None:
            ref = known
        else:
            assert stored is not None
            if self.pack is None:
                self.pack = PackBuilder(_OrderedWriter(self.store.open_writer(PACKS), self.ordered))
            offset = self.pack.add(digest, codec, stored, raw_size)
            ref = self.claimed[digest] = _Pending(digest, self.pack, offset, len(stored), raw_size, codec)
            self.stats.new_chunks += 1
            self.stats.new_raw_bytes += raw_size
            if self.pack.size >= PACK_TARGET:
                self._seal()
        chunks.append(ref)
        self.progress.advance(raw_size)

    def add_file(self, f: SourceFile) -> Entry:
        chunks: list[object] = []
        hasher = blake3()  # one thread: ~4.6 GB/s here; AUTO threading of 8 MiB blocks cost 3x the CPU on 2 busy cores

        def hash_block(view: memoryview, buf_id: int) -> None:  # on the ordered thread, off the critical path
            self.buffers.hashing[buf_id] = self.ordered.submit(hasher.update, view)

        size = 0
        try:
            with open(f.abspath, "rb", buffering=0) as fh:
                for raw, buf_id in iter_chunk_views(fh, self.params, self.buffers.acquire, size_hint=f.size,
                                                    block_size=self.block, on_read=hash_block):
                    size += len(raw)
                    self.buffers.users[buf_id] += 1
                    self.inflight.append((chunks, self.workers.submit(self._process, raw), len(raw), buf_id))
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
        digest = self.ordered.submit(hasher.digest).result()  # after every update of this file
        return Entry(f.relpath, "x" if f.executable else "f", size, digest, chunks)  # type: ignore[arg-type]

    def finish(self, entries: list[Entry]) -> None:
        while self.inflight:
            self._drain_one()
        self._seal()
        while self.uploads:
            self.stats.stored_bytes += self.uploads.popleft().result()
        for e in entries:
            pending: list[object] = list(e.chunks)  # ChunkRefs, and _Pending ones until now
            e.chunks = [c.resolve() if isinstance(c, _Pending) else c for c in pending]  # type: ignore[misc]

    def abort(self) -> None:
        for _, fut, _, _ in self.inflight:
            fut.cancel()
        for up in self.uploads:
            try:
                up.result()
            except Exception:
                pass
        if self.pack is not None:
            self.pack.writer.close()


def store_source(
    store: ObjectStore,
    source: Source,
    *,
    params: ChunkParams,
    level: int,
    index: ChunkIndex,
    progress: Progress | None = None,
    threads: int | None = None,
    check_writes: bool = True,
    tree: int = 2,
) -> tuple[Manifest, PushStats]:
    """Store every chunk of ``source`` the registry lacks, then its manifest; return the
    manifest (whose digest is the version digest, of tree format ``tree``: the
    registry's, :attr:`casreg.content.config.RegistryConfig.tree`) and what it cost.

    ``check_writes`` (the default): before anything is stored, every new chunk's encoded
    form is decoded and hashed again and must give its digest, and the manifest's bytes
    are parsed back and must give the version digest (restic's check, ``NoExtraVerify``
    turns it off there): a codec bug, or a read buffer changed between hashing and
    compressing, fails the push instead of storing a chunk nobody can read back. Its cost
    is measured in docs/benchmarks.md."""
    progress = progress or NullProgress()
    nthreads = threads or os.cpu_count() or 2
    with ThreadPoolExecutor(nthreads, thread_name_prefix="casreg-chunk") as workers, \
         ThreadPoolExecutor(store.io_concurrency, thread_name_prefix="casreg-upload") as uploader, \
         ThreadPoolExecutor(1, thread_name_prefix="casreg-ordered") as ordered:
        pusher = _Pusher(store, index, params, level, progress, workers, uploader, ordered, check_writes)
        progress.start("push", source.size)
        try:
            entries = [pusher.add_file(f) for f in source.files]
            entries += [Entry(d, "d") for d in source.empty_dirs]
            pusher.finish(entries)
        except BaseException:
            pusher.abort()
            raise
        finally:
            progress.finish()
    manifest = Manifest(source.kind, entries, params.to_dict(), tree=tree)
    data = manifest.to_bytes()
    key = manifest_key(manifest.hexdigest)
    if check_writes:
        Manifest.from_bytes(data, expected=manifest.digest, where=f"{key} (check before write)")
    if store.create(key, data):
        pusher.stats.stored_bytes += len(data)
    return manifest, pusher.stats
