"""Deterministic, realistic model-file workloads for casreg benchmarks and tests.

Why this exists: chunking/dedup numbers are only meaningful on data shaped like
real model artifacts -- safetensors files with a JSON header followed by large,
high-entropy bf16/fp32 tensors -- and on the *kinds of change* a registry sees
between versions (a few tensors retrained, a head fine-tuned, a full
fine-tune, a training-checkpoint series, a tensor inserted at the front).

Design rules:

* Pure numpy; the file format is written by hand (8-byte LE header length,
  space-padded JSON header, tensor data concatenated in header order), so no
  safetensors dependency is needed to *generate* files.
* Every tensor's values are a pure function of its recipe (a tuple of
  :class:`Layer`), the tensor name and the slice index -- never of a sequential
  RNG stream.  A tensor that is "the same" in two workloads is therefore
  bit-identical no matter which other tensors exist or in which order they are
  written.
* Files are streamed in slices of :data:`SLICE_ELEMS` float32 values (16 MiB),
  so writing a multi-GB file uses bounded memory (~3 slices).

Run ``python -m benchmarks.workloads OUTDIR [--size 512M] [--seed 0]`` to
write the standard set of files, or ``python -m benchmarks.workloads --self-test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: float32 elements generated per slice (16 MiB of float32 working memory).
SLICE_ELEMS = 4 * 2**20
#: Standard deviation of freshly initialised / trained weights.
INIT_STD = 0.02
#: Standard deviation of the per-step update used by fine-tunes and checkpoints.
UPDATE_STD = 1e-3

_ITEMSIZE = {"BF16": 2, "F32": 4}


@dataclass(frozen=True)
class Layer:
    """One additive component of a tensor's values: ``scale * N(0, 1)``.

    The normal samples come from an RNG keyed by ``(tag, seed, tensor name,
    slice index)``, so a layer is reproducible in isolation.  A tensor's value
    is the float32 sum of its layers (in order), then cast to its dtype.
    """

    tag: str
    seed: int
    scale: float


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype, shape and value recipe of one tensor."""

    name: str
    dtype: str  # "BF16" | "F32"
    shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _ITEMSIZE[self.dtype]

    def with_layer(self, layer: Layer) -> TensorSpec:
        """Same tensor after an additive update (e.g. a training step)."""
        return dataclasses.replace(self, layers=self.layers + (layer,))

    def with_new_values(self, layer: Layer) -> TensorSpec:
        """Same name/dtype/shape, entirely new values (re-initialised / retrained)."""
        return dataclasses.replace(self, layers=(layer,))


@dataclass(frozen=True)
class ModelSpec:
    """An ordered list of tensors: enough to regenerate a file bit-for-bit."""

    tensors: tuple[TensorSpec, ...]
    seed: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def replace_tensors(self, updates: dict[str, TensorSpec]) -> ModelSpec:
        """Copy with some tensors replaced by name, order preserved."""
        unknown = set(updates) - set(self.names)
        if unknown:
            raise KeyError(f"unknown tensors: {sorted(unknown)}")
        return dataclasses.replace(
            self, tensors=tuple(updates.get(t.name, t) for t in self.tensors)
        )


@dataclass(frozen=True)
class WrittenFile:
    """A file written by this module plus the spec that reproduces it.

    ``changed`` lists the tensors whose values differ from the spec this file
    was derived from (empty for a base model) -- a ground-truth oracle for
    dedup tests.
    """

    path: Path
    size: int
    tensor_names: tuple[str, ...]
    spec: ModelSpec
    changed: tuple[str, ...] = ()


SpecLike = ModelSpec | WrittenFile


def _as_spec(spec: SpecLike) -> ModelSpec:
    return spec.spec if isinstance(spec, WrittenFile) else spec


# --------------------------------------------------------------------------- values


def _slice_rng(layer: Layer, name: str, slice_index: int) -> np.random.Generator:
    key = [zlib.crc32(layer.tag.encode()), layer.seed, zlib.crc32(name.encode()), slice_index]
    return np.random.default_rng(key)


