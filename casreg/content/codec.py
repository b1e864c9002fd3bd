"""Chunk codecs. Each stored chunk carries its codec id, so a better codec can be added
without touching old data: ``RAW`` and ``ZSTD`` for any bytes, ``PLANES``
(:mod:`casreg.content.planes`) for chunks of floating-point tensor data, chosen when the
push knows the chunk's dtype (a safetensors header says it) and the registry's format
allows it (``casreg/3``; docs/FORMAT.md §2).

Ids are part of the on-disk format (docs/FORMAT.md §4) and are never reused.
"""

from __future__ import annotations

import threading
import typing
from collections.abc import Callable, Sequence
from enum import IntEnum

import zstandard
from blake3 import blake3

from casreg.content.planes import (
    MODE_ZSTD,
    ParsedPlanes,
    decode_planes_into,
    decode_planes_parts,
    encode_planes_many,
    encode_planes_until,
    join_planes_into,
    parse_planes,
    same_bytes,
    saves_enough,
)
from casreg.content.scratch import thread_buffer
from casreg.errors import IntegrityError

__all__ = ["Codec", "FloatHint", "encode", "encode_unless", "encode_many", "decode", "decode_into",
           "decode_verified", "decode_verified_into",
           "check_decodes", "check_decodes_to", "first_not_decoding_to", "zstd_decode",
           "DEFAULT_ZSTD_LEVEL"]

DEFAULT_ZSTD_LEVEL = 3


class Codec(IntEnum):
    RAW = 0  # stored as is: zstd would not have saved anything
    ZSTD = 1  # one zstd frame holding the whole chunk, content size in the frame header
    PLANES = 2  # floating-point elements split into byte planes, each raw or zstd (casreg.content.planes)
    DELTA = 3  # coded against other stored chunks (casreg.content.delta); decoded with its bases only


#: What a push knows of a chunk of tensor data: (element width in bytes, offset of the first
#: whole element in the chunk). ``None``: nothing known, zstd as for any bytes.
FloatHint = tuple[int, int]


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode(raw: bytes | memoryview, level: int = DEFAULT_ZSTD_LEVEL,
           hint: FloatHint | None = None, *, residual: bool = False) -> tuple[Codec, bytes | memoryview]:
    """Compress with zstd, or with ``PLANES`` when ``hint`` says the chunk holds
    floating-point elements; keep the raw bytes (``raw`` itself) when compression saves
    under 1%. ``residual``: ``raw`` is a delta's residual (see
    :func:`~casreg.content.planes.encode_planes`)."""
    out = encode_unless(raw, level, hint, None, residual=residual)
    assert out is not None
    return out


def encode_unless(raw: bytes | memoryview, level: int, hint: FloatHint | None,
                  enough: Callable[[int], bool] | None, *,
                  residual: bool = False) -> tuple[Codec, bytes | memoryview] | None:
    """:func:`encode`, or ``None`` as soon as ``enough(n)`` is true for an ``n`` that the
    payload's size is known to be at least (asked while a PLANES payload is coded, plane
    by plane: :func:`~casreg.content.planes.encode_planes_until`). ``None`` never when
    ``enough`` is ``None``."""
    if hint is not None:
        until = None if enough is None else (lambda n: enough(min(n, len(raw))))  # RAW stores len(raw) bytes
        planes = encode_planes_until(raw, *hint, until, residual=residual)
        if isinstance(planes, int):
            return None
        if planes is not None:
            if not saves_enough(len(planes), len(raw)):
                return Codec.RAW, raw
            return Codec.PLANES, planes
    packed = _compressor(level).compress(raw)
    if not saves_enough(len(packed), len(raw)):
        return Codec.RAW, raw
    return Codec.ZSTD, packed


