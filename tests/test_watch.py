"""casreg watch (casreg/watch.py, docs/watch.md): one small read per poll, the command's
environment, and ``--pull`` swapping a served directory atomically under a reader that
keeps reading (a real ``casreg watch`` subprocess, a real reader thread)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from casreg import IntegrityError, Registry
from casreg.errors import InvalidInputError
from casreg.storage.memory import MemoryStore
from casreg.watch import Watcher, served_digest

CLI = Path(sys.executable).with_name("casreg")
FILE_BYTES = 512 << 10


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CASREG_USER", "watch@example.test")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("CASREG_HOOKS", "off")


def make_version(root: Path, k: int) -> Path:
    """Version k: files f0..f{k} (a different set per version), each tagged with k."""
    d = root / f"src{k}"
    d.mkdir(parents=True)
    for i in range(k + 1):
        tag = f"v{k} f{i}\n".encode()
        (d / f"f{i}").write_bytes(tag + os.urandom(FILE_BYTES))
    return d


def read_served(dest: Path) -> tuple[int, set[str]] | None:
    """Open DEST once and read every file relative to that directory, as a server should;
    returns (version, file names), asserting all files carry the same version."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        names = set(os.listdir(fd))
        tags = set()
        for name in names:
            f = os.open(name, os.O_RDONLY, dir_fd=fd)
            try:
                head = os.read(f, 16)
                size = os.fstat(f).st_size
            finally:
                os.close(f)
            assert size == FILE_BYTES + len(head.split(b"\n")[0]) + 1, (name, size)
            tags.add(head.split(b" ")[0].decode())
    finally:
        os.close(fd)
    assert len(tags) == 1, f"a mix of versions: {sorted(tags)} in {sorted(names)}"
    return int(tags.pop()[1:]), names


