"""Turning a local path into the list of files a version will hold.

Symlinks are followed (Hugging Face snapshot directories are symlinks into a blob store,
and users expect their content pushed); a cycle, a dangling link, or a special file
(fifo, socket, device) is refused. Names must be valid UTF-8 so they can be recorded.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from casreg.content.manifest import VersionKind, validate_relpath
from casreg.errors import InvalidInputError, NotFoundError, UnsafePathError

__all__ = ["SourceFile", "Source", "scan_source", "SOURCE_FLAGS", "open_regular"]

#: How a source file is opened to be read: symbolic links followed, as the scan follows
#: them. A FIFO put in a file's place after the scan opens at once (``O_NONBLOCK``: without
#: it the open blocks until someone writes to it), to be refused before it is read.
SOURCE_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | os.PathLike[str]) -> int | None:
    """A descriptor of ``path`` (:data:`SOURCE_FLAGS`) if it is a regular file; ``None``,
    nothing left open, if it is anything else (a FIFO or a device put in the place of a
    scanned file). What ``os.open`` raises is the caller's to word."""
    fd = os.open(path, SOURCE_FLAGS)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return fd


@dataclass(frozen=True, slots=True)
class SourceFile:
    relpath: str
    abspath: str
    size: int
    executable: bool
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Source:
    kind: VersionKind
    files: list[SourceFile]
    empty_dirs: list[str]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _entry_name(rel: str, where: str) -> str:
    try:
        return validate_relpath(rel)
    except UnsafePathError as err:
        raise InvalidInputError(f"cannot push {where}: {err}") from None


def _file(abspath: str, rel: str) -> SourceFile:
    try:
        st = os.stat(abspath)
    except FileNotFoundError:
        raise InvalidInputError(f"cannot push {abspath}: it is a dangling symlink") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"cannot push {abspath}: not a regular file or directory")
    if not os.access(abspath, os.R_OK):
        raise InvalidInputError(f"cannot push {abspath}: permission denied")
    return SourceFile(rel, abspath, st.st_size, bool(st.st_mode & 0o111), st.st_mtime_ns)


def scan_source(path: str | os.PathLike[str]) -> Source:
    root = Path(path)
    if not root.exists():
        if root.is_symlink():
            raise InvalidInputError(f"cannot push {root}: it is a dangling symlink")
        raise NotFoundError(f"path {root} does not exist")
    if root.is_file():
        name = root.resolve().name if root.name in ("", ".", "..") else root.name
        return Source("file", [_file(str(root), _entry_name(name, str(root)))], [])
    if not root.is_dir():
        raise InvalidInputError(f"cannot push {root}: not a regular file or directory")

    files: list[SourceFile] = []
    empty_dirs: list[str] = []

    def walk(directory: Path, rel: str, ancestors: frozenset[tuple[int, int]]) -> None:
        st = directory.stat()
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors:
            raise InvalidInputError(f"cannot push {root}: symlink cycle at {directory}")
        try:
            children = sorted(os.scandir(directory), key=lambda d: d.name)
        except PermissionError:
            raise InvalidInputError(f"cannot push {directory}: permission denied") from None
        if not children and rel:
            empty_dirs.append(rel)
        for child in children:
            try:
                child.name.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError(f"cannot push {child.path!r}: the file name is not valid UTF-8") from None
            crel = _entry_name(f"{rel}/{child.name}" if rel else child.name, child.path)
            if child.is_dir(follow_symlinks=True):
                walk(Path(child.path), crel, ancestors | {ident})
            else:
                files.append(_file(child.path, crel))

    walk(root, "", frozenset())
    if not files and not empty_dirs:
        raise InvalidInputError(f"directory {root} is empty: nothing to push")
    if not files:
        raise InvalidInputError(f"directory {root} holds no files: nothing to push")
    return Source("dir", files, empty_dirs)
