"""Hostile stores, forged from the format: every reader refuses in one line, promptly,
within bounded memory, writing nothing outside its destination and leaving nothing there.

A bucket writer (or anyone with write access to a registry directory) can store any
object under any key and commit any ledger record. The forging toolkit below builds such
registries from docs/FORMAT.md with casreg's own types (``Manifest``/``Entry``/``ChunkRef``,
``commit_version``) and, where casreg would never write the bytes, by hand (packs and
indexes with bomb payloads, manifests that are zstd or JSON bombs). One registry per
backend (local and S3) holds every case; each case is then read by every reader: ``pull``
to a file and to a directory destination, ``verify REF``, ``verify``, ``casreg://`` (open,
read, seek, read; ``cat``, ``ls``, ``get``), lazy tensor reads, and the CLI. Bombs are also
run in a subprocess whose peak RSS must stay under the bound docs/security.md states.

The tests that tamper with packs in place, special files under keys and partial trees
are in tests/test_integrity.py and tests/test_hostile_local.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import fsspec
import pytest
import zstandard
from blake3 import blake3
from conftest import BACKENDS

from casreg import IntegrityError, Registry
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.content.fetch import SPAN_RAW_BYTES
from casreg.content.manifest import MAX_MANIFEST_BYTES, MAX_MANIFEST_VALUES, ChunkRef, Entry, Manifest, seal_manifest
from casreg.content.packs import _ENTRY, _TAIL, INDEX_MAGIC, PACK_MAGIC
from casreg.content.pull import INFLIGHT_RAW_BYTES
from casreg.digest import Digest
from casreg.keys import index_key, manifest_key, pack_key
from casreg.ledger.segments import commit_version
from casreg.storage import ObjectStore
from casreg.storage.local import LocalStore
from casreg.testing.store_suite import promptly

CLI = Path(sys.executable).with_name("casreg")
HERE = ["local", "s3"]
#: Small chunks keep the forged registry small; every bound derives from ``max_size``.
PARAMS = ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10)
MAX_CHUNK = PARAMS.max_size
TIMEOUT = 60  # seconds before a call counts as hung (each takes well under 5)
#: Peak RSS a command may add, on any hostile store, over the same command on a genuine
#: version (docs/security.md, "Resource bounds"): a manifest read holds at most its
#: stored bytes and its decoded JSON (129 + 128 MiB) before it parses (a bomb is refused
#: before parsing); a pull at most ``INFLIGHT_RAW_BYTES`` of decoded chunks ahead of its
#: writer plus one run (``SPAN_RAW_BYTES``, or one chunk).
MEMORY_BOUND = 300 << 20


# -- the forging toolkit ------------------------------------------------------------------------
def zstd_frame(raw: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(raw)


def zeros_frame(n: int, *, content_size: bool = True) -> bytes:
    """One zstd frame of ``n`` zero bytes (compressed in pieces: ``n`` may be a GiB)."""
    c = zstandard.ZstdCompressor(level=3, write_content_size=content_size)
    obj = c.compressobj(size=n if content_size else -1)
    piece = bytes(8 << 20)
    out = []
    left = n
    while left:
        step = min(left, len(piece))
        out.append(obj.compress(piece[:step]))
        left -= step
    out.append(obj.flush())
    return b"".join(out)


@dataclass(frozen=True)
class Payload:
    """A chunk as a forger stores it: its stored bytes and what its index entry claims."""

    stored: bytes
    raw_size: int
    digest: bytes
    codec: int = 1


def put_pack(store: ObjectStore, payloads: list[Payload]) -> list[ChunkRef]:
    """Store a pack and its index object (docs/FORMAT.md §4) holding ``payloads`` back to
    back; return a reference to each, as its index describes it."""
    body, index, refs, offset = [PACK_MAGIC], [], [], len(PACK_MAGIC)
    for p in payloads:
        body.append(p.stored)
        index.append(_ENTRY.pack(p.digest, offset, len(p.stored), p.raw_size, p.codec))
        refs.append((p, offset))
        offset += len(p.stored)
    idx = b"".join(index) + _TAIL.pack(len(payloads), INDEX_MAGIC)
    pid = blake3(idx).hexdigest()
    assert store.create(pack_key(pid), b"".join(body) + idx)
    assert store.create(index_key(pid), idx)
    return [ChunkRef(p.digest, pid, off, len(p.stored), p.raw_size, p.codec) for p, off in refs]


def overwrite(store: ObjectStore, key: str, data: bytes) -> None:
    """Replace an object's bytes behind the registry's back (what a bucket writer can do)."""
    if isinstance(store, LocalStore):
        Path(store.root, key).write_bytes(data)
    else:
        store.delete(key)
        assert store.create(key, data)


class Forger:
    """Commits forged versions to a registry the way a writer of its store could."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.template = reg.show("w")

    def commit(self, name: str, digest: Digest, kind: str, entries: list[Entry]) -> str:
        record = dataclasses.replace(self.template, name=name, digest=digest, kind=kind,
                                     size=sum(e.size for e in entries),
                                     file_count=sum(e.type != "d" for e in entries),
                                     chunk_count=sum(len(e.chunks) for e in entries))
        files = [{"path": e.path, "type": e.type, "size": e.size, "digest": e.digest.hex() if e.digest else None}
                 for e in entries]
        return commit_version(self.reg.store, record, files).ref

    def manifest(self, name: str, m: Manifest) -> tuple[str, str]:
        """A well-formed (sealed, self-hashing) manifest and a record naming its digest."""
        key = manifest_key(m.hexdigest)
        assert self.reg.store.create(key, m.to_bytes())
        return self.commit(name, m.version_digest, m.kind, m.entries), key

    def raw_manifest(self, name: str, sealed: bytes) -> tuple[str, str]:
        """Any bytes as the manifest of a version whose digest is made up (the manifest
        cannot hash to it: it must be refused before anything else)."""
        digest = Digest.from_bytes(blake3(name.encode()).digest())
        key = manifest_key(digest.hex)
        assert self.reg.store.create(key, sealed)
        return self.commit(name, digest, "dir", []), key


