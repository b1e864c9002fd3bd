"""Human output escapes control characters in every user-supplied string
(casreg_cli/output.py): a description, reason, author (``CASREG_USER``), metric name,
tag, annotation or hook target can neither send a terminal escape sequence nor forge a
line of output; ``--json`` stays exact JSON."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import casreg
from casreg_cli.main import run
from casreg_cli.output import Output, clean, print_error

CLI = Path(sys.executable).with_name("casreg")
ROOT = Path(__file__).resolve().parent.parent

DESC = "evil\x1b[31mred\nforged: description line\x9b2J\x7f"
USER = "mallory\x1b]0;pwned\x07\nforged: author line"
REASON = "go\x1b[2J\r\nforged: reason line"
#: Any control character but the newline that ends a line (C0, DEL, C1).
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def assert_clean(text: str) -> None:
    """No raw control character, and no line that a value forged."""
    assert not RAW.search(text), repr(text)
    assert not [line for line in text.splitlines() if line.startswith("forged")], text


@pytest.fixture
def reg(tmp_path: Path, author: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> casreg.Registry:
    """m:1 and m:2 pushed by USER with DESC and odd names; m@prod moved with REASON."""
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("CASREG_HOOKS", "off")
    author(USER)
    r = casreg.Registry(tmp_path / "reg")
    for i in (1, 2):
        f = tmp_path / f"m{i}.bin"
        f.write_text(f"weights {i}")
        r.push("m", f, description=DESC, metrics={"auc\x1b[1m": 0.5 + i / 10}, params={"lr": f"0.{i}\nforged: p"},
               tags={"team\x1b[7m": "x\ry"})
    r.set_alias("m", "prod", 1, reason=REASON, annotations={"note": "a\x1b[5mb\nforged: annotation"})
    return r


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_escapes_description_author_and_names(reg: casreg.Registry, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "show", "m:1")
    assert code == 0, err
    assert_clean(out)
    assert "  desc      evil\\x1b[31mred\\nforged: description line\\x9b2J\\x7f\n" in out
    assert "by mallory\\x1b]0;pwned\\x07\\nforged: author line\n" in out
    assert "auc\\x1b[1m=0.6" in out and "lr=0.1\\nforged: p" in out and "team\\x1b[7m=x\\ry" in out


def test_json_stays_exact(reg: casreg.Registry, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "show", "m:1", "--json")
    assert code == 0, err
    assert "\x9b" not in out and "\x7f" not in out and "\x1b" not in out  # every control character escaped
    doc = json.loads(out)
    assert doc["description"] == DESC and doc["author"] == USER and doc["params"] == {"lr": "0.1\nforged: p"}
    code, out, _ = cli(capsys, "log", "m", "--json")
    assert not RAW.search(out) and [e["reason"] for e in json.loads(out) if e["kind"] == "alias.set"] == [REASON]


@pytest.mark.parametrize("args", [["log", "m"], ["ls", "m"], ["ls"], ["alias", "ls"], ["alias", "ls", "m"],
                                  ["diff", "m:1", "m:2"], ["show", "m@prod"],
                                  ["sql", "SELECT author, description FROM versions"]])
def test_listings_escape_every_value(reg: casreg.Registry, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert_clean(out)
    assert "\\x1b" in out or "\\n" in out  # the values are there, escaped


def test_log_lines_cannot_be_forged(reg: casreg.Registry, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "log", "m")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 + len(reg.log("m"))  # a header and one line per event, no more
    assert all("mallory\\x1b]0;pwned\\x07\\nforged: author line" in line for line in lines[1:])
    assert any("go\\x1b[2J\\r\\nforged: reason line" in line for line in lines[1:])
    code, out, _ = cli(capsys, "alias", "ls", "m")
    assert code == 0 and "note=a\\x1b[5mb\\nforged: annotation" in out and len(out.splitlines()) == 2


def test_the_error_line_is_escaped(reg: casreg.Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A refusal quotes the author as the policy saw it: still one line, no escape sequence."""
    reg.set_policy("[roles]\nadmin = [\"alice\"]\n[permissions]\npolicy = [\"admin\"]\n")
    policy = tmp_path / "p.toml"
    policy.write_text("[permissions]\npush = [\"*\"]\n")
    code, out, err = cli(capsys, "policy", "set", str(policy))
    assert code == 8 and out == "" and err.count("\n") == 1
    assert_clean(err)
    assert err.startswith("casreg: error: changing the policy refused: mallory\\x1b]0;pwned\\x07\\nforged")
    code, out, err = cli(capsys, "push", "m", str(tmp_path / "m1.bin"), "--metric", "x\x1b[31m=nan\x1b[0m")
    assert code == 2 and err.count("\n") == 1
    assert_clean(err)


