"""The casreg:// fsspec filesystem: paths and references, ranged and verified reads, one
resolution per call, read-only, errors, instance caching and the entry point. Every
backend-generic test runs on local, memory and S3 (SeaweedFS)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casreg import IntegrityError, Registry
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.content.lazy import PinnedFile
from casreg.content.manifest import Entry
from casreg.fs import CasregFileSystem, ReadOnlyError
from casreg.keys import pack_key
from casreg.storage import ObjectStore
from casreg.testing.counting import CountingStore

SMALL = ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10)


def _tree(root: Path, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    files = {
        "config.json": b'{"hidden": %d}' % seed,
        "weights/model.bin": rnd.randbytes(3 << 20),
        "weights/small.txt": b"line one\nline two\n",
        "tok/vocab.txt": b"a\nb\nc\n" * seed,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir(parents=True, exist_ok=True)
    return files


@pytest.fixture
def pushed(registry: Registry, tmp_path: Path) -> tuple[Registry, dict[str, bytes], dict[str, bytes], bytes]:
    """m:1 and m:2 (directories, @production -> 1), and f:1 (a file version)."""
    init_config(registry.store, SMALL)  # small chunks: a 3 MiB file has dozens, so ranges are meaningful
    v1 = _tree(tmp_path / "v1", 1)
    v2 = _tree(tmp_path / "v2", 2)
    registry.push("m", tmp_path / "v1")
    registry.push("m", tmp_path / "v2")
    registry.set_alias("m", "production", 1)
    single = random.Random(7).randbytes(700_000)
    (tmp_path / "model.onnx").write_bytes(single)
    registry.push("f", tmp_path / "model.onnx")
    return registry, v1, v2, single


@pytest.fixture
def fs(pushed: tuple[Registry, dict[str, bytes], dict[str, bytes], bytes]) -> CasregFileSystem:
    return CasregFileSystem(registry=pushed[0].url)


def test_ls_info_find_on_a_directory_version(fs: CasregFileSystem, pushed) -> None:  # type: ignore[no-untyped-def]
    reg, v1, v2, _ = pushed
    assert fs.ls("casreg://m@production", detail=False) == [
        "m@production/config.json", "m@production/empty", "m@production/tok", "m@production/weights"]
    rows = {r["name"]: r for r in fs.ls("m@production/weights")}
    assert rows["m@production/weights/model.bin"]["size"] == len(v1["weights/model.bin"])
    assert rows["m@production/weights/model.bin"]["type"] == "file"
    info = fs.info("m@production/weights/model.bin")
    assert info["version_digest"] == reg.resolve("m:1").digest and info["version"] == 1
    entry = next(e for e in reg.manifest("m:1").entries if e.path == "weights/model.bin")
    assert info["digest"] == "blake3:" + entry.digest.hex() and info["chunks"] == len(entry.chunks) > 10
    assert fs.info("m/empty")["type"] == "directory" and fs.ls("m/empty") == []
    assert fs.isdir("m") and fs.isdir("m/tok") and fs.isfile("m/tok/vocab.txt") and not fs.exists("m/nope")
    assert fs.find("m:2") == ["m:2/config.json", "m:2/tok/vocab.txt", "m:2/weights/model.bin", "m:2/weights/small.txt"]
    assert fs.find("m:2/weights", maxdepth=1) == ["m:2/weights/model.bin", "m:2/weights/small.txt"]
    assert "m:2/empty" in fs.find("m:2", withdirs=True)
    assert fs.glob("m:2/weights/*.txt") == ["m:2/weights/small.txt"]
    assert fs.du("m:2") == sum(len(b) for b in v2.values())
    assert fs.cat_file("m/tok/vocab.txt") == v2["tok/vocab.txt"]  # NAME: the latest version


def test_every_reference_form_addresses_the_same_version(fs: CasregFileSystem, pushed) -> None:  # type: ignore[no-untyped-def]
    reg, v1, _, _ = pushed
    digest = reg.resolve("m:1").hexdigest
    for head in ("m:1", "m@production", f"m@blake3:{digest}", f"blake3:{digest}", digest[:16]):
        assert fs.cat_file(f"casreg://{head}/config.json") == v1["config.json"], head
        assert fs.info(f"{head}/config.json")["version_digest"] == "blake3:" + digest


def test_a_file_version_is_the_file_and_also_its_own_name(fs: CasregFileSystem, pushed) -> None:  # type: ignore[no-untyped-def]
    _, _, _, single = pushed
    assert fs.info("f")["type"] == "file" and fs.info("f")["size"] == len(single)
    assert fs.cat_file("casreg://f") == single
    assert fs.cat_file("casreg://f:1/model.onnx") == single
    assert fs.ls("f", detail=False) == ["f"]
    assert fs.find("f") == ["f"]
    with pytest.raises(FileNotFoundError, match="f/other.onnx"):
        fs.info("f/other.onnx")
    assert {r["name"]: r["type"] for r in fs.ls("")} == {"f": "file", "m": "directory"}


def test_cat_file_ranges_read_only_the_chunks_they_need(fs: CasregFileSystem, pushed) -> None:  # type: ignore[no-untyped-def]
    _, v1, _, _ = pushed
    data = v1["weights/model.bin"]
    path = "m@production/weights/model.bin"
    f = fs.open_pinned(path)
    lo, hi = 1_500_000, 1_600_000
    assert f.read(lo, hi) == data[lo:hi]
    first, last = f.chunk_bounds(lo, hi)
    assert first <= lo and hi <= last and last - first < 4 * SMALL.max_size
    assert 0 < f.fetched_bytes <= last - first  # stored bytes of exactly the covering chunks
    assert f.requests == 1  # (first read of this file: the S3 chunk cache is still empty)
    assert fs.cat_file(path, 1000, 2000) == data[1000:2000]
    assert fs.cat_file(path, -500) == data[-500:]
    assert fs.cat_file(path, 10, -10) == data[10:-10]
    assert fs.cat_file(path, len(data) - 5, len(data) + 100) == data[-5:]
    assert fs.cat_file(path, 2000, 1000) == b""
    assert fs.cat(path) == data


def test_open_is_seekable_and_reads_ranges_lazily(fs: CasregFileSystem, pushed) -> None:  # type: ignore[no-untyped-def]
    _, v1, _, _ = pushed
    data = v1["weights/model.bin"]
    with fsspec.open("casreg://m@production/weights/model.bin", registry=fs.registry.url) as f:
        assert f.seekable() and f.readable() and not f.writable()
        f.seek(2_000_000)
        assert f.read(100) == data[2_000_000:2_000_100]
        assert f.tell() == 2_000_100
        assert f.fetched_bytes <= 2 * SMALL.max_size  # one chunk, maybe two; never the file
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(0)
        assert f.read() == data
    with fs.open("m@production/weights/small.txt", "r") as t:
        assert t.readlines() == ["line one\n", "line two\n"]


_DATA = random.Random(3).randbytes(3 << 20)
_MEMORY: list[Registry] = []


def _memory_registry(tmp: Path) -> Registry:
    """One memory registry shared by the hypothesis examples, pushed once."""
    if not _MEMORY:
        reg = Registry(f"memory://casreg-test-fs-hypothesis-{os.getpid()}")
        init_config(reg.store, SMALL)
        (tmp / "w.bin").write_bytes(_DATA)
        reg.push("w", tmp / "w.bin")
        _MEMORY.append(reg)
    return _MEMORY[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, (3 << 20) + 100), st.integers(0, 300_000)), min_size=1, max_size=6))
def test_random_seeks_and_reads_match_the_bytes(tmp_path_factory: pytest.TempPathFactory,
                                                reads: list[tuple[int, int]]) -> None:
    fs = CasregFileSystem(registry=_memory_registry(tmp_path_factory.mktemp("src")).url)
    with fs.open("w") as f:
        for start, n in reads:
            f.seek(start)
            assert f.read(n) == _DATA[start:start + n]
            assert f.tell() == min(start + n, len(_DATA)) or start > len(_DATA)
            assert fs.cat_file("w", start, start + n) == _DATA[start:start + n]
            assert fs.cat_file("w", -start - 1) == _DATA[-start - 1:]


def test_a_pointer_moving_during_a_read_never_mixes_versions(fs: CasregFileSystem, pushed) -> None:  # type: ignore[no-untyped-def]
    reg, v1, v2, _ = pushed
    path = "casreg://m@production/weights/model.bin"
    with fs.open(path) as f:
        head = f.read(1000)
        reg.set_alias("m", "production", 2, reason="moves mid-read")
        rest = f.read()
    assert head + rest == v1["weights/model.bin"]  # the whole file from the version opened
    assert fs.cat_file(path) == v2["weights/model.bin"]  # a new call resolves again
    assert fs.info(path)["version"] == 2


def test_a_corrupted_chunk_raises_an_integrity_error_never_bytes(fs: CasregFileSystem, pushed) -> None:  # type: ignore[no-untyped-def]
    reg, v1, _, _ = pushed
    entry = next(e for e in reg.manifest("m:1").entries if e.path == "weights/model.bin")
    bad = entry.chunks[len(entry.chunks) // 2]
    key = pack_key(bad.pack)
    stored = bytearray(reg.store.read(key))
    stored[bad.offset + bad.stored_size // 2] ^= 0x40
    reg.store.delete(key)
    assert reg.store.create(key, bytes(stored))
    start = sum(c.raw_size for c in entry.chunks[:len(entry.chunks) // 2])
    path = "m:1/weights/model.bin"
    with pytest.raises(IntegrityError, match=bad.digest.hex()):
        fs.cat_file(path, start + 10, start + 20)
    with pytest.raises(IntegrityError):
        fs.cat_file(path)
    with fs.open(path) as f:
        assert f.read(100) == v1["weights/model.bin"][:100]  # other chunks still read fine
        f.seek(start)
        with pytest.raises(IntegrityError):
            f.read(10)


def test_a_whole_read_is_checked_against_the_file_digest() -> None:
    reg = Registry(f"memory://casreg-test-fs-digest-{os.getpid()}")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "a.bin").write_bytes(b"x" * 1000)
        reg.push("a", Path(d) / "a.bin")
    e = reg.manifest("a").entries[0]
    lying = Entry(e.path, e.type, e.size, bytes(32), e.chunks)  # chunks fine, file digest wrong
    f = PinnedFile(reg.store, lying, where="casreg://a")
    assert f.read(0, 10) == b"x" * 10  # a partial read cannot be checked as a whole...
    with pytest.raises(IntegrityError, match="file digest"):
        f.read(10, 1000)  # ...but reaching the end sequentially is


def test_unknown_name_alias_or_path_is_file_not_found_with_the_reference(fs: CasregFileSystem) -> None:
    cases = [
        ("casreg://nosuch/model.onnx", "casreg://nosuch"),
        ("casreg://m@staging/config.json", "m@staging"),
        ("casreg://m:9/config.json", "m:9"),
        ("casreg://m@production/no/such/file", "casreg://m@production/no/such/file"),
        ("casreg://blake3:0123456789abcdef/x", "0123456789abcdef"),
    ]
    for path, needle in cases:
        for call in (fs.info, fs.cat_file, fs.open, fs.ls):
            with pytest.raises(FileNotFoundError, match=needle) as err:
                call(path)
            assert "\n" not in str(err.value)
        assert not fs.exists(path)


def test_bad_references_and_directories_get_clear_errors(fs: CasregFileSystem) -> None:
    with pytest.raises(ValueError, match="casreg://m@Bad"):
        fs.info("m@Bad/x")
    with pytest.raises(IsADirectoryError, match="m/weights"):
        fs.cat_file("m/weights")
    with pytest.raises(IsADirectoryError, match="recursive=True"):
        fs.get("m/weights", "/tmp/never-written")


def test_it_is_read_only(fs: CasregFileSystem, tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"x")
    attempts = [
        lambda: fs.open("m/new.bin", "wb"), lambda: fs.open("m/config.json", "ab"),
        lambda: fs.pipe_file("m/new.bin", b"x"), lambda: fs.put(str(tmp_path / "x"), "m/x"),
        lambda: fs.rm("m/config.json"), lambda: fs.rm_file("m/config.json"), lambda: fs.mkdir("m/d"),
        lambda: fs.makedirs("m/d"), lambda: fs.touch("m/t"), lambda: fs.mv("m/config.json", "m/c"),
        lambda: fs.copy("m/config.json", "m/c"), lambda: fs.rmdir("m/empty"),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionError, match="read-only; use casreg push"):
            attempt()
    with pytest.raises(ReadOnlyError):
        fs.rm("m", recursive=True)
    assert fs.cat_file("m/config.json") == b'{"hidden": 2}'


def test_get_copies_files_and_directories_verified(fs: CasregFileSystem, pushed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, v1, _, single = pushed
    fs.get("m@production", str(tmp_path / "all"), recursive=True)
    got = {p.relative_to(tmp_path / "all").as_posix(): p.read_bytes()
           for p in (tmp_path / "all").rglob("*") if p.is_file()}
    assert got == v1 and (tmp_path / "all" / "empty").is_dir()
    fs.get("m@production/weights", str(tmp_path / "w"), recursive=True)
    assert sorted(os.listdir(tmp_path / "w")) == ["model.bin", "small.txt"]
    (tmp_path / "into").mkdir()
    fs.get("f", str(tmp_path / "into"))
    assert (tmp_path / "into" / "model.onnx").read_bytes() == single
    fs.get("m:1/config.json", str(tmp_path / "c.json"))
    assert (tmp_path / "c.json").read_bytes() == v1["config.json"]
    fs.get("m:2/config.json", str(tmp_path / "c.json"))  # get replaces, like a copy
    assert (tmp_path / "c.json").read_bytes() == b'{"hidden": 2}'
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_instances_follow_the_registry_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    regs = []
    for i in (1, 2):
        reg = Registry(f"memory://casreg-test-fs-cache-{i}-{os.getpid()}")
        (tmp_path / f"m{i}.txt").write_bytes(b"registry %d" % i)
        reg.push("m", tmp_path / f"m{i}.txt")
        regs.append(reg)
    monkeypatch.setenv("CASREG_REGISTRY", regs[0].url)
    assert fsspec.filesystem("casreg").cat_file("m") == b"registry 1"
    monkeypatch.setenv("CASREG_REGISTRY", regs[1].url)
    assert fsspec.filesystem("casreg").cat_file("m") == b"registry 2"
    assert fsspec.filesystem("casreg", registry=regs[0].url).cat_file("m") == b"registry 1"
    assert CasregFileSystem(registry=regs[0].url) is CasregFileSystem(registry=regs[0].url)
    assert CasregFileSystem(registry=regs[0]) is not CasregFileSystem(registry=regs[0])  # objects are never shared
    assert CasregFileSystem(registry=regs[1]).cat_file("m") == b"registry 2"


def test_the_entry_point_works_without_importing_casreg(pushed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg, v1, _, _ = pushed
    code = (
        "import sys, fsspec\n"
        "assert 'casreg' not in sys.modules\n"
        "with fsspec.open('casreg://m@production/config.json') as f:\n"
        "    sys.stdout.buffer.write(f.read())\n"
        "with fsspec.open('casreg://m@production/weights/small.txt', 'r', registry=sys.argv[1]) as f:\n"
        "    sys.stdout.write('|' + f.readline())\n"
    )
    if reg.url.startswith("memory://"):
        pytest.skip("a memory:// registry lives in this process only")
    env = dict(os.environ, CASREG_REGISTRY=reg.url)
    out = subprocess.run([sys.executable, "-c", code, reg.url], capture_output=True, env=env, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == v1["config.json"] + b"|line one\n"


def test_a_registry_object_over_a_wrapped_store_is_used_as_given(store: ObjectStore, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    Registry(store.url).push("a", tmp_path / "a.txt")
    counting = CountingStore(store)
    fs = CasregFileSystem(registry=Registry.from_store(counting))
    assert fs.cat_file("a") == b"abc"
    assert counting.reads["packs"] == 1 and counting.bytes_read["packs"] == 3


def test_pickles_by_its_registry_url(fs: CasregFileSystem) -> None:
    """Dask and friends ship filesystems to workers by pickling them."""
    import pickle

    again = pickle.loads(pickle.dumps(fs))
    assert again.registry.url == fs.registry.url
    assert again.cat_file("m:1/config.json") == b'{"hidden": 1}'


def test_filecache_with_check_files_follows_a_moved_alias(pushed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ukey() is the file's BLAKE3, so fsspec's filecache notices when an alias moved
    (docs/loaders.md warns that simplecache, keyed by URL, does not)."""
    reg, v1, v2, _ = pushed
    url = "filecache::casreg://m@production/config.json"
    opts = {"casreg": {"registry": reg.url}, "filecache": {"cache_storage": str(tmp_path / "fc"), "check_files": True}}
    with fsspec.open(url, **opts) as f:
        assert f.read() == v1["config.json"]
    reg.set_alias("m", "production", 2)
    with fsspec.open(url, **opts) as f:
        assert f.read() == v2["config.json"]
