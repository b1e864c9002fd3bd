"""The byte-plane codec for floating-point tensor data (codec id 2, ``PLANES``).

Neural network weights compress badly as bytes: a bf16 or fp32 value's exponent is highly
predictable (weights sit in a narrow range), its mantissa is nearly random, and zstd sees
them interleaved. Separating them first is the method of ZipNN (Hershcovitch et al.,
"ZipNN: Lossless Compression for AI Models", 2024): rotate each element left by one bit so
the 8 exponent bits fill one byte, split the elements' bytes into planes (plane *i* holds
byte *i* of every element), and entropy-code each plane on its own. The exponent plane
shrinks to about a third; mantissa planes are stored as they are unless coding saves.

Encoding (docs/FORMAT.md §4.1, byte-exact)::

    payload := width:u8  head:u8  tail:u8  head_bytes  tail_bytes  plane{width}
    plane   := mode:u8  size:u32le  data[size]

``width`` is 2 (bf16, fp16) or 4 (fp32); the chunk's first ``head`` bytes and last
``tail`` bytes (each fewer than ``width``) are stored verbatim, so a chunk may start or
end anywhere inside a tensor: between them lie ``n = (raw_size - head - tail) / width``
whole elements, each read as a little-endian unsigned integer and rotated left by one bit.
Plane *i* is byte *i* (little-endian order) of each rotated element: ``mode`` 0 stores its
``n`` bytes as they are, ``mode`` 1 as one zstd frame whose header records ``n``.

The transform is a bijection on any bytes: the dtype only decides how well a chunk
compresses, never whether it decodes right. Decoding checks every length against the
chunk's raw size before allocating, and any malformed payload is an
:class:`~casreg.errors.IntegrityError`.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, cast

import zstandard

from casreg.content.scratch import thread_buffer
from casreg.errors import IntegrityError

if TYPE_CHECKING:  # numpy is imported only where the C loops were not built, when a chunk is coded
    import numpy as np

#: A plane: bytes for the C loops (a view of any buffer), a numpy array of ``uint8`` for numpy's.
Plane: TypeAlias = "memoryview | np.ndarray"


def _load_loops() -> ModuleType | None:
    """The split and the join as C loops (casreg/content/_planes_c.c), an optional
    extension: an install without a C compiler has none, and numpy's whole-array operations
    below do the same, slower (tests/test_planes_loops.py and test_planes_join.py check
    both; docs/benchmarks-codec.md measures both)."""
    try:
        from casreg.content import _planes_c
    except ImportError:  # not built
        return None
    return _planes_c


_loops = _load_loops()
#: ``same_bytes(a, b)``: whether two buffers hold the same bytes (``memcmp``, without the
#: GIL), from the C loops; ``None`` where they are not built (or were built before it).
same_bytes: Callable[[object, object], bool] | None = getattr(_loops, "same", None)
#: ``distinct_bytes(buf)``: the number of distinct byte values at each offset modulo 4 of
#: ``buf`` (the float probe's count), from the C loops; ``None`` where they are not built.
distinct_bytes: Callable[[object], tuple[int, int, int, int]] | None = getattr(_loops, "distinct", None)

#: Whether :func:`encode_planes_many` codes a batch with a few calls (the C loops split, and
#: the zstd backend codes many frames in one call), rather than one chunk at a time.
CODES_BATCHES: bool = _loops is not None and hasattr(zstandard.ZstdCompressor, "multi_compress_to_buffer")

__all__ = ["WIDTHS", "CODES_BATCHES", "MIN_ELEMENTS", "encode_planes", "encode_planes_until", "encode_planes_many",
           "saves_enough", "ParsedPlanes", "parse_planes", "join_planes_into", "decode_planes_into",
           "decode_planes_parts", "same_bytes", "distinct_bytes"]

#: Element widths in bytes the codec takes (bf16/fp16, fp32).
WIDTHS = (2, 4)
#: Chunks with fewer whole elements than this are left to zstd (the headers would cost more).
MIN_ELEMENTS = 256
#: How planes are coded (the exponent plane of a plain chunk by :data:`_EXPONENT_PARAMS`
#: where they can be set): zstd's fastest strategy with matches all but switched off (7-byte
#: minimum match, one probe in a 64-entry table), so that what remains is zstd's entropy
#: coding of literals (Huffman), which is what an exponent plane needs. Measured on the
#: bf16 exponent plane of a llama-like model (docs/benchmarks-peers.md): 0.332 of its
#: size (its byte entropy is 0.326), against 0.363 with zstd level 1 and 0.407 with level
#: 3, and over twice as fast as level 1 both ways. Not part of the format: a decoder
#: reads any zstd frame.
PLANE_PARAMS = zstandard.ZstdCompressionParameters(compression_level=1, strategy=zstandard.STRATEGY_FAST,
                                                   min_match=7, search_log=1, hash_log=6, window_log=17,
                                                   write_content_size=True)
#: A mantissa plane is coded only if zstd saves more than 3 % on its first bytes.
_SAMPLE = 16 << 10
_HEADER = struct.Struct("<BBB")
_PLANE = struct.Struct("<BI")
MODE_RAW, MODE_ZSTD = 0, 1

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(compression_params=PLANE_PARAMS)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


#: The exponent plane's zstd frame, as zstd's C API allows it but python-zstandard's
#: compressor does not: the same fast strategy with its match finder accelerated until it
#: all but stops (``targetLength``), and Huffman coding of the literals kept on
#: (``literalCompressionMode``; zstd turns it off by default when the fast strategy is
#: accelerated). An exponent plane is all literals, so the match finder only cost time:
#: measured on the bf16 exponent planes of a llama-like model, 0.60 s/GiB instead of 0.94
#: to code, the frames 0.3 % smaller, decoding unchanged. Set through zstandard's own
#: cffi backend (``ZSTD_c_literalCompressionMode`` is in zstd's advanced API); where that
#: is not available, :data:`PLANE_PARAMS` code the plane. Either way any zstd decoder
#: reads the frame: nothing about the format depends on it.
_EXPONENT_PARAMS = (("ZSTD_c_strategy", 1), ("ZSTD_c_windowLog", 17), ("ZSTD_c_hashLog", 6),
                    ("ZSTD_c_chainLog", 6), ("ZSTD_c_searchLog", 1), ("ZSTD_c_minMatch", 7),
                    ("ZSTD_c_targetLength", 1024), ("ZSTD_c_literalCompressionMode", 1),
                    ("ZSTD_c_contentSizeFlag", 1))


class _ExponentCoder:
    """One thread's zstd context with :data:`_EXPONENT_PARAMS` and its output buffer."""

    def __init__(self) -> None:
        import importlib

        cffi_zstd = importlib.import_module("zstandard.backend_cffi")  # part of the zstandard package (untyped)
        self.lib: Any = cffi_zstd.lib
        self.ffi: Any = cffi_zstd.ffi
        self.cctx = self.ffi.gc(self.lib.ZSTD_createCCtx(), self.lib.ZSTD_freeCCtx)
        for name, value in _EXPONENT_PARAMS:
            if self.lib.ZSTD_isError(self.lib.ZSTD_CCtx_setParameter(self.cctx, getattr(self.lib, name), value)):
                raise RuntimeError(f"zstd refuses {name}={value}")
        self.out = self.ffi.new("char[]", 1)

    def compress(self, data: memoryview) -> bytes | None:
        """One zstd frame of ``data`` (content size recorded), or ``None`` on an error."""
        bound = self.lib.ZSTD_compressBound(len(data))
        if len(self.out) < bound:
            self.out = self.ffi.new("char[]", bound)
        n = self.lib.ZSTD_compress2(self.cctx, self.out, len(self.out), self.ffi.from_buffer(data), len(data))
        if self.lib.ZSTD_isError(n):
            return None
        return bytes(self.ffi.buffer(self.out, n))


