"""The DELTA codec's C loop (casreg/content/_delta_c.c): the same residuals and chunks as
the spec and as numpy's operations, for any bytes at any address; every misuse an
exception, never a crash; and built wherever an install can build it."""

from __future__ import annotations

import pytest
from codec_loops import assert_built
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg.content import delta
from casreg.content.delta import OP_SUB, OP_XOR, apply_into

loops = delta._loops
needs_loops = pytest.mark.skipif(loops is None, reason="the DELTA codec's C loop is not built here")


def spec_residual(chunk: bytes, base: bytes, op: int, width: int, head: int) -> bytes:
    """docs/FORMAT.md §4.2, element by element in Python: the residual of ``chunk``."""
    if op == OP_XOR:
        return bytes(a ^ b for a, b in zip(chunk, base))
    out = bytearray(a ^ b for a, b in zip(chunk, base))  # bytes outside whole elements
    bits = 8 * width
    lo = min(head, len(chunk))
    for at in range(lo, lo + (len(chunk) - lo) // width * width, width):
        d = (int.from_bytes(chunk[at:at + width], "little") - int.from_bytes(base[at:at + width], "little"))
        d %= 1 << bits
        signed = d - (1 << bits) if d >> (bits - 1) else d
        form = signed if signed >= 0 else (1 << (bits - 1)) + (-signed - 1)
        out[at:at + width] = form.to_bytes(width, "little")
    return bytes(out)


def applied(data: bytes, pieces: list[bytes], op: int, width: int, head: int, inverse: bool, offset: int,
            with_c: bool) -> bytes:
    """``apply_into`` of ``data`` placed ``offset`` bytes into a buffer, by the C loop or numpy."""
    out = memoryview(bytearray(offset + len(data)))[offset:]
    out[:] = data
    saved = delta._loops
    delta._loops = loops if with_c else None
    try:
        apply_into(out, op, width, head, pieces, inverse=inverse)
    finally:
        delta._loops = saved
    return bytes(out)


ops = st.sampled_from([(OP_XOR, 0, 0), (OP_SUB, 2, 0), (OP_SUB, 2, 1), (OP_SUB, 4, 0), (OP_SUB, 4, 1),
                       (OP_SUB, 4, 2), (OP_SUB, 4, 3)])


@needs_loops
@settings(max_examples=300, deadline=None)
@given(chunk=st.binary(max_size=300), data=st.data(), op=ops, offset=st.integers(0, 7))
def test_the_loop_gives_the_specs_residual_and_back(chunk: bytes, data: st.DataObject,
                                                    op: tuple[int, int, int], offset: int) -> None:
    """Any bytes, any base split into pieces (zero-padded when short), any address."""
    cut = sorted(data.draw(st.lists(st.integers(0, len(chunk)), max_size=3), label="cuts"))
    whole = data.draw(st.binary(min_size=len(chunk), max_size=len(chunk)), label="base")
    short = data.draw(st.integers(0, len(chunk)), label="base length")
    bounds = [0, *[min(c, short) for c in cut], short]
    pieces = [whole[a:b] for a, b in zip(bounds, bounds[1:]) if b > a] or [b""]
    base = whole[:short] + bytes(len(chunk) - short)
    code, width, head = op
    residual = applied(chunk, pieces, code, width, head, False, offset, with_c=True)
    assert residual == spec_residual(chunk, base, code, width, head)
    assert residual == applied(chunk, pieces, code, width, head, False, offset, with_c=False)
    assert applied(residual, pieces, code, width, head, True, offset, with_c=True) == chunk


@needs_loops
@pytest.mark.parametrize("width", [2, 4])
def test_large_chunks_agree_with_numpy(width: int) -> None:
    """A 4 MiB chunk against its parent, both ways, in each direction of change."""
    import numpy as np

    rng = np.random.default_rng(width)
    parent = rng.normal(0, 0.02, (4 << 20) // width).astype(f"<f{width}")
    child = (parent + rng.normal(0, 1e-4, parent.size).astype(parent.dtype)).tobytes()
    pieces = [parent.tobytes()[:1 << 20], parent.tobytes()[1 << 20:]]
    for head in range(width):
        c = applied(child, pieces, OP_SUB, width, head, False, 1, with_c=True)
        assert c == applied(child, pieces, OP_SUB, width, head, False, 1, with_c=False)
        assert applied(c, pieces, OP_SUB, width, head, True, 3, with_c=True) == child


@needs_loops
@pytest.mark.parametrize("call, error", [
    (lambda: loops.apply(bytearray(4), b"abc", 0, 0, 0, False), ValueError),  # a base of another length
    (lambda: loops.apply(bytearray(4), b"abcde", 1, 2, 0, False), ValueError),
    (lambda: loops.apply(bytearray(4), b"abcd", 2, 2, 0, False), ValueError),  # an unknown op
    (lambda: loops.apply(bytearray(4), b"abcd", -1, 0, 0, False), ValueError),
    (lambda: loops.apply(bytearray(4), b"abcd", 1, 3, 0, False), ValueError),  # width 3
    (lambda: loops.apply(bytearray(4), b"abcd", 1, 2, 2, False), ValueError),  # head >= width
    (lambda: loops.apply(bytearray(4), b"abcd", 1, 4, -1, False), ValueError),
    (lambda: loops.apply(b"xxxx", b"abcd", 0, 0, 0, False), TypeError),  # a read-only chunk
    (lambda: loops.apply(bytearray(4), 7, 0, 0, 0, False), TypeError),  # not a buffer
    (lambda: loops.apply(bytearray(4), b"abcd", 0, 0, 0), TypeError),  # an argument short
    (lambda: loops.apply(bytearray(4), b"abcd", 1 << 40, 0, 0, False), OverflowError),
])
def test_every_misuse_is_an_exception(call, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        call()


def test_the_loop_is_built_wherever_it_can_be() -> None:
    assert_built(loops, "casreg/content/_delta_c.c")
