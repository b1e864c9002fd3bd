"""Push and pull of one large new file, casreg trees side by side with ``zstd``, in one run.

    python -m benchmarks.bigfile FILE [--tree LABEL=DIR ...] [--rounds 3] [--work DIR]

Issue 14's goals for one new 2 GiB bf16 safetensors file: ``casreg push`` at least 1.5x
the speed of ``zstd -3 -T0 -q -f FILE -o x.zst``, ``casreg pull`` at least 1.5x
``zstd -d -q -f x.zst -o DEST``. The machine is shared (2 cores), so every round runs
every command once: each ``--tree`` (a casreg source tree, e.g. a worktree of main as the
baseline and this one; default: this one) pushes ``FILE`` into a fresh local registry and
pulls it back to a fresh path, and zstd compresses and decompresses it. The order of
these arms (each tree, zstd) is reversed every other round: on this VM a command's
kernel time depends on what the one before it freed, and with a fixed order the first
tree's pull was the slowest whatever its code (docs/benchmarks.md, "Write size").
Each command runs under ``/usr/bin/time -v`` (wall, CPU = user + sys, peak RSS), with the
input read into the page cache before and a ``sync`` after (not timed). Every round is
printed, then the medians and the ratios against zstd of the same rounds; CPU seconds are
the steadier number on a loaded machine. Every pull is compared with ``FILE``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Timed:
    wall: float
    cpu: float
    rss_mb: float


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Timed:
    """Run ``cmd`` under GNU time (in ``cwd``); fail loudly if it fails."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name, *cmd], env=env, cwd=cwd, capture_output=True,
                              text=True)
        if proc.returncode:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        text = tf.read()
    def field(name: str) -> str:
        m = re.search(rf"{re.escape(name)}: (.+)", text)
        assert m, name
        return m.group(1).strip()
    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    return Timed(wall, cpu, int(field("Maximum resident set size (kbytes)")) / 1024)


def warm(path: Path) -> None:
    for p in [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()):
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bigfile", description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                    help="a casreg source tree to time (repeatable; default: this one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new one in /tmp)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("casreg", str(HERE))]
    work = args.work or Path(tempfile.mkdtemp(prefix="casreg-bigfile-"))
    size = args.file.stat().st_size
    rows: dict[str, list[Timed]] = {}
    stored: dict[str, int] = {}

    def record(label: str, t: Timed) -> None:
        rows.setdefault(label, []).append(t)
        print(f"  {label:24s} wall {t.wall:6.2f} s  CPU {t.cpu:6.2f} s  RSS {t.rss_mb:5.0f} MB", flush=True)

    try:
        for r in range(1, args.rounds + 1):
            order = "as given" if r % 2 else "reversed"
            print(f"round {r} (load {os.getloadavg()[0]:.2f}, arms {order})", flush=True)
            arms: list[tuple[str, str] | None] = [*trees, None]  # None: zstd
            for arm in arms if r % 2 else arms[::-1]:
                if arm is None:
                    zst, zout = work / "x.zst", work / "z.out"
                    warm(args.file)
                    subprocess.run(["sync"], check=True)
                    record("zstd -3 -T0", timed(["zstd", "-3", "-T0", "-q", "-f", str(args.file), "-o", str(zst)]))
                    subprocess.run(["sync"], check=True)
                    stored["zstd -3"] = zst.stat().st_size
                    warm(zst)
                    record("zstd -d", timed(["zstd", "-d", "-q", "-f", str(zst), "-o", str(zout)]))
                    subprocess.run(["sync"], check=True)
                    zout.unlink()
                    continue
                label, tree = arm
                # ``python -m`` puts the working directory first on sys.path, before
                # PYTHONPATH: each tree's commands run in that tree, or all would run this one.
                tree = str(Path(tree).resolve())
                env = dict(os.environ, PYTHONPATH=tree)
                reg, dest = work / f"reg-{label}", work / f"out-{label}"
                shutil.rmtree(reg, ignore_errors=True)
                dest.unlink(missing_ok=True)
                warm(args.file)
                subprocess.run(["sync"], check=True)
                record(f"{label} push", timed([args.python, "-m", "casreg_cli.main", "push", "big", str(args.file),
                                               "--registry", str(reg), "--quiet"], env, tree))
                subprocess.run(["sync"], check=True)
                stored[label] = sum(p.stat().st_size for p in reg.rglob("*") if p.is_file())
                warm(reg)
                record(f"{label} pull", timed([args.python, "-m", "casreg_cli.main", "pull", "big:1", str(dest),
                                               "--registry", str(reg), "--quiet"], env, tree))
                subprocess.run(["sync"], check=True)
                if subprocess.run(["cmp", "-s", str(args.file), str(dest)]).returncode:
                    raise SystemExit(f"{label}: the pulled file differs from {args.file}")
                dest.unlink()
                shutil.rmtree(reg)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: Timed(*(statistics.median(getattr(t, f) for t in v) for f in ("wall", "cpu", "rss_mb")))
           for k, v in rows.items()}
    print(f"\nmedians of {args.rounds} rounds, {size:,} B input")
    print("| command | wall s | CPU s | MB/s | peak RSS MB | stored B | speed vs zstd (wall / CPU) |")
    print("|---|---|---|---|---|---|---|")
    for k, t in med.items():
        ref = med["zstd -d" if k.endswith("pull") or k == "zstd -d" else "zstd -3 -T0"]
        st = stored.get(k.removesuffix(" push"), None) if not k.endswith("pull") else None
        st = stored["zstd -3"] if k == "zstd -3 -T0" else st
        print(f"| {k} | {t.wall:.2f} | {t.cpu:.2f} | {size / t.wall / 1e6:.0f} | {t.rss_mb:.0f} | "
              f"{'' if st is None else f'{st:,}'} | {ref.wall / t.wall:.2f}x / {ref.cpu / t.cpu:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
