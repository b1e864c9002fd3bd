"""The tensor schema of a push: names, dtypes and shapes of the tensors of every
safetensors file of the source, read from each file's header only (no tensor bytes).

A header is untrusted input: it is read only if its 8-byte length is at most
:data:`MAX_SCHEMA_HEADER_BYTES` and the file holds it, and it must pass the same checks as
a lazily opened file (:func:`casreg.content.lazy.parse_header`). A file whose header does
not is left out of the schema (logged); nothing here fails a push.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from blake3 import blake3

from casreg.content.lazy import MAX_LOCAL_HEADER_BYTES, read_local_header
from casreg.content.source import SourceFile
from casreg.records import ModelSchema, TensorSpec

__all__ = ["MAX_SCHEMA_HEADER_BYTES", "MAX_SCHEMA_JSON", "tensor_schema", "schema_digest", "file_tensors"]

log = logging.getLogger(__name__)

#: Headers longer than this are not read for the schema (the reference implementation
#: allows 100 MB; a header of a 70B model's shard is well under 1 MiB).
MAX_SCHEMA_HEADER_BYTES = MAX_LOCAL_HEADER_BYTES
#: The tensors a record lists, as JSON, at most; beyond, the list is cut (``truncated``)
#: while ``digest`` and ``tensor_count`` still cover every tensor.
MAX_SCHEMA_JSON = 256 << 10


def file_tensors(path: str, size: int, label: str) -> list[TensorSpec] | None:
    """The tensors of the safetensors file at ``path`` (``size`` bytes), named ``label``
    in the schema; ``None`` if its header cannot be read or is not a valid one."""
    try:
        tensors = read_local_header(path, size, MAX_SCHEMA_HEADER_BYTES)
    except (OSError, ValueError) as err:
        log.info("casreg: no schema from %s: %s", label, str(err)[:200])
        return None
    return [TensorSpec(label, t.name, t.dtype, t.shape) for t in tensors.values()]


def schema_digest(tensors: Iterable[TensorSpec], *, single_file: bool) -> str:
    """BLAKE3 of the tensors, canonically: ``[[file, name, dtype, shape], ...]`` sorted,
    compact JSON; ``file`` is ``""`` for a single-file version (renaming the file keeps
    its schema)."""
    rows = sorted([("" if single_file else t.file), t.name, t.dtype, list(t.shape)] for t in tensors)
    return "blake3:" + blake3(json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def tensor_schema(files: Iterable[SourceFile], *, single_file: bool) -> ModelSchema | None:
    """The schema of the safetensors files among ``files`` (by the ``.safetensors``
    suffix), ``None`` if there are none with a readable header."""
    tensors: list[TensorSpec] = []
    found = False
    for f in files:
        if not f.relpath.lower().endswith(".safetensors"):
            continue
        got = file_tensors(f.abspath, f.size, f.relpath)
        if got is not None:
            found = True
            tensors.extend(got)
    if not found:
        return None
    tensors.sort(key=lambda t: (t.file, t.name))
    kept, used = [], 2
    for t in tensors:
        used += len(json.dumps([t.file, t.name, t.dtype, list(t.shape)], ensure_ascii=False)) + 40
        if used > MAX_SCHEMA_JSON:
            break
        kept.append(t)
    return ModelSchema(digest=schema_digest(tensors, single_file=single_file), tensor_count=len(tensors),
                       truncated=len(kept) < len(tensors), tensors=tuple(kept))
