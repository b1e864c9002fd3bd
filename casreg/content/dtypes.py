"""Where a file holds floating-point tensor data, for the push's choice of codec.

A push stores chunks of bf16/fp16/fp32 tensor data with the ``PLANES`` codec
(:mod:`casreg.content.planes`) when it knows that a chunk holds such data and where its
elements start. For safetensors files the header says it exactly (no guessing); chunks
of other files get a guess from their own bytes (:mod:`casreg.content.float_probe`).
The header is read from the local file being pushed and treated as untrusted input: a
file whose header does not parse simply gets no hints from it, never an error.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass

from casreg.content.codec import FloatHint
from casreg.content.lazy import read_local_header

__all__ = ["FloatLayout", "float_layout", "SAFETENSORS_SUFFIX"]

SAFETENSORS_SUFFIX = ".safetensors"
#: Element width of the dtypes the PLANES codec takes.
FLOAT_WIDTHS = {"BF16": 2, "F16": 2, "F32": 4}
#: A chunk gets a hint when float elements of one width fill at least half of it.
_MIN_SHARE = 0.5
#: Regions looked at per chunk (a chunk over thousands of tiny tensors gets no hint).
_MAX_REGIONS_PER_CHUNK = 64


@dataclass(frozen=True, slots=True)
class FloatLayout:
    """Runs of floating-point tensor data in one file: ``starts[i]``..``ends[i]`` (file
    offsets) hold elements of ``widths[i]`` bytes, the first at ``starts[i]``."""

    starts: list[int]
    ends: list[int]
    widths: list[int]

    def hint(self, offset: int, length: int) -> FloatHint | None:
        """The codec hint for the chunk at ``offset`` of ``length`` bytes: the width of
        the float elements covering most of it and where the first whole one starts in
        the chunk, or ``None`` if float data covers less than half of it."""
        end = offset + length
        i = max(bisect_right(self.starts, offset) - 1, 0)
        cover: dict[tuple[int, int], int] = {}
        for j in range(i, min(i + _MAX_REGIONS_PER_CHUNK, len(self.starts))):
            s, e = self.starts[j], self.ends[j]
            if s >= end:
                break
            overlap = min(e, end) - max(s, offset)
            if overlap > 0:
                w = self.widths[j]
                key = (w, (s - offset) % w)  # elements of this width, this phase in the chunk
                cover[key] = cover.get(key, 0) + overlap
        if not cover:
            return None
        (width, head), covered = max(cover.items(), key=lambda kv: kv[1])
        return (width, head) if covered >= _MIN_SHARE * length else None


def float_layout(path: str | os.PathLike[str], size: int) -> FloatLayout | None:
    """The float regions of the safetensors file at ``path`` (``size`` bytes), merged
    where adjacent regions share a width and phase; ``None`` for anything else
    (not named ``*.safetensors``, unreadable, malformed, no float tensors)."""
    if not os.fspath(path).lower().endswith(SAFETENSORS_SUFFIX) or size < 8:
        return None
    try:
        tensors = read_local_header(path, size)
    except (OSError, ValueError):
        return None
    runs: list[tuple[int, int, int]] = []
    for t in sorted(tensors.values(), key=lambda t: t.start):
        w = FLOAT_WIDTHS.get(t.dtype)
        if w is None or t.end <= t.start:
            continue
        s, e = t.start, t.end
        if runs and runs[-1][2] == w and runs[-1][1] == s and (s - runs[-1][0]) % w == 0:
            runs[-1] = (runs[-1][0], e, w)
        else:
            runs.append((s, e, w))
    if not runs:
        return None
    return FloatLayout([r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs])
