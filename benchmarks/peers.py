"""casreg beside restic, borg, casync and dvc on the 10-version model workload, in one run.

    python -m benchmarks.peers [--harness DIR] [--root DIR] [--tools "casreg casync borg"]
                               [--reps N] [--small] [--quiet-load L] [--out docs/benchmarks-peers.md]

The method is the shared peers harness's (``../shared/bench/peers/``, its README): a
deterministic 4.7 GB workload, every tool storing the ten versions in order into a fresh store
under ``/usr/bin/time -v``, stored bytes from the disk, two restores diffed against the input.
This module runs that harness with casreg installed from ``git archive HEAD`` of this checkout
(commit first: the working tree is not what is measured), then writes its tables, the commit,
the exact command and the machine's load around every tool run into ``--out``.

``--small`` also runs ``single_small.sh``: casreg against ``zstd -3 -T0`` / ``zstd -d`` on one
2 GiB file and against ``tar | zstd`` / ``zstd -d | tar -x`` on 5,000 small files.

Figures from different runs are not comparable (a shared machine drifts 2x between days):
compare only the rows of one report. Every run is reported, not the best one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_HARNESS = REPO.parent / "shared" / "bench" / "peers"
DEFAULT_TOOLS = "baseline oracle restic-auto borg casync dvc casreg"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _run(script: Path, env: dict[str, str], log: Path) -> int:
    """Run one harness script, its output teed into ``log``; its exit code."""
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--harness", type=Path, default=DEFAULT_HARNESS, help="the peers harness directory")
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "casreg-peers",
                    help="where the workload, stores and results go (15 GB with --reps 3)")
    ap.add_argument("--tools", default=DEFAULT_TOOLS, help=f"harness tools (default: {DEFAULT_TOOLS!r})")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--versions", default="", help="a subset of the workload's versions (default: all ten)")
    ap.add_argument("--small", action="store_true", help="also run single_small.sh (one 2 GiB file, 5,000 files)")
    ap.add_argument("--quiet-load", default="", help="wait for a 1-minute load below this before timing")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-peers.md")
    args = ap.parse_args(argv)

    run_peers = args.harness / "run_peers.sh"
    if not run_peers.is_file():
        print(f"error: no peers harness at {args.harness} (give --harness DIR)", file=sys.stderr)
        return 2
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("warning: the working tree has uncommitted changes; the harness measures HEAD", file=sys.stderr)
    commit = _git("rev-parse", "--short", "HEAD")
    res = args.root / "results"
    env = {**os.environ, "ROOT": str(args.root), "RES": str(res), "HERE": str(args.harness),
           "TOOLS": args.tools, "REPS": str(args.reps), "CASREG_SRC": str(REPO)}
    if args.versions:
        env["VERSIONS"] = args.versions
    if args.quiet_load:
        env["QUIET_LOAD"] = args.quiet_load
    args.root.mkdir(parents=True, exist_ok=True)
    # the harness installs casreg only where no venv is left from an earlier run: remove it, so
    # that what is measured is always HEAD (a stale venv measured an older commit, silently)
    for stale in ("casreg-venv", "casreg-src"):
        shutil.rmtree(args.root / stale, ignore_errors=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    code = _run(run_peers, env, args.root / "peers.log")
    if code == 0 and args.small:
        small_env = {**env, "CASREG": str(args.root / "casreg-venv" / "bin" / "casreg"),
                     "GENPY": str(args.root / "venv" / "bin" / "python"), "RES": str(res)}
        code = _run(args.harness / "single_small.sh", small_env, args.root / "small.log")
    minutes = (time.monotonic() - t0) / 60
    if code != 0:
        print(f"error: the harness failed (exit {code}); see {args.root}/*.log", file=sys.stderr)
        return code

    command = "python -m benchmarks.peers " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    parts = [
        "# casreg beside its peers, one run\n",
        f"Commit `{commit}`, started {started}, {minutes:.0f} min. Command: `{command.strip()}` "
        f"(harness: `{args.harness}`, tools `{args.tools}`, {args.reps} repetition(s)). The machine is shared "
        "(2 cores): the load averages around every tool run are in the tables; compare only rows of this run.\n",
    ]
    tables = _read(res / "tables.md")
    if tables:
        parts += ["## Ten versions, every tool in one run (`run_peers.sh`)\n", tables]
    # (only this run's: without --small, what an earlier run left under the same --root is not ours)
    small = _read(res / "ss" / "tables.md") if args.small else ""
    if small:
        parts += ["## One new 2 GiB file and 5,000 small files (`single_small.sh`)\n", small]
    failures = _read(res / "failures.txt")
    if failures:
        parts += ["## Failures\n", "```", failures.strip(), "```"]
    args.out.write_text("\n".join(parts) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
