"""Plain-text renderings of records that ``casreg show`` and the web page share: byte
counts in binary units and a version's lineage as (label, text) rows. No I/O; the caller
escapes the text for its medium (the terminal escapes control characters, the web
template HTML-escapes)."""

from __future__ import annotations

from casreg.records import Version

__all__ = ["human_bytes", "lineage_rows", "LIST_LIMIT"]

#: Tensors and dependencies listed by name before "... N more (the JSON lists them all)".
LIST_LIMIT = 10
_DEPS_SHOWN = 8
_SIGNATURE_CHARS = 200


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, the only ones human output uses (``500.0 MiB``, never
    ``524.3 MB``); ``--json`` gives exact byte counts."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def lineage_rows(v: Version, *, links: bool = True) -> list[tuple[str, str]]:
    """The lineage of ``v`` (docs/lineage.md) as (label, text) rows: ``code``,
    ``hardware``, ``deps``, ``schema`` (then one row per listed tensor, label ``""``),
    ``signature`` and, with ``links``, ``links``. A field the record lacks has no row."""
    ln, rows = v.lineage, []
    if ln.code is not None:
        c = ln.code
        state = "" if c.dirty is None else ("dirty" if c.dirty else "clean")
        where = {"code": "from --code", "given": "from --git-commit",
                 "model-path": "from the pushed path's repository"}.get(c.source or "", c.source or "")
        bits = ", ".join(b for b in (c.branch, state) if b)
        rows.append(("code", f"{c.commit or '?'}" + (f" ({bits})" if bits else "")
                     + (f" {c.remote}" if c.remote else "") + (f"  [{where}]" if where else "")))
    if ln.hardware is not None:
        h = ln.hardware
        parts = []
        if h.text:
            parts.append(h.text)
        elif h.gpu_count:
            parts.append(f"{h.gpu_count}x {h.gpu_type or 'GPU'}")
        elif h.gpu_count == 0:
            parts.append("no GPU")
        if h.cpu_model or h.cpu_count:
            parts.append(f"CPU {h.cpu_model or '?'}" + (f" x{h.cpu_count}" if h.cpu_count else ""))
        if h.memory_bytes:
            parts.append(f"{human_bytes(h.memory_bytes)} memory")
        if h.cuda_visible_devices is not None:
            parts.append(f"CUDA_VISIBLE_DEVICES={h.cuda_visible_devices}")
        rows.append(("hardware", ", ".join(parts or ["?"]) + (f"  [{h.source}]" if h.source else "")))
    if ln.dependencies_source is not None or ln.dependencies:
        shown = ", ".join(f"{k}=={val}" if val and val[0].isalnum() else f"{k}{val}"
                          for k, val in list(ln.dependencies.items())[:_DEPS_SHOWN])
        left = len(ln.dependencies) - _DEPS_SHOWN
        more = f", ... ({left} more: the JSON lists them all)" if left > 0 else ""
        rows.append(("deps", f"{len(ln.dependencies)} from {ln.dependencies_source or '?'}"
                     + (f": {shown}{more}" if shown else "")))
    if ln.schema is not None:
        sc = ln.schema
        if sc.tensor_count is not None:
            files = len({t.file for t in sc.tensors})
            cut = f" ({len(sc.tensors)} listed)" if sc.truncated else ""
            rows.append(("schema", f"{sc.tensor_count} tensors in {files} safetensors file(s){cut}, "
                                   f"{sc.digest or '?'}"))
            rows += [("", f"{t.name}  {t.dtype}[{', '.join(str(d) for d in t.shape)}]")
                     for t in sc.tensors[:LIST_LIMIT]]
            if len(sc.tensors) > LIST_LIMIT:
                rows.append(("", f"... {len(sc.tensors) - LIST_LIMIT} more (the JSON lists them all)"))
        if sc.signature is not None:
            sig = sc.signature
            rows.append(("signature", sig if len(sig) <= _SIGNATURE_CHARS else sig[:_SIGNATURE_CHARS - 3] + "..."))
    if links and ln.links:
        rows.append(("links", ", ".join(f"{k}={url}" for k, url in sorted(ln.links.items()))))
    return rows
