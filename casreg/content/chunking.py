"""Content-defined chunking with FastCDC-2020 (the compiled ``pyfastcdc``).

Boundaries depend only on content and on :class:`ChunkParams`, so an insertion near the
start of a file moves only the chunks around it. The parameters are fixed per registry
(recorded in ``casreg.json``) because changing them would break dedup with older data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

__all__ = ["ChunkParams", "DEFAULT_CHUNK_PARAMS", "BLOCK_SIZE", "iter_chunks", "iter_chunk_views", "chunk_bytes"]

# Bytes read per block. Measured on 512 MiB: 32 MiB blocks cost 0.33 s of kernel time
# (glibc maps each fresh block and the kernel zero-fills it), 8 MiB blocks 0.09 s,
# since blocks that size are recycled from the heap. It must exceed max_size.
BLOCK_SIZE = 8 << 20


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


def _fill(stream: BinaryIO, view: memoryview) -> int:
    """Read until ``view`` is full or the stream ends; return the bytes read."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def iter_chunks(
    stream: BinaryIO,
    params: ChunkParams = DEFAULT_CHUNK_PARAMS,
    block_size: int = BLOCK_SIZE,
    on_read: Callable[[memoryview], object] | None = None,
) -> Iterator[bytes]:
    """Yield the chunks of a binary stream as ``bytes``, with bounded memory.

    The stream is read into one reused buffer of ``block_size`` bytes plus room for a
    carried chunk, and cut with FastCDC. Every chunk but a block's last is final (its cut
    point was found inside the block); the last may have been cut short by the block's
    end, so its bytes move to the front of the buffer and are cut again with the next
    block. The result equals cutting the whole stream at once (tests/test_chunking.py).

    Chunks are copied out of the buffer, so callers may keep them; handing out views of
    fresh per-block buffers instead cost 0.3 s of kernel time zero-filling new pages per
    512 MiB. Push uses :func:`iter_chunk_views`, which lends views of a few recycled ones.

    ``on_read`` sees every byte of the stream exactly once, in order, in large pieces
    (for hashing the whole file without a second pass).
    """
    whole = memoryview(bytearray(params.max_size + block_size))

    def lend(need: int) -> tuple[int, memoryview]:  # always the one buffer: each chunk is copied out first
        return 0, whole

    seen = None if on_read is None else (lambda view, _: on_read(view))
    for view, _ in iter_chunk_views(stream, params, lend, size_hint=block_size, block_size=block_size, on_read=seen):
        yield bytes(view)


def iter_chunk_views(
    stream: BinaryIO,
    params: ChunkParams,
    acquire: Callable[[int], tuple[int, memoryview]],
    *,
    size_hint: int,
    block_size: int = BLOCK_SIZE,
    on_read: Callable[[memoryview, int], object] | None = None,
) -> Iterator[tuple[memoryview, int]]:
    """The chunks of :func:`iter_chunks` (same cuts), as views into read buffers instead
    of copies, each with the id of the buffer it lies in.

    ``acquire(n)`` lends a buffer of at least ``n`` bytes and its id; the caller must not
    lend a buffer again while views of it are in use (a push hashes and compresses a
    chunk on a worker thread after it was yielded). Copying every chunk out of one reused
    buffer instead cost 0.1 s of CPU and 15 MB of fresh pages per 512 MiB push here.
    ``size_hint`` (the file's size) keeps the first buffer of a small file small.
    ``on_read(view, buffer id)`` sees every byte once, in order, as in :func:`iter_chunks`;
    the same lending rule covers the views it is given.
    """
    if block_size <= params.max_size:
        raise ValueError(f"block_size {block_size} must exceed max_size {params.max_size}")
    chunker = params.chunker()
    first = min(block_size, size_hint + 1)  # one byte more than expected, to see the end
    buf_id, whole = acquire(first)
    want, carried = first, 0
    while True:
        n = _fill(stream, whole[carried:carried + want])
        if on_read is not None and n:
            on_read(whole[carried:carried + n], buf_id)
        filled, at_end = carried + n, n < want
        cuts = [(c.offset, c.length) for c in chunker.cut_buf(whole[:filled])]
        carried = 0
        if not at_end and cuts:  # the block's last chunk may have been cut short: cut it again with the next
            last_offset, _ = cuts.pop()
            carried = filled - last_offset
        for offset, length in cuts:
            yield whole[offset:offset + length], buf_id
        if at_end:
            return
        want = block_size
        next_id, nxt = acquire(carried + want)
        nxt[:carried] = whole[filled - carried:filled]  # may be the same buffer: memoryview copies overlaps right
        buf_id, whole = next_id, nxt


def chunk_bytes(data: bytes, params: ChunkParams = DEFAULT_CHUNK_PARAMS) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of an in-memory buffer (golden vectors, tools)."""
    return [(c.offset, c.length) for c in params.chunker().cut_buf(data)]
