"""Faults: ``casreg push`` killed with SIGKILL at every stage of its write sequence and at
random times, and bytes flipped in stored objects.

The kill harness is ``RUNNER`` below: it runs the real ``casreg`` CLI in a subprocess after
wrapping the store's ``create``/``swap`` (and the publishing of a local disk's staged
pack files) with a write counter, and SIGKILLs its own process right after write number
``FAULT_KILL_AFTER`` (the environment variables are understood only by this script, never
by casreg). It also makes packs small (``FAULT_PACK_TARGET``) so
that a few MB of data give a long write sequence: pack, index, pack, index, ...,
manifest, ledger segment, JSON sidecar.

After every kill: no partial version is visible (``ls``/``resolve`` show only complete
versions, each pulls back verified), ``verify`` passes (unreferenced leftovers are fine),
and pushing again completes while storing only what the killed push had not stored.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import casreg.content.push
import casreg.lineage
from casreg import IntegrityError, Registry
from casreg.content.manifest import Manifest
from casreg.keys import index_key, manifest_key, pack_key
from casreg.storage import ObjectStore

PACK = 1 << 20  # small packs: a long write sequence from a few MB
SCRIPT = Path(sys.executable).with_name("casreg")

RUNNER = r"""
import os, signal, sys, threading
import casreg.content.push, casreg.registry
from casreg.storage import ObjectWriter

casreg.content.push.PACK_TARGET = int(os.environ["FAULT_PACK_TARGET"])
KILL_AFTER = int(os.environ.get("FAULT_KILL_AFTER") or 0)  # 0: never
LOG = os.environ.get("FAULT_LOG")
lock = threading.Lock()
count = 0
if KILL_AFTER or LOG:
    # A kill position is "right after write N" of the reference run's sequence, which is
    # only reproducible with one upload at a time; kills at random times keep the
    # store's real upload concurrency.
    import casreg.storage.s3
    casreg.storage.s3.S3Store.io_concurrency = 1


def wrote(key):
    global count
    with lock:
        count += 1
        if LOG:
            with open(LOG, "a") as f:
                f.write(key + "\n")
        if count == KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


def patch(cls):
    if cls.__dict__.get("_fault_counted"):
        return
    create, swap = cls.create, cls.swap

    def counted_create(self, key, data):
        made = create(self, key, data)
        if made:
            wrote(key)
        return made

    def counted_swap(self, key, data, expected):
        token = swap(self, key, data, expected)
        wrote(key)
        return token

    def counted_open_writer(self, prefix, _open=cls.open_writer):
        writer = _open(self, prefix)
        if type(writer).publish is not ObjectWriter.publish:  # the default publishes with create (counted)
            publish = writer.publish

            def counted_publish(key, **kw):
                made = publish(key, **kw)
                if made:
                    wrote(key)
                return made

            writer.publish = counted_publish
        return writer

    cls.create, cls.swap, cls.open_writer, cls._fault_counted = counted_create, counted_swap, counted_open_writer, True


opened = casreg.registry.open_store


def open_store(url=None):
    store = opened(url)
    patch(type(store))
    return store


casreg.registry.open_store = open_store
from casreg_cli.main import main

sys.argv = ["casreg", *sys.argv[1:]]
main()
"""


@pytest.fixture(autouse=True)
def _env(author: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    author("faults@example.test")
    monkeypatch.setenv("CASREG_COMPACT_THRESHOLD", "0")
    monkeypatch.setattr(casreg.content.push, "PACK_TARGET", PACK)  # in-process pushes pack like the runner


# -- content and helpers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """v1, and v2 sharing v1's big file plus ~9 MB of new chunks (about 8 small packs)."""
    root = tmp_path_factory.mktemp("fault-src")
    rnd = random.Random(2026)
    base = rnd.randbytes(2_500_000)
    v1, v2 = root / "v1", root / "v2"
    for d in (v1, v2):
        (d / "cfg").mkdir(parents=True)
        (d / "base.bin").write_bytes(base)
    (v1 / "cfg" / "a.json").write_text('{"lr": 0.1}\n')
    (v2 / "cfg" / "a.json").write_text('{"lr": 0.05}\n')
    (v2 / "new.bin").write_bytes(rnd.randbytes(9_000_000))
    (v2 / "cfg" / "notes.txt").write_bytes(b"".join(b"epoch %d loss %d\n" % (i, i * 7 % 13) for i in range(40_000)))
    return v1, v2


def clone(src: ObjectStore, dst: ObjectStore) -> None:
    for key in src.list(""):
        dst.create(key, src.read(key))


def stored_objects(store: ObjectStore) -> dict[str, int]:
    return {k: store.size(k) for p in ("packs", "index", "manifests") for k in store.list(p)}