def sealed_frame(frame: bytes) -> bytes:
    """A manifest object around an arbitrary zstd frame (with a correct trailer)."""
    return frame + blake3(frame).digest()


# -- the cases ----------------------------------------------------------------------------------
#: manifest: every reader refuses naming the manifest (listing included);
#: data: the manifest is fine, reading the file's data is refused naming the pack;
#: digest: the file digest lies (format 2 commits the layout, so ranged reads return the
#: bytes the version digest commits to; whole-file reads and pulls refuse naming the manifest)
Level = Literal["manifest", "data", "digest", "lie"]


@dataclass(frozen=True)
class Case:
    ref: str
    key: str  # the object every error must name
    level: Level
    kind: str = "file"  # of the version
    path: str = ""  # the file casreg:// and lazy reads open
    fragment: str = ""  # a phrase the error must contain
    expected: bytes = b""  # "digest" cases: the bytes the chunks hold


@dataclass
class World:
    reg: Registry
    env: dict[str, str]
    cases: dict[str, Case]
    genuine: bytes  # the safetensors file of "w"
    reports: dict[str, object] = dataclasses.field(default_factory=dict)
    baselines: dict[str, int] = dataclasses.field(default_factory=dict)  # peak RSS on a genuine version


def safetensors_bytes(n: int) -> bytes:
    data = os.urandom(n * 4)
    header = json.dumps({"t": {"dtype": "F32", "shape": [n], "data_offsets": [0, n * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data


def swap_in_place(reg: Registry, ref: str, mutate: Callable[[dict], None]) -> str:
    """Rewrite a genuine version's manifest (sealed anew, so only its digest can tell)."""
    m = reg.manifest(ref)
    key = manifest_key(m.hexdigest)
    doc = json.loads(zstandard.ZstdDecompressor().decompress(reg.store.read(key)[:-32]))
    mutate(doc)
    overwrite(reg.store, key, seal_manifest(json.dumps(doc).encode()))
    return key


def build_world(reg: Registry, tmp: Path) -> World:
    init_config(reg.store, PARAMS)
    genuine = safetensors_bytes(150_000)  # 600 KB: several chunks
    (tmp / "w.safetensors").write_bytes(genuine)
    reg.push("w", tmp / "w.safetensors")
    src = tmp / "m"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(400_000))
    (src / "b.bin").write_bytes(os.urandom(400_000))
    (src / "sub" / "c.txt").write_bytes(b"small\n")
    reg.push("m", src)
    f = Forger(reg)
    w = reg.manifest("w").entries[0]
    assert len(w.chunks) >= 3
    cases: dict[str, Case] = {}

    def manifest_case(name: str, m: Manifest, fragment: str, path: str = "") -> None:
        ref, key = f.manifest(name, m)
        cases[name] = Case(ref, key, "manifest", m.kind, path, fragment)

    # chunk lists swapped between two files, and within one file (format 2 refuses both)
    pair = tmp / "pair"
    pair.mkdir()
    (pair / "a.bin").write_bytes(os.urandom(400_000))
    (pair / "b.bin").write_bytes(os.urandom(400_000))
    reg.push("swap-between", pair)
    key = swap_in_place(reg, "swap-between", lambda d: d["entries"][0].update(chunks=d["entries"][1]["chunks"])
                        or None)
    cases["swap-between"] = Case("swap-between", key, "manifest", "dir", "a.bin", "hash to")
    (tmp / "sw.safetensors").write_bytes(safetensors_bytes(150_000))
    reg.push("swap-within", tmp / "sw.safetensors")
    key = swap_in_place(reg, "swap-within", lambda d: d["entries"][0]["chunks"].reverse())
    cases["swap-within"] = Case("swap-within", key, "manifest", "file", "", "hash to")

    # a chunk claiming more raw bytes than casreg.json's max_size
    big = dataclasses.replace(w.chunks[0], raw_size=MAX_CHUNK + 1)
    manifest_case("chunk-too-big", Manifest("file", [Entry("t.bin", "f", MAX_CHUNK + 1, bytes(32), [big])], {},
                                            tree=2), "maximum chunk size")

    # manifest bombs: zstd (decodes past 128 MiB, no size in the frame), dense JSON (within
    # the byte cap, tens of millions of values), deep JSON
    ref, key = f.raw_manifest("manifest-zstd-bomb", sealed_frame(zeros_frame(MAX_MANIFEST_BYTES + (64 << 20),
                                                                             content_size=False)))
    cases["manifest-zstd-bomb"] = Case(ref, key, "manifest", "dir", "x", "does not decode")
    n = MAX_MANIFEST_VALUES + (1 << 20)  # 34 MiB of JSON: 800 MB of empty lists
    dense = b"[" + b"[]," * (n - 1) + b"[]]"
    ref, key = f.raw_manifest("manifest-dense", sealed_frame(zstd_frame(dense, content_size=False)))
    del dense
    cases["manifest-dense"] = Case(ref, key, "manifest", "dir", "x", "JSON values")
    deep = b"[" * 200_000 + b"]" * 200_000
    ref, key = f.raw_manifest("manifest-deep", sealed_frame(zstd_frame(deep)))
    cases["manifest-deep"] = Case(ref, key, "manifest", "dir", "x", "corrupt")

    # paths
    a = reg.manifest("m").files[0]

    def entry(path: str, e: Entry = a) -> Entry:
        return Entry(path, e.type, e.size, e.digest, list(e.chunks))

    marker = f"evil-{uuid.uuid4().hex[:8]}"
    for name, paths, fragment in [
        ("path-dotdot", [f"../{marker}"], "unsafe path"),
        ("path-dotdot-deep", [f"sub/../../{marker}"], "unsafe path"),
        ("path-absolute", [f"/tmp/{marker}"], "absolute"),
        ("path-backslash", [f"..\\{marker}"], "backslash"),
        ("path-nul", [f"a\x00{marker}"], "control characters"),
        ("path-duplicate", ["x.bin", "x.bin"], "duplicate"),
        ("path-file-and-dir", ["x", "x/"], ""),
        ("path-prefix-dir", ["x", "x/y.bin"], "both a file and a directory"),
        ("path-too-deep", ["/".join(["d"] * 300)], "more than 256"),
    ]:
        entries = [entry(p) if not p.endswith("/") else Entry(p.rstrip("/"), "d") for p in paths]
        manifest_case(name, Manifest("dir", entries, {}, tree=2), fragment)

    # a file version of two files
    manifest_case("file-version-two-files", Manifest("file", [entry("a.bin"), entry("b.bin")], {}, tree=2),
                  "exactly one file")

    # chunk bombs in a pack of their own: each chunk's claims are within the bounds
    bomb = zeros_frame(1 << 30)  # 1 GiB of zeros in ~30 KB, its size in the frame header
    bomb_nosize = zeros_frame(1 << 30, content_size=False)
    short = zstd_frame(bytes(MAX_CHUNK // 2))
    genuine_chunk = zstd_frame(bytes(MAX_CHUNK))
    refs = put_pack(reg.store, [
        Payload(bomb, MAX_CHUNK, blake3(bytes(MAX_CHUNK)).digest()),
        Payload(bomb_nosize, MAX_CHUNK, blake3(bytes(MAX_CHUNK)).digest()),
        Payload(short, MAX_CHUNK, blake3(bytes(MAX_CHUNK)).digest()),  # decodes to half its claim
        Payload(genuine_chunk, MAX_CHUNK, blake3(bytes(MAX_CHUNK)).digest()),
    ])
    for name, ref_, fragment in [("chunk-zstd-bomb", refs[0], "claims"), ("chunk-zstd-bomb-no-size", refs[1], ""),
                                 ("chunk-short", refs[2], "do not match")]:
        chunks = [ref_, refs[3]]
        m = Manifest("file", [Entry(f"{name}.bin", "f", 2 * MAX_CHUNK, blake3(bytes(2 * MAX_CHUNK)).digest(), chunks)],
                     {}, tree=2)
        ref, _ = f.manifest(name, m)
        cases[name] = Case(ref, pack_key(ref_.pack), "data", "file", "", fragment)

    # file digests that lie: a file's chunks are genuine, its digest is not; and a
    # manifest claiming a large file of one chunk repeated, with a made-up digest
    lying = Manifest("file", [Entry("w.safetensors", "f", w.size, bytes(32), list(w.chunks))], {}, tree=2)
    ref, key = f.manifest("digest-lie", lying)
    cases["digest-lie"] = Case(ref, key, "digest", "file", "", "does not match", genuine)
    reps = 256  # 64 MiB claimed
    huge = Manifest("file", [Entry("huge.bin", "f", reps * MAX_CHUNK, bytes(32), [refs[3]] * reps)], {}, tree=2)
    ref, key = f.manifest("repeated-chunk", huge)
    cases["repeated-chunk"] = Case(ref, key, "digest", "file", "", "does not match", bytes(reps * MAX_CHUNK))

    # a ledger record that lies about its version's kind, size and files
    m_manifest = reg.manifest("m")
    lie = f.commit("record-kind-lie", m_manifest.version_digest, "file", [w])
    cases["record-kind-lie"] = Case(lie, "ledger/versions/record-kind-lie/0000000001.parquet", "lie")

    # a pack nobody references whose index claims a 4 GiB chunk (only verify reads it)
    put_pack(reg.store, [Payload(zeros_frame(256 << 20), (1 << 32) - 1, bytes(32))])
    return World(reg, {}, cases, genuine)


@pytest.fixture(scope="module", params=HERE)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    spec = BACKENDS[request.param]
    with pytest.MonkeyPatch.context() as mp:
        env: dict[str, str] = {}
        if spec.fixture is not None:
            from casreg.testing.seaweedfs import AWS_UNSET

            server = request.getfixturevalue("s3_server")
            for name in AWS_UNSET:
                mp.delenv(name, raising=False)
            env = server.env()
            for name, value in env.items():
                mp.setenv(name, value)
        mp.setenv("CASREG_USER", "forger@example.test")
        mp.setenv("CASREG_CACHE", "off")  # every read goes to the forged store
        store, cleanup = spec.make(tmp)
        reg = Registry(store.url, threads=2)
        w = build_world(reg, tmp)
        w.env = env
        try:
            yield w
        finally:
            cleanup()


@pytest.fixture(autouse=True)
def _world_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Function-scoped fixtures (conftest's cache directory) run after the module's: set
    this test's environment for the world it reads again."""
    if "world" in request.fixturenames:
        w: World = request.getfixturevalue("world")
        for name, value in w.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("CASREG_CACHE", "off")


# -- assertions ---------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes | str | None]:
    out: dict[str, bytes | str | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
    return out


def refused(case: Case, call: Callable[[], object]) -> str:
    got = promptly(call, seconds=TIMEOUT)
    assert isinstance(got, IntegrityError), got
    msg = str(got)
    assert "\n" not in msg and case.key in msg and case.fragment in msg, msg
    return msg


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """The destination's parent, one level down in a tree that must not change at all
    (paths with ``..`` would land in it), with a neighbour that must survive."""
    inner = tmp_path / "outer" / "inner"
    inner.mkdir(parents=True)
    (inner / "neighbour.txt").write_text("must survive")
    before = snapshot(tmp_path)
    yield inner
    assert snapshot(tmp_path) == before  # nothing written outside DEST, nothing left at DEST


CASE_NAMES = ["swap-between", "swap-within", "chunk-too-big", "manifest-zstd-bomb", "manifest-dense",
              "manifest-deep", "path-dotdot", "path-dotdot-deep", "path-absolute", "path-backslash", "path-nul",
              "path-duplicate", "path-file-and-dir", "path-prefix-dir", "path-too-deep", "file-version-two-files",
              "chunk-zstd-bomb", "chunk-zstd-bomb-no-size", "chunk-short", "digest-lie", "repeated-chunk"]


def url(case: Case) -> str:
    return f"casreg://{case.ref}" + (f"/{case.path}" if case.path else "")


# -- pull -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dest", ["dir", "file"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_pull_refuses_and_leaves_nothing(world: World, work: Path, name: str, dest: str) -> None:
    case = world.cases[name]
    target = work / ("dest" if dest == "dir" else "dest.bin")
    refused(case, lambda: world.reg.pull(case.ref, target))
    assert not target.exists()
    assert not [p for p in Path("/tmp").glob("evil-*")]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_casreg_get_refuses_and_leaves_nothing(world: World, work: Path, name: str) -> None:
    case = world.cases[name]
    fs = fsspec.filesystem("casreg", registry=world.reg.url, skip_instance_cache=True)
    refused(case, lambda: fs.get(url(case), str(work / "dest"), recursive=True))


# -- verify ---------------------------------------------------------------------------------------
#: A file digest that lies over genuine chunks is found by reading the data (``verify
#: --read-data``, docs/verify.md); every other case by the default verify.
def read_data(case: Case) -> bool:
    return case.level == "digest"


def whole_report(world: World, data: bool) -> object:
    key = "all-data" if data else "all"
    if key not in world.reports:
        got = promptly(lambda: world.reg.verify(read_data=data), seconds=3 * TIMEOUT)
        assert not isinstance(got, BaseException), got
        world.reports[key] = got
    return world.reports[key]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_verify_ref_names_the_object(world: World, name: str) -> None:
    case = world.cases[name]
    report = promptly(lambda: world.reg.verify(case.ref, read_data=read_data(case)), seconds=TIMEOUT)
    assert not isinstance(report, BaseException), report
    assert not report.ok and case.key in {p.key for p in report.problems}, report.problems  # type: ignore[union-attr]
    assert all("\n" not in p.line() for p in report.problems)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_verify_names_the_object(world: World, name: str) -> None:
    case = world.cases[name]
    report = whole_report(world, read_data(case))
    problems = {p.key: p for p in report.problems}  # type: ignore[attr-defined]
    assert case.key in problems, sorted(problems)
    assert "\n" not in problems[case.key].line()
    assert {case.ref, f"{case.ref}:1"} & set(problems[case.key].versions)  # ``m`` is ``m:1``


def test_verify_read_data_finds_every_case(world: World) -> None:
    """``--read-data`` finds everything the default finds, and the lying file digests."""
    problems = {p.key: p for p in whole_report(world, True).problems}  # type: ignore[attr-defined]
    assert not [n for n, c in world.cases.items() if c.key not in problems]
    assert {p.key for p in whole_report(world, False).problems} <= set(problems)  # type: ignore[attr-defined]


def test_verify_refuses_a_chunk_claim_beyond_the_maximum_without_decoding_it(world: World) -> None:
    """The unreferenced pack whose index claims a 4 GiB chunk (a 256 MiB zstd bomb)."""
    lines = [p.line() for p in whole_report(world, False).problems]  # type: ignore[attr-defined]
    assert any("claims 4,294,967,295 bytes, more than the registry's maximum chunk size" in line for line in lines)


# -- casreg:// and lazy reads --------------------------------------------------------------------
@pytest.mark.parametrize("name", CASE_NAMES)
def test_casreg_reads(world: World, name: str) -> None:
    """open / read / seek / read, cat (whole and ranged) and ls."""
    case = world.cases[name]
    fs = fsspec.filesystem("casreg", registry=world.reg.url, skip_instance_cache=True)

    def ranged() -> tuple[bytes, bytes]:
        with fsspec.open(url(case), registry=world.reg.url, skip_instance_cache=True) as f:
            head = f.read(16)
            f.seek(300_000)
            return head, f.read(16)

    if case.level == "manifest":
        refused(case, ranged)
        refused(case, lambda: fs.cat(url(case)))
        refused(case, lambda: fs.ls(f"casreg://{case.ref}"))
        refused(case, lambda: fs.info(url(case)))
        return
    assert promptly(lambda: fs.ls(f"casreg://{case.ref}"), seconds=TIMEOUT)  # the manifest is fine
    if case.level == "data":
        refused(case, ranged)
        refused(case, lambda: fs.cat_file(url(case), 0, 16))
        refused(case, lambda: fs.cat(url(case)))
        return
    # format 2: a ranged read returns the bytes the version digest commits to; only a
    # whole-file read can tell that the file digest lies (docs/FORMAT.md §5)
    assert promptly(ranged, seconds=TIMEOUT) == (case.expected[:16], case.expected[300_000:300_016])
    assert fs.cat_file(url(case), 1000, 2000) == case.expected[1000:2000]
    refused(case, lambda: fs.cat(url(case)))

    def whole() -> bytes:
        with fsspec.open(url(case), registry=world.reg.url, skip_instance_cache=True) as f:
            return f.read()

    refused(case, whole)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_lazy_reads(world: World, name: str) -> None:
    case = world.cases[name]

    def tensors() -> list[int]:
        sf = world.reg.open_safetensors(case.ref, case.path)
        return [sf.get_tensor(k).nbytes for k in sf.keys()]

    if case.level in ("manifest", "data"):
        refused(case, tensors)
    elif name == "digest-lie":  # the header and tensor are ranges: verified against the layout
        assert promptly(tensors, seconds=TIMEOUT) == [600_000]
    else:  # zeros are no safetensors file: refused as such, in one line
        got = promptly(tensors, seconds=TIMEOUT)
        assert isinstance(got, IntegrityError) and "\n" not in str(got), got


# -- the CLI --------------------------------------------------------------------------------------
def cli(world: World, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **world.env, CASREG_REGISTRY=world.reg.url, CASREG_USER="victim@example.test",
               HOME=str(tmp_path), NO_COLOR="1", COLUMNS="200", CASREG_CACHE="off")
    return subprocess.run([str(CLI), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT)


def one_line(p: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("casreg: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


#: The CLI (a subprocess per call) runs one case of each kind; the library calls above
#: cover every case, and the CLI only maps their errors to a line and an exit code.
CLI_CASES = ["swap-between", "chunk-too-big", "manifest-zstd-bomb", "manifest-dense", "path-dotdot", "path-nul",
             "path-prefix-dir", "chunk-zstd-bomb", "chunk-short", "digest-lie"]


#: On S3 (slower to start a client), fewer: one of each level.
ON_S3 = {"swap-between", "manifest-dense", "path-dotdot", "chunk-zstd-bomb", "digest-lie"}


def s3_subset(world: World, name: str) -> None:
    if not isinstance(world.reg.store, LocalStore) and name not in ON_S3:
        pytest.skip("on S3, one case of each level (the library calls cover them all)")


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_pull_and_verify_ref(world: World, work: Path, tmp_path: Path, name: str) -> None:
    s3_subset(world, name)
    case = world.cases[name]
    one_line(cli(world, tmp_path, "pull", case.ref, str(work / "dest")), 6, case.key)
    p = cli(world, tmp_path, "verify", case.ref, *(["--read-data"] if read_data(case) else []))
    assert p.returncode == 6 and case.key in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_cli_verify_names_every_case(world: World, tmp_path: Path) -> None:
    for flags in ([], ["--read-data"]):
        p = cli(world, tmp_path, "verify", *flags)
        assert p.returncode == 6 and "Traceback" not in p.stderr, p.stderr
        out = p.stderr + p.stdout
        missing = [n for n, c in world.cases.items() if (flags or not read_data(c)) and c.key not in out]
        assert not missing, (flags, missing, p.stderr)


# -- ledger lies ----------------------------------------------------------------------------------
def test_a_record_of_another_kind_gets_what_its_digest_names(world: World, work: Path) -> None:
    """A record that says ``file`` (with a file version's size and files) naming a
    directory version's manifest: every reader gets what the digest names, verified
    against it, never a mix of the two."""
    case = world.cases["record-kind-lie"]
    world.reg.pull(case.ref, work / "dest.bin")
    world.reg.pull("m", work / "m")
    try:
        assert snapshot(work / "dest.bin") == snapshot(work / "m")
    finally:
        import shutil

        shutil.rmtree(work / "dest.bin")
        shutil.rmtree(work / "m")


def test_verify_reports_a_record_that_disagrees_with_its_manifest(world: World) -> None:
    case = world.cases["record-kind-lie"]
    problems = {p.key: p for p in whole_report(world, False).problems}  # type: ignore[attr-defined]
    assert case.key in problems and problems[case.key].versions == [case.ref]
    assert "kind 'file' (the manifest: 'dir')" in problems[case.key].reason
    (p,) = world.reg.verify(case.ref).problems
    assert (p.key, p.versions) == (case.key, [case.ref])


# -- memory ---------------------------------------------------------------------------------------
PEAK = textwrap.dedent("""
    import resource, subprocess, sys
    p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
    print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    sys.stderr.write(p.stderr)
""")
READ = textwrap.dedent("""
    import sys, fsspec
    with fsspec.open(sys.argv[1], registry=sys.argv[2]) as f:
        f.read(16); f.seek(300_000); f.read(16)
""")


def peak(world: World, tmp_path: Path, *argv: str) -> tuple[int, int, str]:
    """(exit code, peak RSS in bytes, stderr) of ``argv`` run alone in a fresh process."""
    env = dict(os.environ, **world.env, CASREG_REGISTRY=world.reg.url, HOME=str(tmp_path), CASREG_CACHE="off")
    p = subprocess.run([sys.executable, "-c", PEAK, *argv], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=150)
    code, rss = p.stdout.split()
    return int(code), int(rss), p.stderr


@pytest.mark.parametrize("name", ["manifest-zstd-bomb", "manifest-dense", "chunk-zstd-bomb",
                                  "chunk-zstd-bomb-no-size", "manifest-deep"])
def test_memory_stays_bounded_on_bombs(world: World, tmp_path: Path, name: str) -> None:
    """Each command on each bomb, in a process of its own: its peak RSS stays within
    ``MEMORY_BOUND`` of the same command on a genuine version."""
    s3_subset(world, name)
    case = world.cases[name]
    for what, argv, genuine in [
        ("pull", [str(CLI), "pull", case.ref, str(tmp_path / "d")], [str(CLI), "pull", "w", str(tmp_path / "g")]),
        ("verify", [str(CLI), "verify", case.ref], [str(CLI), "verify", "w"]),
        ("read", [sys.executable, "-c", READ, url(case), world.reg.url],
         [sys.executable, "-c", READ, "casreg://w", world.reg.url]),
    ]:
        if what not in world.baselines:
            code0, world.baselines[what], err0 = peak(world, tmp_path, *genuine)
            assert code0 == 0, err0
        base = world.baselines[what]
        code, rss, err = peak(world, tmp_path, *argv)
        assert code != 0 and "Traceback" not in err or argv[1] == "-c", err
        assert rss - base < MEMORY_BOUND, (argv[:3], rss >> 20, base >> 20)


@pytest.mark.slow  # writes a 1 GiB file
def test_memory_of_a_pull_is_bounded_however_well_chunks_compress(world: World, tmp_path: Path) -> None:
    """A genuine file of 4,096 zero chunks stored back to back (a few hundred bytes each:
    the whole 1 GiB file in one 4 MiB span by stored size): a pull decodes at most
    ``INFLIGHT_RAW_BYTES`` plus one run ahead of its writer, not the file."""
    reps = 4096
    payload = zstd_frame(bytes(MAX_CHUNK))
    assert len(payload) * reps < 4 << 20  # one span, by stored size
    run = put_pack(world.reg.store, [Payload(payload, MAX_CHUNK, blake3(bytes(MAX_CHUNK)).digest())] * reps)
    size = reps * MAX_CHUNK
    h = blake3()
    block = bytes(MAX_CHUNK)
    for _ in range(reps):
        h.update(block)
    m = Manifest("file", [Entry("zeros.bin", "f", size, h.digest(), run)], {}, tree=2)
    ref, _ = Forger(world.reg).manifest(f"zeros-{uuid.uuid4().hex[:6]}", m)
    if "pull" not in world.baselines:
        code0, world.baselines["pull"], err0 = peak(world, tmp_path, str(CLI), "pull", "w", str(tmp_path / "g"))
        assert code0 == 0, err0
    base = world.baselines["pull"]
    code, rss, err = peak(world, tmp_path, str(CLI), "pull", ref, str(tmp_path / "zeros.bin"))
    assert code == 0, err
    assert (tmp_path / "zeros.bin").stat().st_size == size
    (tmp_path / "zeros.bin").unlink()
    # each worker thread decodes its run in its own malloc arena, which keeps its peak
    cores = os.cpu_count() or 2
    io = world.reg.store.io_concurrency
    threads = cores if io == 1 else max(cores, 2 * io)
    bound = INFLIGHT_RAW_BYTES + threads * SPAN_RAW_BYTES + (32 << 20)
    assert rss - base < bound, (rss >> 20, base >> 20, bound >> 20)
