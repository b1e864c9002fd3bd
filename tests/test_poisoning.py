"""Index poisoning: a push never commits a version it has not proven readable.

Someone who can write to a registry (and knows, or guesses, what a victim will push: a
public base model) plants objects that advertise the victim's chunks: an index next to
a garbage pack, an index alone, a truncated pack, an index naming chunks at the wrong
offsets, a stale manifest under the version digest, or garbage under the very pack name
the victim's push will use. Each time the victim's push must commit a version that pulls
back byte-identical and passes ``casreg verify`` (docs/security.md, "What push trusts").
On main before this, each of these pushes reported "dedup 100%" into an unreadable version
or failed on every retry.

Every test runs on a local directory, ``memory://`` and S3 (SeaweedFS).
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from blake3 import blake3

import casreg.content.trust as trust
from casreg import Registry
from casreg.content.fetch import read_span
from casreg.content.manifest import ChunkRef, Entry, Manifest
from casreg.content.packs import PACK_MAGIC, _Slot, encode_index
from casreg.keys import index_key, manifest_key, pack_key
from casreg.storage import ObjectStore
from casreg.storage.memory import MemoryStore
from casreg.testing.counting import CountingStore

SCRIPT = Path(sys.executable).with_name("casreg")
MiB = 1 << 20


def model(root: Path, seed: int = 7) -> Path:
    """A model directory: ~3 MiB of incompressible weights (several chunks, stored raw)
    and a compressible text file (one zstd chunk)."""
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(rnd.randbytes(3 * MiB + 12345))
    (root / "notes.txt").write_bytes(b"".join(b"line %d of model card %d\n" % (i, seed) for i in range(20000)))
    return root


@dataclass
class Chunk:
    digest: bytes
    raw: bytes
    payload: bytes  # the stored (encoded) form a genuine pack holds
    codec: int


@dataclass
class Known:
    """What the attacker knows: the victim's content, pushed into a scratch registry."""

    manifest: Manifest
    chunks: list[Chunk]  # every distinct chunk, in manifest order
    packs: dict[str, bytes]  # the scratch registry's pack objects (what the victim's push would write)


def attacker_knowledge(src: Path) -> Known:
    scratch = MemoryStore(f"memory://scratch-{uuid.uuid4().hex}")
    try:
        reg = Registry.from_store(scratch)
        v = reg.push("x", src)
        m = reg.manifest(v.ref)
        chunks: dict[bytes, Chunk] = {}
        for e in m.entries:
            for c in e.chunks:
                if c.digest not in chunks:
                    raw = read_span(scratch, [c], cache=None)[0]
                    payload = scratch.read(pack_key(c.pack))[c.offset:c.offset + c.stored_size]
                    chunks[c.digest] = Chunk(c.digest, raw, payload, c.codec)
        packs = {k: scratch.read(k) for k in scratch.list("packs")}
        return Known(m, list(chunks.values()), packs)
    finally:
        MemoryStore.wipe(scratch.url)


def forge(chunks: list[Chunk], payloads: list[bytes] | None = None, digests: list[bytes] | None = None
          ) -> tuple[str, bytes, bytes]:
    """An index laid out as a writer lays one out (payloads back to back after the magic)
    and the pack it describes: ``(pack id, index, pack bytes)``. ``payloads``/``digests``
    replace what the pack holds / what the index claims."""
    payloads = payloads if payloads is not None else [c.payload for c in chunks]
    digests = digests if digests is not None else [c.digest for c in chunks]
    slots, offset = [], len(PACK_MAGIC)
    for c, p, d in zip(chunks, payloads, digests):
        slots.append(_Slot(d, offset, len(p), len(c.raw), c.codec))
        offset += len(p)
    index = encode_index(slots)
    return blake3(index).hexdigest(), index, PACK_MAGIC + b"".join(payloads) + index


def plant(store: ObjectStore, pack_id: str, index: bytes | None, pack: bytes | None) -> None:
    if pack is not None:
        assert store.create(pack_key(pack_id), pack)
    if index is not None:
        assert store.create(index_key(pack_id), index)


def stale_manifest(known: Known, pack_id: str) -> bytes:
    """A manifest of the victim's version (same digest) naming every chunk in ``pack_id``
    at made-up offsets."""
    m = known.manifest
    entries = [Entry(e.path, e.type, e.size, e.digest,
                     [ChunkRef(c.digest, pack_id, 16 + i * 100, c.stored_size, c.raw_size, c.codec)
                      for i, c in enumerate(e.chunks)]) for e in m.entries]
    out = Manifest(m.kind, entries, m.chunking, tree=m.tree)
    assert out.digest == m.digest
    return out.to_bytes()