def iter_tensor_bytes(t: TensorSpec) -> Iterator[np.ndarray]:
    """Yield the tensor's little-endian data in slices of <= SLICE_ELEMS elements.

    Each yielded array is freshly allocated and may be dropped after writing;
    peak memory is ~3 * SLICE_ELEMS * 4 bytes regardless of tensor size.
    """
    if not t.layers:
        raise ValueError(f"tensor {t.name} has no value layers")
    n = t.numel
    for s, start in enumerate(range(0, n, SLICE_ELEMS)):
        m = min(SLICE_ELEMS, n - start)
        out = np.empty(m, dtype=np.float32)
        first, *rest = t.layers
        _slice_rng(first, t.name, s).standard_normal(dtype=np.float32, out=out)
        out *= np.float32(first.scale)
        if rest:
            tmp = np.empty(m, dtype=np.float32)
            for layer in rest:
                _slice_rng(layer, t.name, s).standard_normal(dtype=np.float32, out=tmp)
                tmp *= np.float32(layer.scale)
                out += tmp
            del tmp
        if t.dtype == "F32":
            yield out.astype("<f4", copy=False)
        elif t.dtype == "BF16":
            # bf16 = top 16 bits of the float32 bit pattern (truncation).
            yield (out.view(np.uint32) >> 16).astype("<u2")
        else:
            raise ValueError(f"unsupported dtype {t.dtype}")
        del out


# --------------------------------------------------------------------------- writing