def test_watch_pull_swaps_the_served_directory_atomically(tmp_path: Path) -> None:
    reg_url = str(tmp_path / "reg")
    reg = Registry(reg_url)
    versions = [reg.push("m", make_version(tmp_path, k)) for k in range(4)]
    reg.set_alias("m", "prod", versions[0].version)
    dest = tmp_path / "serving" / "model"
    dest.parent.mkdir()
    log = tmp_path / "exec.log"
    cmd = (f'echo "$CASREG_NAME $CASREG_ALIAS $CASREG_VERSION $CASREG_DIGEST '
           f'$CASREG_PREVIOUS_DIGEST $CASREG_PATH" >> {log}')
    env = dict(os.environ, CASREG_REGISTRY=reg_url)
    proc = subprocess.Popen([str(CLI), "watch", "m@prod", "--pull", str(dest), "--exec", cmd, "--interval", "0.05",
                             "--keep", "2", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                got = read_served(dest)
            except BaseException as err:
                errors.append(err)
                return
            if got is None:
                continue
            k, names = got
            if names != {f"f{i}" for i in range(k + 1)}:
                errors.append(AssertionError(f"version {k} served with files {sorted(names)}"))
                return
            reads += 1
            if not seen or seen[-1] != k:
                seen.append(k)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    printed: list[str] = []  # the watcher's --json lines, as they come
    lines_thread = threading.Thread(target=lambda: printed.extend(iter(proc.stdout.readline, "")), daemon=True)
    lines_thread.start()

    def wait_for(k: int) -> None:
        deadline = time.monotonic() + 60
        while (not seen or seen[-1] != k) and not errors:
            assert time.monotonic() < deadline, f"version {k} never served (seen {seen})"
            assert proc.poll() is None, f"watch exited early with {proc.returncode}"
            time.sleep(0.01)

    try:
        wait_for(0)
        for k in (1, 2, 3):
            reg.set_alias("m", "prod", versions[k].version)
            wait_for(k)
        deadline = time.monotonic() + 30  # the switch comes first, then the command and its line
        while len(printed) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(10)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        lines_thread.join(10)
    assert not errors, errors[0]
    assert seen == [0, 1, 2, 3] and reads > 4
    changes = [json.loads(line) for line in printed]
    assert [c["version"] for c in changes] == [1, 2, 3, 4]
    assert [c["exit_code"] for c in changes] == [0, 0, 0, 0]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [ln[2] for ln in lines] == ["1", "2", "3", "4"]
    assert all(ln[:2] == ["m", "prod"] for ln in lines)
    assert [ln[3] for ln in lines] == [v.digest for v in versions]
    assert [ln[4] for ln in lines[1:]] == [v.digest for v in versions[:-1]]  # the previous digest
    assert Path(lines[-1][-1]).resolve() == dest.resolve()
    kept = sorted(p.name for p in (dest.parent / "model.versions").iterdir())
    assert len(kept) == 2 and served_digest(dest) in kept  # --keep 2: the served one and one before
    assert os.readlink(dest) == f"model.versions/{served_digest(dest)}"  # relative


class CountingStore(MemoryStore):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads: list[str] = []

    def read(self, key, byte_range=None):  # type: ignore[no-untyped-def]
        self.reads.append(key)
        return super().read(key, byte_range)

    def read_versioned(self, key):  # type: ignore[no-untyped-def]
        self.reads.append(key)
        return super().read_versioned(key)


def test_each_poll_is_one_small_read_and_the_command_sees_the_move(tmp_path: Path) -> None:
    url = f"memory://watch-{os.getpid()}-{time.monotonic_ns()}"
    store = CountingStore(url)
    reg = Registry.from_store(store)
    (tmp_path / "a.bin").write_text("a")
    (tmp_path / "b.bin").write_text("b")
    v1 = reg.push("m", tmp_path / "a.bin")
    v2 = reg.push("m", tmp_path / "b.bin")
    reg.set_alias("m", "prod", 1)
    out = tmp_path / "env.json"
    cmd = f"{sys.executable} -c \"import json, os; json.dump(dict(os.environ), open('{out}', 'w'))\""
    changes = []
    w = Watcher(reg, "m", "prod", interval=0.01, exec_cmd=cmd, on_change=changes.append)
    store.reads.clear()
    for _ in range(3):
        assert w.poll() is None  # the first poll sets the baseline: no command for it
    assert store.reads == ["pointers/m/prod.json"] * 3
    reg.set_alias("m", "prod", 2)
    change = w.poll()
    assert change is not None and change.exit_code == 0 and changes == [change]
    env = json.loads(out.read_text())
    assert (env["CASREG_NAME"], env["CASREG_ALIAS"], env["CASREG_VERSION"]) == ("m", "prod", "2")
    assert (env["CASREG_DIGEST"], env["CASREG_PREVIOUS_DIGEST"]) == (v2.digest, v1.digest)
    out.unlink()
    assert w.poll() is None and not out.exists()  # no move, no command
    MemoryStore.wipe(url)


def test_poll_over_s3_is_one_get(s3_env, tmp_path: Path) -> None:
    from casreg.storage.s3 import S3Store

    store = S3Store(s3_env.url())
    reg = Registry.from_store(store)
    (tmp_path / "a.bin").write_text("a")
    reg.push("m", tmp_path / "a.bin")
    reg.set_alias("m", "prod", 1)
    w = Watcher(reg, "m", "prod")
    store.requests.clear()
    for _ in range(5):
        w.poll()
    assert dict(store.requests) == {"get_object": 5}


def test_unset_alias_and_unreachable_registry_do_not_stop_the_watcher(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(tmp_path / "reg")
    (tmp_path / "a.bin").write_text("a")
    v = reg.push("m", tmp_path / "a.bin")
    w = Watcher(reg, "m", "prod", interval=0.01, pull_dest=tmp_path / "dest")
    with caplog.at_level(logging.WARNING, logger="casreg.watch"):
        assert w.run(max_polls=3) == []
    assert caplog.text.count("m@prod is not set") == 1  # once, not once per poll
    reg.set_alias("m", "prod", 1)
    change = w.poll()
    assert change is not None and change.digest == v.digest and (tmp_path / "dest").read_text() == "a"
    assert (tmp_path / "dest").is_symlink()  # a file version: DEST links to the file


def test_dest_that_is_not_a_symlink_is_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    (tmp_path / "serving").mkdir()
    with pytest.raises(InvalidInputError, match="is not a symlink"):
        Watcher(reg, "m", "prod", pull_dest=tmp_path / "serving")
    p = subprocess.run([str(CLI), "watch", "m@prod", "--pull", str(tmp_path / "serving"), "-r", str(tmp_path / "reg")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "is not a symlink" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([str(CLI), "watch", "m", "-r", str(tmp_path / "reg")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "NAME@ALIAS" in p.stderr


def test_cli_once_brings_dest_up_to_date_then_exits(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    v = reg.push("m", make_version(tmp_path, 1))
    reg.set_alias("m", "prod", 1)
    dest = tmp_path / "serve"
    p = subprocess.run([str(CLI), "watch", "m@prod", "--pull", str(dest), "--once", "-i", "0.05", "--json",
                        "-r", str(tmp_path / "reg")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    change = json.loads(p.stdout)
    assert change["digest"] == v.digest and change["previous_digest"] is None
    assert read_served(dest) == (1, {"f0", "f1"})
    # already up to date: a new watcher does not pull again, and --max-polls ends it
    p = subprocess.run([str(CLI), "watch", "m@prod", "--pull", str(dest), "--max-polls", "2", "-i", "0.05",
                        "-r", str(tmp_path / "reg")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "", (p.stdout, p.stderr)


def test_a_pointer_that_disagrees_with_the_ledger_is_not_deployed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pointer rewritten to claim m:2 with m:1's digest (or any digest the ledger does
    not record for that number) is reported, never deployed; a true move still is."""
    reg = Registry(tmp_path / "reg")
    (tmp_path / "a.bin").write_text("a")
    (tmp_path / "b.bin").write_text("b")
    v1 = reg.push("m", tmp_path / "a.bin")
    reg.push("m", tmp_path / "b.bin")
    reg.set_alias("m", "prod", 1)
    dest = tmp_path / "dest"
    w = Watcher(reg, "m", "prod", interval=0.01, pull_dest=dest)
    assert w.poll() is not None and dest.read_text() == "a"
    pointer = tmp_path / "reg" / "pointers" / "m" / "prod.json"
    doc = json.loads(pointer.read_text())
    doc["to_version"] = 2  # m:2 by number, m:1's digest: the ledger says otherwise
    doc["to_digest"] = "blake3:" + "ab" * 32
    pointer.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="casreg.watch"):
        assert w.poll() is None
    assert "not deploying m@prod" in caplog.text and "pointers/m/prod.json" in caplog.text
    assert dest.read_text() == "a" and w.current == v1.digest
    with pytest.raises(IntegrityError, match="pointers/m/prod.json"):  # no move trusts a forged pointer
        reg.remove_alias("m", "prod", reason="repair a forged pointer")
    assert reg.restore_alias("m", "prod").to_version == 1  # the documented repair (docs/verify.md)
    assert w.poll() is None and dest.read_text() == "a"  # m:1 again: already deployed
    reg.set_alias("m", "prod", 2)
    change = w.poll()
    assert change is not None and change.version == 2 and dest.read_text() == "b"
