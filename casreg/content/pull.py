"""Materialising a version on local disk, verified before anything is exposed.

Everything is written into a *partial* tree beside the destination, named after the
version's digest. Worker threads fetch runs of chunks that sit next to each other in a
pack with one ranged read each, decode them and check every chunk's BLAKE3 against the
manifest; the main thread writes the chunks in order and feeds each file's BLAKE3,
which must equal the file digest when the file is complete (one writer per file: workers
writing at their offsets, or a writer thread of its own, took 1.5x the time, most of it
in the kernel; docs/benchmarks.md, "Tried on 2026-12-07"). In a partial tree this pull
made (nothing to resume), a file that one read fetches whole (a small file) is instead
checked, created, written and closed by the worker that read it, so that thousands of
files are created by several threads.
Only then is the result renamed to the destination.

If a pull stops half way (a network error, a kill), the partial tree stays beside the
destination, never at it, and the next pull of the same version resumes: complete files
and the verified leading chunks of an interrupted file are kept, and only the rest is
fetched. Corrupt data in the registry is different: the partial tree is removed and
nothing of it is kept.

**The partial tree is not trusted either.** Its name is predictable, so whoever can write
beside the destination could plant something in it before a pull, or between an
interrupted pull and the next. Its top must be a directory (for a file version: a
regular file) owned by the user who pulls, never a symbolic link; below it every
directory is made with ``mkdir`` and entered with ``O_DIRECTORY | O_NOFOLLOW`` relative to
its parent's descriptor, and every file is opened relative to its directory with
``O_NOFOLLOW``, so no write can leave the tree through a link. Whatever a resumed tree
holds that this pull would not have written itself (a link, a FIFO, a device, a file
another user owns or with other hard links, a directory where a file belongs) is removed,
never followed, and that file is fetched afresh. Nothing here recurses on the depth of a
path: a manifest's paths are at most :data:`~casreg.content.manifest.MAX_PATH_DEPTH`
components deep, and whatever a planted tree holds is removed iteratively.

**Room first.** Before anything is created the destination's filesystem must have room
for what is still to be written (:func:`check_space`), so a manifest that claims a
terabyte fails at once instead of filling the disk.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from casreg.content import fetch
from casreg.content.cache import AUTO, CacheArg, ChunkCache, resolve_cache
from casreg.content.fetch import (
    SPAN_RAW_BYTES,
    Bases,
    DecodedBases,
    SpanRead,
    concurrent_bases_bytes,
    read_span_stats,
    spans,
)
from casreg.content.manifest import ChunkRef, Entry, Manifest
from casreg.errors import AlreadyExistsError, IntegrityError, InvalidInputError, StorageError
from casreg.keys import manifest_key
from casreg.progress import NullProgress, Progress
from casreg.storage import ObjectStore
from casreg.storage.fileio import write_all

__all__ = ["PullStats", "SPACE_MARGIN", "check_space", "materialize", "matches", "file_digest", "partial_path"]

_READ_BLOCK = 8 << 20
#: Decoded bytes of the runs fetched ahead of the writer, at most (beyond one run): with
#: runs of up to ``SPAN_RAW_BYTES`` (more for one chunk of a registry with a large maximum
#: chunk size) a count of runs alone would not bound a pull's memory.
INFLIGHT_RAW_BYTES = 128 << 20
#: Files whose runs one read may hold at most (each is open until its run is written).
BATCH_FILES = 64
#: A run is decoded this many bytes (at most 7) into its buffer, so that its address is
#: its offset in its file modulo 8: the elements of a tensor that are aligned in the file
#: (safetensors aligns its data to 8 bytes) are aligned in memory too, and the PLANES
#: codec joins them where they belong. A run starting at an odd offset was otherwise
#: joined aside and copied (10 % more CPU to decode it, measured on bf16 chunks).
_ALIGN = 8
#: Room asked for beyond the bytes still to write: this, plus one filesystem block per
#: entry (each file's last block is partly empty; directories take blocks too).
SPACE_MARGIN = 1 << 20
#: A directory inside the partial tree: entered, never through a link.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A new file inside the partial tree.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: A file an earlier pull left, reopened to resume: never a link, never waiting on a FIFO.
_OLD_FILE = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: Directories a removal moves up to flatten a tree (so it needs no recursion).
_PURGED = ".casreg-purge-"


@dataclass(slots=True)
class PullStats:
    size: int = 0
    files: int = 0
    fetched_bytes: int = 0  # stored bytes read from the registry
    requests: int = 0  # ranged reads made
    cached_bytes: int = 0  # raw bytes taken from the local chunk cache (docs/cache.md)
    resumed_bytes: int = 0  # bytes kept from an interrupted earlier pull
    up_to_date: bool = False  # the destination already held exactly this version


def file_digest(path: str | os.PathLike[str]) -> bytes:
    """BLAKE3 of a local file, read in fixed blocks (bounded memory); equals ``b3sum``."""
    h = blake3(max_threads=blake3.AUTO)
    buf = bytearray(_READ_BLOCK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.digest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def matches(manifest: Manifest, dest: Path) -> bool:
    """True if ``dest`` already holds exactly this version (same files, sizes, modes,
    digests, empty directories, and nothing else), without following symlinks (and
    without recursion, however deep ``dest`` is)."""
    if manifest.kind == "file":
        return _entry_matches(manifest.entries[0], dest)
    if dest.is_symlink() or not dest.is_dir():
        return False
    expected = {e.path: e for e in manifest.entries}
    seen = 0
    todo = [("", str(dest))]
    while todo:
        rel, path = todo.pop()
        try:
            with os.scandir(path) as it:
                found = list(it)
        except OSError:
            return False
        if rel and not found:
            e = expected.get(rel)
            if e is None or e.type != "d":
                return False
            seen += 1
        for entry in found:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                todo.append((sub, entry.path))
                continue
            f = expected.get(sub)
            if f is None or f.type == "d" or not _entry_matches(f, Path(entry.path)):
                return False
            seen += 1
    return seen == len(expected)


def _entry_matches(e: Entry, path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
        return False
    if bool(st.st_mode & 0o100) != (e.type == "x"):
        return False
    return file_digest(path) == e.digest


# -- the partial tree: nothing in it is followed --------------------------------------------------
def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _usable(st: os.stat_result) -> bool:
    """A regular file of ours that nothing else links to: safe to resume writing into."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def _discard(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the directory ``dir_fd``, whatever it is, following no link."""
    st = _lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        _purge(dir_fd, name)
        return
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _purge(parent: int, name: str) -> None:
    """Remove the directory ``name`` (in ``parent``) and all it holds, following no link
    and without recursion: every directory found below it is first moved up into it
    (under a fresh name), so however deep the tree, two descriptors suffice."""
    try:
        top = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise
        os.unlink(name, dir_fd=parent)  # no longer a directory: a link or file took its place
        return
    try:
        todo: list[str | None] = [None]  # None: the top itself
        while todo:
            cur = todo.pop()
            fd = top if cur is None else os.open(cur, _DIR_FLAGS, dir_fd=top)
            try:
                with os.scandir(fd) as it:
                    found = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                for child, is_dir in found:
                    if not is_dir:
                        os.unlink(child, dir_fd=fd)
                    elif cur is None:
                        todo.append(child)
                    else:
                        moved = f"{_PURGED}{uuid.uuid4().hex}"
                        os.rename(child, moved, src_dir_fd=fd, dst_dir_fd=top)
                        todo.append(moved)
            finally:
                if fd != top:
                    os.close(fd)
            if cur is not None:
                os.rmdir(cur, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=parent)


