"""casreg.Registry API behaviour: numbering, references, metadata, lineage, SQL views,
aliases, listing and pulling. Every test runs on a local and on a memory:// registry."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casreg import (
    AlreadyExistsError,
    AmbiguousReferenceError,
    CasregError,
    InvalidInputError,
    InvalidNameError,
    InvalidReferenceError,
    Registry,
    UnknownReferenceError,
)
from casreg.ledger.segments import commit_version

AUTHOR = "alice@example.test"


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _author(author: Callable[[str], None]) -> None:
    author(AUTHOR)


@pytest.fixture
def reg(registry: Registry) -> Registry:
    """A fresh registry on every backend of ``conftest.BACKENDS``."""
    return registry

def write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def make_tree(root: Path) -> Path:
    write(root / "weights.bin", os.urandom(200_000))
    write(root / "config.json", '{"a": 1}')
    write(root / "bin" / "serve.sh", "#!/bin/sh\n", 0o755)
    (root / "empty").mkdir()
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    if root.is_file():
        st_ = root.stat()
        return {".": ("file", root.read_bytes(), bool(st_.st_mode & 0o100))}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[Path(dirpath, d).relative_to(root).as_posix()] = ("dir",)
        for f in files:
            p = Path(dirpath, f)
            out[p.relative_to(root).as_posix()] = ("file", p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


def stats(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, mode) of every path under root (and root itself)."""
    out = {".": (root.stat().st_ino, root.stat().st_mtime_ns, root.stat().st_mode)}
    for p in root.rglob("*"):
        s = p.lstat()
        out[p.relative_to(root).as_posix()] = (s.st_ino, s.st_mtime_ns, s.st_mode)
    return out


def store_listing(reg: Registry) -> dict[str, bytes]:
    return {k: reg.store.read(k) for k in reg.store.list("")}


# -- version numbering ---------------------------------------------------------------------
def test_version_numbers_per_name_are_independent(reg: Registry, tmp_path: Path) -> None:
    f = write(tmp_path / "m.bin", b"v")
    got = []
    for i, name in enumerate(["a", "b", "a", "a", "b", "c", "a"]):
        write(f, f"content {i}")
        got.append((name, reg.push(name, f).version))
    assert got == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("c", 1), ("a", 4)]
    assert [v.version for v in reg.ls("a")] == [1, 2, 3, 4]
    assert [v.version for v in reg.ls("b")] == [1, 2]
    assert [(v.name, v.version) for v in reg.ls()] == [("a", 4), ("b", 2), ("c", 1)]


def test_ls_without_name_gives_latest_of_each_model(reg: Registry, tmp_path: Path) -> None:
    assert reg.ls() == []
    f = write(tmp_path / "x", "1")
    reg.push("zeta", f)
    write(f, "2")
    v = reg.push("alpha", f)
    write(f, "3")
    v2 = reg.push("alpha", f)
    latest = reg.ls()
    assert [(x.name, x.version) for x in latest] == [("alpha", 2), ("zeta", 1)]
    assert latest[0].digest == v2.digest != v.digest
    with pytest.raises(UnknownReferenceError):
        reg.ls("nothing-here")


# -- references ------------------------------------------------------------------------------
@pytest.fixture
def three(reg: Registry, tmp_path: Path):
    f = tmp_path / "model.bin"
    versions = []
    for i in range(3):
        write(f, f"model contents {i}" * 100)
        versions.append(reg.push("m", f))
    write(f, "other model")
    other = reg.push("other", f)
    reg.set_alias("m", "prod", 2)
    return versions, other


def test_resolve_every_reference_form(reg: Registry, three) -> None:
    (v1, v2, v3), other = three
    assert [v.version for v in (v1, v2, v3)] == [1, 2, 3]
    assert len({v1.digest, v2.digest, v3.digest, other.digest}) == 4
    hex2 = v2.digest.removeprefix("blake3:")

    def check(ref: str, digest: str, name: str | None, version: int | None) -> None:
        r = reg.resolve(ref)
        assert (r.digest, r.name, r.version) == (digest, name, version), ref

    check("m", v3.digest, "m", 3)
    check("m:1", v1.digest, "m", 1)
    check("m:2", v2.digest, "m", 2)
    check("m@prod", v2.digest, "m", 2)
    check(v2.digest, v2.digest, None, None)
    check(hex2, v2.digest, None, None)
    check("blake3:" + hex2[:12], v2.digest, None, None)
    check(hex2[:12], v2.digest, None, None)
    check(hex2[:12].upper(), v2.digest, None, None)
    check("m@" + v2.digest, v2.digest, "m", 2)
    check("m@blake3:" + hex2[:12], v2.digest, "m", 2)
    check("other", other.digest, "other", 1)
    assert reg.resolve("m").hexdigest == v3.digest.removeprefix("blake3:")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=12, max_value=64), prefixed=st.booleans(), upper=st.booleans())