def _header_bytes(spec: ModelSpec) -> bytes:
    header: dict[str, object] = {}
    off = 0
    for t in spec.tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(spec: SpecLike, path: str | os.PathLike[str], changed: Sequence[str] = ()) -> WrittenFile:
    """Stream ``spec`` to ``path`` as a safetensors file with bounded memory."""
    spec = _as_spec(spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(_header_bytes(spec))
        for t in spec.tensors:
            for arr in iter_tensor_bytes(t):
                f.write(memoryview(arr).cast("B"))
    return WrittenFile(path, path.stat().st_size, spec.names, spec, tuple(changed))


def make_base_spec(size_bytes: int = 512 * 2**20, n_tensors: int = 24, seed: int = 0) -> ModelSpec:
    """Spec of a base model: n_tensors roughly equal 2-D tensors, alternating BF16/F32.

    Why: roughly half the bytes bf16 and half fp32 covers both common storage
    dtypes; equal sizes make "k of n tensors changed" map to k/n of the bytes.
    The last tensor is ``lm_head.weight`` (the usual target of head fine-tunes).
    """
    if n_tensors < 2:
        raise ValueError("n_tensors must be >= 2")
    per_tensor = max(64, size_bytes // n_tensors)
    tensors = []
    for i in range(n_tensors):
        name = f"model.layers.{i}.weight" if i < n_tensors - 1 else "lm_head.weight"
        dtype = "BF16" if i % 2 == 0 else "F32"
        elems = max(1, per_tensor // _ITEMSIZE[dtype])
        cols = 2048 if elems >= 2048 * 8 else max(1, min(64, elems))
        rows = max(1, round(elems / cols))
        tensors.append(TensorSpec(name, dtype, (rows, cols), (Layer("init", seed, INIT_STD),)))
    return ModelSpec(tuple(tensors), seed)


# --------------------------------------------------------------------------- workloads


def base_model(
    path: str | os.PathLike[str], size_bytes: int = 512 * 2**20, n_tensors: int = 24, seed: int = 0
) -> WrittenFile:
    """Write the base model every other workload is derived from."""
    return write_safetensors(make_base_spec(size_bytes, n_tensors, seed), path)


def changed_indices(n_tensors: int, k: int) -> list[int]:
    """Fixed, evenly spread tensor indices away from the ends (k=2, n=24 -> [5, 17])."""
    if not 0 <= k <= n_tensors:
        raise ValueError("k out of range")
    return sorted({min(n_tensors - 1, max(0, (2 * i + 1) * n_tensors // (2 * k) - 1)) for i in range(k)})


Derived = tuple[ModelSpec, tuple[str, ...]]  # (new spec, names of tensors whose values changed)


def change_tensors_spec(base_spec: SpecLike, k: int = 2, seed: int = 1) -> Derived:
    """Spec for :func:`change_tensors` (no I/O)."""
    spec = _as_spec(base_spec)
    idx = changed_indices(len(spec.tensors), k)
    updates = {
        spec.tensors[i].name: spec.tensors[i].with_new_values(Layer("change", seed, INIT_STD)) for i in idx
    }
    return spec.replace_tensors(updates), tuple(updates)


def change_tensors(base_spec: SpecLike, path: str | os.PathLike[str], k: int = 2, seed: int = 1) -> WrittenFile:
    """k tensors get entirely new values (same shapes): "retrained a few layers".

    Acceptance case: changing 2 of 24 tensors must store only ~2/24 of the file.
    The tensors are fixed, spread away from the ends (k=2 of 24 -> indices 5, 17).
    """
    spec, changed = change_tensors_spec(base_spec, k, seed)
    return write_safetensors(spec, path, changed)


def head_finetune_spec(base_spec: SpecLike, seed: int = 2) -> Derived:
    """Spec for :func:`head_finetune` (no I/O)."""
    spec = _as_spec(base_spec)
    last = spec.tensors[-1]
    updated = last.with_layer(Layer("head-ft", seed, UPDATE_STD))
    return spec.replace_tensors({last.name: updated}), (last.name,)


def head_finetune(base_spec: SpecLike, path: str | os.PathLike[str], seed: int = 2) -> WrittenFile:
    """Only the last tensor (``lm_head.weight``) changes (base + small update): a head fine-tune."""
    spec, changed = head_finetune_spec(base_spec, seed)
    return write_safetensors(spec, path, changed)


def full_finetune_spec(base_spec: SpecLike, seed: int = 3, scale: float = UPDATE_STD) -> Derived:
    """Spec for :func:`full_finetune` (no I/O)."""
    spec = _as_spec(base_spec)
    updates = {t.name: t.with_layer(Layer("full-ft", seed, scale)) for t in spec.tensors}
    return spec.replace_tensors(updates), tuple(updates)


def full_finetune(
    base_spec: SpecLike, path: str | os.PathLike[str], seed: int = 3, scale: float = UPDATE_STD
) -> WrittenFile:
    """Every tensor = base + scale*N(0,1), cast to its dtype: the no-dedup worst case.

    The update is added to the float32 value before casting (fp32 master
    weights), so essentially every stored element differs from the base.
    """
    spec, changed = full_finetune_spec(base_spec, seed, scale)
    return write_safetensors(spec, path, changed)


def checkpoint_series_specs(base_spec: SpecLike, n: int = 5, seed: int = 4) -> list[Derived]:
    """Specs for :func:`checkpoint_series` (no I/O); ``changed`` is relative to the previous one."""
    spec = _as_spec(base_spec)
    out: list[Derived] = []
    for j in range(1, n + 1):
        group = (j - 1) % 4
        updates = {
            t.name: t.with_layer(Layer(f"ckpt{j}", seed, UPDATE_STD))
            for i, t in enumerate(spec.tensors)
            if i % 4 == group
        }
        spec = spec.replace_tensors(updates)
        out.append((spec, tuple(updates)))
    return out


def checkpoint_series(
    base_spec: SpecLike, dir: str | os.PathLike[str], n: int = 5, seed: int = 4
) -> list[WrittenFile]:
    """n checkpoints ``dir/ckpt-{1..n}.safetensors``; checkpoint j updates ~1/4 of the tensors vs j-1.

    Models partially-frozen training: checkpoint j updates the tensors with
    ``index % 4 == (j - 1) % 4`` (checkpoint 1 relative to the base) by a small
    additive step, so consecutive checkpoints share ~3/4 of their tensors.
    """
    return [
        write_safetensors(spec, Path(dir) / f"ckpt-{j}.safetensors", changed)
        for j, (spec, changed) in enumerate(checkpoint_series_specs(base_spec, n, seed), start=1)
    ]


def insert_front_spec(base_spec: SpecLike, insert_bytes: int = 2**20, seed: int = 5) -> Derived:
    """Spec for :func:`insert_front` (no I/O)."""
    spec = _as_spec(base_spec)
    elems = max(1, insert_bytes // 2)
    cols = 1024 if elems >= 1024 else elems
    extra = TensorSpec("model.embed_extra", "BF16", (elems // cols, cols), (Layer("insert", seed, INIT_STD),))
    return dataclasses.replace(spec, tensors=(extra,) + spec.tensors), (extra.name,)


def insert_front(
    base_spec: SpecLike, path: str | os.PathLike[str], insert_bytes: int = 2**20, seed: int = 5
) -> WrittenFile:
    """A new bf16 tensor ``model.embed_extra`` first in the header and at data offset 0.

    Every other tensor is bit-identical but shifted by insert_bytes (plus the
    header growth): the case fixed-size chunking cannot dedup and CDC must.
    """
    spec, changed = insert_front_spec(base_spec, insert_bytes, seed)
    return write_safetensors(spec, path, changed)


def standard_set_specs(
    size_bytes: int = 512 * 2**20, seed: int = 0
) -> dict[str, tuple[str, ModelSpec, tuple[str, ...]]]:
    """key -> (relative path, spec, changed) for the standard benchmark set (no I/O)."""
    base = make_base_spec(size_bytes, seed=seed)
    out: dict[str, tuple[str, ModelSpec, tuple[str, ...]]] = {"base": ("base.safetensors", base, ())}
    out["change2"] = ("change2.safetensors", *change_tensors_spec(base, k=2))
    out["head"] = ("head.safetensors", *head_finetune_spec(base))
    out["full"] = ("full.safetensors", *full_finetune_spec(base))
    out["insert"] = ("insert.safetensors", *insert_front_spec(base))
    for j, derived in enumerate(checkpoint_series_specs(base, n=5), start=1):
        out[f"ckpt-{j}"] = (f"ckpt/ckpt-{j}.safetensors", *derived)
    return out


def write_standard_set(
    outdir: str | os.PathLike[str], size_bytes: int = 512 * 2**20, seed: int = 0
) -> dict[str, WrittenFile]:
    """Write base/change2/head/full/insert and ckpt/ckpt-{1..5} into outdir."""
    return {
        key: write_safetensors(spec, Path(outdir) / rel, changed)
        for key, (rel, spec, changed) in standard_set_specs(size_bytes, seed).items()
    }


def describe_standard_set(
    outdir: str | os.PathLike[str], size_bytes: int = 512 * 2**20, seed: int = 0
) -> dict[str, WrittenFile]:
    """Descriptors of an already-written standard set (checks the file sizes match the specs)."""
    files = {}
    for key, (rel, spec, changed) in standard_set_specs(size_bytes, seed).items():
        path = Path(outdir) / rel
        expected = len(_header_bytes(spec)) + spec.data_bytes
        if path.stat().st_size != expected:
            raise ValueError(f"{path}: {path.stat().st_size} B, expected {expected} B for size={size_bytes}")
        files[key] = WrittenFile(path, expected, spec.names, spec, changed)
    return files


# --------------------------------------------------------------------------- self-test


def _raw_tensors(path: Path) -> dict[str, tuple[str, list[int], int, bytes]]:
    """name -> (dtype, shape, nbytes, sha256 of data) via the safetensors library's own parser.

    Only digests are kept, so checking many files holds one file in memory at a time.
    """
    import safetensors  # noqa: PLC0415  (bench-only dependency)

    data = path.read_bytes()
    out = {
        name: (v["dtype"], list(v["shape"]), len(v["data"]), hashlib.sha256(v["data"]).digest())
        for name, v in safetensors.deserialize(data)
    }
    del data
    return out


def self_test(workdir: str | os.PathLike[str] | None = None, size_bytes: int = 24 * 2**20) -> None:
    """Check the generated files with the real safetensors library (needs `safetensors`).

    Checks: files parse; names/dtypes/shapes match the spec; F32 tensors load
    through ``safetensors.numpy.load_file``-equivalent numpy views and bf16
    values decode to ~N(0, 0.02); change2 differs from base in exactly the 2
    chosen tensors, head in lm_head only, full in all, insert keeps every base
    tensor bit-identical; checkpoints change ~1/4 of tensors each; generation is
    deterministic.
    """
    from safetensors import safe_open  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-selftest-", dir=workdir) as d:
        d = Path(d)
        files = write_standard_set(d, size_bytes=size_bytes, seed=0)
        raw = {k: _raw_tensors(wf.path) for k, wf in files.items()}

        from safetensors.numpy import load_file  # noqa: PLC0415

        for key, wf in files.items():
            assert set(raw[key]) == set(wf.tensor_names), key
            # Library view of dtypes/shapes must match our spec.
            with safe_open(wf.path, framework="numpy") as f:
                assert set(f.keys()) == set(wf.tensor_names), key
                assert f.metadata() == {"format": "pt"}, key
                for t in wf.spec.tensors:
                    sl = f.get_slice(t.name)
                    assert sl.get_dtype() == t.dtype and list(sl.get_shape()) == list(t.shape), (key, t.name)
                    assert raw[key][t.name][2] == t.nbytes, (key, t.name)
                    if t.dtype == "F32":
                        arr = f.get_tensor(t.name)
                        assert arr.dtype == np.float32 and arr.shape == t.shape, (key, t.name)
            # load_file parses the whole file; plain numpy has no bfloat16, so on files
            # with BF16 tensors it can only fail at the final dtype conversion.
            try:
                loaded = load_file(wf.path)
            except TypeError as e:
                assert "bfloat16" in str(e), e
            else:
                assert {k: v.shape for k, v in loaded.items()} == {t.name: t.shape for t in wf.spec.tensors}

        # bf16 decodes to plausible weights.
        t0 = files["base"].spec.tensors[0]
        assert t0.dtype == "BF16"
        b = np.concatenate(list(iter_tensor_bytes(t0)))
        assert hashlib.sha256(b.tobytes()).digest() == raw["base"][t0.name][3]
        vals = (b.astype(np.uint32) << 16).view(np.float32)
        assert abs(float(vals.std()) - INIT_STD) < 1e-3 and abs(float(vals.mean())) < 1e-3, vals.std()
        del b, vals

        def differing(a: str, b: str) -> set[str]:
            common = set(raw[a]) & set(raw[b])
            return {n for n in common if raw[a][n][3] != raw[b][n][3]}

        names = files["base"].tensor_names
        assert differing("base", "change2") == {names[5], names[17]}, differing("base", "change2")
        assert differing("base", "head") == {"lm_head.weight"}
        assert differing("base", "full") == set(names)
        assert differing("base", "insert") == set() and set(raw["insert"]) == set(names) | {"model.embed_extra"}
        prev = "base"
        for j in range(1, 6):
            cur = f"ckpt-{j}"
            expect = {n for i, n in enumerate(names) if i % 4 == (j - 1) % 4}
            assert differing(prev, cur) == expect, (cur, differing(prev, cur))
            prev = cur
        # insert: new tensor is first in the file at data offset 0.
        with open(files["insert"].path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            hdr = json.loads(f.read(n))
        assert next(iter(hdr)) == "model.embed_extra" and hdr["model.embed_extra"]["data_offsets"][0] == 0

        # Determinism and independence from generation order.
        again = base_model(d / "again.safetensors", size_bytes=size_bytes, seed=0)
        assert _sha256(again.path) == _sha256(files["base"].path)
        # The public numpy loader reads an all-F32 file completely and bit-exactly.
        f32 = ModelSpec(tuple(t for t in files["base"].spec.tensors if t.dtype == "F32"), 0)
        wf = write_safetensors(f32, d / "f32.safetensors")
        loaded = load_file(wf.path)
        for t in f32.tensors:
            assert loaded[t.name].shape == t.shape and loaded[t.name].dtype == np.float32
            assert hashlib.sha256(loaded[t.name].tobytes()).digest() == raw["base"][t.name][3]
    print(f"self-test OK ({len(files)} files, {size_bytes / 2**20:.0f} MiB base)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**22), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- CLI


def parse_size(text: str) -> int:
    """'512M' -> 536870912 (binary units K/M/G/T, optional 'iB'/'B')."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size: {text!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workloads", description=__doc__.splitlines()[0])
    p.add_argument("outdir", nargs="?", help="directory to write the workload files into")
    p.add_argument("--size", type=parse_size, default=512 * 2**20, help="base model size (default 512M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--self-test", action="store_true", help="validate files with the safetensors library")
    a = p.parse_args(argv)
    if a.self_test:
        self_test()
        if not a.outdir:
            return 0
    if not a.outdir:
        p.error("outdir is required")
    files = write_standard_set(a.outdir, size_bytes=a.size, seed=a.seed)
    for _key, wf in files.items():
        print(f"{wf.path}\t{wf.size}\tchanged={len(wf.changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
