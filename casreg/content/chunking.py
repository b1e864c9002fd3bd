"""Content-defined chunking with FastCDC-2020 (the compiled ``pyfastcdc``).

Boundaries depend only on content and on :class:`ChunkParams`, so an insertion near the
start of a file moves only the chunks around it. The parameters are fixed per registry
(recorded in ``casreg.json``) because changing them would break dedup with older data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, wait
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
    helper: Executor | None = None,
) -> Iterator[tuple[memoryview, int]]:
    """The chunks of :func:`iter_chunks` (same cuts), as views into read buffers instead
    of copies, each with the id of the buffer it lies in.

    ``acquire(n)`` lends a buffer of at least ``n`` bytes and its id; the caller must not
    lend a buffer again while views of it are in use (a push hashes and compresses a
    chunk on a worker thread after it was yielded). Copying every chunk out of one reused
    buffer instead cost 0.1 s of CPU and 15 MB of fresh pages per 512 MiB push here.
    ``size_hint`` (the file's size) keeps the first buffer of a small file small.
    ``on_read(view, buffer id)`` sees every byte once, in order, as in :func:`iter_chunks`;
    the same lending rule covers the views it is given. ``helper``: an executor whose
    thread cuts the second part of each block meanwhile (:func:`cut_in_two`; same cuts)
    and reads the next block while this one's chunks are yielded; ``acquire`` is then
    asked for the next buffer before the chunks of the current one are yielded, and must
    lend another (at least two buffers, else :class:`RuntimeError`).
    """
    if block_size <= params.max_size:
        raise ValueError(f"block_size {block_size} must exceed max_size {params.max_size}")
    chunker = params.chunker()

    def cut(buf: memoryview) -> list[tuple[int, int]]:
        return _cuts(chunker, buf) if helper is None else cut_in_two(params, buf, helper)

    first = min(block_size, size_hint + 1)  # one byte more than expected, to see the end
    buf_id, whole = acquire(first)
    want, carried = first, 0
    n = _fill(stream, whole[:want])
    while True:
        if on_read is not None and n:
            on_read(whole[carried:carried + n], buf_id)
        filled, at_end = carried + n, n < want
        cuts = cut(whole[:filled])
        carried = 0
        if not at_end and cuts:  # the block's last chunk may have been cut short: cut it again with the next
            last_offset, _ = cuts.pop()
            carried = filled - last_offset
        want = block_size
        reading: Future[int] | None = None
        if not at_end and helper is not None:  # read the next block on the helper while these chunks go out
            next_id, nxt = acquire(carried + want)
            if next_id == buf_id:
                raise RuntimeError("iter_chunk_views with a helper needs at least two buffers to lend")
            nxt[:carried] = whole[filled - carried:filled]
            reading = helper.submit(_fill, stream, nxt[carried:carried + want])
        try:
            for offset, length in cuts:
                yield whole[offset:offset + length], buf_id
        finally:
            if reading is not None:
                wait([reading])  # a consumer that stops early gets its buffer back only once it is written
        if at_end:
            return
        if reading is None:
            next_id, nxt = acquire(carried + want)
            nxt[:carried] = whole[filled - carried:filled]  # may be the same buffer: memoryview copies overlaps right
            n = _fill(stream, nxt[carried:carried + want])
        else:
            n = reading.result()
        buf_id, whole = next_id, nxt


def _cuts(chunker: FastCDC, buf: memoryview) -> list[tuple[int, int]]:
    return [(c.offset, c.length) for c in chunker.cut_buf(buf)]


def cut_in_two(params: ChunkParams, buf: memoryview, helper: Executor) -> list[tuple[int, int]]:
    """The cuts of ``buf`` (exactly ``_cuts(params.chunker(), buf)``), found on two threads.

    FastCDC finds each cut by scanning from the previous one, so the cuts of a buffer are
    found one after the other. But where two scans meet at a cut they agree from there on:
    a cut depends only on the chunk's start and the bytes after it. So a ``helper`` thread
    cuts from a point ``split`` near the middle as if a chunk started there, while this
    thread cuts from the start; once this thread's cuts pass ``split``, the first chunk of
    ours that starts where one of the helper's does joins the two lists. If none does (the
    scans never meet: a run of identical bytes cut at ``max_size`` every time), this thread
    simply goes on to the end. pyfastcdc scans without the GIL, so the two run at once: a
    push that stores few new bytes spends most of its main thread cutting."""
    chunker = params.chunker()
    if len(buf) < 4 * params.avg_size:
        return _cuts(chunker, buf)
    # this thread also cuts a chunk or two past the split before the scans meet
    split = (len(buf) - params.avg_size) // 2
    theirs = helper.submit(_cuts, params.chunker(), buf[split:])
    try:
        ours: list[tuple[int, int]] = []
        later: list[tuple[int, int]] = []
        starts: dict[int, int] | None = None
        for c in chunker.cut_buf(buf):
            if c.offset >= split:
                if starts is None:
                    later = theirs.result()
                    starts = {split + off: i for i, (off, _) in enumerate(later)}
                i = starts.get(c.offset)
                if i is not None:
                    return ours + [(split + off, n) for off, n in later[i:]]
            ours.append((c.offset, c.length))
        return ours
    finally:
        wait([theirs])  # never leave the helper reading a buffer the caller may lend again


def chunk_bytes(data: bytes, params: ChunkParams = DEFAULT_CHUNK_PARAMS) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of an in-memory buffer (golden vectors, tools)."""
    return [(c.offset, c.length) for c in params.chunker().cut_buf(data)]
