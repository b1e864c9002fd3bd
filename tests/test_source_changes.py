"""A file that changes while it is being pushed is refused, never stored as a version.

Push reads a file block by block (casreg/content/push.py) and compares what it read with the
size and mtime it saw when it scanned the source; a training job rewriting a checkpoint
in place, appending to it or truncating it (``torch.save`` opens with ``O_TRUNC``) must
not produce a version whose bytes were never on disk together. The change is made by a
store wrapper when the push publishes its first pack, i.e. mid-read: packs are small here
(``PACK_TARGET`` 1 MiB) and the file is far larger than what push reads ahead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SERVERLESS

import casreg.content.push
from casreg import InvalidInputError, NotFoundError, Registry
from casreg.storage.base import ObjectStore, Payload
from casreg.testing.wrapper import StoreWrapper

SIZE = 96 << 20  # push reads at most 3 blocks of ~12 MiB ahead of what it has stored


class ChangeOnFirstPack(StoreWrapper):
    """Runs ``change`` once, when the first pack is published, then carries on."""

    def __init__(self, inner: ObjectStore, change: Callable[[], None]) -> None:
        super().__init__(inner)
        self.change: Callable[[], None] | None = change

    def create(self, key: str, data: Payload) -> bool:
        made = self.inner.create(key, data)
        if key.startswith("packs/") and self.change is not None:
            change, self.change = self.change, None
            change()
        return made


def _truncate(path: Path) -> None:
    os.truncate(path, SIZE // 2)


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"appended")


def _rewrite(path: Path) -> None:
    """Same size, new bytes at the end (an in-place rewrite): only the mtime tells."""
    with open(path, "r+b") as f:
        f.seek(SIZE - 4096)
        f.write(os.urandom(4096))


@pytest.mark.slow
@pytest.mark.parametrize("change", [_truncate, _append, _rewrite], ids=["truncated", "appended", "rewritten"])
@pytest.mark.parametrize("backend", SERVERLESS)
def test_file_changed_mid_push_is_refused(store: ObjectStore, change: Callable[[Path], None], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(SIZE))
    reg = Registry.from_store(store)
    reg.push("other", __file__)  # the registry exists; only the version under test is refused
    monkeypatch.setattr(casreg.content.push, "PACK_TARGET", 1 << 20)
    wrapped = Registry.from_store(ChangeOnFirstPack(reg.store, lambda: change(src)))
    with pytest.raises(InvalidInputError, match="changed while it was being pushed"):
        wrapped.push("m", src)
    assert wrapped.store.change is None  # type: ignore[attr-defined]  # the change happened mid-push
    with pytest.raises(NotFoundError):
        reg.resolve("m")
    assert [v.name for v in reg.ls()] == ["other"]
    assert list(store.leftovers()) == []  # the pack being streamed was discarded
    # once the file is stable again, the same push goes through and round-trips
    v = reg.push("m", src)
    out = tmp_path / "out.bin"
    reg.pull(v.ref, out)
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("name", ["a.bin", "a.safetensors"])
@pytest.mark.parametrize("size", [4096, 3 << 20], ids=["small", "large"])
@pytest.mark.parametrize("swap", ["fifo", "device"])
def test_a_file_swapped_for_a_fifo_or_a_device_after_the_scan_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, swap: str, name: str) -> None:
    """A file replaced, between the scan and its read, by a FIFO (whose open would block
    until someone writes to it) or by a link to a device (``/dev/zero``: endless bytes) is
    refused at once, with the one-line error of any file that changed while pushed. (A
    ``.safetensors`` name is read twice more first: for the schema and the float layout.)"""
    import threading

    import casreg.content.source as source_mod

    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_bytes(os.urandom(size))
    (src / "b.json").write_bytes(b"{}" * 100)
    victim = src / name
    scan = source_mod.scan_source

    def scan_then_swap(path: str | os.PathLike[str]) -> source_mod.Source:
        listed = scan(path)
        victim.unlink()
        if swap == "fifo":
            os.mkfifo(victim)
        else:
            victim.symlink_to("/dev/zero")
        return listed

    monkeypatch.setattr(source_mod, "scan_source", scan_then_swap)
    reg = Registry(tmp_path / "reg")
    errors: list[BaseException] = []

    def push() -> None:
        try:
            reg.push("m", src)
        except BaseException as err:  # noqa: BLE001 (handed to the test's thread)
            errors.append(err)

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    pusher.join(60)
    if pusher.is_alive() and swap == "fifo":  # unblock a reader stuck in open() before failing
        try:
            os.close(os.open(victim, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert not pusher.is_alive(), "the push hung on the swapped file"
    assert len(errors) == 1 and isinstance(errors[0], InvalidInputError), errors
    assert f"{name} changed while it was being pushed" in str(errors[0])
    with pytest.raises(NotFoundError):
        reg.resolve("m")
