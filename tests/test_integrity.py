"""Corruption is detected and refused, the error names the bad object, and nothing is
left at the destination (no destination, no temporary files beside it)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from casreg import IntegrityError, Registry, UnsafePathError
from casreg.content.codec import Codec
from casreg.content.manifest import Entry, Manifest, seal_manifest
from casreg.keys import manifest_key, pack_key
from casreg.storage.local import LocalStore


def _manifest_doc(stored: bytes) -> dict:
    """The JSON of a stored manifest (a zstd frame followed by its 32-byte BLAKE3)."""
    return json.loads(zstandard.ZstdDecompressor().decompress(stored[:-32]))


def _stale_checksum(stored: bytes, new_json: bytes) -> bytes:
    """Changed content under the old checksum: what bit rot or a partial overwrite leaves."""
    return zstandard.ZstdCompressor().compress(new_json) + stored[-32:]

SCRIPT = Path(sys.executable).with_name("casreg")


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _env(author: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    author("integrity@example.test")
    # These tests damage the registry's objects; on S3 the local chunk cache would serve
    # the verified copies of an earlier pull instead (tests/test_cache.py covers that path).
    monkeypatch.setenv("CASREG_CACHE", "off")


@pytest.fixture
def reg(registry: Registry) -> Registry:
    """A fresh registry on every backend of ``conftest.BACKENDS``."""
    return registry

def is_local(reg: Registry) -> bool:
    return isinstance(reg.store, LocalStore)


def overwrite(reg: Registry, key: str, data: bytes) -> None:
    """Replace an object's bytes behind the registry's back."""
    if is_local(reg):
        path = Path(reg.store.root, key)
        assert path.is_file()
        path.write_bytes(data)
    else:
        reg.store.delete(key)
        assert reg.store.create(key, data)


def remove(reg: Registry, key: str) -> None:
    if is_local(reg):
        Path(reg.store.root, key).unlink()
    else:
        assert reg.store.exists(key)
        reg.store.delete(key)
    assert not reg.store.exists(key)


def pack_keys(reg: Registry) -> set[str]:
    if is_local(reg):
        root = Path(reg.store.root)
        return {p.relative_to(root).as_posix() for p in (root / "packs").rglob("*.pack")}
    return {k for k in reg.store.list("packs") if k.endswith(".pack")}


def listing(d: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(d.rglob("*")):
        s = p.lstat()
        out[p.relative_to(d).as_posix()] = ("dir",) if p.is_dir() else (s.st_size, s.st_mtime_ns, p.read_bytes())
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    # seeded, so that the stored bytes (and what a given bit flip does to them) are reproducible
    (d / "random.bin").write_bytes(random.Random(1234).randbytes(3_000_000))  # several raw (incompressible) chunks
    (d / "sub" / "text.txt").write_bytes(b"".join(b"line %d of a compressible file\n" % i for i in range(20_000)))
    (d / "empty").mkdir()
    return d


@pytest.fixture
def pushed(reg: Registry, src: Path) -> Manifest:
    reg.push("m", src)
    m = reg.manifest("m")
    codecs = {c.codec for e in m.entries for c in e.chunks}
    assert codecs == {0, 1}  # both raw and zstd payloads are present
    assert {pack_key(c.pack) for e in m.entries for c in e.chunks} == pack_keys(reg)
    return m


@pytest.fixture
def work(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    (w / "neighbour.txt").write_text("must survive")
    return w


def refused(reg: Registry, ref: str, work: Path, exc: type[Exception] = IntegrityError, *,
            dest: Path | None = None) -> str:
    """Pull must raise ``exc`` and leave ``work`` (the destination's parent) exactly as it was."""
    dest = dest or work / "dest"
    before = listing(work)
    with pytest.raises(exc) as info:
        reg.pull(ref, dest)
    assert listing(work) == before
    assert not dest.exists() or dest.name in before
    return str(info.value)


def chunk(m: Manifest, codec: int):
    return next(c for e in m.entries for c in e.chunks if c.codec == codec)


# -- packs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", [0, 1], ids=["raw", "zstd"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_pack_payload(reg: Registry, pushed: Manifest, work: Path, codec: int, where: str) -> None:
    c = chunk(pushed, codec)
    key = pack_key(c.pack)
    data = bytearray(reg.store.read(key))
    pos = {"first": c.offset, "middle": c.offset + c.stored_size // 2, "last": c.offset + c.stored_size - 1}[where]
    data[pos] ^= 0x10
    overwrite(reg, key, bytes(data))
    msg = refused(reg, "m", work)
    assert key in msg
    assert c.digest.hex() in msg


@pytest.mark.parametrize("cache", ["off", "on"])
def test_a_pull_hashes_chunks_only_where_the_file_digest_does_not_cover_them(
        reg: Registry, pushed: Manifest, work: Path, monkeypatch: pytest.MonkeyPatch, cache: str) -> None:
    """Every byte a pull writes is checked against its file's digest, so without a cache
    the chunks are decoded but not hashed as well; through a cache (which keeps only
    verified chunks) each is. A damaged chunk is named either way (the flips above)."""
    import casreg.content.codec as codec_module

    monkeypatch.setenv("CASREG_CACHE", cache)
    monkeypatch.setenv("CASREG_CACHE_DIR", str(work.parent / "cache"))
    calls = {"n": 0}
    real = codec_module.blake3

    def counting(*args: object) -> object:
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(codec_module, "blake3", counting)
    reg.pull("m", work / "dest")
    assert (work / "dest" / "random.bin").read_bytes() == random.Random(1234).randbytes(3_000_000)
    chunks = sum(len(e.chunks) for e in pushed.entries)
    assert chunks > 2
    assert calls["n"] == (0 if cache == "off" else chunks)


@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
def test_a_planes_chunk_that_decodes_to_other_bytes_is_named(tmp_path: Path, work: Path, where: float) -> None:
    """A flip inside a PLANES payload's raw mantissa plane still decodes, to other bytes:
    the pull (which checks those chunks through the file digest) finds the file wrong,
    reads it again chunk by chunk, and names the damaged chunk; nothing is written."""
    from test_planes import model_file

    reg = Registry(tmp_path / "reg")
    reg.push("w", model_file(tmp_path / "model.safetensors"))
    m = reg.manifest("w")
    c = next(c for e in m.entries for c in e.chunks if c.codec == Codec.PLANES)
    key = pack_key(c.pack)
    data = bytearray(reg.store.read(key))
    data[c.offset + int(c.stored_size * where)] ^= 0x04
    overwrite(reg, key, bytes(data))
    msg = refused(reg, "w", work)
    assert c.digest.hex() in msg and key in msg


def test_truncated_pack(reg: Registry, pushed: Manifest, work: Path) -> None:
    last = max((c for e in pushed.entries for c in e.chunks), key=lambda c: c.offset)
    key = pack_key(last.pack)
    overwrite(reg, key, reg.store.read(key)[: last.offset + last.stored_size // 2])
    msg = refused(reg, "m", work)
    assert key in msg and "truncated" in msg


def test_pack_truncated_to_nothing(reg: Registry, pushed: Manifest, work: Path) -> None:
    key = next(iter(pack_keys(reg)))
    overwrite(reg, key, b"")
    assert key in refused(reg, "m", work)


def test_deleted_pack(reg: Registry, pushed: Manifest, work: Path) -> None:
    key = next(iter(pack_keys(reg)))
    remove(reg, key)
    msg = refused(reg, "m", work)
    assert key in msg and "missing" in msg


def test_corrupt_pack_with_force_keeps_existing_destination(reg: Registry, pushed: Manifest, work: Path,
                                                            src: Path) -> None:
    dest = work / "dest"
    reg.pull("m", dest)
    (dest / "random.bin").write_bytes(b"locally modified")  # force would replace this copy...
    c = chunk(pushed, 0)
    key = pack_key(c.pack)
    data = bytearray(reg.store.read(key))
    data[c.offset + 7] ^= 0xFF
    overwrite(reg, key, bytes(data))
    before = listing(work)
    with pytest.raises(IntegrityError, match=key):
        reg.pull("m", dest, force=True)  # ...but not with corrupt data
    assert listing(work) == before


def test_corrupt_single_file_version(reg: Registry, tmp_path: Path, work: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(os.urandom(700_000))
    v = reg.push("single", f)
    key = pack_key(reg.manifest(v.ref).entries[0].chunks[0].pack)
    data = bytearray(reg.store.read(key))
    data[100] ^= 1
    overwrite(reg, key, bytes(data))
    assert key in refused(reg, "single", work, dest=work / "model.onnx")


def test_refused_pull_creates_no_parent_directories(reg: Registry, pushed: Manifest, work: Path) -> None:
    """Missing parents of DEST that the pull had to create are removed again when it is refused."""
    remove(reg, next(iter(pack_keys(reg))))
    refused(reg, "m", work, dest=work / "a" / "b" / "dest")


# -- manifests ------------------------------------------------------------------------------------------
def test_flipped_byte_in_manifest_header(reg: Registry, pushed: Manifest, work: Path) -> None:
    key = manifest_key(pushed.hexdigest)
    data = bytearray(reg.store.read(key))
    data[0] ^= 0xFF  # the zstd frame magic
    overwrite(reg, key, bytes(data))
    msg = refused(reg, "m", work)
    assert key in msg and "corrupt" in msg


def _flip_everywhere(reg: Registry, key: str, start: int, stop: int, masks: tuple[int, ...], work: Path,
                     expected: dict[str, bytes | None]) -> int:
    """Flip each bit of ``masks`` at each position in [start, stop) of object ``key``;
    every pull must either fail with IntegrityError leaving ``work`` as it was, or write
    exactly ``expected``. Returns how many were refused.

    Each pull names the version by its full digest: the flips are in its manifest or a
    pack, which the pull reads just the same, and resolving ``m`` (a listing and a ledger
    segment read, hundreds of times on S3) would not read any flipped byte."""
    orig = reg.store.read(key)
    refusals = 0
    dest = work / "dest"
    ref = str(reg.resolve("m").digest)
    for i in range(start, stop):
        for mask in masks:
            bad = bytearray(orig)
            bad[i] ^= mask
            overwrite(reg, key, bytes(bad))
            before = listing(work)
            try:
                reg.pull(ref, dest)
            except IntegrityError:
                refusals += 1
                assert listing(work) == before, (i, mask)
                continue
            got = {p.relative_to(dest).as_posix(): (p.read_bytes() if p.is_file() else None) for p in dest.rglob("*")}
            assert got == expected, (i, mask)
            for p in sorted(dest.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            dest.rmdir()
    overwrite(reg, key, orig)
    return refusals


def _tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def test_every_single_byte_flip_of_a_manifest_is_refused_or_harmless(reg: Registry, pushed: Manifest,
                                                                     work: Path, src: Path) -> None:
    """Whatever byte of the stored manifest flips, a pull either fails with an
    IntegrityError leaving nothing behind, or writes exactly the pushed content."""
    key = manifest_key(pushed.hexdigest)
    size = len(reg.store.read(key))
    refusals = _flip_everywhere(reg, key, 0, size, (0x01, 0x80), work, _tree(src))
    assert refusals > size  # most flips are detected
    reg.pull("m", work / "ok")
    assert _tree(work / "ok") == _tree(src)


def test_every_bit_flip_in_a_zstd_chunk_header_is_refused_or_harmless(reg: Registry, pushed: Manifest,
                                                                      work: Path, src: Path) -> None:
    c = chunk(pushed, 1)
    refusals = _flip_everywhere(reg, pack_key(c.pack), c.offset, c.offset + 24, (1, 2, 4, 8, 16, 32, 64, 128),
                                work, _tree(src))
    assert refusals > 24 * 8 // 2


def _huge_content_size(data: bytes, offset: int) -> bytes:
    """Rewrite (in place, same length) the header of the zstd frame at ``offset`` to claim
    a content size of 2**62 bytes: what one flipped bit of its Frame_Header_Descriptor
    (the content-size flag) can do to a real frame."""
    assert data[offset:offset + 4] == b"\x28\xb5\x2f\xfd"
    b = bytearray(data)
    b[offset + 4] = 0xE0  # single segment, 8-byte Frame_Content_Size
    b[offset + 5:offset + 13] = (1 << 62).to_bytes(8, "little")
    return bytes(b)


def test_zstd_frame_header_content_size_flip_in_manifest(reg: Registry, pushed: Manifest, work: Path) -> None:
    """Once a MemoryError escaped here (a one-bit flip of the content-size flag makes the
    header claim exabytes): it must be an IntegrityError naming the manifest."""
    key = manifest_key(pushed.hexdigest)
    overwrite(reg, key, _huge_content_size(reg.store.read(key), 0))
    assert key in refused(reg, "m", work)


def test_zstd_frame_header_content_size_flip_in_chunk(reg: Registry, pushed: Manifest, work: Path) -> None:
    c = chunk(pushed, 1)
    key = pack_key(c.pack)
    overwrite(reg, key, _huge_content_size(reg.store.read(key), c.offset))
    assert key in refused(reg, "m", work)


def test_manifest_replaced_by_one_for_other_content(reg: Registry, pushed: Manifest, work: Path,
                                                    tmp_path: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"different content")
    v = reg.push("other", other)
    key = manifest_key(pushed.hexdigest)
    overwrite(reg, key, reg.store.read(manifest_key(v.digest.removeprefix("blake3:"))))
    msg = refused(reg, "m", work)
    assert key in msg and pushed.hexdigest in msg
    with pytest.raises(IntegrityError, match=key):
        reg.files("m")
    assert reg.pull("other", work / "o.bin").digest == v.digest  # the donor is fine


def test_manifest_truncated_or_deleted(reg: Registry, pushed: Manifest, work: Path) -> None:
    key = manifest_key(pushed.hexdigest)
    orig = reg.store.read(key)
    overwrite(reg, key, orig[: len(orig) // 2])
    assert key in refused(reg, "m", work)
    overwrite(reg, key, b"")
    assert key in refused(reg, "m", work)
    remove(reg, key)
    msg = refused(reg, "m", work)
    assert key in msg and "missing" in msg


def _hostile(pushed: Manifest, path: str, kind: str = "dir") -> Manifest:
    """A manifest whose first file entry is renamed to ``path``; its chunks are real, so
    if the path were accepted the write would succeed."""
    real = pushed.files[0]
    entries = [Entry(path, real.type, real.size, real.digest, list(real.chunks))]
    if kind == "dir":
        entries += [Entry(e.path, e.type, e.size, e.digest, list(e.chunks)) for e in pushed.entries[1:]]
    return Manifest(kind, entries, dict(pushed.chunking))  # type: ignore[arg-type]


def _no_evil_anywhere(tmp_path: Path, marker: str) -> None:
    assert not [p for p in tmp_path.rglob("*") if marker in p.name]
    assert not [p for p in Path("/tmp").glob(f"*{marker}*")]


def hostile_paths(marker: str) -> list[str]:
    return [f"../{marker}", f"sub/../../{marker}", f"/tmp/{marker}", f"./{marker}", f"a//{marker}",
            f"..\\{marker}", f"a/{marker}\n", f"{marker}/.."]


def test_hostile_manifest_in_place_of_a_real_one(reg: Registry, pushed: Manifest, work: Path,
                                                 tmp_path: Path) -> None:
    key = manifest_key(pushed.hexdigest)
    marker = f"evil-{uuid.uuid4().hex[:8]}"
    for path in hostile_paths(marker):
        overwrite(reg, key, _hostile(pushed, path).to_bytes())
        msg = refused(reg, "m", work, UnsafePathError)
        assert key in msg and "hostile" in msg
    _no_evil_anywhere(tmp_path, marker)


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_hostile_manifest_stored_under_its_own_digest(reg: Registry, pushed: Manifest, work: Path,
                                                      tmp_path: Path, kind: str) -> None:
    """A hostile manifest that *does* hash right (stored at the key of its own digest)
    is still refused before anything is written."""
    marker = f"evil-{uuid.uuid4().hex[:8]}"
    for path in hostile_paths(marker):
        m = _hostile(pushed, path, kind)
        key = manifest_key(m.hexdigest)
        assert reg.store.create(key, m.to_bytes())
        msg = refused(reg, m.hexdigest, work, UnsafePathError)
        assert key in msg
        msg = refused(reg, "blake3:" + m.hexdigest[:12], work, UnsafePathError)
        assert key in msg
    _no_evil_anywhere(tmp_path, marker)


def test_manifest_with_a_file_that_is_also_a_directory(reg: Registry, pushed: Manifest, work: Path) -> None:
    real = pushed.files[0]
    m = Manifest("dir", [Entry("x", real.type, real.size, real.digest, list(real.chunks)),
                         Entry("x/y", real.type, real.size, real.digest, list(real.chunks))], {})
    key = manifest_key(m.hexdigest)
    assert reg.store.create(key, m.to_bytes())
    assert key in refused(reg, m.hexdigest, work, UnsafePathError)


@pytest.mark.parametrize("field", ["size", "offset"])
def test_manifest_with_an_infinite_number(reg: Registry, pushed: Manifest, work: Path, field: str) -> None:
    """JSON 1e999 parses as infinity; int() of it raises OverflowError, which must still
    come out as an IntegrityError naming the manifest."""
    key = manifest_key(pushed.hexdigest)
    doc = _manifest_doc(reg.store.read(key))
    entry = next(e for e in doc["entries"] if e["type"] != "d")
    if field == "size":
        entry["size"] = float("inf")
    else:
        entry["chunks"][0][2] = float("inf")
    text = json.dumps(doc).replace("Infinity", "1e999")
    overwrite(reg, key, seal_manifest(text.encode()))
    assert key in refused(reg, "m", work)


def test_manifest_whose_sizes_do_not_add_up(reg: Registry, pushed: Manifest, work: Path) -> None:
    key = manifest_key(pushed.hexdigest)
    doc = _manifest_doc(reg.store.read(key))
    next(e for e in doc["entries"] if e["type"] != "d")["size"] += 1
    overwrite(reg, key, seal_manifest(json.dumps(doc).encode()))
    msg = refused(reg, "m", work)
    assert key in msg and "add up" in msg


def test_corrupt_pack_id_in_manifest_names_the_manifest(reg: Registry, pushed: Manifest, work: Path) -> None:
    key = manifest_key(pushed.hexdigest)
    doc = _manifest_doc(reg.store.read(key))
    pid = doc["packs"][0]
    doc["packs"][0] = pid[:10] + ("0" if pid[10] != "0" else "1") + pid[11:]  # one hex digit changed
    overwrite(reg, key, _stale_checksum(reg.store.read(key), json.dumps(doc).encode()))
    msg = refused(reg, "m", work)
    assert key in msg


def _swap_chunk_lists(reg: Registry, tmp_path: Path) -> tuple[str, str]:
    """Push two equal-sized files and swap their chunk lists in the stored manifest
    (a well-formed, re-sealed manifest); return (key, version digest hex)."""
    src = tmp_path / "pair"
    src.mkdir()
    (src / "a.bin").write_bytes(random.Random(1).randbytes(300_000))
    (src / "b.bin").write_bytes(random.Random(2).randbytes(300_000))
    v = reg.push("m", src)
    key = manifest_key(v.digest.removeprefix("blake3:"))
    doc = _manifest_doc(reg.store.read(key))
    a, b = doc["entries"]
    a["chunks"], b["chunks"] = b["chunks"], a["chunks"]
    overwrite(reg, key, seal_manifest(json.dumps(doc).encode()))
    return key, v.digest.removeprefix("blake3:")


def test_manifest_with_swapped_chunk_lists(reg: Registry, tmp_path: Path, work: Path) -> None:
    """Format 2 (every new registry): the version digest commits to each file's chunk
    layout, so a manifest whose two equal-sized files swapped chunk lists no longer hashes
    to the version digest: it is refused as soon as it is read, naming it, by pull,
    ranged reads and verify alike."""
    key, _ = _swap_chunk_lists(reg, tmp_path)
    with pytest.raises(IntegrityError, match="its entries hash to"):
        reg.manifest("m")
    msg = refused(reg, "m", work)
    assert key in msg
    with pytest.raises(IntegrityError, match=key):
        reg.open_safetensors("m/a.bin")
    report = reg.verify("m")
    assert not report.ok and report.problems[0].key == key


def test_format_1_swapped_chunk_lists_are_caught_by_the_file_digest(reg: Registry, tmp_path: Path,
                                                                     work: Path) -> None:
    """Format 1 (older registries): chunk locations are not part of the version digest,
    so the swapped manifest still hashes right and every chunk verifies; the whole-file
    digests do not match, so the pull is refused (the weaker guarantee FORMAT.md states)."""
    from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
    from casreg.content.config import init_config

    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/1")
    key, digest = _swap_chunk_lists(reg, tmp_path)
    assert reg.manifest("m").hexdigest == digest and reg.manifest("m").tree == 1  # still "valid"
    msg = refused(reg, "m", work)
    assert "does not match its digest" in msg


def _index_keys(reg: Registry) -> list[str]:
    return sorted(k for k in reg.store.list("index") if k.endswith(".idx"))


def test_garbage_index_only_costs_dedup(reg: Registry, tmp_path: Path, work: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(random.Random(5).randbytes(1_500_000))
    reg.push("m", f)
    [ikey] = _index_keys(reg)
    overwrite(reg, ikey, b"garbage")
    g = tmp_path / "renamed.bin"
    g.write_bytes(f.read_bytes())
    v2 = reg.push("m2", g)
    assert v2.new_bytes == v2.size  # the chunks were stored again
    reg.pull("m2", work / "out.bin")
    assert (work / "out.bin").read_bytes() == f.read_bytes()


def test_a_push_reads_a_planted_huge_index_only_up_to_the_bound(reg: Registry, tmp_path: Path) -> None:
    """An index object far larger than any pack's (named by its own BLAKE3, as a genuine
    one is) is read at most ``MAX_INDEX_BYTES`` + 1 bytes by a push, then ignored."""
    from blake3 import blake3

    from casreg.content.packs import MAX_INDEX_BYTES
    from casreg.keys import index_key
    from casreg.storage import ByteRange

    huge = bytes(MAX_INDEX_BYTES + 4096)
    key = index_key(blake3(huge).hexdigest())
    assert reg.store.create(key, huge)
    del huge
    asked: list[ByteRange | None] = []
    inner_read = reg.store.read

    def read(k: str, byte_range: ByteRange | None = None) -> bytes:
        if k == key:
            asked.append(byte_range)
        return inner_read(k, byte_range)

    reg.store.read = read  # type: ignore[method-assign]
    f = tmp_path / "w.bin"
    f.write_bytes(random.Random(6).randbytes(300_000))
    v = reg.push("m", f)
    assert v.new_bytes == v.size
    assert asked and all(r is not None and r.length <= MAX_INDEX_BYTES + 1 for r in asked), asked


def test_corrupt_index_does_not_poison_later_pushes(reg: Registry, tmp_path: Path, work: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(random.Random(6).randbytes(1_500_000))
    reg.push("m", f)
    [ikey] = _index_keys(reg)
    data = bytearray(reg.store.read(ikey))
    data[32] ^= 0x01  # the offset of the first chunk (entry = digest:32, offset:u64, ...)
    overwrite(reg, ikey, bytes(data))
    g = tmp_path / "renamed.bin"  # same bytes under another name: a new manifest, deduped chunks
    g.write_bytes(f.read_bytes())
    reg.push("m2", g)
    reg.pull("m2", work / "out.bin")
    assert (work / "out.bin").read_bytes() == f.read_bytes()


# -- through the CLI -----------------------------------------------------------------------------------------
def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "registry"), CASREG_USER="cli@example.test",
               HOME=str(tmp_path), GIT_CEILING_DIRECTORIES=str(tmp_path))
    return subprocess.run([str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _one_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 6, (p.returncode, p.stderr)  # IntegrityError's exit code
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("casreg: error: "), p.stderr
    return lines[0]


def test_cli_reports_corruption(tmp_path: Path, src: Path, work: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.push("m", src)
    m = reg.manifest("m")
    before = listing(work)

    c = chunk(m, 1)
    pkey = pack_key(c.pack)
    ppath = tmp_path / "registry" / pkey
    orig_pack = ppath.read_bytes()
    data = bytearray(orig_pack)
    data[c.offset + c.stored_size // 2] ^= 0x55
    ppath.write_bytes(bytes(data))
    assert pkey in _one_line(_cli(tmp_path, "pull", "m", str(work / "dest")))
    assert listing(work) == before

    ppath.unlink()
    line = _one_line(_cli(tmp_path, "pull", "m:1", str(work / "dest")))
    assert pkey in line and "missing" in line
    assert listing(work) == before
    ppath.write_bytes(orig_pack)

    mkey = manifest_key(m.hexdigest)
    mpath = tmp_path / "registry" / mkey
    mdata = bytearray(mpath.read_bytes())
    mdata[0] ^= 0xFF
    mpath.write_bytes(bytes(mdata))
    assert mkey in _one_line(_cli(tmp_path, "pull", "m", str(work / "dest")))
    assert mkey in _one_line(_cli(tmp_path, "show", "m"))
    assert listing(work) == before

    marker = f"evil-{uuid.uuid4().hex[:8]}"
    mpath.write_bytes(_hostile(m, f"../{marker}").to_bytes())
    line = _one_line(_cli(tmp_path, "pull", "m", str(work / "dest")))
    assert mkey in line and "hostile" in line
    assert listing(work) == before
    _no_evil_anywhere(tmp_path, marker)


def test_cli_corrupt_manifest_frame_header_is_one_line_error(tmp_path: Path, src: Path, work: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.push("m", src)
    mpath = tmp_path / "registry" / manifest_key(reg.manifest("m").hexdigest)
    mpath.write_bytes(_huge_content_size(mpath.read_bytes(), 0))
    before = listing(work)
    p = _cli(tmp_path, "pull", "m", str(work / "dest"))
    assert listing(work) == before
    assert "Traceback" not in p.stderr
    assert mpath.relative_to(tmp_path / "registry").as_posix() in _one_line(p)
