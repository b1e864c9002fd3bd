"""The ``casreg`` command, run through the real console script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("casreg")
USER = "cli-tester@example.test"


# -- helpers ---------------------------------------------------------------------------------
def make_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    e = dict(os.environ)
    e.update({
        "CASREG_REGISTRY": str(tmp / "registry"),
        "CASREG_USER": USER,
        "HOME": str(home),  # never touch the real ~/.casreg
        "GIT_CEILING_DIRECTORIES": str(tmp),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    })
    return e


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path):
    def run(*args: str, cwd: Path | None = None, **overrides: str) -> subprocess.CompletedProcess[str]:
        e = dict(env, **overrides)
        return subprocess.run([str(SCRIPT), *args], env=e, cwd=cwd or tmp_path, capture_output=True, text=True,
                              timeout=120)
    return run


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    return p


def one_line_error(p: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exactly one stderr line, 'casreg: error: ...'; non-zero exit; no traceback; no stdout."""
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("casreg: error: "), lines[0]
    assert p.stdout == ""
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def one_json_error(p: subprocess.CompletedProcess[str], *fragments: str) -> dict:
    """Under --json: exactly one stderr line, {"error": ..., "exit_code": N} with N the
    exit status (non-zero); no traceback; no stdout."""
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    doc = json.loads(lines[0])
    assert set(doc) == {"error", "exit_code"} and doc["exit_code"] == p.returncode, doc
    assert p.stdout == ""
    for frag in fragments:
        assert frag in doc["error"], (frag, doc)
    return doc


def usage_error(p: subprocess.CompletedProcess[str]) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr + p.stdout
    assert p.stderr.strip()


def listing(root: Path) -> dict[str, tuple[int, int] | str]:
    """Every path under a registry (or the file itself) with size and mtime."""
    if not root.exists():
        return {}
    if root.is_file():
        s = root.stat()
        return {".": (s.st_size, s.st_mtime_ns)}
    out: dict[str, tuple[int, int] | str] = {}
    for p in sorted(root.rglob("*")):
        s = p.lstat()
        out[p.relative_to(root).as_posix()] = "dir" if p.is_dir() else (s.st_size, s.st_mtime_ns)
    return out