def _own_dir(parent: int, name: str, where: Path, *, create: bool = True) -> int:
    """A descriptor of the directory ``name`` in ``parent`` (``where`` is its path, for
    messages): a real directory of ours, made if missing. Anything else there (a link, a
    file, another user's directory) is removed first; -1 if ``create`` is false and there
    is no such directory."""
    for _ in range(3):
        if create:
            try:
                os.mkdir(name, dir_fd=parent)
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError:
            if not create:
                return -1
            st = _lstat_at(parent, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise  # a directory we may not enter: the error says why
            if st is not None:
                _discard(parent, name)
            continue
        st = os.fstat(fd)
        if st.st_uid == os.geteuid():
            return fd
        os.close(fd)
        if not create:
            return -1
        try:
            _discard(parent, name)
        except PermissionError as err:
            raise AlreadyExistsError(f"cannot pull: {where} belongs to another user and cannot be removed "
                                     f"({err.strerror}); remove it") from None
    raise AlreadyExistsError(f"cannot pull: {where} keeps being replaced while the pull writes it")


class _Dirs:
    """Open descriptors of the directories along the path last entered inside the partial
    tree, below its top (``top``, which the caller owns). Entries come sorted, so entering
    the next one's directory opens only what differs: each directory is opened once."""

    def __init__(self, top: int, where: Path, *, create: bool = True) -> None:
        self.top, self.where, self.create = top, where, create
        self.names: list[str] = []
        self.fds: list[int] = []

    def enter(self, parts: Sequence[str]) -> int:
        """The directory ``parts`` below the top, made (and cleared of anything in its way)
        as needed; -1 when not creating and it is not there."""
        n = 0
        common = min(len(parts), len(self.names))
        while n < common and self.names[n] == parts[n]:
            n += 1
        self._keep(n)
        for name in parts[n:]:
            where = self.where.joinpath(*self.names, name)
            fd = _own_dir(self.fds[-1] if self.fds else self.top, name, where, create=self.create)
            if fd < 0:
                return -1
            self.fds.append(fd)
            self.names.append(name)
        return self.fds[-1] if self.fds else self.top

    def _keep(self, n: int) -> None:
        while len(self.names) > n:
            self.names.pop()
            os.close(self.fds.pop())

    def close(self) -> None:
        self._keep(0)


def _reopen(dir_fd: int, name: str) -> tuple[int, int]:
    """(descriptor, size) of the file an earlier pull left as ``name``, opened for reading
    and writing; (-1, 0) if there is none any more, or if what is there could not have
    been written by us (it is then removed)."""
    st = _lstat_at(dir_fd, name)
    if st is None:
        return -1, 0
    if not _usable(st):  # looked at first: a device is never even opened
        _discard(dir_fd, name)
        return -1, 0
    try:
        fd = os.open(name, _OLD_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return -1, 0
    except OSError:  # replaced meanwhile, or not ours to write: start it afresh
        _discard(dir_fd, name)
        return -1, 0
    st = os.fstat(fd)
    if not _usable(st):
        os.close(fd)
        _discard(dir_fd, name)
        return -1, 0
    return fd, st.st_size


class _OpenFile:
    """A file being written: its descriptor, its entry, and the running hash of the
    chunks written so far, fed in order. A file fetched whole by one read of a fresh
    tree is *created by the worker* that read it (``dir_fd``, a descriptor of its
    directory that this pull owns, and ``name``; ``fd`` stays -1): see
    :meth:`_Writer._create_whole`."""

    __slots__ = ("fd", "entry", "remaining", "hasher", "dir_fd", "name")

    def __init__(self, fd: int, entry: Entry, remaining: int, hasher: blake3 | None, dir_fd: int = -1,
                 name: str = "") -> None:
        self.fd, self.entry = fd, entry
        self.remaining = remaining
        self.hasher = hasher
        self.dir_fd, self.name = dir_fd, name


class _RunBuffer:
    """Anonymous memory one run is decoded into (pages are only touched as they are
    written, and go back to the system when it is closed)."""

    __slots__ = ("mem", "view")

    def __init__(self, size: int) -> None:
        self.mem = mmap.mmap(-1, max(size, 1))
        self.view = memoryview(self.mem)

    def close(self) -> None:
        """Unmap now, unless a view of it is still alive (an error's traceback may hold
        one): then it is unmapped when the last view goes."""
        try:
            self.view.release()
            self.mem.close()
        except BufferError:
            pass


class _BufferPool:
    """The buffers runs are decoded into, reused: a pull's decoded bytes live in at most
    as many ``SPAN_RAW_BYTES + _ALIGN`` buffers as runs are in flight, rather than in every
    fetching thread's malloc arena (glibc keeps a freed chunk in the arena of the thread
    that allocated it; 16 S3 threads held over 300 MiB for a 136 MiB pipeline). A run
    larger than one (a single chunk over ``SPAN_RAW_BYTES``) gets a buffer of its own,
    unmapped as soon as it is written."""

    SIZE = SPAN_RAW_BYTES + _ALIGN

    def __init__(self) -> None:
        self.free: list[_RunBuffer] = []
        self.lock = threading.Lock()

    def take(self, size: int) -> _RunBuffer:
        if size > self.SIZE:
            return _RunBuffer(size)
        with self.lock:
            if self.free:
                return self.free.pop()
        return _RunBuffer(self.SIZE)

    def give_back(self, buf: _RunBuffer) -> None:
        if len(buf.mem) != self.SIZE:
            buf.close()
            return
        with self.lock:
            self.free.append(buf)

    def close(self) -> None:
        with self.lock:
            for buf in self.free:
                buf.close()
            self.free.clear()


class _DirRefs:
    """Descriptors of directories of the partial tree lent to the workers that create
    files in them: a duplicate of the directory's descriptor (``_Dirs`` closes its own as
    it moves on), counted by the reads that use it and closed when the last is done. On
    the main thread only."""

    def __init__(self) -> None:
        self.refs: dict[int, int] = {}  # lent descriptor -> holders (reads, and the current directory)
        self.current: tuple[tuple[str, ...], int] | None = None  # directory entered last, its lent fd

    def lend(self, parts: tuple[str, ...], dir_fd: int) -> int:
        """The lent descriptor of the directory ``parts`` (open as ``dir_fd``), held for
        the caller until :meth:`release`."""
        if self.current is None or self.current[0] != parts:
            if self.current is not None:
                self.release(self.current[1])
            dup = os.dup(dir_fd)
            self.refs[dup] = 1
            self.current = (parts, dup)
        fd = self.current[1]
        self.refs[fd] += 1
        return fd

    def release(self, fd: int) -> None:
        self.refs[fd] -= 1
        if not self.refs[fd]:
            del self.refs[fd]
            os.close(fd)

    def close(self) -> None:
        if self.current is not None:
            self.release(self.current[1])
            self.current = None


class _Writer:
    def __init__(self, store: ObjectStore, progress: Progress, workers: ThreadPoolExecutor,
                 max_inflight: int, cache: ChunkCache | None = None, source: str = "", fresh: bool = False) -> None:
        self.store, self.progress, self.workers = store, progress, workers
        self.source = source  # the manifest's key, named when a file does not match it
        self.max_inflight = max_inflight
        self.cache = cache
        # each read in flight: its future, the (file, run) parts it holds in order, its buffer,
        # where in the buffer the parts start
        self.inflight: deque[tuple[Future[SpanRead], list[tuple[_OpenFile, list[ChunkRef]]], _RunBuffer, int]] = \
            deque()
        self.batch: list[tuple[_OpenFile, list[ChunkRef]]] = []  # runs of files read with one request, not sent
        self.batch_stored = self.batch_raw = 0
        self.batch_shift = 0  # where in its buffer the batch is decoded: its first run's file offset % _ALIGN
        self.batch_bases: Bases | None = None  # the delta bases of the batch's manifest
        # delta bases, each read and decoded once while kept (bounded)
        self.decoded = DecodedBases(store, concurrent_bases_bytes(store))
        self.inflight_raw = 0  # decoded bytes of the runs in ``inflight``
        self.buffers = _BufferPool()
        self.open: list[_OpenFile] = []
        self.stats = PullStats()
        self.mask = _umask()
        #: The partial tree was made by this pull (nothing to resume): a file fetched whole
        #: by one read is created, written and closed by the worker that read it, so that
        #: files are created by several threads (one thread spent ~240 us per small file).
        self.fresh = fresh
        self.lent = _DirRefs()
        #: Whether each chunk is hashed as it is decoded. Every byte a pull writes is checked
        #: against its file's digest before the file is kept, so without a cache (which keeps
        #: only verified chunks) the chunks are not hashed too (a third of a large pull's CPU);
        #: a file that fails its digest is read again verified, to name the damaged chunk.
        self.verify_chunks = cache is not None
        self.bases: Bases | None = None  # the delta bases of the manifest being written

    def _complete(self, f: _OpenFile) -> None:
        """The last chunk of a file landed: check the whole-file digest, set the mode (on
        the descriptor: never through a name), close it."""
        assert f.hasher is not None  # (a file created by a worker never comes here)
        if f.hasher.digest() != f.entry.digest:
            raise self._mismatch(f.entry)
        os.fchmod(f.fd, _file_mode(f.entry) & ~self.mask)
        os.close(f.fd)
        f.fd = -1
        self.stats.files += 1

    def _mismatch(self, e: Entry) -> IntegrityError:
        """The error for a file whose bytes do not give its digest: the damaged chunk's
        (read again, verified, when chunks were not hashed as they came), else the
        manifest's, which lies."""
        if not self.verify_chunks:
            for run in spans(e.chunks):
                read_span_stats(self.store, run, None, bases=self.bases, shared=self.decoded)  # raises, naming it
        return IntegrityError(f"manifest {self.source} is corrupt: file {e.path!r} does not match its digest "
                              f"blake3:{e.digest.hex()} (its chunks verify, so the manifest lies)")

    def _create_whole(self, f: _OpenFile, data: memoryview) -> None:
        """On a worker: ``data`` is the whole of ``f``. Check the file digest (a one-chunk
        file's digest is its chunk's: nothing to hash again if the chunk was), then
        create the file (exclusively, never through a link; whatever is in the way is
        removed unfollowed) with its final mode (bytes that are verified already need no
        private mode while written; the kernel applies the umask, as the ``fchmod`` of
        other files does: one metadata update less per file), write it, close it."""
        e = f.entry
        if not (self.verify_chunks and len(e.chunks) == 1 and e.chunks[0].digest == e.digest) \
                and blake3(data).digest() != e.digest:
            raise self._mismatch(e)
        mode = _file_mode(e)
        try:
            fd = os.open(f.name, _NEW_FILE, mode, dir_fd=f.dir_fd)
        except FileExistsError:  # planted meanwhile (the tree was new): never followed, never kept
            _discard(f.dir_fd, f.name)
            fd = os.open(f.name, _NEW_FILE, mode, dir_fd=f.dir_fd)
        try:
            write_all(fd, [data])
        finally:
            os.close(fd)

    def _fetch(self, refs: list[ChunkRef], buf: _RunBuffer, shift: int, raw_size: int, bases: Bases | None,
               parts: list[tuple[_OpenFile, list[ChunkRef]]]) -> SpanRead:
        """On a worker: read and verify one batch of runs into ``buf`` from ``shift`` on,
        then create the files of it that are whole in it and created here
        (:meth:`_create_whole`)."""
        got = read_span_stats(self.store, refs, self.cache, buf.view[shift:shift + raw_size], bases, self.decoded,
                              verify=self.verify_chunks)
        pos = shift
        for f, run in parts:
            n = sum(r.raw_size for r in run)
            if f.dir_fd >= 0:
                with buf.view[pos:pos + n] as piece:
                    self._create_whole(f, piece)
            pos += n
        return got

    def _drain_one(self) -> None:
        """Consume the oldest read: one thread writes every file sequentially, in order,
        while the workers fetch, decode and verify the reads ahead of it."""
        fut, parts, buf, pos = self.inflight.popleft()
        raw_size = sum(r.raw_size for _, run in parts for r in run)
        self.inflight_raw -= raw_size
        try:
            got = fut.result()
            for f, run in parts:  # each file's run, back to back: one write, one hash update
                n = sum(r.raw_size for r in run)
                if f.dir_fd >= 0:  # created whole by the worker
                    self.stats.files += 1
                    pos += n
                    continue
                assert f.hasher is not None
                with buf.view[pos:pos + n] as piece:
                    write_all(f.fd, [piece])
                    f.hasher.update(piece)
                pos += n
                f.remaining -= len(run)
                if f.remaining == 0:
                    self._complete(f)
        finally:
            self._release(parts)
            self.buffers.give_back(buf)
        self.progress.advance(raw_size)
        self.stats.fetched_bytes += got.fetched_bytes
        self.stats.requests += got.requests
        self.stats.cached_bytes += got.cached_bytes

    def _add_run(self, f: _OpenFile, run: list[ChunkRef], bases: Bases | None, offset: int = 0) -> None:
        """Queue ``run`` of ``f``, starting ``offset`` bytes into the file, for reading.
        Runs of successive files that lie back to back in one pack (a push stores a
        directory's small files so) are read with one request, up to the bounds of one
        span and :data:`BATCH_FILES` files; a pull of thousands of small files otherwise
        paid a request, a task and a buffer per file. A batch is decoded into its buffer
        at its first run's ``offset`` modulo :data:`_ALIGN`."""
        stored = sum(r.stored_size for r in run)
        raw = sum(r.raw_size for r in run)
        if self.batch and bases is not self.batch_bases:
            self._send()
        self.batch_bases = bases
        if self.batch:
            last = self.batch[-1][1][-1]
            if (run[0].pack != last.pack or run[0].offset != last.offset + last.stored_size
                    or self.batch_stored + stored > fetch.SPAN_BYTES or self.batch_raw + raw > SPAN_RAW_BYTES
                    or len(self.batch) >= BATCH_FILES):
                self._send()
        if not self.batch:
            self.batch_shift = offset % _ALIGN
        self.batch.append((f, run))
        self.batch_stored += stored
        self.batch_raw += raw

    def _send(self) -> None:
        """Start reading the queued runs (one ranged request), and drain the oldest reads
        while too many are in flight."""
        if not self.batch:
            return
        parts, raw_size = self.batch, self.batch_raw
        self.batch, self.batch_stored, self.batch_raw = [], 0, 0
        refs = [r for _, run in parts for r in run]
        shift = self.batch_shift
        buf = self.buffers.take(shift + raw_size)
        try:
            fut = self.workers.submit(self._fetch, refs, buf, shift, raw_size, self.batch_bases, parts)
        except BaseException:
            self._release(parts)
            self.buffers.give_back(buf)
            raise
        self.inflight.append((fut, parts, buf, shift))
        self.inflight_raw += raw_size
        while self.inflight and (len(self.inflight) >= self.max_inflight or self.inflight_raw > INFLIGHT_RAW_BYTES):
            self._drain_one()

    def _resume(self, dir_fd: int, name: str, e: Entry) -> tuple[int, int, blake3]:
        """Open ``name`` (in ``dir_fd``) for writing after the longest prefix of whole
        chunks it already holds correctly (an interrupted pull wrote them in order); return
        (fd, chunks kept, hasher fed with them). A new file costs one ``open``."""
        hasher = blake3()
        try:
            return os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd), 0, hasher
        except FileExistsError:
            pass
        kept = offset = 0
        fd, size = _reopen(dir_fd, name)
        if fd >= 0:
            try:
                for ref in e.chunks:
                    if offset + ref.raw_size > size:
                        break
                    data = os.pread(fd, ref.raw_size, offset)
                    if len(data) != ref.raw_size or blake3(data).digest() != ref.digest:
                        break
                    hasher.update(data)
                    kept += 1
                    offset += ref.raw_size
                if offset == 0:  # nothing to keep: start a new file rather than truncate to 0
                    os.close(fd)
                    fd = -1
                    os.unlink(name, dir_fd=dir_fd)
                else:
                    os.ftruncate(fd, offset)
                    os.lseek(fd, offset, os.SEEK_SET)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
        if fd < 0:
            # A new file, never truncated: ext4 (auto_da_alloc) flushes a file truncated to
            # zero and rewritten when it is closed, which cost 0.2 s per 512 MiB here.
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd)
        self.stats.resumed_bytes += offset
        self.progress.advance(offset)
        return fd, kept, hasher

    def _release(self, parts: list[tuple[_OpenFile, list[ChunkRef]]]) -> None:
        """The read of ``parts`` is over: give back the directories lent for it."""
        for f, _ in parts:
            if f.dir_fd >= 0:
                self.lent.release(f.dir_fd)

    def write_tree(self, manifest: Manifest, dirs: _Dirs, file_name: str) -> None:
        """Write every entry below ``dirs``' top; a file version is the one file
        ``file_name`` in it."""
        bases = self.bases = manifest.base_map if manifest.bases else None  # once: one object for every batch
        for e in manifest.entries:
            name = file_name
            if manifest.kind == "dir":
                parts = e.path.split("/")
                if e.type == "d":
                    dirs.enter(parts)
                    continue
                dir_fd, name = dirs.enter(parts[:-1]), parts[-1]
                if self.fresh and e.chunks:
                    run = _one_run(e.chunks)
                    if run is not None:  # fetched whole by one read: its worker creates it
                        f = _OpenFile(-1, e, len(run), None, self.lent.lend(tuple(parts[:-1]), dir_fd), name)
                        self._add_run(f, run, bases)
                        continue
            else:
                dir_fd = dirs.top
            fd, kept, hasher = self._resume(dir_fd, name, e)
            todo = e.chunks[kept:]
            f = _OpenFile(fd, e, len(todo), hasher)
            self.open.append(f)
            if not todo:
                self._complete(f)
                continue
            offset = sum(r.raw_size for r in e.chunks[:kept])
            for run in spans(todo):
                self._add_run(f, run, bases, offset)
                offset += sum(r.raw_size for r in run)
        self._send()
        self.lent.close()
        while self.inflight:
            self._drain_one()
        self.buffers.close()

    def abort(self) -> None:
        self._release(self.batch)
        self.batch.clear()
        for fut, _, _, _ in self.inflight:
            fut.cancel()
        for fut, parts, buf, _ in self.inflight:
            try:
                fut.result()
            except BaseException:
                pass
            self._release(parts)
            self.buffers.give_back(buf)
        self.inflight.clear()
        self.lent.close()
        self.buffers.close()
        for f in self.open:
            if f.fd >= 0:
                try:
                    os.close(f.fd)
                except OSError:
                    pass
                f.fd = -1


