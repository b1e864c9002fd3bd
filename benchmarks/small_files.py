"""Push and pull of many small files: casreg against ``tar | zstd`` and ``zstd -d | tar -x``.

    python -m benchmarks.small_files SRC [--tree DIR ...] [--rounds N] [--work DIR] [--startup] [--fresh-fs]

``SRC`` is a directory of small files (issue 14's workload: 5,000 files of 1-100 KB, 60%
BF16 ``.bin`` and 40% JSON). Every round runs, in turn, for each casreg checkout given
with ``--tree`` (default: this one; give an older worktree too for "now vs before"):
``casreg push NAME SRC --registry FRESH --quiet`` and ``casreg pull NAME:1 DEST --registry
REG --quiet`` into a fresh registry and destination, and ``tar -C PARENT -cf - NAME | zstd
-3 -T0 -q -o x.tar.zst`` / ``zstd -d -q -c x.tar.zst | tar -C D -xf -``, the order of the
commands rotating from round to round. Each command runs under ``/usr/bin/time``; the table
gives every round's wall time and the medians of wall time and CPU time (user + system,
the steadier number on a shared machine; user time alone is steadier still, as the
kernel's share of file creation grows with other writers' load), and each casreg row's ratio to its peer
(peer / casreg: above 1 means casreg is faster). ``--startup`` adds ``casreg --help`` and
``casreg pull`` of a one-byte version, the fixed cost of a process. casreg runs as
``python -P -m casreg_cli.main`` with ``PYTHONPATH`` set to the checkout (checked before the
first round: without ``-P``, ``-m`` put the working directory first on ``sys.path``, and
runs started from a checkout measured that checkout for every ``--tree``).

Figures from different runs are not comparable (a shared machine drifts): compare only the
rows of one table. Every round is reported, not the best one. Each command starts after a
``sync``, so none pays for the writeback of the one before.

``--fresh-fs`` (root, ``mkfs.ext4``, loop devices): each tool, in each round, writes its
outputs (registry and pulled tree, or archive and extracted tree) on an ext4 filesystem made
for it, with its inode tables written at ``mkfs`` and no journal, as this machine's root
filesystem has none. Without it every round creates files where the rounds before deleted
5,000, and ext4 without a journal skips inodes freed in the last minutes one by one, so each
round is slower than the last, for every tool (docs/benchmarks-peers.md, "Reading this
machine's numbers").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TAR = r"tar -cf - \| zstd -3 -T0"  # row labels ("|" escaped for the markdown table)
UNTAR = r"zstd -d \| tar -x"


@dataclass
class Row:
    label: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    users: list[float] = field(default_factory=list)

    def add(self, wall: float, user: float, system: float) -> None:
        self.walls.append(wall)
        self.cpus.append(user + system)
        self.users.append(user)


#: Write back every dirty page before each timed command (``--no-sync`` turns it off): a
#: command run while the previous one's writes are flushed pays for them in file creation.
SYNC = True


def _timed(cmd: list[str] | str, env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Run ``cmd`` (a shell line if a string) under ``/usr/bin/time``, after a ``sync``
    (not timed); (wall, user, system) s."""
    if SYNC:
        os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        argv = ["/usr/bin/time", "-o", out.name, "-f", "%e %U %S"]
        argv += ["bash", "-c", cmd] if isinstance(cmd, str) else cmd
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {argv}\n{proc.stderr}")
        wall, user, system = (float(x) for x in out.read().split()[-3:])
    return wall, user, system


