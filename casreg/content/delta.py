"""The delta codec (codec id 3, ``DELTA``): a chunk coded against bytes its registry
already stores, usually the parent version's bytes at the same offsets of the same file.

A fine-tune or a training checkpoint changes most weights only in their low mantissa
bits, so the XOR of a changed tensor with the same tensor of the parent version is mostly
zero in its sign, exponent and high mantissa bits: coded with the ``PLANES`` codec
(:mod:`casreg.content.planes`) or zstd, it takes a fraction of what the chunk takes on
its own (docs/benchmarks-codec.md, "Delta coding").

Encoding (docs/FORMAT.md §4.2, byte-exact)::

    payload := op:u8  width:u8  head:u8  inner:u8  count:u8  piece{count}  inner_payload
    piece   := digest[32]  offset:u32le  length:u32le

The *base* is the concatenation of the pieces, piece *i* being bytes
``[offset, offset + length)`` of the raw bytes of the chunk whose BLAKE3 is ``digest``,
padded with zero bytes to the chunk's raw size ``R`` (the pieces hold at most ``R`` bytes
in total). ``inner_payload`` is the *residual*, ``R`` bytes coded with codec ``inner``
(0 raw, 1 zstd, 2 planes: never 3). ``op`` 0 (``width`` 0, ``head`` 0): the chunk is
``residual XOR base``. ``op`` 1 (``width`` 2 or 4, ``head < width``): the chunk's whole
``width``-byte little-endian elements from byte ``head`` on are ``base + d`` (mod
``2**(8*width)``), where the residual's element at the same place holds ``d`` in
sign-magnitude form (``d`` if ``d >= 0``, else ``2**(8*width-1) + (-d - 1)``); the bytes
before ``head`` and after the last whole element are ``residual XOR base``. Small weight
updates give small ``d``: a residual whose high bytes are almost all zero (measured
against XOR in docs/benchmarks-codec.md, "Delta coding").

**Bounded chains (K = 1).** A base chunk must itself be stored with a non-delta codec:
a delta never depends on more than :data:`MAX_PIECES` chunks, each of which decodes on
its own, so decoding costs at most one extra level of reads and cycles are impossible.
A writer whose parent chunk is itself a delta uses that delta's own bases instead (the
grandparent's bytes at the same offsets) or stores the chunk with a plain codec.

This module only codes and decodes payloads; the caller supplies the base chunks' raw
bytes (checked against their digests: :class:`BaseSource`). Every malformed payload,
every base that is missing, itself a delta, the chunk itself or too short for its piece,
is an :class:`~casreg.errors.IntegrityError` naming what is wrong, never wrong bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from blake3 import blake3

from casreg.content.planes import same_bytes
from casreg.content.scratch import thread_buffer
from casreg.errors import IntegrityError

if TYPE_CHECKING:  # numpy is imported only where the C loop was not built, when a chunk is coded
    import numpy as np


def _load_loops() -> ModuleType | None:
    """:func:`apply_into`'s loop in C (casreg/content/_delta_c.c), an optional extension: an
    install without a C compiler has none, and numpy's whole-array operations below do the
    same (tests/test_delta_loops.py compares them). With it, coding and decoding deltas
    never imports numpy."""
    try:
        from casreg.content import _delta_c
    except ImportError:  # not built
        return None
    return _delta_c


_loops = _load_loops()

__all__ = ["OP_XOR", "OP_SUB", "MAX_PIECES", "MIN_SAVING", "Piece", "BaseSource", "DeltaHeader", "parse_header",
           "apply_into", "encode_delta", "decode_delta_into", "decode_delta", "decode_inner_into",
           "check_delta", "worth_it", "DELTA_CODEC", "Seg", "base_pieces"]

OP_XOR = 0
OP_SUB = 1
#: Pieces (base chunk ranges) one delta may name, at most: a 4 MiB chunk over parent
#: chunks of at least 256 KiB (the default minimum) touches at most 17 of them.
MAX_PIECES = 32
#: Delta is chosen only when it saves at least this share of the plain payload (and
#: :data:`MIN_SAVING_BYTES`): reading a delta costs reading its bases as well, so a
#: marginal saving is not worth the extra fetch (docs/benchmarks-codec.md).
MIN_SAVING = 0.10
MIN_SAVING_BYTES = 4096
_HEAD = struct.Struct("<BBBBB")
_PIECE = struct.Struct("<32sII")
#: Inner codecs a delta's residual may use: raw, zstd, planes (casreg.content.codec.Codec).
INNER_CODECS = frozenset({0, 1, 2})


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes ``[offset, offset + length)`` of the raw chunk ``digest``."""

    digest: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class DeltaHeader:
    """A delta payload's header: its pieces, the residual's codec and where the residual's
    payload starts in the delta payload."""

    op: int
    width: int
    head: int
    inner: int
    pieces: tuple[Piece, ...]
    body: int

    @property
    def bases(self) -> list[bytes]:
        """The distinct base chunk digests, in first-use order (what gc must keep)."""
        return list(dict.fromkeys(p.digest for p in self.pieces))


