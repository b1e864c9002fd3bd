"""Chunk-size study: how FastCDC's average chunk size trades dedup against metadata.

Why: the registry's default ``avg_size`` fixes, for every stored byte, both the
dedup granularity (how much is re-stored when a few tensors change) and the
metadata volume (manifest entries per version, chunk-index entries for the
whole store).  This script measures both on the realistic workloads of
:mod:`benchmarks.workloads`, using exactly casreg's chunking recipe:
FastCDC-2020 (``pyfastcdc.cy``), ``min = avg/4``, ``max = avg*4``,
``normalized_chunking=1``, blake3 chunk ids, zstd level 3.

Usage::

    python -m benchmarks.chunk_sizes [--size 512M] [--avg 256K,512K,1M,2M,4M]
                                     [--data DIR] [--tmp /tmp] [--json OUT]

Without ``--data`` the workloads are generated into a ``/tmp/bench-chunks-*``
directory that is deleted afterwards.  Single-threaded throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3
import zstandard
from pyfastcdc.cy import FastCDC

from benchmarks.workloads import WrittenFile, describe_standard_set, parse_size, write_standard_set

DEFAULT_AVGS = (256 * 2**10, 512 * 2**10, 2**20, 2 * 2**20, 4 * 2**20)
#: Manifest entry size assumed by the design (digest + offset + length + framing).
MANIFEST_ENTRY_BYTES = 70
SINGLE_WORKLOADS = ("change2", "head", "insert", "full")
N_CKPT = 5


def make_chunker(avg: int) -> FastCDC:
    """casreg's chunker configuration for a given average size."""
    return FastCDC(avg, min_size=avg // 4, max_size=avg * 4, normalized_chunking=1)


def chunk_ids(cdc: FastCDC, path: Path) -> list[tuple[bytes, int]]:
    """(blake3 digest, length) of every chunk of ``path``, in file order (mmap, bounded memory)."""
    return [(blake3.blake3(c.data).digest(), c.length) for c in cdc.cut_file(str(path))]


@dataclass
class DedupResult:
    """Dedup of one new file against a set of already-stored chunks."""

    new_bytes: int  # bytes of distinct chunks not already stored
    file_bytes: int
    chunks: int
    reused_chunks: int  # manifest entries pointing at already-stored chunks
    ideal_new_bytes: int  # bytes of tensors that actually changed (lower bound)

    @property
    def new_pct(self) -> float:
        return 100.0 * self.new_bytes / self.file_bytes

    @property
    def reused_pct(self) -> float:
        return 100.0 * self.reused_chunks / self.chunks

    @property
    def ideal_pct(self) -> float:
        return 100.0 * self.ideal_new_bytes / self.file_bytes


def dedup(ids: Sequence[tuple[bytes, int]], stored: set[bytes], file_bytes: int, ideal: int) -> DedupResult:
    new: dict[bytes, int] = {}
    reused = 0
    for d, n in ids:
        if d in stored:
            reused += 1
        else:
            new[d] = n
    return DedupResult(sum(new.values()), file_bytes, len(ids), reused, ideal)


def changed_bytes(wf: WrittenFile) -> int:
    """Bytes of the tensors whose values changed (the best any chunker could do)."""
    by_name = {t.name: t.nbytes for t in wf.spec.tensors}
    return sum(by_name[n] for n in wf.changed)


@dataclass
class SizeResult:
    avg: int
    min_size: int
    max_size: int
    base_chunks: int
    base_bytes: int
    forced_max_cuts: int  # chunks of exactly max_size (cut not content-defined)
    cut_mb_s: float  # cut_buf over an in-memory buffer, MB = 1e6 B
    cut_hash_mb_s: float  # cut_file + blake3 of every chunk
    zstd3_ratio: float  # compressed / raw over all base chunks, one frame per chunk
    workloads: dict[str, DedupResult] = field(default_factory=dict)
    ckpt: list[DedupResult] = field(default_factory=list)

    @property
    def mean_chunk(self) -> float:
        return self.base_bytes / self.base_chunks

    @property
    def chunks_per_gib(self) -> float:
        return 2**30 / self.mean_chunk


def measure_throughput(cdc: FastCDC, buf: memoryview, repeats: int = 3) -> float:
    """Best-of-N MB/s of cut_buf over an in-memory buffer (chunk boundaries only)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _c in cdc.cut_buf(buf):
            pass
        best = min(best, time.perf_counter() - t)
    return len(buf) / best / 1e6


def zstd_ratio(cdc: FastCDC, path: Path, level: int = 3) -> float:
    """Compressed/raw size of every chunk of ``path`` compressed as its own zstd frame."""
    z = zstandard.ZstdCompressor(level=level)
    raw = comp = 0
    for c in cdc.cut_file(str(path)):
        raw += c.length
        comp += len(z.compress(c.data))
    return comp / raw


def zstd_ratio_by_dtype(wf: WrittenFile, level: int = 3, block: int = 2**20) -> dict[str, float]:
    """zstd ratio of one bf16 and one fp32 tensor, in 1 MiB frames (dtype context for the table)."""
    z = zstandard.ZstdCompressor(level=level)
    out: dict[str, float] = {}
    with open(wf.path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        data_start = 8 + hlen
        for name, info in header.items():
            if name == "__metadata__" or info["dtype"] in out:
                continue
            b, e = info["data_offsets"]
            f.seek(data_start + b)
            raw = comp = 0
            remaining = e - b
            while remaining:
                piece = f.read(min(block, remaining))
                remaining -= len(piece)
                raw += len(piece)
                comp += len(z.compress(piece))
            out[info["dtype"]] = comp / raw
    return out


def run_size(avg: int, files: dict[str, WrittenFile], base_buf: memoryview, log=print) -> SizeResult:
    cdc = make_chunker(avg)
    base = files["base"]
    t = time.perf_counter()
    base_ids = chunk_ids(cdc, base.path)
    cut_hash = base.size / (time.perf_counter() - t) / 1e6
    stored = {d for d, _ in base_ids}
    res = SizeResult(
        avg=avg,
        min_size=cdc.min_size,
        max_size=cdc.max_size,
        base_chunks=len(base_ids),
        base_bytes=base.size,
        forced_max_cuts=sum(1 for _, n in base_ids if n == cdc.max_size),
        cut_mb_s=measure_throughput(cdc, base_buf),
        cut_hash_mb_s=cut_hash,
        zstd3_ratio=zstd_ratio(cdc, base.path),
    )
    for key in SINGLE_WORKLOADS:
        wf = files[key]
        res.workloads[key] = dedup(chunk_ids(cdc, wf.path), stored, wf.size, changed_bytes(wf))
    # Series: each checkpoint against base + all earlier checkpoints.
    seen = set(stored)
    for j in range(1, N_CKPT + 1):
        wf = files[f"ckpt-{j}"]
        ids = chunk_ids(cdc, wf.path)
        res.ckpt.append(dedup(ids, seen, wf.size, changed_bytes(wf)))
        seen.update(d for d, _ in ids)
    log(f"  avg={_fmt_size(avg)} done", file=sys.stderr)
    return res


def _fmt_size(n: float) -> str:
    for unit, div in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= div and n % div == 0:
            return f"{n // div:.0f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def markdown(results: Sequence[SizeResult], dtype_ratio: dict[str, float]) -> str:
    """Render the results as markdown tables."""
    lines = []
    first = results[0]
    ideal = {k: first.workloads[k].ideal_pct for k in SINGLE_WORKLOADS}
    ideal_ckpt = _mean(r.ideal_pct for r in first.ckpt)
    lines.append("Dedup: **new bytes %** (bytes of chunks not already stored / file size) "
                 "and **chunks reused %** (manifest entries pointing at stored chunks).")
    lines.append("")
    lines.append("| avg chunk | change2 new / reused | head new / reused | insert new / reused "
                 "| full new / reused | ckpt series new / reused (mean of 5) |")
    lines.append("|---|---|---|---|---|---|")
    lines.append(
        f"| *ideal (changed tensor bytes)* | *{ideal['change2']:.2f}%* | *{ideal['head']:.2f}%* "
        f"| *{ideal['insert']:.2f}%* | *{ideal['full']:.2f}%* | *{ideal_ckpt:.2f}%* |"
    )
    for r in results:
        cells = [f"{r.workloads[k].new_pct:.2f}% / {r.workloads[k].reused_pct:.1f}%" for k in SINGLE_WORKLOADS]
        ck_new = _mean(x.new_pct for x in r.ckpt)
        ck_reuse = _mean(x.reused_pct for x in r.ckpt)
        ck_max = max(x.new_pct for x in r.ckpt)
        lines.append(f"| {_fmt_size(r.avg)} | " + " | ".join(cells)
                     + f" | {ck_new:.2f}% (max {ck_max:.2f}%) / {ck_reuse:.1f}% |")
    lines.append("")
    lines.append("Cost: chunking speed, compression and metadata volume.")
    lines.append("")
    lines.append("| avg chunk | base chunks | mean chunk | max-size cuts | cut_buf MB/s | cut+blake3 MB/s "
                 "| zstd-3 size/raw | chunks per GiB | manifest per GiB (70 B/entry) "
                 "| chunks per 100 GB file | chunk-index entries per 10 TB unique |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        per_gib = r.chunks_per_gib
        lines.append(
            f"| {_fmt_size(r.avg)} | {r.base_chunks} | {r.mean_chunk / 2**10:.0f} KiB "
            f"| {r.forced_max_cuts} | {r.cut_mb_s:.0f} | {r.cut_hash_mb_s:.0f} | {r.zstd3_ratio:.3f} "
            f"| {per_gib:.0f} | {per_gib * MANIFEST_ENTRY_BYTES / 2**10:.0f} KiB "
            f"| {100e9 / r.mean_chunk:,.0f} | {10e12 / r.mean_chunk / 1e6:.1f} M |"
        )
    lines.append("")
    lines.append("zstd-3 size/raw of whole tensors (1 MiB frames): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in sorted(dtype_ratio.items())))
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chunk_sizes", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=parse_size, default=512 * 2**20, help="base model size (default 512M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--avg", default="256K,512K,1M,2M,4M", help="comma-separated average chunk sizes")
    p.add_argument("--data", type=Path, help="existing `python -m benchmarks.workloads` output dir to reuse")
    p.add_argument("--tmp", default="/tmp", help="parent dir for the generated workloads (deleted afterwards)")
    p.add_argument("--json", type=Path, help="also write raw results as JSON here")
    a = p.parse_args(argv)
    avgs = [parse_size(x) for x in a.avg.split(",")]

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    tmpdir = None
    try:
        if a.data:
            files = describe_standard_set(a.data, a.size, a.seed)
        else:
            tmpdir = Path(tempfile.mkdtemp(prefix="bench-chunks-", dir=a.tmp))
            t = time.perf_counter()
            print(f"generating workloads into {tmpdir} ...", file=sys.stderr)
            files = write_standard_set(tmpdir, size_bytes=a.size, seed=a.seed)
            print(f"  generated in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        base_buf = memoryview(files["base"].path.read_bytes())
        dtype_ratio = zstd_ratio_by_dtype(files["base"])
        results = [run_size(avg, files, base_buf) for avg in avgs]
        del base_buf
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    print(f"# chunk-size study, {started}, {_machine()}")
    print(f"# base file {files['base'].size} B, {len(files['base'].tensor_names)} tensors; pyfastcdc "
          f"min=avg/4 max=avg*4 normalized_chunking=1; blake3; zstd level 3\n")
    print(markdown(results, dtype_ratio))
    print("\nPer-checkpoint new bytes % (vs base + earlier checkpoints):")
    for r in results:
        print(f"  {_fmt_size(r.avg)}: " + ", ".join(f"{x.new_pct:.2f}%" for x in r.ckpt))
    if a.json:
        payload = {
            "started": started,
            "machine": _machine(),
            "argv": sys.argv,
            "dtype_zstd3_ratio": dtype_ratio,
            "results": [
                {**{k: v for k, v in asdict(r).items() if k not in ("workloads", "ckpt")},
                 "mean_chunk": r.mean_chunk,
                 "workloads": {k: {**asdict(v), "new_pct": v.new_pct, "reused_pct": v.reused_pct}
                               for k, v in r.workloads.items()},
                 "ckpt": [{**asdict(v), "new_pct": v.new_pct, "reused_pct": v.reused_pct} for v in r.ckpt]}
                for r in results
            ],
        }
        a.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
