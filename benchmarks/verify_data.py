"""What ``casreg verify --read-data`` adds to ``casreg verify`` on a fine-tune series.

Builds, in a temporary directory, a local registry holding

* ``ft``: ``--versions`` versions of one safetensors file of ``--size`` bytes (bf16 and
  fp32 tensors, :mod:`benchmarks.workloads`), each version retraining a tenth of the
  tensors of the one before (10% of the bytes change per version);
* ``shards``: ``--versions`` versions of a directory of ten shards of ``--size / 10``
  bytes each plus two small JSON files, each version changing one shard;

then times, alternating, ``casreg verify`` and ``casreg verify --read-data`` (the whole
registry) and the same for the newest version of ``ft``, each ``--repeat`` times, and
prints a Markdown table (median, min, max seconds). Run from the repository root:

    python -m benchmarks.verify_data --size 200M --versions 10 --repeat 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.workloads import UPDATE_STD, Layer, iter_tensor_bytes, make_base_spec, parse_size, write_safetensors


def _patch(path: Path, spec_offsets: dict[str, int], tensors: list[object]) -> None:
    """Overwrite the bytes of ``tensors`` (``TensorSpec``) in the file at ``path``."""
    with open(path, "r+b") as f:
        for t in tensors:
            f.seek(spec_offsets[t.name])  # type: ignore[attr-defined]
            for arr in iter_tensor_bytes(t):  # type: ignore[arg-type]
                f.write(memoryview(arr).cast("B"))


def _offsets(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: 8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def build(root: Path, size: int, versions: int, casreg: list[str], env: dict[str, str]) -> Path:
    reg = root / "reg"
    spec = make_base_spec(size, n_tensors=20, seed=0)
    src = root / "ft.safetensors"
    write_safetensors(spec, src)
    offsets = _offsets(src)
    shards = root / "shards"
    shards.mkdir()
    (shards / "config.json").write_text(json.dumps({"layers": 20, "dtype": "bf16"}))
    (shards / "tokenizer.json").write_text(json.dumps({"vocab": list(range(5000))}))
    data = src.read_bytes()
    per = len(data) // 10
    for i in range(10):
        (shards / f"model-{i:05d}-of-00010.bin").write_bytes(data[i * per:(i + 1) * per])
    del data
    tensors = list(spec.tensors)
    for v in range(1, versions + 1):
        if v > 1:  # retrain two of the twenty tensors (10% of the bytes), and change one shard
            picked = [(2 * v) % 20, (2 * v + 7) % 20]
            for i in picked:
                tensors[i] = dataclasses.replace(tensors[i], layers=tensors[i].layers + (Layer("ft", v, UPDATE_STD),))
            _patch(src, offsets, [tensors[i] for i in picked])
            shard = shards / f"model-{v % 10:05d}-of-00010.bin"
            blob = bytearray(shard.read_bytes())
            blob[:] = os.urandom(len(blob)) if v % 2 else bytes(reversed(blob))
            shard.write_bytes(blob)
        for name, path in (("ft", src), ("shards", shards)):
            subprocess.run([*casreg, "push", name, str(path), "-q", "-r", str(reg)], check=True, env=env)
    return reg


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{argv} failed: {p.stderr}")
    return took


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="200M")
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    casreg = [str(Path(sys.executable).with_name("casreg"))]
    env = dict(os.environ, CASREG_CACHE="off", CASREG_USER="bench@example.test")
    root = Path(tempfile.mkdtemp(prefix="casreg-verify-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        reg = build(root, parse_size(args.size), args.versions, casreg, env)
        stored = sum(p.stat().st_size for p in (reg / "packs").rglob("*.pack"))
        print(f"registry built in {time.perf_counter() - t0:.0f} s: {2 * args.versions} versions, "
              f"{stored:,} bytes of packs", file=sys.stderr)
        p = subprocess.run([*casreg, "verify", "--read-data", "-r", str(reg)], env=env, capture_output=True,
                           text=True, check=True)
        print(p.stdout.strip(), file=sys.stderr)
        cases = [("verify", [*casreg, "verify", "-q", "-r", str(reg)]),
                 ("verify --read-data", [*casreg, "verify", "--read-data", "-q", "-r", str(reg)]),
                 (f"verify ft:{args.versions}", [*casreg, "verify", f"ft:{args.versions}", "-q", "-r", str(reg)]),
                 (f"verify ft:{args.versions} --read-data",
                  [*casreg, "verify", f"ft:{args.versions}", "--read-data", "-q", "-r", str(reg)])]
        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        for _ in range(args.repeat):
            for name, cmd in cases:
                times[name].append(timed(cmd, env))
        print("| command | median s | min s | max s | runs |")
        print("|---|---:|---:|---:|---|")
        for name, ts in times.items():
            print(f"| `casreg {name}` | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} | "
                  f"{', '.join(f'{t:.2f}' for t in ts)} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
