"""Resolving ``NAME@ALIAS`` reads the pointer, then checks it against the ledger and the
tombstones. On a store whose requests cost a round trip (``capabilities.remote``) the two
checks are one round trip, not two; on a local one they stay on the caller's thread. The
store is a real memory store behind a wrapper that only watches how many reads overlap."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from casreg import Registry
from casreg.errors import DeletedVersionError, IntegrityError
from casreg.keys import tombstone_key, version_segment_key
from casreg.storage import ObjectStore
from casreg.storage.base import ByteRange
from casreg.storage.memory import MemoryStore
from casreg.testing.wrapper import StoreWrapper


class OverlapWatch(StoreWrapper):
    """Counts reads in flight at once; each read of a ledger record or tombstone lingers a
    little so that two issued together are seen together."""

    def __init__(self, inner: ObjectStore, *, remote: bool) -> None:
        super().__init__(inner)
        self.capabilities = replace(self.capabilities, remote=remote)
        self.lock = threading.Lock()
        self.in_flight = self.most = 0

    def _watch(self, key: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)

    def _done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        self._watch(key)
        try:
            if key.startswith(("ledger/versions/", "tombstones/")):
                time.sleep(0.2)
            return self.inner.read(key, byte_range)
        finally:
            self._done()


@pytest.fixture
def pushed(tmp_path: Path) -> Iterator[MemoryStore]:
    # a name no other test can have had (memory stores live as long as the process; an
    # ``id()`` is reused once its object is freed, and then a test met another's versions)
    url = f"memory://round-trips-{uuid.uuid4().hex}"
    store = MemoryStore(url)
    reg = Registry.from_store(store)
    (tmp_path / "w.bin").write_bytes(b"weights" * 1000)
    reg.push("m", str(tmp_path / "w.bin"), alias="production")
    yield store
    MemoryStore.wipe(url)


@pytest.mark.parametrize("remote", [True, False])
def test_alias_checks_overlap_only_on_a_remote_store(pushed: MemoryStore, remote: bool) -> None:
    watch = OverlapWatch(pushed, remote=remote)
    resolved = Registry.from_store(watch).resolve("m@production")
    assert (resolved.name, resolved.version) == ("m", 1)
    assert watch.most == (2 if remote else 1)


@pytest.mark.parametrize("remote", [True, False])
def test_either_check_fails_the_resolve_and_the_ledgers_comes_first(pushed: MemoryStore, remote: bool) -> None:
    from casreg.ledger.tombstones import deletion_event, record_deletion

    v = Registry.from_store(pushed).show("m:1")
    record_deletion(pushed, deletion_event("m", 1, v.digest, "deleted past the client"))
    watch = OverlapWatch(pushed, remote=remote)
    with pytest.raises(DeletedVersionError, match="deleted past the client"):
        Registry.from_store(watch).resolve("m@production")
    # the ledger record damaged too: the pointer check's error is the one reported
    key = version_segment_key("m", 1)
    pushed.swap(key, b"not parquet", pushed.read_versioned(key).token)  # type: ignore[union-attr]
    with pytest.raises(IntegrityError, match=key):
        Registry.from_store(watch).resolve("m@production")
    assert tombstone_key("m", 1) in set(pushed.list("tombstones"))
