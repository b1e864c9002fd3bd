"""The conventions people expect of a command line (issue 13): global options before or
after the command, a trailing ``/`` meaning a directory, strict stages, one unit system,
``--version`` from the package metadata, errors as JSON under ``--json``, completion,
help with examples. Most tests call :func:`casreg_cli.main.run` in the process (fast);
those about the installed console script run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casreg_cli.main import run

SCRIPT = Path(sys.executable).with_name("casreg")
USER = "conventions@example.test"


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty registry directory named by CASREG_REGISTRY; HOME is private."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("CASREG_USER", USER)
    monkeypatch.setenv("CASREG_HOOKS", "off")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "registry"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 0, (args, code, out, err)
    return out


def one_line_error(result: tuple[int, str, str], *fragments: str) -> str:
    code, out, err = result
    assert code != 0 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("casreg: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def push(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: bytes, *extra: str) -> dict:
    f = tmp_path / f"{name}-{len(content)}.bin"
    f.write_bytes(content)
    return json.loads(ok(capsys, "push", name, str(f), "--json", *extra))


# -- 1. global options before or after the command ---------------------------------------------------
def test_global_options_before_the_command(reg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    assert ok(capsys, "--registry", str(other), "push", "m", str(f)).startswith("pushed m:1")
    assert ok(capsys, "-r", str(other), "-q", "push", "m", str(f)) == ""
    assert not reg.exists()  # the flag before the command named the registry, not CASREG_REGISTRY
    rows = json.loads(ok(capsys, "--json", "--registry", str(other), "ls", "m"))
    assert [r["version"] for r in rows] == [1, 2]
    assert json.loads(ok(capsys, "-r", str(other), "ls", "m", "--json")) == rows
    # after the command beats before it, which beats the environment
    assert json.loads(ok(capsys, "-r", str(other), "ls", "--json", "-r", str(tmp_path / "empty"))) == []
    assert ok(capsys, "--quiet", "-r", str(other), "alias", "set", "m@prod", "1") == ""
    assert ok(capsys, "-r", str(other), "alias", "ls", "m").splitlines()[1].split()[:2] == ["m@prod", "m:1"]


def test_global_options_before_the_command_in_the_console_script(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), CASREG_REGISTRY=str(tmp_path / "unused"), NO_COLOR="1")
    p = subprocess.run([str(SCRIPT), "--registry", str(tmp_path / "reg"), "--json", "ls"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []


def test_only_the_named_command_is_built_after_global_options() -> None:
    """run() builds just the command argv names (casreg_cli/main.py: _narrowed), also
    when global options come first; a registry URL is never taken for the command."""
    from casreg_cli.main import _narrowed, app

    for argv in (["-r", "ls", "ls"], ["--registry", "x", "--json", "ls"], ["--json", "-q", "ls", "m"]):
        narrow = _narrowed(argv)
        assert narrow is not app and [c.name for c in narrow.registered_commands] == ["ls"], argv
    for argv in (["-r", "x"], ["--json"], ["-r", "x", "--", "ls"]):
        assert _narrowed(argv) is app


# -- 2. a trailing / on DEST names a directory -------------------------------------------------------
def test_pull_into_a_directory_named_with_a_trailing_slash(reg: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"one file")
    ok(capsys, "push", "m", str(f))
    model = tmp_path / "tree"
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "config.json").write_text("{}")
    ok(capsys, "push", "m", str(model))

    assert "newdir/model.safetensors" in ok(capsys, "pull", "m:1", "newdir/")  # newdir did not exist
    assert (tmp_path / "newdir").is_dir() and (tmp_path / "newdir" / "model.safetensors").read_bytes() == b"one file"
    res = json.loads(ok(capsys, "pull", "m:1", "deep/er/", "--json"))
    assert res["dest"] == str(tmp_path / "deep" / "er" / "model.safetensors")
    (tmp_path / "existing").mkdir()
    ok(capsys, "pull", "m:1", "existing/")  # the directory exists: the same rule
    assert (tmp_path / "existing" / "model.safetensors").read_bytes() == b"one file"
    # a directory version goes inside too, under its default name (the model's)
    ok(capsys, "pull", "m:2", "trees/")
    assert (tmp_path / "trees" / "m" / "sub" / "config.json").read_text() == "{}"
    # without the slash DEST is the destination itself, as before
    ok(capsys, "pull", "m:1", "plain")
    assert (tmp_path / "plain").read_bytes() == b"one file"


# -- 3. stages are strict ----------------------------------------------------------------------------
def test_promote_to_a_typo_is_refused_with_the_stage_it_resembles(reg: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    push(capsys, tmp_path, "fraud-detector", b"v1")
    line = one_line_error(cli(capsys, "promote", "fraud-detector", "1", "prod"), "did you mean 'production'?",
                          "casreg alias set NAME@prod REF")
    assert cli(capsys, "promote", "fraud-detector", "1", "prod")[0] == 2, line
    assert json.loads(ok(capsys, "alias", "ls", "--json")) == []  # no alias 'prod' was created
    ok(capsys, "alias", "set", "fraud-detector@prod", "1")  # free-form aliases: alias set
    assert ok(capsys, "promote", "fraud-detector", "1", "production").startswith("fraud-detector@production ->")


# -- 4. one unit system ------------------------------------------------------------------------------
def test_the_progress_bar_uses_the_units_of_the_summary() -> None:
    """The bar said 524.3 MB (rich's decimal units) where the summary said 500.0 MiB."""
    from casreg_cli.output import BarProgress, human_bytes

    bar = BarProgress()._bar  # never started: nothing is drawn
    task_id = bar.add_task("pull", total=500 * 2**20)
    bar.update(task_id, completed=12 * 2**20)
    task = bar.tasks[0]
    shown = " ".join(str(column(task)) for column in bar.columns[2:])
    assert "12.0 MiB/500.0 MiB" in shown and human_bytes(500 * 2**20) == "500.0 MiB"
    assert " MB" not in shown and " kB" not in shown and "524" not in shown
    from casreg_cli.output import bytes_per_second

    assert bytes_per_second(85 * 2**20) == "85.0 MiB/s" and bytes_per_second(None) == "?"


def test_show_counts_one_file_in_the_singular(reg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = push(capsys, tmp_path, "m", b"x" * 3000)
    text = ok(capsys, "show", "m:1")
    assert "size      2.9 KiB in 1 file (file);" in text, text
    assert json.loads(ok(capsys, "show", "m:1", "--json"))["size"] == v["size"] == 3000  # exact bytes in JSON


# -- 5. --version, errors as JSON, NO_COLOR -----------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    import casreg

    assert ok(capsys, "--version") == f"casreg {version('casreg')}\n"
    assert casreg.__version__ == version("casreg")


def test_the_version_is_written_in_one_place() -> None:
    """pyproject.toml's [project] version; no module or benchmark spells it again."""
    import tomllib
    from importlib.metadata import version

    import casreg

    tree = Path(casreg.__file__).resolve().parent.parent  # the tree under test (its pyproject.toml)
    written = tomllib.loads((tree / "pyproject.toml").read_text()).get("project", {}).get("version")
    assert written == version("casreg")  # the installed metadata is this tree's
    spelled = [p.relative_to(tree).as_posix() for d in ("casreg", "casreg_cli", "benchmarks")
               for p in sorted((tree / d).rglob("*.py")) if f'"{written}"' in p.read_text(encoding="utf-8")]
    assert spelled == []


@pytest.mark.parametrize("args, code", [
    (["resolve", "nope", "--json"], 3),
    (["--json", "resolve", "nope"], 3),
    (["--json", "promote", "nope", "1", "prod"], 3),
    (["ls", "--limit", "0", "--json"], 2),  # a usage error, found before the command runs
    (["--json", "pussh"], 2),
])
def test_errors_are_json_under_json(reg: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int) -> None:
    got, out, err = cli(capsys, *args)
    assert got == code and out == ""
    assert len(err.splitlines()) == 1, err
    doc = json.loads(err)
    assert doc["exit_code"] == code and isinstance(doc["error"], str) and doc["error"]
    assert not doc["error"].startswith("casreg: error")
    plain = cli(capsys, *[a for a in args if a != "--json"])
    if code == 3:
        one_line_error(plain)  # without --json: the usual line
    else:
        assert "Usage: casreg" in plain[2] and "Error: " in plain[2]  # click's usage message, as before


def test_no_color_is_respected(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), FORCE_COLOR="1", NO_COLOR="1", COLUMNS="100")
    p = subprocess.run([str(SCRIPT), "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Usage" in p.stdout
    import re

    assert not re.search(r"\x1b\[[0-9;]*(?:3[0-9]|9[0-7])[;m]", p.stdout), "colour despite NO_COLOR"
    colored = subprocess.run([str(SCRIPT), "--help"], env=dict(env, NO_COLOR=""), capture_output=True, text=True,
                             timeout=120)
    assert re.search(r"\x1b\[[0-9;]*3[0-9][;m]", colored.stdout)  # the check above can see colour


# -- 6. shell completion -----------------------------------------------------------------------------
def _complete(env: dict[str, str], words: str) -> subprocess.CompletedProcess[str]:
    """What bash would get from casreg's completion for the command line ``words``."""
    cword = len(words.split(" ")) - 1
    e = dict(env, _CASREG_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(cword))
    return subprocess.run([str(SCRIPT)], env=e, capture_output=True, text=True, timeout=120)


def test_completion_of_model_names_and_aliases(reg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("fraud-detector", "fraud-v2", "churn"):
        push(capsys, tmp_path, name, name.encode())
    ok(capsys, "alias", "set", "fraud-detector@champion", "1")
    ok(capsys, "promote", "fraud-detector", "1", "staging")
    env = dict(os.environ)  # CASREG_REGISTRY, HOME and CASREG_USER from the fixture
    for words, want in (("casreg show fr", ["fraud-detector", "fraud-v2"]),
                        ("casreg ls ", ["churn", "fraud-detector", "fraud-v2"]),
                        ("casreg promote c", ["churn"]),
                        ("casreg pull fraud-detector@", ["fraud-detector@champion", "fraud-detector@staging"]),
                        ("casreg rollback fraud-detector@s", ["fraud-detector@staging"]),
                        (f"casreg -r {tmp_path / 'elsewhere'} show fr", []),  # --registry before the command
                        (f"casreg show fr -r {tmp_path / 'elsewhere'}", []),
                        ("casreg show fr -r s3://bucket/never-listed", [])):
        p = _complete(env, words)
        assert p.returncode == 0 and p.stderr == "", (words, p.stderr)
        assert sorted(p.stdout.split()) == want, (words, p.stdout)


def test_completion_never_fails_loudly(tmp_path: Path) -> None:
    not_a_registry = tmp_path / "file"
    not_a_registry.write_text("not a registry")
    env = dict(os.environ, HOME=str(tmp_path), CASREG_REGISTRY=str(not_a_registry))
    p = _complete(env, "casreg show m")
    assert p.returncode == 0 and p.stdout.strip() == "" and p.stderr == ""
    # typer detects the shell from the process tree unless told not to (then the option
    # takes the shell as its value); detection fails where no shell is a parent (CI, nohup)
    script = subprocess.run([str(SCRIPT), "--show-completion", "bash"],
                            env=dict(env, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"),
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "_CASREG_COMPLETE" in script.stdout


def test_model_names_lists_keys_only(reg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import casreg

    for name in ("b-model", "a-model", "a-other"):
        push(capsys, tmp_path, name, name.encode())
    r = casreg.Registry(reg)
    assert r.model_names() == ["a-model", "a-other", "b-model"] and r.model_names("a-m") == ["a-model"]
    r.set_alias("a-model", "canary", 1)
    assert r.alias_names("a-model") == ["canary"] and r.alias_names("a-model", "x") == []


# -- 7. help with examples, unbroken sentences, docs/cli.md -------------------------------------------
def _leaves() -> list[tuple[str, object]]:
    from typer.main import get_command

    from casreg_cli.main import app

    out: list[tuple[str, object]] = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((" ".join(path), cmd))

    walk(get_command(app), [])
    return out


def test_every_command_has_an_example_in_its_help_and_in_docs_cli_md() -> None:
    leaves = _leaves()
    assert len(leaves) >= 29 and "alias set" in dict(leaves) and "cache prune" in dict(leaves)
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for path, cmd in leaves:
        epilog = getattr(cmd, "epilog", None) or ""
        assert f"{epilog} ".startswith(f"Example: casreg {path} "), (path, epilog)
        example = epilog.removeprefix("Example: ")
        section = doc.partition(f"### `casreg {path}`\n")[2].partition("\n### ")[0]
        assert section, f"docs/cli.md has no section for casreg {path}"
        assert f"```sh\n{example}\n```" in section, path


def test_help_keeps_sentences_whole(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The command listing broke a summary wherever its docstring had a line break, and
    rich markup ate bracketed text ("A TOML file of [] tables")."""
    monkeypatch.setenv("COLUMNS", "400")
    listing = ok(capsys, "--help")
    for path, cmd in _leaves():
        if " " in path:
            continue
        summary = " ".join((getattr(cmd, "help", None) or "").split("\n\n")[0].split())
        assert summary in listing, (path, summary)
    assert "A TOML file of [[hooks]] tables" in ok(capsys, "hooks", "set", "--help")
    shown = ok(capsys, "promote", "--help")
    assert "an alias the policy gates ([gates.NAME])" in shown and "Example: casreg promote fraud-detector 2" in shown


# -- the library speaks its own terms; the CLI adds its flags -----------------------------------------
def test_python_api_errors_do_not_use_command_line_wording(reg: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import casreg
    from casreg.errors import CasregError, MissingMetadataError
    from casreg.watch import Watcher

    r = casreg.Registry(reg)
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    v = r.push("m", f)
    r.set_alias("m", "champion", 1)
    (tmp_path / "served").mkdir()
    attempts = [
        lambda: r.set_alias("m", "archived", 1),
        lambda: r.promote("m", 1, "archived", dry_run=True),
        lambda: r.archive("m", 1),  # m@champion points at it
        lambda: r.resolve_at(v.digest, "2026-01-01"),
        lambda: r.resolve_at("m", "2999-01-01"),
        lambda: Watcher(r, "m", "champion", keep=0),
        lambda: Watcher(r, "m", "champion", pull_dest=tmp_path / "served"),
        lambda: r.promote("m", 1, "prod"),
    ]
    r.set_policy('[push]\nrequire = ["metrics.auc", "lineage.dataset"]\n')
    attempts.append(lambda: r.push("m", f))
    for attempt in attempts:
        with pytest.raises(CasregError) as err:
            attempt()
        message = str(err.value)
        assert " --" not in message and "casreg " not in message, message
    with pytest.raises(MissingMetadataError) as missing:
        r.push("m", f)
    assert missing.value.missing == ["metrics.auc", "lineage.dataset"]
    line = one_line_error(cli(capsys, "push", "m", str(f)), "missing metrics.auc, lineage.dataset",
                          "on the command line: --metric")
    assert "--dataset" in line


# -- 8. listings that show state ----------------------------------------------------------------------
LONG = "a description long enough that a terminal of ordinary width has to cut it short, and then some"


@pytest.fixture
def staged(reg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """m:1 archived (replaced in production by m:2), m:2 at production, m:3 at staging;
    o:1 archived by hand. Every m version has a framework and a long description."""
    for i in (1, 2, 3):
        push(capsys, tmp_path, "m", bytes([i]) * (100 + i), "--framework", "pytorch", "-d", f"v{i}: {LONG}")
    push(capsys, tmp_path, "o", b"other model")
    ok(capsys, "promote", "m", "1", "production", "-q")
    ok(capsys, "promote", "m", "2", "production", "-q")  # archives m:1
    ok(capsys, "alias", "set", "m@staging", "3", "-q")
    ok(capsys, "archive", "o", "1", "--reason", "retired", "-q")
    return reg


def _rows(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header's column names, and each row's cells by column (cut at the header's
    column starts), by ref."""
    import re

    lines = text.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    names = lines[0].split()
    ends = [*starts[1:], None]
    rows = [{n: line[a:b].strip() for n, a, b in zip(names, starts, ends)} for line in lines[1:]]
    return names, {r["ref"]: r for r in rows}


def test_ls_shows_each_versions_stage(staged: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    header, rows = _rows(ok(capsys, "ls", "m"))
    assert header == ["ref", "digest", "size", "created", "author", "aliases", "stage", "framework", "description"]
    assert {ref: (r["aliases"], r["stage"]) for ref, r in rows.items()} == {
        "m:1": ("", "archived"), "m:2": ("production", "production"), "m:3": ("staging", "staging")}
    assert {ref: (r["framework"], r["description"]) for ref, r in rows.items()} == {
        f"m:{i}": ("pytorch", f"v{i}: {LONG}") for i in (1, 2, 3)}
    header, rows = _rows(ok(capsys, "ls"))  # the latest version of every model
    assert header == ["ref", "digest", "size", "created", "author", "aliases", "stage", "framework", "description"]
    assert {ref: (r["aliases"], r["stage"]) for ref, r in rows.items()} == {
        "m:3": ("staging", "staging"), "o:1": ("", "archived")}


def test_ls_fits_framework_and_description_to_the_terminal(staged: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    text = ok(capsys, "ls", "m")
    header, rows = _rows(text)
    assert header[-2:] == ["framework", "description"]
    assert all(len(line) <= 160 for line in text.splitlines())
    for i in (1, 2, 3):
        cut = rows[f"m:{i}"]["description"]
        assert cut.endswith("...") and f"v{i}: {LONG}".startswith(cut[:-3]) and len(cut) >= 12
    monkeypatch.setenv("COLUMNS", "60")  # too narrow even for the essential columns: they stay, nothing else
    header, rows = _rows(ok(capsys, "ls", "m"))
    assert header == ["ref", "digest", "size", "created", "author", "aliases", "stage"]
    assert (rows["m:2"]["aliases"], rows["m:2"]["stage"]) == ("production", "production")


def test_ls_reads_the_models_events_once(staged: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import casreg.governance.state as state

    calls: list[str] = []
    for fn in ("read_events", "read_all_events"):
        real = getattr(state, fn)
        monkeypatch.setattr(state, fn, lambda *a, _real=real, _fn=fn, **k: calls.append(_fn) or _real(*a, **k))
    ok(capsys, "ls", "m")
    assert calls == ["read_events"]  # three versions, one read
    calls.clear()
    ok(capsys, "ls")
    assert calls == ["read_all_events"]  # two models, one read


def test_ls_json_gives_archived_and_aliases(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(ok(capsys, "ls", "m", "--json"))
    assert [(r["version"], r["aliases"], r["archived"]) for r in rows] == [
        (1, [], True), (2, ["production"], False), (3, ["staging"], False)]
    shown = json.loads(ok(capsys, "show", "m:2", "--json"))
    assert {k: v for k, v in rows[1].items() if k != "archived"} == {k: shown[k] for k in rows[1] if k != "archived"}
    assert set(rows[1]) == {k for k in shown if k not in ("lifecycle", "files", "signatures")} | {"archived"}
    every = json.loads(ok(capsys, "ls", "--json"))
    assert [(r["name"], r["version"], r["aliases"], r["archived"]) for r in every] == [
        ("m", 3, ["staging"], False), ("o", 1, [], True)]
    assert [r["version"] for r in json.loads(ok(capsys, "ls", "m", "--stage", "archived", "--json"))] == [1]


def test_sql_with_no_rows_prints_its_header(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = "SELECT name, version AS v, metrics FROM versions LIMIT 0"
    assert ok(capsys, "sql", query).splitlines() == ["name  v  metrics"]
    assert json.loads(ok(capsys, "sql", query, "--json")) == []
    assert ok(capsys, "sql", "SELECT name FROM versions WHERE version > 99").splitlines() == ["name"]
    import casreg

    result = casreg.Registry(staged).sql_result(query)
    assert result.columns == ["name", "v", "metrics"] and result.rows == []