def _exponent_coder() -> _ExponentCoder | None:
    """This thread's :class:`_ExponentCoder`, or ``None`` where it cannot be made."""
    if "e" not in _local.__dict__:
        try:
            _local.e = _ExponentCoder()
        except (ImportError, AttributeError, RuntimeError):
            _local.e = None
    coder: _ExponentCoder | None = _local.e
    return coder


def _compress_exponents(data: memoryview) -> bytes:
    coder = _exponent_coder()
    packed = coder.compress(data) if coder is not None else None
    return packed if packed is not None else _compressor().compress(data)


def _uint(width: int) -> str:
    return "<u2" if width == 2 else "<u4"


def _bytes_of(plane: Plane) -> memoryview:
    """The bytes of a plane (or of a block of joined elements), as a flat view."""
    return (plane if isinstance(plane, memoryview) else plane.data).cast("B")


def saves_enough(coded: int, size: int) -> bool:
    """Whether ``coded`` bytes save at least 1% of ``size``: below that, a chunk (any
    codec's payload) or a plane is stored raw."""
    return coded < size - size // 100


def _sample_saves(probe: int) -> bool:
    """Whether a mantissa plane's sample, coded into ``probe`` bytes, saved over 3%: only
    then is the plane coded whole."""
    return probe <= _SAMPLE - _SAMPLE * 3 // 100


