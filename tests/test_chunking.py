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


# -- two threads cutting one block (chunking.cut_in_two) --------------------------------------------
RUNS = st.lists(st.tuples(st.sampled_from(["random", "zeros", "ramp"]), st.integers(1, 20_000)), min_size=1,
                max_size=6)


def runs_data(runs: list[tuple[str, int]], seed: int) -> bytes:
    rnd = __import__("random").Random(seed)
    return b"".join({"random": lambda n: rnd.randbytes(n), "zeros": lambda n: bytes(n),
                     "ramp": lambda n: bytes(i % 251 for i in range(n))}[kind](n) for kind, n in runs)


@settings(max_examples=150, deadline=None)
@given(runs=RUNS, seed=st.integers(0, 2**32))
def test_two_threads_cut_exactly_where_one_does(runs: list[tuple[str, int]], seed: int) -> None:
    """Random bytes (the scans meet after a chunk or two), runs of zeros (cut at max_size
    from wherever a scan starts: they may never meet) and mixtures of both."""
    from concurrent.futures import ThreadPoolExecutor

    from casreg.content.chunking import cut_in_two

    data = memoryview(runs_data(runs, seed))
    with ThreadPoolExecutor(1) as helper:
        assert cut_in_two(SMALL, data, helper) == chunk_bytes(bytes(data), SMALL)


@settings(max_examples=40, deadline=None)
@given(data=STREAMS, block=BLOCKS, step=READS, count=st.integers(2, 4))
def test_chunk_views_with_a_helper_thread_equal_chunks(data: bytes, block: int, step: int, count: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    """With a helper the next block is read ahead, into the next buffer lent, while this
    block's chunks go out: same cuts and bytes, every byte to on_read once, in order."""
    pool, pieces, seen = LendingPool(count), [], []
    with ThreadPoolExecutor(1) as helper:
        for view, buf_id in iter_chunk_views(TrickleReader(data, step), SMALL, pool.acquire, size_hint=len(data),
                                             block_size=block, helper=helper,
                                             on_read=lambda v, i: seen.append(bytes(v))):
            assert view.obj is pool.bufs[buf_id]
            pieces.append(bytes(view))
    assert _cuts(pieces) == chunk_bytes(data, SMALL)
    assert b"".join(pieces) == data == b"".join(seen)


class SlowReader(TrickleReader):
    def readinto(self, b) -> int:  # type: ignore[override]
        __import__("time").sleep(0.002)
        return super().readinto(b)


def test_a_consumer_that_stops_early_gets_no_write_after_it() -> None:
    """Closing the generator waits for the block being read ahead: once ``close`` returns,
    nothing writes into a lent buffer any more."""
    from concurrent.futures import ThreadPoolExecutor

    data = __import__("random").Random(7).randbytes(200_000)
    reader, pool = SlowReader(data, 1000), LendingPool(3)
    with ThreadPoolExecutor(1) as helper:
        views = iter_chunk_views(reader, SMALL, pool.acquire, size_hint=len(data), block_size=20_000, helper=helper)
        first = [bytes(next(views)[0]) for _ in range(3)]
        views.close()
        where = reader._pos
        __import__("time").sleep(0.1)
        assert reader._pos == where  # the read ahead had finished
    assert b"".join(first) == data[:sum(len(p) for p in first)]


def test_a_helper_needs_two_buffers() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as helper, pytest.raises(RuntimeError, match="two buffers"):
        list(iter_chunk_views(io.BytesIO(bytes(100_000)), SMALL, LendingPool(1).acquire, size_hint=100_000,
                              block_size=20_000, helper=helper))
