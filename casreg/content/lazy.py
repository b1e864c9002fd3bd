"""Random access into one file of one version, and lazy safetensors reads on top.

Why: a serving job that needs one tensor of a 20 GB checkpoint must not download 20 GB.
A version's manifest already says where every chunk of a file lives (pack, offset,
sizes), so a byte range ``[start, end)`` maps to the few chunks that cover it; those are
fetched with :func:`casreg.content.fetch.read_span` (through ``read_span_stats``; one
ranged read per run of chunks lying back to back in a pack), which decodes and checks
every chunk's BLAKE3 before handing it over. A read therefore transfers at most one
chunk beyond each end of the range, and a corrupt chunk raises
:class:`~casreg.errors.IntegrityError`, never wrong bytes.

:class:`PinnedFile` holds the manifest entry it was opened with: the reference was
resolved once, before it existed, so a pointer that moves while it reads can never mix
two versions. The ``casreg://`` filesystem (:mod:`casreg.fs`) and
:func:`casreg.open_safetensors` both read through it.

numpy is imported only when a tensor is materialised, so ``import casreg`` stays light.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Literal

from blake3 import blake3

from casreg.content.fetch import Bases, DecodedBases, concurrent_bases_bytes, read_span_stats, spans
from casreg.content.manifest import ChunkRef, Entry, Manifest
from casreg.content.source import open_regular
from casreg.errors import IntegrityError, InvalidInputError, MissingDependencyError, NotFoundError
from casreg.storage import ObjectStore

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "PinnedFile",
    "SafetensorsFile",
    "TensorInfo",
    "file_entry",
    "MAX_HEADER_BYTES",
    "MAX_LOCAL_HEADER_BYTES",
    "parse_header",
    "read_local_header",
]

#: The safetensors reference implementation refuses headers above 100 MB; so do we, before
#: reading them (a hostile length field must not make us fetch or allocate gigabytes).
MAX_HEADER_BYTES = 100_000_000
#: Decoded chunks a :class:`PinnedFile` keeps, so small reads in a row (a header parsed in
#: pieces, ``readline``) do not fetch the same chunk again. At most 4 MiB each by default.
DEFAULT_CHUNK_CACHE = 8
#: Decoded bytes those chunks may take at most (the last chunk read is always kept): a
#: registry whose ``casreg.json`` allows 64 MiB chunks must not make 8 of them stay.
CHUNK_CACHE_BYTES = 32 << 20
#: Raw bytes fetched per step of a long read (spans in a step are fetched in parallel on
#: object stores); bounds a read's memory beyond its own output (and, for a delta-coded
#: file, the base chunks kept for its deltas: casreg.content.fetch.concurrent_bases_bytes).
WINDOW_BYTES = 64 << 20


def file_entry(manifest: Manifest, path: str, where: str) -> Entry:
    """The file ``path`` of a version: for a file version, ``""`` or its own name; for a
    directory, the entry at ``path``. ``where`` names the request in the error."""
    if manifest.kind == "file":
        e = manifest.entries[0]
        if path in ("", e.path):
            return e
    else:
        for e in manifest.entries:
            if e.path == path and e.type != "d":
                return e
        if path == "" or any(e.path == path or e.path.startswith(path + "/") for e in manifest.entries):
            raise IsADirectoryError(f"{where} is a directory, not a file")
    raise NotFoundError(f"{where}: no such file in this version")


class PinnedFile:
    """Read-only random access to one manifest entry, fetching only the chunks a range
    needs and verifying each (see the module docstring).

    Reads that proceed sequentially from offset 0 also feed a BLAKE3 of the whole file,
    checked against the entry's file digest when they reach the end: a whole-file read
    is verified exactly like a pull. ``fetched_bytes`` and ``requests`` count the stored
    bytes and ranged reads this object asked of the registry; ``cached_bytes`` the raw
    bytes the local chunk cache (:mod:`casreg.content.cache`, consulted inside ``read_span``)
    served instead. A chunk served from this object's own few recent chunks costs nothing.
    """

    def __init__(self, store: ObjectStore, entry: Entry, *, where: str = "", cache_chunks: int = DEFAULT_CHUNK_CACHE,
                 threads: int | None = None, source: str = "", bases: Bases | None = None) -> None:
        self.store = store
        self.bases = bases  # where the version's delta bases are (Manifest.base_map)
        # The bases read for this file's deltas, kept across its reads and threads, so each is
        # read once while kept rather than once per ranged read that needs it; as many as the
        # ranged reads that run at once need (the 16 MiB a pull kept read a 44 MB tensor's
        # bases 15% over again on S3, eight reads at a time: docs/benchmarks-lazy.md).
        self._decoded_bases = DecodedBases(store, concurrent_bases_bytes(store)) if bases else None
        self.source = source  # the key of the manifest ``entry`` comes from, for errors
        self.entry = entry
        self.size = entry.size
        self.where = where or entry.path
        self._chunks: list[ChunkRef] = entry.chunks
        self._starts: list[int] = list(accumulate((c.raw_size for c in entry.chunks), initial=0))
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_chunks = max(0, cache_chunks)
        self._threads = threads
        self._lock = threading.Lock()
        self._hasher = blake3()
        self._hashed = 0
        self.fetched_bytes = 0
        self.cached_bytes = 0
        self.requests = 0

    def __repr__(self) -> str:
        return f"PinnedFile({self.where!r}, size={self.size})"

    def chunk_bounds(self, start: int, end: int) -> tuple[int, int]:
        """The byte range ``[lo, hi)`` of the chunks that cover ``[start, end)``: what a
        read of that range fetches at most (in raw bytes)."""
        if start >= end:
            return start, start
        i0, i1 = self._chunk_indices(start, end)
        return self._starts[i0], self._starts[i1]

    def _chunk_indices(self, start: int, end: int) -> tuple[int, int]:
        return bisect_right(self._starts, start) - 1, bisect_left(self._starts, end)

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file (clipped to its size)."""
        start, end = max(0, start), min(end, self.size)
        if start >= end:
            return b""
        data = b"".join(self._pieces(start, end))
        self._feed_hash(start, data)
        return data

    def readinto(self, start: int, out: memoryview) -> int:
        """Fill ``out`` from offset ``start``; returns the number of bytes written."""
        end = min(start + len(out), self.size)
        pos = 0
        for piece in self._pieces(start, end):
            out[pos:pos + len(piece)] = piece
            pos += len(piece)
        return pos

    def _pieces(self, start: int, end: int) -> Iterator[memoryview]:
        """The bytes of ``[start, end)`` as slices of decoded chunks, fetched a window of
        at most ``WINDOW_BYTES`` at a time: a 10 GB tensor needs its output buffer, not a
        second copy of itself in chunks."""
        i0, i1 = self._chunk_indices(start, end)
        w0 = i0
        while w0 < i1:
            w1 = max(bisect_right(self._starts, self._starts[w0] + WINDOW_BYTES, w0 + 1, i1 + 1) - 1, w0 + 1)
            chunks = self._fetch(w0, w1)
            for i in range(w0, w1):
                raw = memoryview(chunks[i])
                base = self._starts[i]
                yield raw[max(start - base, 0):min(end - base, len(raw))]
            del chunks
            w0 = w1

    def _fetch(self, i0: int, i1: int) -> dict[int, bytes]:
        """Chunks ``i0 .. i1-1``, decoded and verified: from the small cache, else with one
        :func:`read_span` per run of missing chunks that lie back to back in a pack."""
        got: dict[int, bytes] = {}
        with self._lock:
            for i in range(i0, i1):
                if i in self._cache:
                    self._cache.move_to_end(i)
                    got[i] = self._cache[i]
        runs: list[list[int]] = []
        missing = [i for i in range(i0, i1) if i not in got]
        for _, stretch in itertools.groupby(enumerate(missing), key=lambda t: t[1] - t[0]):  # consecutive indices
            indices = [i for _, i in stretch]
            for span in spans([self._chunks[i] for i in indices]):  # the same runs a pull reads
                runs.append(indices[:len(span)])
                indices = indices[len(span):]
        if runs:
            concurrency = self.store.io_concurrency
            if len(runs) > 1 and concurrency > 1:
                workers = min(len(runs), self._threads or 2 * concurrency)
                with ThreadPoolExecutor(workers, thread_name_prefix="casreg-read") as pool:
                    results = list(pool.map(lambda run: read_span_stats(self.store, [self._chunks[j] for j in run],
                                                                        bases=self.bases, shared=self._decoded_bases),
                                            runs))
            else:
                results = [read_span_stats(self.store, [self._chunks[j] for j in run], bases=self.bases,
                                           shared=self._decoded_bases)
                           for run in runs]
            with self._lock:
                for run, res in zip(runs, results):
                    self.requests += res.requests
                    self.fetched_bytes += res.fetched_bytes
                    self.cached_bytes += res.cached_bytes
                    for j, raw in zip(run, res.chunks):
                        got[j] = raw
                for j in range(i0, i1):  # keep the last chunks of this read
                    if j in got and self._cache_chunks:
                        self._cache[j] = got[j]
                        self._cache.move_to_end(j)
                held = sum(len(c) for c in self._cache.values())
                while len(self._cache) > self._cache_chunks or (held > CHUNK_CACHE_BYTES and len(self._cache) > 1):
                    held -= len(self._cache.popitem(last=False)[1])
        return got

    def _feed_hash(self, start: int, data: bytes) -> None:
        with self._lock:
            if not start <= self._hashed < start + len(data):
                return
            self._hasher.update(memoryview(data)[self._hashed - start:])
            self._hashed = start + len(data)
            if self._hashed == self.size and self._hasher.digest() != self.entry.digest:
                of = f"manifest {self.source} is corrupt: " if self.source else ""
                raise IntegrityError(
                    f"{of}{self.where} does not match its file digest blake3:{self.entry.digest.hex()}")