def _code_plane(plane: Plane, exponent: bool, residual: bool = False) -> tuple[int, bytes | memoryview]:
    data = _bytes_of(plane)
    if not exponent and len(data) > _SAMPLE:
        if not _sample_saves(len(_compressor().compress(data[:_SAMPLE]))):
            return MODE_RAW, data
    packed = _compress_exponents(data) if exponent and not residual else _compressor().compress(data)
    if not saves_enough(len(packed), len(data)):
        return MODE_RAW, data
    return MODE_ZSTD, packed


def encode_planes(raw: bytes | memoryview, width: int, head: int, *, residual: bool = False) -> bytes | None:
    """``raw`` in the PLANES format with elements of ``width`` bytes starting ``head``
    bytes in (``0 <= head < width``), or ``None`` when it does not apply (too few
    elements). The caller compares the size with other codecs'. ``residual``: ``raw`` is
    a delta's residual (casreg.content.delta), whose top plane is mostly runs of zeros
    that the match finder of :data:`PLANE_PARAMS` finds, not weights' exponents
    (:data:`_EXPONENT_PARAMS` lost 1.6 % of a fine-tune's stored bytes there)."""
    out = encode_planes_until(raw, width, head, None, residual=residual)
    assert not isinstance(out, int)
    return out


def _layout(raw: bytes | memoryview, width: int,
            head: int) -> tuple[memoryview, int, list[bytes | bytearray | memoryview]] | None:
    """How ``raw`` is laid out as a PLANES payload with elements of ``width`` bytes from
    ``head`` on: its bytes as a flat view, ``n`` (its whole elements: each plane's size)
    and the payload's first parts (the header, the head bytes, the tail bytes), to which
    the planes are added; ``None`` when it has fewer than :data:`MIN_ELEMENTS` elements.
    The parts are joined once, at the end: growing one bytearray plane by plane and
    copying it into bytes cost three copies of every stored byte (a profile of a 2 GiB
    push: 14% of its CPU in memcpy and realloc)."""
    if width not in WIDTHS or not 0 <= head < width:
        raise ValueError(f"planes: width {width}, head {head}")
    n = (len(raw) - head) // width
    if n < MIN_ELEMENTS:
        return None
    tail = len(raw) - head - n * width
    view = memoryview(raw).cast("B")
    return view, n, [_HEADER.pack(width, head, tail), view[:head], view[len(view) - tail:]]


def encode_planes_until(raw: bytes | memoryview, width: int, head: int,
                        enough: Callable[[int], bool] | None, *, residual: bool = False) -> bytes | int | None:
    """:func:`encode_planes`, stopping early: ``enough(n)`` is asked after the header and
    after each plane is coded (mantissa planes first, the costly exponent plane last),
    ``n`` being the payload's size so far, a lower bound on its final size; the first
    ``True`` stops the coding and that ``n`` is returned instead of the payload. A delta
    coder that only needs to know the plain payload is at least some size skips coding
    the exponent plane so."""
    laid = _layout(raw, width, head)
    if laid is None:
        return None
    view, n, parts = laid
    size = sum(len(part) for part in parts)
    if enough is not None and enough(size):
        return size
    for i, plane in enumerate(_split_planes(view, width, head, n)):
        mode, data = _code_plane(plane, exponent=i == width - 1, residual=residual)
        parts += (_PLANE.pack(mode, len(data)), data)
        size += _PLANE.size + len(data)
        if enough is not None and i < width - 1 and enough(size):
            return size
    return b"".join(parts)