def test_any_prefix_of_12_to_64_hex_resolves(reg: Registry, three, n: int, prefixed: bool, upper: bool) -> None:
    (_, v2, _), _ = three
    hexd = v2.digest.removeprefix("blake3:")[:n]
    hexd = hexd.upper() if upper else hexd
    ref = ("blake3:" + hexd) if prefixed else hexd
    assert reg.resolve(ref).digest == v2.digest
    assert reg.resolve("m@blake3:" + hexd).version == 2


def test_digest_references_outside_the_grammar_are_rejected(reg: Registry, three) -> None:
    (_, v2, _), _ = three
    hexd = v2.digest.removeprefix("blake3:")
    for bad in ("blake3:" + hexd[:11], "blake3:" + hexd + "0", "blake3:" + hexd[:11] + "g", "m@blake3:" + hexd[:11],
                "blake3:"):
        with pytest.raises(InvalidReferenceError):
            reg.resolve(bad)
    # 11 bare hex digits read as a model name, which does not exist
    with pytest.raises(UnknownReferenceError):
        reg.resolve(hexd[:11])


def test_unknown_references(reg: Registry, three) -> None:
    (v1, _, _), other = three
    hexd = v1.digest.removeprefix("blake3:")
    made_up = "0" * 12 if not hexd.startswith("0" * 12) else "f" * 12
    for ref in ("nosuch", "m:4", "nosuch:1", "m@staging", made_up, "blake3:" + made_up, "blake3:" + "e" * 64,
                "m@blake3:" + made_up, "m@" + other.digest, "other@blake3:" + hexd[:12]):
        with pytest.raises(UnknownReferenceError):
            reg.resolve(ref)
    with pytest.raises(FileNotFoundError):  # also the builtin a caller would naturally catch
        reg.resolve("m:99")


def test_ambiguous_digest_prefix(reg: Registry, three) -> None:
    """Two stored manifests sharing 12 hex digits (planted through the store: a real
    collision cannot be produced) make the 12-digit prefix ambiguous; more digits are not."""
    prefix = "abcdef012345"
    a, b = prefix + "0" * 52, prefix + "1" * 52
    for d in (a, b):
        assert reg.store.create(f"manifests/{d[:2]}/{d}.manifest", b"planted")
    for ref in (prefix, "blake3:" + prefix, prefix.upper()):
        with pytest.raises(AmbiguousReferenceError, match=prefix):
            reg.resolve(ref)
    with pytest.raises(LookupError):
        reg.resolve(prefix)
    assert reg.resolve(prefix + "0").digest == "blake3:" + a
    assert reg.resolve(prefix + "1").digest == "blake3:" + b
    assert reg.resolve("blake3:" + a).digest == "blake3:" + a


def test_ambiguous_prefix_within_a_model(reg: Registry, three) -> None:
    """NAME@blake3:<prefix> must match one digest among NAME's versions (it once silently
    returned the oldest match)."""
    (v1, _, _), _ = three
    prefix = "abcdef012345"
    for tail in ("0" * 52, "1" * 52):  # two ledger records whose digests share 12 hex digits (planted)
        commit_version(reg.store, dataclasses.replace(v1, digest=f"blake3:{prefix}{tail}"), [])
    with pytest.raises(AmbiguousReferenceError, match="more digits"):
        reg.resolve("m@blake3:" + prefix)
    assert reg.resolve("m@blake3:" + prefix + "1").version == 5
    assert reg.resolve("m@blake3:" + prefix + "0").version == 4


def test_name_at_digest_of_content_pushed_twice(reg: Registry, three, tmp_path: Path) -> None:
    """The same content pushed as m:1 and m:4 is not ambiguous: NAME@digest gives its newest version."""
    (v1, _, _), _ = three
    f = write(tmp_path / "model.bin", "model contents 0" * 100)
    v4 = reg.push("m", f)
    assert (v4.version, v4.digest) == (4, v1.digest)
    for ref in ("m@" + v1.digest, "m@" + v1.digest[:19]):
        r = reg.resolve(ref)
        assert (r.name, r.version, r.digest) == ("m", 4, v1.digest)