def _run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Built once per module (subprocesses are slow): a model directory, a single-file
    model, and a registry holding m:1 (the directory, with metadata), m:2 (the file) and
    m@prod -> m:1. Tests get private copies."""
    root = tmp_path_factory.mktemp("cli-template")
    env = make_env(root)
    d = root / "model"
    (d / "sub").mkdir(parents=True)
    (d / "weights.bin").write_bytes(os.urandom(100_000))
    (d / "sub" / "config.json").write_text('{"n": 1}')
    (root / "single.bin").write_bytes(b"single file model")
    v1 = json.loads(ok(_run(env, root, "push", "m", str(d), "--json", "-m", "auc=0.9", "-p", "lr=0.1", "-t",
                            "team=x", "--framework", "onnx", "-d", "first one")).stdout)
    v2 = json.loads(ok(_run(env, root, "push", "m", str(root / "single.bin"), "--json")).stdout)
    ok(_run(env, root, "alias", "set", "m@prod", "1", "--reason", "go live"))
    return root, {"v1": v1, "v2": v2}


@pytest.fixture
def model(template: tuple[Path, dict], tmp_path: Path) -> Path:
    shutil.copytree(template[0] / "model", tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def pushed(template: tuple[Path, dict], model: Path, tmp_path: Path) -> dict:
    """A private copy of the template registry (see ``template``)."""
    shutil.copytree(template[0] / "registry", tmp_path / "registry")
    shutil.copy2(template[0] / "single.bin", tmp_path / "single.bin")
    return template[1]


# -- successful commands ------------------------------------------------------------------------
def test_push_json(cli, model: Path, tmp_path: Path) -> None:
    p = ok(cli("push", "mdl", str(model), "--json", "-m", "auc=0.93", "-p", "lr=0.01", "-t", "team=risk",
               "--framework", "pytorch", "-d", "desc", "--run-id", "r1", "--dataset", "ds1"))
    v = json.loads(p.stdout)
    assert v["name"] == "mdl" and v["version"] == 1
    assert v["digest"].startswith("blake3:") and len(v["digest"]) == 7 + 64
    assert v["size"] == 100_000 + len('{"n": 1}')
    assert v["stored_bytes"] > 0 and v["file_count"] == 2 and v["kind"] == "dir"
    assert v["metrics"] == {"auc": 0.93} and v["params"] == {"lr": "0.01"} and v["tags"] == {"team": "risk"}
    assert v["author"] == USER and v["framework"] == "pytorch" and v["description"] == "desc"
    assert v["lineage"]["run_id"] == "r1" and v["lineage"]["dataset"] == "ds1"
    assert (tmp_path / "registry" / "casreg.json").is_file()

    again = json.loads(ok(cli("push", "mdl", str(model), "--json", "--parent", "mdl:1", "--alias", "prod")).stdout)
    assert again["version"] == 2 and again["digest"] == v["digest"]
    assert again["stored_bytes"] == 0 and again["new_bytes"] == 0 and again["dedup_ratio"] == 1.0
    assert again["lineage"]["parent"] == v["digest"]


def test_push_human_output(cli, model: Path) -> None:
    p = ok(cli("push", "mdl", str(model), "--alias", "prod"))
    assert p.stdout.startswith("pushed mdl:1  blake3:")
    assert "mdl@prod -> mdl:1" in p.stdout
    assert p.stderr == ""


def test_resolve(cli, pushed: dict) -> None:
    v1, v2 = pushed["v1"], pushed["v2"]
    for ref, digest in (("m", v2["digest"]), ("m:1", v1["digest"]), ("m@prod", v1["digest"]),
                        (v1["digest"], v1["digest"]), (v1["digest"][7:19], v1["digest"]),
                        ("m@" + v2["digest"][:19], v2["digest"])):
        p = ok(cli("resolve", ref))
        assert p.stdout == digest + "\n", ref
        assert p.stderr == ""

    rec = json.loads(ok(cli("resolve", "m@prod", "--json")).stdout)
    assert rec["digest"] == v1["digest"] and rec["name"] == "m" and rec["version"] == 1
    assert rec["metrics"] == {"auc": 0.9} and rec["ref"] == "m@prod"
    bare = json.loads(ok(cli("resolve", v2["digest"], "--json")).stdout)
    assert bare == {"digest": v2["digest"], "kind": "file", "size": len(b"single file model"), "file_count": 1}


def test_show(cli, pushed: dict) -> None:
    s = json.loads(ok(cli("show", "m:1", "--json")).stdout)
    assert s["digest"] == pushed["v1"]["digest"] and s["aliases"] == ["prod"]
    assert sorted(f["path"] for f in s["files"]) == ["sub/config.json", "weights.bin"]
    assert s["framework"] == "onnx" and s["description"] == "first one"
    human = ok(cli("show", "m@prod")).stdout
    assert human.startswith("m:1  " + pushed["v1"]["digest"])
    assert "auc=0.9" in human and "weights.bin" in human and "m@prod" in human


def test_ls(cli, pushed: dict, tmp_path: Path) -> None:
    rows = json.loads(ok(cli("ls", "m", "--json")).stdout)
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, ["prod"]), (2, [])]
    (tmp_path / "o.bin").write_bytes(b"other")
    ok(cli("push", "other", str(tmp_path / "o.bin"), "-q"))
    latest = json.loads(ok(cli("ls", "--json")).stdout)
    assert [(r["name"], r["version"]) for r in latest] == [("m", 2), ("other", 1)]
    human = ok(cli("ls")).stdout.splitlines()
    # m:2 and other:1 have no framework or description: those columns are left out
    assert human[0].split() == ["ref", "digest", "size", "created", "author", "aliases", "stage"]
    assert [line.split()[0] for line in human[1:]] == ["m:2", "other:1"]


def test_sql_json(cli, pushed: dict) -> None:
    rows = json.loads(ok(cli("sql", "SELECT name, version, metrics['auc'] AS auc FROM versions ORDER BY version",
                             "--json")).stdout)
    assert rows == [{"name": "m", "version": 1, "auc": 0.9}, {"name": "m", "version": 2, "auc": None}]
    ev = json.loads(ok(cli("sql", "SELECT kind, author, reason FROM events WHERE kind <> 'push'", "--json")).stdout)
    assert ev == [{"kind": "alias.set", "author": USER, "reason": "go live"}]
    assert json.loads(ok(cli("sql", "SELECT * FROM aliases WHERE alias = 'nope'", "--json")).stdout) == []
    assert ok(cli("sql", "SELECT 42 AS answer")).stdout.split() == ["answer", "42"]


def test_alias_commands(cli, pushed: dict) -> None:
    ev = json.loads(ok(cli("alias", "set", "m@staging", "m:2", "--reason", "try", "--json")).stdout)
    assert ev["kind"] == "alias.set" and ev["to_version"] == 2 and ev["author"] == USER and ev["reason"] == "try"
    moved = ok(cli("alias", "set", "m@prod", "2")).stdout
    assert moved.startswith("m@prod -> m:2") and "(was m:1)" in moved
    aliases = json.loads(ok(cli("alias", "ls", "--json")).stdout)
    assert [(a["name"], a["alias"], a["version"]) for a in aliases] == [("m", "prod", 2), ("m", "staging", 2)]
    rm = json.loads(ok(cli("alias", "rm", "m@staging", "--reason", "done", "--json")).stdout)
    assert rm["kind"] == "alias.remove" and rm["from_version"] == 2 and rm["to_version"] is None
    assert [a["alias"] for a in json.loads(ok(cli("alias", "ls", "m", "--json")).stdout)] == ["prod"]
    human = ok(cli("alias", "ls")).stdout.splitlines()
    assert len(human) == 2 and human[1].split()[:2] == ["m@prod", "m:2"]
    assert ok(cli("alias", "rm", "m@prod")).stdout == "removed m@prod (was m:2)\n"
    assert json.loads(ok(cli("alias", "ls", "--json")).stdout) == []


def test_pull(cli, pushed: dict, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = json.loads(ok(cli("pull", "m@prod", str(out), "--json")).stdout)
    assert res["digest"] == pushed["v1"]["digest"] and res["dest"] == str(out) and not res["up_to_date"]
    assert (out / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
    assert (out / "sub" / "config.json").read_text() == '{"n": 1}'
    again = ok(cli("pull", "m@prod", str(out), "--force")).stdout
    assert "nothing rewritten" in again
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ok(cli("pull", "m:2", cwd=cwd))  # default destination: ./<file name>
    assert (cwd / "single.bin").read_bytes() == b"single file model"


def test_quiet_prints_nothing(cli, model: Path, tmp_path: Path) -> None:
    for args in (("push", "q", str(model), "-q"), ("push", "q", str(model), "--quiet"),
                 ("alias", "set", "q@prod", "1", "-q"), ("resolve", "q@prod", "-q"), ("ls", "-q"), ("ls", "q", "-q"),
                 ("show", "q", "-q"), ("sql", "SELECT 1", "-q"), ("pull", "q", str(tmp_path / "qout"), "-q"),
                 ("pull", "q", str(tmp_path / "qout"), "-q", "--force"), ("alias", "ls", "-q"),
                 ("alias", "rm", "q@prod", "-q")):
        p = ok(cli(*args))
        assert p.stdout == "" and p.stderr == "", args
    assert (tmp_path / "qout" / "weights.bin").is_file()
    assert [r["version"] for r in json.loads(ok(cli("ls", "q", "--json")).stdout)] == [1, 2]
    # asking for --json is asking for output: it survives --quiet (casreg_cli/output.py)
    v = json.loads(ok(cli("push", "q", str(model), "--quiet", "--json")).stdout)
    assert v["version"] == 3


def test_registry_flag_overrides_env(cli, model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-registry"
    ok(cli("push", "m", str(model), "--registry", str(other)))
    ok(cli("push", "m", str(model), "-r", str(other)))
    assert not (tmp_path / "registry").exists()
    assert [r["version"] for r in json.loads(ok(cli("ls", "m", "--json", "-r", str(other))).stdout)] == [1, 2]
    one_line_error(cli("resolve", "m"), "no versions")  # the env registry is still empty
    # the env var is honoured when no flag is given
    assert ok(cli("resolve", "m", CASREG_REGISTRY=str(other))).stdout.startswith("blake3:")


# -- bad input: one line, non-zero exit, nothing written ---------------------------------------------
@pytest.mark.parametrize("args, fragment, code", [
    (["push", "m", "{tmp}/does-not-exist"], "does not exist", 3),
    (["push", "m", "{tmp}/empty-dir"], "empty", 2),
    (["push", "my model", "{model}"], "invalid model name", 2),
    (["push", "..", "{model}"], "invalid model name", 2),
    (["push", "/abs", "{model}"], "invalid model name", 2),
    (["push", "a/b", "{model}"], "invalid model name", 2),
    (["push", "m", "{model}", "--metric", "auc=high"], "not a number", 2),
    (["push", "m", "{model}", "-m", "auc=nan"], "NaN", 2),
    (["push", "m", "{model}", "-m", "a b=1"], "invalid metric name", 2),
    (["push", "m", "{model}", "--alias", "Prod"], "invalid alias", 2),
    (["push", "m", "{model}", "--parent", "m:9"], "m:9", 3),
    (["push", "m", "{model}", "--parent", "nosuch"], "nosuch", 3),
    (["push", "m", "{model}/weights.bin/x"], "does not exist", 3),
])
def test_push_failures(cli, pushed: dict, model: Path, tmp_path: Path, args: list[str], fragment: str,
                       code: int) -> None:
    (tmp_path / "empty-dir").mkdir()
    (model / "new.bin").write_bytes(b"content that would be new")
    before = listing(tmp_path / "registry")
    argv = [a.format(tmp=tmp_path, model=model) for a in args]
    p = cli(*argv)
    one_line_error(p, fragment)
    assert p.returncode == code
    assert listing(tmp_path / "registry") == before


@pytest.mark.parametrize("args, fragment, code", [
    (["resolve", "nosuch"], "nosuch", 3),
    (["resolve", "m:7"], "m:7", 3),
    (["resolve", "m@staging"], "m@staging", 3),
    (["resolve", "blake3:0123456789ab"], "0123456789ab", 3),
    (["resolve", "blake3:" + "0" * 64], "0" * 64, 3),
    (["resolve", "m@blake3:0123456789ab"], "0123456789ab", 3),
    (["resolve", "blake3:12345"], "invalid digest", 2),
    (["resolve", "m:0"], "m:0", 2),
    (["show", "m:3"], "m:3", 3),
    (["ls", "nosuch"], "nosuch", 3),
    (["pull", "nosuch", "{tmp}/out"], "nosuch", 3),
    (["pull", "m:5", "{tmp}/out"], "m:5", 3),
    (["sql", "SELEC * FROM versions"], "SQL error", 2),
    (["sql", "SELECT nosuchcolumn FROM versions"], "SQL error", 2),
    (["alias", "set", "m@prod", "7"], "m:7", 3),
    (["alias", "set", "m@Prod", "1"], "invalid alias", 2),
    (["alias", "set", "m@prod", "other:1"], "other", 3),
    (["alias", "rm", "m@never"], "m@never", 3),
    (["resolve", "m", "--registry", "ftp://x"], "ftp://", 7),
    (["push", "m", "{model}", "--registry", "ftp://x"], "ftp://", 7),
])
def test_bad_input(cli, pushed: dict, model: Path, tmp_path: Path, args: list[str], fragment: str,
                   code: int) -> None:
    before = listing(tmp_path / "registry")
    work_before = sorted(os.listdir(tmp_path))
    argv = [a.format(tmp=tmp_path, model=model) for a in args]
    p = cli(*argv)
    one_line_error(p, fragment)
    assert p.returncode == code
    assert listing(tmp_path / "registry") == before
    assert sorted(os.listdir(tmp_path)) == work_before


def test_alias_to_version_of_another_model_is_refused(cli, pushed: dict, tmp_path: Path) -> None:
    (tmp_path / "o.bin").write_bytes(b"other")
    ok(cli("push", "other", str(tmp_path / "o.bin")))
    before = listing(tmp_path / "registry")
    p = cli("alias", "set", "m@prod", "other:1")
    one_line_error(p, "version of other")
    assert p.returncode == 2
    assert listing(tmp_path / "registry") == before
    assert ok(cli("resolve", "m@prod")).stdout == pushed["v1"]["digest"] + "\n"


@pytest.mark.parametrize("args", [
    ["push", "m", "{model}", "--metric", "auc"],  # not KEY=VALUE: a usage error
    ["push", "m"],
    ["pull"],
    ["nosuchcommand"],
    ["push", "m", "{model}", "--level", "99"],
    ["alias", "set", "m", "prod", "1"],
    ["alias", "set", "m-no-alias", "1"],
    ["resolve", "m", "--no-such-flag"],
])
def test_usage_errors(cli, pushed: dict, model: Path, tmp_path: Path, args: list[str]) -> None:
    before = listing(tmp_path / "registry")
    p = cli(*[a.format(model=model) for a in args])
    usage_error(p)
    assert p.stdout == ""
    assert listing(tmp_path / "registry") == before


def test_pull_onto_existing_destination(cli, pushed: dict, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    before = listing(dest)
    one_line_error(cli("pull", "m@prod", str(dest)), "already exists")
    assert listing(dest) == before and (dest / "mine.txt").read_text() == "keep me"
    f = tmp_path / "single.bin"
    fb = listing(f)
    p = cli("pull", "m:2", cwd=tmp_path)  # default destination ./single.bin exists
    one_line_error(p, "already exists")
    assert p.returncode == 4
    assert listing(f) == fb


def test_push_onto_a_full_disk_fails_cleanly(env: dict[str, str], pushed: dict, tmp_path: Path) -> None:
    """A real write failure while a pack is streamed to disk: the push process may not
    write files past 2 MiB (RLIMIT_FSIZE, so write(2) fails with EFBIG as on a full disk),
    and the model is 12 MiB of incompressible bytes. One line on stderr, exit 7, no new
    version, and no staged pack file left behind."""
    (tmp_path / "big.bin").write_bytes(os.urandom(12 << 20))
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20)); "
            "sys.argv = ['casreg', *sys.argv[1:]]; from casreg_cli.main import main; main()")
    before = listing(tmp_path / "registry")
    p = subprocess.run([sys.executable, "-c", code, "push", "m", "big.bin"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    one_line_error(p, "File too large")
    assert p.returncode == 7  # StorageError
    after = listing(tmp_path / "registry")
    assert {k for k in after if ".tmp-" in k} == set()
    assert not [k for k in after if k not in before and k.startswith(("ledger/versions", "manifests"))]
    assert ok(subprocess.run([str(SCRIPT), "ls", "m", "--json"], env=env, cwd=tmp_path, capture_output=True,
                             text=True)).stdout.count('"version"') == 2


def test_registry_path_that_is_a_regular_file(cli, model: Path, tmp_path: Path) -> None:
    regfile = tmp_path / "regfile"
    regfile.write_text("not a registry")
    before = listing(regfile)
    one_line_error(cli("push", "m", str(model), "--registry", str(regfile)), "not a directory")
    one_line_error(cli("resolve", "m", "--registry", str(regfile)))
    one_line_error(cli("pull", "m", str(tmp_path / "out"), "--registry", str(regfile)))
    one_line_error(cli("alias", "set", "m@prod", "1", "--registry", str(regfile)))
    assert listing(regfile) == before and regfile.read_text() == "not a registry"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["ls"], ["sql", "SELECT count(*) FROM versions"], ["alias", "ls"]])
def test_listing_a_registry_that_is_a_regular_file_fails(cli, tmp_path: Path, args: list[str]) -> None:
    regfile = tmp_path / "regfile"
    regfile.write_text("not a registry")
    one_line_error(cli(*args, "--registry", str(regfile)))


def _strict_json(text: str):
    def refuse(const: str):
        raise ValueError(f"{const} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_push_json_output_is_strict_json_even_for_infinite_metrics(cli, model: Path) -> None:
    p = cli("push", "inf", str(model), "-m", "loss=inf", "-m", "big=1e400", "--json")
    if p.returncode != 0:  # refusing infinite metrics would be fine too (as JSON: --json asked for it)
        one_json_error(p)
        return
    v = _strict_json(p.stdout)
    assert set(v["metrics"]) == {"loss", "big"}


def test_sql_out_of_range_date_is_not_a_traceback(cli, pushed: dict) -> None:
    p = cli("sql", "SELECT DATE '9999-12-31' + INTERVAL 1 DAY AS d", "--json")
    assert "Traceback" not in p.stderr
    if p.returncode != 0:
        one_json_error(p, "SQL")


def _invoke(app, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str, str]:
    try:
        outcome = repr(app(args=args, prog_name="casreg", standalone_mode=False))
    except BaseException as err:  # usage errors, Exit: compare what they would print and return
        outcome = f"{type(err).__name__} {getattr(err, 'exit_code', '')} {getattr(err, 'format_message', str)()}"
    captured = capsys.readouterr()
    return outcome, captured.out, captured.err


@pytest.mark.parametrize("tail", [["--help"], ["--no-such-flag"], ["x", "y", "z", "w", "v", "u"]],
                         ids=["help", "bad-flag", "extra-args"])
def test_each_command_behaves_the_same_without_the_rest_of_the_app(
        tail: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run() hands typer only the command argv names (casreg_cli/main.py: _narrowed); its
    help, usage errors and exit codes must equal those of the whole app, for every
    command and command group (none of these arguments gets as far as running one; the
    registry is a missing directory in case one did)."""
    from casreg_cli.main import _narrowed, app, command_names

    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "no-registry"))

    from typer.main import get_command

    names = list(command_names())
    assert sorted(names) == sorted(get_command(app).commands)  # exactly the names typer itself gives them
    assert len(names) == len(app.registered_commands) + len(app.registered_groups)  # no two share a name
    assert len(names) > 20 and "push" in names and "alias" in names
    for name in names:
        narrow = _narrowed([name, *tail])
        assert narrow is not app and len(narrow.registered_commands) + len(narrow.registered_groups) == 1
        assert _invoke(narrow, [name, *tail], capsys) == _invoke(app, [name, *tail], capsys), name
    for argv in ([], ["--help"], ["pussh", "m"], ["--version"]):
        assert _narrowed(argv) is app