def encode_planes_many(items: Sequence[tuple[bytes | memoryview, int, int]]) -> list[bytes | None]:
    """:func:`encode_planes` of each ``(raw, width, head)`` with ``residual=True`` (every
    plane coded with :data:`PLANE_PARAMS`, the exponent plane too), byte for byte those
    payloads (a property test says so), for a batch of small float files: zstd's work for
    the whole batch is done in at most three calls (python-zstandard's
    ``multi_compress_to_buffer``: the mantissa planes' samples, then every plane to code
    whole) and each chunk is split by one call of the C loops, so a worker passes the GIL
    on a few times a batch rather than a dozen times a file (docs/benchmarks-codec.md,
    "Small float files coded together"). Where the C loops or those calls are missing,
    each is coded by :func:`encode_planes`."""
    compressor = _compressor()
    many = getattr(compressor, "multi_compress_to_buffer", None)
    if _loops is None or many is None:
        return [encode_planes(raw, width, head, residual=True) for raw, width, head in items]
    out: list[bytes | None] = [None] * len(items)
    jobs: list[tuple[int, list[bytes | bytearray | memoryview], list[bytearray]]] = []  # (position, parts, planes)
    for k, (raw, width, head) in enumerate(items):
        laid = _layout(raw, width, head)
        if laid is None:
            continue
        view, n, parts = laid
        planes = [bytearray(n) for _ in range(width)]
        _loops.split(view[head:head + n * width], planes)
        jobs.append((k, parts, planes))
    # A mantissa plane longer than the sample is coded only if its sample saves over 3%
    # (as _code_plane decides); every other plane is coded whole, and kept raw unless that saves 1%.
    sampled = [(j, i) for j, (_, _, planes) in enumerate(jobs) for i in range(len(planes) - 1)
               if len(planes[i]) > _SAMPLE]
    probes = many([memoryview(jobs[j][2][i])[:_SAMPLE] for j, i in sampled], threads=1) if sampled else []
    raw_planes = {(j, i) for s, (j, i) in enumerate(sampled) if not _sample_saves(len(probes[s]))}
    whole = [(j, i) for j, (_, _, planes) in enumerate(jobs) for i in range(len(planes)) if (j, i) not in raw_planes]
    packed = many([jobs[j][2][i] for j, i in whole], threads=1) if whole else []
    coded = {(j, i): packed[s] for s, (j, i) in enumerate(whole)}
    for j, (k, parts, planes) in enumerate(jobs):
        for i, plane in enumerate(planes):
            frame = coded.get((j, i))
            if frame is None or not saves_enough(len(frame), len(plane)):
                parts += (_PLANE.pack(MODE_RAW, len(plane)), plane)
            else:
                data = frame.tobytes()
                parts += (_PLANE.pack(MODE_ZSTD, len(data)), data)
        out[k] = b"".join(parts)
    return out


def _scratch(name: str, n: int, dtype: str) -> np.ndarray:
    """A per-thread array of ``n`` elements of ``dtype``, reused from call to call (its
    contents are garbage): fresh arrays for every plane of every chunk cost more in page
    faults than the transform itself."""
    import numpy as np

    arr: np.ndarray | None = _local.__dict__.get(name)
    if arr is None or arr.size < n or arr.dtype != np.dtype(dtype):
        arr = np.empty(max(n, 1 << 19), dtype)
        setattr(_local, name, arr)
    return arr[:n]


def _split_planes(view: memoryview, width: int, head: int, n: int) -> Iterator[Plane]:
    """The ``width`` planes of the ``n`` elements starting ``head`` bytes into ``view``, in
    order, each in a per-thread scratch buffer of its own: all at once by the C loop, or
    one by one with numpy (so a coder that stops early never splits the last)."""
    if _loops is not None:
        split = [thread_buffer(f"planes.plane{i}", n) for i in range(width)]  # (no numpy: plain bytes)
        _loops.split(view[head:head + n * width], split)
        yield from split
        return
    elements = _elements(view, width, head, n)
    for i in range(width):
        yield _split_plane(elements, i)


