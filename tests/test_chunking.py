"""Chunking a stream block by block must give exactly the cut points of cutting the
whole buffer at once, whatever the block size and however short the reads are."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg.chunking import ChunkParams, chunk_bytes, iter_chunks

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


def _cuts(chunks) -> list[tuple[int, int]]:
    out, offset = [], 0
    for c in chunks:
        out.append((offset, len(c)))
        offset += len(c)
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=60_000) | st.integers(0, 2**32).map(
        lambda seed: __import__("random").Random(seed).randbytes(50_000)),
    block=st.integers(SMALL.max_size + 1, 30_000),
    step=st.integers(1, 40_000),
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
