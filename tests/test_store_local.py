"""The local directory backend: the conformance suite, plus what only a local disk can
show (real processes racing on one directory, temporary files of interrupted writes)."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from casreg.errors import ConflictError, NotFoundError
from casreg.storage import ObjectStore, Versioned
from casreg.storage.local import LocalStore
from casreg.testing.store_suite import StoreSuite, payload

N_PROCS = 8
SPAWN = multiprocessing.get_context("spawn")


class TestLocalStore(StoreSuite):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[Callable[[], ObjectStore]]:
        n = iter(range(1 << 30))
        yield lambda: LocalStore(tmp_path / f"reg-{next(n)}")

    def raw_read(self, store: ObjectStore, key: str) -> bytes | None:
        assert isinstance(store, LocalStore)
        path = store.root / key
        return path.read_bytes() if path.is_file() else None

    def raw_write(self, store: ObjectStore, key: str, data: bytes) -> None:
        assert isinstance(store, LocalStore)
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def raw_delete(self, store: ObjectStore, key: str) -> None:
        assert isinstance(store, LocalStore)
        (store.root / key).unlink()

    def raw_plant(self, store: ObjectStore, key: str, kind: str) -> Callable[[], object] | None:
        assert isinstance(store, LocalStore)
        path = store.root / key
        outside = store.root.parent / f"outside-{uuid.uuid4().hex}"
        outside.mkdir()
        (outside / path.name).write_bytes(b"outside the registry")
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        if kind == "link-on-the-way":
            path.parent.symlink_to(outside, target_is_directory=True)
        else:
            path.parent.mkdir(exist_ok=True)
            if kind == "fifo":
                os.mkfifo(path)
            elif kind == "link-to-file":
                path.symlink_to(outside / path.name)
            elif kind == "link-to-device":
                path.symlink_to("/dev/zero")
            else:
                assert kind == "dangling-link", kind
                path.symlink_to(outside / "nothing-yet")
        return lambda: sorted((p.name, p.read_bytes()) for p in outside.iterdir())


# -- real processes --------------------------------------------------------------------------------
def _proc_create(root: str, key: str, i: int, barrier: object, out: object) -> None:
    store = LocalStore(root)
    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    out.put((i, store.create(key, payload(i, 256 * 1024))))  # type: ignore[attr-defined]


def _proc_swap(root: str, key: str, token: str, i: int, barrier: object, out: object) -> None:
    store = LocalStore(root)
    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    try:
        result: object = store.swap(key, payload(i, 256 * 1024), token)
    except ConflictError as err:
        result = f"conflict: {err}"
    out.put((i, result))  # type: ignore[attr-defined]


def _race(target: Callable[..., None], args: tuple[object, ...]) -> dict[int, object]:
    barrier = SPAWN.Barrier(N_PROCS)
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, i, barrier, out)) for i in range(N_PROCS)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_processes_racing_create(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    results = _race(_proc_create, (root, "race/obj"))
    assert sorted(results) == list(range(N_PROCS))
    winners = [i for i, r in results.items() if r is True]
    assert len(winners) == 1 and all(r is False for i, r in results.items() if i != winners[0])
    store = LocalStore(root)
    assert store.read("race/obj") == payload(winners[0], 256 * 1024)
    assert sorted(store.list("")) == ["race/obj"]
    assert [f for f in os.listdir(tmp_path / "reg" / "race") if f.startswith(".tmp-")] == []


def test_processes_racing_swap(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    store = LocalStore(root)
    token = store.swap("race/ptr", b"start", None)
    results = _race(_proc_swap, (root, "race/ptr", token))
    winners = [i for i, r in results.items() if not str(r).startswith("conflict: ")]
    assert len(winners) == 1, results
    assert store.read_versioned("race/ptr") == Versioned(payload(winners[0], 256 * 1024), results[winners[0]])
    assert sorted(store.list("race")) == ["race/ptr"]


# -- interrupted writes ----------------------------------------------------------------------------
def test_interrupted_create_leaves_no_visible_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "reg")
    assert store.create("packs/ab/keep.pack", b"complete")
    # what a writer killed between writing its temp file and linking it leaves behind
    leftovers = [
        tmp_path / "reg" / "packs" / "ab" / f".tmp-{uuid.uuid4().hex}",
        tmp_path / "reg" / "packs" / "cd" / f".tmp-{uuid.uuid4().hex}",
        tmp_path / "reg" / f".tmp-{uuid.uuid4().hex}",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-writ")
    assert sorted(store.list("")) == ["packs/ab/keep.pack"]
    assert sorted(store.list("packs")) == ["packs/ab/keep.pack"]
    assert sorted(store.list("packs/cd")) == []
    assert store.exists("packs/cd/lost.pack") is False
    with pytest.raises(NotFoundError):
        store.read("packs/cd/lost.pack")
    # the store reports them as leftovers (gc reclaims them), by their names under the root
    assert sorted(t.name for t in store.leftovers()) == sorted(
        p.relative_to(tmp_path / "reg").as_posix() for p in leftovers)
    assert all(t.size == 9 for t in store.leftovers())
    # a retry of the interrupted create succeeds with the full bytes
    assert store.create("packs/cd/lost.pack", b"complete again") is True
    assert store.read("packs/cd/lost.pack") == b"complete again"
    assert sorted(store.list("packs")) == ["packs/ab/keep.pack", "packs/cd/lost.pack"]


def test_only_leftovers_can_be_deleted_as_leftovers(tmp_path: Path) -> None:
    """``delete_leftover`` removes temporary files and refuses anything else, whatever
    name a damaged gc record hands it."""
    store = LocalStore(tmp_path / "reg")
    assert store.create("packs/ab/keep.pack", b"object")
    tmp = tmp_path / "reg" / "packs" / "ab" / ".tmp-0123"
    tmp.write_bytes(b"x")
    outside = tmp_path / ".tmp-outside"
    outside.write_bytes(b"not ours")
    for name in ("packs/ab/keep.pack", "../.tmp-outside", "/etc/passwd", "packs/../.tmp-outside", ".locks/.tmp-x",
                 "packs/ab", ""):
        assert store.delete_leftover(name) is False, name
    assert outside.exists() and store.read("packs/ab/keep.pack") == b"object"
    assert store.delete_leftover("packs/ab/.tmp-0123", dry_run=True) is True and tmp.exists()
    assert store.delete_leftover("packs/ab/.tmp-0123") is True and not tmp.exists()
    assert store.delete_leftover("packs/ab/.tmp-0123") is False


def test_create_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "reg")
    store.create("a/b", b"1")
    store.create("a/b", b"2")
    store.swap("a/c", b"3", None)
    names = [n for _, _, files in os.walk(tmp_path / "reg") for n in files]
    assert not [n for n in names if n.startswith(".tmp-")]
    assert list(store.leftovers()) == []


def test_a_staged_writer_refuses_to_publish_other_bytes_than_it_was_told(tmp_path: Path) -> None:
    """``publish(key, size=...)``: a writer told a size it did not write publishes nothing."""
    from casreg.errors import IntegrityError

    store = LocalStore(tmp_path / "reg")
    with store.open_writer("packs") as w:
        w.write(b"12345")
        with pytest.raises(IntegrityError, match="5 bytes were written, not 6"):
            w.publish("packs/x", size=6)
        assert not store.exists("packs/x")
        assert w.publish("packs/x", size=5) and store.read("packs/x") == b"12345"
