"""casreg: a model registry built as a content-addressed, immutable artifact store.

``casreg.Registry`` is the entry point; see README.md for a tour.
"""

from __future__ import annotations

__version__ = "0.1.0"

from casreg.errors import (  # noqa: E402
    AlreadyExistsError,
    AmbiguousReferenceError,
    CasregError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    InvalidReferenceError,
    NotFoundError,
    StorageError,
    UnknownReferenceError,
    UnsafePathError,
)
from casreg.records import AliasEvent, AliasPointer, FileInfo, Lineage, PullResult, Version  # noqa: E402
from casreg.refs import Ref, parse_ref  # noqa: E402
from casreg.registry import Registry, Resolved  # noqa: E402

__all__ = [
    "Registry",
    "Resolved",
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
    "AmbiguousReferenceError",
    "AlreadyExistsError",
    "ConflictError",
    "IntegrityError",
    "UnsafePathError",
    "StorageError",
    "open_safetensors",
    "CasregFileSystem",
    "__version__",
]


def __getattr__(name: str) -> object:
    """``open_safetensors`` and ``CasregFileSystem`` load on first use: ``import casreg``
    (and so ``casreg resolve``) must not pay for fsspec or numpy."""
    if name == "open_safetensors":
        from casreg.content.lazy import open_safetensors

        return open_safetensors
    if name == "CasregFileSystem":
        from casreg.fs import CasregFileSystem

        return CasregFileSystem
    raise AttributeError(f"module 'casreg' has no attribute {name!r}")
