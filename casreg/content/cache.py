"""A local, content-addressed cache of chunks read from remote registries.

Why: a serving host that pulls the same model twice, or reads tensors of it through
``casreg://`` again and again, should not pay an S3 GET (and its egress bill) for bytes it
already has. Chunks are identified by the BLAKE3 of their raw bytes, so one cache can be
shared by every registry and every process of a user: a chunk's digest says what it is,
not where it came from.

Layout (``root`` below; docs/cache.md)::

    root/CACHEDIR.TAG          marks the directory as a cache for backup tools
    root/chunks/<aa>/<hex>     the raw (decoded) bytes of the chunk whose BLAKE3 is <hex>
    root/tmp/                  entries being written

Contract:

- **Verified on write and on read.** Nothing enters the cache unless its BLAKE3 equals
  its name (``put`` hashes; ``read_span`` stores only chunks it has just verified), and
  ``get`` re-hashes every entry it returns; a damaged entry (bit rot, a torn write after a
  crash, someone's edit) is deleted and reported as a miss, so the caller refetches it.
  A cache never returns wrong bytes.
- **Atomic writes**: an entry is written under ``tmp/`` and renamed into place, so a
  concurrent reader sees the whole entry or none. Two writers of one chunk write the same
  bytes; the last rename wins harmlessly. No fsync: a torn entry is caught by the hash.
- **Bounded**: ``max_size`` (``CASREG_CACHE_MAX_SIZE``, default 20 GiB). Every hit
  refreshes the entry's mtime, and :meth:`ChunkCache.prune` deletes least recently used
  entries first. The cache prunes itself once it has added a tenth of its bound since the
  last check, so it stays within about 10 % of the bound without a daemon.
- **Never in the way**: a cache directory that cannot be created or written (read-only,
  full, a file in the way) turns the cache off for writes in this process, with one
  logged warning that says why; reads keep working from the registry.

Which registries use it (:func:`cache_for`): ``CASREG_CACHE`` = ``auto`` (default:
remote registries only, i.e. anything but a local path and ``memory://``), ``on`` (every
registry, e.g. a registry directory on NFS) or ``off``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from casreg.errors import InvalidInputError
from casreg.storage.fileio import write_all

if TYPE_CHECKING:
    from casreg.storage import ObjectStore

__all__ = [
    "AUTO",
    "CacheArg",
    "ChunkCache",
    "CacheInfo",
    "PruneResult",
    "cache_for",
    "cache_mode",
    "default_cache_dir",
    "default_max_size",
    "parse_size",
    "resolve_cache",
]

log = logging.getLogger(__name__)

DIR_ENV = "CASREG_CACHE_DIR"
MODE_ENV = "CASREG_CACHE"
MAX_SIZE_ENV = "CASREG_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 20 << 30
_TMP_MAX_AGE = 3600.0  # a temporary entry older than this was left by a crashed writer
_CACHEDIR_TAG = (b"Signature: 8a477f597d28d172789f06886806bc55\n"
                 b"# This file marks the casreg chunk cache (docs/cache.md); backup tools may skip it.\n")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1,
          "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5,
          "ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
          "ti": 1 << 40, "tib": 1 << 40, "pi": 1 << 50, "pib": 1 << 50}
_OFF = {"off", "0", "false", "no", "never", "disabled"}
_ON = {"on", "1", "true", "yes", "always"}


def parse_size(text: str | int) -> int:
    """``"10GB"`` (10**10), ``"10GiB"`` (10 * 2**30), ``"500M"``, ``"1.5TB"`` or a plain
    number of bytes. Decimal units are what disks are sold in; binary ones are accepted."""
    if isinstance(text, int):
        if text < 0:
            raise InvalidInputError(f"a size cannot be negative: {text}")
        return text
    m = _SIZE.fullmatch(text)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise InvalidInputError(f"cannot read {text!r} as a size; expected e.g. 10GB, 500MiB or 1073741824")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def default_cache_dir() -> Path:
    """``$CASREG_CACHE_DIR``, else ``$XDG_CACHE_HOME/casreg``, else ``~/.cache/casreg``."""
    explicit = os.environ.get(DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "casreg").absolute()


def default_max_size() -> int:
    """``$CASREG_CACHE_MAX_SIZE`` (e.g. ``50GB``), else 20 GiB."""
    text = os.environ.get(MAX_SIZE_ENV, "").strip()
    return parse_size(text) if text else DEFAULT_MAX_SIZE


def cache_mode() -> str:
    """``auto``, ``on`` or ``off``, from ``CASREG_CACHE`` (unknown values: a clear error)."""
    text = os.environ.get(MODE_ENV, "").strip().lower()
    if not text or text == "auto":
        return "auto"
    if text in _OFF:
        return "off"
    if text in _ON:
        return "on"
    raise InvalidInputError(f"CASREG_CACHE={text!r}: expected auto, on or off")


def is_remote(url: str) -> bool:
    """Whether reads of this registry cross a network: everything but a local path
    (``file://`` included) and the in-process ``memory://``."""
    return "://" in url and not url.startswith(("file://", "memory://"))


@dataclass(frozen=True, slots=True)
class CacheInfo:
    path: str
    entries: int  # chunks
    bytes: int  # of chunks
    max_size: int
    mode: str  # auto | on | off (CASREG_CACHE)
    temporary: int  # entries being written (or left by a crashed writer)
    indexes: int = 0  # pack indexes (a push's list of what a registry holds)
    index_bytes: int = 0
    bundles: int = 0  # index bundles (many pack indexes in one entry, docs/FORMAT.md §4.3)
    bundle_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PruneResult:
    removed_entries: int
    removed_bytes: int
    entries: int
    bytes: int
    max_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChunkCache:
    """One cache directory. Thread-safe; several processes may share one directory."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, max_size: int | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root is not None else default_cache_dir()
        self.max_size = parse_size(max_size) if max_size is not None else default_max_size()
        self._chunks = self.root / "chunks"
        self._indexes = self.root / "indexes"  # pack indexes, named by their BLAKE3 like chunks
        self._bundles = self.root / "bundles"  # index bundles, named by their id (checked as they are read)
        self._tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self._ready = False  # directories made
        self._writable = True  # false after the first failed write: stop trying, warn once
        self._warned: set[str] = set()
        self._added = 0  # bytes added since the last size check
        self.hits = 0
        self.misses = 0
        self.dropped = 0  # damaged entries deleted

    def __repr__(self) -> str:
        return f"ChunkCache({str(self.root)!r}, max_size={self.max_size})"

    # -- paths ------------------------------------------------------------------------------
    def path(self, digest: bytes, *, index: bool = False) -> Path:
        h = digest.hex()
        return (self._indexes if index else self._chunks) / h[:2] / h

    def _warn_once(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning("%s", message)

    # -- reads --------------------------------------------------------------------------------
    def get(self, digest: bytes, size: int | None = None, *, index: bool = False) -> bytes | None:
        """The chunk's bytes if cached and intact, else ``None``. A damaged entry (wrong
        length or hash) is deleted, so the caller's refetch replaces it. ``index=True``:
        the pack index named ``digest`` (casreg.content.packs.ChunkIndex.load) instead."""
        path = self.path(digest, index=index)
        try:
            data = _read_entry(path, size if size is not None else MAX_ENTRY_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except OSError as err:  # unreadable: behave as a miss, say so once
            self._warn_once("read", f"casreg cache {self.root}: cannot read entries ({err.strerror or err}); "
                                    "reading from the registry instead")
            self.misses += 1
            return None
        if data is None or (size is not None and len(data) != size) or blake3(data).digest() != digest:
            self.dropped += 1
            self.misses += 1
            self._warn_once("damaged", f"casreg cache {self.root}: dropped damaged entry {path.name} "
                                       "(it will be fetched again from the registry)")
            try:
                path.unlink()
            except OSError:
                pass
            return None
        try:
            os.utime(path)  # least recently *used*: a hit counts as a use
        except OSError:
            pass
        self.hits += 1
        return data

    def __contains__(self, digest: bytes) -> bool:
        return self.path(digest).is_file()

    def has_index(self, digest: bytes) -> bool:
        return self.path(digest, index=True).is_file()

    def bundle_path(self, bundle_id: str) -> Path:
        return self._bundles / bundle_id[:2] / bundle_id

    def open_bundle(self, bundle_id: str) -> CachedBundle | None:
        """The cached copy of the index bundle ``bundle_id``, to read ranges of, or ``None``
        (absent, or not a regular file: a planted link or FIFO is not followed). Unlike a
        chunk, a bundle is not hashed on every hit: its reader checks its directory against
        its id and every index it takes from it against its pack id
        (casreg.content.bundles), and calls :meth:`drop_bundle` when one fails."""
        if _HEX64.fullmatch(bundle_id) is None:
            return None
        path = self.bundle_path(bundle_id)
        try:
            fd = os.open(path, _ENTRY_FLAGS)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            os.utime(fd)  # least recently *used*
        except OSError:
            os.close(fd)
            return None
        self.hits += 1
        return CachedBundle(fd, st.st_size)

    def drop_bundle(self, bundle_id: str) -> None:
        """Delete a cached bundle found damaged (the next load fetches it again)."""
        self.dropped += 1
        self._warn_once("damaged", f"casreg cache {self.root}: dropped damaged entry {bundle_id} "
                                   "(it will be fetched again from the registry)")
        try:
            self.bundle_path(bundle_id).unlink()
        except OSError:
            pass

    def put_bundle(self, bundle_id: str, parts: Iterable[bytes | None], size: int) -> bool:
        """Store the bundle ``bundle_id`` from ``parts``, its bytes in order; nothing is
        stored if a part is ``None`` (a failed read) or they do not add up to ``size``.
        Whether it was stored (``False`` as well when the cache is unusable, or when the
        bundle is more than half of the cache's bound: it would push out everything else)."""
        if not self._writable or size > self.max_size // 2 or _HEX64.fullmatch(bundle_id) is None:
            return False
        path = self.bundle_path(bundle_id)
        tmp = self._tmp / f"bundle-{bundle_id[:16]}-{uuid.uuid4().hex}"
        written = 0
        try:
            self._setup()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb", buffering=0) as f:
                for part in parts:
                    if part is None:
                        break
                    write_all(f.fileno(), [part])
                    written += len(part)
            if written != size:
                tmp.unlink(missing_ok=True)
                return False
            os.replace(tmp, path)
        except OSError as err:
            return self._give_up(tmp, err)
        self._account(size)
        return True

    # -- writes -------------------------------------------------------------------------------
    def put(self, digest: bytes, data: bytes | memoryview) -> bool:
        """Store ``data`` as the chunk ``digest`` after checking that it is; raises
        ``ValueError`` if the bytes do not match. Returns whether the entry was written
        (``False`` when the cache is unusable: see the class docstring)."""
        if blake3(data).digest() != digest:
            raise ValueError(f"refusing to cache bytes under blake3:{digest.hex()}: they do not match that digest")
        return self.put_verified(digest, data)

    def put_verified(self, digest: bytes, data: bytes | memoryview, *, index: bool = False) -> bool:
        """Store bytes the caller has *just* verified against ``digest`` (``read_span``
        hashes every chunk it fetches; hashing again here would cost a second pass).
        ``index=True``: a pack index, kept apart from the chunks."""
        if not self._writable:
            return False
        path = self.path(digest, index=index)
        tmp = self._tmp / f"{digest.hex()[:16]}-{uuid.uuid4().hex}"
        for attempt in (1, 2):
            try:
                self._setup()
                path.parent.mkdir(exist_ok=True)
                with open(tmp, "xb", buffering=0) as f:
                    write_all(f.fileno(), [data])
                os.replace(tmp, path)
                break
            except FileNotFoundError as err:
                if attempt == 1 and self._ready:  # `cache clear` elsewhere removed our directories
                    self._ready = False
                    continue
                self._disable(err)
                return False
            except OSError as err:
                return self._give_up(tmp, err)
        self._account(len(data))
        return True

    def _give_up(self, tmp: Path, err: OSError) -> bool:
        """A write failed: remove its temporary, stop writing (:meth:`_disable`), ``False``."""
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        self._disable(err)
        return False

    def _account(self, size: int) -> None:
        """Count ``size`` bytes added; prune once a tenth of the bound was added since."""
        with self._lock:
            self._added += size
            check = self._added >= max(self.max_size // 10, 1)
            if check:
                self._added = 0
        if check:
            try:
                self.prune()
            except OSError as err:
                self._warn_once("prune", f"casreg cache {self.root}: cannot prune ({err.strerror or err})")

    def _setup(self) -> None:
        if self._ready:
            return
        self._chunks.mkdir(parents=True, exist_ok=True)
        self._indexes.mkdir(exist_ok=True)
        self._bundles.mkdir(exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            tag.write_bytes(_CACHEDIR_TAG)
        self._ready = True

    def _disable(self, err: OSError) -> None:
        self._writable = False
        if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT or err.errno == errno.EFBIG:
            why = "the disk is full (or a quota or file-size limit was reached)"
        elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why = "it is read-only"
        elif err.errno in (errno.ENOTDIR, errno.EEXIST):
            why = f"a file is in the way ({err.filename or self.root})"
        else:
            why = err.strerror or str(err)
        self._warn_once("write", f"casreg cache {self.root} cannot store chunks: {why}; reading from the registry "
                                 f"without caching (set {DIR_ENV} to another directory, or {MODE_ENV}=off)")

    # -- maintenance --------------------------------------------------------------------------
    def _entries(self, *, index: bool = False, bundles: bool = False) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every chunk entry (``index=True``: every index entry;
        ``bundles=True``: every bundle)."""
        out: list[tuple[float, int, Path]] = []
        try:
            subdirs = list(os.scandir(self._bundles if bundles else self._indexes if index else self._chunks))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for sub in subdirs:
            if not sub.is_dir(follow_symlinks=False):
                continue
            try:
                for e in os.scandir(sub.path):
                    if _HEX64.fullmatch(e.name):
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # pruned or dropped meanwhile
                        out.append((st.st_mtime, st.st_size, Path(e.path)))
            except FileNotFoundError:
                continue
        return out

    def _temporaries(self) -> list[Path]:
        try:
            return [Path(e.path) for e in os.scandir(self._tmp)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def info(self) -> CacheInfo:
        """Location, entry count and bytes (a scan of the directory; no locking needed)."""
        entries, indexes, bundles = self._entries(), self._entries(index=True), self._entries(bundles=True)
        return CacheInfo(str(self.root), len(entries), sum(s for _, s, _ in entries), self.max_size,
                         cache_mode(), len(self._temporaries()), len(indexes), sum(s for _, s, _ in indexes),
                         len(bundles), sum(s for _, s, _ in bundles))

    def prune(self, max_size: int | str | None = None) -> PruneResult:
        """Delete least recently used entries until at most ``max_size`` bytes remain
        (default: this cache's bound), and temporaries left by crashed writers. Safe while
        other processes read and write: a reader that loses an entry sees a miss."""
        limit = self.max_size if max_size is None else parse_size(max_size)
        now = time.time()
        for tmp in self._temporaries():
            try:
                if now - tmp.stat().st_mtime > _TMP_MAX_AGE:
                    tmp.unlink()
            except OSError:
                pass
        entries = sorted(self._entries() + self._entries(index=True) + self._entries(bundles=True),
                         key=lambda e: e[0])
        total = sum(s for _, s, _ in entries)
        removed = removed_bytes = 0
        for _, size, path in entries:
            if total <= limit:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= size
            removed += 1
            removed_bytes += size
        return PruneResult(removed, removed_bytes, len(entries) - removed, total, limit)

    def clear(self) -> PruneResult:
        """Delete every entry, and the packs confirmed under this directory
        (``verified-packs/``, casreg.content.trust: pushes read such packs back once
        more); the directory itself stays."""
        result = self.prune(0)
        for tmp in self._temporaries():
            try:
                tmp.unlink()
            except OSError:
                pass
        shutil.rmtree(self._chunks, ignore_errors=True)
        shutil.rmtree(self._indexes, ignore_errors=True)
        shutil.rmtree(self._bundles, ignore_errors=True)
        shutil.rmtree(self.root / "verified-packs", ignore_errors=True)
        self._ready = False
        return result


#: The largest entry read without an expected size (a pack index; the registry bounds
#: those at 64 MiB): a planted huge file is dropped, not read into memory.
MAX_ENTRY_BYTES = 64 << 20
_ENTRY_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_entry(path: Path, limit: int) -> bytes | None:
    """The bytes of the entry at ``path``, or ``None`` for something that cannot be one:
    not a regular file (a FIFO would block a plain ``open``; a link is not followed), or
    larger than ``limit`` (the size the entry must have, or :data:`MAX_ENTRY_BYTES`)."""
    try:
        fd = os.open(path, _ENTRY_FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symbolic link
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            # what fstat saw and one byte more (a file grown since reads as too long): asking
            # for ``limit + 1`` made every index hit allocate 64 MiB, to shrink it again
            return f.read(st.st_size + 1)
    finally:
        os.close(fd)


class CachedBundle:
    """An open cached bundle (:meth:`ChunkCache.open_bundle`): its size and ranges of its
    bytes. Close it when done (or use it as a context manager)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def read(self, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)``, or ``None`` if they cannot all be read (truncated since)."""
        try:
            data = os.pread(self._fd, end - start, start)
        except OSError:
            return None
        return data if len(data) == end - start else None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CachedBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CACHES: dict[tuple[Path, int], ChunkCache] = {}
_CACHES_LOCK = threading.Lock()


def shared_cache(root: Path | None = None, max_size: int | None = None) -> ChunkCache:
    """The process's one :class:`ChunkCache` for a directory (its warn-once state and
    size accounting are per instance, so every reader of a directory shares it)."""
    root = root or default_cache_dir()
    size = max_size if max_size is not None else default_max_size()
    with _CACHES_LOCK:
        cache = _CACHES.get((root, size))
        if cache is None:
            cache = _CACHES[(root, size)] = ChunkCache(root, max_size=size)
        return cache


def cache_for(store: ObjectStore) -> ChunkCache | None:
    """The cache reads of ``store`` go through, or ``None``: by ``CASREG_CACHE`` (auto:
    remote registries only, see :func:`is_remote`). The environment is read on every call
    (a few dictionary lookups), so a test or a process can switch it at any time."""
    mode = cache_mode()
    if mode == "off" or (mode == "auto" and not is_remote(store.url)):
        return None
    return shared_cache()


class _Auto:
    """Type of :data:`AUTO`: "the cache :func:`cache_for` picks for the store"."""

    def __repr__(self) -> str:
        return "AUTO"


#: Default of every ``cache=`` argument: the cache ``CASREG_CACHE`` selects for the store
#: (remote registries only, by default; docs/cache.md). ``None`` reads the registry only.
AUTO: _Auto = _Auto()
CacheArg = ChunkCache | None | _Auto


def resolve_cache(store: ObjectStore, cache: CacheArg = AUTO) -> ChunkCache | None:
    """``cache`` itself, or for :data:`AUTO` the one :func:`cache_for` picks for ``store``."""
    return cache_for(store) if isinstance(cache, _Auto) else cache
