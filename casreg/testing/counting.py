"""A store wrapper that counts what is read through it, for tests and benchmarks that
assert how many bytes an operation transferred (lazy reads must stay near the bytes they
need). It wraps the real store; nothing is simulated."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

from casreg.storage.base import ByteRange, ObjectStore, Versioned
from casreg.testing.wrapper import StoreWrapper

__all__ = ["CountingStore"]


class CountingStore(StoreWrapper):
    """Delegates every call to ``inner``; counts reads (``reads``) and bytes returned
    (``bytes_read``) per top-level key prefix (``packs``, ``manifests``, ``refs``, ...)."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
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

    def stat(self, key: str):  # type: ignore[no-untyped-def]
        return self.inner.stat(key)

    def read_versioned(self, key: str) -> Versioned | None:
        got = self.inner.read_versioned(key)
        if got is not None:
            self._count(key, len(got.data))
        return got

    def check_writable(self) -> None:
        self.inner.check_writable()
