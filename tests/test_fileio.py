"""casreg/storage/fileio.py: every byte written, in order, in calls of bounded size."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import casreg.storage.fileio as fileio
from casreg.storage.fileio import WRITE_PIECE, write_all

PARTS = st.lists(st.binary(max_size=300), max_size=12)


def _written(tmp_path: Path, parts: list[bytes], piece: int) -> bytes:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, parts, piece)
    finally:
        os.close(fd)
    return path.read_bytes()


@settings(max_examples=200, deadline=None)
@given(parts=PARTS, piece=st.integers(1, 700), kinds=st.lists(st.sampled_from(["bytes", "bytearray", "view"])))
def test_every_byte_in_order_in_bounded_calls(tmp_path_factory: pytest.TempPathFactory, parts: list[bytes],
                                              piece: int, kinds: list[str]) -> None:
    given_parts: list[bytes | bytearray | memoryview] = []
    for i, p in enumerate(parts):
        kind = kinds[i % len(kinds)] if kinds else "bytes"
        given_parts.append(bytearray(p) if kind == "bytearray" else memoryview(b"x" + p)[1:] if kind == "view" else p)
    calls: list[tuple[int, int]] = []
    real = os.writev

    def counting(fd: int, buffers: list[memoryview]) -> int:
        calls.append((len(buffers), sum(len(b) for b in buffers)))
        return real(fd, buffers)

    tmp_path = tmp_path_factory.mktemp("w")
    fileio.os.writev = counting  # type: ignore[attr-defined]  # (a fixture cannot wrap a hypothesis test's calls)
    try:
        out = _written(tmp_path, given_parts, piece)  # type: ignore[arg-type]
    finally:
        fileio.os.writev = real  # type: ignore[attr-defined]
    assert out == b"".join(parts)
    assert all(0 < size <= piece and n <= fileio._IOV_MAX for n, size in calls)
    assert len(calls) == (len(out) + piece - 1) // piece  # full pieces but the last: no call wasted


@settings(max_examples=100, deadline=None)
@given(parts=PARTS, cuts=st.lists(st.integers(1, 50), min_size=1))
def test_short_writes_are_resumed(tmp_path_factory: pytest.TempPathFactory, parts: list[bytes],
                                  cuts: list[int]) -> None:
    real = os.writev
    turn = iter(range(10**9))

    def short(fd: int, buffers: list[memoryview]) -> int:  # writes at most a few bytes per call
        limit = cuts[next(turn) % len(cuts)]
        data = b"".join(bytes(b) for b in buffers)[:limit]
        return real(fd, [memoryview(data)])

    tmp_path = tmp_path_factory.mktemp("s")
    fileio.os.writev = short  # type: ignore[attr-defined]
    try:
        out = _written(tmp_path, parts, WRITE_PIECE)
    finally:
        fileio.os.writev = real  # type: ignore[attr-defined]
    assert out == b"".join(parts)


def test_a_write_that_makes_no_progress_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio.os, "writev", lambda fd, buffers: 0)
    with pytest.raises(OSError) as err:
        _written(tmp_path, [b"abc"], WRITE_PIECE)
    assert err.value.errno == errno.EIO


def test_piece_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _written(tmp_path, [b"abc"], 0)


def test_a_large_write_goes_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 MiB run (what a pull writes at once) becomes 16 calls of 256 KiB."""
    sizes: list[int] = []
    real = os.writev
    monkeypatch.setattr(fileio.os, "writev", lambda fd, bufs: sizes.append(sum(map(len, bufs))) or real(fd, bufs))
    data = os.urandom(4 << 20)
    assert _written(tmp_path, [data], WRITE_PIECE) == data
    assert sizes == [WRITE_PIECE] * 16


def test_push_and_pull_never_write_more_than_a_piece_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every local write of a push and a pull of a multi-chunk file goes in calls of at
    most WRITE_PIECE bytes (a pull wrote 4 MiB runs at once, 2.8x slower here)."""
    import casreg

    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(6 << 20))
    largest = [0]
    real_write, real_writev = os.write, os.writev

    def write(fd: int, data: bytes) -> int:
        largest[0] = max(largest[0], len(data))
        return real_write(fd, data)

    def writev(fd: int, buffers: list[memoryview]) -> int:
        largest[0] = max(largest[0], sum(len(b) for b in buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "writev", writev)
    reg = casreg.Registry(str(tmp_path / "reg"))
    v = reg.push("m", src)
    assert v.chunk_count > 1 and v.stored_bytes > 4 * WRITE_PIECE
    reg.pull("m", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert 0 < largest[0] <= WRITE_PIECE