def encode_many(raws: Sequence[bytes], level: int = DEFAULT_ZSTD_LEVEL,
                hints: Sequence[FloatHint | None] | None = None) -> list[tuple[Codec, bytes]]:
    """:func:`encode` of each of ``raws`` with its hint in ``hints`` (none by default) and
    ``residual=True``: the same payloads, byte for byte (ZSTD, PLANES, or RAW where coding
    saves under 1%), zstd's work done in a few calls for them all (python-zstandard's
    ``multi_compress_to_buffer``, where its C backend has it: the zstd chunks' frames in
    one, the PLANES chunks' planes in at most two more, :func:`encode_planes_many`). A push
    of 5,000 small files whose two workers coded each file with calls of its own waited
    for the GIL a third of the time (each worker busy 0.74 s for 0.50 s of CPU, switched
    out about once a file); coded together, with their check
    (:func:`first_not_decoding_to`), the push took 0.77-0.79 s in-process against
    0.87-0.89 s (docs/benchmarks-codec.md, "Small files coded together"). ``residual``
    codes a PLANES chunk's exponent plane like its other planes, which one zstd context
    can do for the whole batch."""
    if hints is None:
        hints = [None] * len(raws)
    out: list[tuple[Codec, bytes] | None] = [None] * len(raws)
    floats = [k for k, hint in enumerate(hints) if hint is not None]
    planes = encode_planes_many([(raws[k], *typing.cast(FloatHint, hints[k])) for k in floats]) if floats else []
    for k, payload in zip(floats, planes, strict=True):
        if payload is not None:
            raw = raws[k]
            out[k] = (Codec.PLANES, payload) if saves_enough(len(payload), len(raw)) else (Codec.RAW, raw)
    zstd = [k for k, coded in enumerate(out) if coded is None]  # no hint, or too few elements for PLANES
    compressor = _compressor(level)
    many = getattr(compressor, "multi_compress_to_buffer", None)
    if many is None or len(zstd) < 2:
        for k in zstd:
            codec, coded = encode(raws[k], level)
            out[k] = (codec, coded if isinstance(coded, bytes) else bytes(coded))
        return typing.cast("list[tuple[Codec, bytes]]", out)
    packed = many([raws[k] for k in zstd], threads=1)
    for i, k in enumerate(zstd):
        frame, raw = packed[i], raws[k]
        out[k] = (Codec.ZSTD, frame.tobytes()) if saves_enough(len(frame), len(raw)) else (Codec.RAW, raw)
    return typing.cast("list[tuple[Codec, bytes]]", out)


def first_not_decoding_to(payloads: Sequence[tuple[Codec, bytes]], raws: Sequence[bytes],
                          digests: Sequence[bytes]) -> int | None:
    """Push's check before write of :func:`encode_many`'s ``payloads`` (RAW, ZSTD or
    PLANES): the position of the first that does not decode to exactly its chunk
    (``raws``, whose BLAKE3 ``digests`` are, at the same positions), or ``None`` when every
    one does. Each is checked as :func:`check_decodes_to` checks one payload, except that
    where the C loops compare (``same_bytes``) and the backend decodes many frames in one
    call (``multi_decompress_to_buffer``), every zstd frame of the batch (a ZSTD payload,
    or a coded plane of a PLANES one, whose other parts :func:`parse_planes` checks first)
    is decoded in that one call, and each chunk joined and compared after it; a frame that
    claims another size, a payload that does not parse, or a failed call leaves the
    payloads it concerns to be checked one by one."""
    frames: list[tuple[int, int, memoryview | bytes, int]] = []  # (position, plane or -1, frame, its size)
    parsed: dict[int, ParsedPlanes] = {}
    for i, (codec, stored) in enumerate(payloads):
        if codec == Codec.ZSTD:
            frames.append((i, -1, stored, len(raws[i])))
        elif codec == Codec.PLANES and same_bytes is not None:
            try:
                parsed[i] = parse_planes(stored, len(raws[i]))
            except IntegrityError:
                continue  # refused again, and named, below
            n = parsed[i].plane_size
            frames += [(i, p, data, n) for p, (mode, data) in enumerate(parsed[i].planes) if mode == MODE_ZSTD]
    decoded: dict[tuple[int, int], memoryview] = {}
    many = getattr(_decompressor(), "multi_decompress_to_buffer", None)
    if many is not None and same_bytes is not None and len(frames) >= 2:
        try:
            # (a frame claiming another size is left to be decoded alone, before anything is allocated for it)
            if all(zstandard.frame_content_size(frame) == size for _, _, frame, size in frames):
                got = many([frame for _, _, frame, _ in frames], threads=1)
                if len(got) == len(frames):
                    decoded = {(i, p): memoryview(got[k]) for k, (i, p, _, _) in enumerate(frames)}
        except zstandard.ZstdError:
            pass  # checked one by one below
    for i, ((codec, stored), raw, digest) in enumerate(zip(payloads, raws, digests, strict=True)):
        if codec not in (Codec.RAW, Codec.ZSTD, Codec.PLANES):
            return i  # not a payload encode_many gives
        if codec == Codec.ZSTD and (i, -1) in decoded:
            assert same_bytes is not None
            if not same_bytes(decoded[i, -1], raw):
                return i
            continue
        if codec == Codec.PLANES and i in parsed and decoded:
            head, planes, tail, _ = parsed[i]
            views = [decoded[i, p] if mode == MODE_ZSTD else data for p, (mode, data) in enumerate(planes)]
            if any(len(view) != len(views[0]) for view in views):
                return i
            out = thread_buffer("codec.check", len(raw))
            join_planes_into(head, views, tail, out)
            assert same_bytes is not None
            if not same_bytes(out, raw):
                return i
            continue
        try:
            check_decodes_to(codec, stored, raw, digest)
        except IntegrityError:
            return i
    return None