def same_tree(a: Path, b: Path) -> None:
    files = lambda d: {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}  # noqa: E731
    assert files(a) == files(b)


def run_push(url: str, src: Path, *, kill_after: int = 0, log: Path | None = None,
             popen: bool = False) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    env = dict(os.environ, CASREG_REGISTRY=url, FAULT_PACK_TARGET=str(PACK), FAULT_KILL_AFTER=str(kill_after),
               FAULT_LOG=str(log) if log else "")
    cmd = [sys.executable, "-c", RUNNER, "push", "m", str(src), "--json"]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


class Scenario:
    """A registry holding v1 (the base), the facts of a reference run that pushed v2 into a
    copy of it (its write sequence and the objects it stored: content-addressed, so the
    same on every backend, and measured once per backend), and fresh copies of the base
    to kill pushes in."""

    _reference: dict[str, tuple[list[str], dict[str, int], str]] = {}

    def __init__(self, backend: str, make_store: Callable[[], ObjectStore], sources: tuple[Path, Path],
                 tmp: Path) -> None:
        self.make_store, (self.v1, self.v2), self.tmp = make_store, sources, tmp
        self.base = make_store()
        Registry(self.base.url).push("m", self.v1)
        if backend not in self._reference:
            ref = self.fresh()
            log = tmp / "reference.log"
            p = run_push(ref.url, self.v2, log=log)
            assert p.returncode == 0, p.stderr
            before = stored_objects(self.base)
            stored = {k: n for k, n in stored_objects(ref).items() if k not in before}  # what v2 costs
            self._reference[backend] = (log.read_text().split(), stored, Registry(ref.url).resolve("m:2").digest)
        self.writes, self.stored, self.digest = self._reference[backend]

    def fresh(self) -> ObjectStore:
        store = self.make_store()
        clone(self.base, store)
        return store

    def position(self, label: str) -> int:
        """The number of writes after which to kill, for a named stage."""
        w = self.writes
        packs = [i for i, k in enumerate(w) if k.startswith("packs/")]
        indexes = [i for i, k in enumerate(w) if k.startswith("index/")]
        assert len(packs) >= 4, w
        at = {
            "first-pack": packs[0],  # a pack without its index
            "first-index": indexes[0],
            "mid-packs": packs[len(packs) // 2],
            "last-index": indexes[-1],  # every pack stored, no manifest
            "manifest": next(i for i, k in enumerate(w) if k.startswith("manifests/")),  # just before the commit
            "ledger-record": next(i for i, k in enumerate(w) if k.startswith("ledger/versions/")),  # the commit
        }[label]
        return at + 1

    def check_after_kill(self, store: ObjectStore) -> list[int]:
        """No partial version, verify passes, and a rerun stores only what is missing."""
        reg = Registry(store.url)
        versions = [v.version for v in reg.ls("m")]
        assert versions in ([1], [1, 2]), versions
        assert reg.resolve("m").version == versions[-1]
        assert [r["version"] for r in reg.sql("select version from versions order by version")] == versions
        for n in versions:  # every visible version is complete
            dest = self.tmp / f"pull-{uuid.uuid4().hex[:8]}-{n}"
            reg.pull(f"m:{n}", dest)
            same_tree(dest, self.v1 if n == 1 else self.v2)
        report = reg.verify()
        assert report.ok, [p.line() for p in report.problems]

        present = stored_objects(store)
        missing = sum(n for k, n in self.stored.items() if k not in present)
        v = reg.push("m", self.v2)  # rerun
        assert v.digest == self.digest
        assert v.stored_bytes <= missing, (v.stored_bytes, missing)
        assert v.stored_bytes == missing  # same chunks, same packs: exactly what was missing
        dest = self.tmp / f"rerun-{uuid.uuid4().hex[:8]}"
        reg.pull(v.ref, dest)
        same_tree(dest, self.v2)
        assert reg.verify().ok
        return versions


@pytest.fixture
def scenario(backend: str, store_factory: Callable[[], ObjectStore], sources: tuple[Path, Path],
             tmp_path: Path) -> Scenario:
    if backend == "memory":
        pytest.skip("memory:// is private to one process; the push runs in a subprocess")
    return Scenario(backend, store_factory, sources, tmp_path)


# -- kill -9 at each stage of the write sequence ------------------------------------------------------
STAGES = ["first-pack", "first-index", "mid-packs", "last-index", "manifest", "ledger-record"]


@pytest.mark.parametrize("stage", STAGES)
def test_kill_after_n_writes(scenario: Scenario, stage: str) -> None:
    n = scenario.position(stage)
    store = scenario.fresh()
    p = run_push(store.url, scenario.v2, kill_after=n)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
    assert p.stdout == ""  # it never reported success
    keys = set(store.list(""))
    assert scenario.writes[n - 1] in keys and not keys & set(scenario.writes[n:n + 1])  # killed exactly there
    versions = scenario.check_after_kill(store)
    assert versions == ([1, 2] if stage == "ledger-record" else [1])


@pytest.mark.slow
def test_kill_at_random_times(scenario: Scenario) -> None:
    """SIGKILL from outside at a random moment after the push began writing (possibly in
    the middle of a write); the window adapts so that kills land inside the sequence."""
    rnd = random.Random(7)
    span = 0.12
    landed = []
    for i in range(4):
        store = scenario.fresh()
        log = scenario.tmp / f"random-{i}.log"
        proc = run_push(store.url, scenario.v2, log=log, popen=True)
        assert isinstance(proc, subprocess.Popen)
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)  # the first write: imports are done, writing has begun
        time.sleep(rnd.uniform(0, span))
        proc.kill()
        proc.communicate(timeout=60)
        done = len(log.read_text().split())
        landed.append(done)
        if done == len(scenario.writes):
            span /= 2
        scenario.check_after_kill(store)
    assert min(landed) < len(scenario.writes), landed  # at least one push really was interrupted