# -- lazy imports -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["push", "m", "model", "-m", "auc=0.95", "--json"],
    ["sql", "SELECT name, version, created_at, metrics, [1, 2] AS l, 1.5::DECIMAL(4, 2) AS d FROM versions", "--json"],
    ["ls", "m", "--json"], ["show", "m:1", "--json"], ["log", "m", "--json"], ["diff", "m:1", "m:2", "--json"],
    ["pull", "m:1", "out"], ["verify"], ["gc", "--dry-run"],
], ids=lambda a: a[0])
def test_cli_never_loads_numpy_or_pandas(env: dict[str, str], pushed: dict, model: Path, tmp_path: Path,
                                         args: list[str]) -> None:
    """pyarrow and duckdb work without them; numpy alone cost ~0.17 s of CPU per push
    (import plus OpenBLAS threads spinning), pandas 0.3-0.5 s (casreg_cli/main.py)."""
    code = ("import atexit, sys; atexit.register(lambda: print('LOADED', sorted(m for m in ('numpy', 'pandas') "
            "if m in sys.modules))); sys.argv = ['casreg', *sys.argv[1:]]; from casreg_cli.main import main; main()")
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "LOADED []"


@pytest.mark.parametrize("ref", ["m@prod", "m", "m:1", "m:2"])
def test_resolve_does_not_import_heavy_modules(env: dict[str, str], pushed: dict, tmp_path: Path, ref: str) -> None:
    code = (f"import sys; from casreg_cli.main import run; rc = run(['resolve', {ref!r}]); "
            "print(rc, sorted(m for m in ('duckdb', 'pyarrow', 's3fs') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("blake3:")
    assert lines[-1] == "0 []"
