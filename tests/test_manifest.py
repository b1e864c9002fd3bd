"""Tree digests, manifest (de)serialisation and its refusal of hostile input, chunk
boundaries and pack indexes.

The tree digest is recomputed here from the spec (``spec_tree_digest``), independently of
casreg/content/manifest.py; hostile manifests are hand-written JSON, independent of the writer.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from blake3 import blake3
from conftest import SERVERLESS
from hypothesis import given, settings
from hypothesis import strategies as st

import casreg
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS, ChunkParams, chunk_bytes, iter_chunks
from casreg.content.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_FORMATS,
    ChunkRef,
    Entry,
    Manifest,
    layout_digest,
    seal_manifest,
    stored_bound,
    tree_digest,
    validate_relpath,
)
from casreg.content.packs import PACK_MAGIC, PackBuilder, _Slot, decode_index, encode_index
from casreg.errors import IntegrityError, UnsafePathError
from casreg.keys import pack_key
from casreg.storage import ObjectStore

WHERE = "manifests/ab/abcdef.manifest"
PACK = "ab" * 32


# -- the spec, implemented independently -------------------------------------------------------
def spec_tree_digest(kind: str, entries: list[tuple[str, str, int, str]]) -> str:
    """BLAKE3 of b"casreg-tree-v1\\0" kind b"\\0" then, sorted by UTF-8 path bytes,
    b"f|x <size> <64-hex digest> <path>\\0" per file and b"d <path>\\0" per directory."""
    buf = bytearray(b"casreg-tree-v1\x00")
    buf += kind.encode("utf-8") + b"\x00"
    for path, typ, size, hexdigest in sorted(entries, key=lambda e: e[0].encode("utf-8")):
        if typ == "d":
            buf += b"d " + path.encode("utf-8") + b"\x00"
        else:
            buf += f"{typ} {size} {hexdigest} {path}".encode() + b"\x00"
    return blake3(bytes(buf)).hexdigest()


def spec_layout_digest(chunks: list[bytes]) -> str:
    """BLAKE3 of b"casreg-layout-v1\\0" then, per chunk, its 32-byte digest and its size as
    8 bytes little-endian (docs/FORMAT.md §5, format 2)."""
    buf = bytearray(b"casreg-layout-v1\x00")
    for data in chunks:
        buf += blake3(data).digest() + len(data).to_bytes(8, "little")
    return blake3(bytes(buf)).hexdigest()


def spec_tree_digest_v2(kind: str, entries: list[tuple[str, str, bytes | None]]) -> str:
    """Format 2: as format 1 with the layout digest after the file digest; ``entries`` hold
    (path, type, bytes), each small file being one chunk (an empty file, none)."""
    buf = bytearray(b"casreg-tree-v2\x00" + kind.encode() + b"\x00")
    for path, typ, data in sorted(entries, key=lambda e: e[0].encode("utf-8")):
        if typ == "d":
            buf += b"d " + path.encode("utf-8") + b"\x00"
        else:
            assert data is not None
            layout = spec_layout_digest([data] if data else [])
            buf += f"{typ} {len(data)} {blake3(data).hexdigest()} {layout} {path}".encode() + b"\x00"
    return blake3(bytes(buf)).hexdigest()


def as_tuples(entries: list[Entry]) -> list[tuple[str, str, int, str]]:
    return [(e.path, e.type, e.size, e.digest.hex()) for e in entries]


def b3(data: bytes) -> str:
    return blake3(data).hexdigest()


# -- golden vectors -------------------------------------------------------------------------------
HELLO_DIGEST = "8a6aa4815a96ca56f0c28a5a19ee401d4a2b4eb866a84ea06622784760bcf488"
TREE_DIGEST = "46d89a0fd04b858c16e334d7f4f8260de07a7ad3c5dd0bc7e9ad010b19802f3d"
#: format 2 (new registries): the same content, with each file's chunk layout committed
HELLO_DIGEST_V2 = "23f5d1e5c614edc7750551e20266882280774d050f09063e58330e086a133f4d"
TREE_DIGEST_V2 = "eeee1dc5c16feebbbad3f199fb4cbc9777e178b0e086b299801e91ccf8eb8959"
HELLO_LAYOUT = "16ce165271a15c418c9f3e47029b60aa66d572c43948f2298ae724aec5df5670"
EMPTY_LAYOUT = "fa979e931edbe3f1302a0bac409aeb00061e3c8863caa0eb88ec0f0c016d114c"
HELLO_ENTRIES = [("hello.txt", "f", 6, b3(b"hello\n"))]
TREE_ENTRIES = [
    ("bin/run.sh", "x", 10, b3(b"#!/bin/sh\n")),
    ("empty", "d", 0, ""),
    ("a.txt", "f", 1, b3(b"a")),
]


def test_golden_tree_digests_from_the_spec() -> None:
    assert b3(b"hello\n") == "8e4c7c1b99dbfd50e7a95185fead5ee1448fa904a2fdd778eaf5f2dbfd629a99"
    assert spec_tree_digest("file", HELLO_ENTRIES) == HELLO_DIGEST
    assert spec_tree_digest("dir", TREE_ENTRIES) == TREE_DIGEST
    assert spec_layout_digest([b"hello\n"]) == HELLO_LAYOUT and spec_layout_digest([]) == EMPTY_LAYOUT
    assert spec_tree_digest_v2("file", [("hello.txt", "f", b"hello\n")]) == HELLO_DIGEST_V2
    assert spec_tree_digest_v2("dir", [("bin/run.sh", "x", b"#!/bin/sh\n"), ("empty", "d", None),
                                       ("a.txt", "f", b"a")]) == TREE_DIGEST_V2


def test_casreg_agrees_with_golden_tree_digests() -> None:
    def entries(rows: list[tuple[str, str, int, str]]) -> list[Entry]:
        return [Entry(p, t, s, bytes.fromhex(d)) for p, t, s, d in rows]  # type: ignore[arg-type]

    assert tree_digest("file", entries(HELLO_ENTRIES)).hex() == HELLO_DIGEST
    assert tree_digest("dir", entries(TREE_ENTRIES)).hex() == TREE_DIGEST
    assert Manifest("dir", entries(TREE_ENTRIES), {}).hexdigest == TREE_DIGEST

    def one_chunk(data: bytes) -> list[ChunkRef]:
        return [ChunkRef(blake3(data).digest(), "00" * 32, 16, len(data), len(data), 0)] if data else []

    hello = [Entry("hello.txt", "f", 6, blake3(b"hello\n").digest(), one_chunk(b"hello\n"))]
    tree = [Entry(p, t, len(d), blake3(d).digest(), one_chunk(d)) for p, t, d in  # type: ignore[arg-type]
            (("a.txt", "f", b"a"), ("bin/run.sh", "x", b"#!/bin/sh\n"))] + [Entry("empty", "d")]
    assert layout_digest(hello[0].chunks).hex() == HELLO_LAYOUT and layout_digest([]).hex() == EMPTY_LAYOUT
    assert tree_digest("file", hello, 2).hex() == HELLO_DIGEST_V2
    assert Manifest("dir", tree, {}, tree=2).hexdigest == TREE_DIGEST_V2
    # where chunks are stored is not part of either digest
    moved = [Entry(e.path, e.type, e.size, e.digest, [dataclasses.replace(c, pack="ff" * 32, offset=99)
                                                      for c in e.chunks]) for e in tree]
    assert Manifest("dir", moved, {}, tree=2).hexdigest == TREE_DIGEST_V2


def test_pushed_versions_have_golden_digests(registry: casreg.Registry, tmp_path: Path) -> None:
    hello = tmp_path / "src1" / "hello.txt"
    hello.parent.mkdir()
    hello.write_bytes(b"hello\n")
    tree = tmp_path / "src2" / "model"
    (tree / "bin").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "a.txt").write_bytes(b"a")
    (tree / "a.txt").chmod(0o644)
    (tree / "bin" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "bin" / "run.sh").chmod(0o755)

    v1 = registry.push("hello", hello)
    v2 = registry.push("tree", tree)
    assert v1.digest == "blake3:" + HELLO_DIGEST_V2  # a new registry is of format 2
    assert v2.digest == "blake3:" + TREE_DIGEST_V2
    assert [(f.path, f.type, f.size) for f in registry.files("tree:1")] == [
        ("a.txt", "f", 1), ("bin/run.sh", "x", 10), ("empty", "d", 0)]


def test_a_format_1_registry_keeps_format_1_digests(registry: casreg.Registry, tmp_path: Path) -> None:
    from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
    from casreg.content.config import init_config

    init_config(registry.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/1")
    hello = tmp_path / "hello.txt"
    hello.write_bytes(b"hello\n")
    v = registry.push("hello", hello)
    assert v.digest == "blake3:" + HELLO_DIGEST and registry.manifest(v.ref).tree == 1


# -- strategies --------------------------------------------------------------------------------------
components = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="/\\"),
    min_size=1, max_size=6,
).filter(lambda c: c not in (".", ".."))


def _safe(path: str) -> bool:
    try:
        validate_relpath(path)
    except UnsafePathError:
        return False
    return True


paths = st.lists(components, min_size=1, max_size=3).map("/".join).filter(_safe)
digests32 = st.binary(min_size=32, max_size=32)


@st.composite
def trees(draw: st.DrawFn, with_chunks: bool = False) -> tuple[str, list[Entry]]:
    """A valid version: a ``file`` of one top-level file, or a ``dir`` whose entries are
    unique and where no entry is the parent of another."""
    kind = draw(st.sampled_from(["file", "dir"]))
    if kind == "file":
        chosen = [draw(components.filter(lambda c: _safe(c)))]
    else:
        raw = draw(st.lists(paths, min_size=1, max_size=8, unique=True))
        chosen = [p for p in raw if not any(q.startswith(p + "/") for q in raw)]
    packs = draw(st.lists(st.text("0123456789abcdef", min_size=64, max_size=64), min_size=1, max_size=3))
    out = []
    for i, p in enumerate(chosen):
        typ = draw(st.sampled_from(["f", "x"] if kind == "file" or i == 0 else ["f", "x", "d"]))
        if typ == "d":
            out.append(Entry(p, "d"))
            continue
        chunks = []
        if with_chunks:
            for _ in range(draw(st.integers(0, 3))):
                raw = draw(st.integers(1, 2**22))
                chunks.append(ChunkRef(draw(digests32), draw(st.sampled_from(packs)), draw(st.integers(16, 2**40)),
                                       draw(st.integers(0, stored_bound(raw))), raw, draw(st.sampled_from([0, 1]))))
            size = sum(c.raw_size for c in chunks)
        else:
            size = draw(st.integers(0, 2**50))
        out.append(Entry(p, typ, size, draw(digests32), chunks))  # type: ignore[arg-type]
    return kind, out


# -- tree digest properties ----------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(trees(), st.randoms(use_true_random=False))
def test_digest_follows_the_spec_and_ignores_entry_order(tree: tuple[str, list[Entry]], rnd: Any) -> None:
    kind, entries = tree
    want = spec_tree_digest(kind, as_tuples(entries))
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert tree_digest(kind, entries).hex() == want
    assert tree_digest(kind, shuffled).hex() == want
    assert Manifest(kind, shuffled, {"any": "chunking"}).hexdigest == want  # chunking is not hashed


@settings(max_examples=200, deadline=None)
@given(trees(), st.data())
def test_any_change_changes_the_digest(tree: tuple[str, list[Entry]], data: st.DataObject) -> None:
    kind, entries = tree
    before = tree_digest(kind, entries)
    i = data.draw(st.integers(0, len(entries) - 1), label="entry")
    e = entries[i]
    what = data.draw(st.sampled_from(["path", "size", "type", "digest", "kind", "drop"]), label="change")
    changed = [Entry(x.path, x.type, x.size, x.digest, x.chunks) for x in entries]
    new_kind = kind
    if what == "path":
        taken = {x.path for x in entries}
        new_path = data.draw(paths.filter(lambda p: p not in taken), label="new path")
        changed[i].path = new_path
    elif what == "size":
        if e.type == "d":  # a directory has no size; make it a file instead
            changed[i] = Entry(e.path, "f", 0, bytes(32))
        else:
            changed[i].size = data.draw(st.integers(0, 2**50).filter(lambda s: s != e.size), label="size")
    elif what == "type":
        flip = {"f": "x", "x": "f", "d": "f"}[e.type]
        changed[i] = Entry(e.path, flip, e.size, e.digest if e.type != "d" else bytes(32))  # type: ignore[arg-type]
        if e.type != "d" and data.draw(st.booleans(), label="to dir"):
            changed[i] = Entry(e.path, "d")
    elif what == "digest":
        if e.type == "d":
            changed[i] = Entry(e.path, "f", 0, bytes(32))
        else:
            bit = data.draw(st.integers(0, 255), label="bit")
            d = bytearray(e.digest)
            d[bit // 8] ^= 1 << (bit % 8)
            changed[i].digest = bytes(d)
    elif what == "kind":
        new_kind = "dir" if kind == "file" else "file"
    else:
        del changed[i]
    after = tree_digest(new_kind, changed)  # type: ignore[arg-type]
    assert after != before
    assert after.hex() == spec_tree_digest(new_kind, as_tuples(changed))


# -- serialisation round trip ---------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(trees(with_chunks=True), st.dictionaries(st.sampled_from(["avg_size", "min_size", "note"]),
                                                st.integers(0, 2**30), max_size=3), st.sampled_from([1, 2]))
def test_to_bytes_from_bytes_round_trip(tree: tuple[str, list[Entry]], chunking: dict[str, int], fmt: int) -> None:
    kind, entries = tree
    m = Manifest(kind, list(entries), dict(chunking), tree=fmt)  # type: ignore[arg-type]
    data = m.to_bytes()
    back = Manifest.from_bytes(data, expected=m.digest, where=WHERE)
    assert back == m
    assert back.kind == kind and back.chunking == chunking and back.digest == m.digest
    assert [e.path for e in back.entries] == sorted((e.path for e in entries), key=lambda p: p.encode())
    for e in back.entries:
        orig = next(x for x in entries if x.path == e.path)
        assert (e.type, e.size, e.digest, e.chunks) == (orig.type, orig.size, orig.digest, orig.chunks)
    doc = json.loads(zstandard.ZstdDecompressor().decompress(data[:-32]))  # zstd frame + BLAKE3 trailer
    assert doc["format"] == MANIFEST_FORMATS[fmt] and doc["digest"] == "blake3:" + m.hexdigest
    assert back.tree == fmt and (fmt == 1 or m.digest == tree_digest(kind, list(entries), 2))


def reference_json(m: Manifest) -> bytes:
    """A manifest's JSON as ``json.dumps`` writes its document (how ``to_bytes`` wrote it
    before it wrote entry by entry)."""
    packs: dict[str, int] = {}
    entries = []
    for e in m.entries:
        item: dict[str, Any] = {"path": e.path, "type": e.type}
        if e.type != "d":
            item["size"] = e.size
            item["digest"] = e.digest.hex()
            item["chunks"] = [[c.digest.hex(), packs.setdefault(c.pack, len(packs)), c.offset, c.stored_size,
                               c.raw_size, c.codec] for c in e.chunks]
        entries.append(item)
    doc: dict[str, Any] = {"format": MANIFEST_FORMATS[m.tree], "digest": str(m.version_digest), "kind": m.kind,
                           "chunking": m.chunking, "packs": list(packs), "entries": entries}
    if m.bases:
        doc["bases"] = [[c.digest.hex(), packs.setdefault(c.pack, len(packs)), c.offset, c.stored_size, c.raw_size,
                         c.codec] for c in m.bases]
        doc["packs"] = list(packs)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=150, deadline=None)
@given(trees(with_chunks=True), st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3),
       st.sampled_from([1, 2]), st.lists(st.tuples(digests32, st.text("0123456789abcdef", min_size=64, max_size=64),
                                                   st.integers(0, 2**40), st.integers(1, 2**22)), max_size=3),
       st.sampled_from(["", '"', "\\", "\u00e9", "\u2028", "\U0001f600", "\x7f"]))
def test_to_json_writes_what_json_dumps_writes(tree: tuple[str, list[Entry]], chunking: dict[str, Any], fmt: int,
                                               bases: list[tuple[bytes, str, int, int]], odd: str) -> None:
    """Byte for byte, for any entries, chunking values, delta bases (packs of their own
    too) and characters JSON escapes or passes through in a path."""
    kind, entries = tree
    entries = [dataclasses.replace(e, path=e.path + odd) if _safe(e.path + odd) and "/" not in odd else e
               for e in entries]
    base_refs = [ChunkRef(d, pack, offset, raw, raw, 1) for d, pack, offset, raw in bases]
    m = Manifest(kind, entries, chunking, tree=fmt, bases=base_refs)  # type: ignore[arg-type]
    assert m.to_json() == reference_json(m)


# -- hostile and corrupt manifests (hand-written JSON) --------------------------------------------------
def blob(doc: Any) -> bytes:
    """A hand-written manifest stored as a writer would (sealed with a valid checksum), so
    the checks behind the checksum are what is tested."""
    return seal_manifest(json.dumps(doc).encode())


def fentry(path: str, content: bytes = b"x", typ: str = "f", pack: int = 0) -> dict[str, Any]:
    return {"path": path, "type": typ, "size": len(content), "digest": b3(content),
            "chunks": [[b3(content), pack, 16, len(content), len(content), 0]] if content else []}


def dentry(path: str) -> dict[str, Any]:
    return {"path": path, "type": "d"}


def mdoc(entries: list[dict[str, Any]], kind: str = "dir", **extra: Any) -> dict[str, Any]:
    doc = {"format": MANIFEST_FORMAT, "digest": "blake3:" + "0" * 64, "kind": kind,
           "chunking": {"avg_size": 1 << 20}, "packs": [PACK], "entries": entries}
    doc.update(extra)
    return doc


def doc_digest(doc: dict[str, Any]) -> bytes:
    """What the entries of a hand-written manifest hash to, by the spec."""
    rows = [(e["path"], e["type"], e.get("size", 0), e.get("digest", "")) for e in doc["entries"]]
    return bytes.fromhex(spec_tree_digest(doc["kind"], rows))


def load(doc: Any, expected: bytes | None = None) -> Manifest:
    return Manifest.from_bytes(blob(doc), expected=expected if expected is not None else doc_digest(doc), where=WHERE)


def test_hand_written_manifest_is_accepted() -> None:
    """Positive control: the helpers build manifests casreg accepts, so the refusals
    below are about the one thing each case breaks."""
    doc = mdoc([fentry("a.txt", b"a"), fentry("bin/run.sh", b"#!/bin/sh\n", "x"), dentry("empty")])
    m = load(doc)
    assert m.hexdigest == TREE_DIGEST
    assert [(e.path, e.type, e.size) for e in m.entries] == [
        ("a.txt", "f", 1), ("bin/run.sh", "x", 10), ("empty", "d", 0)]
    assert m.entries[0].chunks == [ChunkRef(bytes.fromhex(b3(b"a")), PACK, 16, 1, 1, 0)]
    one = load(mdoc([fentry("hello.txt", b"hello\n")], kind="file"))
    assert one.hexdigest == HELLO_DIGEST


def test_a_format_2_manifest_commits_its_chunk_layout() -> None:
    """Format 2: the same entries hash to the version digest only with the same chunks in
    the same order; swapping two chunks (each still a real chunk) is refused."""
    c1, c2 = b"first chunk", b"second"
    doc = mdoc([{"path": "f.bin", "type": "f", "size": len(c1 + c2), "digest": b3(c1 + c2),
                 "chunks": [[b3(c1), 0, 16, len(c1), len(c1), 0], [b3(c2), 0, 40, len(c2), len(c2), 0]]}],
               kind="file", format=MANIFEST_FORMATS[2])
    good = bytes.fromhex(spec_v2_one_file("f.bin", c1 + c2, [c1, c2]))
    assert load(doc, good).hexdigest == good.hex()
    chunks = doc["entries"][0]["chunks"]
    chunks[0], chunks[1] = chunks[1], chunks[0]
    with pytest.raises(IntegrityError, match="its entries hash to"):
        load(doc, good)


def spec_v2_one_file(path: str, data: bytes, chunks: list[bytes]) -> str:
    record = f"f {len(data)} {b3(data)} {spec_layout_digest(chunks)} {path}".encode() + b"\x00"
    return blake3(b"casreg-tree-v2\x00file\x00" + record).hexdigest()


@pytest.mark.parametrize("field", ["raw", "stored"])
def test_chunks_larger_than_the_registry_allows_are_refused(field: str) -> None:
    """A chunk may not claim more raw bytes than the registry's maximum chunk size, nor
    more stored bytes than any codec makes of its raw size: a read would allocate for it."""
    doc = mdoc([fentry("a.bin", b"abc")], kind="file")
    chunk = doc["entries"][0]["chunks"][0]
    if field == "raw":
        chunk[4] = doc["entries"][0]["size"] = 5 << 20
    else:
        chunk[3] = stored_bound(3) + 1
    with pytest.raises(IntegrityError, match="maximum chunk size" if field == "raw" else "more than any codec"):
        Manifest.from_bytes(blob(doc), expected=doc_digest(doc), where=WHERE, max_chunk=4 << 20)


def test_a_manifest_larger_than_the_cap_is_refused_before_it_is_decoded() -> None:
    from casreg.content.manifest import MAX_STORED_MANIFEST

    with pytest.raises(IntegrityError, match="larger than"):
        Manifest.from_bytes(b"\0" * (MAX_STORED_MANIFEST + 1), expected=bytes(32), where=WHERE)


UNSAFE_PATHS = [
    "/etc/passwd", "/a", "../x", "..", "a/../../x", "a/..", "./x", ".", "a/./b", "a//b", "a/", "",
    "a\\b", "..\\x", "C:x", "c:\\windows", "a\x00b", "a\nb", "a\x1fb", "tab\there", "del\x7f", "\x85next",
]


@pytest.mark.parametrize("path", UNSAFE_PATHS)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        load(mdoc([fentry("ok.txt"), fentry(path)]))
    assert WHERE in str(info.value)
    with pytest.raises(UnsafePathError):
        load(mdoc([dentry(path)]))
    with pytest.raises(UnsafePathError):
        validate_relpath(path)


@pytest.mark.parametrize("entries", [
    [fentry("a"), fentry("a/b")],
    [fentry("a/b"), fentry("a")],
    [fentry("a", typ="x"), dentry("a/b")],
    [fentry("a"), fentry("a/b/c/d")],
    [fentry("m/a"), fentry("m/a/b")],
], ids=["file-then-child", "child-then-file", "exec-parent-of-dir", "deep", "nested"])
def test_file_that_is_also_a_directory_is_refused(entries: list[dict[str, Any]]) -> None:
    with pytest.raises(UnsafePathError, match="both a file and a directory"):
        load(mdoc(entries))


@pytest.mark.parametrize(("doc", "match"), [
    (mdoc([fentry("a", b"1"), fentry("a", b"2")]), "duplicate"),
    (mdoc([fentry("a"), dentry("a")]), "duplicate"),
    (mdoc([dentry("d"), dentry("d")]), "duplicate"),
    (mdoc([fentry("a"), fentry("b")], kind="file"), "exactly one file"),
    (mdoc([dentry("a")], kind="file"), "exactly one file"),
    (mdoc([], kind="file"), "exactly one file"),
    (mdoc([fentry("d/a")], kind="file"), "exactly one file"),
])
def test_structurally_invalid_manifests_are_refused(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(IntegrityError, match=match):
        load(doc)


def _sizes_off(e: dict[str, Any]) -> dict[str, Any]:
    e = dict(e)
    e["size"] += 1
    return e


@pytest.mark.parametrize("doc", [
    mdoc([_sizes_off(fentry("a", b"abc"))]),
    mdoc([dict(fentry("a", b"abc"), chunks=[])]),
    mdoc([dict(fentry("a", b"abc"), chunks=[[b3(b"abc"), 0, 16, 3, 2, 0]])]),
    mdoc([dict(fentry("a", b"abc"), chunks=[[b3(b"ab"), 0, 16, 2, 2, 0], [b3(b"c"), 0, 18, 1, 2, 0]])]),
], ids=["size-plus-one", "no-chunks", "short-chunk", "two-chunks-too-long"])
def test_chunk_sizes_must_add_up(doc: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError, match="do not add up"):
        load(doc)


@pytest.mark.parametrize("data", [
    b"", b"garbage", os.urandom(64), b"\x28\xb5\x2f\xfd" + b"\x00" * 8,  # zstd magic, bad frame
    blob(mdoc([fentry("a")]))[:-3],  # truncated frame
    seal_manifest(b"{not json"),
    seal_manifest(b"\xff\xfe\x00 not utf-8"),
    json.dumps(mdoc([fentry("a")])).encode(),  # uncompressed JSON
], ids=["empty", "text", "random", "zstd-magic", "truncated", "bad-json", "not-utf8", "uncompressed"])
def test_garbage_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(IntegrityError) as info:
        Manifest.from_bytes(data, expected=bytes(32), where=WHERE)
    assert WHERE in str(info.value)


WRONG_FORMAT = {
    "other-format": mdoc([fentry("a")], format="casreg-manifest/2"),
    "no-format": {k: v for k, v in mdoc([fentry("a")]).items() if k != "format"},
    "no-entries": {k: v for k, v in mdoc([fentry("a")]).items() if k != "entries"},
    "no-kind": {k: v for k, v in mdoc([fentry("a")]).items() if k != "kind"},
    "no-packs": {k: v for k, v in mdoc([fentry("a")]).items() if k != "packs"},
    "bad-kind": mdoc([fentry("a")], kind="tree"),
    "entries-not-list": mdoc({"a": 1}),  # type: ignore[arg-type]
    "entry-not-object": mdoc([["a", "f"]]),  # type: ignore[list-item]
    "symlink-type": mdoc([{"path": "a", "type": "l", "target": "/etc"}]),
    "no-type": mdoc([{"path": "a"}]),
    "path-not-string": mdoc([dict(fentry("a"), path=5)]),
    "no-digest": mdoc([{k: v for k, v in fentry("a").items() if k != "digest"}]),
    "digest-not-hex": mdoc([dict(fentry("a"), digest="zz" * 32)]),
    "size-not-int": mdoc([dict(fentry("a"), size="one")]),
    "chunks-not-list": mdoc([dict(fentry("a"), chunks=7)]),
    "chunk-too-short": mdoc([dict(fentry("a"), chunks=[[b3(b"x"), 0, 16]])]),
    "chunk-digest-not-hex": mdoc([dict(fentry("a"), chunks=[["nothex", 0, 16, 1, 1, 0]])]),
    "pack-index-out-of-range": mdoc([fentry("a", pack=3)]),
    "pack-index-not-int": mdoc([fentry("a", pack="first")]),
}


@pytest.mark.parametrize("doc", list(WRONG_FORMAT.values()), ids=list(WRONG_FORMAT))
def test_valid_json_of_the_wrong_format_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError) as info:
        Manifest.from_bytes(blob(doc), expected=bytes(32), where=WHERE)
    assert WHERE in str(info.value)


@pytest.mark.parametrize("doc", [[1, 2], "casreg-manifest/1", 5, None], ids=["array", "string", "number", "null"])
def test_json_that_is_not_an_object_is_refused(doc: Any) -> None:
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(blob(doc), expected=bytes(32), where=WHERE)


def _raw_blob(text: str) -> bytes:
    return seal_manifest(text.encode())


_FILE = b3(b"x")
NON_FINITE = {
    "size-1e999": f'{{"path":"a","type":"f","size":1e999,"digest":"{_FILE}","chunks":[]}}',
    "offset-Infinity": f'{{"path":"a","type":"f","size":1,"digest":"{_FILE}","chunks":[["{_FILE}",0,Infinity,1,1,0]]}}',
    "raw-size--Infinity": (f'{{"path":"a","type":"f","size":1,"digest":"{_FILE}",'
                           f'"chunks":[["{_FILE}",0,16,1,-Infinity,0]]}}'),
}


def test_nan_numbers_are_refused() -> None:
    text = f'{{"path":"a","type":"f","size":NaN,"digest":"{_FILE}","chunks":[]}}'
    doc = f'{{"format":"{MANIFEST_FORMAT}","kind":"dir","chunking":{{}},"packs":["{PACK}"],"entries":[{text}]}}'
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(_raw_blob(doc), expected=bytes(32), where=WHERE)


@pytest.mark.parametrize("entry", list(NON_FINITE.values()), ids=list(NON_FINITE))
def test_infinite_numbers_are_refused(entry: str) -> None:
    doc = f'{{"format":"{MANIFEST_FORMAT}","kind":"dir","chunking":{{}},"packs":["{PACK}"],"entries":[{entry}]}}'
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(_raw_blob(doc), expected=bytes(32), where=WHERE)


@pytest.mark.parametrize("chunking", ["fastcdc", [1, 2], 5], ids=["string", "list", "number"])
def test_chunking_that_is_not_an_object_is_refused(chunking: Any) -> None:
    doc = mdoc([fentry("a")], chunking=chunking)
    with pytest.raises(IntegrityError):
        load(doc)


@pytest.mark.parametrize("entry,packs", [
    (dict(fentry("a"), digest="ab"), [PACK]),
    ({"path": "a", "type": "f", "size": -1, "digest": b3(b""), "chunks": [[b3(b""), 0, 16, 1, -1, 0]]}, [PACK]),
    (dict(fentry("a"), chunks=[[b3(b"x"), 0, -16, 1, 1, 0]]), [PACK]),
    (dict(fentry("a"), chunks=[[b3(b"x"), -1, 16, 1, 1, 0]]), [PACK]),
    (dict(fentry("a"), chunks=[["ab", 0, 16, 1, 1, 0]]), [PACK]),
    (fentry("a"), ["../../../../tmp/evil"]),
], ids=["short-file-digest", "negative-size", "negative-offset", "negative-pack-index",
        "short-chunk-digest", "pack-id-path-traversal"])
def test_malformed_fields_are_refused(entry: dict[str, Any], packs: list[str]) -> None:
    doc = mdoc([entry], packs=packs)
    with pytest.raises(IntegrityError):
        load(doc)  # expected digest = what these entries hash to, so only the shape is wrong


def test_entries_that_do_not_hash_to_the_expected_digest_are_refused() -> None:
    good = mdoc([fentry("a.txt", b"a"), fentry("bin/run.sh", b"#!/bin/sh\n", "x"), dentry("empty")])
    expected = doc_digest(good)
    assert load(good, expected).digest == expected
    tampered = [
        mdoc([fentry("a.txt", b"b"), fentry("bin/run.sh", b"#!/bin/sh\n", "x"), dentry("empty")]),
        mdoc([fentry("a.txt", b"a"), fentry("bin/run.sh", b"#!/bin/sh\n", "f"), dentry("empty")]),
        mdoc([fentry("a.txt", b"a"), fentry("bin/run.sh", b"#!/bin/sh\n", "x")]),
        mdoc([fentry("A.txt", b"a"), fentry("bin/run.sh", b"#!/bin/sh\n", "x"), dentry("empty")]),
        dict(good, kind="file", entries=[fentry("a.txt", b"a")]),
    ]
    for doc in tampered:
        with pytest.raises(IntegrityError, match=f"not blake3:{expected.hex()}"):
            load(doc, expected)
    # the "digest" field written in the manifest itself is not trusted
    lying = dict(mdoc(tampered[0]["entries"]), digest="blake3:" + expected.hex())
    with pytest.raises(IntegrityError):
        load(lying, expected)


# -- chunk boundaries ---------------------------------------------------------------------------------
SMALL = ChunkParams(avg_size=4096, min_size=1024, max_size=16384)
BOUNDARIES_3MIB = [(0, 493795), (493795, 1005360), (1499155, 1191786), (2690941, 454787)]
BOUNDARIES_64KIB = [
    (0, 3510), (3510, 2246), (5756, 9022), (14778, 5915), (20693, 5395), (26088, 3675), (29763, 4489),
    (34252, 1658), (35910, 4827), (40737, 8458), (49195, 4882), (54077, 6041), (60118, 5418),
]


def _rng_bytes(n: int) -> bytes:
    return np.random.default_rng(42).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_golden_chunk_boundaries_default_params() -> None:
    buf = _rng_bytes(3 * 2**20)
    got = chunk_bytes(buf)
    assert got == chunk_bytes(buf, DEFAULT_CHUNK_PARAMS) == BOUNDARIES_3MIB
    (o0, l0), (on, ln) = got[0], got[-1]
    assert b3(buf[o0:o0 + l0]) == "769a68d8346028df25a2004ca6abd88d3cbd37f9341f48b38606fd28d70a1256"
    assert b3(buf[on:on + ln]) == "0bd7ca94858a4c66c3c0b6019ac50b6b958a698721095447db0ddf3561ca78cb"
    assert [len(c) for c in iter_chunks(io.BytesIO(buf))] == [n for _, n in BOUNDARIES_3MIB]


def test_golden_chunk_boundaries_small_params() -> None:
    buf = _rng_bytes(64 * 2**10)
    got = chunk_bytes(buf, SMALL)
    assert got == BOUNDARIES_64KIB
    (o0, l0), (on, ln) = got[0], got[-1]
    assert b3(buf[o0:o0 + l0]) == "61dc293063098dec1ef197b273dd3fc816af5466a53fa7867ebd57d14af7f92a"
    assert b3(buf[on:on + ln]) == "8b917053aae4105727fd4b3687b6b141894ec9d777ad4b75e6ca5a8d5d7a2762"
    # content-defined: 100 bytes inserted near the start move only the first chunk
    shifted = buf[:10] + b"x" * 100 + buf[10:]
    moved = chunk_bytes(shifted, SMALL)
    assert moved[0] == (0, 3610)
    assert [(o - 100, n) for o, n in moved[1:]] == BOUNDARIES_64KIB[1:]


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=40_000))
def test_chunks_tile_the_buffer_within_bounds(data: bytes) -> None:
    got = chunk_bytes(data, SMALL)
    assert sum(n for _, n in got) == len(data)
    offset = 0
    for i, (o, n) in enumerate(got):
        assert o == offset and n > 0
        assert n <= SMALL.max_size
        if i < len(got) - 1:
            assert n >= SMALL.min_size
        offset += n
    assert [bytes(c) for c in iter_chunks(io.BytesIO(data), SMALL)] == [data[o:o + n] for o, n in got]


def test_chunk_params() -> None:
    assert ChunkParams.from_dict(SMALL.to_dict()) == SMALL
    assert ChunkParams.from_dict({"avg_size": 4096, "min_size": 1024, "max_size": 16384, "extra": 1}) == SMALL
    assert DEFAULT_CHUNK_PARAMS.to_dict() == {"avg_size": 1 << 20, "min_size": 1 << 18, "max_size": 1 << 22,
                                              "normalization": 1, "algorithm": "fastcdc2020"}
    with pytest.raises(ValueError):
        ChunkParams(algorithm="rabin")


# -- pack indexes ---------------------------------------------------------------------------------------
slots = st.builds(_Slot, digests32, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                  st.integers(0, 2**32 - 1), st.integers(0, 255))


@settings(max_examples=100, deadline=None)
@given(st.lists(slots, max_size=20))
def test_index_round_trip(items: list[_Slot]) -> None:
    data = encode_index(items)
    assert len(data) == 52 * len(items) + 16  # 52-byte entries, then count and magic
    assert data.endswith(b"CASRIDX\x01")
    assert decode_index(data, "index/x.idx") == items


_ITEMS = [_Slot(bytes([i]) * 32, 16 + i, 10, 20, 1) for i in range(3)]
_GOOD_INDEX = encode_index(_ITEMS)
_COUNT_AT = len(_GOOD_INDEX) - 16
CORRUPT_INDEXES = {
    "empty": b"",
    "truncated-tail": _GOOD_INDEX[-15:],
    "dropped-byte": _GOOD_INDEX[:-17] + _GOOD_INDEX[-16:],
    "extra-byte": _GOOD_INDEX[:-16] + b"\x00" + _GOOD_INDEX[-16:],
    "bad-magic": _GOOD_INDEX[:-1] + b"\x02",
    "count-too-high": _GOOD_INDEX[:_COUNT_AT] + struct.pack("<Q", 4) + _GOOD_INDEX[-8:],
    "count-too-low": _GOOD_INDEX[:_COUNT_AT] + struct.pack("<Q", 2) + _GOOD_INDEX[-8:],
    "count-huge": _GOOD_INDEX[:_COUNT_AT] + struct.pack("<Q", 2**63) + _GOOD_INDEX[-8:],
    "garbage": bytes(range(256))[: len(_GOOD_INDEX)],
}


def test_good_index_decodes() -> None:
    assert decode_index(_GOOD_INDEX, "index/x.idx") == _ITEMS


@pytest.mark.parametrize("data", list(CORRUPT_INDEXES.values()), ids=list(CORRUPT_INDEXES))
def test_corrupt_index_is_refused(data: bytes) -> None:
    with pytest.raises(IntegrityError, match="index/x.idx"):
        decode_index(data, "index/x.idx")


@pytest.mark.parametrize("backend", SERVERLESS)
def test_pack_builder_layout(store: ObjectStore) -> None:
    payloads = [b"alpha", b"", b"gamma" * 100]
    pb = PackBuilder(store.open_writer("packs"))
    offsets = [pb.add(bytes([i]) * 32, 1, p, len(p) * 2) for i, p in enumerate(payloads)]
    assert len(pb) == 3 and pb.size == len(PACK_MAGIC) + sum(map(len, payloads))
    pack_id, index = pb.seal()
    with pb.writer:
        assert list(store.list("packs")) == []  # staged, not visible before it is published
        assert (pb.writer.publish(pack_key(pack_id), size=pb.size)
                and not pb.writer.publish(pack_key(pack_id), size=pb.size))
    assert list(store.list("packs")) == [pack_key(pack_id)]  # and the staging is gone
    data = store.read(pack_key(pack_id))
    assert pack_id == b3(index) and pb.pack_id == pack_id  # a pack is named by its index
    assert data.startswith(PACK_MAGIC) and data.endswith(index)
    assert len(data) == len(PACK_MAGIC) + sum(map(len, payloads)) + len(index)
    slots_ = decode_index(index, "x")
    assert len(slots_) == 3
    for off, p, s, i in zip(offsets, payloads, slots_, range(3)):
        assert data[off:off + len(p)] == p
        assert (s.digest, s.offset, s.stored_size, s.raw_size, s.codec) == (bytes([i]) * 32, off, len(p), 2 * len(p), 1)
    assert offsets[0] == len(PACK_MAGIC)
    # the index at the end of the pack decodes to the same slots
    assert decode_index(data[-len(index):], "tail") == slots_
