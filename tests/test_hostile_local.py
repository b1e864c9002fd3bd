"""Hostile local registries and partial trees: every file is an attacker's.

A registry directory (or the directory a pull writes into) can be written by someone
else: a FIFO or a link to ``/dev/zero`` planted under a key, a symbolic link planted in the
predictable partial tree of a pull, a forged manifest claiming a terabyte or a path 1,500
directories deep. Every command must fail promptly in one line naming what is wrong,
never hang, never read or write through a link, and never fill the disk."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from casreg import IntegrityError, Registry, StorageError
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.config import init_config, max_chunk_size
from casreg.content.manifest import MAX_PATH_DEPTH, ChunkRef, Entry, Manifest, validate_relpath
from casreg.content.pull import SPACE_MARGIN, partial_path
from casreg.errors import InvalidInputError, NotFoundError, UnsafePathError
from casreg.keys import manifest_key
from casreg.ledger.segments import commit_version
from casreg.storage.local import LocalStore
from casreg.testing.store_suite import promptly

CLI = Path(sys.executable).with_name("casreg")
TIMEOUT = 20  # seconds a command may take here before it counts as hung (each takes well under 2)


# -- helpers ----------------------------------------------------------------------------------------
def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(root: Path) -> Path:
    write(root / "weights.bin", os.urandom(300_000))
    write(root / "sub" / "a.bin", os.urandom(70_000))
    write(root / "sub" / "deeper" / "b.txt", b"small\n")
    return root


def snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every entry below ``root``, links as their targets, without following any."""
    out: dict[str, bytes | str | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
    return out


def make_chain(top: Path, depth: int, leaf: str) -> None:
    """``top/d/d/.../d/leaf`` (``depth`` directories), made relative to descriptors since
    the whole path may be longer than the OS takes at once."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with open(os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"at the bottom\n")
    finally:
        os.close(fd)


def remove_chain(top: Path) -> None:
    """Remove what :func:`make_chain` made without recursing (pytest's clean-up of old
    temporary directories recurses, and would fail on it): each level is moved up."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while names := os.listdir(fd):
            for name in names:
                if not Path(top, name).is_dir() or Path(top, name).is_symlink():
                    os.unlink(name, dir_fd=fd)
                    continue
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    for child in os.listdir(sub):
                        os.rename(child, f"{child}.{time.monotonic_ns()}", src_dir_fd=sub, dst_dir_fd=fd)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    top.rmdir()


def make_reg(tmp_path: Path, registry_format: str | None = None) -> Registry:
    r = Registry(tmp_path / "reg", threads=2)
    if registry_format is not None:
        init_config(r.store, DEFAULT_CHUNK_PARAMS, registry_format=registry_format)
    r.push("m", make_tree(tmp_path / "src"))
    r.push("w", write(tmp_path / "w.bin", os.urandom(200_000)))
    return r


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return make_reg(tmp_path)


def reg_for(kind: str, tmp_path: Path) -> Registry:
    """A registry that has an object of ``kind``: ``refs/`` copies are format 1's only."""
    return make_reg(tmp_path, "casreg/1" if kind == "version copy" else None)


def key_of(reg: Registry, kind: str, ref: str = "m") -> str:
    m = reg.manifest(ref)
    pack = m.entries[0].chunks[0].pack if m.entries[0].chunks else m.files[0].chunks[0].pack
    return {
        "manifest": manifest_key(m.hexdigest),
        "pack": f"packs/{pack[:2]}/{pack}.pack",
        "index": f"index/{pack[:2]}/{pack}.idx",
        "version record": "ledger/versions/m/0000000001.parquet",
        "version copy": "refs/m/0000000001.json",
    }[kind]


def replace_with(reg: Registry, key: str, plant: Callable[[Path], None]) -> Path:
    path = Path(reg.url, key)
    path.unlink()
    plant(path)
    return path


def cli(tmp_path: Path, reg: Registry, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ, CASREG_REGISTRY=reg.url, CASREG_USER="hostile@example.test", HOME=str(tmp_path),
               NO_COLOR="1", COLUMNS="200")
    t = time.monotonic()
    p = subprocess.run([str(CLI), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    return p, time.monotonic() - t


def one_line(p: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("casreg: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def forge(reg: Registry, name: str, manifest: Manifest) -> str:
    """Commit ``manifest`` as a version of ``name`` the way a hostile writer of the
    registry could: the manifest object, then a ledger record naming its digest."""
    assert reg.store.create(manifest_key(manifest.hexdigest), manifest.to_bytes())
    record = dataclasses.replace(reg.show("w"), name=name, digest=manifest.version_digest, kind=manifest.kind,
                                 size=manifest.size, file_count=len(manifest.files),
                                 chunk_count=sum(len(e.chunks) for e in manifest.entries))
    files = [{"path": e.path, "type": e.type, "size": e.size, "digest": e.digest.hex() if e.digest else None}
             for e in manifest.entries]
    return commit_version(reg.store, record, files).ref


# -- FIFOs and links under keys -----------------------------------------------------------------------
KINDS = ["manifest", "pack", "index", "version record", "version copy"]
RESOLVING = {"resolve", "show", "ls", "ls m", "verify", "verify m", "pull"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_fifo_under_a_key_makes_no_command_hang(tmp_path: Path, kind: str) -> None:
    """Every command finishes at once; each that needs the object fails in one line
    naming it (exit 6), and ``verify`` (which reads everything) always does."""
    reg = reg_for(kind, tmp_path)
    key = key_of(reg, kind)
    fifo = replace_with(reg, key, os.mkfifo)
    needs = {  # the commands that read this object
        "manifest": {"show", "verify", "verify m", "pull"},
        "pack": {"verify", "verify m", "pull"},
        "index": {"verify"},
        "version record": RESOLVING,  # format 2: the segment is what resolving reads
        "version copy": RESOLVING,  # format 1: the copy is read first
    }[kind]
    for cmd in (["resolve", "m"], ["show", "m"], ["ls"], ["ls", "m"], ["verify"], ["verify", "m"],
                ["pull", "m", str(tmp_path / "out")]):
        p, took = cli(tmp_path, reg, *cmd)
        what = cmd[0] if cmd[0] in ("resolve", "show", "pull") else " ".join(cmd)
        assert took < TIMEOUT / 2, (cmd, took)
        assert "Traceback" not in p.stderr
        if what not in needs:
            assert p.returncode == 0, (cmd, p.stderr)
            continue
        assert p.returncode == 6, (cmd, p.returncode, p.stderr)
        assert key in p.stderr and "not a regular file (a FIFO)" in p.stderr, (cmd, p.stderr)
        if cmd[0] != "verify":  # verify reports every problem it found, one line each, then a summary
            one_line(p, 6, key)
        assert not (tmp_path / "out").exists()
    assert fifo.is_fifo()  # reported, never replaced behind the user's back


@pytest.mark.parametrize("call", ["resolve", "manifest", "pull", "verify", "ls", "show"])
def test_a_fifo_manifest_fails_the_library_calls_promptly(reg: Registry, tmp_path: Path, call: str) -> None:
    key = key_of(reg, "manifest")
    replace_with(reg, key, os.mkfifo)
    calls: dict[str, Callable[[], object]] = {
        "resolve": lambda: reg.resolve("m"),
        "manifest": lambda: reg.manifest("m"),
        "pull": lambda: reg.pull("m", tmp_path / "out"),
        "verify": lambda: reg.verify("m"),
        "ls": lambda: reg.ls(),
        "show": lambda: reg.files("m"),
    }
    got = promptly(calls[call])
    if call in ("resolve", "ls"):  # they never read a manifest
        assert not isinstance(got, BaseException), got
        return
    assert isinstance(got, IntegrityError), got
    assert key in str(got) and "\n" not in str(got)


@pytest.mark.parametrize("kind", ["manifest", "pack", "version record", "version copy"])
def test_a_key_linked_to_dev_zero_is_refused_without_reading_it(tmp_path: Path, kind: str) -> None:
    reg = reg_for(kind, tmp_path)
    key = key_of(reg, kind)
    replace_with(reg, key, lambda p: p.symlink_to("/dev/zero"))
    got = promptly(lambda: reg.pull("m", tmp_path / "out"), seconds=TIMEOUT)
    assert isinstance(got, IntegrityError), got
    assert key in str(got) and "not a regular file (a symbolic link)" in str(got)
    p, took = cli(tmp_path, reg, "pull", "m", str(tmp_path / "out2"))
    one_line(p, 6, key, "symbolic link")
    assert took < TIMEOUT / 2


def test_a_link_on_the_way_to_a_key_is_never_followed(reg: Registry, tmp_path: Path) -> None:
    """``manifests`` linked to a copy of itself elsewhere: the registry is damaged; reads
    are refused naming the link, and a push writes nothing through it."""
    root = Path(reg.url)
    elsewhere = tmp_path / "elsewhere"
    (root / "manifests").rename(elsewhere)
    (root / "manifests").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    with pytest.raises(IntegrityError, match="lies below manifests, which is a symbolic link"):
        reg.pull("m", tmp_path / "out")
    with pytest.raises(IntegrityError, match="symbolic link"):
        reg.push("other", write(tmp_path / "other.bin", b"a new model"))
    assert snapshot(elsewhere) == before
    p, _ = cli(tmp_path, reg, "pull", "m", str(tmp_path / "out"))
    one_line(p, 6, "manifests", "symbolic link")


def test_a_directory_under_a_key_is_missing_to_reads_and_refused_to_create(tmp_path: Path) -> None:
    """A directory is what a prefix of keys is: reads find no object there. But no
    object can be created there either, and ``create`` says so instead of reporting that
    the key exists (which would make a push believe it stored something)."""
    store = LocalStore(tmp_path / "reg")
    (tmp_path / "reg" / "manifests" / "ab" / "cd.manifest").mkdir(parents=True)
    assert store.exists("manifests/ab/cd.manifest") is False
    with pytest.raises(NotFoundError):
        store.read("manifests/ab/cd.manifest")
    with pytest.raises(IntegrityError, match=r"manifests/ab/cd.manifest .* \(a directory\)"):
        store.create("manifests/ab/cd.manifest", b"x")


def test_listings_show_planted_names_and_never_descend_links(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "reg")
    assert store.create("packs/ab/real.pack", b"x")
    outside = write(tmp_path / "outside" / "secret.pack", b"secret")
    (tmp_path / "reg" / "packs" / "cd").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(tmp_path / "reg" / "packs" / "ab" / "fifo.pack")
    # a FIFO or link is listed (reading it reports the damage); nothing below a link is
    assert sorted(store.list("packs")) == ["packs/ab/fifo.pack", "packs/ab/real.pack", "packs/cd"]
    with pytest.raises(IntegrityError, match="lies below packs/cd"):
        list(store.list("packs/cd/x"))
    with pytest.raises(IntegrityError, match="packs/cd"):
        store.read("packs/cd/secret.pack")
    assert store.delete_leftover("packs/cd/.tmp-x") is False


def test_swap_never_writes_through_a_planted_lock_or_pointer(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "reg")
    victim = write(tmp_path / "victim", b"precious")
    (tmp_path / "reg" / "pointers" / "m").mkdir(parents=True)
    (tmp_path / "reg" / "pointers" / "m" / "prod.json").symlink_to(victim)
    with pytest.raises(IntegrityError, match="pointers/m/prod.json"):
        store.swap("pointers/m/prod.json", b"{}", None)
    lock = tmp_path / "reg" / ".locks" / "pointers" / "m" / "dev.json.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.symlink_to(victim)
    with pytest.raises(IntegrityError, match=r"\.locks/pointers/m/dev.json.lock"):
        store.swap("pointers/m/dev.json", b"{}", None)
    assert victim.read_bytes() == b"precious"


# -- planted partial trees ------------------------------------------------------------------------------
def test_a_link_planted_in_a_partial_tree_is_not_written_through(reg: Registry, tmp_path: Path) -> None:
    """``sub`` of the partial tree is a link to a directory elsewhere: nothing is written
    there, the link is removed, and the pull completes into DEST."""
    dest = tmp_path / "out" / "model"
    partial = partial_path(dest, reg.manifest("m"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    partial.mkdir(parents=True)
    (partial / "sub").symlink_to(elsewhere, target_is_directory=True)
    (partial / "planted").symlink_to("/etc", target_is_directory=True)  # not in the version at all
    reg.pull("m", dest)
    assert list(elsewhere.iterdir()) == []
    assert snapshot(dest) == snapshot(tmp_path / "src")  # no link in the result
    assert not partial.exists()


def test_a_partial_tree_that_is_itself_a_link_is_replaced(reg: Registry, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    partial = partial_path(dest, reg.manifest("m"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    partial.symlink_to(elsewhere, target_is_directory=True)
    reg.pull("m", dest)
    assert list(elsewhere.iterdir()) == []
    assert not dest.is_symlink() and snapshot(dest) == snapshot(tmp_path / "src")


def test_a_partial_file_linked_elsewhere_is_not_written_through(reg: Registry, tmp_path: Path) -> None:
    """A file version's partial file is a link to a file that even starts with the right
    bytes (so a resume would keep them and write on): it is replaced, never followed."""
    src = (tmp_path / "w.bin").read_bytes()
    victim = write(tmp_path / "victim.bin", src[:100_000])
    dest = tmp_path / "w-out.bin"
    partial_path(dest, reg.manifest("w")).symlink_to(victim)
    res = reg.pull("w", dest)
    assert res.resumed_bytes == 0
    assert victim.read_bytes() == src[:100_000]
    assert dest.read_bytes() == src and not dest.is_symlink()


def test_a_hard_link_planted_in_a_partial_tree_is_not_written_through(reg: Registry, tmp_path: Path) -> None:
    """A hard link to someone's file, holding a correct prefix of the file it stands in
    for: resuming would truncate and extend that file. It is unlinked and fetched anew."""
    dest = tmp_path / "model"
    partial = partial_path(dest, reg.manifest("m"))
    weights = (tmp_path / "src" / "weights.bin").read_bytes()
    victim = write(tmp_path / "victim.bin", weights[:150_000] + b"the victim's own tail")
    before = victim.read_bytes()
    partial.mkdir()
    os.link(victim, partial / "weights.bin")
    reg.pull("m", dest)
    assert victim.read_bytes() == before
    assert snapshot(dest) == snapshot(tmp_path / "src")


def test_fifos_devices_and_wrong_types_in_a_partial_tree_are_discarded(reg: Registry, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    partial = partial_path(dest, reg.manifest("m"))
    (partial / "sub").mkdir(parents=True)
    os.mkfifo(partial / "weights.bin")  # a FIFO where a file belongs: opening it would block
    (partial / "sub" / "a.bin").mkdir()  # a directory where a file belongs
    (partial / "sub" / "deeper").write_bytes(b"a file where a directory belongs")
    (partial / "sub" / "zero").symlink_to("/dev/zero")
    got = promptly(lambda: reg.pull("m", dest), seconds=TIMEOUT)
    assert got is not None and not isinstance(got, BaseException), got
    assert snapshot(dest) == snapshot(tmp_path / "src")


def test_a_deep_tree_planted_in_a_partial_tree_is_removed_without_recursion(reg: Registry, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    partial = partial_path(dest, reg.manifest("m"))
    make_chain(partial / "planted", 1500, "leaf")  # deeper than Python's recursion limit
    try:
        reg.pull("m", dest)
    finally:
        if partial.exists():
            remove_chain(partial)
    assert snapshot(dest) == snapshot(tmp_path / "src")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a partial tree to another user needs root")
@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_partial_tree_of_another_user_is_not_resumed(reg: Registry, tmp_path: Path, kind: str) -> None:
    """Only what the puller owns is resumed: another user's partial tree, even one holding
    correct bytes, is removed and written afresh (and the result is the puller's)."""
    ref, dest = ("m", tmp_path / "model") if kind == "dir" else ("w", tmp_path / "w-out.bin")
    partial = partial_path(dest, reg.manifest(ref))
    if kind == "dir":
        write(partial / "weights.bin", (tmp_path / "src" / "weights.bin").read_bytes()[:200_000])
    else:
        write(partial, (tmp_path / "w.bin").read_bytes()[:100_000])
    os.chown(partial, 4242, 4242)
    res = reg.pull(ref, dest)
    assert res.resumed_bytes == 0
    assert dest.stat().st_uid == os.geteuid()
    if kind == "dir":
        assert snapshot(dest) == snapshot(tmp_path / "src")
    else:
        assert dest.read_bytes() == (tmp_path / "w.bin").read_bytes()


def test_resume_still_keeps_what_an_interrupted_pull_wrote(reg: Registry, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    partial = partial_path(dest, reg.manifest("m"))
    write(partial / "weights.bin", (tmp_path / "src" / "weights.bin").read_bytes()[:200_000])
    write(partial / "sub" / "deeper" / "b.txt", b"small\n")
    res = reg.pull("m", dest)
    assert res.resumed_bytes > 0
    assert snapshot(dest) == snapshot(tmp_path / "src")


# -- disk space -----------------------------------------------------------------------------------------
def huge_manifest(reg: Registry, claim: int) -> Manifest:
    """A file version claiming ``claim`` bytes (at least): one chunk reference of the
    registry's maximum chunk size, repeated. Well-formed and within every bound a
    manifest read checks, so only its size can stop a pull."""
    real = reg.manifest("w").entries[0].chunks[0]
    size = max_chunk_size(reg.store)
    n = -(-claim // size)
    fake = ChunkRef(real.digest, real.pack, real.offset, real.stored_size, size, real.codec)
    return Manifest("file", [Entry("huge.bin", "f", n * size, bytes(32), [fake] * n)], {})


def test_a_claim_beyond_free_space_fails_before_anything_is_written(reg: Registry, tmp_path: Path) -> None:
    vfs = os.statvfs(tmp_path)
    claim = vfs.f_bavail * vfs.f_frsize + (1 << 30)  # more than this disk has free
    ref = forge(reg, "huge", huge_manifest(reg, claim))
    before = sorted(os.listdir(tmp_path))
    t = time.monotonic()
    with pytest.raises(StorageError, match="not enough space to pull to .* needs .* available") as info:
        reg.pull(ref, tmp_path / "a" / "b" / "huge.bin")
    assert time.monotonic() - t < 5 and "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before  # not even the parent directories
    p, _ = cli(tmp_path, reg, "pull", ref, str(tmp_path / "a" / "huge.bin"))
    one_line(p, 7, "not enough space", "needs", "available")
    assert sorted(os.listdir(tmp_path)) == before


def test_the_space_check_counts_what_a_partial_tree_already_holds(reg: Registry, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Free space between what is left to write and the whole version: a fresh pull is
    refused, one resuming a nearly complete partial tree goes ahead."""
    manifest = reg.manifest("m")
    dest = tmp_path / "model"
    weights = (tmp_path / "src" / "weights.bin").read_bytes()
    real = os.statvfs(tmp_path)
    block = real.f_frsize
    left = manifest.size - 250_000 + SPACE_MARGIN + block * len(manifest.entries)
    fake = os.statvfs_result((real.f_bsize, block, real.f_blocks, real.f_bfree, -(-left // block) + 1,
                              *real[5:]))
    monkeypatch.setattr("casreg.content.pull.os.statvfs", lambda path: fake)
    with pytest.raises(StorageError, match="not enough space"):
        reg.pull("m", dest)
    write(partial_path(dest, manifest) / "weights.bin", weights[:250_000])
    reg.pull("m", dest)
    assert snapshot(dest) == snapshot(tmp_path / "src")


# -- depth ----------------------------------------------------------------------------------------------
def test_path_depth_is_limited() -> None:
    validate_relpath("/".join(["d"] * MAX_PATH_DEPTH))
    with pytest.raises(UnsafePathError, match=f"has {MAX_PATH_DEPTH + 1} components, more than {MAX_PATH_DEPTH}"):
        validate_relpath("/".join(["d"] * (MAX_PATH_DEPTH + 1)))


def test_a_manifest_1500_deep_is_refused_in_one_line(reg: Registry, tmp_path: Path) -> None:
    """Valid by the byte limit (2,999 bytes), refused by the depth limit: one line, no
    RecursionError, nothing written."""
    deep = "/".join(["d"] * 1500)
    e = reg.manifest("w").entries[0]
    ref = forge(reg, "deep", Manifest("dir", [Entry(deep, e.type, e.size, e.digest, e.chunks)], {}))
    with pytest.raises(UnsafePathError, match="is hostile: path .* has 1500 components, more than 256") as info:
        reg.pull(ref, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    p, _ = cli(tmp_path, reg, "pull", ref, str(tmp_path / "out"))
    one_line(p, 6, "1500 components")
    p, _ = cli(tmp_path, reg, "verify", ref)
    assert p.returncode == 6 and "1500 components" in p.stderr and "Traceback" not in p.stderr


def test_a_version_as_deep_as_allowed_round_trips(reg: Registry, tmp_path: Path) -> None:
    """256 components: pushed, pulled (directories made one at a time, iteratively) and
    pulled again over itself with --force."""
    src = tmp_path / "deep-src"
    make_chain(src, MAX_PATH_DEPTH - 1, "leaf.txt")
    v = reg.push("deep", src)
    res = reg.pull(v.ref, tmp_path / "deep-out")
    assert res.files == 1
    leaf = tmp_path.joinpath("deep-out", *["d"] * (MAX_PATH_DEPTH - 1), "leaf.txt")
    assert leaf.read_bytes() == b"at the bottom\n"
    assert reg.pull(v.ref, tmp_path / "deep-out", force=True).up_to_date


def test_pushing_a_tree_too_deep_is_refused_in_one_line(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "too-deep"
    make_chain(src, 1500, "leaf")
    try:
        with pytest.raises(InvalidInputError, match="more than 256"):
            reg.push("deep", src)
        p, _ = cli(tmp_path, reg, "push", "deep", str(src))
        one_line(p, 2, "more than 256")
    finally:
        remove_chain(src)


def test_verify_names_every_planted_object_not_just_the_first(reg: Registry, tmp_path: Path) -> None:
    """FIFOs planted under a manifest, a pack, an index, a version segment, an event
    segment and a pointer: verify reports each one (it used to stop at the first)."""
    reg.set_alias("w", "prod", 1)
    root = Path(reg.url)
    w = reg.manifest("w")
    keys = [key_of(reg, "manifest", "w"), key_of(reg, "index"), key_of(reg, "pack", "w"),
            "ledger/versions/m/0000000001.parquet", "pointers/w/prod.json",
            sorted(k for k in reg.store.list("ledger/events/w") if k.endswith(".parquet"))[0]]
    assert w.entries[0].chunks  # the pack of w is a different one than m's first
    for key in dict.fromkeys(keys):
        replace_with(reg, key, os.mkfifo)
    report = promptly(lambda: reg.verify(), seconds=TIMEOUT)
    assert not isinstance(report, BaseException), report
    named = {p.key for p in report.problems}
    assert set(keys) <= named, sorted(set(keys) - named)
    p, took = cli(tmp_path, reg, "verify")
    assert p.returncode == 6 and took < TIMEOUT / 2 and "Traceback" not in p.stderr
    for key in keys:
        assert key in p.stderr, (key, p.stderr)
    assert root.is_dir()