#: Raw bytes of a base chunk by digest, checked against it, with whether that chunk is
#: stored as a delta itself: ``(raw, is_delta)``. Raises :class:`IntegrityError` (naming
#: the object) when the chunk is missing or damaged.
BaseSource = Callable[[bytes], tuple[bytes | memoryview, bool]]


def parse_header(stored: bytes | memoryview, raw_size: int) -> DeltaHeader:
    """The header of a delta payload for a chunk of ``raw_size`` bytes, checked for
    everything that does not need the bases: a known op and inner codec, 1 to
    :data:`MAX_PIECES` pieces, each of at least one byte and at most ``raw_size`` in
    total. :class:`IntegrityError` otherwise."""
    payload = memoryview(stored).cast("B")
    if len(payload) < _HEAD.size:
        raise IntegrityError("delta payload is shorter than its header")
    op, width, head, inner, count = _HEAD.unpack_from(payload)
    if op == OP_XOR:
        if width or head:
            raise IntegrityError(f"delta payload: op 0 with width {width}, head {head}")
    elif op == OP_SUB:
        if width not in (2, 4) or head >= width:
            raise IntegrityError(f"delta payload: op 1 with width {width}, head {head}")
    else:
        raise IntegrityError(f"delta payload has unknown op {op}")
    if inner not in INNER_CODECS:
        raise IntegrityError(f"delta payload's residual has codec {inner}, not 0, 1 or 2")
    if not 1 <= count <= MAX_PIECES:
        raise IntegrityError(f"delta payload names {count} base pieces, not 1 to {MAX_PIECES}")
    body = _HEAD.size + count * _PIECE.size
    if len(payload) < body:
        raise IntegrityError("delta payload is truncated in its piece list")
    pieces = tuple(Piece(*_PIECE.unpack_from(payload, _HEAD.size + i * _PIECE.size)) for i in range(count))
    total = 0
    for p in pieces:
        if p.length == 0:
            raise IntegrityError(f"delta payload names an empty piece of blake3:{p.digest.hex()}")
        total += p.length
    if total > raw_size:
        raise IntegrityError(f"delta payload's pieces hold {total} bytes, more than the chunk's {raw_size}")
    return DeltaHeader(op, width, head, inner, pieces, body)


def _joined(size: int, pieces: Sequence[bytes | memoryview]) -> bytes | memoryview:
    """The base: the pieces' bytes, in order, zero-padded to ``size`` bytes (the one piece
    itself if it is the whole base, else in a per-thread buffer valid until this thread's
    next call), for the C loop and numpy's alike. ``ValueError`` if they hold more than
    ``size`` bytes."""
    if len(pieces) == 1 and memoryview(pieces[0]).nbytes == size:
        return pieces[0]
    base = thread_buffer("delta.base", size)
    pos = 0
    for piece in pieces:
        src = memoryview(piece).cast("B")
        base[pos:pos + len(src)] = src
        pos += len(src)
    base[pos:] = bytes(size - pos)
    return base


def _sign_magnitude(x: np.ndarray) -> None:
    """Between two's complement and the sign-magnitude form of op 1, in place (the map is
    its own inverse): an element with its top bit set has every other bit flipped."""
    bits = 8 * x.dtype.itemsize
    s = x.view(x.dtype.str.replace("u", "i"))  # the same bytes as signed: >> copies the top bit
    flip = s >> (bits - 1)  # 0, or all ones
    flip &= (1 << (bits - 1)) - 1
    s ^= flip


