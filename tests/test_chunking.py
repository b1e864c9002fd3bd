"""Chunking a stream block by block must give exactly the cut points of cutting the
whole buffer at once, whatever the block size and however short the reads are."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg.content.chunking import ChunkParams, chunk_bytes, iter_chunk_views, iter_chunks

SMALL = ChunkParams(avg_size=1024, min_size=256, max_size=4096)


class TrickleReader(io.RawIOBase):
    """A stream whose reads return at most ``step`` bytes, like a pipe or a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


# Short and random streams, block sizes just above the largest chunk, reads of any size.
STREAMS = st.binary(min_size=0, max_size=60_000) | st.integers(0, 2**32).map(
    lambda seed: __import__("random").Random(seed).randbytes(50_000))
BLOCKS = st.integers(SMALL.max_size + 1, 30_000)
READS = st.integers(1, 40_000)


def _cuts(chunks) -> list[tuple[int, int]]:
    out, offset = [], 0
    for c in chunks:
        out.append((offset, len(c)))
        offset += len(c)
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=STREAMS, block=BLOCKS, step=READS,
)
def test_block_chunking_equals_whole_buffer(data: bytes, block: int, step: int) -> None:
    expected = chunk_bytes(data, SMALL)
    got = _cuts(iter_chunks(TrickleReader(data, step), SMALL, block_size=block))
    assert got == expected
    assert sum(n for _, n in got) == len(data)
    assert all(n <= SMALL.max_size for _, n in got)
    assert all(n >= SMALL.min_size for _, n in got[:-1])


def test_chunks_are_views_of_the_input_bytes() -> None:
    data = bytes(range(256)) * 400
    pieces = [bytes(c) for c in iter_chunks(io.BytesIO(data), SMALL, block_size=10_000)]
    assert b"".join(pieces) == data


def test_block_size_must_exceed_max_chunk() -> None:
    with pytest.raises(ValueError):
        list(iter_chunks(io.BytesIO(b"x" * 10), SMALL, block_size=SMALL.max_size))


def test_invalid_params_are_refused() -> None:
    with pytest.raises(ValueError):
        ChunkParams(avg_size=100)
    with pytest.raises(ValueError):
        ChunkParams(algorithm="rabin")


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=50_000), block=st.integers(SMALL.max_size + 1, 20_000),
       step=st.integers(1, 30_000))
def test_on_read_sees_every_byte_once_in_order(data: bytes, block: int, step: int) -> None:
    seen: list[bytes] = []
    chunks = list(iter_chunks(TrickleReader(data, step), SMALL, block_size=block,
                              on_read=lambda view: seen.append(bytes(view))))
    assert b"".join(seen) == data == b"".join(chunks)


class LendingPool:
    """Lends buffers the way push does (round robin over ``count``), poisoning each one
    before it is lent again, so a chunk that was consumed too late, or a carry copied
    from the wrong place, shows up as wrong bytes."""

    def __init__(self, count: int) -> None:
        self.bufs: list[bytearray] = [bytearray() for _ in range(count)]
        self.next = 0
        self.lent: list[int] = []

    def acquire(self, need: int) -> tuple[int, memoryview]:
        i = self.next
        self.next = (i + 1) % len(self.bufs)
        if len(self.bufs[i]) < need:
            self.bufs[i] = bytearray(need)
        self.bufs[i][:] = b"\xa5" * len(self.bufs[i])
        self.lent.append(need)
        return i, memoryview(self.bufs[i])


@settings(max_examples=80, deadline=None)
@given(
    data=STREAMS, block=BLOCKS, step=READS,
    hint=st.integers(0, 70_000),
    count=st.integers(2, 4),
)
def test_chunk_views_equal_chunks(data: bytes, block: int, step: int, hint: int, count: int) -> None:
    """Same cuts and bytes as iter_chunks for any block size, read size, buffer count and
    size hint (a wrong hint is a file that changed size), each view read before the next
    buffer is lent; every byte reaches on_read once, in order."""
    pool, seen = LendingPool(count), []
    pieces = []
    for view, buf_id in iter_chunk_views(TrickleReader(data, step), SMALL, pool.acquire, size_hint=hint,
                                         block_size=block, on_read=lambda v, i: seen.append(bytes(v))):
        assert 0 <= buf_id < count and view.obj is pool.bufs[buf_id]
        pieces.append(bytes(view))
    assert _cuts(pieces) == chunk_bytes(data, SMALL)
    assert b"".join(pieces) == data == b"".join(seen)
    assert pool.lent[0] <= min(block, hint + 1)  # a small file gets a small first buffer


def test_chunk_views_lend_each_buffer_only_after_its_chunks() -> None:
    """With 2 buffers, the chunks of block k stay intact while block k+1 is being cut
    (the pool poisons a buffer when it lends it again, which older views then show)."""
    import random
    data = random.Random(7).randbytes(200_000)
    pool = LendingPool(2)
    held: list[tuple[memoryview, int, bytes]] = []  # view, lending it came from, expected bytes
    offset, overwritten = 0, 0
    for view, _ in iter_chunk_views(io.BytesIO(data), SMALL, pool.acquire, size_hint=len(data),
                                    block_size=SMALL.max_size + 1000):
        lending = len(pool.lent)
        held.append((view, lending, data[offset:offset + len(view)]))
        offset += len(view)
        assert all(bytes(v) == want for v, when, want in held if when >= lending - 1)
        overwritten += sum(bytes(v) != want for v, when, want in held if when < lending - 1)
        held = [h for h in held if h[1] >= lending - 1]
    assert offset == len(data) and overwritten > 0
