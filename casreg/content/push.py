"""Storing a version's content: chunk, hash, compress, pack, and write the manifest.

The main thread reads each file into a few recycled buffers and cuts it (FastCDC
releases the GIL); a small pool of worker threads hashes each chunk (a view into the
buffer, never a copy) and, only if the registry lacks it, compresses it (BLAKE3 and zstd
release the GIL too, so both cores work); small files (one chunk each) go to a worker in
batches, read whole, and the new ones among them are compressed and checked with one zstd
call each way (each call releases the GIL once, where a call per file passed it between
the threads a dozen times a file). Results are consumed in order. One *ordered*
thread does the work that must follow the file's order: the whole-file BLAKE3, and
appending new payloads to the open pack's writer (on a local disk a temporary file, so a
payload's memory is reused at once); it exists because the main thread, doing all of that
itself, was the push's critical path (perf, 512 MiB: 47% of the CPU on one thread).
Sealed packs are published by uploader threads (as many as the store's
``io_concurrency``) while the next one fills. At most ``MAX_INFLIGHT`` chunks,
``READ_BUFFERS`` read buffers, ``MAX_INFLIGHT`` batches of at most ``SMALL_BATCH_BYTES``
of small files and 64 MiB of queued pack writes are in memory at once, whatever the file
size. Up to ``io_concurrency + 1`` sealed packs wait for their upload besides the one
filling: staged on disk by the store's writer (a local registry's temporary files, S3's
unlinked temporary files), in memory only where the store has no place to stage them
(``memory://``, or no room in ``$TMPDIR``).

Write order gives atomic visibility: packs, then their indexes, then the manifest. The
caller commits the version by writing its ledger record last; a crash before that
leaves only unreferenced objects for ``gc``.
"""

from __future__ import annotations

import logging
import os
import stat
import typing
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from blake3 import blake3

from casreg.content.chunking import BLOCK_SIZE, ChunkParams, iter_chunk_views
from casreg.content.codec import (
    Codec,
    FloatHint,
    check_decodes,
    check_decodes_to,
    encode,
    encode_many,
    encode_unless,
    first_not_decoding_to,
)
from casreg.content.config import read_config
from casreg.content.delta import (
    MAX_PIECES,
    Piece,
    Seg,
    base_pieces,
    check_delta,
    encode_delta,
    parse_header,
    worth_it,
)
from casreg.content.dtypes import SAFETENSORS_SUFFIX, float_layout
from casreg.content.fetch import DecodedBases, read_span, read_span_stats, spans
from casreg.content.float_probe import SMALL_PROBE_MIN_BYTES, probe_floats
from casreg.content.manifest import MAX_STORED_MANIFEST, ChunkRef, Entry, Manifest
from casreg.content.packs import PACK_TARGET, ChunkIndex, PackBuilder, decode_index, verify_pack
from casreg.content.source import SOURCE_FLAGS, Source, SourceFile, open_regular
from casreg.content.trust import VerifiedPacks
from casreg.errors import IntegrityError, InvalidInputError, NotFoundError
from casreg.keys import PACKS, index_key, manifest_key, pack_key
from casreg.progress import NullProgress, Progress
from casreg.redact import redact_url
from casreg.storage import ByteRange, ObjectStore, ObjectWriter
from casreg.storage.base import Buffer

log = logging.getLogger(__name__)

__all__ = ["PushStats", "store_source"]

MAX_INFLIGHT = 12  # worker tasks queued or being processed (a chunk, or a batch of small files)
#: Small files (one chunk each) read, hashed and encoded by one worker task, at most, and
#: their bytes at most (beyond one file): a task, a future and a result per file cost a
#: push of 5,000 small files more than their hashing did.
SMALL_BATCH_FILES = 32
SMALL_BATCH_BYTES = 1 << 20
VERIFIERS = 4  # registry packs read back at once, at most (each reads 4 MiB at a time)
READ_BUFFERS = 3  # one being cut, the others' chunks still being hashed and compressed
_DELTA_HEADER = 5 + 40 * MAX_PIECES  # a delta payload's header is at most this long


def _open_source(path: str) -> int:
    """A descriptor of the source file ``path`` (:func:`open_regular`), refused
    (:class:`InvalidInputError`) if it is no longer a regular file; what ``os.open``
    raises is the caller's to word. (A small file's read checks the type after reading
    instead, with the ``fstat`` it makes anyway: :meth:`_Pusher._read_whole`.)"""
    fd = open_regular(path)
    if fd is None:
        raise InvalidInputError(f"{path} changed while it was being pushed (it is no longer a regular file); "
                                "push again when it is stable")
    return fd


def _check_failed(digest: bytes, codec: str, why: object) -> IntegrityError:
    """The error of a payload that failed the check before write."""
    return IntegrityError(f"check before write: chunk blake3:{digest.hex()} as encoded ({codec}) is wrong "
                          f"({why}); nothing was stored for it (push again)")


