"""casreg: a model registry built as a content-addressed, immutable artifact store.

``casreg.Registry`` is the entry point; see README.md for a tour.
"""

from __future__ import annotations

from casreg.digest import Digest
from casreg.errors import (
    AlreadyExistsError,
    AmbiguousReferenceError,
    CasregError,
    ConflictError,
    DeletedVersionError,
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    InvalidReferenceError,
    NotFoundError,
    StorageError,
    UnknownReferenceError,
    UnsafePathError,
)
from casreg.records import AliasEvent, AliasPointer, FileInfo, Lineage, PullResult, Version
from casreg.refs import Ref, parse_ref
from casreg.registry import Registry, Resolved, open_safetensors, snapshot

__all__ = [
    "Registry",
    "Resolved",
    "Digest",
    "Ref",
    "parse_ref",
    "Version",
    "Lineage",
    "AliasEvent",
    "AliasPointer",
    "FileInfo",
    "PullResult",
    "CasregError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidReferenceError",
    "NotFoundError",
    "UnknownReferenceError",
    "DeletedVersionError",
    "AmbiguousReferenceError",
    "AlreadyExistsError",
    "ConflictError",
    "IntegrityError",
    "UnsafePathError",
    "StorageError",
    "open_safetensors",
    "snapshot",
    "CasregFileSystem",
    "__version__",
]


__version__: str  # the installed package's version, read on first use (below)


def __getattr__(name: str) -> object:
    """``CasregFileSystem`` loads on first use: ``import casreg`` (and so ``casreg
    resolve``) must not pay for fsspec; ``__version__`` is read from the package
    metadata on first use (:mod:`casreg._version`)."""
    if name == "CasregFileSystem":
        from casreg.fs import CasregFileSystem

        return CasregFileSystem
    if name == "__version__":
        from casreg._version import package_version

        return package_version()
    raise AttributeError(f"module 'casreg' has no attribute {name!r}")
