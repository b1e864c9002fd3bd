"""Rendering for the CLI: progress bars, sizes, tables, JSON, and one-line errors."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, TextIO

__all__ = ["Output", "human_bytes", "BarProgress"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class BarProgress:
    """A rich progress bar with bytes and MB/s, drawn on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(),
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
    """Where a command's result goes: human text, JSON, or nothing (``--quiet``)."""

    def __init__(self, as_json: bool, quiet: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.stream = stream or sys.stdout

    def progress(self) -> BarProgress | None:
        if self.quiet or self.as_json or not sys.stderr.isatty():
            return None
        return BarProgress()

    def json(self, value: Any) -> None:
        """JSON is printed even with ``--quiet``: asking for it is asking for output."""
        if self.as_json:
            text = json.dumps(_finite(value), indent=2, default=str, ensure_ascii=False, allow_nan=False)
            self.stream.write(text + "\n")

    def line(self, text: str = "") -> None:
        if not self.quiet:
            self.stream.write(text + "\n")

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
        """Aligned plain-text columns (greppable, no box drawing)."""
        if self.quiet:
            return
        if not rows:
            self.line("(no rows)")
            return
        columns = columns or list(rows[0])
        cells = [[_cell(r.get(c)) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        self.line("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        for row in cells:
            self.line("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


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
