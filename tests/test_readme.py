"""The README is a tested script: its shell and Python blocks run top to bottom, in order,
in a fresh registry, and print what the README shows.

Every fenced ```sh, ```bash and ```python block of README.md runs, in the order it
appears, unless the line just before its fence is a marker saying why it cannot:

    <!-- readme-test: skip (the reason) -->

``SKIPPED`` lists those blocks, and the test checks that the marked set is exactly that
list, so a block never drops out silently (fences in other languages, or none, are
refused for the same reason).

How the blocks run, as a reader pasting them into one terminal would:

- shell blocks: ``bash`` with ``set -euo pipefail`` (and ``set -a``, so that variables
  reach the next block as they would in one shell); the directory, and the exported
  variables, carry from one block to the next. Python blocks: ``sys.executable``, in the
  directory and with the environment the last shell block left, one top-level statement
  at a time in one namespace (a traceback names README.md and its line).
- a fresh temporary directory is the working directory, ``HOME``, the ``XDG_*``
  directories and ``TMPDIR`` are inside it, ``CASREG_REGISTRY`` is a fresh registry in it
  (the tour sets its own scratch one), and ``PATH`` starts with the directory of
  ``sys.executable``, where the venv puts ``casreg``;
- the README's S3 registry (``s3://models/...``) is the suite's SeaweedFS: the bucket and
  prefix are replaced by a fresh prefix of its bucket, and its endpoint and credentials
  are in the environment, as the AWS variables would be for a reader.

What the README shows a command print: the comment lines right after the command (or
after the top-level Python statement) that start with ``#`` and three spaces; the rest
of the line is one line of output (stdout and stderr together). A command with such lines
must print exactly those lines, where

- ``...`` inside a line stands for any text on that line (digests, paths, times);
- a line that is only ``...`` stands for any number of lines, none included;
- ``~`` before a number (``~872.4``) stands for any number: sizes that depend on the
  compressor.

A command with no such lines may print anything; every command must succeed (in the
README, a command expected to fail is written ``cmd || echo ...``). A failure names the
README line of the command and its block.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from casreg.testing.seaweedfs import AWS_UNSET, S3Server

README = Path(__file__).resolve().parent.parent / "README.md"
#: The README's S3 registry prefix; the test runs those examples against its SeaweedFS.
README_S3 = "s3://models/"
RUN_LANGS = {"sh", "bash", "python"}
OUTPUT = "#   "  # an output line of the command above
MARK = "\x1e"  # printed before each command with its README line: "\x1e<line>\n"
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+)\)\s*-->")

#: The blocks that do not run, on purpose: (section, first line of the block).
SKIPPED = {
    ("Set up", "make demo                # install into .venv, then a short tour on your default registry (~/.casreg)"),
    ("Deploy: a local cache, watch and hooks",
     "# follow production: pull each new target into /srv/fraud.versions/, switch the"),
    ("See it in a browser",
     "casreg ui        # http://127.0.0.1:8000/ : models, versions, stages, history, diffs, policy (read-only)"),
}


@dataclass
class Block:
    lang: str
    section: str
    first: int  # README line number of the block's first line
    lines: list[str]
    skip: str | None

    def where(self) -> str:
        return f"the ```{self.lang} block at README.md:{self.first} (section {self.section!r})"


@dataclass
class Command:
    start: int  # README line numbers, inclusive
    end: int
    text: str
    shown: list[str] = field(default_factory=list)  # the output the README shows


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    section, previous = "", ""
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence:
            lang, first, body = fence.group(1), i + 2, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            marker = SKIP_MARKER.fullmatch(previous.strip())
            assert lang in RUN_LANGS, (f"README.md:{first - 1}: a ```{lang or '(no language)'} block: the README's "
                                       f"blocks are {sorted(RUN_LANGS)}, run by this test or marked skipped")
            blocks.append(Block(lang, section, first, body, marker.group(1) if marker else None))
        elif line.strip():
            previous = line
        i += 1
    return blocks


def _open_quote(text: str) -> bool:
    """Whether ``text`` ends inside a shell quote (comments, escapes, ' and " as bash reads them)."""
    quote, i = "", 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            i += 1
        elif quote == '"':
            quote = "" if c == '"' else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1].isspace()):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        i += 1
    return bool(quote)


