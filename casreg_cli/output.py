"""Rendering for the CLI: progress bars, sizes, tables, JSON, and one-line errors.

**Everything the CLI prints goes through this module, and this module escapes it.**
Descriptions, reasons, comments, authors (``CASREG_USER`` is whatever a user set), tags,
params, metric names, annotations, hook names and targets, policy and hooks text: any of
them may hold terminal escape sequences (``\\x1b[2J``, a forged colour, a title change)
or newlines (a forged ``casreg log`` line). Rather than trusting each command to clean
each value (one forgotten value in one new command would do), the writers themselves
escape:

- :meth:`Output.line` writes exactly one physical line: every C0 control character
  (newline and tab included), DEL and every C1 control character becomes visible text
  (:func:`clean`: ``\\n``, ``\\t``, ``\\r``, ``\\x1b``, ``\\x9b``...).
- :meth:`Output.table` cleans each cell before measuring it, so columns stay aligned.
- :meth:`Output.block` prints a multi-line document (a policy, a hooks config): its own
  line breaks are kept, each line is cleaned like :meth:`Output.line`.
- :meth:`Output.json` stays exact JSON (parsing it gives the same values): ``json.dumps``
  escapes C0 characters, and DEL and C1 characters, which it would leave raw, are
  written as ``\\u007f``...``\\u009f``. :meth:`Output.json_line` does the same on one line.
- :meth:`Output.warn` and :func:`print_error` (the ``casreg: error:`` line of
  ``casreg_cli.main.run``) clean stderr lines, and redact URL credentials
  (:func:`casreg.redact.redact_url`); :func:`install_log_escaping` makes library log
  records printed by the CLI do the same.

So a command prints only through :class:`Output` (tests/test_cli_escaping.py checks
that no module of ``casreg_cli`` but this one writes to ``sys.stdout`` or ``sys.stderr``).
Backslashes are not escaped: ``\\x1b`` typed as text and an escaped ESC read the same,
which is harmless (neither moves the cursor nor starts a line).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from casreg.describe import human_bytes
from casreg.redact import redact_url

__all__ = ["Output", "human_bytes", "plural", "bytes_done", "bytes_per_second", "BarProgress", "clean", "print_error",
           "print_error_json", "print_block", "install_log_escaping", "terminal_width", "MIN_CUT"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_RAW = re.compile(r"[\x7f-\x9f]")  # what json.dumps(ensure_ascii=False) leaves unescaped


def clean(text: str) -> str:
    """``text`` with every control character (C0 including newline and tab, DEL, C1)
    replaced by a visible escape (``\\n``, ``\\t``, ``\\r``, ``\\xNN``): safe to
    print as (part of) one line. Clean text is returned unchanged, so cleaning twice is
    cleaning once."""
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or f"\\x{ord(m[0]):02x}", text)


def _json_text(value: Any, indent: int | None) -> str:
    text = json.dumps(_finite(value), indent=indent, default=str, ensure_ascii=False, allow_nan=False)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def print_error(message: str, prefix: str = "casreg: error: ") -> None:
    """Write ``prefix + message`` to stderr as one clean line, URL credentials redacted."""
    sys.stderr.write(prefix + clean(redact_url(message)) + "\n")


def print_error_json(message: str, exit_code: int) -> None:
    """Write ``{"error": MESSAGE, "exit_code": N}`` to stderr as one line of exact JSON,
    URL credentials redacted: how an error reads under ``--json``."""
    sys.stderr.write(_json_text({"error": redact_url(message), "exit_code": exit_code}, None) + "\n")


def print_block(text: str) -> None:
    """Write ``text`` (lines ending in ``\\n``) to stderr, each line cleaned: for messages
    of several lines made elsewhere (click's usage errors)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    sys.stderr.write("".join(clean(line) + "\n" for line in lines))


class _CleanFormatter(logging.Formatter):
    """Formats a log record's message as one clean line, URL credentials redacted (a
    traceback attached to the record keeps its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return clean(redact_url(super().formatMessage(record)))


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (as logging's own
    last-resort handler does)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never fail the command
            self.handleError(record)


def install_log_escaping(fmt: str = "%(message)s", level: int = logging.WARNING) -> logging.Handler:
    """Make log records that reach no handler (the library's warnings, printed by the
    CLI) come out as clean lines: replaces :data:`logging.lastResort`, which would print
    them raw. Returns the handler, for commands that attach it themselves (``watch``)."""
    handler = _StderrHandler(level)
    handler.setFormatter(_CleanFormatter(fmt))
    logging.lastResort = handler
    return handler


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``, ``0 files``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def bytes_done(completed: float, total: float | None) -> str:
    """What the progress bar shows of the bytes moved: ``12.0 MiB/500.0 MiB``."""
    return human_bytes(completed) + (f"/{human_bytes(total)}" if total is not None else "")


def bytes_per_second(speed: float | None) -> str:
    """What the progress bar shows of the speed: ``85.3 MiB/s`` (``?`` before it is known)."""
    return "?" if speed is None else f"{human_bytes(speed)}/s"


class BarProgress:
    """A rich progress bar with bytes and bytes per second in binary units (as every size
    the CLI prints: :func:`human_bytes`), drawn on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class Done(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(bytes_done(task.completed, task.total), style="progress.download")

        class Speed(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(bytes_per_second(task.finished_speed or task.speed), style="progress.data.speed")

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), Done(), Speed(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True)
        self._task: Any = None

    def start(self, label: str, total_bytes: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(label, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        self._bar.update(self._task, advance=nbytes)

    def finish(self) -> None:
        self._bar.stop()


class Output:
    """Where a command's result goes: human text, JSON, or nothing (``--quiet``). Every
    writer escapes what it writes (the module docstring)."""

    def __init__(self, as_json: bool, quiet: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.stream = stream or sys.stdout

    def progress(self) -> BarProgress | None:
        if self.quiet or self.as_json or not sys.stderr.isatty():
            return None
        return BarProgress()

    def json(self, value: Any) -> None:
        """JSON is printed even with ``--quiet``: asking for it is asking for output.
        Exact JSON, with no raw control character (module docstring)."""
        if self.as_json:
            self.stream.write(_json_text(value, 2) + "\n")

    def json_line(self, value: Any) -> None:
        """``value`` as compact JSON on one line, flushed (a stream of records); printed
        whenever ``--json`` is on, like :meth:`json`."""
        if self.as_json:
            self.stream.write(_json_text(value, None) + "\n")
            self.stream.flush()

    def line(self, text: str = "") -> None:
        """``text`` as exactly one line, control characters escaped (:func:`clean`)."""
        if not self.quiet:
            self.stream.write(clean(text) + "\n")

    def block(self, text: str) -> None:
        """A multi-line document (a policy, a hooks config): one line per line of
        ``text`` (``\\n`` separated), each cleaned as by :meth:`line`."""
        for part in text.split("\n"):
            self.line(part)

    def warn(self, text: str, prefix: str = "casreg: warning: ") -> None:
        """One clean line on stderr, URL credentials redacted; printed even with
        ``--quiet`` (warnings and problems are not results)."""
        print_error(text, prefix)

    def flush(self) -> None:
        self.stream.flush()

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None, *,
              optional: Sequence[str] = (), cut: Sequence[str] = (), width: int | None = None) -> None:
        """Aligned plain-text columns (greppable, no box drawing). Without rows: the header
        line if ``columns`` are given (a query that matched nothing still names its
        columns), else ``(no rows)``.

        ``optional``: columns shown after the others, in order, only where some row has a
        value and the line still fits in ``width`` (default: the terminal's, ``COLUMNS``
        respected; 80 when unknown); a column in ``cut`` takes the room left instead,
        its values cut to it (ending in ``...``), if at least :data:`MIN_CUT` characters
        are left. The other columns are always shown, however narrow the terminal."""
        if self.quiet:
            return
        if not rows and not columns:
            self.line("(no rows)")
            return
        columns = list(dict.fromkeys(columns or rows[0]))  # a name given twice (SQL) is one column, as in a row
        cells = {c: [clean(_cell(r.get(c))) for r in rows] for c in [*columns, *optional]}
        widths = {c: max([len(clean(c)), *(len(v) for v in cells[c])]) for c in cells}
        if optional:
            room = width or terminal_width()
            used = sum(widths[c] for c in columns) + 2 * (len(columns) - 1)
            for c in optional:
                if not any(cells[c]):
                    continue
                left = room - used - 2
                if c in cut and left >= max(MIN_CUT, len(clean(c))) and left < widths[c]:
                    cells[c] = [v if len(v) <= left else v[:left - 3] + "..." for v in cells[c]]
                    widths[c] = left
                if widths[c] <= left:
                    columns.append(c)
                    used += 2 + widths[c]
        self.line("  ".join(clean(c).ljust(widths[c]) for c in columns).rstrip())
        for i in range(len(rows)):
            self.line("  ".join(cells[c][i].ljust(widths[c]) for c in columns).rstrip())


#: The narrowest a cut column (:meth:`Output.table`) is shown.
MIN_CUT = 12


def terminal_width() -> int:
    """The terminal's width in characters: ``COLUMNS`` if set, else the terminal's, else 80."""
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (SQL can produce them): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
