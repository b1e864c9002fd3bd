"""Check before write: a push decodes every new chunk before storing it and checks the
result against the bytes its digest was taken of (compared, or hashed again), and parses
its manifest back, so a codec fault cannot store a version nobody can read."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_delta import _weights

import casreg.content.push as push_module
from casreg import IntegrityError, Registry, UnknownReferenceError
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.codec import Codec, FloatHint, encode
from casreg.content.config import init_config


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


# -- the check by comparison ---------------------------------------------------------------
# A chunk cut from a read buffer is checked by comparing what its payload decodes to with
# the buffer's bytes (push.py ``_process``; codec.check_decodes_to), where the C loops give a
# memcmp; elsewhere by hashing what it decodes to. Either must refuse a payload of any codec
# that decodes to other bytes.

def _model(tmp: Path, kind: str) -> Path:
    """A file whose large chunks a push codes with ``kind`` (RAW: random bytes; ZSTD:
    repetitive bytes; PLANES and DELTA: safetensors weights, DELTA as a fine-tune of a
    parent pushed first)."""
    from test_planes import model_file

    if kind == "RAW":
        (tmp / "model.bin").write_bytes(os.urandom(3 << 20))
        return tmp / "model.bin"
    if kind == "ZSTD":
        (tmp / "model.bin").write_bytes(b"".join(os.urandom(256) * 64 for _ in range(160)))
        return tmp / "model.bin"
    return model_file(tmp / "model.safetensors")


def _wrong_by_one_byte(real: Callable[..., object], position: int = 0) -> Callable[..., object]:
    """``real`` (an encoder taking the chunk first), but coding the chunk with one byte
    flipped: a valid payload of the same codec that decodes to other bytes."""
    def faulty(raw: bytes | memoryview, *args: object, **kwargs: object) -> object:
        wrong = bytearray(raw)
        wrong[(position or len(wrong) // 2) % len(wrong)] ^= 0x01
        return real(bytes(wrong), *args, **kwargs)

    return faulty


@pytest.mark.parametrize("compare", ["memcmp", "hash"])
@pytest.mark.parametrize("kind", ["RAW", "ZSTD", "PLANES", "DELTA"])
def test_a_payload_decoding_to_other_bytes_fails_the_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          kind: str, compare: str,
                                                          author: Callable[[str], None]) -> None:
    import casreg.content.codec as codec_module
    import casreg.content.delta as delta_module

    author("check@example.test")
    if compare == "hash" or codec_module.same_bytes is None:
        if compare == "memcmp":
            pytest.skip("the PLANES codec's C loops are not built here: pushes check by hashing")
        monkeypatch.setattr(codec_module, "same_bytes", None)
        monkeypatch.setattr(delta_module, "same_bytes", None)
    compared = {"n": 0}
    if compare == "memcmp":
        real_same = codec_module.same_bytes
        assert real_same is not None

        def counting(a: object, b: object) -> bool:
            compared["n"] += 1
            return real_same(a, b)
        monkeypatch.setattr(codec_module, "same_bytes", counting)
        monkeypatch.setattr(delta_module, "same_bytes", counting)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = _model(src_dir, kind)
    reg = Registry(tmp_path / "reg")
    if kind == "DELTA":
        init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/4")
        first, weights = _weights(src_dir, "m.safetensors", 1)
        reg.push("m", first)
        src, _ = _weights(src_dir, "m2.safetensors", 2, weights)  # coded against m:1
        monkeypatch.setattr(push_module, "encode_delta", _wrong_by_one_byte(push_module.encode_delta))
    else:
        monkeypatch.setattr(push_module, "encode", _wrong_by_one_byte(push_module.encode))
    before = sorted(reg.store.list("manifests"))
    with pytest.raises(IntegrityError, match=rf"check before write: chunk blake3:[0-9a-f]{{64}} as encoded \({kind}\)"):
        reg.push("m", src)
    assert sorted(reg.store.list("manifests")) == before
    if compare == "memcmp":
        assert compared["n"] > 0  # the comparison made the verdict, not a hash
    monkeypatch.undo()
    author("check@example.test")
    reg.push("m", src)
    assert reg.verify().ok


def test_a_read_buffer_lent_again_while_its_chunk_is_coded_fails_the_push(
        compressible: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, author: Callable[[str], None]) -> None:
    """The comparison is sound only while the chunk's read buffer is not lent again (a
    buffer is written only after it is lent): a push that finds it was (a bug in the
    lending) stores nothing."""
    author("check@example.test")
    buffers: list[push_module._ReadBuffers] = []
    real_init = push_module._ReadBuffers.__init__

    def keep(self: push_module._ReadBuffers, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        buffers.append(self)

    def lends_again(raw: bytes | memoryview, *args: object, **kwargs: object) -> object:
        for b in buffers:
            b.lent = [n + 1 for n in b.lent]
        return encode(raw, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(push_module._ReadBuffers, "__init__", keep)
    monkeypatch.setattr(push_module, "encode", lends_again)
    reg = Registry(tmp_path / "reg")
    with pytest.raises(IntegrityError, match="was lent again while it was being coded"):
        reg.push("m", compressible)
    assert list(reg.store.list("manifests")) == []


def test_the_codecs_are_given_the_chunk_read_only(compressible: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  author: Callable[[str], None]) -> None:
    """No codec can change the bytes the comparison checks against: each gets a read-only
    view of a chunk cut from a read buffer."""
    author("check@example.test")
    seen: list[bool] = []

    def spy(raw: bytes | memoryview, *args: object, **kwargs: object) -> object:
        seen.append(isinstance(raw, bytes) or memoryview(raw).readonly)
        return encode(raw, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(push_module, "encode", spy)
    Registry(tmp_path / "reg").push("m", compressible)
    assert seen and all(seen)