# -- safetensors --------------------------------------------------------------------------------

#: safetensors dtype -> (numpy dtype string, item size). BF16 and F8 have no numpy dtype;
#: see SafetensorsFile for how they are returned.
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1),
    "BOOL": ("?", 1), "F8_E4M3": ("u1", 1), "F8_E5M2": ("u1", 1),
}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
BF16Mode = Literal["auto", "uint16", "float32"]
Framework = Literal["np", "pt"]
#: safetensors dtype -> torch dtype attribute (what safetensors' own torch loader uses).
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32",
                 "U64": "uint64"}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a safetensors header; ``start``/``end`` are offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


#: Headers of local files being pushed are read up to this size (for the tensor schema and
#: the codec's hints; a header of a 70B model's shard is well under 1 MiB).
MAX_LOCAL_HEADER_BYTES = 16 << 20


def read_local_header(path: str | os.PathLike[str], size: int,
                      limit: int = MAX_LOCAL_HEADER_BYTES) -> dict[str, TensorInfo]:
    """The tensors of the local safetensors file at ``path`` (``size`` bytes), their
    ``start``/``end`` offsets in the file. Reads the header only, at most ``limit`` bytes
    of it, with the checks of :func:`parse_header`: anything that is not a valid header
    raises :class:`ValueError` (:class:`OSError` for the file itself). A FIFO or device
    where a regular file was (put there after a push's scan) is refused without blocking
    (``O_NONBLOCK``) or reading it."""
    fd = open_regular(path)
    if fd is None:
        raise ValueError("not a regular file")
    with open(fd, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > limit or n > size - 8:
            raise ValueError(f"header length {n} is too large")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError("the file is shorter than its header")
    try:
        tensors, _ = parse_header(raw, size - 8 - n)
    except (UnicodeDecodeError, RecursionError) as err:
        raise ValueError(str(err)) from None
    return {k: TensorInfo(t.name, t.dtype, t.shape, t.start + 8 + n, t.end + 8 + n) for k, t in tensors.items()}


def parse_header(raw: bytes, data_size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate a safetensors JSON header against a data area of ``data_size`` bytes;
    return the tensors (offsets made relative to the file by the caller) and metadata.
    Raises ``ValueError`` naming the first problem: a hostile header must not lead to a
    read outside the file, a huge allocation, or two tensors sharing bytes."""
    doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    if not isinstance(doc, dict):
        raise ValueError("the header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, t in doc.items():
        if not isinstance(t, dict):
            raise ValueError(f"tensor {name!r} is not an object")
        dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise ValueError(f"tensor {name!r} has data_offsets {offsets!r} outside the data area "
                             f"of {data_size} bytes")
        count = 1
        for d in shape:
            count *= d
        if count * _DTYPES[dtype][1] != offsets[1] - offsets[0]:
            raise ValueError(f"tensor {name!r}: shape {shape} of {dtype} needs {count * _DTYPES[dtype][1]} bytes, "
                             f"data_offsets give {offsets[1] - offsets[0]}")
        tensors[name] = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    last_end, last_name = 0, None
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start < last_end:
            raise ValueError(f"tensors {last_name!r} and {t.name!r} overlap")
        if t.end > t.start:
            last_end, last_name = t.end, t.name
    return tensors, meta


class SafetensorsFile:
    """A safetensors file in a registry, read lazily: opening it reads the 8-byte header
    length and the JSON header (validated); :meth:`get_tensor` then reads only that
    tensor's byte range (the chunks covering it). Mirrors ``safetensors.safe_open``:
    ``keys()``, ``get_tensor(name)``, ``metadata()``, and works as a context manager.

    ``framework="np"`` (default) returns numpy arrays. BF16 has no numpy dtype:
    ``bf16="auto"`` returns ``ml_dtypes.bfloat16`` arrays, and raises
    :class:`~casreg.errors.MissingDependencyError` (saying what to install, or which
    ``bf16`` to pass) when ml_dtypes is not installed, rather than handing back integers
    that look like weights; ``"uint16"`` always returns the raw bits; ``"float32"`` widens
    exactly (bf16 is the top half of a float32). F8_E4M3/F8_E5M2 come back as ml_dtypes
    float8 arrays; without ml_dtypes, as raw ``uint8`` under ``bf16="uint16"``, else the
    same error.

    ``framework="pt"`` returns torch tensors of the file's own dtypes (``torch.bfloat16``
    for BF16; ``bf16="float32"`` widens), the way ``safetensors.safe_open(...,
    framework="pt")`` does; it needs torch, and says so when it is missing.
    """

    def __init__(self, file: PinnedFile, *, bf16: BF16Mode = "auto", framework: Framework = "np") -> None:
        if bf16 not in ("auto", "uint16", "float32"):
            raise InvalidInputError(f"bf16={bf16!r}: use 'auto', 'uint16' or 'float32'")
        if framework not in ("np", "pt"):
            raise InvalidInputError(f"framework={framework!r}: use 'np' (numpy) or 'pt' (torch)")
        if framework == "pt":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise MissingDependencyError("framework='pt' needs torch, which is not installed "
                                             "(pip install torch), or use framework='np'") from None
        self.framework = framework
        self.file = file
        self.bf16 = bf16
        where = file.where
        if file.size < 8:
            raise IntegrityError(f"{where} is not a safetensors file: {file.size} bytes, "
                                 "shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", file.read(0, 8))
        if n > MAX_HEADER_BYTES:
            raise IntegrityError(f"{where}: safetensors header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if n > file.size - 8:
            raise IntegrityError(f"{where}: safetensors header length {n} runs past the end of the "
                                 f"{file.size}-byte file")
        self.data_start = 8 + n
        try:
            tensors, self._metadata = parse_header(file.read(8, 8 + n), file.size - self.data_start)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise IntegrityError(f"{where}: invalid safetensors header: {err}") from None
        self._tensors = {k: TensorInfo(t.name, t.dtype, t.shape, t.start + self.data_start, t.end + self.data_start)
                         for k, t in tensors.items()}

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.file.where!r}, {len(self._tensors)} tensors)"

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the cached chunks (nothing else is held open)."""
        self.file._cache.clear()

    def keys(self) -> list[str]:
        """Tensor names, in file order (as ``safe_open`` returns them)."""
        return [t.name for t in sorted(self._tensors.values(), key=lambda t: t.start)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def tensor_info(self, name: str) -> TensorInfo:
        """dtype, shape and file offsets of ``name``, from the header (no read)."""
        try:
            return self._tensors[name]
        except KeyError:
            raise NotFoundError(f"{self.file.where} has no tensor {name!r}") from None

    @property
    def fetched_bytes(self) -> int:
        """Stored bytes fetched from the registry so far (header included)."""
        return self.file.fetched_bytes

    @property
    def cached_bytes(self) -> int:
        """Raw bytes the local chunk cache served so far instead of the registry."""
        return self.file.cached_bytes

    def get_tensor(self, name: str) -> np.ndarray | torch.Tensor:
        """The tensor ``name``, reading only its byte range: a writable numpy array
        (``framework="np"``) or a torch tensor (``"pt"``), as the class docstring says."""
        import numpy as np

        t = self.tensor_info(name)
        buf = bytearray(t.nbytes)
        if t.nbytes:
            got = self.file.readinto(t.start, memoryview(buf))
            if got != t.nbytes:  # the header was checked against the size; the manifest's sizes add up
                raise IntegrityError(f"{self.file.where}: tensor {name!r} is truncated")
        arr = np.frombuffer(buf, dtype=np.dtype(_DTYPES[t.dtype][0])).reshape(t.shape)
        if t.dtype == "BF16" and self.bf16 == "float32":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
            if self.framework == "pt":
                import torch

                return torch.from_numpy(arr)
            return arr
        if self.framework == "pt":
            return self._torch(buf, t.dtype, t.shape)
        if t.dtype in _ML_DTYPES and (self.bf16 == "auto" or t.dtype != "BF16"):
            try:
                import ml_dtypes
            except ImportError:
                if self.bf16 == "uint16":  # F8 under "uint16": the raw bytes, as documented
                    return arr
                raise MissingDependencyError(
                    f"{self.file.where}: tensor {name!r} is {t.dtype}, which numpy has no type for: install "
                    "ml_dtypes (pip install 'casreg[tensors]'), or pass bf16='float32' (exact widening) or "
                    "bf16='uint16' (the raw bits)") from None
            typed: np.ndarray = arr.view(getattr(ml_dtypes, _ML_DTYPES[t.dtype]))
            return typed
        return arr

    @staticmethod
    def _torch(buf: bytearray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The bytes ``buf`` as a torch tensor of safetensors dtype ``dtype`` (no copy)."""
        import torch

        torch_dtype = getattr(torch, _TORCH_DTYPES[dtype], None)
        if torch_dtype is None:
            raise MissingDependencyError(f"this torch ({torch.__version__}) has no {dtype} dtype")
        if not buf:
            return torch.empty(shape, dtype=torch_dtype)
        return torch.frombuffer(buf, dtype=torch_dtype).reshape(shape)

