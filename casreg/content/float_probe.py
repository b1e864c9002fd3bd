"""A guess, from a chunk's own bytes, that it holds little-endian floating-point elements.

A safetensors file says where its float tensors are (:mod:`casreg.content.dtypes`); other
files do not: raw ``.bin`` tensor dumps, ``.npy`` arrays, the stored members of a PyTorch
``.bin`` zip, ONNX initializers. For their chunks a push asks :func:`probe_floats`, which
looks at a small sample in the middle of the chunk and counts the distinct byte values at
each offset modulo 4. Weights' exponents take few values and their mantissas nearly all:

- bf16 (and usually fp16): two of the four offsets, two apart, hold few distinct values
  (the byte with the exponent), the other two nearly every value;
- fp32: one offset holds few values (sign and seven exponent bits), the two below it
  nearly every value (the low mantissa bytes);
- text, JSON, code, compressed or random bytes, zeros: all four offsets look alike.

A guess only chooses a codec: the PLANES payload is decoded and checked against the
chunk's digest before it is stored like any other (a wrong guess costs bytes, never
correctness), and a payload that saves under 1% is stored raw as before. On bf16
weights in 1 MiB chunks: 1.51x with PLANES against 1.28x with zstd -3, in 0.63x of its
CPU. The probe counts in C where the codecs' C loops are built (about 2 us a chunk;
``distinct`` in ``_planes_c.c``), else in plain Python (about 30 us): it used numpy,
whose import cost every push of a model directory 40-70 ms of CPU holding the GIL (a
`tokenizer.json` is probed), where the C loops otherwise spare pushes numpy altogether.
"""

from __future__ import annotations

from casreg.content.codec import FloatHint
from casreg.content.planes import CODES_BATCHES, distinct_bytes

__all__ = ["probe_floats", "PROBE_MIN_BYTES", "SMALL_PROBE_MIN_BYTES"]

#: Chunks of a large file shorter than this are not probed: below it the PLANES codec's
#: fixed cost per chunk coded on its own (a dozen numpy calls, each holding the GIL)
#: outweighed its saving in CPU. Measured (one core, bf16 weights, code and check): 16 KiB
#: chunks 1.31x zstd -3's CPU, 64 KiB 0.82x, 256 KiB 0.50x, 1 MiB 0.63x; pushes of issue
#: 14's 5,000 files of 1-100 KB took 2.87 s of CPU probed from 4 KiB on and 2.29 s from
#: 64 KiB on, against 1.99 s unprobed (medians of 3 on a loaded machine).
#: 256 KiB is the chunker's default minimum: every chunk of a large file but its last is
#: probed. With the C loops, PLANES costs less CPU than zstd -3 from 12 KiB on and stores
#: 15% less at every size (bf16 small files, one core), but a push of many small files
#: coded one at a time took longer on two workers (1.17-1.22 s against 1.04-1.07 s): each
#: chunk's PLANES coding passes the GIL back and forth a dozen times
#: (docs/benchmarks-codec.md). Small files, coded in batches, have their own minimum.
PROBE_MIN_BYTES = 256 << 10
#: Small files (one chunk each, read whole and coded in batches by a push's workers:
#: :func:`casreg.content.codec.encode_many`) are probed from this size on, where a batch's
#: PLANES chunks are coded with a few calls (:data:`~casreg.content.planes.CODES_BATCHES`):
#: from 12-16 KiB on PLANES costs less CPU than zstd -3 on bf16 weights and it stores 15%
#: less at every size (one core, above), and coded in batches it no longer costs the GIL
#: hand-offs that made the per-chunk coding of small files slower on two workers
#: (docs/benchmarks-codec.md, "Small float files coded together"). Without batches, small
#: files are not probed.
SMALL_PROBE_MIN_BYTES = 16 << 10 if CODES_BATCHES else PROBE_MIN_BYTES
#: Bytes sampled from the middle of a chunk: 512 per offset modulo 4.
_SAMPLE = 2048
#: At most this many distinct values at an exponent offset (bf16 weights: about 12;
#: fp16 about 60; JSON and text: 30-60 at every offset, so the other offsets decide).
_FEW = 100
#: At least this many distinct values at a mantissa offset (uniform bytes: about 220
#: of 256 in 512 samples; text and JSON: under 60).
_MANY = 160


def distinct_per_offset(raw: bytes | memoryview) -> list[int]:
    """The number of distinct byte values at each offset modulo 4 (relative to the start
    of ``raw``) in the sample :func:`probe_floats` looks at."""
    view = memoryview(raw).cast("B")
    start = max(0, len(view) // 2 - _SAMPLE // 2) & ~3  # a multiple of 4: offsets keep their phase
    m = min(_SAMPLE, len(view) - start) & ~3
    if distinct_bytes is not None:
        return list(distinct_bytes(view[start:start + m]))
    sample = view[start:start + m].tobytes()
    return [len(set(sample[i::4])) for i in range(4)]


def probe_floats(raw: bytes | memoryview, min_bytes: int = PROBE_MIN_BYTES) -> FloatHint | None:
    """The PLANES hint ``(width, head)`` for ``raw`` if its bytes look like little-endian
    bf16/fp16 (width 2) or fp32 (width 4) elements, the first whole one ``head`` bytes in;
    ``None`` otherwise, and for chunks under ``min_bytes`` (:data:`PROBE_MIN_BYTES`; a small
    file's: :data:`SMALL_PROBE_MIN_BYTES`). Pure function of
    the bytes; any input is safe (it only reads a 2 KiB sample)."""
    if len(raw) < min_bytes:
        return None
    d = distinct_per_offset(raw)
    few = [i for i in range(4) if d[i] <= _FEW]
    many = [i for i in range(4) if d[i] >= _MANY]
    if len(few) == 2 and few[1] - few[0] == 2 and len(many) == 2:
        # the exponent's byte is the high byte of each 2-byte element: elements start one before
        return 2, (few[0] + 1) % 2
    if len(few) == 1 and (few[0] - 2) % 4 in many and (few[0] - 3) % 4 in many:
        # the high byte of each 4-byte element; its two lowest bytes are mantissa
        return 4, (few[0] + 1) % 4
    return None