def _file_mode(e: Entry) -> int:
    """The mode a pulled file gets before the umask: executable or not, as pushed."""
    return 0o777 if e.type == "x" else 0o666


def _one_run(chunks: list[ChunkRef]) -> list[ChunkRef] | None:
    """``chunks`` if one read takes them whole (:func:`~casreg.content.fetch.spans` makes
    them one run: one chunk, or chunks back to back in one pack within a span's bounds);
    otherwise ``None``."""
    if len(chunks) == 1:
        return chunks
    runs = list(spans(chunks))
    return runs[0] if len(runs) == 1 else None


def _tree(manifest: Manifest) -> list[dict[str, int]]:
    """A directory version's directories as a trie: node 0 is the top, each node maps a
    child's name to its node (a directory) or -1 (a file). Built in one pass over the
    paths, so its cost does not grow with the square of their depth."""
    nodes: list[dict[str, int]] = [{}]
    for e in manifest.entries:
        parts = e.path.split("/")
        node = 0
        for i, part in enumerate(parts):
            children = nodes[node]
            if i == len(parts) - 1 and e.type != "d":
                children[part] = -1
                break
            child = children.get(part, -1)
            if child < 0:  # (a path that is both a file and a directory never gets here: manifests refuse it)
                child = len(nodes)
                nodes.append({})
                children[part] = child
            node = child
    return nodes


