"""A store that passes every call to a real one: the base of the test and benchmark
wrappers that count, fail or interleave another actor at one chosen operation. Subclasses
override only the operations they watch; nothing is simulated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from casreg.storage.base import ByteRange, Capabilities, Leftover, ObjectStore, Payload, Versioned

__all__ = ["StoreWrapper"]


class StoreWrapper(ObjectStore):
    """Delegates the required operations to ``inner``. The optional reads (``read_ranges``,
    ``stat``, ``list_after``, ``open_writer``) keep the :class:`ObjectStore` defaults,
    which go through this wrapper's own ``read``/``size``/``list``/``create``, so a
    subclass sees every access (so ``capabilities.list_after`` is off: the fallback saves
    nothing); a subclass that wants the inner store's versions delegates them itself.
    What only the inner store can do (its leftovers, its writability) is passed on, and
    :meth:`unwrap` gives the inner store."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.capabilities: Capabilities = replace(inner.capabilities, list_after=False)

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

    def leftovers(self) -> Iterator[Leftover]:
        return self.inner.leftovers()

    def delete_leftover(self, name: str, *, dry_run: bool = False) -> bool:
        return self.inner.delete_leftover(name, dry_run=dry_run)

    def check_writable(self) -> None:
        self.inner.check_writable()

    def unwrap(self) -> ObjectStore:
        return self.inner.unwrap()
