"""Materialising a version on local disk, verified before anything is exposed.

Everything is written into a *partial* tree beside the destination, named after the
version's digest. Worker threads fetch runs of chunks that sit next to each other in a
pack with one ranged read each, decode them and check every chunk's BLAKE3 against the
manifest; the main thread writes the chunks in order (one writer per file is measurably
cheaper than several) and feeds each file's BLAKE3, which must equal the file digest when
the file is complete. Only then is the result renamed to the destination.

If a pull stops half way (a network error, a kill), the partial tree stays beside the
destination, never at it, and the next pull of the same version resumes: complete files
and the verified leading chunks of an interrupted file are kept, and only the rest is
fetched. Corrupt data in the registry is different: the partial tree is removed and
nothing of it is kept.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from casreg.content.cache import AUTO, CacheArg, ChunkCache, resolve_cache
from casreg.content.fetch import SpanRead, read_span_stats, spans
from casreg.content.manifest import ChunkRef, Entry, Manifest
from casreg.errors import AlreadyExistsError, IntegrityError, InvalidInputError
from casreg.progress import NullProgress, Progress
from casreg.storage import ObjectStore

__all__ = ["PullStats", "materialize", "matches", "file_digest", "partial_path"]

_READ_BLOCK = 8 << 20


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
    digests, empty directories, and nothing else), without following symlinks."""
    if manifest.kind == "file":
        return _entry_matches(manifest.entries[0], dest)
    if dest.is_symlink() or not dest.is_dir():
        return False
    expected = {e.path: e for e in manifest.entries}
    seen = 0
    for dirpath, dirs, files in os.walk(dest):
        rel = Path(dirpath).relative_to(dest).as_posix()
        prefix = "" if rel == "." else rel + "/"
        if prefix and not dirs and not files:
            e = expected.get(rel)
            if e is None or e.type != "d":
                return False
            seen += 1
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            f = expected.get(prefix + name)
            if f is None or f.type == "d" or not _entry_matches(f, Path(dirpath, name)):
                return False
            seen += 1
    return seen == len(expected)


def _entry_matches(e: Entry, path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    if not path.is_file() or path.is_symlink() or st.st_size != e.size:
        return False
    if bool(st.st_mode & 0o100) != (e.type == "x"):
        return False
    return file_digest(path) == e.digest


class _OpenFile:
    """A file being written: its descriptor, its entry, and the running hash of the
    chunks written so far, fed in order."""

    __slots__ = ("fd", "path", "entry", "remaining", "hasher")

    def __init__(self, fd: int, path: Path, entry: Entry, remaining: int, hasher: blake3) -> None:
        self.fd, self.path, self.entry = fd, path, entry
        self.remaining = remaining
        self.hasher = hasher


class _Writer:
    def __init__(self, store: ObjectStore, progress: Progress, workers: ThreadPoolExecutor,
                 max_inflight: int, cache: ChunkCache | None = None) -> None:
        self.store, self.progress, self.workers = store, progress, workers
        self.max_inflight = max_inflight
        self.cache = cache
        self.inflight: deque[tuple[Future[SpanRead], _OpenFile, list[ChunkRef]]] = deque()
        self.open: list[_OpenFile] = []
        self.stats = PullStats()
        self.mask = _umask()

    @staticmethod
    def _write(fd: int, raw: bytes) -> None:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]

    def _complete(self, f: _OpenFile) -> None:
        """The last chunk of a file landed: close it, check the whole-file digest, set the mode."""
        os.close(f.fd)
        f.fd = -1
        if f.hasher.digest() != f.entry.digest:
            raise IntegrityError(
                f"file {f.entry.path!r} does not match its digest blake3:{f.entry.digest.hex()} after writing"
            )
        os.chmod(f.path, (0o777 if f.entry.type == "x" else 0o666) & ~self.mask)
        self.stats.files += 1

    def _drain_one(self) -> None:
        """Consume the oldest span: one thread writes every file sequentially, in order,
        while the workers fetch, decode and verify the spans ahead of it."""
        fut, f, refs = self.inflight.popleft()
        got = fut.result()
        for ref, raw in zip(refs, got.chunks):
            self._write(f.fd, raw)
            f.hasher.update(raw)
            self.progress.advance(ref.raw_size)
        self.stats.fetched_bytes += got.fetched_bytes
        self.stats.requests += got.requests
        self.stats.cached_bytes += got.cached_bytes
        f.remaining -= len(refs)
        if f.remaining == 0:
            self._complete(f)

    def _resume(self, target: Path, e: Entry) -> tuple[int, int, blake3]:
        """Open ``target`` for writing after the longest prefix of whole chunks it already
        holds correctly (an interrupted pull wrote them in order); return (fd, chunks kept,
        hasher fed with them)."""
        hasher = blake3()
        kept = 0
        offset = 0
        try:
            st = target.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and not target.is_file():
            _remove(target)
            st = None
        if st is not None:
            with open(target, "rb") as fh:
                for ref in e.chunks:
                    data = fh.read(ref.raw_size)
                    if len(data) != ref.raw_size or blake3(data).digest() != ref.digest:
                        break
                    hasher.update(data)
                    kept += 1
                    offset += ref.raw_size
        if st is not None and offset == 0:
            _remove(target)  # nothing to keep: start a new file rather than truncate to 0
            st = None
        if st is None:
            # A new file, never truncated: ext4 (auto_da_alloc) flushes a file truncated to
            # zero and rewritten when it is closed, which cost 0.2 s per 512 MiB here.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        else:
            fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW)
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        self.stats.resumed_bytes += offset
        self.progress.advance(offset)
        return fd, kept, hasher

    def write_tree(self, manifest: Manifest, root: Path) -> None:
        for e in manifest.entries:
            target = root / e.path if manifest.kind == "dir" else root
            if e.type == "d":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, kept, hasher = self._resume(target, e)
            todo = e.chunks[kept:]
            f = _OpenFile(fd, target, e, len(todo), hasher)
            self.open.append(f)
            if not todo:
                self._complete(f)
                continue
            for run in spans(todo):
                self.inflight.append((self.workers.submit(read_span_stats, self.store, run, self.cache), f, run))
                if len(self.inflight) >= self.max_inflight:
                    self._drain_one()
        while self.inflight:
            self._drain_one()

    def abort(self) -> None:
        for fut, _, _ in self.inflight:
            fut.cancel()
        for fut, _, _ in self.inflight:
            try:
                fut.result()
            except BaseException:
                pass
        for f in self.open:
            if f.fd >= 0:
                try:
                    os.close(f.fd)
                except OSError:
                    pass
                f.fd = -1


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def partial_path(dest: Path, manifest: Manifest) -> Path:
    """Where a pull of ``manifest`` to ``dest`` builds its result: beside the
    destination, named after the version, so a rerun finds and resumes it."""
    return dest.parent / f".{dest.name}.casreg-{manifest.hexdigest[:16]}.partial"