# -- metadata and lineage ----------------------------------------------------------------------
def test_metadata_is_recorded(reg: Registry, tmp_path: Path, three) -> None:
    (v1, _, _), _ = three
    f = write(tmp_path / "child.bin", "child")
    v = reg.push("m", f, metrics={"auc": 0.91, "loss": "0.25", "steps": 1000}, params={"lr": 0.001, "opt": "adam"},
                 tags={"team": "risk"}, framework="onnx", description="retrained on May data", parent="m:1",
                 run_id="run-42", dataset="s3://bucket/data@v7")
    for got in (v, reg.show("m:4"), reg.show("m"), reg.ls("m")[-1]):
        assert got.version == 4
        assert got.metrics == {"auc": 0.91, "loss": 0.25, "steps": 1000.0}
        assert got.params == {"lr": "0.001", "opt": "adam"}
        assert got.tags == {"team": "risk"}
        assert (got.framework, got.description) == ("onnx", "retrained on May data")
        assert got.author == AUTHOR
        assert got.lineage.parent == v1.digest
        assert (got.lineage.run_id, got.lineage.dataset) == ("run-42", "s3://bucket/data@v7")
        assert got.lineage.git_commit is None and got.lineage.git_dirty is None
        assert got.lineage.casreg_version and got.lineage.python_version and got.lineage.hostname
    bare = reg.show(v.digest)  # a bare digest shows the newest version holding it
    assert (bare.name, bare.version) == ("m", 4)


@pytest.mark.parametrize("kwargs, exc", [
    ({"metrics": {"auc": "high"}}, InvalidInputError),
    ({"metrics": {"auc": float("nan")}}, InvalidInputError),
    ({"metrics": {"a b": 1}}, InvalidInputError),
    ({"metrics": {"": 1}}, InvalidInputError),
    ({"params": {"has space": 1}}, InvalidInputError),
    ({"tags": {"x" * 129: 1}}, InvalidInputError),
    ({"alias": "Prod"}, InvalidNameError),
    ({"alias": "latest"}, InvalidNameError),
    ({"parent": "m:99"}, UnknownReferenceError),
    ({"parent": "no such"}, InvalidReferenceError),
])
def test_bad_push_arguments_write_nothing(reg: Registry, tmp_path: Path, three, kwargs, exc) -> None:
    before = store_listing(reg)
    f = write(tmp_path / "new.bin", "new content that was never stored")
    with pytest.raises(exc):
        reg.push("m", f, **kwargs)
    assert store_listing(reg) == before


@pytest.mark.parametrize("name", ["my model", "..", "a..b", "/abs", "", "a/b", "-dash", "x" * 129, "abcdef0123456",
                                  "m:1", "m@x", "ü"])
def test_invalid_names_are_refused(reg: Registry, tmp_path: Path, name: str) -> None:
    f = write(tmp_path / "f", "x")
    with pytest.raises(InvalidNameError):
        reg.push(name, f)
    assert list(reg.store.list("")) == []