def apply_into(out: memoryview, op: int, width: int, head: int, pieces: Sequence[bytes | memoryview],
               *, inverse: bool) -> None:
    """Turn ``out`` (in place) from the chunk into the residual (``inverse=False``: the
    encoder) or from the residual into the chunk (``inverse=True``), against the base
    made of ``pieces`` (op :data:`OP_XOR` or :data:`OP_SUB`, docs/FORMAT.md §4.2)."""
    if _loops is not None:
        _loops.apply(out, _joined(len(out), pieces), op, width, head, inverse)
        return
    import numpy as np

    dst = np.frombuffer(out, np.uint8)
    base = np.frombuffer(_joined(len(dst), pieces), np.uint8)
    if op == OP_XOR:
        dst ^= base
        return
    lo = min(head, len(dst))
    hi = lo + max(0, len(dst) - head) // width * width
    dst[:lo] ^= base[:lo]  # bytes outside whole elements are XORed
    dst[hi:] ^= base[hi:]
    dt = "<u2" if width == 2 else "<u4"
    x = dst[lo:hi].view(dt)
    b = base[lo:hi].view(dt)
    if inverse:
        _sign_magnitude(x)
        x += b
    else:
        x -= b
        _sign_magnitude(x)


def encode_delta(raw: bytes | memoryview, pieces: Sequence[Piece], base: Sequence[bytes | memoryview],
                 code: Callable[[memoryview], tuple[int, bytes | memoryview]],
                 element: tuple[int, int] | None = None) -> bytes:
    """The delta payload of ``raw`` against ``pieces`` (whose bytes, in order, are
    ``base``: each ``base[i]`` is exactly piece *i*'s ``length`` bytes). ``element``:
    ``(width, head)`` of the float elements the chunk holds (op :data:`OP_SUB`), or
    ``None`` (op :data:`OP_XOR`). ``code`` codes the residual with a plain codec:
    ``(codec id, payload)``. The caller compares the size with the plain payload's
    (:func:`worth_it`)."""
    if not 1 <= len(pieces) <= MAX_PIECES or len(base) != len(pieces):
        raise ValueError(f"delta: {len(pieces)} pieces, {len(base)} bases")
    if sum(p.length for p in pieces) > len(raw) or any(len(b) != p.length or not p.length
                                                      for b, p in zip(base, pieces)):
        raise ValueError("delta: piece lengths do not match their bytes or exceed the chunk")
    op, width, head = (OP_XOR, 0, 0) if element is None else (OP_SUB, *element)
    if op == OP_SUB and (width not in (2, 4) or not 0 <= head < width):
        raise ValueError(f"delta: width {width}, head {head}")
    residual = thread_buffer("delta.residual", len(raw))
    residual[:] = memoryview(raw).cast("B")
    apply_into(residual, op, width, head, base, inverse=False)
    inner, body = code(residual)  # (a raw residual is this thread's buffer: joined below, before reuse)
    if inner not in INNER_CODECS:
        raise ValueError(f"delta: residual coded with codec {inner}")
    return b"".join([_HEAD.pack(op, width, head, int(inner), len(pieces)),
                     *(_PIECE.pack(p.digest, p.offset, p.length) for p in pieces), body])


def worth_it(delta_size: int, plain_size: int) -> bool:
    """Whether a delta payload of ``delta_size`` bytes should replace a plain one of
    ``plain_size``: it must save :data:`MIN_SAVING` of it and :data:`MIN_SAVING_BYTES`."""
    return plain_size - delta_size >= max(MIN_SAVING * plain_size, MIN_SAVING_BYTES)


def decode_delta_into(stored: bytes | memoryview, out: memoryview, digest: bytes, bases: BaseSource,
                      decode_inner: Callable[[int, memoryview, memoryview], None],
                      expected: bytes | memoryview | None = None, verify: bool = True) -> DeltaHeader:
    """Decode the delta payload ``stored`` of chunk ``digest`` into ``out`` (exactly its
    raw size) and check the result's BLAKE3 against ``digest``. ``bases`` gives each base
    chunk's verified raw bytes; ``decode_inner(codec, payload, out)`` decodes the residual
    with a plain codec into ``out`` (raising :class:`IntegrityError` if it does not fit).
    Refuses (:class:`IntegrityError`) a malformed header, a base that is the chunk itself
    or stored as a delta (chains are bounded to one level), a piece beyond its base's
    bytes, and a result that does not hash to ``digest``. ``out`` holds garbage then.
    ``expected``: the bytes ``digest`` was taken of, which nothing changes until this
    returns (push's check before write): the result is compared with them instead
    (``memcmp``, where the C loops are built; :func:`casreg.content.codec.check_decodes_to`).
    ``verify=False``: the result is not checked at all, for a caller that checks every byte
    of ``out`` another way (:func:`casreg.content.codec.decode_into`); the bases still are
    (``bases`` gives verified bytes)."""
    header = parse_header(stored, len(out))
    payload = memoryview(stored).cast("B")
    chunks: dict[bytes, bytes | memoryview] = {}
    for d in header.bases:
        if d == digest:
            raise IntegrityError("delta payload names the chunk itself as its base")
        raw, is_delta = bases(d)
        if is_delta:
            raise IntegrityError(f"delta payload's base blake3:{d.hex()} is itself a delta (chains are bounded "
                                 "to one level)")
        chunks[d] = raw
    views = []
    for p in header.pieces:
        raw = chunks[p.digest]
        if p.offset + p.length > len(raw):
            raise IntegrityError(f"delta payload names bytes {p.offset}..{p.offset + p.length} of base "
                                 f"blake3:{p.digest.hex()}, which has {len(raw)}")
        views.append(memoryview(raw)[p.offset:p.offset + p.length])
    decode_inner(header.inner, payload[header.body:], out)
    apply_into(out, header.op, header.width, header.head, views, inverse=True)
    if not verify:
        return header
    if expected is not None and same_bytes is not None:
        if not same_bytes(out, expected):
            raise IntegrityError("its bytes do not match the digest")
    elif blake3(out).digest() != digest:
        raise IntegrityError("its bytes do not match the digest")
    return header