def zstd_decode(stored: bytes | memoryview, limit: int) -> bytes:
    """Decompress one zstd frame of at most ``limit`` bytes. The size the frame header
    claims is checked first: a corrupt header must not make us allocate gigabytes."""
    try:
        claimed = zstandard.frame_content_size(stored)
        if claimed > limit:  # -1 means "not recorded"
            raise IntegrityError(f"zstd frame claims {claimed} bytes, more than the {limit} expected")
        return _decompressor().decompress(stored, max_output_size=limit)
    except zstandard.ZstdError as err:
        raise IntegrityError(f"zstd payload does not decode: {err}") from None
    except MemoryError:
        raise IntegrityError("zstd payload does not decode: it expands beyond memory") from None


def decode(codec: int, stored: bytes | memoryview, raw_size: int) -> bytes | memoryview:
    """Invert :func:`encode`; a malformed payload raises :class:`IntegrityError`. A raw
    chunk comes back as given (a view stays a view)."""
    if codec == Codec.RAW:
        return stored
    if codec == Codec.ZSTD:
        return zstd_decode(stored, raw_size)
    if codec == Codec.PLANES:
        out = bytearray(raw_size)
        view = memoryview(out)
        decode_planes_into(stored, view)
        return view
    if codec == Codec.DELTA:
        raise IntegrityError("a delta chunk cannot be decoded without its bases")
    raise IntegrityError(f"unknown codec id {codec}")


def decode_verified(codec: int, stored: bytes | memoryview, raw_size: int, digest: bytes) -> bytes | memoryview:
    """:func:`decode`, then check that the result is ``raw_size`` bytes whose BLAKE3 is
    ``digest``: every chunk read (pull, lazy reads, verify) and every chunk about to be
    stored (push's check before write) goes through this. :class:`IntegrityError` says
    why not; the caller names where."""
    raw = decode(codec, stored, raw_size)
    if len(raw) != raw_size or blake3(raw).digest() != digest:
        raise IntegrityError("its bytes do not match the digest")
    return raw


def _whole_frame(stored: bytes | memoryview) -> bool:
    """Whether the zstd frame ``stored`` starts with is whole and ends exactly where
    ``stored`` does: its blocks up to the one marked last, then the checksum if the frame
    header announces one (RFC 8878 §3.1.1). A stream reader fills a buffer from a frame
    whose last block is not marked so (its bytes all there) without a word, where
    :func:`zstd_decode` refuses it ("did not decompress full frame")."""
    view = memoryview(stored).cast("B")
    try:
        pos = zstandard.frame_header_size(view)
    except zstandard.ZstdError:
        return False
    checksum = 4 if view[4] & 0x04 else 0  # Content_Checksum_flag of the Frame_Header_Descriptor
    while pos + 3 <= len(view):
        header = view[pos] | view[pos + 1] << 8 | view[pos + 2] << 16
        kind = header >> 1 & 3
        if kind == 3:  # reserved block type
            return False
        pos += 3 + (1 if kind == 1 else header >> 3)  # an RLE block holds one byte
        if header & 1:
            return pos + checksum == len(view)
    return False


def _zstd_decode_into(stored: bytes | memoryview, out: memoryview) -> bool:
    """Decode one zstd frame straight into ``out``; ``True`` only if the frame says it
    holds exactly ``len(out)`` bytes, is whole (:func:`_whole_frame`), fills ``out`` and
    ends there. Anything else (``False``) is left to :func:`zstd_decode`, so both paths
    accept and refuse the same payloads."""
    try:
        if zstandard.frame_content_size(stored) != len(out) or not _whole_frame(stored):
            return False
        reader = _decompressor().stream_reader(stored, read_size=max(len(stored), 1), read_across_frames=False)
        got = 0
        while got < len(out):
            n = reader.readinto(out[got:])
            if not n:
                return False
            got += n
        return reader.read(1) == b""
    except zstandard.ZstdError:
        return False


