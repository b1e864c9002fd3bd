"""The PLANES codec's C loops (casreg/content/_planes_c.c): the same planes and elements as
numpy's operations in casreg/content/planes.py for any bytes, any length and any address;
every misuse a Python exception, never a crash; and built wherever the install could build
them (a C compiler and Python's headers), so a C file that stopped compiling cannot hide
behind the numpy path."""

from __future__ import annotations

import numpy as np
import pytest
from codec_loops import assert_built
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg.content import planes

loops = planes._loops
needs_loops = pytest.mark.skipif(loops is None, reason="the PLANES codec's C loops are not built here")


def numpy_planes(raw: bytes, width: int) -> list[bytes]:
    """Plane i: byte i of each element rotated left by one bit (docs/FORMAT.md §4.1), on
    64-bit integers (nothing shared with either implementation)."""
    n = len(raw) // width
    acc = np.zeros(n, np.uint64)
    for i in range(width):
        acc |= np.frombuffer(raw, np.uint8)[i::width][:n].astype(np.uint64) << np.uint64(8 * i)
    bits = np.uint64(8 * width)
    mask = (np.uint64(1) << bits) - np.uint64(1)
    rotated = ((acc << np.uint64(1)) | (acc >> (bits - np.uint64(1)))) & mask
    return [((rotated >> np.uint64(8 * i)) & np.uint64(0xFF)).astype(np.uint8).tobytes() for i in range(width)]


@needs_loops
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=4099), width=st.sampled_from(planes.WIDTHS), offset=st.integers(0, 7))
def test_split_and_join_agree_with_the_spec_at_any_address(data: bytes, width: int, offset: int) -> None:
    assert loops is not None
    n = len(data) // width
    raw = data[:n * width]
    src = memoryview(bytearray(offset + len(raw)))[offset:]  # elements at any address
    src[:] = raw
    split = [bytearray(n) for _ in range(width)]
    loops.split(src, split)
    assert [bytes(p) for p in split] == numpy_planes(raw, width)
    dst = memoryview(bytearray(offset + len(raw)))[offset:]
    loops.join(split, dst)
    assert bytes(dst) == raw


@needs_loops
@pytest.mark.parametrize("width", planes.WIDTHS)
def test_the_loops_and_numpys_give_the_same_payload(width: int) -> None:
    rng = np.random.default_rng(width)
    raw = b"\x05" + rng.normal(0, 0.02, 70_001).astype(f"<f{width}").tobytes() + b"\x06"
    with_c = planes.encode_planes(raw, width, 1)
    try:
        planes._loops = None
        with_numpy = planes.encode_planes(raw, width, 1)
    finally:
        planes._loops = loops
    assert with_c == with_numpy and with_c is not None


@needs_loops
@pytest.mark.parametrize("call, error", [
    (lambda: loops.join([b"ab", b"cd", b"ef"], bytearray(6)), ValueError),  # three planes
    (lambda: loops.join([b"ab"], bytearray(2)), ValueError),
    (lambda: loops.join([b"ab", b"c"], bytearray(4)), ValueError),  # planes of two lengths
    (lambda: loops.join([b"ab", b"cd"], bytearray(5)), ValueError),  # a destination of another size
    (lambda: loops.join([b"ab", b"cd"], bytearray(3)), ValueError),
    (lambda: loops.join([b"ab", b"cd"], b"xxxx"), TypeError),  # read-only destination
    (lambda: loops.join([b"ab", 7], bytearray(4)), TypeError),  # not a buffer
    (lambda: loops.join(7, bytearray(4)), TypeError),  # not a sequence
    (lambda: loops.join([b"ab", b"cd"]), TypeError),
    (lambda: loops.split(b"abcd", [bytearray(2), b"xy"]), BufferError),  # a read-only plane
    (lambda: loops.split(b"abcde", [bytearray(2), bytearray(2)]), ValueError),  # a partial element
    (lambda: loops.split(b"abcd", [bytearray(1), bytearray(1)]), ValueError),
    (lambda: loops.split(b"abcd", [bytearray(1)] * 4 + [bytearray(1)]), ValueError),  # five planes
    (lambda: loops.split("text", [bytearray(2), bytearray(2)]), TypeError),
    (lambda: loops.same(b"ab", "ab"), TypeError),  # not a buffer
    (lambda: loops.same(b"ab"), TypeError),
    (lambda: loops.distinct("text"), TypeError),  # not a buffer
    (lambda: loops.distinct(), TypeError),
])
def test_every_misuse_is_an_exception(call, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        call()


@needs_loops
@settings(max_examples=300, deadline=None)
@given(a=st.binary(max_size=3000), flip=st.integers(-1, 3000), cut=st.integers(-1, 3000),
       offsets=st.tuples(st.integers(0, 7), st.integers(0, 7)))
def test_same_is_byte_equality_at_any_address(a: bytes, flip: int, cut: int, offsets: tuple[int, int]) -> None:
    """``same(a, b)``, the check before write's comparison: equal lengths and bytes, for
    views at any address, whatever differs (one bit anywhere, one byte fewer)."""
    assert loops is not None
    b = bytearray(a)
    if 0 <= flip < len(b):
        b[flip] ^= 1 << (flip % 8)
    if 0 <= cut < len(b):
        del b[cut:]

    def at(data: bytes | bytearray, offset: int) -> memoryview:
        buf = memoryview(bytearray(len(data) + 8))
        buf[offset:offset + len(data)] = data
        return buf[offset:offset + len(data)].toreadonly()

    assert loops.same(at(a, offsets[0]), at(b, offsets[1])) == (a == bytes(b))
    assert loops.same(a, b) == (a == bytes(b))
    assert loops.same(a, at(a, offsets[1]))


@needs_loops
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), offset=st.integers(0, 7))
def test_distinct_counts_each_offset_modulo_4_at_any_address(data: bytes, offset: int) -> None:
    """``distinct(buf)``, the float probe's count: the distinct byte values at offsets 0, 1,
    2 and 3 modulo 4 of ``buf`` (counted from its start, not from an aligned address)."""
    assert loops is not None
    buf = memoryview(bytearray(len(data) + 8))
    buf[offset:offset + len(data)] = data
    want = tuple(len(set(data[i::4])) for i in range(4))
    assert loops.distinct(buf[offset:offset + len(data)].toreadonly()) == want
    assert loops.distinct(data) == want


def test_the_loops_are_built_wherever_they_can_be() -> None:
    assert_built(loops, "casreg/content/_planes_c.c")
