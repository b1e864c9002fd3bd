"""Verified, read-only local copies of versions that tools can open as directories.

``AutoModel.from_pretrained(path)`` and ``SentenceTransformer(path)`` want a directory;
:func:`snapshot` gives one, the way ``huggingface_hub.snapshot_download`` does, but
content-addressed and verified. Layout under ``root`` (default
``<chunk cache dir>/snapshots``; docs/loaders.md)::

    root/blobs/<aa>/<hex>        one file's bytes, named by its BLAKE3 (``<hex>.x``: the
                                 same bytes as an executable), mode 0444 (0555)
    root/versions/<digest hex>/  one directory per version: its files, hard links to blobs
    root/tmp/                    pulls in progress

Contract:

- **Verified**: a blob enters ``blobs/`` only through :func:`casreg.content.pull.materialize`
  (every chunk and the whole file checked against the version's manifest), and under
  the name of its own digest.
- **Shared**: two versions with the same file (a tokenizer, a config, an unchanged
  shard) hold one blob; their directories link to it. Nothing present is fetched again.
- **Read-only**: files are 0444 (so a tool cannot change a version in place through
  it); a version's directory can gain files (a later call with other ``include``
  patterns adds them) but never loses or changes one.
- **Concurrent calls are safe**: each fetch goes to its own temporary tree; blobs and
  links are renamed into place, so a reader sees a whole file or none.
- A present blob is trusted by its name, size and mode (it was verified when written);
  ``verify=True`` re-hashes the files of the returned directory and replaces any that
  does not match.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from casreg.content.manifest import Entry, Manifest
from casreg.content.pull import file_digest, materialize
from casreg.content.select import select
from casreg.errors import StorageError
from casreg.keys import manifest_key
from casreg.progress import Progress
from casreg.storage import ObjectStore

__all__ = ["snapshot", "blob_path", "version_dir"]

_FILE_MODE = 0o444
_EXEC_MODE = 0o555


def blob_path(root: Path, entry: Entry) -> Path:
    """Where the bytes of ``entry`` live under ``root`` (by digest and executable bit)."""
    hexd = entry.digest.hex()
    return root / "blobs" / hexd[:2] / (hexd + (".x" if entry.type == "x" else ""))


def version_dir(root: Path, manifest: Manifest) -> Path:
    """The directory :func:`snapshot` returns for the version of ``manifest``."""
    return root / "versions" / manifest.hexdigest


def _intact(path: Path, entry: Entry, *, verify: bool) -> os.stat_result | None:
    """The stat of ``path`` if it holds ``entry``'s bytes as a snapshot keeps them (a
    regular read-only file of the right size; with ``verify``, the right digest)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size or st.st_mode & 0o222:
        return None
    if verify and file_digest(path) != entry.digest:
        return None
    return st


def snapshot(store: ObjectStore, manifest: Manifest, root: Path, *, include: str | Iterable[str] | None = None,
             verify: bool = False, progress: Progress | None = None, threads: int | None = None,
             where: str = "this version") -> Path:
    """The directory of ``manifest``'s version under ``root`` holding at least the files
    that match ``include`` (``None``: all), fetching only blobs not already present. A
    file version's directory holds its one file. Returns the directory's path."""
    chosen = select(manifest, include=include, where=where)
    entries = chosen.entries
    top = version_dir(root, manifest)
    missing: dict[Path, Entry] = {}
    for e in entries:
        if e.type == "d":
            continue
        blob = blob_path(root, e)
        if blob not in missing and _intact(blob, e, verify=verify) is None:
            missing[blob] = e
    if missing:
        _fetch_blobs(store, manifest, root, missing, progress=progress, threads=threads)
    for e in entries:
        target = top / e.path
        if e.type == "d":
            target.mkdir(parents=True, exist_ok=True)
            continue
        blob = blob_path(root, e)
        blob_st = blob.lstat()
        try:
            st = target.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == blob_st.st_ino and st.st_dev == blob_st.st_dev:
            continue
        if st is not None and not verify and _intact(target, e, verify=False) is not None:
            continue  # a copy (the filesystem has no hard links), or a blob replaced since
        _place(blob, target)
    return top


def _fetch_blobs(store: ObjectStore, manifest: Manifest, root: Path, missing: dict[Path, Entry], *,
                 progress: Progress | None, threads: int | None) -> None:
    """Pull the files of ``missing`` (by blob path) into a private temporary tree, then
    rename each to its blob path, read-only."""
    blobs = root / "blobs"
    keys = {blob: blob.relative_to(blobs).as_posix() for blob in missing}
    part = Manifest(kind="dir", chunking=manifest.chunking, tree=manifest.tree, bases=manifest.bases,
                    entries=[Entry(path=keys[b], type=e.type, size=e.size, digest=e.digest, chunks=e.chunks)
                             for b, e in missing.items()])
    tmp_root = root / "tmp"
    try:
        tmp_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the snapshot directory {tmp_root}: {err.strerror or err}") from None
    _sweep(tmp_root)
    tmp = tmp_root / uuid.uuid4().hex
    try:
        materialize(store, part, tmp, progress=progress, threads=threads, source=manifest_key(manifest.hexdigest))
        for blob, e in missing.items():
            got = tmp / keys[blob]
            os.chmod(got, _EXEC_MODE if e.type == "x" else _FILE_MODE)
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, blob)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Temporary trees older than this are left by a killed process: removed by the next fetch.
_STALE_SECONDS = 24 * 3600


def _sweep(tmp_root: Path) -> None:
    """Remove what killed snapshot fetches left under ``tmp_root`` (older than a day)."""
    now = time.time()
    try:
        found = list(os.scandir(tmp_root))
    except OSError:
        return
    for entry in found:
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < _STALE_SECONDS:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            continue


def _place(blob: Path, target: Path) -> None:
    """Put ``blob`` at ``target``: a hard link where the filesystem has them, else a
    read-only copy; atomically (a temporary name, then a rename over whatever is there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        os.link(blob, tmp)
    except OSError:
        shutil.copyfile(blob, tmp)
        os.chmod(tmp, stat.S_IMODE(blob.lstat().st_mode))
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
