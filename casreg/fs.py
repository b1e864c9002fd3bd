"""``casreg://``: a read-only fsspec filesystem over a registry.

Why: serving code should load a model by name and stage with the tools it already uses
(``fsspec.open``, pandas, pyarrow, anything that takes a file object), not by a path
someone pasted. The protocol is registered through the ``fsspec.specs`` entry point, so
``fsspec.open("casreg://fraud-detector@production/model.onnx")`` works without importing
casreg.

Paths are ``REF[/PATH]``: one reference of the grammar in :mod:`casreg.refs` (``NAME``,
``NAME:N``, ``NAME@ALIAS``, ``NAME@blake3:HEX``, ``blake3:HEX``) and a path inside that
version. A directory version is a directory at ``casreg://REF``. A file version is the
file itself at ``casreg://REF``, and also answers to ``casreg://REF/<its file name>`` (so
the same URL shape works whether a model was pushed as a file or as a directory).
``casreg://`` alone lists the models (each as its latest version).

Consistency: every call resolves its reference once and then reads by digest only. An
open file is pinned to the manifest entry it was opened with, so a pointer that moves
while it is read never mixes two versions; ``find``, ``get`` and ``cat_file`` are one
resolution each. Separate calls resolve again (aliases move; nothing caches a
resolution): to pin a version across calls, use the ``version_digest`` that ``info``
returns as the reference. Manifests are cached by digest, which is safe because they are
immutable.

The registry comes from the ``registry=`` storage option (a URL casreg accepts, or a
:class:`~casreg.Registry`), else ``$CASREG_REGISTRY``, else ``~/.casreg``. fsspec caches
filesystem instances by their arguments; the effective registry URL is part of that key,
so changing ``CASREG_REGISTRY`` is honoured, and a ``Registry`` object (for example one
over a wrapped store) always gets its own instance.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, NoReturn, Required, TypedDict

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from casreg.content.lazy import DEFAULT_CHUNK_CACHE, PinnedFile, file_entry
from casreg.content.manifest import Entry, Manifest
from casreg.digest import Digest
from casreg.errors import (
    CasregError,
    InvalidInputError,
    NotFoundError,
    UnknownReferenceError,
)
from casreg.keys import manifest_key
from casreg.refs import Ref, split_ref_path
from casreg.registry import Registry, Resolved
from casreg.storage import default_registry_url

__all__ = ["CasregFileSystem", "CasregFile", "PathInfo", "ReadOnlyError"]

READ_ONLY = "casreg:// is read-only; use casreg push (or Registry.push) to add a version"


class ReadOnlyError(CasregError, PermissionError):
    """A write, delete or mkdir through ``casreg://``: versions are immutable and are
    added only by a push."""

    exit_code = 2

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PathInfo(TypedDict, total=False):
    """What ``info``, ``ls(detail=True)`` and ``find(detail=True)`` say of a path: the
    keys fsspec expects, and the version it belongs to (not for ``casreg://`` itself)."""

    name: Required[str]
    size: Required[int]
    type: Required[Literal["file", "directory"]]
    digest: Digest  # a file's BLAKE3
    executable: bool
    chunks: int
    version_digest: Digest
    model: str | None
    version: int | None


class _RegistryKeyedCache(type(AbstractFileSystem)):  # type: ignore[misc]
    """fsspec's instance cache, keyed on the *effective* registry URL: without this,
    ``CasregFileSystem()`` would keep serving the registry ``CASREG_REGISTRY`` named when
    it was first built."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args:
            kwargs["registry"], args = args[0], args[1:]
        reg = kwargs.get("registry")
        if reg is None:
            reg = default_registry_url()
        if isinstance(reg, (str, os.PathLike)):
            reg = os.fspath(reg)
            if "://" not in reg:  # a local directory: the same one from any working directory
                reg = os.path.abspath(os.path.expanduser(reg))
            kwargs["registry"] = reg
        else:  # a Registry object: its repr does not identify its store, so never share
            kwargs["skip_instance_cache"] = True
        return super().__call__(*args, **kwargs)


class _Tree:
    """The paths of one manifest: files by path and directory children, for ls/info."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.files: dict[str, Entry] = {}
        self.dirs: dict[str, dict[str, Entry | None]] = {"": {}}
        if manifest.kind == "file":
            return
        for e in manifest.entries:
            if e.type == "d":
                self.dirs.setdefault(e.path, {})
            else:
                self.files[e.path] = e
            path, child = e.path, (e if e.type != "d" else None)
            while True:  # register the entry with its parent, and every ancestor with its own
                parent, _, name = path.rpartition("/")
                self.dirs.setdefault(parent, {})[name] = child
                if not parent:
                    break
                path, child = parent, None


class _Target:
    """One resolution of ``REF/PATH``: what the reference pointed at, and the path."""

    __slots__ = ("head", "ref", "resolved", "tree", "inner")

    def __init__(self, head: str, ref: Ref, resolved: Resolved, tree: _Tree, inner: str) -> None:
        self.head, self.ref, self.resolved, self.tree, self.inner = head, ref, resolved, tree, inner

    @property
    def manifest(self) -> Manifest:
        return self.tree.manifest

    def name(self, inner: str) -> str:
        return f"{self.head}/{inner}" if inner else self.head


class CasregFileSystem(AbstractFileSystem, metaclass=_RegistryKeyedCache):
    """Read-only ``casreg://`` filesystem; see the module docstring for paths and
    consistency. Options: ``registry`` (URL or Registry), ``manifest_cache`` (manifests
    kept, by digest), ``chunk_cache`` (decoded chunks an open file keeps)."""

    protocol = "casreg"
    root_marker = ""

    def __init__(self, registry: str | os.PathLike[str] | Registry | None = None, *, manifest_cache: int = 16,
                 chunk_cache: int = DEFAULT_CHUNK_CACHE, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self._trees: OrderedDict[str, _Tree] = OrderedDict()
        self._manifest_cache = max(1, manifest_cache)
        self.chunk_cache = chunk_cache

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        if path.startswith("casreg://"):
            path = path[len("casreg://"):]
        elif path.startswith("casreg::"):
            path = path[len("casreg::"):]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return "casreg://" + name

    # -- resolving ------------------------------------------------------------------------------
    def _tree(self, resolved: Resolved) -> _Tree:
        tree = self._trees.get(resolved.digest)
        if tree is None:
            tree = _Tree(self.registry.manifest(resolved))
            self._trees[resolved.digest] = tree
            while len(self._trees) > self._manifest_cache:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(resolved.digest)
        return tree

    def _target(self, path: str) -> _Target:
        """Parse and resolve ``REF/PATH`` once (the only place a reference is resolved)."""
        path = self._strip_protocol(path)
        try:
            ref, inner = split_ref_path(path)
        except InvalidInputError as err:
            raise type(err)(f"casreg://{path}: {err}") from None
        head = path.split("/", 1)[0]
        try:
            resolved = self.registry.resolve(ref)
        except UnknownReferenceError as err:
            raise UnknownReferenceError(f"casreg://{path}: {err}") from None
        return _Target(head, ref, resolved, self._tree(resolved), inner)

    def _info(self, t: _Target, inner: str) -> PathInfo:
        """The info dict of ``inner`` in an already resolved target."""
        m = t.manifest
        common = PathInfo(name="", size=0, type="file", version_digest=t.resolved.digest, model=t.resolved.name,
                          version=t.resolved.version)
        if m.kind == "file":
            e = m.entries[0]
            if inner not in ("", e.path):
                raise NotFoundError(f"casreg://{t.name(inner)}: no such file "
                                    f"(this version is the single file {e.path!r})")
            return self._file_info(t.name(inner), e, common)
        entry = t.tree.files.get(inner)
        if entry is not None:
            return self._file_info(t.name(inner), entry, common)
        if inner in t.tree.dirs:
            return {**common, "name": t.name(inner), "size": 0, "type": "directory"}
        raise NotFoundError(f"casreg://{t.name(inner)}: no such file or directory in "
                            f"{self._what(t)}")

    @staticmethod
    def _what(t: _Target) -> str:
        r = t.resolved
        return f"{r.name}:{r.version} ({r.digest[:19]})" if r.name else r.digest[:19]

    @staticmethod
    def _file_info(name: str, e: Entry, common: PathInfo) -> PathInfo:
        return {**common, "name": name, "size": e.size, "type": "file", "digest": Digest.from_bytes(e.digest),
                "executable": e.type == "x", "chunks": len(e.chunks)}

    # -- reading ------------------------------------------------------------------------------
    def info(self, path: str, **kwargs: object) -> PathInfo:
        path = self._strip_protocol(path)
        if not path:
            return {"name": "", "size": 0, "type": "directory"}
        t = self._target(path)
        return self._info(t, t.inner)

    def ls(self, path: str, detail: bool = True, **kwargs: object) -> list[PathInfo] | list[str]:
        path = self._strip_protocol(path)
        rows: list[PathInfo]
        if not path:
            rows = [{"name": v.name, "size": v.size, "type": "file" if v.kind == "file" else "directory",
                     "version_digest": v.digest, "model": v.name, "version": v.version}
                    for v in self.registry.ls()]
        else:
            t = self._target(path)
            info = self._info(t, t.inner)
            if info["type"] == "file":
                rows = [info]
            else:
                prefix = t.inner + "/" if t.inner else ""
                rows = [self._info(t, prefix + name) for name in sorted(t.tree.dirs[t.inner])]
        return rows if detail else [r["name"] for r in rows]

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False,
             **kwargs: object) -> dict[str, PathInfo] | list[str]:
        """Every file under ``path`` (and directories with ``withdirs``), from ONE
        resolution of the reference."""
        path = self._strip_protocol(path)
        if not path:
            found: dict[str, PathInfo] | list[str] = super().find(path, maxdepth=maxdepth, withdirs=withdirs,
                                                                  detail=detail, **kwargs)
            return found
        t = self._target(path)
        top = self._info(t, t.inner)
        out: dict[str, PathInfo] = {}
        if top["type"] == "file":
            out[top["name"]] = top
        else:
            if withdirs:
                out[top["name"]] = top
            base = t.inner.count("/") + 1 if t.inner else 0
            prefix = t.inner + "/" if t.inner else ""
            candidates = list(t.tree.files) + (list(t.tree.dirs) if withdirs else [])
            for p in candidates:
                if not p or not p.startswith(prefix):
                    continue
                if maxdepth is not None and p.count("/") + 1 - base > maxdepth:
                    continue
                info = self._info(t, p)
                out[info["name"]] = info
        out = dict(sorted(out.items()))
        return out if detail else list(out)

    def ukey(self, path: str) -> str:
        """The file's BLAKE3 (a directory's: its version digest and path): content
        addressed, so a cache keyed on it is never stale."""
        info = self.info(path)
        return info.get("digest") or f"{info.get('version_digest')}/{info['name']}"

    def checksum(self, path: str) -> int:
        info = self.info(path)
        digest = info.get("digest") or info.get("version_digest")
        return int(digest.hex[:16], 16) if digest else 0

    def _pinned(self, path: str) -> tuple[PinnedFile, PathInfo]:
        t = self._target(path)
        info = self._info(t, t.inner)
        if info["type"] != "file":
            raise IsADirectoryError(f"casreg://{info['name']} is a directory, not a file")
        entry = file_entry(t.manifest, t.inner, f"casreg://{info['name']}")
        return PinnedFile(self.registry.store, entry, where=f"casreg://{info['name']}",
                          cache_chunks=self.chunk_cache, threads=self.registry.threads,
                          source=manifest_key(t.manifest.hexdigest), bases=t.manifest.base_map), info

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: object) -> bytes:
        """Bytes ``[start, end)`` of a file (negative values count from its end), reading
        only the chunks that cover them; a whole-file read is checked against the file
        digest too."""
        f, _ = self._pinned(path)
        lo = 0 if start is None else (start if start >= 0 else max(f.size + start, 0))
        hi = f.size if end is None else (end if end >= 0 else max(f.size + end, 0))
        return f.read(lo, min(hi, f.size))

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> CasregFile:
        if mode != "rb":
            raise ReadOnlyError(f"cannot open casreg://{self._strip_protocol(path)} with mode {mode!r}: {READ_ONLY}")
        pinned, info = self._pinned(path)
        return CasregFile(self, info["name"], pinned, info, block_size=block_size,
                          cache_type=kwargs.get("cache_type", "none"), cache_options=cache_options)

    def open_pinned(self, path: str) -> PinnedFile:
        """The random-access reader behind :meth:`open`, resolved now (used by
        :func:`casreg.content.lazy.open_safetensors`-style readers that count bytes)."""
        return self._pinned(path)[0]

    def get_file(self, rpath: str, lpath: str, callback: object = None, outfile: object = None,
                 **kwargs: object) -> None:
        self.get(rpath, lpath)

    def get(self, rpath: str | list[str] | tuple[str, ...], lpath: str | os.PathLike[str] | list[str] | tuple[str, ...],
            recursive: bool = False, callback: object = None, maxdepth: int | None = None,
            **kwargs: object) -> None:
        """Copy a file or (with ``recursive=True``) a directory to local ``lpath``, from
        one resolution, through the same verified, resumable writer as ``casreg pull``.
        A file goes to ``lpath`` (or into it, if ``lpath`` is a directory or ends with
        ``/``); a directory's content goes to ``lpath`` itself, replacing what is there."""
        if isinstance(rpath, (list, tuple)):
            if not isinstance(lpath, (list, tuple)) or len(lpath) != len(rpath):
                raise InvalidInputError("get with several remote paths needs as many local paths")
            for r, loc in zip(rpath, lpath):
                self.get(r, loc, recursive=recursive)
            return
        from casreg.content.pull import materialize

        if isinstance(lpath, (list, tuple)):
            raise InvalidInputError("get with one remote path needs one local path")
        t = self._target(rpath)
        info = self._info(t, t.inner)
        local = os.fspath(lpath)
        if info["type"] == "file":
            e = file_entry(t.manifest, t.inner, f"casreg://{info['name']}")
            dest = Path(local)
            if local.endswith(("/", os.sep)) or dest.is_dir():
                dest = dest / e.path.rsplit("/", 1)[-1]
            sub = Manifest("file", [Entry(e.path.rsplit("/", 1)[-1], e.type, e.size, e.digest, e.chunks)],
                           t.manifest.chunking, tree=t.manifest.tree, bases=t.manifest.bases)
            materialize(self.registry.store, sub, dest, force=True, threads=self.registry.threads,
                        source=manifest_key(t.manifest.hexdigest))
            return
        if not recursive:
            raise IsADirectoryError(f"casreg://{info['name']} is a directory: pass recursive=True to copy it")
        prefix = t.inner + "/" if t.inner else ""
        entries = [Entry(e.path[len(prefix):], e.type, e.size, e.digest, e.chunks)
                   for e in t.manifest.entries if e.path.startswith(prefix)]
        materialize(self.registry.store, Manifest("dir", entries, t.manifest.chunking, tree=t.manifest.tree,
                                                  bases=t.manifest.bases), local,
                    force=True, threads=self.registry.threads, source=manifest_key(t.manifest.hexdigest))

    # -- read-only ------------------------------------------------------------------------------
    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        what = f"cannot change casreg://{self._strip_protocol(args[0])}: " if args and isinstance(args[0], str) else ""
        raise ReadOnlyError(what + READ_ONLY)

    mkdir = makedirs = rmdir = rm = rm_file = _rm = touch = _read_only
    put = put_file = pipe = pipe_file = mv = cp_file = copy = _read_only
    setxattr = _read_only


class CasregFile(AbstractBufferedFile):
    """A seekable, read-only file pinned to one version (see :class:`PinnedFile`).

    The default ``cache_type="none"`` hands every read straight to the pinned reader,
    which fetches only the chunks a range needs and keeps the last few decoded chunks,
    so small reads in a row cost no extra requests and no read-ahead is wasted."""

    def __init__(self, fs: CasregFileSystem, path: str, pinned: PinnedFile, info: PathInfo, *,
                 block_size: int | None = None, cache_type: str = "none",
                 cache_options: dict[str, object] | None = None) -> None:
        self.pinned = pinned
        super().__init__(fs, path, mode="rb", block_size=block_size, cache_type=cache_type,
                         cache_options=cache_options, size=pinned.size)
        self._details = info

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.pinned.read(start, end)

    @property
    def fetched_bytes(self) -> int:
        """Stored bytes this file has fetched from the registry."""
        return self.pinned.fetched_bytes