@contextmanager
def _fresh_fs(image: Path, mount: Path, size: str = "2G") -> Iterator[Path]:
    """A new ext4 filesystem in the file ``image``, mounted on ``mount`` (made), for as long
    as the block runs; unmounted and deleted after. Inode tables are written by ``mkfs``
    (a lazily initialised filesystem zeroes them in the background while the timed command
    runs) and there is no journal (like this machine's root filesystem)."""
    image.unlink(missing_ok=True)
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["fallocate", "-l", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        image.unlink()


def _same_tree(a: Path, b: Path) -> bool:
    return subprocess.run(["diff", "-r", "-q", str(a), str(b)], capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.small_files", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="the directory of small files to push")
    ap.add_argument("--tree", type=Path, action="append", help="a casreg checkout to measure (repeatable; "
                    "default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "casreg-small-bench",
                    help="scratch directory (emptied)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs casreg")
    ap.add_argument("--startup", action="store_true", help="also time `casreg --help` and a one-byte pull")
    ap.add_argument("--no-check", action="store_true", help="do not diff each pulled tree against SRC")
    ap.add_argument("--no-sync", action="store_true", help="do not sync before each timed command")
    ap.add_argument("--fresh-fs", action="store_true", help="each tool's outputs, each round, on a new ext4 "
                    "(needs root, mkfs.ext4 and loop devices)")
    args = ap.parse_args(argv)
    global SYNC
    SYNC = not args.no_sync
    src = args.src.resolve()
    trees = [t.resolve() for t in (args.tree or [REPO])]
    names = [f"{t.name}" for t in trees]
    if len(set(names)) != len(names):
        names = [str(t) for t in trees]
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tiny = work / "tiny-src"
    tiny.mkdir()
    (tiny / "t").write_bytes(b"t")

    rows: dict[str, Row] = {}

    def row(key: str) -> Row:
        return rows.setdefault(key, Row(key))

    def casreg(tree: Path, *cli: str) -> tuple[list[str], dict[str, str]]:
        # -P: ``python -m`` would put the working directory first on sys.path, ahead of
        # PYTHONPATH, so that run from a checkout every tree ran that checkout's code.
        env = {**os.environ, "PYTHONPATH": str(tree)}
        return [args.python, "-P", "-m", "casreg_cli.main", *cli], env

    for tree in trees:  # each tree's commands must run that tree's code (checked, not assumed)
        cmd, env = casreg(tree)
        cmd[cmd.index("-m"):] = ["-c", "import casreg, casreg_cli; print(casreg.__file__, casreg_cli.__file__)"]
        loaded = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()
        if any(Path(f).resolve().parent.parent != tree for f in loaded):
            raise SystemExit(f"--tree {tree}: its commands would run {' and '.join(loaded)}")

    @contextmanager
    def outputs() -> Iterator[Path]:
        """Where a job writes: ``work``, or a filesystem of its own (``--fresh-fs``)."""
        if not args.fresh_fs:
            yield work
            return
        with _fresh_fs(work / "fresh.img", work / "fresh") as mounted:
            os.sync()  # mkfs's writes, not the timed command's
            yield mounted

    def job_casreg(i: int, tree: Path, name: str) -> None:
        with outputs() as out:
            run_casreg(i, tree, name, out)

    def run_casreg(i: int, tree: Path, name: str, out: Path) -> None:
        reg, dest = out / f"reg-{i}-{name}", out / f"dest-{i}-{name}"
        cmd, env = casreg(tree, "push", src.name, str(src), "--registry", str(reg), "--quiet")
        row(f"push [{name}]").add(*_timed(cmd, env))
        cmd, env = casreg(tree, "pull", f"{src.name}:1", str(dest), "--registry", str(reg), "--quiet")
        row(f"pull [{name}]").add(*_timed(cmd, env))
        if not args.no_check and not _same_tree(src, dest):
            raise SystemExit(f"pulled tree {dest} differs from {src}")
        if args.startup:
            row(f"--help [{name}]").add(*_timed(*casreg(tree, "--help")))
            _timed(*casreg(tree, "push", "t", str(tiny / "t"), "--registry", str(reg), "--quiet"))
            cmd, env = casreg(tree, "pull", "t:1", str(out / f"edest-{i}-{name}"), "--registry", str(reg),
                              "--quiet")
            row(f"one-byte pull [{name}]").add(*_timed(cmd, env))
        shutil.rmtree(reg)
        shutil.rmtree(dest)
        shutil.rmtree(out / f"edest-{i}-{name}", ignore_errors=True)

    def job_tar(i: int) -> None:
        with outputs() as out:
            run_tar(i, out)

    def run_tar(i: int, out: Path) -> None:
        arc, dest = out / f"x-{i}.tar.zst", out / f"tdest-{i}"
        row(TAR).add(*_timed(f"tar -C {src.parent} -cf - {src.name} | zstd -3 -T0 -q -o {arc}"))
        dest.mkdir()
        row(UNTAR).add(*_timed(f"zstd -d -q -c {arc} | tar -C {dest} -xf -"))
        arc.unlink()
        shutil.rmtree(dest)

    jobs = [lambda i, t=t, n=n: job_casreg(i, t, n) for t, n in zip(trees, names)] + [job_tar]
    for i in range(args.rounds):
        k = i % len(jobs)
        for job in jobs[k:] + jobs[:k]:  # rotate the order from round to round
            job(i)
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)

    print(f"{sum(1 for p in src.rglob('*') if p.is_file())} files, "
          f"{sum(p.stat().st_size for p in src.rglob('*') if p.is_file()):,} bytes; {args.rounds} rounds; "
          f"{'each tool on a new ext4 each round; ' if args.fresh_fs else ''}"
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| command | rounds: wall s | median wall s | median CPU s | median user s | wall ratio | CPU ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    peer = {"push": rows.get(TAR), "pull": rows.get(UNTAR)}
    for r in rows.values():
        w, c = statistics.median(r.walls), statistics.median(r.cpus)
        p = peer.get(r.label.split(" ")[0])
        ratios = f"{statistics.median(p.walls) / w:.2f} | {statistics.median(p.cpus) / c:.2f}" if p else " | "
        print(f"| {r.label} | {' / '.join(f'{x:.2f}' for x in r.walls)} | {w:.2f} | {c:.2f} | "
              f"{statistics.median(r.users):.2f} | {ratios} |")
    print("\nratio: the peer's median over casreg's (above 1: casreg is faster)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