def _elements(view: memoryview, width: int, head: int, n: int) -> np.ndarray:
    """The ``n`` elements of ``width`` bytes starting ``head`` bytes into ``view``, as
    unsigned integers, copied into a per-thread scratch array if they are not aligned in
    memory (a chunk starts anywhere in a read buffer): numpy's loops on unaligned
    elements cost twice as much as the copy."""
    import numpy as np

    x = np.frombuffer(view, _uint(width), n, head)
    if x.flags.aligned:
        return x
    aligned = _scratch("aligned", n, _uint(width))
    np.copyto(aligned.view(np.uint8), np.frombuffer(view, np.uint8, n * width, head))
    return aligned


def _split_plane(x: np.ndarray, i: int) -> np.ndarray:
    """Plane ``i`` of the elements ``x`` (aligned unsigned integers): byte ``i`` of each
    element rotated left by one bit, in a per-thread scratch array of its own (valid until
    this thread splits plane ``i`` again). Byte ``i >= 1`` of the rotated element is the
    element shifted right by ``8 * i - 1``; byte 0 also takes the element's top bit. Each
    is one to three whole-array operations narrowing to bytes on output (the strided byte
    copies of a rotate-then-transpose cost three times as much)."""
    import numpy as np

    width = x.itemsize
    plane = _scratch(f"plane{i}", len(x), "u1")  # one per plane: a raw one is joined at the end
    if i:
        np.right_shift(x, 8 * i - 1, out=plane, casting="unsafe")
    elif width == 2:  # the two bytes read big-endian, shifted right by 7: one operation
        np.right_shift(x.view(">u2"), 7, out=plane, casting="unsafe")
    else:
        top = _scratch("top", len(x), "u1")  # the element's top bit, which rotates in at the bottom
        np.left_shift(x, 1, out=plane, casting="unsafe")
        np.right_shift(x, 8 * width - 1, out=top, casting="unsafe")
        np.bitwise_or(plane, top, out=plane)
    return plane


def decode_planes_into(stored: bytes | memoryview, out: memoryview) -> None:
    """Decode a PLANES payload into ``out`` (exactly the chunk's raw size).
    :class:`IntegrityError` for anything malformed; ``out`` then holds garbage."""
    head, planes, tail = _decode_planes(stored, len(out))
    join_planes_into(head, planes, tail, out)


def join_planes_into(head: memoryview, planes: Sequence[Plane], tail: memoryview, out: memoryview) -> None:
    """The chunk whose head bytes, decoded planes (as :func:`parse_planes` found them and
    their frames decode to: ``memoryview``s for the C loops, numpy arrays for numpy's)
    and tail bytes these are, into ``out`` (exactly its size, checked by the caller)."""
    size = len(out)
    width, n = len(planes), (size - len(head) - len(tail)) // max(len(planes), 1)
    out[:len(head)] = head
    out[size - len(tail):] = tail
    if _loops is not None:  # joined where it belongs, in one pass (the C loop writes bytes: any address will do)
        _loops.join(planes, out[len(head):size - len(tail)])
        return
    import numpy as np

    dst = np.frombuffer(out, _uint(width), n, len(head))
    if dst.flags.aligned and dst.flags.writeable:  # joined where it belongs
        for _ in _join_planes(planes, width, dst):
            pass
        return
    pos = len(head)
    for block in _join_planes(planes, width):  # (elements unaligned in ``out``: joined aside, copied)
        out[pos:pos + block.nbytes] = _bytes_of(block)
        pos += block.nbytes


def decode_planes_parts(stored: bytes | memoryview, size: int) -> Iterator[memoryview]:
    """The ``size``-byte chunk a PLANES payload decodes to, as consecutive pieces (its
    head bytes, its elements a block at a time in a per-thread buffer valid until the
    next piece is asked for, its tail bytes), for a caller that only hashes the chunk:
    push's check before write never holds it whole. Raises (when iterated) what
    :func:`decode_planes_into` raises."""
    head, planes, tail = _decode_planes(stored, size)
    yield head
    for block in _join_planes(planes, len(planes)):
        yield _bytes_of(block)
    yield tail