def test_writes_are_ordered_for_atomic_visibility(scenario: Scenario) -> None:
    """The harness's premise, and the format's rule: every index after its pack, the
    manifest after every pack, the ledger record after the manifest and last of all (a
    format-2 registry writes no refs/ copy: the segment's footer carries the record)."""
    w = scenario.writes
    pos = {k: i for i, k in enumerate(w)}
    for k in w:
        if k.startswith("index/"):
            pid = k.rsplit("/", 1)[-1].removesuffix(".idx")
            assert pos[pack_key(pid)] < pos[k]
    manifest = next(k for k in w if k.startswith("manifests/"))
    segment = next(k for k in w if k.startswith("ledger/versions/"))
    assert max(i for k, i in pos.items() if k.startswith(("packs/", "index/"))) < pos[manifest] < pos[segment]
    assert w[-1] == segment
    assert not any(k.startswith("refs/") for k in w)


# -- flipped bytes: pull and verify name the object and refuse the data ---------------------------------
@pytest.fixture
def pushed(registry: Registry, sources: tuple[Path, Path]) -> Manifest:
    registry.push("m", sources[0])
    registry.push("m", sources[1])
    return registry.manifest("m:2")


def flip(store: ObjectStore, key: str, pos: int) -> None:
    data = bytearray(store.read(key))
    data[pos] ^= 0x40
    store.delete(key)
    assert store.create(key, bytes(data))


def cli_verify(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "verify", *args, "--registry", url], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def assert_cli_names(registry: Registry, key: str, *args: str) -> None:
    if registry.url.startswith("memory://"):
        return
    p = cli_verify(registry.url, *args)
    assert p.returncode == IntegrityError.exit_code, p.stderr
    lines = p.stderr.splitlines()
    assert any(key in ln for ln in lines) and all(ln.startswith("casreg: ") for ln in lines), lines
    assert "verify found" in lines[-1] and "Traceback" not in p.stderr