def materialize(
    store: ObjectStore,
    manifest: Manifest,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
    cache: CacheArg = AUTO,
) -> PullStats:
    """Write ``manifest``'s version at ``dest`` (a file path for a file version, a
    directory for a tree). An existing ``dest`` is refused unless ``force``; with
    ``force``, a destination that already holds exactly this version is left untouched.
    Chunks come from the local cache where it has them (``cache``, docs/cache.md)."""
    progress = progress or NullProgress()
    dest = Path(dest).absolute()
    if dest.exists() or dest.is_symlink():
        if not force:
            raise AlreadyExistsError(f"destination {dest} already exists (use --force to replace it)")
        if matches(manifest, dest):
            return PullStats(size=manifest.size, files=len(manifest.files), up_to_date=True)
    created = _make_parents(dest)
    tmp = partial_path(dest, manifest)
    cores = os.cpu_count() or 2
    nthreads = threads or (cores if store.io_concurrency == 1 else max(cores, 2 * store.io_concurrency))
    progress.start("pull", manifest.size)
    try:
        if manifest.kind == "dir":
            if tmp.exists() and not tmp.is_dir():
                _remove(tmp)
            tmp.mkdir(exist_ok=True)
        with ThreadPoolExecutor(nthreads, thread_name_prefix="casreg-pull") as workers:
            writer = _Writer(store, progress, workers, max_inflight=nthreads + 2, cache=resolve_cache(store, cache))
            try:
                writer.write_tree(manifest, tmp)
            except BaseException:
                writer.abort()
                raise
        if manifest.kind == "dir":
            _drop_extras(tmp, manifest)
        _publish(tmp, dest)
    except IntegrityError:
        _remove(tmp)  # the registry is damaged: keep nothing built from it
        _remove_created(created)
        raise
    except BaseException:
        if not tmp.exists():
            _remove_created(created)
        raise  # the partial tree stays beside dest; a rerun resumes from it
    finally:
        progress.finish()
    writer.stats.size = manifest.size
    return writer.stats


def _remove_created(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


def _drop_extras(tmp: Path, manifest: Manifest) -> None:
    """A resumed partial tree may hold files an older manifest had; keep exactly ours."""
    wanted = {e.path for e in manifest.entries}
    parents = {p for e in manifest.entries for p in _parents(e.path)}
    for dirpath, dirs, files in os.walk(tmp, topdown=False):
        rel = Path(dirpath).relative_to(tmp).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for name in files:
            if prefix + name not in wanted:
                os.unlink(os.path.join(dirpath, name))
        for name in dirs:
            path = prefix + name
            if path not in wanted and path not in parents:
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)


def _parents(path: str) -> Iterator[str]:
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path


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


def _publish(tmp: Path, dest: Path) -> None:
    """Move the verified result into place. A file replaces atomically; a directory
    cannot replace a non-empty one in one step, so the old tree is first moved aside
    (the destination is missing for that instant, never half-written)."""
    if not (dest.exists() or dest.is_symlink()):
        os.rename(tmp, dest)
        return
    if tmp.is_file() and (dest.is_file() or dest.is_symlink()):
        os.replace(tmp, dest)
        return
    old = dest.parent / f".{dest.name}.casreg-{uuid.uuid4().hex[:12]}.old"
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    _remove(old)
