"""A registry in a local directory (the default).

Create-if-absent: the bytes go to a temporary file in the target directory, are fsynced,
and are hard-linked into place; ``link`` fails if the name exists, so a reader never sees
a partial object and two writers never both win (``open(..., "x")`` would expose a
half-written file). Compare-and-swap: an ``flock`` on a sibling lock file serialises
swappers, and ``os.replace`` publishes the new bytes atomically. Tokens are the BLAKE3 of
the current bytes, so they need no extra state.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from blake3 import blake3

from casreg.errors import ConflictError, IntegrityError, NotFoundError, StorageError
from casreg.storage.base import (
    Buffer,
    ByteRange,
    Capabilities,
    Leftover,
    ObjectInfo,
    ObjectStore,
    ObjectWriter,
    Payload,
    Versioned,
    check_key,
    utc,
)

__all__ = ["LocalStore"]

_TMP_PREFIX = ".tmp-"
_LOCKS = ".locks"  # swap locks live in their own tree, so no lock name can shadow a key
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _write_all(fd: int, parts: list[bytes | bytearray | memoryview]) -> None:
    """``writev`` every part, resuming after short writes, at most IOV_MAX at a time."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    limit = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
    while views:
        n = os.writev(fd, views[:limit])
        while n and views:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0], n = views[0][n:], 0


def _token(data: bytes) -> str:
    return blake3(data).hexdigest()[:32]


class _StagedFile(ObjectWriter):
    """Writes go straight to a temporary file in the target directory tree; publishing is
    fsync + ``link`` (create-if-absent, as :meth:`LocalStore.create`). Nothing is held in
    memory, so a push's resident set does not grow with the pack size."""

    def __init__(self, store: LocalStore, directory: Path) -> None:
        super().__init__(store)
        self.local = store
        self.fd = -1
        self.synced = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as err:
            raise store._fail(err, "write", str(directory.relative_to(store.root))) from err

    def write(self, data: Buffer) -> None:
        try:
            _write_all(self.fd, [data])
        except OSError as err:
            raise self.local._fail(err, "write", self.path.relative_to(self.local.root).as_posix()) from err
        self.size += len(data)

    def publish(self, key: str, *, size: int) -> bool:
        self.check_size(key, size)
        try:
            on_disk = os.fstat(self.fd).st_size
        except OSError as err:
            raise self.local._fail(err, "write", key) from err
        if on_disk != size:  # a write the kernel took short, or a file changed under us
            raise IntegrityError(f"refusing to publish {key}: its staged file holds {on_disk} bytes, not {size}")
        if not self.synced:
            try:
                os.fsync(self.fd)
            except OSError as err:
                raise self.local._fail(err, "write", key) from err
            self.synced = True
        return self.local._link(self.path, key)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.path.unlink(missing_ok=True)


class LocalStore(ObjectStore):
    """A registry in a local directory (see the module docstring)."""

    capabilities = Capabilities(list_after=False, object_times=True, leftovers=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"registry {self.url} is not a directory")

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _missing(self, key: str) -> NotFoundError:
        return NotFoundError(f"object {key} not found in {self.url}")

    def _fail(self, err: OSError, action: str, key: str) -> StorageError:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StorageError(f"registry {self.url} is read-only: cannot {action} {key} ({err.strerror})")
        if err.errno == errno.ENOSPC:
            return StorageError(f"registry {self.url} is out of space while trying to {action} {key}")
        return StorageError(f"registry {self.url}: cannot {action} {key}: {err.strerror or err}")

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if byte_range is None:
                    return f.read()
                return os.pread(f.fileno(), byte_range.length, byte_range.start)
        except _MISSING:
            raise self._missing(key) from None
        except OSError as err:
            raise self._fail(err, "read", key) from err

    def read_ranges(self, key: str, ranges: list[ByteRange]) -> list[bytes]:  # type: ignore[override]
        try:
            with open(self._path(key), "rb") as f:
                fd = f.fileno()
                return [os.pread(fd, r.length, r.start) for r in ranges]
        except _MISSING:
            raise self._missing(key) from None
        except OSError as err:
            raise self._fail(err, "read", key) from err

    def _write_temp(self, path: Path, data: Payload) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        with open(tmp, "xb") as f:
            _write_all(f.fileno(), parts)
            os.fsync(f.fileno())
        return tmp

    def create(self, key: str, data: Payload) -> bool:
        path = self._path(key)
        if path.is_file():
            return False
        try:
            tmp = self._write_temp(path, data)
        except OSError as err:
            raise self._fail(err, "write", key) from err
        try:
            return self._link(tmp, key)
        finally:
            tmp.unlink(missing_ok=True)

    def _link(self, tmp: Path, key: str) -> bool:
        """Publish a complete, fsynced temporary file under ``key`` unless it exists:
        ``link`` fails if the name is taken, so of racing writers exactly one wins."""
        path = self._path(key)
        if path.is_file():
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            raise self._fail(err, "write", key) from err

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            st = self._path(key).stat()
        except _MISSING:
            raise self._missing(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise self._missing(key)
        return st.st_size

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except _MISSING:
            return None
        return ObjectInfo(st.st_size, utc(st.st_mtime)) if stat.S_ISREG(st.st_mode) else None

    def list(self, prefix: str) -> Iterator[str]:
        prefix = prefix.strip("/")
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            yield prefix
            return
        if not base.is_dir():
            return
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for f in files:
                if f.startswith("."):
                    continue
                yield f"{rel}/{f}" if rel != "." else f

    def read_versioned(self, key: str) -> Versioned | None:
        try:
            data = self._path(key).read_bytes()
        except _MISSING:
            return None
        except OSError as err:
            raise self._fail(err, "read", key) from err
        return Versioned(data, _token(data))

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        path = self._path(key)
        try:
            lock_path = self.root / _LOCKS / f"{key}.lock"
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lock_path, "a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                current = self.read_versioned(key)
                current_token = current.token if current else None
                if current_token != expected:
                    raise ConflictError(f"{key} changed since it was read (someone else wrote it first)")
                tmp = self._write_temp(path, data)
                os.replace(tmp, path)
                return _token(data)
        except OSError as err:
            raise self._fail(err, "write", key) from err

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise self._fail(err, "delete", key) from err

    def open_writer(self, prefix: str) -> ObjectWriter:
        return _StagedFile(self, self._path(prefix.strip("/")))

    def leftovers(self) -> Iterator[Leftover]:
        """Temporary files (``.tmp-*``) of writes that never completed: a push killed
        while staging a pack, a crash between writing and linking an object."""
        if not self.root.is_dir():
            return
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                if not f.startswith(_TMP_PREFIX):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield Leftover(os.path.relpath(path, self.root).replace(os.sep, "/"), st.st_size, utc(st.st_mtime))

    def delete_leftover(self, name: str, *, dry_run: bool = False) -> bool:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or not parts[-1].startswith(_TMP_PREFIX) \
                or any(p.startswith(".") for p in parts[:-1]):
            return False  # not one of ours: a damaged gc record must not make this delete anything else
        path = self.root / name
        if dry_run:
            return path.is_file() and not path.is_symlink()
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise self._fail(err, "delete", name) from err

    def check_writable(self) -> None:
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"registry {self.url} is not a directory ({probe} is a file)")
        if not os.access(probe, os.W_OK):
            raise StorageError(f"registry {self.url} is read-only (no write permission on {probe})")
