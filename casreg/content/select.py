"""Choosing part of a version: one path inside it, or the files matching patterns.

``casreg pull minilm@production/config.json``, ``pull REF --include '*.json'`` and
``casreg.snapshot(REF, include=[...])`` fetch only some files of a version. They all take
the version's manifest (already verified against its digest) and cut a smaller manifest
out of it with :func:`select`: the same entries, the same chunk references and file
digests, so what is fetched is verified exactly as in a whole pull. The smaller manifest
has its own tree digest (a digest of the selection, never recorded anywhere); callers
name the version's own manifest in errors.

Patterns follow ``huggingface_hub``'s ``allow_patterns``: :func:`fnmatch.fnmatchcase` on
the file's path inside the version, so ``*`` also matches ``/`` (``*.json`` matches
``1_Pooling/config.json``), and a pattern ending in ``/`` means everything below that
directory.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from casreg.content.manifest import Entry, Manifest
from casreg.errors import InvalidInputError, NotFoundError

__all__ = ["select", "matches_any", "normalize_patterns"]

#: A pattern longer than this is refused (fnmatch translates patterns to regular
#: expressions; a user's pattern should not be a way to build a huge one).
MAX_PATTERN_CHARS = 1024
MAX_PATTERNS = 256


def normalize_patterns(include: str | Iterable[str] | None) -> list[str] | None:
    """``include`` as a list of patterns (``None``: everything). A pattern ending in
    ``/`` becomes ``dir/*``. Empty, too long or too many patterns are refused."""
    if include is None:
        return None
    patterns = [include] if isinstance(include, str) else list(include)
    if not patterns:
        raise InvalidInputError("include: give at least one pattern (or none at all for every file)")
    if len(patterns) > MAX_PATTERNS:
        raise InvalidInputError(f"include: {len(patterns)} patterns; at most {MAX_PATTERNS}")
    out = []
    for p in patterns:
        if not isinstance(p, str) or not p.strip("/"):
            raise InvalidInputError(f"include: {p!r} is not a file pattern (e.g. '*.json', 'tokenizer*', '1_Pooling/')")
        if len(p) > MAX_PATTERN_CHARS or "\x00" in p:
            raise InvalidInputError(f"include: a pattern of {len(p)} characters; at most {MAX_PATTERN_CHARS}, no NUL")
        p = p.lstrip("/")
        out.append(p + "*" if p.endswith("/") else p)
    return out


def matches_any(path: str, patterns: Sequence[str]) -> bool:
    """Whether the path inside a version matches one of ``patterns`` (normalized)."""
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def select(manifest: Manifest, *, path: str = "", include: str | Iterable[str] | None = None,
           where: str = "this version") -> Manifest:
    """The part of ``manifest`` at ``path`` (``""``: the whole version) whose files match
    ``include`` (``None``: all of them).

    - ``path`` naming a file gives a *file* manifest of that one file (named by its base
      name, as a pull of it writes ``./config.json``); ``include`` must then match it.
    - ``path`` naming a directory gives a directory manifest of what is below it, paths
      relative to it; ``include`` is matched against those relative paths.
    - Without ``path`` or ``include`` the manifest itself is returned.

    :class:`NotFoundError` (naming ``where``) when ``path`` does not exist in the version
    or nothing matches; :class:`InvalidInputError` for a malformed pattern."""
    patterns = normalize_patterns(include)
    path = path.strip("/")
    if not path and patterns is None:
        return manifest
    if manifest.kind == "file":
        only = manifest.entries[0]
        if path not in ("", only.path):
            raise NotFoundError(f"{where}/{path}: no such file in this version (it is the single file {only.path!r})")
        if patterns is not None and not matches_any(only.path, patterns):
            raise NotFoundError(f"no file of {where} matches {_said(patterns)} (it is the single file {only.path!r})")
        return manifest
    entries = manifest.entries
    if path:
        exact = [e for e in entries if e.path == path]
        if exact and exact[0].type != "d":
            e = exact[0]
            name = path.rsplit("/", 1)[-1]
            if patterns is not None and not matches_any(name, patterns):
                raise NotFoundError(f"{where}/{path} does not match {_said(patterns)}")
            return _cut("file", [_renamed(e, name)], manifest)
        prefix = path + "/"
        below = [_renamed(e, e.path[len(prefix):]) for e in entries if e.path.startswith(prefix)]
        if not below and not exact:
            raise NotFoundError(f"{where}/{path}: no such file or directory in this version")
        entries = below
    if patterns is not None:
        entries = [e for e in entries if matches_any(e.path, patterns)]
        if not any(e.type != "d" for e in entries):
            inside = f"{where}/{path}" if path else where
            raise NotFoundError(f"no file of {inside} matches {_said(patterns)}")
    return _cut("dir", entries, manifest)


def _renamed(e: Entry, path: str) -> Entry:
    return Entry(path=path, type=e.type, size=e.size, digest=e.digest, chunks=e.chunks)


def _cut(kind: str, entries: list[Entry], manifest: Manifest) -> Manifest:
    return Manifest(kind="file" if kind == "file" else "dir", entries=list(entries), chunking=manifest.chunking,
                    tree=manifest.tree, bases=manifest.bases)  # the part's delta chunks need their bases


def _said(patterns: Sequence[str]) -> str:
    more = f" (and {len(patterns) - 5} more)" if len(patterns) > 5 else ""
    return " or ".join(repr(p) for p in patterns[:5]) + more
