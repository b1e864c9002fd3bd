"""A registry in a local directory (the default).

Create-if-absent: the bytes go to a temporary file in the target directory, are fsynced,
and are hard-linked into place; ``link`` fails if the name exists, so a reader never sees
a partial object and two writers never both win (``open(..., "x")`` would expose a
half-written file). Compare-and-swap: an ``flock`` on a sibling lock file serialises
swappers, and ``os.replace`` publishes the new bytes atomically. Tokens are the BLAKE3 of
the current bytes, so they need no extra state.

**Only regular files are objects, and no link below the root is followed.** Every file
in a registry is treated as hostile: a key is reached from the root one directory at a
time (``openat`` with ``O_NOFOLLOW``), so a symbolic link anywhere below the root (a key
itself, or a directory on the way to it such as ``manifests``) is never followed, and the
final name is opened with ``O_NOFOLLOW | O_NONBLOCK`` and ``fstat``-ed before a byte is
read, so a FIFO cannot block a command and a link to ``/dev/zero`` cannot fill memory.
Reading, sizing, testing or creating a key that holds anything but a regular file (a
symbolic link, a FIFO, a socket, a device) raises :class:`IntegrityError` naming it:
never :class:`NotFoundError`, which would make a push write around it. ``create`` and
``swap`` never write through such a name either. A directory under a key's name is, as
the contract says of a prefix of keys, no object (reads find it missing), but ``create``
cannot place an object there and says so rather than report it as existing. The root
itself, which the user names, may be or lie below a symbolic link (``~/.casreg`` pointing
to a larger disk); to put part of a registry on another disk, mount it there. Hard links
are not refused: a regular file is read as it is, and its bytes verified by the layers
above like any other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from blake3 import blake3

from casreg.errors import CasregError, ConflictError, IntegrityError, NotFoundError, StorageError
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
from casreg.storage.fileio import write_all

__all__ = ["LocalStore"]

_TMP_PREFIX = ".tmp-"
_LOCKS = ".locks"  # swap locks live in their own tree, so no lock name can shadow a key
_MISSING = (FileNotFoundError, NotADirectoryError)
#: A directory on the way to a key: never a link.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: An object opened for reading: never a link, never waiting for a FIFO's writer, never a terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: A temporary file of ours: new, never a link.
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "of an unknown type")


def _read_all(fd: int) -> bytes:
    with open(fd, "rb", buffering=0, closefd=False) as f:
        return f.readall()


def _token(data: bytes) -> str:
    return blake3(data).hexdigest()[:32]


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except _MISSING:
        return None


class _StagedFile(ObjectWriter):
    """Writes go straight to a temporary file in the target directory tree; publishing is
    fsync + ``link`` (create-if-absent, as :meth:`LocalStore.create`). Nothing is held in
    memory, so a push's resident set does not grow with the pack size."""

    def __init__(self, store: LocalStore, prefix: str) -> None:
        super().__init__(store)
        self.local = store
        self.prefix = prefix
        self.fd = self.dir_fd = -1
        self.synced = False
        self.name = f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            self.dir_fd = store._dir(prefix.split("/"), prefix, create=True)
            self.fd = os.open(self.name, _NEW_FLAGS, 0o644, dir_fd=self.dir_fd)
        except OSError as err:
            self._close_dir()
            raise store._fail(err, "write", prefix) from err

    def write(self, data: Buffer) -> None:
        self.write_many([data])

    def write_many(self, parts: Sequence[Buffer]) -> None:
        """``parts`` written together, with ``writev`` calls of up to 256 KiB each rather than
        a call per part (a push's gathered small payloads: a system call each cost more than
        their copying; why no larger: casreg/storage/fileio.py)."""
        try:
            write_all(self.fd, parts)
        except OSError as err:
            raise self.local._fail(err, "write", f"{self.prefix}/{self.name}") from err
        self.size += sum(len(data) for data in parts)

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
        return self.local._publish(self.dir_fd, self.name, key)

    def _close_dir(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(self.name, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
        self._close_dir()


#: How old (ns) every directory's modification time must be for
#: :meth:`LocalStore.listing_token` to vouch for it (coarse file system clocks tick in ms).
RACY_NS = 2_000_000_000


class LocalStore(ObjectStore):
    """A registry in a local directory (see the module docstring)."""

    capabilities = Capabilities(list_after=False, object_times=True, leftovers=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"registry {self.url} is not a directory")

    def _missing(self, key: str) -> NotFoundError:
        return NotFoundError(f"object {key} not found in {self.url}")

    def _damaged(self, key: str, mode: int) -> IntegrityError:
        return IntegrityError(f"object {key} in {self.url} is not a regular file ({_kind(mode)}); "
                              "the registry is damaged")

    def _fail(self, err: OSError, action: str, key: str) -> StorageError:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StorageError(f"registry {self.url} is read-only: cannot {action} {key} ({err.strerror})")
        if err.errno == errno.ENOSPC:
            return StorageError(f"registry {self.url} is out of space while trying to {action} {key}")
        return StorageError(f"registry {self.url}: cannot {action} {key}: {err.strerror or err}")

    # -- reaching a key without following links -----------------------------------------------------
    def _dir(self, parts: Sequence[str], key: str, *, create: bool = False) -> int:
        """A descriptor of the directory ``root/parts...``, reached one component at a time
        without following a link (``create``: making what is missing). A link on the way
        is :class:`IntegrityError` naming it; a missing component, or one that is not a
        directory, raises ``FileNotFoundError``/``NotADirectoryError`` (the key is absent)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(parts):
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, dir_fd=fd)
                    except FileExistsError:
                        pass
                    sub = self._open_existing_dir(fd, parts, i, key)
                except OSError:
                    sub = self._open_existing_dir(fd, parts, i, key)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_existing_dir(self, fd: int, parts: Sequence[str], i: int, key: str) -> int:
        """Open ``parts[i]`` in ``fd`` again, after a first attempt failed: a link there is
        damage, anything else but a directory means the key is absent."""
        name = parts[i]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as err:
            st = _lstat_at(fd, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                where = "/".join(parts[:i + 1])
                raise IntegrityError(f"object {key} in {self.url} lies below {where}, which is a symbolic link "
                                     "(casreg follows no link inside a registry); the registry is damaged") from None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name) from None
            raise err

    def _lstat(self, key: str) -> os.stat_result | None:
        """What is under ``key``'s name, never following a link; ``None`` if nothing (or
        only a directory: a prefix of keys is no object). Anything else than a regular
        file is :class:`IntegrityError`."""
        parts = check_key(key).split("/")
        try:
            fd = self._dir(parts[:-1], key)
        except _MISSING:
            return None
        try:
            st = _lstat_at(fd, parts[-1])
        finally:
            os.close(fd)
        return self._regular(key, st)

    def _regular(self, key: str, st: os.stat_result | None) -> os.stat_result | None:
        if st is None or stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            raise self._damaged(key, st.st_mode)
        return st

    def _open(self, key: str) -> tuple[int, int]:
        """(descriptor, size) of the regular file under ``key``, opened for reading without
        following a link or waiting on a FIFO, checked with ``fstat``; ``NotFoundError`` if
        it is missing, :class:`IntegrityError` if it is not a regular file."""
        parts = check_key(key).split("/")
        try:
            try:
                dfd = self._dir(parts[:-1], key)
            except _MISSING:
                raise self._missing(key) from None
            try:
                # looked at first, so that a device is never even opened
                if self._regular(key, _lstat_at(dfd, parts[-1])) is None:
                    raise self._missing(key)
                try:
                    fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
                except OSError as err:  # replaced since: by a link (ELOOP), a socket (ENXIO), nothing
                    if self._regular(key, _lstat_at(dfd, parts[-1])) is None:
                        raise self._missing(key) from None
                    raise err
            finally:
                os.close(dfd)
        except CasregError:
            raise
        except OSError as err:
            raise self._fail(err, "read", key) from err
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                raise self._missing(key)
            raise self._damaged(key, st.st_mode)
        return fd, st.st_size

    # -- reads ------------------------------------------------------------------------------------
    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        fd, size = self._open(key)
        try:
            if byte_range is None:
                return _read_all(fd)
            return os.pread(fd, max(0, min(byte_range.end, size) - byte_range.start), byte_range.start)
        except OSError as err:
            raise self._fail(err, "read", key) from err
        finally:
            os.close(fd)

    def read_ranges(self, key: str, ranges: list[ByteRange]) -> list[bytes]:  # type: ignore[override]
        fd, size = self._open(key)
        try:
            return [os.pread(fd, max(0, min(r.end, size) - r.start), r.start) for r in ranges]
        except OSError as err:
            raise self._fail(err, "read", key) from err
        finally:
            os.close(fd)

    def read_versioned(self, key: str) -> Versioned | None:
        try:
            fd, _ = self._open(key)
        except NotFoundError:
            return None
        try:
            data = _read_all(fd)
        except OSError as err:
            raise self._fail(err, "read", key) from err
        finally:
            os.close(fd)
        return Versioned(data, _token(data))

    def _info(self, key: str) -> os.stat_result | None:
        try:
            return self._lstat(key)
        except CasregError:
            raise
        except OSError as err:
            raise self._fail(err, "read", key) from err

    def exists(self, key: str) -> bool:
        return self._info(key) is not None

    def size(self, key: str) -> int:
        st = self._info(key)
        if st is None:
            raise self._missing(key)
        return st.st_size

    def stat(self, key: str) -> ObjectInfo | None:
        st = self._info(key)
        return None if st is None else ObjectInfo(st.st_size, utc(st.st_mtime))

    # -- writes -----------------------------------------------------------------------------------
    def _taken(self, dir_fd: int, name: str, key: str) -> bool:
        """Whether ``name`` (in ``dir_fd``) holds an object; a name held by anything else
        (a directory too: no object can be created there) is :class:`IntegrityError`."""
        st = _lstat_at(dir_fd, name)
        if st is None:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise self._damaged(key, st.st_mode)
        return True

    def _write_temp(self, dir_fd: int, data: Payload) -> str:
        """A new, fsynced temporary file in ``dir_fd`` holding ``data``; its name."""
        name = f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        fd = os.open(name, _NEW_FLAGS, 0o666, dir_fd=dir_fd)
        try:
            write_all(fd, parts)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
            raise
        os.close(fd)
        return name

    def create(self, key: str, data: Payload) -> bool:
        parts = check_key(key).split("/")
        try:
            dfd = self._dir(parts[:-1], key, create=True)
            try:
                if self._taken(dfd, parts[-1], key):
                    return False
                tmp = self._write_temp(dfd, data)
                try:
                    return self._link(dfd, tmp, dfd, parts[-1], key)
                finally:
                    os.unlink(tmp, dir_fd=dfd)
            finally:
                os.close(dfd)
        except CasregError:
            raise
        except OSError as err:
            raise self._fail(err, "write", key) from err

    def _publish(self, src_fd: int, tmp: str, key: str) -> bool:
        """Link the complete, fsynced temporary file ``tmp`` (in ``src_fd``) to ``key``
        unless it exists."""
        parts = check_key(key).split("/")
        try:
            dfd = self._dir(parts[:-1], key, create=True)
            try:
                if self._taken(dfd, parts[-1], key):
                    return False
                return self._link(src_fd, tmp, dfd, parts[-1], key)
            finally:
                os.close(dfd)
        except CasregError:
            raise
        except OSError as err:
            raise self._fail(err, "write", key) from err

    def _link(self, src_fd: int, tmp: str, dst_fd: int, name: str, key: str) -> bool:
        """Publish a complete, fsynced temporary file under ``key``: ``link`` fails if the
        name is taken, so of racing writers exactly one wins (and nothing is written
        through whatever took it)."""
        try:
            os.link(tmp, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            return True
        except FileExistsError:
            self._taken(dst_fd, name, key)  # a racing writer's object, or damage to report
            return False

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        parts = check_key(key).split("/")
        try:
            lock = self._lock_file(parts, key)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read_versioned(key)
                current_token = current.token if current else None
                if current_token != expected:
                    raise ConflictError(f"{key} changed since it was read (someone else wrote it first)")
                dfd = self._dir(parts[:-1], key, create=True)
                try:
                    st = _lstat_at(dfd, parts[-1])
                    if st is not None and not stat.S_ISREG(st.st_mode):
                        raise self._damaged(key, st.st_mode)  # a directory: nothing to replace
                    tmp = self._write_temp(dfd, data)
                    os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
                finally:
                    os.close(dfd)
                return _token(data)
            finally:
                os.close(lock)
        except CasregError:
            raise
        except OSError as err:
            raise self._fail(err, "write", key) from err

    def _lock_file(self, parts: Sequence[str], key: str) -> int:
        """The open lock file that serialises swaps of ``key`` (``.locks/KEY.lock``): a
        regular file, never a link or FIFO planted there."""
        name = f"{_LOCKS}/{key}.lock"
        lock_dir = self._dir([_LOCKS, *parts[:-1]], name, create=True)
        try:
            fd = os.open(f"{parts[-1]}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o666, dir_fd=lock_dir)
        except OSError:
            st = _lstat_at(lock_dir, f"{parts[-1]}.lock")
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise self._damaged(name, st.st_mode) from None
            raise
        finally:
            os.close(lock_dir)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._damaged(name, mode)
        return fd

    def delete(self, key: str) -> None:
        """Remove the name ``key`` (a link or FIFO planted there too: the entry, never what
        it points to)."""
        parts = check_key(key).split("/")
        try:
            try:
                dfd = self._dir(parts[:-1], key)
            except _MISSING:
                return
            try:
                os.unlink(parts[-1], dir_fd=dfd)
            except FileNotFoundError:
                pass
            finally:
                os.close(dfd)
        except CasregError:
            raise
        except OSError as err:
            raise self._fail(err, "delete", key) from err

    def open_writer(self, prefix: str) -> ObjectWriter:
        return _StagedFile(self, check_key(prefix.strip("/")))

    # -- listings -----------------------------------------------------------------------------------
    def _walk(self, parts: list[str], what: str) -> Iterator[tuple[str, int, list[os.DirEntry[str]]]]:
        """Every directory below ``root/parts`` (itself included) that is not hidden, never
        through a link, without recursion: (its path relative to the root, its descriptor,
        its entries that are not directories). The descriptor is open only until the next
        item is asked for; a directory removed meanwhile is skipped."""
        todo = [parts]
        while todo:
            cur = todo.pop()
            try:
                fd = self._dir(cur, what)
            except _MISSING:
                continue
            except CasregError:
                raise
            except OSError as err:
                raise self._fail(err, "list", what) from err
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                others = []
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith("."):
                            todo.append([*cur, entry.name])
                    else:
                        others.append(entry)
                yield "/".join(cur), fd, others
            except OSError as err:
                raise self._fail(err, "list", what) from err
            finally:
                os.close(fd)

    def list(self, prefix: str) -> Iterator[str]:
        """Every name under ``prefix`` that is not a directory (a FIFO or link planted in a
        registry is listed, so that whoever reads it finds it damaged); links to directories
        are not descended. A link on the way to ``prefix`` is :class:`IntegrityError`."""
        prefix = prefix.strip("/")
        parts = check_key(prefix).split("/") if prefix else []
        if parts:
            try:
                fd = self._dir(parts[:-1], prefix)
            except _MISSING:
                return
            except CasregError:
                raise
            except OSError as err:
                raise self._fail(err, "list", prefix) from err
            try:
                st = _lstat_at(fd, parts[-1])
            finally:
                os.close(fd)
            if st is None:
                return
            if not stat.S_ISDIR(st.st_mode):
                yield prefix
                return
        for rel, _, entries in self._walk(parts, prefix):
            for entry in entries:
                if not entry.name.startswith("."):
                    yield f"{rel}/{entry.name}" if rel else entry.name

    def listing_token(self, prefix: str) -> tuple[tuple[str, int, int], ...] | None:
        """The modification times (ns) and inode numbers of every directory under
        ``prefix`` (itself included): creating, linking, renaming or deleting a name in a
        directory changes its time, and casreg changes objects only that way (written
        aside, then linked or renamed into place; never edited in place). A directory is
        read only if its link count says it has subdirectories. ``None`` ("list instead")
        while any of those times is within :data:`RACY_NS` of now (a change in the same
        clock tick would not move it: the same rule as git's racily clean index), or if
        anything on the way is not a plain directory."""
        import time

        prefix = prefix.strip("/")
        now = time.time_ns()
        out = []
        todo = [str(self.root / check_key(prefix)) if prefix else str(self.root)]
        while todo:
            path = todo.pop()
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                out.append((path, -1, -1))
                continue
            except OSError:
                return None
            if not stat.S_ISDIR(st.st_mode) or abs(now - st.st_mtime_ns) < RACY_NS:
                return None
            out.append((path, st.st_mtime_ns, st.st_ino))
            if st.st_nlink != 2:  # 2: no subdirectory (ext4, xfs); anything else: look
                try:
                    with os.scandir(path) as it:
                        todo.extend(e.path for e in it if e.is_dir(follow_symlinks=False)
                                    and not e.name.startswith("."))
                except OSError:
                    return None
        return tuple(sorted(out))

    def leftovers(self) -> Iterator[Leftover]:
        """Temporary files (``.tmp-*``) of writes that never completed: a push killed
        while staging a pack, a crash between writing and linking an object."""
        if not self.root.is_dir():
            return
        for rel, _, entries in self._walk([], "leftovers"):
            for entry in entries:
                if not entry.name.startswith(_TMP_PREFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield Leftover(f"{rel}/{entry.name}" if rel else entry.name, st.st_size, utc(st.st_mtime))

    def delete_leftover(self, name: str, *, dry_run: bool = False) -> bool:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or not parts[-1].startswith(_TMP_PREFIX) \
                or any(p.startswith(".") for p in parts[:-1]):
            return False  # not one of ours: a damaged gc record must not make this delete anything else
        try:
            try:
                dfd = self._dir(parts[:-1], name)
            except (*_MISSING, IntegrityError):
                return False  # below a link: not one of ours either
            try:
                st = _lstat_at(dfd, parts[-1])
                if st is None or not stat.S_ISREG(st.st_mode):
                    return False
                if not dry_run:
                    os.unlink(parts[-1], dir_fd=dfd)
                return True
            finally:
                os.close(dfd)
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