def test_print_error_and_usage_errors() -> None:
    stream = io.StringIO()
    saved, sys.stderr = sys.stderr, stream
    try:
        print_error("bad \x1b[31mthing\nforged: line at https://u:pw@h/x")
    finally:
        sys.stderr = saved
    assert stream.getvalue() == "casreg: error: bad \\x1b[31mthing\\nforged: line at https://***@h/x\n"


def test_hooks_test_and_show_escape_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    config = tmp_path / "hooks.toml"
    config.write_text('[[hooks]]\nname = "odd"\nretries = 0\ncommand = ["/nonexistent/\\u001b[31mprog\\nforged"]\n')
    assert cli(capsys, "hooks", "set", str(config))[0] == 0
    code, out, err = cli(capsys, "hooks", "test")
    assert code == 1 and "FAILED" in out
    assert_clean(out + err)
    assert "command /nonexistent/\\x1b[31mprog\\nforged" in out
    code, out, _ = cli(capsys, "hooks", "show")
    assert code == 0 and "\\u001b[31m" in out
    assert_clean(out)


def test_log_records_printed_by_the_cli_are_escaped(tmp_path: Path) -> None:
    """A failing command hook's error (its stderr, verbatim) is logged as a warning: in
    the CLI it is one clean line; in casreg log, an escaped reason."""
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), CASREG_USER="u",
               GIT_CEILING_DIRECTORIES=str(tmp_path))
    env.pop("CASREG_HOOKS", None)
    script = "import sys; sys.stderr.write('boom \\x1b[31mred\\x1b]0;title\\x07'); sys.exit(3)"
    (tmp_path / "hooks.toml").write_text(f'[[hooks]]\nname = "h"\nretries = 0\n'
                                         f'command = {json.dumps([sys.executable, "-c", script])}\n')
    (tmp_path / "m.bin").write_text("weights")
    for args in (["hooks", "set", str(tmp_path / "hooks.toml")], ["push", "m", str(tmp_path / "m.bin")],
                 ["log", "m"]):
        p = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert_clean(p.stdout + p.stderr)
    assert "exited with 3: boom \\x1b[31mred\\x1b]0;title\\x07" in p.stdout  # casreg log m


# -- Output itself -------------------------------------------------------------------------------
def test_clean() -> None:
    assert clean("a\x1b[31mb\n\r\t\x00\x7f\x9b\u2028é") == "a\\x1b[31mb\\n\\r\\t\\x00\\x7f\\x9b\u2028é"
    assert clean(clean("x\x1by")) == clean("x\x1by") and clean("plain text") == "plain text"


def test_output_writers() -> None:
    stream = io.StringIO()
    out = Output(False, False, stream)
    out.line("one\ntwo\x1b[2J")
    out.block("first\nsecond\x1b[1m")
    out.table([{"name": "x\x1b[31my", "n": 1}, {"name": "a longer value", "n": 22}])
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["one\\ntwo\\x1b[2J", "first", "second\\x1b[1m"]
    table = lines[3:]
    assert len(table) == 3 and {line.rindex(" ") + 1 for line in table} == {16}  # the n column stays aligned
    stream = io.StringIO()
    Output(True, False, stream).json({"d": "a\x9bb\x7fc\x1bd\n"})
    assert not RAW.search(stream.getvalue().replace("\n", "")) and json.loads(stream.getvalue()) == {
        "d": "a\x9bb\x7fc\x1bd\n"}
    stream = io.StringIO()
    Output(False, True, stream).line("quiet")
    assert stream.getvalue() == ""


WRITERS = {"print", "echo", "secho"}


def raw_writes(source: str) -> list[int]:
    """Lines of ``source`` that write to the terminal other than through ``Output``:
    ``sys.stdout``/``sys.stderr``, ``print()``, ``typer.echo``/``click.echo``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") \
                and isinstance(node.value, ast.Name) and node.value.id == "sys":
            found.append(node.lineno)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in WRITERS:
                found.append(node.lineno)
    return sorted(found)


def test_the_raw_write_check_can_fail() -> None:
    assert raw_writes("import sys\nsys.stderr.write('x')\nprint(1)\ntyper.echo('y')\n") == [2, 3, 4]
    assert raw_writes("out.line('x')\n") == []


def test_commands_print_only_through_output() -> None:
    """The escaping cannot be forgotten by a new command: no module of casreg_cli but
    output.py writes to the terminal itself."""
    offenders = [f"{path.name}:{line}" for path in sorted((ROOT / "casreg_cli").glob("*.py"))
                 if path.name != "output.py" for line in raw_writes(path.read_text())]
    assert offenders == [], offenders