#: The codec id of delta payloads in pack indexes and manifests (docs/FORMAT.md §4).
#: Reserved: no registry format writes it yet, and readers refuse it as an unknown codec
#: until bases are recorded where gc, verify and pull find them (docs/FORMAT.md §4.2).
DELTA_CODEC = 3


def decode_inner_into(codec: int, payload: memoryview, out: memoryview) -> None:
    """Decode a residual coded with plain codec ``codec`` into ``out`` (exactly its size);
    a PLANES residual straight into it, without a buffer of its own."""
    from casreg.content.codec import Codec, decode
    from casreg.content.planes import decode_planes_into

    if codec not in INNER_CODECS:
        raise IntegrityError(f"delta payload's residual has codec {codec}, not 0, 1 or 2")
    if codec == Codec.PLANES:
        decode_planes_into(payload, out)
        return
    got = decode(codec, payload, len(out))
    if len(got) != len(out):
        raise IntegrityError(f"delta payload's residual decodes to {len(got)} bytes, not {len(out)}")
    out[:] = got


def check_delta(stored: bytes | memoryview, raw_size: int, digest: bytes, bases: BaseSource,
                expected: bytes | memoryview | None = None) -> None:
    """:func:`decode_delta` when only the verdict is wanted (push's check before write):
    the same payloads pass and fail, decoded into a per-thread buffer (and compared with
    ``expected``, as :func:`decode_delta_into` says)."""
    decode_delta_into(stored, thread_buffer("delta.check", raw_size), digest, bases, decode_inner_into, expected)


def decode_delta(stored: bytes | memoryview, raw_size: int, digest: bytes, bases: BaseSource) -> bytearray:
    """:func:`decode_delta_into` a fresh buffer of ``raw_size`` bytes (checked against
    ``digest``), with the plain codecs for the residual."""
    out = bytearray(raw_size)
    decode_delta_into(stored, memoryview(out), digest, bases, decode_inner_into)
    return out


@dataclass(frozen=True, slots=True)
class Seg:
    """File bytes ``[start, start + length)`` of a version are bytes ``[off, off + length)``
    of the plain (non-delta) chunk ``digest``: how a parent version's file is described to
    find a new chunk's bases (K = 1: a parent delta chunk is described by its own bases)."""

    start: int
    length: int
    digest: bytes
    off: int


def base_pieces(segs: Sequence[Seg], starts: Sequence[int], off: int, length: int) -> list[Piece]:
    """The pieces covering file bytes ``[off, off + length)`` contiguously from ``off``
    (``segs`` sorted by ``start``, ``starts`` their starts): where the parent's bytes run
    out or have a hole the rest of the base is zeros. At most :data:`MAX_PIECES`, merged
    where one chunk's bytes continue; none if nothing covers ``off``."""
    from bisect import bisect_right

    i = bisect_right(starts, off) - 1
    if i < 0:
        return []
    out: list[Piece] = []
    pos, end = off, off + length
    while i < len(segs) and pos < end:
        s = segs[i]
        if not s.start <= pos < s.start + s.length:
            break
        skip = pos - s.start
        n = min(s.start + s.length - pos, end - pos)
        if out and out[-1].digest == s.digest and out[-1].offset + out[-1].length == s.off + skip:
            out[-1] = Piece(s.digest, out[-1].offset, out[-1].length + n)
        else:
            if len(out) == MAX_PIECES:
                break
            out.append(Piece(s.digest, s.off + skip, n))
        pos += n
        i += 1
    return out
