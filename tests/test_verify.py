"""``verify``: what it checks, how it reads, and how it reports. (Flipped bytes in packs,
manifests and indexes are in test_faults.py; pull's own refusals in test_integrity.py.)"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from casreg import IntegrityError, Registry, UnknownReferenceError
from casreg.content.manifest import ChunkRef, Entry, Manifest
from casreg.content.packs import decode_index
from casreg.keys import index_key, manifest_key, pack_key, pointer_key
from casreg.ledger.pointers import move_alias
from casreg.storage import ObjectStore
from casreg.storage.base import ByteRange
from casreg.testing.wrapper import StoreWrapper

SCRIPT = Path(sys.executable).with_name("casreg")


@pytest.fixture(autouse=True)
def _env(author: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    author("verify@example.test")
    monkeypatch.setenv("CASREG_COMPACT_THRESHOLD", "0")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify-src")
    rnd = random.Random(11)
    v1, v2 = root / "v1", root / "v2"
    shared = rnd.randbytes(4_000_000)  # several chunks, shared by both versions
    for d in (v1, v2):
        (d / "sub").mkdir(parents=True)
        (d / "shared.bin").write_bytes(shared)
    (v1 / "sub" / "a.txt").write_bytes(b"".join(b"v1 line %d\n" % i for i in range(20_000)))
    (v2 / "sub" / "a.txt").write_bytes(b"".join(b"v2 line %d\n" % i for i in range(20_000)))
    (v2 / "extra.bin").write_bytes(rnd.randbytes(1_500_000))
    (v2 / "empty").mkdir()
    return v1, v2


@pytest.fixture
def reg2(registry: Registry, sources: tuple[Path, Path]) -> Registry:
    registry.push("m", sources[0])
    registry.push("m", sources[1])
    return registry


def packs_of(store: ObjectStore) -> list[str]:
    return sorted(k for k in store.list("packs"))


def index_entries(store: ObjectStore) -> int:
    return sum(len(decode_index(store.read(k), k)) for k in store.list("index"))


def refs(m: Manifest) -> set[tuple[str, int]]:
    return {(c.pack, c.offset) for e in m.entries for c in e.chunks}


def leftover(reg: Registry, d: Path) -> Manifest:
    """What a push killed before its commit leaves (unreferenced pack, index, manifest)."""
    from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
    from casreg.content.packs import ChunkIndex
    from casreg.content.push import store_source
    from casreg.content.source import scan_source

    if not d.exists():
        d.mkdir()
        (d / "left.bin").write_bytes(random.Random(12).randbytes(500_000))
    m, _ = store_source(reg.store, scan_source(d), params=DEFAULT_CHUNK_PARAMS, level=3,
                        index=ChunkIndex.load(reg.store))
    return m


def replace(store: ObjectStore, key: str, data: bytes) -> None:
    store.delete(key)
    assert store.create(key, data)


class Counting(StoreWrapper):
    """The real store, counting the requests made to it."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.calls: Counter[tuple[str, str]] = Counter()

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        self.calls["read", key] += 1
        return self.inner.read(key, byte_range)

    def read_ranges(self, key: str, ranges: list[ByteRange]) -> list[bytes]:  # type: ignore[override]
        self.calls["read", key] += 1
        return self.inner.read_ranges(key, ranges)

    def size(self, key: str) -> int:
        self.calls["size", key] += 1
        return self.inner.size(key)


class Recording:
    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.advanced = 0
        self.finished = 0

    def start(self, label: str, total_bytes: int) -> None:
        self.started.append((label, total_bytes))

    def advance(self, nbytes: int) -> None:
        self.advanced += nbytes

    def finish(self) -> None:
        self.finished += 1


# -- a sound registry ------------------------------------------------------------------------------
def test_everything_verifies(reg2: Registry) -> None:
    store = reg2.store
    r = reg2.verify()
    assert r.ok and r.problems == [] and r.warnings == []
    assert (r.versions, r.manifests) == (2, 2)
    assert r.packs == r.indexes == len(packs_of(store))
    assert r.chunks == index_entries(store)
    assert r.bytes_read >= sum(store.size(k) for k in packs_of(store))
    assert (r.unreferenced_packs, r.unreferenced_manifests) == (0, 0)
    assert r.to_dict()["ok"] is True and r.to_dict()["problem_count"] == 0
    for ref in ("m:1", "m:2", "m@blake3:" + reg2.resolve("m:1").hexdigest[:16]):
        one = reg2.verify(ref)
        m = reg2.manifest(ref)
        assert one.ok and one.manifests == 1 and one.chunks == len(refs(m))
        assert one.digest == "blake3:" + m.hexdigest