@dataclass(slots=True)
class PushStats:
    size: int = 0  # logical bytes of the version
    chunks: int = 0
    new_chunks: int = 0
    new_raw_bytes: int = 0  # logical bytes of chunks the registry lacked
    stored_bytes: int = 0  # bytes this push wrote: packs, indexes, manifest
    packs: int = 0
    verified_packs: int = 0  # packs of the registry read back whole before being trusted (not confirmed before)
    rejected_packs: int = 0  # of those, packs that failed (their chunks were stored anew)
    restored_chunks: int = 0  # chunks stored anew because the pack their index named failed
    replaced_manifest: bool = False  # a stale manifest under this version's digest was replaced
    delta_chunks: int = 0  # new chunks stored as deltas against the parent version (codec 3)
    delta_raw_bytes: int = 0  # their raw bytes
    #: The manifest's bytes as this push wrote them (a commit check compares the stored
    #: ones with these instead of serialising the manifest again).
    manifest_data: bytes = field(default=b"", repr=False)

    @property
    def dedup_ratio(self) -> float:
        """Share of the version's bytes that were already stored."""
        return 1.0 - self.new_raw_bytes / self.size if self.size else 1.0


#: A worker's result: the chunk's digest, and for a chunk to store its codec and stored
#: bytes (``None``: the registry or this push has it); the bases of a delta chunk.
_Result = tuple[bytes, int, bytes | None, list[ChunkRef] | None]


def _digest_of(ref: object) -> bytes:
    """The digest of a chunk reference (a :class:`ChunkRef` or a :class:`_Pending`)."""
    return typing.cast(ChunkRef, ref).digest


class _ParentFile:
    """The parent version's file at a path, as delta coding sees it: plain-chunk segments
    (:class:`~casreg.content.delta.Seg`), their starts, the refs of their chunks; and how
    many deltas were tried and kept (a file whose first deltas all fail, such as one with
    another tensor layout, is not tried further)."""

    __slots__ = ("segs", "starts", "refs", "tried", "kept")
    GIVE_UP = 16  # deltas tried without one kept, at most

    def __init__(self, segs: list[Seg], refs: dict[bytes, ChunkRef]) -> None:
        self.segs, self.starts, self.refs = segs, [s.start for s in segs], refs
        self.tried = self.kept = 0

    @property
    def hopeless(self) -> bool:
        return self.kept == 0 and self.tried >= self.GIVE_UP


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


class _FileChunks:
    """A file's chunk references as they are drained, in file order, and where the next
    one starts in the file (to read a chunk again if the pack it was found in fails)."""

    __slots__ = ("refs", "source", "offset")

    def __init__(self, source: SourceFile) -> None:
        self.refs: list[object] = []  # ChunkRef, or _Pending until its pack is sealed
        self.source = source
        self.offset = 0


class _Part:
    """One small file's result in a worker task that reads a batch of them: the
    ``index``-th result of ``batch``; ``last`` for the batch's last file (the task is
    done with once that is drained)."""

    __slots__ = ("batch", "index", "last")

    def __init__(self, batch: Future[list[_Result]], index: int, last: bool) -> None:
        self.batch, self.index, self.last = batch, index, last

    def result(self) -> _Result:
        return self.batch.result()[self.index]

    def cancel(self) -> bool:
        return self.batch.cancel()


def _unchanged(raw: memoryview | bytes, held: bool) -> bytes | memoryview | None:
    """What the check before write compares a decoded payload with: the bytes ``raw``
    holds if nothing can change them (a ``bytes`` object or a view of all of one, as a
    small file's, read whole; any view when ``held``: see :meth:`_Pusher._process`), else
    ``None`` (a view into a read buffer that may be reused: the check hashes instead)."""
    if isinstance(raw, bytes):
        return raw
    obj = raw.obj
    if isinstance(obj, bytes) and len(obj) == raw.nbytes:
        return obj
    return raw if held else None