def pushes_readable(reg: Registry, src: Path, dest: Path) -> str:
    """The victim's push commits a version that pulls back byte-identical, and verify
    (of the version, and through the CLI) passes; returns its reference."""
    v = reg.push("victim", src)
    reg.pull(v.ref, dest)
    for p in src.rglob("*"):
        if p.is_file():
            assert (dest / p.relative_to(src)).read_bytes() == p.read_bytes(), p
    report = reg.verify(v.ref)
    assert report.ok, [p.line() for p in report.problems]
    if not reg.url.startswith("memory://"):
        out = subprocess.run([str(SCRIPT), "verify", v.ref, "--registry", reg.url], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ))
        assert out.returncode == 0 and "all good" in out.stdout, out.stdout + out.stderr
    return v.ref


@pytest.fixture
def victim(registry: Registry, tmp_path: Path) -> tuple[Registry, Path, Known]:
    src = model(tmp_path / "src")
    known = attacker_knowledge(src)
    registry.push("other", model(tmp_path / "unrelated", seed=99))  # the registry exists and has a pack
    return registry, src, known


# -- poisoned indexes -----------------------------------------------------------------------------
def test_index_next_to_a_garbage_pack(victim: tuple[Registry, Path, Known], tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """The pack has the right size, magic and trailer; only the payloads are garbage."""
    reg, src, known = victim
    rnd = random.Random(1)
    pack_id, index, pack = forge(known.chunks, payloads=[rnd.randbytes(len(c.payload)) for c in known.chunks])
    plant(reg.store, pack_id, index, pack)
    with caplog.at_level(logging.WARNING, logger="casreg.content.push"):
        ref = pushes_readable(reg, src, tmp_path / "out")
    assert any(pack_key(pack_id) in r.getMessage() for r in caplog.records)
    assert reg.show(ref).new_bytes == reg.show(ref).size  # nothing was deduplicated against the garbage
    # The chunks stored anew, in the same order and sizes, make the very index the forger
    # wrote, so the push's own pack has the garbage pack's name: it was replaced.
    assert reg.store.read(pack_key(pack_id)) == pack[:16] + b"".join(c.payload for c in known.chunks) + index


@pytest.mark.parametrize("order", ["same", "reversed"])
def test_index_without_a_pack(victim: tuple[Registry, Path, Known], tmp_path: Path, order: str) -> None:
    """The index alone. Listing the chunks in the order the victim's push stores them
    (``same``), it is the very index that push writes: the push writes the pack beside
    it. In another order it names a pack nobody will write: the push removes it."""
    reg, src, known = victim
    pack_id, index, pack = forge(known.chunks if order == "same" else known.chunks[::-1])
    plant(reg.store, pack_id, index, None)
    ref = pushes_readable(reg, src, tmp_path / "out")
    assert reg.show(ref).new_bytes == reg.show(ref).size
    if order == "same":
        assert reg.store.read(pack_key(pack_id)) == pack and reg.store.read(index_key(pack_id)) == index
    else:
        assert not reg.store.exists(index_key(pack_id))  # an index whose pack is missing is removed
    pushes_readable(reg, src, tmp_path / "out2")  # and pushing again is fine


@pytest.mark.parametrize("cut", ["trailer", "middle"])
def test_index_with_a_truncated_pack(victim: tuple[Registry, Path, Known], tmp_path: Path, cut: str) -> None:
    """The genuine pack bytes, cut short (an interrupted copy): in its trailer, or halfway."""
    reg, src, known = victim
    pack_id, index, pack = forge(known.chunks)
    plant(reg.store, pack_id, index, pack[:-10] if cut == "trailer" else pack[:len(pack) // 2])
    ref = pushes_readable(reg, src, tmp_path / "out")
    assert reg.show(ref).new_bytes == reg.show(ref).size
    assert reg.store.read(pack_key(pack_id)) == pack  # the push's own pack (same index): no longer truncated


@pytest.mark.parametrize("how", ["rotated", "scattered"])
def test_index_naming_chunks_at_the_wrong_offsets(victim: tuple[Registry, Path, Known], tmp_path: Path,
                                                  how: str) -> None:
    """The pack holds the genuine payloads; its index names each at another chunk's
    offset (laid out like a real index: ``rotated``), or points every entry at the first
    payload (``scattered``: no writer lays a pack out like that)."""
    reg, src, known = victim
    n = len(known.chunks)
    assert n >= 3
    if how == "rotated":
        pack_id, index, pack = forge(known.chunks, digests=[known.chunks[(i + 1) % n].digest for i in range(n)])
    else:
        _, _, pack_body = forge(known.chunks)
        first = known.chunks[0]
        slots = [_Slot(c.digest, len(PACK_MAGIC), len(first.payload), len(first.raw), first.codec)
                 for c in known.chunks]
        index = encode_index(slots)
        pack_id, pack = blake3(index).hexdigest(), pack_body[:-len(encode_index([]))] + index
    plant(reg.store, pack_id, index, pack)
    ref = pushes_readable(reg, src, tmp_path / "out")
    assert pack_id not in {c.pack for e in reg.manifest(ref).entries for c in e.chunks}


def test_garbage_under_the_name_of_the_pack_the_push_will_write(victim: tuple[Registry, Path, Known],
                                                                tmp_path: Path) -> None:
    """A pack's name is the hash of its index, which is predictable from the content: an
    object of the right size planted there must not be taken for the push's own pack."""
    reg, src, known = victim
    planted = []
    for key, data in known.packs.items():
        assert reg.store.create(key, b"\0" * len(data))
        planted.append(key)
    ref = pushes_readable(reg, src, tmp_path / "out")
    used = {pack_key(c.pack) for e in reg.manifest(ref).entries for c in e.chunks}
    assert used & set(planted)  # the push did write those very packs: the garbage was replaced
    for key in planted:
        assert reg.store.read(key) == known.packs[key]


def test_a_genuine_foreign_pack_is_verified_once_and_deduplicated(victim: tuple[Registry, Path, Known],
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule costs dedup only when a pack is bad: a correct pack written by another
    machine is read back once, used, and then trusted by this machine's next pushes."""
    reg, src, known = victim
    for key, data in known.packs.items():  # what another machine's push of the same content wrote
        assert reg.store.create(key, data)
        pack_id = key.rsplit("/", 1)[1].removesuffix(".pack")
        assert reg.store.create(index_key(pack_id), _index_of(data))
    counted = CountingStore(reg.store)
    first = Registry.from_store(counted).push("victim", src)
    assert first.new_bytes == 0  # all deduplicated, against packs it had to read back
    assert counted.bytes_read["packs"] >= sum(len(d) for d in known.packs.values()) - 1024
    pushes_readable(reg, src, tmp_path / "out")
    # the next push from this machine (a new process: only the cache directory remembers)
    monkeypatch.setattr(trust, "_SEEN", {})
    counted.reset()
    again = Registry.from_store(counted).push("victim", src)
    assert again.new_bytes == 0
    # remembered on disk (the chunk cache's directory, or the state directory of a local
    # registry), except by memory:// registries, which live in one process
    persistent = not reg.url.startswith("memory://")
    assert (counted.bytes_read["packs"] == 0) == persistent


def _index_of(pack: bytes) -> bytes:
    """The index trailer of a genuine pack (its last ``count * 52 + 16`` bytes)."""
    count = int.from_bytes(pack[-16:-8], "little")
    return pack[-(count * 52 + 16):]


# -- stale manifests ------------------------------------------------------------------------------
@pytest.mark.parametrize("with_index", [True, False])
def test_stale_manifest_naming_a_missing_pack(victim: tuple[Registry, Path, Known], tmp_path: Path,
                                              with_index: bool) -> None:
    """What the reported attack left behind: a manifest under the victim's version digest
    whose chunks live in a pack that does not exist (with or without its index). Every
    push reused it and failed "deleted by a concurrent gc ... push again"."""
    reg, src, known = victim
    pack_id, index, _ = forge(known.chunks)
    if with_index:
        plant(reg.store, pack_id, index, None)
    key = manifest_key(known.manifest.hexdigest)
    assert reg.store.create(key, stale_manifest(known, pack_id))
    pushes_readable(reg, src, tmp_path / "out")
    assert reg.store.read(key) != stale_manifest(known, pack_id)


def test_stale_manifest_naming_a_garbage_pack(victim: tuple[Registry, Path, Known], tmp_path: Path) -> None:
    reg, src, known = victim
    rnd = random.Random(2)
    pack_id, index, pack = forge(known.chunks, payloads=[rnd.randbytes(len(c.payload)) for c in known.chunks])
    plant(reg.store, pack_id, None, pack)  # the pack alone: the push never dedups against it
    assert reg.store.create(manifest_key(known.manifest.hexdigest), stale_manifest(known, pack_id))
    pushes_readable(reg, src, tmp_path / "out")


def test_stale_manifest_that_does_not_parse(victim: tuple[Registry, Path, Known], tmp_path: Path) -> None:
    reg, src, known = victim
    assert reg.store.create(manifest_key(known.manifest.hexdigest), b"not a manifest")
    pushes_readable(reg, src, tmp_path / "out")


def test_a_good_stored_manifest_is_kept(victim: tuple[Registry, Path, Known], tmp_path: Path) -> None:
    """Pushing the same content again keeps the manifest readers already use."""
    reg, src, _ = victim
    ref = pushes_readable(reg, src, tmp_path / "out")
    key = manifest_key(reg.resolve(ref).digest)
    before = reg.store.read(key)
    pushes_readable(reg, src, tmp_path / "out2")
    assert reg.store.read(key) == before
