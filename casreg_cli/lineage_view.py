"""How ``casreg show`` renders a version's lineage (docs/lineage.md): grouped metrics,
code, hardware, dependencies, schema, signature and links; and ``push``'s lineage flags
as :meth:`casreg.Registry.push` keywords."""

from __future__ import annotations

from typing import Any

from casreg import Version
from casreg.describe import lineage_rows
from casreg_cli.common import pairs

__all__ = ["lineage_options", "metric_lines", "lineage_lines"]


def lineage_options(hardware: str | None, detect: bool, code: str | None, git_commit: str | None,
                     requirements: str | None, capture_env: bool, signature: str | None,
                     link: list[str] | None) -> dict[str, Any]:
    """``push``'s lineage flags as :meth:`casreg.Registry.push` keywords (docs/lineage.md)."""
    return {"hardware": hardware, "detect_hardware": detect, "code_dir": code, "git_commit": git_commit,
            "requirements": requirements, "capture_env": capture_env, "signature": signature,
            "links": pairs("link", link)}


def metric_lines(metrics: dict[str, float]) -> list[str]:
    """``show``'s metrics, grouped by the part of a name before its first dot (``val.auc``
    and ``val.f1`` on a ``val:`` line, ``test.auc`` on a ``test:`` line; names without a
    dot first, on a line of their own)."""
    groups: dict[str, list[str]] = {}
    for k in sorted(metrics):
        head, dot, rest = k.partition(".")
        groups.setdefault(head if dot else "", []).append(f"{rest if dot else k}={metrics[k]}")
    width = max((len(g) for g in groups), default=0) + 1
    lines = [(f"{g + ':':<{width}} " if g else "") + ", ".join(items) for g, items in sorted(groups.items())]
    return [f"  {'metrics' if i == 0 else '':<9} {line}" for i, line in enumerate(lines)]


def lineage_lines(v: Version) -> list[tuple[str, str]]:
    """``show``'s lines for the lineage of issue 16 (docs/lineage.md), each as (label, text):
    :func:`casreg.describe.lineage_rows`, the rows the web page shows too, with the listed
    tensors indented under their ``schema`` line."""
    return [(label, text if label else f"  {text}") for label, text in lineage_rows(v)]