def _drop_extras(dirs: _Dirs, manifest: Manifest) -> None:
    """A resumed partial tree may hold files an older manifest had, or anything planted in
    it; keep exactly ours (regular files where files belong, directories where
    directories do), removing the rest without following links."""
    nodes = _tree(manifest)
    todo: list[tuple[int, list[str]]] = [(0, [])]
    while todo:
        node, parts = todo.pop()
        fd = dirs.enter(parts)
        with os.scandir(fd) as it:
            found = [(e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in it]
        wanted = nodes[node]
        for name, is_dir, is_file in found:
            child = wanted.get(name)
            if child is None or not (is_file if child < 0 else is_dir):
                _discard(fd, name)
            elif child >= 0:
                todo.append((child, [*parts, name]))


def partial_path(dest: Path, manifest: Manifest) -> Path:
    """Where a pull of ``manifest`` to ``dest`` builds its result: beside the
    destination, named after the version, so a rerun finds and resumes it."""
    return dest.parent / f".{dest.name}.casreg-{manifest.hexdigest[:16]}.partial"


def _held(manifest: Manifest, tmp: Path) -> int:
    """Bytes of ``manifest``'s files a partial tree at ``tmp`` already holds, as far as a
    resumed pull could keep them (regular files of ours, reached without links)."""
    try:
        parent = os.open(tmp.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        if manifest.kind == "file":
            st = _lstat_at(parent, tmp.name)
            return min(st.st_size, manifest.size) if st is not None and _usable(st) else 0
        top = _own_dir(parent, tmp.name, tmp, create=False)
        if top < 0:
            return 0
        dirs = _Dirs(top, tmp, create=False)
        held = 0
        try:
            for e in manifest.files:
                parts = e.path.split("/")
                dir_fd = dirs.enter(parts[:-1])
                st = _lstat_at(dir_fd, parts[-1]) if dir_fd >= 0 else None
                if st is not None and _usable(st):
                    held += min(st.st_size, e.size)
        finally:
            dirs.close()
            os.close(top)
        return held
    except OSError:
        return 0
    finally:
        os.close(parent)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    x = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if x < 1024:
            return f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} TiB"


def check_space(manifest: Manifest, dest: Path) -> None:
    """Refuse (:class:`StorageError`) unless the filesystem ``dest`` will be on has room,
    for the user, for what a pull still has to write: the version's bytes less what a
    partial tree of an earlier pull already holds, plus :data:`SPACE_MARGIN` and a block
    per entry. Creates nothing; where the filesystem cannot say, nothing is refused."""
    probe = dest.parent
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    try:
        vfs = os.statvfs(probe)
    except OSError:
        return
    if not vfs.f_blocks:  # a filesystem that reports no sizes at all (some FUSE ones)
        return
    block = vfs.f_frsize or vfs.f_bsize or 4096
    free = vfs.f_bavail * block
    need = manifest.size + SPACE_MARGIN + block * len(manifest.entries)
    if need > free:  # only then is a partial tree worth looking into
        need -= _held(manifest, partial_path(dest, manifest))
    if need > free:
        raise StorageError(f"not enough space to pull to {dest}: it needs {_size(need)}, "
                           f"{probe} has {_size(free)} available")


def materialize(
    store: ObjectStore,
    manifest: Manifest,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
    cache: CacheArg = AUTO,
    source: str | None = None,
) -> PullStats:
    """Write ``manifest``'s version at ``dest`` (a file path for a file version, a
    directory for a tree). An existing ``dest`` is refused unless ``force``; with
    ``force``, a destination that already holds exactly this version is left untouched.
    A destination without room for the version is refused before anything is created
    (:func:`check_space`). Chunks come from the local cache where it has them
    (``cache``, docs/cache.md). ``source`` is the key of the manifest ``manifest`` comes
    from (by default the key of its own digest), named when a file does not match it."""
    progress = progress or NullProgress()
    source = source or manifest_key(manifest.hexdigest)
    dest = Path(dest).absolute()
    if dest.exists() or dest.is_symlink():
        if not force:
            raise AlreadyExistsError(f"destination {dest} already exists (use --force to replace it)")
        if matches(manifest, dest):
            return PullStats(size=manifest.size, files=len(manifest.files), up_to_date=True)
    check_space(manifest, dest)
    created = _make_parents(dest)
    tmp = partial_path(dest, manifest)
    cores = os.cpu_count() or 2
    nthreads = threads or (cores if store.io_concurrency == 1 else max(cores, 2 * store.io_concurrency))
    try:
        parent = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        _remove_created(created)
        raise
    progress.start("pull", manifest.size)
    try:
        # Nothing there yet: no earlier pull to resume (and should something be planted
        # meanwhile, every file is still created exclusively, whatever is in its way removed).
        fresh = manifest.kind == "dir" and _lstat_at(parent, tmp.name) is None
        top = _own_dir(parent, tmp.name, tmp) if manifest.kind == "dir" else parent
        dirs = _Dirs(top, tmp)
        try:
            if manifest.kind == "file":
                st = _lstat_at(parent, tmp.name)
                if st is not None and not _usable(st):
                    _clear(parent, tmp)
            with ThreadPoolExecutor(nthreads, thread_name_prefix="casreg-pull") as workers:
                writer = _Writer(store, progress, workers, max_inflight=nthreads + 2,
                                 cache=resolve_cache(store, cache), source=source, fresh=fresh)
                try:
                    writer.write_tree(manifest, dirs, tmp.name)
                except BaseException:
                    writer.abort()
                    raise
            if manifest.kind == "dir":
                _drop_extras(dirs, manifest)
        finally:
            dirs.close()
            if top != parent:
                os.close(top)
        _publish(parent, tmp.name, dest)
    except IntegrityError:
        _discard(parent, tmp.name)  # the registry is damaged: keep nothing built from it
        _remove_created(created)
        raise
    except BaseException:
        if _lstat_at(parent, tmp.name) is None:
            _remove_created(created)
        raise  # the partial tree stays beside dest; a rerun resumes from it
    finally:
        os.close(parent)
        progress.finish()
    writer.stats.size = manifest.size
    return writer.stats


def _clear(parent: int, tmp: Path) -> None:
    """Remove what is at ``tmp`` (in ``parent``) and could not be ours to resume."""
    try:
        _discard(parent, tmp.name)
    except PermissionError as err:
        raise AlreadyExistsError(f"cannot pull: {tmp} belongs to another user and cannot be removed "
                                 f"({err.strerror}); remove it") from None


def _remove_created(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


def _make_parents(dest: Path) -> list[Path]:
    """Create the missing parents of ``dest``, returning those created, outermost first."""
    missing = []
    parent = dest.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidInputError(f"cannot pull to {dest}: {parent} is not a directory")
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        except NotADirectoryError:
            raise InvalidInputError(f"cannot pull to {dest}: {d.parent} is not a directory") from None
        created.append(d)
    return created


def _publish(parent: int, tmp: str, dest: Path) -> None:
    """Move the verified result ``tmp`` (in ``parent``, the destination's directory) into
    place. A file replaces a file atomically; a directory cannot replace a non-empty one in
    one step, so the old tree is first moved aside (the destination is missing for that
    instant, never half-written) and removed after, its links unfollowed."""
    name = dest.name
    st = _lstat_at(parent, name)
    if st is None:
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        return
    built = os.stat(tmp, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISREG(built.st_mode) and not stat.S_ISDIR(st.st_mode):
        os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        return
    old = f".{name}.casreg-{uuid.uuid4().hex[:12]}.old"
    os.rename(name, old, src_dir_fd=parent, dst_dir_fd=parent)
    try:
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        os.rename(old, name, src_dir_fd=parent, dst_dir_fd=parent)
        raise
    _discard(parent, old)