def test_flipped_chunk_byte(registry: Registry, pushed: Manifest, tmp_path: Path) -> None:
    c = max((c for e in pushed.entries for c in e.chunks), key=lambda c: c.stored_size)
    key = pack_key(c.pack)
    flip(registry.store, key, c.offset + c.stored_size // 2)
    with pytest.raises(IntegrityError, match=key):
        registry.pull("m:2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    for report in (registry.verify(), registry.verify("m:2")):
        (p,) = report.problems
        assert (p.key, p.kind) == (key, "corrupt") and c.digest.hex() in p.reason and "m:2" in p.versions
    assert_cli_names(registry, key)


def test_flipped_manifest_byte(registry: Registry, pushed: Manifest, tmp_path: Path) -> None:
    key = manifest_key(pushed.hexdigest)
    flip(registry.store, key, len(registry.store.read(key)) // 2)
    with pytest.raises(IntegrityError, match=key):
        registry.pull("m:2", tmp_path / "out")
    for report in (registry.verify(), registry.verify("m:2")):
        (p,) = report.problems
        assert (p.key, p.kind, p.versions) == (key, "corrupt", ["m:2"])
    assert registry.verify("m:1").ok
    assert_cli_names(registry, key)


def test_flipped_index_byte(registry: Registry, pushed: Manifest, sources: tuple[Path, Path],
                            tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged index is named by verify; pull does not need it, and a push of the same
    content that reads it does not trust it (it re-packs those chunks, which gives the very
    same pack, and so rewrites the index). With the chunk cache (the default for S3), a
    push uses this machine's own verified copy of the index instead of reading the
    store's: its version is right, and the damaged object stays for verify to name until
    a push that reads it (another machine, or ``CASREG_CACHE=off``) rewrites it."""
    packid = next(c.pack for e in pushed.entries for c in e.chunks)
    key = index_key(packid)
    flip(registry.store, key, 40)  # inside the first entry's offset
    (p,) = registry.verify().problems
    assert (p.key, p.kind) == (key, "corrupt")
    assert_cli_names(registry, key)
    registry.pull("m:2", tmp_path / "out")
    same_tree(tmp_path / "out", sources[1])
    if backend == "s3":
        registry.push("cached", sources[1])
        registry.pull("cached", tmp_path / "cached")
        same_tree(tmp_path / "cached", sources[1])
        assert [(q.key, q.kind) for q in registry.verify().problems] == [(key, "corrupt")]
    monkeypatch.setenv("CASREG_CACHE", "off")
    registry.push("again", sources[1])
    registry.pull("again", tmp_path / "again")
    same_tree(tmp_path / "again", sources[1])
    assert registry.verify().problems == []  # the push rewrote the damaged index


def test_leftover_empty_pack_is_replaced_not_trusted(registry: Registry, sources: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """A writer killed after an S3 server accepted the headers can leave an empty object
    under a pack's name, with no index. A later push of the same content makes the very
    same pack id: it must replace the leftover, not take it for the pack."""
    import uuid

    scratch = Registry(f"memory://leftover-{uuid.uuid4().hex}")
    scratch.push("m", sources[0])
    packs = sorted(scratch.store.list("packs"))
    assert packs
    for key in packs:
        assert registry.store.create(key, b"")  # the remains of killed uploads
    truncated = packs[0]
    registry.store.delete(truncated)
    full = scratch.store.read(truncated)
    assert registry.store.create(truncated, full[: len(full) // 2])  # and one cut in the middle
    v = registry.push("m", sources[0])
    for key in packs:
        assert registry.store.read(key) == scratch.store.read(key)
    registry.pull(v.ref, tmp_path / "out")
    same_tree(tmp_path / "out", sources[0])
    assert registry.verify().problems == []


def test_flipped_pack_trailer_byte(registry: Registry, pushed: Manifest) -> None:
    packid = next(c.pack for e in pushed.entries for c in e.chunks)
    key = pack_key(packid)
    size = registry.store.size(key)
    flip(registry.store, key, size - 20)  # inside the pack's copy of its index
    (p,) = registry.verify().problems
    assert p.key == key and "does not end with its index" in p.reason


def test_flipped_byte_in_an_unreferenced_pack(registry: Registry, pushed: Manifest, sources: tuple[Path, Path]) -> None:
    """Leftovers are fine, damaged leftovers are not: pushes may dedup against any
    indexed chunk, so verify checks every chunk of every pack."""
    from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
    from casreg.content.packs import ChunkIndex
    from casreg.content.source import scan_source

    d = sources[1].parent / f"left-{os.getpid()}"
    if not d.exists():
        d.mkdir()
        (d / "x.bin").write_bytes(random.Random(3).randbytes(400_000))
    left, _ = casreg.content.push.store_source(registry.store, scan_source(d), params=DEFAULT_CHUNK_PARAMS, level=3,
                                       index=ChunkIndex.load(registry.store))
    report = registry.verify()
    assert report.ok and report.unreferenced_packs == 1 and report.unreferenced_manifests == 1
    c = left.entries[0].chunks[0]
    flip(registry.store, pack_key(c.pack), c.offset + 10)
    (p,) = registry.verify().problems
    assert p.key == pack_key(c.pack) and p.versions == []


def test_a_store_that_lies_about_create_cannot_hang_a_push(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    """Version numbers are allocated by create-if-absent; a store answering "exists" for a
    key that does not exist would make the allocation climb forever. It stops at once with
    a one-line storage error and commits nothing."""
    import uuid

    from casreg.errors import StorageError
    from casreg.storage.memory import MemoryStore

    class Liar(MemoryStore):
        def create(self, key, data):  # type: ignore[no-untyped-def]
            return False if key.startswith("ledger/versions/") else super().create(key, data)

    store = Liar(f"memory://liar-{uuid.uuid4().hex}")
    with pytest.raises(StorageError, match="does not honour create-if-absent, nothing was committed"):
        Registry.from_store(store).push("m", sources[0])
    assert list(store.list("ledger/versions")) == [] and list(store.list("refs")) == []
