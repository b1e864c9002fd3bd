"""How ``casreg show`` renders a version's lineage (docs/lineage.md): grouped metrics,
code, hardware, dependencies, schema, signature and links; and ``push``'s lineage flags
as :meth:`casreg.Registry.push` keywords."""

from __future__ import annotations

from typing import Any

from casreg import Version
from casreg_cli.common import pairs
from casreg_cli.output import human_bytes

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
    """``show``'s lines for the lineage of issue 16 (docs/lineage.md), each as (label, text)."""
    ln, lines = v.lineage, []
    if ln.code is not None:
        c = ln.code
        state = "" if c.dirty is None else (", dirty" if c.dirty else ", clean")
        where = {"code": "from --code", "given": "from --git-commit",
                 "model-path": "from the pushed path's repository"}.get(c.source or "", c.source or "")
        lines.append(("code", f"{c.commit or '?'}" + (f" ({c.branch}{state})" if c.branch else
                                                      f" ({state[2:]})" if state else "")
                      + (f" {c.remote}" if c.remote else "") + f"  [{where}]"))
    if ln.hardware is not None:
        h = ln.hardware
        bits = []
        if h.text:
            bits.append(h.text)
        elif h.gpu_count:
            bits.append(f"{h.gpu_count}x {h.gpu_type or 'GPU'}")
        elif h.gpu_count == 0:
            bits.append("no GPU")
        if h.cpu_model or h.cpu_count:
            bits.append(f"CPU {h.cpu_model or '?'}" + (f" x{h.cpu_count}" if h.cpu_count else ""))
        if h.memory_bytes:
            bits.append(f"{human_bytes(h.memory_bytes)} memory")
        if h.cuda_visible_devices is not None:
            bits.append(f"CUDA_VISIBLE_DEVICES={h.cuda_visible_devices}")
        lines.append(("hardware", ", ".join(bits or ["?"]) + f"  [{h.source or '?'}]"))
    if ln.dependencies_source is not None:
        shown = ", ".join(f"{k}=={val}" if val and val[0].isalnum() else f"{k}{val}"
                          for k, val in list(ln.dependencies.items())[:8])
        more = f", ... ({len(ln.dependencies) - 8} more)" if len(ln.dependencies) > 8 else ""
        lines.append(("deps", f"{len(ln.dependencies)} from {ln.dependencies_source}: {shown}{more}"))
    if ln.schema is not None:
        s = ln.schema
        if s.tensor_count is not None:
            files = len({t.file for t in s.tensors})
            cut = f" ({len(s.tensors)} listed)" if s.truncated else ""
            lines.append(("schema", f"{s.tensor_count} tensors in {files} safetensors file(s){cut}, {s.digest}"))
            for t in s.tensors[:10]:
                lines.append(("", f"  {t.name}  {t.dtype}[{', '.join(str(d) for d in t.shape)}]"))
            if len(s.tensors) > 10:
                lines.append(("", "  ... (show --json lists them all)"))
        if s.signature is not None:
            lines.append(("signature", s.signature if len(s.signature) <= 200 else s.signature[:197] + "..."))
    if ln.links:
        lines.append(("links", ", ".join(f"{k}={url}" for k, url in sorted(ln.links.items()))))
    return lines
