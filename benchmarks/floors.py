"""The CPU that a verified push or pull cannot avoid, stage by stage, against the peers.

    python -m benchmarks.floors [--big FILE] [--small DIR] [--rounds 3] [--work DIR]

Issue 14 asks casreg to beat ``zstd -3 -T0`` / ``zstd -d`` (one large file) and ``tar |
zstd`` / ``zstd -d | tar -x`` (5,000 small files) by set ratios on 2 cores. This measures
what is left when every overhead (Python, threads, the ledger) is taken away: each stage
of the work that casreg's guarantees require runs alone, on one thread, in this process,
and its CPU time (user + system) is taken; the best of ``--rounds`` is kept (the least
disturbed by other load on a shared machine). Then:

- the **floor** of a command is its stages' CPU added up, over 2 cores as if it were
  perfectly parallel (plus, for small files, the interpreter's start-up, which is serial);
- the **best ratio** is the peer's measured wall time (best of the rounds too) over that
  floor: no implementation of the same checks in Python on this machine can do better.

Large file (``--big``, a safetensors file; stages of casreg's own functions, on the file
read into memory once): read (into a reused buffer), FastCDC, BLAKE3 of every chunk (the
chunk digests; the whole-file digest is a second pass of the same cost), coding (PLANES
from the header's hints, else zstd), the check before write (decode, and compare with the
chunk's bytes, as a push does where the C loops are built), and for a pull: decoding (a pull
without a cache checks the chunks through the file digest only), the whole-file hash, and
writing the file.
Small files (``--small``, a directory): per file, the read, BLAKE3, zstd -3 and the check
(decode and compare); for a pull the decode, the BLAKE3 check and creating the file.
Every figure is printed; nothing is written to docs/ by this script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from blake3 import blake3

from benchmarks import bigfile
from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
from casreg.content.codec import check_decodes_to, decode_into, encode
from casreg.content.dtypes import float_layout

CORES = 2
LEVEL = 3


def cpu(stage: Callable[[], object], rounds: int) -> float:
    """The least CPU time (user + system, this process) of ``rounds`` runs of ``stage``."""
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        stage()
        best = min(best, time.process_time() - t)
    return best


def timed(cmd: str, rounds: int) -> tuple[float, float]:
    """(least wall, least CPU) seconds of a shell command over ``rounds`` runs, after a sync
    (each run under GNU time, as :func:`benchmarks.bigfile.timed` runs it)."""
    runs = []
    for _ in range(rounds):
        os.sync()
        runs.append(bigfile.timed(["bash", "-c", cmd]))
    return min(r.wall for r in runs), min(r.cpu for r in runs)


def table(title: str, rows: Iterable[tuple[str, float]], peer: tuple[str, float, float], serial: float = 0.0) -> None:
    rows = list(rows)
    total = sum(s for _, s in rows)
    floor = serial + total / CORES
    print(f"\n### {title}\n\n| stage | CPU s |\n|---|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} |")
    print(f"| **all stages** | **{total:.3f}** |")
    if serial:
        print(f"| start-up (serial) | {serial:.3f} |")
    name, wall, peer_cpu = peer
    print(f"\nFloor on {CORES} cores: {floor:.3f} s wall. `{name}`: {wall:.3f} s wall, {peer_cpu:.3f} s CPU. "
          f"Best possible ratio (peer wall / floor): **{wall / floor:.2f}x**.")


def big(path: Path, rounds: int, work: Path) -> None:
    data = memoryview(path.read_bytes())
    size = len(data)
    layout = float_layout(path, size)
    cuts = [(c.offset, c.length) for c in DEFAULT_CHUNK_PARAMS.chunker().cut_buf(data)]
    chunks = [data[o:o + n] for o, n in cuts]
    hints = [layout.hint(o, n) if layout else None for o, n in cuts]
    digests = [blake3(c).digest() for c in chunks]
    coded = [encode(c, LEVEL, h) for c, h in zip(chunks, hints)]
    stored = sum(len(s) for _, s in coded)
    buf = bytearray(8 << 20)
    out = memoryview(bytearray(max(n for _, n in cuts)))

    def read() -> None:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass

    def write() -> None:
        target = work / "floors-big.out"
        with open(target, "wb", buffering=0) as fh:
            for c in chunks:
                fh.write(c)
        target.unlink()

    def decode_all() -> None:
        for (codec, s), c in zip(coded, chunks):
            decode_into(codec, s, out[:len(c)])

    t_read = cpu(read, rounds)
    t_write = cpu(write, rounds)
    t_cdc = cpu(lambda: list(DEFAULT_CHUNK_PARAMS.chunker().cut_buf(data)), rounds)
    t_hash = cpu(lambda: [blake3(c).digest() for c in chunks], rounds)
    t_code = cpu(lambda: [encode(c, LEVEL, h) for c, h in zip(chunks, hints)], rounds)
    t_check = cpu(lambda: [check_decodes_to(codec, s, c, d) for (codec, s), c, d in zip(coded, chunks, digests)],
                  rounds)
    t_decode = cpu(decode_all, rounds)
    share = stored / size  # packs hold the coded bytes: reading or writing them costs that share of the file's
    print(f"\n## {path.name}: {size:,} bytes, {len(chunks)} chunks, stored {stored:,} ({size / stored:.3f}x)")
    zst = work / "floors-big.zst"
    push_peer = timed(f"zstd -{LEVEL} -T0 -q -f {path} -o {zst}", rounds)
    pull_peer = timed(f"zstd -d -q -f {zst} -o {work / 'floors-big.dec'} && rm {work / 'floors-big.dec'}", rounds)
    zst.unlink()
    table("push of the file", [("read the file", t_read), ("FastCDC", t_cdc), ("BLAKE3 of every chunk", t_hash),
                               ("BLAKE3 of the whole file", t_hash), ("code every chunk", t_code),
                               ("check before write (decode, compare)", t_check),
                               ("write the packs", t_write * share)],
          (f"zstd -{LEVEL} -T0", *push_peer))
    table("pull of the file", [("read the packs", t_read * share), ("decode every chunk", t_decode),
                               ("BLAKE3 of the whole file", t_hash), ("write the file", t_write)],
          ("zstd -d", *pull_peer))


def small(root: Path, rounds: int, work: Path) -> None:
    import zstandard

    paths = sorted(p for p in root.rglob("*") if p.is_file())
    datas = [p.read_bytes() for p in paths]
    size = sum(len(d) for d in datas)
    comp, dec = zstandard.ZstdCompressor(level=LEVEL), zstandard.ZstdDecompressor()
    frames = [comp.compress(d) for d in datas]

    def read() -> None:
        for p in paths:
            with open(p, "rb", buffering=0) as fh:
                fh.read()

    def create() -> None:
        dest = work / "floors-small"
        for d in {p.parent for p in paths}:
            (dest / d.relative_to(root)).mkdir(parents=True, exist_ok=True)
        for p, d in zip(paths, datas):
            fd = os.open(dest / p.relative_to(root), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, d)
            os.close(fd)
        shutil.rmtree(dest)

    t_read = cpu(read, rounds)
    t_hash = cpu(lambda: [blake3(d).digest() for d in datas], rounds)
    t_code = cpu(lambda: [comp.compress(d) for d in datas], rounds)
    t_check = cpu(lambda: [dec.decompress(f, max_output_size=len(d)) == d for f, d in zip(frames, datas)], rounds)
    t_create = cpu(create, rounds)
    startup = timed(f"{sys.executable} -c 'import casreg_cli.main'", rounds)[0]
    print(f"\n## {root}: {len(paths):,} files, {size:,} bytes, zstd -{LEVEL} "
          f"{size / sum(len(f) for f in frames):.3f}x")
    arc = work / "floors-small.tar.zst"
    push_peer = timed(f"tar -C {root.parent} -cf - {root.name} | zstd -{LEVEL} -T0 -q -f -o {arc}", rounds)
    dest = work / "floors-untar"
    pull_peer = timed(f"rm -rf {dest} && mkdir {dest} && zstd -d -q -c {arc} | tar -C {dest} -xf -", rounds)
    shutil.rmtree(dest)
    arc.unlink()
    table("push of the files", [("read every file", t_read), ("BLAKE3", t_hash), (f"zstd -{LEVEL}", t_code),
                                ("check before write (decode, compare)", t_check)],
          (f"tar | zstd -{LEVEL} -T0", *push_peer), serial=startup)
    table("pull of the files",
          [("decode", t_check), ("BLAKE3 check", t_hash), ("create and write every file", t_create)],
          ("zstd -d | tar -x", *pull_peer), serial=startup)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=Path, help="a large safetensors file")
    ap.add_argument("--small", type=Path, help="a directory of small files")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="scratch space for writes")
    args = ap.parse_args(argv)
    if not args.big and not args.small:
        ap.error("give --big FILE, --small DIR or both")
    load = os.getloadavg()
    print(f"# Floors: {CORES} cores, best of {args.rounds} rounds; load average {load[0]:.2f} {load[1]:.2f}")
    if args.big:
        big(args.big, args.rounds, args.work)
    if args.small:
        small(args.small, args.rounds, args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