def test_empty_registry_verifies(registry: Registry) -> None:
    r = registry.verify()
    assert r.ok and r.versions == 0 and r.packs == 0


def test_unknown_reference(reg2: Registry) -> None:
    with pytest.raises(UnknownReferenceError):
        reg2.verify("m:9")


def test_progress_counts_bytes(reg2: Registry) -> None:
    p = Recording()
    reg2.verify(progress=p)
    total = sum(reg2.store.size(k) for k in packs_of(reg2.store))
    assert p.started == [("verify", total)] and p.advanced == total and p.finished == 1
    p = Recording()
    reg2.verify("m:2", progress=p)
    m = reg2.manifest("m:2")
    total = sum({(c.pack, c.offset): c.stored_size for e in m.entries for c in e.chunks}.values())
    assert p.started == [("verify", total)] and p.advanced == total and p.finished == 1


def test_packs_are_read_in_few_requests(reg2: Registry) -> None:
    """Several chunks per request: a pack under 16 MiB is one ranged read, plus its size."""
    counting = reg2.store = Counting(reg2.store)
    reg2.verify()
    for key in packs_of(counting.inner):
        chunks = len(decode_index(counting.inner.read(index_key(key.rsplit("/", 1)[-1][:-5])), key))
        assert chunks >= 2
        assert counting.calls["read", key] == 1 and counting.calls["size", key] == 1
    counting.calls.clear()
    reg2.verify("m:1")
    for key in packs_of(counting.inner):
        assert counting.calls["read", key] <= 1


# -- missing objects ----------------------------------------------------------------------------------
def test_missing_pack_names_it_and_the_versions(reg2: Registry) -> None:
    m1 = reg2.manifest("m:1")
    shared = next(c.pack for e in m1.entries if e.path == "shared.bin" for c in e.chunks)
    key = pack_key(shared)
    reg2.store.delete(key)
    (p,) = reg2.verify().problems
    assert (p.key, p.kind) == (key, "missing") and p.versions == ["m:1", "m:2"]
    (p,) = reg2.verify("m:1").problems
    assert (p.key, p.kind, p.versions) == (key, "missing", ["m:1"])


def test_missing_manifest(reg2: Registry) -> None:
    key = manifest_key(reg2.resolve("m:2").hexdigest)
    reg2.store.delete(key)
    (p,) = reg2.verify().problems
    assert (p.key, p.kind, p.versions) == (key, "missing", ["m:2"])
    assert reg2.verify("m:1").ok


def test_missing_index_is_only_a_warning(reg2: Registry) -> None:
    packid = packs_of(reg2.store)[0].rsplit("/", 1)[-1][:-5]
    chunks = index_entries(reg2.store)
    reg2.store.delete(index_key(packid))
    r = reg2.verify()
    assert r.ok and any(pack_key(packid) in w and "no index" in w for w in r.warnings)
    assert r.chunks == chunks and r.indexes == r.packs - 1  # its chunks were checked by the pack's trailer


def test_index_without_its_pack(reg2: Registry, sources: tuple[Path, Path]) -> None:
    """Pushes dedup against any index: one whose pack is gone is a problem even if no
    version uses the pack yet."""
    left = leftover(reg2, sources[0].parent / "left")
    packid = next(c.pack for e in left.entries for c in e.chunks)
    reg2.store.delete(pack_key(packid))
    (p,) = reg2.verify().problems
    assert (p.key, p.kind) == (pack_key(packid), "missing") and "index exists" in p.reason


def test_leftovers_deleted_by_gc_during_verify_are_not_problems(reg2: Registry, sources: tuple[Path, Path]) -> None:
    """gc deletes a leftover (index first, then pack, then its manifest) after verify
    listed it and before verify reads it."""
    left = leftover(reg2, sources[0].parent / "left")
    packid = next(c.pack for e in left.entries for c in e.chunks)
    inner = reg2.store

    class GcMeanwhile(Counting):
        def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
            if key.startswith("index/") and inner.exists(index_key(packid)):
                for k in (index_key(packid), pack_key(packid), manifest_key(left.hexdigest)):
                    inner.delete(k)
            return super().read(key, byte_range)

    reg2.store = GcMeanwhile(inner)
    r = reg2.verify()
    assert r.ok, [p.line() for p in r.problems]
    assert r.unreferenced_packs == 0


