"""``casreg ARGS`` run in the test's own process, as a fresh ``casreg`` process would run it.

Starting the real executable costs each command its interpreter start-up, its imports and,
on S3, a new client and connections: over a second per command on the CI machines, and the
tests that run a dozen commands per case spent most of their time there. :func:`run_cli`
calls :func:`casreg_cli.main.run` instead, with what the subprocess got:

- exactly the environment given (``os.environ`` is replaced for the call, then restored),
  and the working directory (``os.chdir`` for the call, then restored);
- stdout and stderr captured (not a terminal, as a pipe: no progress bars); log records
  reach stderr as in a new process, where the root logger has no handler (the CLI's
  ``logging.lastResort`` prints them), not pytest's capture; so do warnings, under
  Python's default filters (pytest's own filters and capture are set aside for the call);
- ``SystemExit`` becomes the exit code, as the interpreter would make it; any other
  exception escaping ``run`` is what the real executable would print as a traceback:
  the test fails there, with it;
- what a CLI process keeps in memory between calls of the library is forgotten before
  each command (:func:`forget_process_state`), so each one starts as a new process
  would: reading the store again, never trusting what an earlier command (or the test's
  own library calls) read before the test damaged it.

The S3 client (``casreg.storage.s3._FS``) is kept: it holds connections and credentials,
never object contents (listing caches are off). Tests that must cover the real entry point
(``casreg_cli.main.main``: its exit, its import hook, its stderr) keep running the
executable: each file using this module keeps at least one such test.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from casreg.content import cache as chunk_cache
from casreg.content import trust
from casreg.ledger import cache as ledger_cache
from casreg.ledger import sql
from casreg_cli.main import run as cli_run

#: The real executable, next to this interpreter.
EXECUTABLE = Path(sys.executable).with_name("casreg")


def forget_process_state() -> None:
    """Drop what one process keeps between commands: the ledger reader's caches (decoded
    compacted files, listings, checked segments), the SQL snapshots per store, the packs
    confirmed in memory (``casreg.content.trust``; those confirmed on disk stay, as for a
    new process) and the chunk cache objects (their warn-once state and size accounting)."""
    ledger_cache.clear()
    with sql._snapshots_lock:
        sql._snapshots.clear()
    with trust._SEEN_LOCK:
        trust._SEEN.clear()
    with chunk_cache._CACHES_LOCK:
        chunk_cache._CACHES.clear()


def _default_warning_filters() -> None:
    """The warning filters of a new Python process started without ``-W``: each warning
    shown once per location, but deprecations (outside ``__main__``), imports and
    resources ignored."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def run_cli(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``casreg ARGS`` in this process with environment ``env`` and working directory ``cwd``:
    what ``subprocess.run([casreg, *args], env=env, cwd=cwd, capture_output=True, text=True)``
    gives when the command does not crash. A crash (an exception escaping the CLI) fails the
    test with its traceback."""
    argv = list(args)
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_last_resort = dict(os.environ), os.getcwd(), logging.lastResort
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    crash: str | None = None
    forget_process_state()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    root.handlers.clear()  # a new process: no handler, the root logger at WARNING
    root.setLevel(logging.WARNING)
    try:
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
            _default_warning_filters()
            try:
                code = cli_run(argv)
            except SystemExit as exc:  # as the interpreter turns it into an exit status
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    err.write(f"{exc.code}\n")
                    code = 1
            except BaseException:  # noqa: BLE001 - the traceback the real executable would print
                crash = traceback.format_exc()
                code = 1
        for w in caught:  # what Python's default warning display writes to stderr
            err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        logging.lastResort = saved_last_resort
        forget_process_state()  # the test's own library calls see no state the command left
    if crash is not None:
        pytest.fail(f"casreg {' '.join(argv)} crashed (the executable would print this traceback):\n{crash}"
                    f"--- stderr before it ---\n{err.getvalue()}", pytrace=False)
    return subprocess.CompletedProcess([str(EXECUTABLE), *argv], code, out.getvalue(), err.getvalue())


def run_executable(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``casreg ARGS`` as the real executable, in a new process."""
    return subprocess.run([str(EXECUTABLE), *args], env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=120)


Run = Callable[..., subprocess.CompletedProcess[str]]


def fails(p: subprocess.CompletedProcess[str], code: int, *fragments: str, stdout: bool = False,
          as_json: bool = False) -> str:
    """One ``casreg: error:`` line with exit ``code`` and no traceback, holding every one of
    ``fragments``; nothing on stdout unless ``stdout`` (output printed before the error is
    allowed); ``as_json`` (the command had --json): the line is ``{"error": ..., "exit_code":
    code}`` instead. Returns the error line."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr
    lines = p.stderr.splitlines()
    if as_json:
        assert len(lines) == 1, p.stderr
        doc = json.loads(lines[0])
        assert set(doc) == {"error", "exit_code"} and doc["exit_code"] == code, doc
        lines = ["casreg: error: " + doc["error"]]
    assert len(lines) == 1 and lines[0].startswith("casreg: error: "), p.stderr
    if not stdout:
        assert p.stdout == "", p.stdout
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``p`` after checking that it succeeded without a traceback."""
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    return p