class ParsedPlanes(NamedTuple):
    """A PLANES payload as :func:`parse_planes` found it: views of the payload."""

    head: memoryview
    planes: list[tuple[int, memoryview]]  # each plane's (mode, data)
    tail: memoryview
    plane_size: int  # n: the bytes each plane holds once decoded


def parse_planes(stored: bytes | memoryview, size: int) -> ParsedPlanes:
    """Parse a PLANES payload of a ``size``-byte chunk without decoding it, checking every
    length the payload states: its head bytes, each plane's ``(mode, data)`` and its tail
    bytes, all views of the payload, and ``n = (size - head - tail) / width``, the size of
    a plane. A raw plane's data is checked to be ``n`` bytes; a zstd plane's data is its
    frame, which the caller must decode to exactly ``n`` bytes. :class:`IntegrityError`
    for anything malformed."""
    payload = memoryview(stored).cast("B")
    if len(payload) < _HEADER.size:
        raise IntegrityError("planes payload is shorter than its header")
    width, head, tail = _HEADER.unpack_from(payload)
    if width not in WIDTHS or head >= width or tail >= width or head + tail > size \
            or (size - head - tail) % width:
        raise IntegrityError(f"planes payload header (width {width}, head {head}, tail {tail}) does not fit a "
                             f"{size}-byte chunk")
    n = (size - head - tail) // width
    pos = _HEADER.size
    if len(payload) < pos + head + tail:
        raise IntegrityError("planes payload is truncated")
    head_bytes = payload[pos:pos + head]
    pos += head
    tail_bytes = payload[pos:pos + tail]
    pos += tail
    planes: list[tuple[int, memoryview]] = []
    for i in range(width):
        if len(payload) < pos + _PLANE.size:
            raise IntegrityError("planes payload is truncated")
        mode, length = _PLANE.unpack_from(payload, pos)
        pos += _PLANE.size
        data = payload[pos:pos + length]
        pos += length
        if len(data) != length:
            raise IntegrityError("planes payload is truncated")
        if mode == MODE_RAW and length != n:
            raise IntegrityError(f"planes payload: raw plane {i} holds {length} bytes, not {n}")
        if mode not in (MODE_RAW, MODE_ZSTD):
            raise IntegrityError(f"planes payload: plane {i} has unknown mode {mode}")
        planes.append((mode, data))
    if pos != len(payload):
        raise IntegrityError(f"planes payload has {len(payload) - pos} bytes after its last plane")
    return ParsedPlanes(head_bytes, planes, tail_bytes, n)


def _decode_planes(stored: bytes | memoryview, size: int) -> tuple[memoryview, list[Plane], memoryview]:
    """Parse a PLANES payload of a ``size``-byte chunk (:func:`parse_planes`): its head
    and tail bytes (views of the payload) and its planes, zstd ones decoded (``bytes``
    and views of the payload for the C loops, numpy arrays of them for numpy's)."""
    head_bytes, parsed, tail_bytes, n = parse_planes(stored, size)
    as_plane: Callable[[bytes | memoryview], Plane] = memoryview
    if _loops is None:
        import numpy as np

        as_plane = partial(np.frombuffer, dtype=np.uint8)
    planes = [as_plane(data if mode == MODE_RAW else _unzstd(data, n, i)) for i, (mode, data) in enumerate(parsed)]
    return head_bytes, planes, tail_bytes


#: Bytes of elements joined per step: the scratch arrays stay small (a pull's threads
#: each held 10 MiB of them for 4 MiB chunks when whole chunks were joined at once), and a
#: block's arrays stay in the core's L2 cache between the passes over them (256 KiB
#: measured fastest here for bf16 planes, against 128 KiB and 512 KiB).
_BLOCK_BYTES = 256 << 10