# -- damaged packs ---------------------------------------------------------------------------------
def test_truncated_pack(reg2: Registry) -> None:
    key = packs_of(reg2.store)[0]
    data = reg2.store.read(key)
    replace(reg2.store, key, data[: len(data) // 2])
    (p,) = reg2.verify().problems
    assert p.key == key and "its index says" in p.reason and "truncated" in p.reason


def test_pack_with_trailing_bytes(reg2: Registry) -> None:
    key = packs_of(reg2.store)[0]
    data = reg2.store.read(key)
    replace(reg2.store, key, data + b"\0" * 10)
    (p,) = reg2.verify().problems
    assert p.key == key and f"it has {len(data) + 10} bytes, its index says {len(data)}" in p.reason


def test_pack_without_index_object_is_checked_by_its_trailer(reg2: Registry) -> None:
    key = packs_of(reg2.store)[0]
    packid = key.rsplit("/", 1)[-1][:-5]
    reg2.store.delete(index_key(packid))
    data = bytearray(reg2.store.read(key))
    data[-60] ^= 1  # the trailer no longer hashes to the pack's name
    replace(reg2.store, key, bytes(data))
    (p,) = reg2.verify().problems
    assert p.key == key and "does not hash to its name" in p.reason


def test_manifest_pointing_at_the_wrong_chunk(reg2: Registry) -> None:
    """A manifest whose trailer is sound and whose entries hash right (chunk locations are
    not part of the version digest) but that sends a chunk to another chunk's bytes."""
    m = reg2.manifest("m:2")
    f = next(e for e in m.entries if len(e.chunks) > 1)
    c0, c1 = f.chunks[0], f.chunks[1]
    wrong = ChunkRef(c0.digest, c1.pack, c1.offset, c0.stored_size, c0.raw_size, c0.codec)
    entries = [Entry(e.path, e.type, e.size, e.digest, [wrong, *e.chunks[1:]] if e is f else list(e.chunks))
               for e in m.entries]
    bad = Manifest(m.kind, entries, dict(m.chunking), tree=m.tree)
    assert bad.digest == m.digest
    key = manifest_key(m.hexdigest)
    replace(reg2.store, key, bad.to_bytes())
    (p,) = reg2.verify().problems
    assert (p.key, p.versions) == (key, ["m:2"]) and "do not lead to their bytes" in p.reason
    assert not reg2.verify("m:2").ok


# -- ledger and pointers -----------------------------------------------------------------------------
def test_alias_to_a_digest_no_version_records(reg2: Registry) -> None:
    move_alias(reg2.store, "m", "prod", ("blake3:" + "ab" * 32, 7), reason="hand-made")
    (p,) = reg2.verify().problems
    assert p.key == pointer_key("m", "prod") and "no version records" in p.reason


@pytest.fixture
def reg2_format1(registry: Registry, sources: tuple[Path, Path]) -> Registry:
    """``reg2`` in a registry of format 1, which resolves ``NAME:N`` through JSON copies."""
    from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
    from casreg.content.config import init_config

    init_config(registry.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/1")
    registry.push("m", sources[0])
    registry.push("m", sources[1])
    return registry


def test_json_copy_that_disagrees_with_the_ledger(reg2_format1: Registry) -> None:
    """A format-1 registry resolves ``m:1`` through its JSON copy: one saying m:1 is m:2's
    digest would quietly serve the wrong model (every byte of it verified), so verify
    compares them."""
    reg2 = reg2_format1
    key = "refs/m/0000000001.json"
    doc = json.loads(reg2.store.read(key))
    doc["digest"] = reg2.resolve("m:2").digest
    replace(reg2.store, key, json.dumps(doc).encode())
    with pytest.raises(IntegrityError, match=f"{key}.*disagree"):  # readers cross-check it with the segment
        reg2.resolve("m:1")
    (p,) = reg2.verify().problems
    assert (p.key, p.versions) == (key, ["m:1"]) and "the ledger says" in p.reason


def _rewrite_segment(store: ObjectStore, key: str, *, footer: dict[str, object] | None = None,
                     row: dict[str, object] | None = None) -> None:
    """Re-encode a version segment with some fields of its footer record and/or its row
    replaced (a forger with write access to the store)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from casreg.ledger.schema import RECORD_KEY, parquet_bytes, record_from_metadata, record_metadata
    from casreg.records import Version

    table = pq.read_table(io.BytesIO(store.read(key)))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    record = record_from_metadata(meta)
    assert record is not None
    if footer:
        meta[RECORD_KEY] = record_metadata(Version.from_dict({**record.to_dict(), **footer}))[RECORD_KEY]
    rows = table.to_pylist()
    rows[0].update(row or {})
    table = pa.Table.from_pylist(rows, schema=table.schema).replace_schema_metadata(meta)
    replace(store, key, parquet_bytes(table))


def test_segment_whose_footer_record_disagrees_with_its_row(reg2: Registry) -> None:
    """Format 2 resolves ``m:1`` from the record in its segment's footer; SQL and ``ls``
    read the row. A forged footer naming m:2's digest would serve the wrong model, so
    verify compares the two and names the segment and the version."""
    key = "ledger/versions/m/0000000001.parquet"
    other = reg2.resolve("m:2").digest
    _rewrite_segment(reg2.store, key, footer={"digest": other})
    assert reg2.resolve("m:1").digest == other  # what a reader of the footer alone would get
    with pytest.raises(IntegrityError, match=f"{key}.*differs from the record its footer"):  # a reader of rows
        reg2.sql("select digest from versions where version = 1")
    (p,) = reg2.verify().problems
    assert (p.key, p.kind, p.versions) == (key, "corrupt", ["m:1"])
    assert "footer" in p.reason and other in p.reason


def test_segment_whose_row_names_another_version(reg2: Registry) -> None:
    key = "ledger/versions/m/0000000001.parquet"
    _rewrite_segment(reg2.store, key, footer={"version": 2}, row={"version": 2})
    problems = reg2.verify().problems
    assert any(p.key == key and "records m:2, not m:1" in p.reason for p in problems), problems
    with pytest.raises(IntegrityError, match="0000000001.parquet.*records m:2, not m:1"):
        reg2.show("m:1")


def test_segment_with_a_damaged_footer_record(reg2: Registry) -> None:
    """The footer record carries its own checksum: a bit flipped in it is named."""
    key = "ledger/versions/m/0000000001.parquet"
    data = reg2.store.read(key)
    at = data.rindex(b'"author"')
    replace(reg2.store, key, data[:at + 2] + bytes([data[at + 2] ^ 0x01]) + data[at + 3:])
    with pytest.raises(IntegrityError, match=r"ledger segment .*0000000001.parquet.* is corrupt"):
        reg2.resolve("m:1")
    assert any(p.key == key and p.kind == "corrupt" for p in reg2.verify().problems)


def test_unreadable_ledger_segment(reg2: Registry) -> None:
    key = "ledger/versions/m/0000000001.parquet"
    replace(reg2.store, key, b"PAR1 not really parquet PAR1")
    r = reg2.verify()
    (p,) = r.problems
    assert (p.key, p.kind) == (key, "corrupt")
    assert r.versions == 1 and r.manifests == 1  # the readable version was still verified


# -- CLI ---------------------------------------------------------------------------------------------
def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "verify", *args, "--registry", url], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_cli(reg2: Registry) -> None:
    if reg2.url.startswith("memory://"):
        pytest.skip("memory:// is private to one process")
    p = cli(reg2.url)
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.startswith(f"verified {reg2.url}: 2 versions, 2 manifests") and "all good" in p.stdout

    key = manifest_key(reg2.resolve("m:1").hexdigest)
    reg2.store.delete(key)
    p = cli(reg2.url, "--json")
    assert p.returncode == 6
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and doc["problem_count"] == 1 and doc["problems"][0]["key"] == key
    assert json.loads(p.stderr) == {"error": f"verify found 1 bad or missing object in {reg2.url}", "exit_code": 6}
    assert len(p.stderr.splitlines()) == 1
    p = cli(reg2.url, "m:1", "--quiet")
    assert p.returncode == 6 and p.stdout == ""
    assert p.stderr.splitlines() == [f"casreg: missing {key}: the version's manifest is missing (needed by m:1)",
                                     "casreg: error: verify found 1 bad or missing object in m:1"]


# -- file digests (--read-data) and records against manifests ------------------------------------------
def forge(reg: Registry, name: str, m: Manifest) -> str:
    """Commit a version of ``m`` (stored as a sound, self-hashing manifest) with a record
    that describes it truthfully: what a writer of the store could do."""
    import dataclasses

    from casreg.ledger.segments import commit_version

    assert reg.store.create(manifest_key(m.hexdigest), m.to_bytes())
    record = dataclasses.replace(reg.show("m:1"), name=name, digest=m.version_digest, kind=m.kind, size=m.size,
                                 file_count=len(m.files), chunk_count=sum(len(e.chunks) for e in m.files))
    files = [{"path": e.path, "type": e.type, "size": e.size, "digest": e.digest.hex() if e.digest else None}
             for e in m.entries]
    return commit_version(reg.store, record, files).ref


def distinct_files(*ms: Manifest) -> dict[tuple[bytes, tuple[bytes, ...]], int]:
    return {(e.digest, tuple(c.digest for c in e.chunks)): e.size for m in ms for e in m.files}


def test_read_data_hashes_each_distinct_file_once(reg2: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """``shared.bin`` is in both versions (same digest, same chunks): hashed once. Counted
    from the bytes the hashing loop consumed and the chunk reads it made (no chunk cache:
    every chunk the data pass needs is read from the registry)."""
    monkeypatch.setenv("CASREG_CACHE", "off")
    m1, m2 = reg2.manifest("m:1"), reg2.manifest("m:2")
    distinct = distinct_files(m1, m2)
    assert len(distinct) == 4 and len(m1.files) + len(m2.files) == 5
    counting = reg2.store = Counting(reg2.store)

    def pack_reads() -> int:
        return sum(n for (op, key), n in counting.calls.items() if op == "read" and key.startswith("packs/"))

    plain = reg2.verify()
    plain_reads = pack_reads()
    counting.calls.clear()
    r = reg2.verify(read_data=True)
    assert r.ok and r.read_data and not plain.read_data, [p.line() for p in r.problems]
    assert (r.files_hashed, r.files_reused) == (4, 1)
    assert r.bytes_hashed == sum(distinct.values())
    assert r.records == 2 == plain.records
    # the data pass read each distinct file's chunks once (one request per run of chunks)
    from casreg.content.fetch import spans

    runs = sum(len(list(spans(e.chunks))) for m in (m1, m2) for e in m.files
               if not (m is m2 and e.path == "shared.bin"))
    assert pack_reads() - plain_reads == runs, (pack_reads(), plain_reads, runs)
    assert r.to_dict()["files_hashed"] == 4

    one = reg2.verify("m:2", read_data=True)
    assert one.ok and (one.files_hashed, one.files_reused, one.records) == (3, 0, 1)
    assert one.bytes_hashed == sum(e.size for e in m2.files)


def _lying(reg: Registry) -> tuple[str, str]:
    """A version whose one file's chunks are genuine and whose file digest is not."""
    f = next(e for e in reg.manifest("m:1").files if e.path == "shared.bin")
    m = Manifest("file", [Entry("shared.bin", "f", f.size, bytes(32), list(f.chunks))], {}, tree=2)
    return forge(reg, "liar", m), manifest_key(m.hexdigest)


def test_read_data_names_a_lying_file_digest(reg2: Registry, tmp_path: Path) -> None:
    ref, key = _lying(reg2)
    with pytest.raises(IntegrityError, match="does not match its digest"):
        reg2.pull(ref, tmp_path / "liar")  # what a pull says
    assert not (tmp_path / "liar").exists()
    for report in (reg2.verify(read_data=True), reg2.verify(ref, read_data=True)):
        (p,) = report.problems
        assert (p.key, p.kind, p.versions) == (key, "corrupt", [ref])
        assert "1 of 1 file(s) do not match their digest" in p.reason and "'shared.bin'" in p.reason
        assert "\n" not in p.line()


def test_a_lying_file_shared_by_two_versions_is_named_for_both(reg2: Registry) -> None:
    """Deduplicated checks keep their verdict: the second manifest holding the same lying
    file (same digest and chunks) is reported without hashing it again."""
    ref, key = _lying(reg2)
    f = next(e for e in reg2.manifest("m:1").files if e.path == "shared.bin")
    other = Manifest("dir", [Entry("x/shared.bin", "f", f.size, bytes(32), list(f.chunks))], {}, tree=2)
    ref2 = forge(reg2, "liar2", other)
    r = reg2.verify(read_data=True)
    assert {(p.key, tuple(p.versions)) for p in r.problems} == {(key, (ref,)),
                                                                (manifest_key(other.hexdigest), (ref2,))}
    assert r.files_hashed == 5 and r.files_reused == 2  # shared.bin (true), its liar once, reused by liar2


def test_read_data_names_a_file_of_one_chunk_repeated(reg2: Registry) -> None:
    """A manifest claiming a large file made of one genuine chunk repeated, its digest
    made up; the same file with its true digest verifies."""
    c = reg2.manifest("m:1").files[0].chunks[0]
    reps = 40
    lie = Manifest("file", [Entry("big.bin", "f", reps * c.raw_size, bytes(32), [c] * reps)], {}, tree=2)
    ref, key = forge(reg2, "repeat", lie), manifest_key(lie.hexdigest)
    raw = reg2.store.read(pack_key(c.pack), ByteRange(c.offset, c.offset + c.stored_size))
    from casreg.content.codec import decode

    chunk = bytes(decode(c.codec, raw, c.raw_size))
    from blake3 import blake3

    true = Manifest("file", [Entry("big.bin", "f", reps * c.raw_size, blake3(chunk * reps).digest(), [c] * reps)],
                    {}, tree=2)
    honest = forge(reg2, "honest", true)
    assert reg2.verify(honest, read_data=True).ok
    for report in (reg2.verify(read_data=True), reg2.verify(ref, read_data=True)):
        (p,) = report.problems
        assert (p.key, p.versions) == (key, [ref]) and f"{reps:,} chunk(s)" in p.reason


def test_record_that_disagrees_with_its_manifest(reg2: Registry) -> None:
    """A record whose kind and size (what ls and SQL show) are not its manifest's: verify
    and verify REF name the segment and the version, with or without --read-data."""
    key = "ledger/versions/m/0000000002.parquet"
    _rewrite_segment(reg2.store, key, footer={"kind": "file", "size": 7}, row={"kind": "file", "size": 7})
    assert reg2.show("m:2").size == 7
    for report in (reg2.verify(), reg2.verify(read_data=True), reg2.verify("m:2")):
        (p,) = report.problems
        assert (p.key, p.kind, p.versions) == (key, "corrupt", ["m:2"])
        assert "kind 'file' (the manifest: 'dir')" in p.reason and "size 7 (the manifest:" in p.reason
        assert manifest_key(reg2.resolve("m:2").hexdigest) in p.reason
    assert reg2.verify("m:1").ok


def test_record_whose_files_and_counts_disagree(reg2: Registry) -> None:
    key = "ledger/versions/m/0000000001.parquet"
    import io

    import pyarrow.parquet as pq

    files = pq.read_table(io.BytesIO(reg2.store.read(key))).to_pylist()[0]["files"]
    files[0]["size"] += 1
    _rewrite_segment(reg2.store, key, footer={"file_count": 9, "chunk_count": 1}, row={
        "file_count": 9, "chunk_count": 1, "files": files})
    (p,) = reg2.verify().problems
    assert (p.key, p.versions) == (key, ["m:1"])
    assert "file_count 9 (the manifest: 2)" in p.reason and "chunk_count 1" in p.reason
    assert f"first difference at {files[0]['path']!r}" in p.reason


def test_cli_read_data(reg2: Registry) -> None:
    if reg2.url.startswith("memory://"):
        pytest.skip("memory:// is private to one process")
    p = cli(reg2.url, "--read-data")
    assert p.returncode == 0 and "4 files hashed" in p.stdout and "all good" in p.stdout, p.stdout + p.stderr
    ref, key = _lying(reg2)
    p = cli(reg2.url)
    assert p.returncode == 0, p.stderr  # the structure is sound: only reading the data tells
    for args in (("--read-data",), (ref, "--read-data")):
        p = cli(reg2.url, *args)
        assert p.returncode == 6 and "Traceback" not in p.stderr
        assert p.stderr.splitlines()[0].startswith(f"casreg: corrupt {key}: 1 of 1 file(s) do not match"), p.stderr
