"""Content-defined chunking with FastCDC-2020 (the compiled ``pyfastcdc``).

Boundaries depend only on content and on :class:`ChunkParams`, so an insertion near the
start of a file moves only the chunks around it. The parameters are fixed per registry
(recorded in ``casreg.json``) because changing them would break dedup with older data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

__all__ = ["ChunkParams", "DEFAULT_CHUNK_PARAMS", "iter_chunks", "chunk_bytes"]


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC-2020 parameters. ``avg_size`` is pyfastcdc's mask target; pyfastcdc cuts
    no chunk shorter than ``min_size`` (except a file's last) or longer than ``max_size``."""

    avg_size: int = 1 << 20
    min_size: int = 1 << 18
    max_size: int = 1 << 22
    normalization: int = 1
    algorithm: str = "fastcdc2020"

    def __post_init__(self) -> None:
        if self.algorithm != "fastcdc2020":
            raise ValueError(f"unknown chunking algorithm {self.algorithm!r}")
        FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size,
                normalized_chunking=self.normalization)  # validates the bounds

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ChunkParams:
        return cls(**{k: d[k] for k in ("avg_size", "min_size", "max_size", "normalization", "algorithm") if k in d})  # type: ignore[arg-type]

    def chunker(self) -> FastCDC:
        return FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size,
                       normalized_chunking=self.normalization)


DEFAULT_CHUNK_PARAMS = ChunkParams()


def iter_chunks(stream: BinaryIO, params: ChunkParams = DEFAULT_CHUNK_PARAMS) -> Iterator[bytes]:
    """Yield the chunks of a binary stream as independent ``bytes`` objects.

    pyfastcdc's stream chunker reuses its buffer, so each chunk is copied out before the
    next is cut; memory stays bounded by a few ``max_size`` buffers whatever the file size.
    """
    for chunk in params.chunker().cut_stream(stream):
        yield bytes(chunk.data)


def chunk_bytes(data: bytes, params: ChunkParams = DEFAULT_CHUNK_PARAMS) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of an in-memory buffer (golden vectors, tools)."""
    return [(c.offset, c.length) for c in params.chunker().cut_buf(data)]
