"""An in-process registry (``memory://name``) for tests and experiments.

Stores with the same URL share one dict, so two ``Registry("memory://x")`` objects in a
process see each other's writes, as two clients of one bucket would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import ClassVar

from blake3 import blake3

from casreg.errors import ConflictError, NotFoundError
from casreg.storage.base import ByteRange, Capabilities, ObjectStore, Payload, Versioned, check_key, join_payload

__all__ = ["MemoryStore"]


class MemoryStore(ObjectStore):
    """Objects in a process-wide dict per URL; keeps no object times (gc counts every
    object as old, docs/gc.md) and lists from a key like S3 does."""

    capabilities = Capabilities(list_after=True, object_times=False, leftovers=False)
    _spaces: ClassVar[dict[str, dict[str, bytes]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        with self._lock:
            self._objects = self._spaces.setdefault(self.url, {})

    @classmethod
    def wipe(cls, url: str) -> None:
        """Forget everything stored under ``url`` (tests use it to start clean)."""
        with cls._lock:
            cls._spaces.pop(url.rstrip("/"), None)

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        try:
            data = self._objects[key]
        except KeyError:
            raise NotFoundError(f"object {key} not found in {self.url}") from None
        return data if byte_range is None else data[byte_range.start:byte_range.end]

    def create(self, key: str, data: Payload) -> bool:
        check_key(key)
        data = join_payload(data)
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = data
            return True

    def exists(self, key: str) -> bool:
        return key in self._objects

    def size(self, key: str) -> int:
        return len(self.read(key))

    def list(self, prefix: str) -> Iterator[str]:
        with self._lock:
            keys = list(self._objects)
        p = prefix.rstrip("/")
        return iter([k for k in keys if k == p or k.startswith(p + "/") or not p])

    def list_after(self, prefix: str, start_after: str) -> Iterator[str]:
        """Keys under ``prefix`` sorting after ``start_after``, like S3's ``StartAfter``
        (so tests on memory:// exercise the readers' list-from-a-key path)."""
        return iter(sorted(k for k in self.list(prefix) if k > start_after))

    def read_versioned(self, key: str) -> Versioned | None:
        data = self._objects.get(key)
        return None if data is None else Versioned(data, blake3(data).hexdigest()[:32])

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        check_key(key)
        with self._lock:
            current = self.read_versioned(key)
            if (current.token if current else None) != expected:
                raise ConflictError(f"{key} changed since it was read (someone else wrote it first)")
            self._objects[key] = bytes(data)
        return blake3(data).hexdigest()[:32]

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)