def _join_planes(planes: Sequence[Plane], width: int, dst: np.ndarray | None = None) -> Iterator[Plane]:
    """The elements whose rotated bytes are ``planes`` (each ``n`` bytes),
    :data:`_BLOCK_BYTES` of them at a time: each block joined into its slice of ``dst``
    (aligned, unless the C loops join: they write bytes) when given, else into a per-thread
    scratch array valid until the next block. The C loop does it in one pass where it was
    built; numpy's operations below otherwise. The element is the rotated one turned right
    by a bit: plane ``i >= 1`` lands shifted left by ``8 * i - 1`` and plane 0 in two
    pieces, its top seven bits at the bottom and its lowest bit at the top, disjoint bits
    OR-ed together.

    Only some whole-array operations are fast, measured on numpy 2.4 here: each plane is
    widened once to the element's type by a plain copy (a shift or OR that widens its
    operand on the way costs twice as much), shifted left by multiplying by a power of two
    (numpy's left shift of ``uint16`` costs twice its multiply), and no byte array is
    shifted (x86 has no vector shift of bytes: numpy shifts ``uint8`` a byte at a time).
    Writing each plane into every ``width``-th byte of the chunk, then rotating it where it
    lies, cost twice as much too."""
    n, block = len(planes[0]), _BLOCK_BYTES // width
    step = min(n, block)
    join = _join2 if width == 2 else _join4
    for start in range(0, n, block):
        stop = min(n, start + block)
        if _loops is not None and dst is None:
            joined = thread_buffer("planes.joined", (stop - start) * width)
            _loops.join([plane[start:stop] for plane in planes], joined)
            yield joined
            continue
        x = _scratch("joined", stop - start, _uint(width)) if dst is None else dst[start:stop]
        join(cast("list[np.ndarray]", [plane[start:stop] for plane in planes]), x, step)
        yield x


def _join2(p: list[np.ndarray], x: np.ndarray, step: int) -> None:
    """Join the two planes ``p`` of ``len(x)`` elements into ``x`` (aligned ``<u2``): build
    the rotated element ``p1 << 8 | p0``, then turn it right in place."""
    import numpy as np

    part = _scratch("part", step, "<u2")[:len(x)]
    np.copyto(x, p[1], casting="unsafe")
    np.multiply(x, np.uint16(1 << 8), out=x)
    np.copyto(part, p[0], casting="unsafe")
    np.bitwise_or(x, part, out=x)  # x is the rotated element now
    np.multiply(x, np.uint16(1 << 15), out=part)  # its lowest bit, at the top
    np.right_shift(x, np.uint16(1), out=x)
    np.bitwise_or(x, part, out=x)


def _join4(p: list[np.ndarray], x: np.ndarray, step: int) -> None:
    """Join the four planes ``p`` of ``len(x)`` elements into ``x`` (aligned ``<u4``)."""
    import numpy as np

    part = _scratch("part4", step, "<u4")[:len(x)]
    np.copyto(x, p[3], casting="unsafe")
    np.multiply(x, np.uint32(1 << 23), out=x)
    for i in (2, 1):
        np.copyto(part, p[i], casting="unsafe")
        np.multiply(part, np.uint32(1 << (8 * i - 1)), out=part)
        np.bitwise_or(x, part, out=x)
    np.copyto(part, p[0], casting="unsafe")
    np.multiply(part, np.uint32(1 << 31), out=part)  # plane 0's lowest bit, at the top
    np.bitwise_or(x, part, out=x)
    np.copyto(part, p[0], casting="unsafe")
    np.right_shift(part, np.uint32(1), out=part)  # its top seven bits, at the bottom
    np.bitwise_or(x, part, out=x)


def _unzstd(data: memoryview, n: int, i: int) -> bytes:
    """Plane ``i``'s zstd frame decoded: exactly ``n`` bytes, or :class:`IntegrityError`."""
    try:
        if zstandard.frame_content_size(data) != n:
            raise IntegrityError(f"planes payload: plane {i}'s zstd frame does not hold {n} bytes")
        got = _decompressor().decompress(data, max_output_size=n)
    except zstandard.ZstdError as err:
        raise IntegrityError(f"planes payload: plane {i} does not decode: {err}") from None
    if len(got) != n:
        raise IntegrityError(f"planes payload: plane {i} decodes to {len(got)} bytes, not {n}")
    return got