def decode_verified_into(codec: int, stored: bytes | memoryview, out: memoryview, digest: bytes) -> None:
    """:func:`decode_verified` into ``out``, which is exactly the chunk's raw size: the
    same payloads pass and fail, but a genuine chunk is decoded in place rather than
    into bytes of its own (a pull decodes every run into one reused buffer, so its
    memory does not depend on how the allocator treats many threads' freed chunks).
    On :class:`IntegrityError` ``out`` holds garbage."""
    decode_into(codec, stored, out)
    if blake3(out).digest() != digest:
        raise IntegrityError("its bytes do not match the digest")


def decode_into(codec: int, stored: bytes | memoryview, out: memoryview) -> None:
    """:func:`decode` into ``out``, which must be filled exactly (else
    :class:`IntegrityError`), *without* checking the result against a digest: only for a
    caller that checks every byte of ``out`` another way (a whole-file pull, against the
    file's digest: :func:`casreg.content.fetch.read_span_stats`). A hostile payload costs
    no more than with the check: every size is checked before anything is allocated."""
    if codec == Codec.ZSTD and _zstd_decode_into(stored, out):
        return
    if codec == Codec.PLANES:
        decode_planes_into(stored, out)
        return
    raw = decode(codec, stored, len(out))
    if len(raw) != len(out):  # (worded as decode_verified words it, so both name it alike)
        raise IntegrityError("its bytes do not match the digest")
    out[:] = raw


def check_decodes(codec: int, stored: bytes | memoryview, raw_size: int, digest: bytes) -> None:
    """:func:`decode_verified` when only the verdict is wanted (push's check before
    write, a pack read back whole): the same payloads pass and fail, but the chunk is
    decoded into a per-thread buffer reused from chunk to chunk. A fresh buffer per
    chunk cost about a third of the check on a 2 GiB push (its pages are faulted in
    anew each time). A raw chunk is hashed where it lies; a PLANES chunk is hashed in the
    pieces it decodes to, never copied whole."""
    if codec == Codec.PLANES:
        hasher = blake3()
        for piece in decode_planes_parts(stored, raw_size):
            hasher.update(piece)
        if hasher.digest() != digest:
            raise IntegrityError("its bytes do not match the digest")
        return
    if codec == Codec.RAW or codec == Codec.DELTA:
        decode_verified(codec, stored, raw_size, digest)
        return
    decode_verified_into(codec, stored, thread_buffer("codec.check", raw_size), digest)


def _bytes_equal(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are equal ``bytes`` objects (compared with ``memcmp``)."""
    return type(a) is bytes and type(b) is bytes and a == b


def check_decodes_to(codec: int, stored: bytes | memoryview, raw: bytes | memoryview, digest: bytes) -> None:
    """Push's check before write of a chunk whose ``digest`` the caller took of ``raw``,
    bytes that nothing changes until this returns: the payload must decode to exactly
    ``raw``. That is the same check as hashing what it decodes to (``digest`` was taken of
    these very bytes), with ``memcmp`` instead of a third BLAKE3 pass over every new byte
    of a push (1 MiB: about 20 us against 160 us here). Where no fast comparison is at
    hand (no C loops, and ``raw`` a view: a memoryview compares item by item, slower than
    hashing), it hashes as :func:`check_decodes`. The same payloads pass and fail either
    way: :class:`IntegrityError` says why not."""
    same = same_bytes
    if same is None:
        if not isinstance(raw, bytes) or codec not in (Codec.RAW, Codec.ZSTD):
            check_decodes(codec, stored, len(raw), digest)
            return
        same = _bytes_equal
    if codec == Codec.PLANES:
        pos = 0
        for piece in decode_planes_parts(stored, len(raw)):
            if not same(piece, raw[pos:pos + len(piece)]):
                raise IntegrityError("its bytes do not match the digest")
            pos += len(piece)
        if pos != len(raw):
            raise IntegrityError("its bytes do not match the digest")
        return
    if codec == Codec.ZSTD:
        # a small file's bytes: decoded in one call, compared as bytes (streaming into the
        # thread's buffer cost 2 us more a file: 5,000 files of 1-100 KB, 0.240 s against 0.230)
        out = thread_buffer("codec.check", len(raw)) if not isinstance(raw, bytes) else None
        decoded: bytes | memoryview = out if out is not None and _zstd_decode_into(stored, out) \
            else zstd_decode(stored, len(raw))
    elif codec == Codec.RAW:
        decoded = bytes(stored) if same is _bytes_equal else stored
    else:
        check_decodes(codec, stored, len(raw), digest)  # a delta needs its bases (push checks those itself)
        return
    if not same(decoded, raw):
        raise IntegrityError("its bytes do not match the digest")
