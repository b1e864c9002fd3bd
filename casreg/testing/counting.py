"""A store wrapper that counts what is read through it, for tests and benchmarks that
assert how many bytes an operation transferred (lazy reads must stay near the bytes they
need). It wraps the real store; nothing is simulated."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence

from casreg.storage.base import ByteRange, ObjectStore, Payload, Versioned

__all__ = ["CountingStore"]


class CountingStore(ObjectStore):
    """Delegates every call to ``inner``; counts reads (``reads``) and bytes returned
    (``bytes_read``) per top-level key prefix (``packs``, ``manifests``, ``refs``, ...)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.io_concurrency = inner.io_concurrency
        self.reads: Counter[str] = Counter()
        self.bytes_read: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.reads.clear()
            self.bytes_read.clear()

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            kind = key.split("/", 1)[0]
            self.reads[kind] += 1
            self.bytes_read[kind] += n

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        data = self.inner.read(key, byte_range)
        self._count(key, len(data))
        return data

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        out = self.inner.read_ranges(key, ranges)
        self._count(key, sum(len(d) for d in out))
        return out

    def create(self, key: str, data: Payload) -> bool:
        return self.inner.create(key, data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def stat(self, key: str):  # type: ignore[no-untyped-def]
        return self.inner.stat(key)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def read_versioned(self, key: str) -> Versioned | None:
        got = self.inner.read_versioned(key)
        if got is not None:
            self._count(key, len(got.data))
        return got

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        return self.inner.swap(key, data, expected)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check_writable(self) -> None:
        self.inner.check_writable()
