"""A store that passes every call to a real one: the base of the test and benchmark
wrappers that count, fail or interleave another actor at one chosen operation. Subclasses
override only the operations they watch; nothing is simulated."""

from __future__ import annotations

from collections.abc import Iterator

from casreg.storage.base import ByteRange, ObjectStore, Payload, Versioned

__all__ = ["StoreWrapper"]


class StoreWrapper(ObjectStore):
    """Delegates the required operations to ``inner``. The optional ones (``read_ranges``,
    ``stat``, ``io_concurrency``, ``list_after``) keep the :class:`ObjectStore` defaults,
    which go through this wrapper's own ``read``/``size``/``list``, so a subclass sees
    every access; a subclass that wants the inner store's versions delegates them itself."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return self.inner.read(key, byte_range)

    def create(self, key: str, data: Payload) -> bool:
        return self.inner.create(key, data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def read_versioned(self, key: str) -> Versioned | None:
        return self.inner.read_versioned(key)

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        return self.inner.swap(key, data, expected)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
