"""The in-process backend (``memory://``): the conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from casreg.storage import ObjectStore
from casreg.storage.memory import MemoryStore
from casreg.testing.store_suite import StoreSuite


class TestMemoryStore(StoreSuite):
    @pytest.fixture
    def store_factory(self) -> Iterator[Callable[[], ObjectStore]]:
        urls: list[str] = []

        def make() -> ObjectStore:
            urls.append(f"memory://conformance-{uuid.uuid4().hex}")
            return MemoryStore(urls[-1])

        yield make
        for url in urls:
            MemoryStore.wipe(url)

    def _space(self, store: ObjectStore) -> dict[str, bytes]:
        assert isinstance(store, MemoryStore)
        return MemoryStore._spaces[store.url]

    def raw_read(self, store: ObjectStore, key: str) -> bytes | None:
        return self._space(store).get(key)

    def raw_write(self, store: ObjectStore, key: str, data: bytes) -> None:
        self._space(store)[key] = bytes(data)

    def raw_delete(self, store: ObjectStore, key: str) -> None:
        del self._space(store)[key]
