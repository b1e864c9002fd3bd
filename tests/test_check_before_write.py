"""Check before write: a push decodes and re-hashes every new chunk before storing it,
and parses its manifest back, so a codec fault cannot store a version nobody can read."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import casreg.content.push as push_module
from casreg import IntegrityError, Registry, UnknownReferenceError
from casreg.content.codec import Codec, FloatHint, encode


def _faulty_encoder(every: int) -> Callable[..., tuple[Codec, bytes | memoryview]]:
    """``encode`` with a fault: every ``every``-th compressed payload gets a byte flipped
    (still a valid zstd frame header, wrong content)."""
    calls = {"n": 0}

    def faulty(raw: bytes | memoryview, level: int = 3,
               hint: FloatHint | None = None) -> tuple[Codec, bytes | memoryview]:
        codec, stored = encode(raw, level, hint)
        calls["n"] += 1
        if codec == Codec.ZSTD and calls["n"] % every == 0:
            damaged = bytearray(stored)
            damaged[len(damaged) // 2] ^= 0x40
            return codec, bytes(damaged)
        return codec, stored

    return faulty


@pytest.fixture
def compressible(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    blocks = [os.urandom(256) * 64 for _ in range(160)]  # ~2.6 MB, compressible, several chunks
    path.write_bytes(b"".join(blocks))
    return path


def test_a_faulty_encoding_fails_the_push_and_stores_no_version(
        compressible: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, author: Callable[[str], None]) -> None:
    author("check@example.test")
    reg = Registry(tmp_path / "reg")
    monkeypatch.setattr(push_module, "encode", _faulty_encoder(every=1))
    with pytest.raises(IntegrityError, match="check before write: chunk blake3:[0-9a-f]{64} as encoded \\(ZSTD\\)"):
        reg.push("m", compressible)
    with pytest.raises(UnknownReferenceError):
        reg.resolve("m")
    monkeypatch.undo()
    author("check@example.test")
    v = reg.push("m", compressible)  # once the codec is right, the same push goes through
    assert v.version == 1 and reg.verify().ok


def test_without_the_check_the_same_fault_is_stored_and_only_found_later(
        compressible: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, author: Callable[[str], None]) -> None:
    """What the check prevents: with it off, the faulty chunk is committed, and only a
    read (verify, pull) finds it."""
    author("check@example.test")
    reg = Registry(tmp_path / "reg", check_writes=False)
    monkeypatch.setattr(push_module, "encode", _faulty_encoder(every=1))
    v = reg.push("m", compressible)
    monkeypatch.undo()
    report = reg.verify()
    assert not report.ok and any("corrupt" in p.reason for p in report.problems)
    with pytest.raises(IntegrityError):
        reg.pull(v.ref, tmp_path / "out.bin")


def test_a_manifest_that_does_not_parse_back_is_not_stored(
        compressible: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, author: Callable[[str], None]) -> None:
    author("check@example.test")
    reg = Registry(tmp_path / "reg")
    real = push_module.Manifest.to_bytes

    def broken(self: push_module.Manifest) -> bytes:
        data = bytearray(real(self))
        data[-1] ^= 1  # the trailer no longer matches
        return bytes(data)

    monkeypatch.setattr(push_module.Manifest, "to_bytes", broken)
    with pytest.raises(IntegrityError, match="check before write"):
        reg.push("m", compressible)
    assert list(reg.store.list("manifests")) == []


def test_the_cli_can_turn_the_check_off(compressible: Path, tmp_path: Path) -> None:
    from casreg_cli.main import run

    assert run(["push", "m", str(compressible), "-r", str(tmp_path / "reg"), "-q", "--no-check-writes"]) == 0
    assert run(["push", "m", str(compressible), "-r", str(tmp_path / "reg"), "-q", "--check-writes"]) == 0
    assert Registry(tmp_path / "reg").ls("m")[-1].version == 2