def _chunk_digest(ref: object) -> bytes:
    assert isinstance(ref, (ChunkRef, _Pending))
    return ref.digest


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
        self.lent = [0] * count  # times each buffer was lent (a buffer is written only after it is)
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
        self.lent[i] += 1
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
    #: Writes smaller than this are gathered and handed to the ordered thread together
    #: (joined into one write): a task per small file's payload cost more than its write.
    GATHER = 1 << 20

    def __init__(self, inner: ObjectWriter, ordered: ThreadPoolExecutor) -> None:
        super().__init__(inner.store)
        self.inner, self.ordered = inner, ordered
        self.pending: deque[tuple[Future[None], int]] = deque()
        self.pending_bytes = 0
        self.gathered: list[Buffer] = []  # small writes not handed over yet, in order
        self.gathered_bytes = 0
        self.error: BaseException | None = None

    def write(self, data: Buffer) -> None:
        self.size += len(data)
        if len(data) < self.GATHER:
            self.gathered.append(data)
            self.gathered_bytes += len(data)
            if self.gathered_bytes >= self.GATHER:
                self._hand_over()
            return
        self._hand_over()
        self._submit(data)

    def _hand_over(self) -> None:
        """Submit the gathered small writes as one task (not joined: a copy of every
        stored byte cost more than the task)."""
        if self.gathered:
            parts, n, self.gathered, self.gathered_bytes = self.gathered, self.gathered_bytes, [], 0
            self._queue(self.ordered.submit(self._write_all, parts), n)

    def _submit(self, data: Buffer) -> None:
        self._queue(self.ordered.submit(self._write_all, [data]), len(data))

    def _queue(self, fut: Future[None], n: int) -> None:
        self.pending.append((fut, n))
        self.pending_bytes += n
        while self.pending_bytes > self.MAX_PENDING:
            self._land_one()

    def _write_all(self, parts: list[Buffer]) -> None:
        """On the ordered thread: write ``parts``, unless a write failed before (the
        first failure is kept, and fails the publish)."""
        if self.error is None:
            try:
                self.inner.write_many(parts)
            except BaseException as err:
                self.error = err

    def _land_one(self) -> None:
        fut, n = self.pending.popleft()
        fut.result()
        self.pending_bytes -= n

    def wait(self) -> None:
        self._hand_over()
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
                 verifier: ThreadPoolExecutor, trust: VerifiedPacks, check_writes: bool,
                 float_codec: bool = False, parent: Manifest | None = None) -> None:
        self.store, self.index, self.params, self.level, self.progress = store, index, params, level, progress
        self.check_writes, self.float_codec = check_writes, float_codec
        self.workers, self.uploader, self.ordered, self.verifier = workers, uploader, ordered, verifier
        self.trust = trust
        self.claimed: dict[bytes, _Pending] = {}
        self.pack: PackBuilder | None = None  # opened on the first new chunk
        self.uploads: deque[Future[int]] = deque()
        self.inflight: deque[tuple[_FileChunks, Future[_Result] | _Part, int, int]] = deque()
        self.tasks = 0  # worker tasks in ``inflight`` (a batch of small files is one)
        self.small: list[tuple[SourceFile, _FileChunks]] = []  # small files not handed to a worker yet
        self.small_bytes = 0
        # Packs of the registry this push dedups against, each checked in the background
        # (the error, or None); the chunk references that rely on one are kept (file,
        # position, offset and size in the file) in case it fails.
        self.checks: dict[str, Future[str | None]] = {}
        self.deduped: list[tuple[_FileChunks, int, int, int]] = []
        self.file_digests: list[tuple[Entry, Callable[[], bytes]]] = []  # each file's BLAKE3, when taken
        self.block = max(BLOCK_SIZE, 2 * params.max_size)  # read per block, beside up to max_size carried
        self.buffers = _ReadBuffers(READ_BUFFERS, params.max_size + self.block, self._drain_one)
        self.stats = PushStats()
        # Delta coding (casreg/4): the parent version's files, where its bytes are, and
        # the bases of every delta chunk this version names (digest -> base refs).
        self.parent = parent
        self.parent_files = {e.path: e for e in parent.files} if parent is not None else {}
        self.parent_bases = parent.base_map if parent is not None else {}
        self.delta_bases: dict[bytes, list[ChunkRef]] = {}
        self.delta_refs: list[tuple[_FileChunks, int, int, int]] = []  # delta refs, as self.deduped
        self.decoded = DecodedBases(store)  # base chunks, each read and decoded once while kept (bounded)
        self.file_version = False  # the version pushed is one file (set by store_source)

    # -- delta coding ------------------------------------------------------------------
    def _header_pieces(self, ref: ChunkRef) -> list[Piece] | None:
        """The pieces a stored delta chunk names, from its payload's header (one small
        ranged read); ``None`` if it cannot be read. Untrusted: it only steers the choice
        of bases, and everything coded against them is checked before it is stored."""
        try:
            data = self.store.read(pack_key(ref.pack), ByteRange(ref.offset, ref.offset + min(ref.stored_size,
                                                                                               _DELTA_HEADER)))
            return list(parse_header(data, ref.raw_size).pieces)
        except (IntegrityError, NotFoundError):
            return None

    def parent_segments(self, path: str) -> _ParentFile | None:
        """The parent version's file at ``path`` as plain-chunk segments (a delta chunk of
        the parent is described by its own bases: the grandparent's bytes at the same
        offsets, so chains stay one level deep), with the refs of those chunks."""
        entry = self.parent_files.get(path)
        if entry is None and self.parent is not None and self.parent.kind == "file" and self.file_version:
            entry = self.parent.files[0]  # a file version's one file, whatever it is called now
        if entry is None:
            return None
        segs: list[Seg] = []
        refs: dict[bytes, ChunkRef] = {}
        pos = 0
        for ref in entry.chunks:
            if ref.codec != Codec.DELTA:
                segs.append(Seg(pos, ref.raw_size, ref.digest, 0))
                refs[ref.digest] = ref
            elif (pieces := self._header_pieces(ref)) is not None:
                at = pos
                for p in pieces:
                    base = self.parent_bases.get(p.digest)
                    if base is None or base.codec == Codec.DELTA:
                        break
                    segs.append(Seg(at, p.length, p.digest, p.offset))
                    refs[p.digest] = base
                    at += p.length
            pos += ref.raw_size
        return _ParentFile(segs, refs)

    def _delta(self, raw: memoryview, digest: bytes, hint: FloatHint | None, offset: int,
               parent: _ParentFile) -> tuple[bytes, list[ChunkRef], dict[bytes, bytes]] | None:
        """``raw`` as a delta against the parent's bytes at ``offset`` (not checked yet),
        its bases' refs and their raw bytes by digest; ``None`` if there are none."""
        if parent.hopeless:
            return None
        refs = parent.refs
        pieces = base_pieces(parent.segs, parent.starts, offset, len(raw))
        if not pieces or any(p.digest == digest for p in pieces):
            return None
        parent.tried += 1  # threads may race here: a count off by one only moves when it gives up
        try:
            chunks = {p.digest: self.decoded.get(refs[p.digest]) for p in pieces}
        except IntegrityError as err:  # a damaged base: no delta against it (verify reports it)
            log.warning("casreg: not delta-coding against a damaged chunk: %s", err)
            return None
        views = [memoryview(chunks[p.digest])[p.offset:p.offset + p.length] for p in pieces]
        if any(len(v) != p.length for v, p in zip(views, pieces)):
            return None
        payload = encode_delta(raw, pieces, views, lambda r: encode(r, self.level, hint, residual=True), hint)
        return payload, [refs[d] for d in chunks], chunks

    def _check_delta(self, payload: bytes, raw: memoryview, digest: bytes, chunks: dict[bytes, bytes],
                     held: bool) -> None:
        """The check before write of a delta payload: decoded against its bases' bytes, it
        must give ``digest`` (compared with ``raw`` where ``held``, as in :meth:`_check_plain`)."""
        if self.check_writes:
            try:
                check_delta(payload, len(raw), digest, lambda d: (chunks[d], False), _unchanged(raw, held))
            except IntegrityError as err:
                raise _check_failed(digest, "DELTA", err) from None

    def _known_delta(self, known: ChunkRef) -> list[ChunkRef] | None:
        """The bases of a delta chunk the registry holds, if it decodes from chunks the
        index knows to its digest; ``None`` and it is stored anew otherwise. An index is not
        trusted for a delta's bases: the chunk is read and decoded now, unless its pack and
        its bases' packs are all confirmed (docs/security.md, "What push trusts": each of
        their payloads was checked to decode to its digest, a delta's against these very
        bases, which its header names by digest). Decoding every reused delta chunk again
        made each checkpoint of a chain slower to push than the one before."""
        pieces = self._header_pieces(known)
        if pieces is None:
            return None
        bases = {}
        for p in pieces:
            ref = self.index.get(p.digest)
            if ref is None or ref.codec == Codec.DELTA:
                return None
            bases[p.digest] = ref
        if known.pack in self.trust and all(b.pack in self.trust for b in bases.values()):
            return list(bases.values())
        try:
            read_span_stats(self.store, [known], bases=bases, shared=self.decoded)
        except IntegrityError:
            return None
        return list(bases.values())

    # -- worker side -------------------------------------------------------------------
    def _process(self, raw: memoryview, hint: FloatHint | None, offset: int = 0,
                 parent: _ParentFile | None = None, probe: bool = False,
                 lent: tuple[int, int] | None = None) -> _Result:
        """Hash ``raw``; unless the registry (or this push) has it, encode it (with the
        PLANES ``hint``, or the hint :func:`probe_floats` guesses when ``probe``; against
        ``parent`` when given and the chunk has a hint) and check the payload before it is
        stored. ``lent``: the read buffer ``raw`` lies in and how many times it had been
        lent when ``raw`` was cut from it (:meth:`_ReadBuffers.acquire`). A buffer is
        written only after it is lent, so if that count has not moved once the payload is
        checked, ``raw`` held the bytes its digest was taken of throughout, and the check
        compares what the payload decodes to with them rather than hashing it again. The
        codecs are given a read-only view, so that none can change the bytes either."""
        result = self._code(raw.toreadonly(), hint, offset, parent, probe, lent is not None)
        if lent is not None and result[2] is not None and self.buffers.lent[lent[0]] != lent[1]:
            raise IntegrityError(f"push: the read buffer of chunk blake3:{result[0].hex()} was lent again while it "
                                 "was being coded (a bug); nothing was stored for it (push again)")
        return result

    def _code(self, raw: memoryview, hint: FloatHint | None, offset: int, parent: _ParentFile | None, probe: bool,
              held: bool, digest: bytes | None = None) -> _Result:
        """:meth:`_process`'s work; ``held``: nothing changes ``raw`` until it returns;
        ``digest``: ``raw``'s, if the caller took it."""
        if digest is None:
            digest = blake3(raw).digest()
        if digest in self.claimed:
            return digest, 0, None, None
        known = self.index.get(digest)
        if known is not None:
            if known.codec != Codec.DELTA:
                return digest, 0, None, None
            bases = self._known_delta(known)
            if bases is not None:
                return digest, 0, None, bases
        if probe and hint is None:
            hint = probe_floats(raw)
        if parent is None or hint is None:
            codec, stored = self._encode(raw, digest, hint, held=held)
            return digest, int(codec), stored, None
        # The delta first: the plain payload is coded only as far as needed to know the
        # delta saves enough against it (usually its mantissa planes, not the exponent).
        delta = self._delta(raw, digest, hint, offset, parent)
        if delta is None:
            codec, stored = self._encode(raw, digest, hint, held=held)
            return digest, int(codec), stored, None
        payload, refs, chunks = delta
        plain = encode_unless(raw, self.level, hint, lambda n: worth_it(len(payload), n))
        if plain is None or worth_it(len(payload), len(plain[1])):
            parent.kept += 1
            self._check_delta(payload, raw, digest, chunks, held)
            return digest, int(Codec.DELTA), payload, refs
        codec, stored = plain[0], plain[1] if isinstance(plain[1], bytes) else bytes(plain[1])
        self._check_plain(raw, digest, codec, stored, held)
        return digest, int(codec), stored, None

    def _encode(self, raw: memoryview | bytes, digest: bytes, hint: FloatHint | None = None,
                held: bool = False) -> tuple[Codec, bytes]:
        codec, stored = encode(raw, self.level, hint)
        if not isinstance(stored, bytes):  # kept raw: a view of a read buffer that will be reused
            stored = bytes(stored)
        self._check_plain(raw, digest, codec, stored, held)
        return codec, stored

    def _check_plain(self, raw: memoryview | bytes, digest: bytes, codec: Codec, stored: bytes,
                     held: bool = False) -> None:
        """The check before write: what is stored must decode to the bytes ``digest`` was
        taken of. Where those bytes cannot have changed since (``held``, or a small file's
        ``bytes``, read whole), what it decodes to is compared with them, the same check
        as hashing it again, at a fraction of the cost."""
        if self.check_writes:
            try:
                unchanged = _unchanged(raw, held)
                if unchanged is not None:
                    check_decodes_to(codec, stored, unchanged, digest)
                else:
                    check_decodes(codec, stored, len(raw), digest)
            except IntegrityError as err:
                raise _check_failed(digest, codec.name, err) from None

    def _verify(self, pack_id: str, confirmed: bool) -> str | None:
        """On a verifier thread: the reason a registry pack this push dedups against cannot
        be trusted, or ``None``. A pack this machine confirmed before must still be there
        with the size its index fixes (one metadata request); any other is read back whole
        (``ChunkIndex.verify``) and, if it passes, recorded as confirmed."""
        key = pack_key(pack_id)
        try:
            if confirmed:
                try:
                    size = self.store.size(key)
                except NotFoundError:
                    size = -1
                if size != self.index.pack_sizes.get(pack_id, size):
                    raise IntegrityError(f"pack {key} is missing or has the wrong size")
                return None
            self.index.verify(self.store, pack_id)
        except IntegrityError as err:
            if not self.store.exists(pack_key(pack_id)):
                # An index is written only after its pack, so one without a pack advertises
                # chunks nobody stored (a pack gc swept, or a forgery): as gc's commit check
                # does, remove it, so that later pushes do not look at it again.
                self.store.delete(index_key(pack_id))
            return str(err)
        self.trust.add(pack_id)
        return None

    def _intact(self, pack_id: str, index: bytes) -> bool:
        """Whether the pack already stored under our pack's name holds our pack's chunks."""
        try:
            verify_pack(self.store, pack_id, index, decode_index(index, index_key(pack_id)), self.index.max_chunk)
        except IntegrityError:
            return False
        return True

    def _upload(self, pack_id: str, writer: ObjectWriter, index: bytes, size: int) -> int:
        written = 0
        with writer:
            key = pack_key(pack_id)
            # A pack already under this name (the same chunks pushed before, or planted by
            # someone who predicted the name) is read back whole before it is relied on.
            if writer.publish(key, size=size) or _replace_damaged(
                    self.store, key, lambda: writer.publish(key, size=size), lambda: self._intact(pack_id, index)):
                written += size
        ikey = index_key(pack_id)
        if self.store.create(ikey, index) or _replace_damaged(  # only after the pack exists
                self.store, ikey, lambda: self.store.create(ikey, index), lambda: self.store.read(ikey) == index):
            written += len(index)
        self.index.remember(pack_id, index)
        if self.check_writes:  # every payload was decoded and hashed before it was written
            self.trust.add(pack_id)
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

    def _store_new(self, digest: bytes, codec: int, stored: bytes, raw_size: int) -> _Pending:
        if self.pack is None:
            self.pack = PackBuilder(_OrderedWriter(self.store.open_writer(PACKS), self.ordered))
        offset = self.pack.add(digest, codec, stored, raw_size)
        ref = self.claimed[digest] = _Pending(digest, self.pack, offset, len(stored), raw_size, codec)
        self.stats.new_chunks += 1
        self.stats.new_raw_bytes += raw_size
        if self.pack.size >= PACK_TARGET:
            self._seal()
        return ref

    def _check(self, pack_id: str) -> None:
        """Start checking ``pack_id`` in the background, once per push."""
        if pack_id not in self.checks:
            confirmed = pack_id in self.trust
            self.checks[pack_id] = self.verifier.submit(self._verify, pack_id, confirmed)
            self.stats.verified_packs += not confirmed

    def _drain_one(self) -> None:
        chunks, fut, raw_size, buf_id = self.inflight.popleft()
        if not isinstance(fut, _Part) or fut.last:
            self.tasks -= 1
        digest, codec, stored, bases = fut.result()
        if buf_id >= 0:  # a small file's chunk was read by its worker, into no shared buffer
            self.buffers.users[buf_id] -= 1
        self.stats.chunks += 1
        ref: object
        if digest in self.claimed:
            ref = self.claimed[digest]
        elif stored is None and (known := self.index.get(digest)) is not None:
            ref = known
            self._check(known.pack)
            self.deduped.append((chunks, len(chunks.refs), chunks.offset, raw_size))
        else:
            assert stored is not None
            ref = self._store_new(digest, codec, stored, raw_size)
            if codec == Codec.DELTA:
                self.stats.delta_chunks += 1
                self.stats.delta_raw_bytes += raw_size
        if bases is not None and digest not in self.delta_bases:
            self.delta_bases[digest] = bases
            for b in bases:
                self._check(b.pack)  # a delta relies on its bases' packs as on its own
        if getattr(ref, "codec", None) == Codec.DELTA:
            self.delta_refs.append((chunks, len(chunks.refs), chunks.offset, raw_size))
        chunks.refs.append(ref)
        chunks.offset += raw_size
        self.progress.advance(raw_size)

    def _restore(self) -> None:
        """Wait for the packs being read back; for every one that failed, store the chunks
        this push found in it anew (read again from the source files and checked against
        their digests), so the version never relies on a pack nobody can read."""
        bad: dict[str, str] = {}
        for pack_id, check in self.checks.items():
            if (why := check.result()) is not None:
                bad[pack_id] = why
        if not bad:
            return
        self.stats.rejected_packs = len(bad)
        for why in bad.values():
            log.warning("casreg: not deduplicating against %s: %s; storing its chunks anew (run casreg verify)",
                        redact_url(self.store.url), why)
        # Chunks found in a bad pack, and delta chunks (new or found) whose bases are in one.
        redo = [d for d in self.deduped if typing.cast(ChunkRef, d[0].refs[d[1]]).pack in bad]
        redo += [d for d in self.delta_refs
                 if any(b.pack in bad for b in self.delta_bases.get(_digest_of(d[0].refs[d[1]]), []))]
        restored: dict[bytes, _Pending] = {}
        files: dict[str, int] = {}
        try:
            for chunks, pos, offset, raw_size in redo:
                digest = _digest_of(chunks.refs[pos])
                new = restored.get(digest)
                if new is None:
                    claimed = self.claimed.get(digest)
                    if claimed is not None and claimed.codec != Codec.DELTA:
                        new = claimed  # this push stored it plain already
                    else:
                        path = chunks.source.abspath
                        fd = files.get(path)
                        if fd is None:
                            try:
                                fd = files[path] = _open_source(path)
                            except OSError:
                                raise InvalidInputError(f"cannot push {path}: it disappeared while being pushed") \
                                    from None
                        raw = os.pread(fd, raw_size, offset)  # the chunk's own size, not what an index claims
                        if len(raw) != raw_size or blake3(raw).digest() != digest:
                            raise InvalidInputError(f"{path} changed while it was being pushed; push again when it "
                                                    "is stable")
                        codec, stored = self._encode(raw, digest)
                        new = self._store_new(digest, int(codec), stored, raw_size)
                        self.stats.restored_chunks += 1
                    restored[digest] = new
                chunks.refs[pos] = new
        finally:
            for fd in files.values():
                os.close(fd)

    def _read_small_batch(self, files: list[SourceFile]) -> list[_Result]:
        """On a worker: the one chunk of each small file of ``files``, in order (read,
        checked to be the file the source listed, hashed, and encoded unless the registry
        has it; a chunk's digest is its file's digest too). The new chunks are coded and
        checked together (:func:`encode_many`, :func:`first_not_decoding_to`): with zstd,
        or with PLANES where a safetensors header says the file holds float elements or
        the probe finds them in a file of :data:`SMALL_PROBE_MIN_BYTES` or more; a known
        delta chunk one at a time as any chunk."""
        out: list[_Result | None] = []
        new: list[tuple[int, bytes, bytes, FloatHint | None]] = []  # (position, bytes, digest, hint) of new chunks
        for f in files:
            raw = self._read_whole(f)
            digest = blake3(raw).digest()
            view = memoryview(raw).toreadonly()
            if digest in self.claimed or self.index.get(digest) is not None:
                out.append(self._code(view, None, 0, None, False, False, digest))  # known: no coding
                continue
            layout = float_layout(f.abspath, f.size) if self.float_codec else None
            hint = layout.hint(0, len(raw)) if layout is not None else \
                probe_floats(view, SMALL_PROBE_MIN_BYTES) if self.float_codec else None
            new.append((len(out), raw, digest, hint))
            out.append(None)
        if new:
            raws = [raw for _, raw, _, _ in new]
            payloads = encode_many(raws, self.level, [hint for _, _, _, hint in new])
            if self.check_writes and (bad := first_not_decoding_to(payloads, raws,
                                                                   [d for _, _, d, _ in new])) is not None:
                raise _check_failed(new[bad][2], payloads[bad][0].name, "its bytes do not match the digest")
            for (pos, _, digest, _), (codec, stored) in zip(new, payloads):
                out[pos] = (digest, int(codec), stored, None)
        return typing.cast(list[_Result], out)

    def _read_whole(self, f: SourceFile) -> bytes:
        """On a worker: the bytes of the small file ``f``, which must be the file the
        source listed (its size and modification time)."""
        try:
            fd = os.open(f.abspath, SOURCE_FLAGS)  # (os calls: a file object cost two system calls more)
            try:
                raw = os.read(fd, f.size + 1)  # one byte more than expected, to see a file that grew
                while 0 < len(raw) < f.size and (more := os.read(fd, f.size + 1 - len(raw))):
                    raw += more  # a short read (a signal, a network file system)
                st = os.fstat(fd)  # (a file that grew after the read: its size; a FIFO or device: its type)
            finally:
                os.close(fd)
        except PermissionError:
            raise InvalidInputError(f"cannot push {f.abspath}: permission denied") from None
        except FileNotFoundError:
            raise InvalidInputError(f"cannot push {f.abspath}: it disappeared while being pushed") from None
        except BlockingIOError:  # a FIFO in its place, with a writer and nothing written yet
            raw, st = b"", None
        if st is None or not stat.S_ISREG(st.st_mode) or len(raw) != f.size or st.st_size != f.size \
                or st.st_mtime_ns != f.mtime_ns:
            raise InvalidInputError(f"{f.abspath} changed while it was being pushed; push again when it is stable")
        return raw

    def add_file(self, f: SourceFile) -> Entry:
        # (a small safetensors file with a parent takes the path below, which codes deltas)
        if 0 < f.size <= self.params.min_size and (
                self.parent is None or not f.abspath.lower().endswith(SAFETENSORS_SUFFIX)):
            return self._add_small_file(f)
        self._send_small()  # the small files before this one go first, as they came
        chunks = _FileChunks(f)
        hasher = blake3()  # one thread: ~4.6 GB/s here; AUTO threading of 8 MiB blocks cost 3x the CPU on 2 busy cores

        def hash_block(view: memoryview, buf_id: int) -> None:  # on the ordered thread, off the critical path
            self.buffers.hashing[buf_id] = self.ordered.submit(hasher.update, view)

        size = 0
        layout = float_layout(f.abspath, f.size) if self.float_codec else None
        probe = self.float_codec and layout is None  # no header says where floats are: guess per chunk
        # Deltas are for tensor data updated in place (fine-tunes, checkpoints): chunks of
        # float elements (where a safetensors header says, or where the probe finds them)
        # are coded against the parent's bytes at the same offsets of the same file.
        parent = self.parent_segments(f.relpath) if self.parent is not None and (layout or probe) else None
        try:
            with open(_open_source(f.abspath), "rb", buffering=0) as fh:
                for raw, buf_id in iter_chunk_views(fh, self.params, self.buffers.acquire, size_hint=f.size,
                                                    block_size=self.block, on_read=hash_block):
                    hint = layout.hint(size, len(raw)) if layout is not None else None
                    self.buffers.users[buf_id] += 1
                    self.inflight.append((chunks, self.workers.submit(self._process, raw, hint, size,
                                                                      parent if hint or probe else None, probe,
                                                                      (buf_id, self.buffers.lent[buf_id])),
                                          len(raw), buf_id))
                    self.tasks += 1
                    size += len(raw)
                    if self.tasks >= MAX_INFLIGHT:
                        self._drain_one()
                st = os.fstat(fh.fileno())
        except PermissionError:
            raise InvalidInputError(f"cannot push {f.abspath}: permission denied") from None
        except FileNotFoundError:
            raise InvalidInputError(f"cannot push {f.abspath}: it disappeared while being pushed") from None
        if size != f.size or st.st_size != size or st.st_mtime_ns != f.mtime_ns:
            raise InvalidInputError(f"{f.abspath} changed while it was being pushed; push again when it is stable")
        self.stats.size += size
        entry = Entry(f.relpath, "x" if f.executable else "f", size, b"", chunks.refs)  # type: ignore[arg-type]
        # The digest is taken on the ordered thread after every update of this file; the
        # next file starts meanwhile (waiting here stalled pushes of many small files).
        self.file_digests.append((entry, self.ordered.submit(hasher.digest).result))
        return entry

    def _add_small_file(self, f: SourceFile) -> Entry:
        """A file of at most ``min_size`` bytes is one chunk whatever its content (the
        chunker cuts nothing shorter), so a worker reads, hashes and encodes it whole,
        with the next few small files (one task per batch: :data:`SMALL_BATCH_FILES`),
        its open and read off the main thread, no read buffer and no separate whole-file
        hash. Pushes of thousands of small files spent most of their time in those
        (profiled: per-file opens on the main thread, four tasks per file, then the
        futures of one task per file)."""
        chunks = _FileChunks(f)
        self.small.append((f, chunks))
        self.small_bytes += f.size
        if len(self.small) >= SMALL_BATCH_FILES or self.small_bytes >= SMALL_BATCH_BYTES:
            self._send_small()
        self.stats.size += f.size
        entry = Entry(f.relpath, "x" if f.executable else "f", f.size, b"", chunks.refs)  # type: ignore[arg-type]
        # the file's digest is its chunk's, read from the reference once drained (holding
        # the future would hold every small file's encoded bytes until the push ends)
        self.file_digests.append((entry, lambda: _chunk_digest(chunks.refs[0])))
        return entry

    def _send_small(self) -> None:
        """Hand the small files gathered so far to a worker, as one task."""
        if not self.small:
            return
        batch, self.small, self.small_bytes = self.small, [], 0
        fut = self.workers.submit(self._read_small_batch, [f for f, _ in batch])
        self.tasks += 1
        for i, (f, chunks) in enumerate(batch):
            self.inflight.append((chunks, _Part(fut, i, i == len(batch) - 1), f.size, -1))
        while self.tasks >= MAX_INFLIGHT:
            self._drain_one()

    def finish(self, entries: list[Entry]) -> None:
        self._send_small()
        while self.inflight:
            self._drain_one()
        self._restore()
        self._seal()
        while self.uploads:
            self.stats.stored_bytes += self.uploads.popleft().result()
        for entry, digest in self.file_digests:
            entry.digest = digest()
        for e in entries:
            pending: list[object] = list(e.chunks)  # ChunkRefs, and _Pending ones until now
            e.chunks = [c.resolve() if isinstance(c, _Pending) else c for c in pending]  # type: ignore[misc]

    def bases(self, entries: list[Entry]) -> list[ChunkRef]:
        """Every base the delta chunks of ``entries`` name, once each (the manifest's
        ``bases``: what gc keeps and readers decode them with)."""
        out: dict[bytes, ChunkRef] = {}
        for e in entries:
            for c in e.chunks:
                if c.codec == Codec.DELTA:
                    for b in self.delta_bases[c.digest]:
                        out.setdefault(b.digest, b)
        return list(out.values())

    def abort(self) -> None:
        for _, fut, _, _ in self.inflight:
            fut.cancel()
        for check in self.checks.values():
            check.cancel()
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
    trust: VerifiedPacks | None = None,
    float_codec: bool = False,
    parent: Manifest | None = None,
) -> tuple[Manifest, PushStats]:
    """Store every chunk of ``source`` the registry lacks, then its manifest; return the
    manifest (whose digest is the version digest, of tree format ``tree``: the
    registry's, :attr:`casreg.content.config.RegistryConfig.tree`) and what it cost.
    ``float_codec``: code the float tensor data of safetensors files with the PLANES
    codec (:mod:`casreg.content.dtypes`; the registry's
    :attr:`~casreg.content.config.RegistryConfig.float_codec`). ``parent``: the version
    this one derives from, in a registry that allows delta coding
    (:attr:`~casreg.content.config.RegistryConfig.delta_codec`): a new chunk of a file the
    parent has at the same path is stored as a delta against the parent's bytes at the
    same offsets when that saves enough (:mod:`casreg.content.delta`; docs/FORMAT.md §4.2).

    ``check_writes`` (the default): before anything is stored, every new chunk's encoded
    form is decoded and hashed again and must give its digest (a small file's, read whole
    into bytes nothing can change, is compared with those bytes instead: the same check at
    half the cost), and the manifest's bytes
    are parsed back and must give the version digest (restic's check, ``NoExtraVerify``
    turns it off there): a codec bug, or a read buffer changed between hashing and
    compressing, fails the push instead of storing a chunk nobody can read back. Its cost
    is measured in docs/benchmarks.md.

    **What it trusts** (docs/security.md): a chunk the registry already holds is used only
    from a pack that is *confirmed* (``trust``, by default this machine's record for this
    registry, :class:`casreg.content.trust.VerifiedPacks`): written by this machine, or
    read back whole and found to hold every chunk its index names, at its offset. An
    unconfirmed pack is read back in the background while the push goes on; if it fails,
    the chunks found in it are read again from the source and stored anew. A manifest
    already stored under the version digest is kept only if every chunk it names is one
    this push relies on or reads back correctly; otherwise it is replaced. So the
    returned manifest is stored and every chunk it names was confirmed readable and
    correct: a poisoned index costs dedup, never a version."""
    progress = progress or NullProgress()
    nthreads = threads or os.cpu_count() or 2
    if trust is None:
        config = read_config(store)
        trust = VerifiedPacks(store, config.to_json() if config is not None else b"")
    with ThreadPoolExecutor(nthreads, thread_name_prefix="casreg-chunk") as workers, \
         ThreadPoolExecutor(store.io_concurrency, thread_name_prefix="casreg-upload") as uploader, \
         ThreadPoolExecutor(1, thread_name_prefix="casreg-ordered") as ordered, \
         ThreadPoolExecutor(min(store.io_concurrency, VERIFIERS), thread_name_prefix="casreg-verify") as verifier:
        pusher = _Pusher(store, index, params, level, progress, workers, uploader, ordered, verifier, trust,
                         check_writes, float_codec, parent)
        pusher.file_version = source.kind == "file"
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
    manifest = Manifest(source.kind, entries, params.to_dict(), tree=tree, bases=pusher.bases(entries))
    data = pusher.stats.manifest_data = manifest.to_bytes()
    key = manifest_key(manifest.hexdigest)
    if check_writes:
        Manifest.from_bytes(data, expected=manifest.digest, where=f"{key} (check before write)")
    if store.create(key, data):
        pusher.stats.stored_bytes += len(data)
    elif not _stored_manifest_readable(store, key, manifest, index.max_chunk):
        # A manifest of this very version (the digest commits to every byte and the chunk
        # layout) that names a chunk where it cannot be read: left by a push whose pack was
        # later lost, or by a poisoned one. Create-if-absent cannot replace it, and every
        # push would keep failing on it, so it goes: ours names only confirmed chunks.
        log.warning("casreg: %s in %s names chunks that cannot be read; replacing it", key, redact_url(store.url))
        store.delete(key)
        if store.create(key, data):
            pusher.stats.stored_bytes += len(data)
        elif not _stored_manifest_readable(store, key, manifest, index.max_chunk):
            raise IntegrityError(f"{key} in {store.url} names chunks that cannot be read and could not be replaced; "
                                 "nothing was committed")
        pusher.stats.replaced_manifest = True
    return manifest, pusher.stats


def _stored_manifest_readable(store: ObjectStore, key: str, ours: Manifest, max_chunk: int) -> bool:
    """Whether the manifest stored at ``key`` (which this push's ``ours`` could not be
    created over) may stand: it parses, is the same version, and every chunk reference
    it holds is one of ours (confirmed by this push) or reads back from its pack with
    its digest. Reads only the references that differ from ours (usually none)."""
    try:
        data = store.read(key, ByteRange(0, MAX_STORED_MANIFEST + 1))
    except NotFoundError:
        return False  # deleted meanwhile (a gc of an unreferenced manifest): write it again
    try:
        stored = Manifest.from_bytes(data, expected=ours.digest, where=key, max_chunk=max_chunk)
    except IntegrityError:
        return False
    mine = {c for e in ours.entries for c in e.chunks} | set(ours.bases)
    other = sorted({c for e in stored.entries for c in e.chunks if c not in mine} | set(stored.bases) - mine,
                   key=lambda c: (c.pack, c.offset))
    try:
        for run in spans(other):
            read_span(store, run, cache=None, bases=stored.base_map)
    except IntegrityError:
        return False
    return True
