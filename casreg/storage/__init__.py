"""Storage backends and :func:`open_store`, which picks one from a registry URL."""

from __future__ import annotations

import os

from casreg.errors import UnsupportedBackendError
from casreg.redact import redact_url
from casreg.storage.base import ByteRange, ObjectInfo, ObjectStore, ObjectWriter, Payload, Versioned, join_payload

__all__ = ["ByteRange", "ObjectInfo", "ObjectStore", "ObjectWriter", "Payload", "Versioned", "join_payload",
           "open_store", "default_registry_url"]

DEFAULT_REGISTRY = "~/.casreg"


def default_registry_url() -> str:
    """``CASREG_REGISTRY`` if set, else ``~/.casreg``."""
    return os.environ.get("CASREG_REGISTRY") or DEFAULT_REGISTRY


def open_store(url: str | None = None) -> ObjectStore:
    """Open the store behind a registry URL: a local path or ``file://`` URL,
    ``memory://NAME`` or ``s3://BUCKET/PREFIX`` (docs/s3.md). Imports of remote
    filesystems happen only when their URL is used, so a local ``casreg resolve`` stays
    light."""
    url = url or default_registry_url()
    if "://" not in url or url.startswith("file://"):
        from casreg.storage.local import LocalStore

        return LocalStore(url.removeprefix("file://"))
    if url.startswith("memory://"):
        from casreg.storage.memory import MemoryStore

        return MemoryStore(url)
    if url.startswith("s3://"):
        from casreg.storage.s3 import S3Store

        return S3Store(url)
    scheme = url.split("://", 1)[0]
    raise UnsupportedBackendError(
        f"registry URL {redact_url(repr(url))}: the {scheme}:// backend is not supported yet (casreg needs atomic "
        "create-if-absent and compare-and-swap, wired up only for local paths, memory:// and s3://; "
        "see docs/s3.md)"
    )