def test_metric_name_length_boundary(reg: Registry, tmp_path: Path) -> None:
    f = write(tmp_path / "f", "x")
    assert reg.push("m", f, metrics={"k" * 128: 1}).metrics == {"k" * 128: 1.0}
    with pytest.raises(InvalidInputError):
        reg.push("m", f, metrics={"k" * 129: 1})


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.test", "-c", "user.name=T",
                           "-c", "commit.gpgsign=false", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_and_dirty_flag(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    _git(repo, "init", "-q")
    make_tree(repo / "model")
    write(repo / "train.py", "print('train')\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40

    clean_dir = reg.push("g", repo / "model")
    clean_file = reg.push("gf", repo / "model" / "weights.bin")
    for v in (clean_dir, clean_file, reg.show("g:1")):
        assert v.lineage.git_commit == head
        assert v.lineage.git_dirty is False

    write(repo / "train.py", "print('changed')\n")  # modify a tracked file
    dirty = reg.push("g", repo / "model")
    assert dirty.digest == clean_dir.digest  # the model itself did not change
    assert (dirty.lineage.git_commit, dirty.lineage.git_dirty) == (head, True)
    rows = reg.sql("SELECT version, lineage.git_commit AS c, lineage.git_dirty AS d FROM versions "
                   "WHERE name = 'g' ORDER BY version")
    assert rows == [{"version": 1, "c": head, "d": False}, {"version": 2, "c": head, "d": True}]

    outside = reg.push("nogit", make_tree(tmp_path / "plain"))
    assert (outside.lineage.git_commit, outside.lineage.git_dirty) == (None, None)


# -- SQL views ------------------------------------------------------------------------------------
def test_sql_versions_and_metrics(reg: Registry, tmp_path: Path) -> None:
    f = tmp_path / "f"
    for i, auc in enumerate([0.7, 0.9, 0.8]):
        write(f, f"c{i}")
        reg.push("clf", f, metrics={"auc": auc}, tags={"i": i})
    write(f, "no metrics")
    reg.push("clf", f)
    rows = reg.sql("SELECT version, metrics['auc'] AS auc, tags['i'] AS i FROM versions ORDER BY version")
    assert rows == [{"version": 1, "auc": 0.7, "i": "0"}, {"version": 2, "auc": 0.9, "i": "1"},
                    {"version": 3, "auc": 0.8, "i": "2"}, {"version": 4, "auc": None, "i": None}]
    best = reg.sql("SELECT name, version FROM versions ORDER BY metrics['auc'] DESC NULLS LAST LIMIT 1")
    assert best == [{"name": "clf", "version": 2}]
    assert reg.sql("SELECT count(*) AS n FROM versions WHERE author = 'alice@example.test'") == [{"n": 4}]


def test_sql_files_one_row_per_file(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "m"
    data = {"a.bin": os.urandom(5000), "sub/b.txt": b"bee", "sub/deep/c": b""}
    for rel, b in data.items():
        write(src / rel, b)
    v = reg.push("files", src)
    write(tmp_path / "single.bin", b"one")
    reg.push("single", tmp_path / "single.bin")
    rows = reg.sql("SELECT path, type, size, digest, version_digest FROM files WHERE name = 'files' ORDER BY path")
    assert rows == [{"path": p, "type": "f", "size": len(b), "digest": blake3(b).hexdigest(),
                     "version_digest": v.digest} for p, b in sorted(data.items())]
    assert reg.sql("SELECT name, path FROM files WHERE name = 'single'") == [{"name": "single", "path": "single.bin"}]
    assert reg.sql("SELECT count(*) AS n FROM files") == [{"n": 4}]


def test_sql_events_and_aliases(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "f", "1")
    v1 = reg.push("svc", f, description="first")
    write(f, "2")
    v2 = reg.push("svc", f)
    reg.set_alias("svc", "prod", 1, reason="initial rollout")
    monkeypatch.setenv("CASREG_USER", "bob@example.test")
    ev = reg.set_alias("svc", "prod", "svc:2", reason="better auc")
    assert (ev.kind, ev.from_version, ev.to_version, ev.from_digest, ev.to_digest) == \
        ("alias.set", 1, 2, v1.digest, v2.digest)
    reg.set_alias("svc", "staging", v2.digest)
    reg.set_alias("svc", "canary", 1)
    rm = reg.remove_alias("svc", "canary", reason="done")
    assert (rm.kind, rm.from_version, rm.to_version, rm.to_digest) == ("alias.remove", 1, None, None)

    events = reg.sql("SELECT kind, alias, from_version, to_version, to_digest, author, reason FROM events "
                     "ORDER BY time, kind")
    assert events == [
        {"kind": "push", "alias": None, "from_version": None, "to_version": 1, "to_digest": v1.digest,
         "author": AUTHOR, "reason": "first"},
        {"kind": "push", "alias": None, "from_version": None, "to_version": 2, "to_digest": v2.digest,
         "author": AUTHOR, "reason": None},
        {"kind": "alias.set", "alias": "prod", "from_version": None, "to_version": 1, "to_digest": v1.digest,
         "author": AUTHOR, "reason": "initial rollout"},
        {"kind": "alias.set", "alias": "prod", "from_version": 1, "to_version": 2, "to_digest": v2.digest,
         "author": "bob@example.test", "reason": "better auc"},
        {"kind": "alias.set", "alias": "staging", "from_version": None, "to_version": 2, "to_digest": v2.digest,
         "author": "bob@example.test", "reason": None},
        {"kind": "alias.set", "alias": "canary", "from_version": None, "to_version": 1, "to_digest": v1.digest,
         "author": "bob@example.test", "reason": None},
        {"kind": "alias.remove", "alias": "canary", "from_version": 1, "to_version": None, "to_digest": None,
         "author": "bob@example.test", "reason": "done"},
    ]
    aliases = reg.sql("SELECT name, alias, version, digest, author, reason FROM aliases ORDER BY alias")
    assert aliases == [
        {"name": "svc", "alias": "prod", "version": 2, "digest": v2.digest, "author": "bob@example.test",
         "reason": "better auc"},
        {"name": "svc", "alias": "staging", "version": 2, "digest": v2.digest, "author": "bob@example.test",
         "reason": None},
    ]
    assert [(p.alias, p.version) for p in reg.aliases("svc")] == [("prod", 2), ("staging", 2)]
    assert [(p.name, p.alias) for p in reg.aliases()] == [("svc", "prod"), ("svc", "staging")]


def test_sql_errors_are_invalid_input(reg: Registry, tmp_path: Path) -> None:
    reg.push("m", write(tmp_path / "f", "x"))
    for bad in ("SELEC 1", "SELECT nope FROM versions", "SELECT * FROM no_such_table"):
        with pytest.raises(InvalidInputError, match="^SQL error: "):
            reg.sql(bad)


@pytest.mark.parametrize("query", ["SELECT DATE '9999-12-31' + INTERVAL 1 DAY AS d", "SELECT 'infinity'::DATE AS d",
                                   "SELECT 'infinity'::TIMESTAMP AS d"])
def test_sql_values_outside_python_datetime_range(reg: Registry, tmp_path: Path, query: str) -> None:
    reg.push("m", write(tmp_path / "f", "x"))
    try:
        rows = reg.sql(query)
    except InvalidInputError:
        return
    assert len(rows) == 1 and list(rows[0]) == ["d"]


def test_sql_integer_sums_stay_integers(reg: Registry, tmp_path: Path) -> None:
    f = tmp_path / "f"
    for i in range(3):
        write(f, "x" * (i + 1))
        reg.push("m", f)
    [row] = reg.sql("SELECT sum(size) AS total, sum(file_count) AS files, count(*) AS n FROM versions")
    assert row == {"total": 6, "files": 3, "n": 3}
    assert all(type(v) is int for v in row.values()), row


# -- aliases -----------------------------------------------------------------------------------------
def test_alias_targets_and_refusals(reg: Registry, three) -> None:
    (v1, v2, v3), other = three
    assert reg.resolve("m@prod").version == 2
    reg.set_alias("m", "prod", "3")
    assert reg.resolve("m@prod").digest == v3.digest
    reg.set_alias("m", "prod", v1.digest.removeprefix("blake3:")[:12])  # a bare digest prefix of a version of m
    assert reg.resolve("m@prod").version == 1
    reg.set_alias("m", "stable", "m@prod")
    assert reg.resolve("m@stable").version == 1

    pointers = {(p.name, p.alias, p.version) for p in reg.aliases()}
    for ref in ("other:1", "other", other.digest, "other@blake3:" + other.digest[7:19]):
        with pytest.raises(CasregError):
            reg.set_alias("m", "prod", ref)
    with pytest.raises(InvalidInputError, match="other"):
        reg.set_alias("m", "prod", "other:1")
    assert {(p.name, p.alias, p.version) for p in reg.aliases()} == pointers
    assert reg.resolve("m@prod").version == 1

    with pytest.raises(UnknownReferenceError):
        reg.set_alias("m", "prod", 7)
    with pytest.raises(InvalidNameError):
        reg.set_alias("m", "Bad Alias", 1)
    with pytest.raises(UnknownReferenceError):
        reg.remove_alias("m", "never-set")
    reg.remove_alias("m", "stable")
    with pytest.raises(UnknownReferenceError):
        reg.remove_alias("m", "stable")  # already removed
    with pytest.raises(UnknownReferenceError):
        reg.resolve("m@stable")
    assert [p.alias for p in reg.aliases("m")] == ["prod"]
    reg.set_alias("m", "stable", 2)  # can be set again after removal
    assert reg.resolve("m@stable").version == 2


def test_push_with_alias(reg: Registry, tmp_path: Path) -> None:
    v = reg.push("m", write(tmp_path / "f", "x"), alias="champion")
    r = reg.resolve("m@champion")
    assert (r.digest, r.version) == (v.digest, 1)


# -- pull ------------------------------------------------------------------------------------------------
def test_pull_default_destination(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "src" / "model.onnx", "onnx bytes")
    vf = reg.push("filemodel", tmp_path / "src" / "model.onnx")
    vd = reg.push("dirmodel", make_tree(tmp_path / "tree"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    rf = reg.pull("filemodel")
    assert rf.dest == str(cwd / "model.onnx")
    assert (cwd / "model.onnx").read_bytes() == b"onnx bytes"
    rd = reg.pull("dirmodel:1")
    assert rd.dest == str(cwd / "dirmodel")
    assert snapshot(cwd / "dirmodel") == snapshot(tmp_path / "tree")
    rb = reg.pull(vd.digest)  # a bare digest has no name: the short digest names the directory
    assert rb.dest == str(cwd / vd.digest[7:19])
    assert sorted(os.listdir(cwd)) == sorted(["model.onnx", "dirmodel", vd.digest[7:19]])
    assert (rf.name, rf.version, rf.digest) == ("filemodel", 1, vf.digest)


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_pull_force_onto_a_correct_copy_rewrites_nothing(reg: Registry, tmp_path: Path, kind: str) -> None:
    src = make_tree(tmp_path / "src") if kind == "dir" else write(tmp_path / "w.bin", os.urandom(10_000), 0o755)
    v = reg.push("m", src)
    dest = tmp_path / "dest"
    first = reg.pull("m", dest)
    assert not first.up_to_date
    before = stats(dest)
    again = reg.pull("m", dest, force=True)
    assert again.up_to_date
    assert again.fetched_bytes == 0
    assert (again.digest, again.size) == (v.digest, v.size)
    assert stats(dest) == before
    assert snapshot(dest) == snapshot(src)


def _mutate_change_byte(d: Path) -> None:
    p = d / "weights.bin"
    b = bytearray(p.read_bytes())
    b[1234] ^= 0x40
    p.write_bytes(bytes(b))


def _mutate_extra_file(d: Path) -> None:
    write(d / "bin" / "extra.txt", "not part of the version")


def _mutate_missing_file(d: Path) -> None:
    (d / "config.json").unlink()


def _mutate_extra_empty_dir(d: Path) -> None:
    (d / "bin" / "new-empty").mkdir()


def _mutate_missing_empty_dir(d: Path) -> None:
    (d / "empty").rmdir()


def _mutate_exec_bit(d: Path) -> None:
    (d / "bin" / "serve.sh").chmod(0o644)


def _mutate_file_for_dir(d: Path) -> None:
    (d / "empty").rmdir()
    write(d / "empty", "now a file")


def _mutate_truncate(d: Path) -> None:
    with open(d / "weights.bin", "r+b") as fh:
        fh.truncate(100)


@pytest.mark.parametrize("mutate", [_mutate_change_byte, _mutate_extra_file, _mutate_missing_file,
                                    _mutate_extra_empty_dir, _mutate_missing_empty_dir, _mutate_exec_bit,
                                    _mutate_file_for_dir, _mutate_truncate])
def test_pull_force_restores_a_modified_copy(reg: Registry, tmp_path: Path, mutate) -> None:
    src = make_tree(tmp_path / "src")
    reg.push("m", src)
    dest = tmp_path / "work" / "dest"
    reg.pull("m", dest)
    mutate(dest)
    assert snapshot(dest) != snapshot(src)
    res = reg.pull("m", dest, force=True)
    assert not res.up_to_date
    assert snapshot(dest) == snapshot(src)
    assert sorted(os.listdir(dest.parent)) == ["dest"]  # no .tmp / .old trees left


def test_pull_force_file_version_onto_modified_file(reg: Registry, tmp_path: Path) -> None:
    src = write(tmp_path / "w.bin", os.urandom(50_000))
    reg.push("m", src)
    dest = tmp_path / "out" / "w.bin"
    reg.pull("m", dest)
    write(dest, b"garbage")
    assert not reg.pull("m", dest, force=True).up_to_date
    assert dest.read_bytes() == src.read_bytes()
    dest.unlink()
    dest.mkdir()  # a directory where the file should be
    write(dest / "inner", "x")
    reg.pull("m", dest, force=True)
    assert dest.is_file() and dest.read_bytes() == src.read_bytes()
    assert os.listdir(dest.parent) == ["w.bin"]


@pytest.mark.parametrize("existing", ["dir", "file", "empty-dir"])
def test_pull_onto_existing_destination_without_force(reg: Registry, tmp_path: Path, existing: str) -> None:
    reg.push("m", make_tree(tmp_path / "src"))
    dest = tmp_path / "work" / "dest"
    if existing == "dir":
        write(dest / "keep.txt", "mine")
    elif existing == "file":
        write(dest, "mine")
    else:
        dest.mkdir(parents=True)
    before_snap, before_stats = snapshot(dest), stats(dest)
    with pytest.raises(AlreadyExistsError, match="already exists"):
        reg.pull("m", dest)
    with pytest.raises(FileExistsError):
        reg.pull("m:1", dest)
    assert snapshot(dest) == before_snap
    assert stats(dest) == before_stats
    assert os.listdir(dest.parent) == ["dest"]


def test_pull_unknown_reference_creates_nothing(reg: Registry, tmp_path: Path) -> None:
    reg.push("m", write(tmp_path / "f", "x"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnknownReferenceError):
        reg.pull("m:2", work / "dest")
    assert os.listdir(work) == []


def test_files_lists_entries(reg: Registry, tmp_path: Path) -> None:
    v = reg.push("m", make_tree(tmp_path / "src"))
    files = {f.path: (f.type, f.size) for f in reg.files(v.ref)}
    assert files == {"weights.bin": ("f", 200_000), "config.json": ("f", 8), "bin/serve.sh": ("x", 10),
                     "empty": ("d", 0)}
    assert reg.files(v.digest) == reg.files("m")


def test_lost_ledger_sidecar_is_restored_from_parquet(reg: Registry, tmp_path: Path) -> None:
    """Format 1 (older registries) keeps a JSON copy of each record for resolving."""
    from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
    from casreg.content.config import init_config

    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/1")
    v = reg.push("m", write(tmp_path / "f", "x"), metrics={"auc": 0.5}, params={"p": 1}, tags={"t": "x"},
                 framework="fw", description="d", run_id="r", dataset="ds")
    key = "refs/m/0000000001.json"
    assert reg.store.exists(key)
    reg.store.delete(key)
    assert reg.show("m:1") == v
    assert reg.resolve("m").digest == v.digest
    assert reg.store.exists(key)  # restored


def test_format_2_resolves_from_the_segment_alone(reg: Registry, tmp_path: Path) -> None:
    """A format-2 registry writes no JSON copy: the segment's footer carries the record."""
    v = reg.push("m", write(tmp_path / "f", "x"), metrics={"auc": 0.5}, params={"p": 1}, tags={"t": "x"},
                 framework="fw", description="d", run_id="r", dataset="ds")
    assert not list(reg.store.list("refs"))
    assert reg.show("m:1") == v == reg.ls("m")[0]
    assert reg.resolve("m").digest == v.digest


# -- what push accepts ---------------------------------------------------------------------------------
def test_symlinks_in_the_source_are_followed(reg: Registry, tmp_path: Path) -> None:
    outside = tmp_path / "blobs"
    write(outside / "blob", b"weights via symlink")
    write(outside / "dir" / "inner.txt", "inner")
    src = tmp_path / "snapshot"
    src.mkdir()
    (src / "model.bin").symlink_to(outside / "blob")
    (src / "linked-dir").symlink_to(outside / "dir")
    write(src / "plain.txt", "plain")
    v = reg.push("hf", src)
    assert {f.path: f.type for f in reg.files(v.ref)} == {"model.bin": "f", "linked-dir/inner.txt": "f",
                                                           "plain.txt": "f"}
    dest = tmp_path / "pulled"
    reg.pull(v.ref, dest)
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert (dest / "model.bin").read_bytes() == b"weights via symlink"
    assert (dest / "linked-dir" / "inner.txt").read_text() == "inner"


def _dangling(src: Path) -> None:
    (src / "gone").symlink_to(src / "does-not-exist")


def _cycle(src: Path) -> None:
    (src / "sub").mkdir()
    (src / "sub" / "loop").symlink_to(src)


def _fifo(src: Path) -> None:
    os.mkfifo(src / "pipe")


def _not_utf8(src: Path) -> None:
    fd = os.open(os.fsencode(src) + b"/bad-\xff-name", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)


def _control_char(src: Path) -> None:
    write(src / "line\nbreak", "x")


def _backslash(src: Path) -> None:
    write(src / "back\\slash", "x")


@pytest.mark.parametrize("spoil", [_dangling, _cycle, _fifo, _not_utf8, _control_char, _backslash])
def test_unpushable_sources_are_refused_and_write_nothing(reg: Registry, tmp_path: Path, spoil) -> None:
    reg.push("m", write(tmp_path / "first.bin", "first"))
    before = store_listing(reg)
    src = tmp_path / "src"
    write(src / "ok.bin", "fine")
    spoil(src)
    with pytest.raises(InvalidInputError, match="cannot push"):
        reg.push("m", src)
    assert store_listing(reg) == before


def test_dangling_symlink_as_the_path(reg: Registry, tmp_path: Path) -> None:
    link = tmp_path / "model.bin"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="dangling"):
        reg.push("m", link)
    with pytest.raises(FileNotFoundError):
        reg.push("m", tmp_path / "nothing-here")
    empty = tmp_path / "empty"
    (empty / "only" / "dirs").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="no files"):
        reg.push("m", empty)
    assert list(reg.store.list("")) == []


@pytest.mark.parametrize("threads, level", [(1, 1), (1, 19), (4, 3)])
def test_threads_and_level_do_not_change_the_digest(reg: Registry, tmp_path: Path, threads: int,
                                                    level: int) -> None:
    src = make_tree(tmp_path / "src")
    write(src / "text.txt", "".join(f"row {i}\n" for i in range(100_000)))
    base = reg.push("m", src)
    other = Registry(reg.url, threads=threads, zstd_level=level)
    fresh = Registry(tmp_path / f"fresh-{threads}-{level}", threads=threads, zstd_level=level)
    v = fresh.push("m", src)
    assert v.digest == base.digest == other.push("m", src).digest
    dest = tmp_path / "dest"
    fresh.pull("m", dest)
    assert snapshot(dest) == snapshot(src)


# -- pull destinations ----------------------------------------------------------------------------------
def test_pull_under_a_file_is_refused(reg: Registry, tmp_path: Path) -> None:
    reg.push("m", make_tree(tmp_path / "src"))
    work = tmp_path / "work"
    write(work / "a-file", "x")
    before = snapshot(work)
    for dest in (work / "a-file" / "dest", work / "a-file" / "deeper" / "dest"):
        with pytest.raises(InvalidInputError, match="not a directory"):
            reg.pull("m", dest)
    assert snapshot(work) == before


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_pull_force_onto_a_symlink_replaces_the_link_not_its_target(reg: Registry, tmp_path: Path,
                                                                   kind: str) -> None:
    src = make_tree(tmp_path / "src") if kind == "dir" else write(tmp_path / "w.bin", os.urandom(5000))
    reg.push("m", src)
    target = tmp_path / "precious"
    if kind == "dir":
        write(target / "keep.txt", "keep")
    else:
        write(target, "keep")
    before = snapshot(target)
    dest = tmp_path / "dest"
    dest.symlink_to(target)
    with pytest.raises(AlreadyExistsError):
        reg.pull("m", dest)
    assert dest.is_symlink()
    res = reg.pull("m", dest, force=True)
    assert not res.up_to_date
    assert not dest.is_symlink()
    assert snapshot(dest) == snapshot(src)
    assert snapshot(target) == before

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(AlreadyExistsError):
        reg.pull("m", dangling)
    reg.pull("m", dangling, force=True)
    assert not dangling.is_symlink() and snapshot(dangling) == snapshot(src)
    assert not (tmp_path / "nowhere").exists()


def test_metadata_beyond_what_readers_accept_is_refused_before_storing(reg: Registry, tmp_path: Path) -> None:
    """Readers hold a record to MAX_TEXT per field and MAX_RECORD_BYTES in all (a larger
    one reads as damaged); push refuses such metadata before it stores a byte."""
    from casreg.records import MAX_RECORD_BYTES, MAX_TEXT

    f = write(tmp_path / "f", "x" * 1000)
    with pytest.raises(InvalidInputError, match="description is 65,537 characters long"):
        reg.push("m", f, description="d" * (MAX_TEXT + 1))
    with pytest.raises(InvalidInputError, match="param p is"):
        reg.push("m", f, params={"p": "v" * (MAX_TEXT + 1)})
    many = {f"p{i}": "é" * 100 for i in range(MAX_RECORD_BYTES // 200 + 1)}
    with pytest.raises(InvalidInputError, match="metadata takes .* bytes as JSON"):
        reg.push("m", f, params=many)
    assert list(reg.store.list("")) == []
    near = {f"p{i}": "é" * 100 for i in range(MAX_RECORD_BYTES // 250)}  # just under: stored and read back
    v = reg.push("m", f, params=near, description="ü" * MAX_TEXT)
    assert reg.show("m:1") == v == reg.ls("m")[0]
    assert reg.verify().ok
