"""Shared fixtures: every backend-generic test runs once per entry of ``BACKENDS``.

A backend is a factory ``(workdir) -> (store, cleanup)`` that makes a fresh, empty store
(``workdir`` is a unique directory the factory may use). Adding a backend (e.g. S3 on
SeaweedFS) means adding one entry here; ``store``, ``store_factory`` and ``registry``
then cover it everywhere.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import casreg
from casreg.storage import ObjectStore
from casreg.storage.local import LocalStore
from casreg.storage.memory import MemoryStore

BackendFactory = Callable[[Path], tuple[ObjectStore, Callable[[], None]]]


def _local(workdir: Path) -> tuple[ObjectStore, Callable[[], None]]:
    # tmp_path is removed by pytest; nothing else to clean.
    return LocalStore(workdir / "reg"), lambda: None


def _memory(workdir: Path) -> tuple[ObjectStore, Callable[[], None]]:
    url = f"memory://casreg-test-{uuid.uuid4().hex}"
    MemoryStore.wipe(url)
    return MemoryStore(url), lambda: MemoryStore.wipe(url)


BACKENDS: dict[str, BackendFactory] = {
    "local": _local,
    "memory": _memory,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend under test (a key of ``BACKENDS``)."""
    return request.param


@pytest.fixture
def store_factory(backend: str, tmp_path: Path) -> Iterator[Callable[[], ObjectStore]]:
    """Makes any number of fresh, independent stores of the current backend."""
    cleanups: list[Callable[[], None]] = []
    counter = itertools.count()

    def make() -> ObjectStore:
        workdir = tmp_path / f"store-{next(counter)}"
        workdir.mkdir()
        store, cleanup = BACKENDS[backend](workdir)
        cleanups.append(cleanup)
        return store

    yield make
    for cleanup in cleanups:
        cleanup()


@pytest.fixture
def store(store_factory: Callable[[], ObjectStore]) -> ObjectStore:
    return store_factory()


@pytest.fixture
def registry(store: ObjectStore) -> casreg.Registry:
    """A registry on the same (fresh) store as the ``store`` fixture."""
    return casreg.Registry(store.url)