def shell_commands(block: Block) -> list[Command]:
    """The block's top-level commands: a line, with its backslash continuations, lines
    inside an open quote and here-documents."""
    cmds: list[Command] = []
    lines, i = block.lines, 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        start, text = i, [line]
        while text[-1].endswith("\\") or _open_quote("\n".join(text)):
            i += 1
            text.append(lines[i])
        for _, tag in re.findall(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1", "\n".join(text)):
            i += 1
            while lines[i].strip() != tag:
                text.append(lines[i])
                i += 1
            text.append(lines[i])
        cmds.append(Command(block.first + start, block.first + i, "\n".join(text)))
        i += 1
    return cmds


def python_commands(block: Block) -> list[Command]:
    tree = ast.parse("\n".join(block.lines))
    return [Command(block.first + n.lineno - 1, block.first + (n.end_lineno or n.lineno) - 1,
                    "\n".join(block.lines[n.lineno - 1:n.end_lineno])) for n in tree.body]


def attach_outputs(block: Block, cmds: list[Command]) -> None:
    for offset, line in enumerate(block.lines):
        if not line.startswith(OUTPUT):
            continue
        n = block.first + offset
        cmd = next((c for c in reversed(cmds) if c.end < n), None)
        follows = cmd is not None and all(block.lines[k - block.first].startswith(OUTPUT)
                                          for k in range(cmd.end + 1, n))
        assert cmd is not None and follows, (
            f"README.md:{n}: an output line ({OUTPUT!r}) that does not follow a command, in {block.where()}")
        cmd.shown.append(line[len(OUTPUT):].rstrip())


def _pattern(shown: list[str]) -> re.Pattern[str]:
    parts = []
    for line in shown:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = re.split(r"(\.\.\.|~\d[\d.,]*)", line)
        parts.append("".join(".*?" if p == "..." else r"\d[\d.,]*" if p.startswith("~") else re.escape(p)
                             for p in pieces) + r"\n")
    return re.compile("".join(parts))


def check_outputs(block: Block, cmds: list[Command], output: str, rc: int) -> None:
    """Fail naming the README line of the first command that failed or printed other than shown."""
    printed: dict[int, str] = {}
    for seg in output.split(MARK)[1:]:
        line, _, text = seg.partition("\n")
        printed[int(line)] = printed.get(int(line), "") + text
    if rc != 0:
        last = max(printed, default=block.first)
        cmd = next((c for c in cmds if c.start == last), None)
        pytest.fail(f"README.md:{last}: exit status {rc} from `{cmd.text if cmd else '?'}`, in {block.where()}; "
                    f"it printed:\n{printed.get(last, output)}", pytrace=False)
    for cmd in cmds:
        if not cmd.shown:
            continue
        actual = [ln.rstrip() for ln in printed.get(cmd.start, "").splitlines()]
        while actual and not actual[-1]:
            actual.pop()
        if not _pattern(cmd.shown).fullmatch("".join(ln + "\n" for ln in actual)):
            shown = "\n".join(cmd.shown)
            pytest.fail(f"README.md:{cmd.start}: `{cmd.text}` ({block.where()}) printed\n" + "\n".join(actual)
                        + f"\nbut the README shows\n{shown}", pytrace=False)


PY_RUNNER = """
import ast, sys
path, readme, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
tree = ast.parse(open(path, encoding="utf-8").read(), readme)
ast.increment_lineno(tree, first - 1)
ns = {"__name__": "__main__"}
for node in tree.body:
    print(f"\\x1e{node.lineno}", flush=True)
    exec(compile(ast.Module([node], []), readme, "exec"), ns)
    sys.stdout.flush()
"""


def test_readme_runs_as_shown(tmp_path: Path, s3_server: S3Server) -> None:
    blocks = readme_blocks()
    s3_url = f"s3://{s3_server.bucket}/readme-{uuid.uuid4().hex[:12]}/"
    for b in blocks:  # the README's bucket is the test's SeaweedFS (under a fresh prefix)
        b.lines = [line.replace(README_S3, s3_url) for line in b.lines]
    assert any(s3_url in line for b in blocks if b.skip is None for line in b.lines), "no S3 example ran"
    skipped = {(b.section, b.lines[0]) for b in blocks if b.skip is not None}
    assert skipped == SKIPPED, ("the README's blocks marked `readme-test: skip` are not the expected ones: "
                                f"unexpected {sorted(skipped - SKIPPED)}, missing {sorted(SKIPPED - skipped)}")
    runnable = [b for b in blocks if b.skip is None]
    assert {b.section for b in runnable} >= {"A two-minute tour of the CLI", "The same from Python",
                                              "Load models where they run"}

    home, state, work = tmp_path / "home", tmp_path / "state", tmp_path / "work"
    for d in (home, state, work, tmp_path / "tmp"):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASREG_USER", "CASREG_REGISTRY"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               XDG_DATA_HOME=str(home / ".local/share"), XDG_STATE_HOME=str(home / ".local/state"),
               TMPDIR=str(tmp_path / "tmp"), CASREG_REGISTRY=str(tmp_path / "registry"),
               GIT_CEILING_DIRECTORIES=str(tmp_path),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    for name in AWS_UNSET:
        env.pop(name, None)
    env.update(s3_server.env())
    (state / "cwd").write_text(str(work))
    started, checked = time.monotonic(), 0
    for block in runnable:
        cwd = (state / "cwd").read_text().strip()
        if block.lang == "python":
            cmds = python_commands(block)
            src = tmp_path / f"block-{block.first}.py"
            src.write_text("\n".join(block.lines) + "\n", encoding="utf-8")
            if (state / "env0").exists():
                env = dict(kv.split("=", 1) for kv in (state / "env0").read_text().split("\0") if "=" in kv)
            argv = [sys.executable, "-u", "-c", PY_RUNNER, str(src), str(README), str(block.first)]
        else:
            cmds = shell_commands(block)
            script = ["set -euo pipefail -a", f'[ ! -f "{state}/env" ] || . "{state}/env"', f'cd "{cwd}"',
                      f"trap 'export -p > \"{state}/env\"; env -0 > \"{state}/env0\"; pwd > \"{state}/cwd\"' EXIT"]
            for cmd in cmds:
                script += [f"printf '{MARK}%s\\n' {cmd.start}", cmd.text]
            argv = ["bash", "-c", "\n".join(script)]
        attach_outputs(block, cmds)
        checked += sum(1 for c in cmds if c.shown)
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300)
        check_outputs(block, cmds, proc.stdout, proc.returncode)
    print(f"{len(runnable)} README blocks ran in {time.monotonic() - started:.1f}s, {checked} commands printed what "
          f"the README shows; {len(SKIPPED)} blocks skipped on purpose")
