"""End-to-end benchmark of the casreg CLI against the tools it must keep up with.

Why: the acceptance criteria compare casreg with ``zstd`` (push must reach 80% of
``zstd -3 -T0`` compression throughput, pull must be at least as fast as ``zstd -d``)
and require real dedup on real-shaped model files.  Those comparisons only mean
something when every tool runs in the same session, on the same machine state, on
the same input -- so this script measures everything in one go and writes the
report (``docs/benchmarks.md``) from what it measured, nothing else.

What it does:

1. writes the standard workload set of :mod:`benchmarks.workloads` (base, change2,
   head, full, insert, ckpt-1..5) at ``--size`` into a temporary directory;
2. times, on the base file, ``cp``, ``b3sum``, ``zstd -3 -T0``, ``zstd -d`` and the
   ``casreg push`` / ``casreg pull`` subprocesses (fresh registry / destination each
   time), ``--warmup`` untimed rounds then ``--repeat`` timed rounds interleaved, input warm
   in the page cache, ``sync``
   before every timed command; medians, min/max and peak RSS (``wait4``);
3. pushes every workload into one registry, pulls each version back, checks it
   byte for byte, and reports stored/new bytes, dedup and chunk reuse;
4. optionally (``--rss-4g``) pushes a 4 GiB model and reports the peak RSS;
5. prints a markdown report and writes it to ``--out``.

Usage::

    python -m benchmarks.run [--size 512M] [--repeat 3] [--warmup 1] [--workdir DIR]
                             [--out docs/benchmarks.md] [--rss-4g] [--cold]

Everything generated lives in ``DIR/casreg-bench-*`` (default under ``/tmp``) and is
deleted at the end, also on failure (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.workloads import WrittenFile, base_model, parse_size, write_standard_set

MB = 1e6  # throughput unit: 10^6 bytes
MIB = 2**20
#: Order in which the dedup section pushes the workloads into one registry.
SERIES = ("base", "change2", "head", "full", "insert", "ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5")
MODEL = "bench-model"

# Acceptance thresholds (from the project's acceptance criteria).
PUSH_VS_ZSTD_MIN = 0.8
PULL_VS_UNZSTD_MIN = 1.0
CHANGE2_STORED_MAX = 0.15
INSERT_REUSE_MIN = 0.90
REPUSH_STORED_MAX = 0.001
RSS_4G_MAX = 400 * MB  # bytes


# --------------------------------------------------------------------------- running things


@dataclass
class Run:
    """One finished subprocess: wall seconds, peak RSS (bytes), exit code, output."""

    wall: float
    maxrss: int
    rc: int
    stdout: str
    stderr: str


def drop_caches_possible() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _gnu_time() -> str | None:
    """GNU ``time`` if installed: it forks the command from a ~1 MB process.

    Why: Linux carries a process's peak RSS across ``execve``, and Python spawns
    children with ``vfork``, so ``ru_maxrss`` of a child started directly from this
    (numpy-sized) process would be at least *this* process's peak RSS.  Started by
    GNU time, the floor is that of ``time`` itself (~1-2 MB).
    """
    path = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU" in (out.stdout + out.stderr) else None


GNU_TIME = _gnu_time()


def run_timed(cmd: Sequence[str | os.PathLike[str]], *, cold: bool = False, check: bool = True) -> Run:
    """Run ``cmd`` after ``sync`` (and a cache drop if ``cold``); wall time and peak RSS.

    The process is reaped with ``os.wait4``; its peak RSS comes from GNU time's
    ``%M`` when available (see :func:`_gnu_time`), else from the ``ru_maxrss``
    (KiB on Linux) that ``wait4`` returns.  Output goes to temporary files so no
    pipe can stall the child.
    """
    argv = [os.fspath(c) for c in cmd]
    os.sync()  # flush the previous step's dirty pages so they are not charged to this one
    if cold:
        drop_caches()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="casreg-bench-rss-") as rssf:
        full = [GNU_TIME, "-f", "%M", "-o", rssf.name, *argv] if GNU_TIME else argv
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        maxrss = ru.ru_maxrss * 1024
        if GNU_TIME:
            lines = Path(rssf.name).read_text().split()
            if lines and lines[-1].isdigit():
                maxrss = int(lines[-1]) * 1024
        out.seek(0)
        err.seek(0)
        res = Run(wall, maxrss, rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and rc != 0:
        raise RuntimeError(f"command failed (exit {rc}): {shlex.join(argv)}\n{res.stderr.strip()}")
    return res


def warm(path: Path) -> None:
    """Read a file once so it sits in the page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MIB)
        while f.readinto(buf):
            pass


def rm(*paths: Path) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def files_identical(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", os.fspath(a), os.fspath(b)]).returncode == 0


def tree_bytes(path: Path) -> int:
    return sum((Path(d) / f).stat().st_size for d, _, fs in os.walk(path) for f in fs)


# --------------------------------------------------------------------------- statistics


@dataclass
class Stat:
    """Repeated timings of one command."""

    label: str
    shown_cmd: str
    size: int | None  # bytes processed, None when throughput is meaningless
    walls: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    stored: int | None = None  # bytes the registry holds afterwards (push rows)

    def add(self, r: Run) -> None:
        self.walls.append(r.wall)
        self.rss.append(r.maxrss)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def mbps(self) -> float | None:
        return self.size / self.median / MB if self.size else None

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "cmd": self.shown_cmd, "size": self.size, "walls": self.walls,
                "median": self.median, "mb_per_s": self.mbps, "peak_rss": self.rss}


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def fmt_mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


def fmt_rss(n: int) -> str:
    return f"{n / MB:,.0f} MB"


# --------------------------------------------------------------------------- section 2: baselines


def bench_single_file(base: Path, work: Path, casreg: str, repeat: int, cold: bool, warmup: int = 0,
                      baseline: str | None = None) -> dict[str, Stat]:
    """Each tool on the base file, ``repeat`` interleaved rounds (round r runs every tool once),
    after ``warmup`` rounds that run the same commands untimed.

    Interleaving spreads slow phases of a busy machine over all tools instead of
    penalising whichever tool happened to run during them.
    """
    size = base.stat().st_size
    q = shlex.quote
    zst, zst2, unz, cpd = work / "x.zst", work / "x-synced.zst", work / "y", work / "cp.dst"
    reg, pulled = work / "reg-single", work / "pull-single" / base.name
    reg1, reg3 = work / "reg-level1", work / "reg-level3"
    reg_nocheck, reg_base, pulled_base = work / "reg-nocheck", work / "reg-baseline", work / "pull-baseline" / base.name
    stats: dict[str, Stat] = {}
    steps: list[tuple[str, str, int | None, Callable[[], list[str]]]] = [
        ("cp", "cp base dst", size, lambda: ["cp", str(base), str(cpd)]),
        ("b3sum", "b3sum base", size, lambda: ["b3sum", str(base)]),
        ("zstd -3 -T0", "zstd -3 -T0 -q -f base -o x.zst", size,
         lambda: ["zstd", "-3", "-T0", "-q", "-f", str(base), "-o", str(zst)]),
        ("zstd -3 -T0 + sync", "sh -c 'zstd -3 -T0 -q -f base -o x2.zst && sync x2.zst'", size,
         lambda: ["sh", "-c", f"zstd -3 -T0 -q -f {q(str(base))} -o {q(str(zst2))} && sync {q(str(zst2))}"]),
        ("zstd -d", "zstd -d -q -f x.zst -o y", size, lambda: ["zstd", "-d", "-q", "-f", str(zst), "-o", str(unz)]),
        ("casreg push", "casreg push NAME base -q -r REG  (fresh empty REG)", size,
         lambda: [casreg, "push", MODEL, str(base), "-q", "-r", str(reg)]),
        ("casreg pull", "casreg pull NAME:1 DEST -q -r REG  (fresh DEST)", size,
         lambda: [casreg, "pull", f"{MODEL}:1", str(pulled), "-q", "-r", str(reg)]),
        ("casreg push --level 1", "casreg push NAME base -q -r REG1 --level 1", size,
         lambda: [casreg, "push", MODEL, str(base), "-q", "-r", str(reg1), "--level", "1"]),
        ("casreg push --level 3", "casreg push NAME base -q -r REG3 --level 3", size,
         lambda: [casreg, "push", MODEL, str(base), "-q", "-r", str(reg3), "--level", "3"]),
        ("casreg push --no-check-writes", "casreg push NAME base -q -r REG4 --no-check-writes", size,
         lambda: [casreg, "push", MODEL, str(base), "-q", "-r", str(reg_nocheck), "--no-check-writes"]),
        ("casreg --help", "casreg --help  (CLI start-up only)", None, lambda: [casreg, "--help"]),
    ]
    if baseline:
        steps += [
            ("baseline push", "BASELINE push NAME base -q -r REG5  (the casreg of --baseline-casreg)", size,
             lambda: [baseline, "push", MODEL, str(base), "-q", "-r", str(reg_base)]),
            ("baseline pull", "BASELINE pull NAME:1 DEST -q -r REG5  (fresh DEST)", size,
             lambda: [baseline, "pull", f"{MODEL}:1", str(pulled_base), "-q", "-r", str(reg_base)]),
        ]
    for label, shown, nbytes, _ in steps:
        stats[label] = Stat(label, shown, nbytes)
    stats["_pull_identical"] = Stat("pull identical", "", None)  # walls: 1.0 / 0.0 flags
    # Each step deletes its own previous output just before it runs. On this kind of VM
    # the first write to a never-used page of guest memory costs ~10 us of kernel time
    # (measured: 512 MiB into fresh pages 1.0-1.5 s, into just-freed pages 0.14 s), and
    # freed pages are handed out again first. Deleting every output at the start of a
    # round let the first tools of the round use up the recycled pages and charged the
    # fresh ones to whichever tool ran last; this way every tool recycles its own.
    outputs: dict[str, list[Path]] = {
        "cp": [cpd], "zstd -3 -T0": [zst], "zstd -3 -T0 + sync": [zst2], "zstd -d": [unz],
        "casreg push": [reg], "casreg pull": [pulled.parent],
        "casreg push --level 1": [reg1], "casreg push --level 3": [reg3],
        "casreg push --no-check-writes": [reg_nocheck], "baseline push": [reg_base],
        "baseline pull": [pulled_base.parent],
    }
    for r in range(-warmup, repeat):
        if not cold:
            warm(base)
        for label, _, nbytes, make in steps:
            rm(*outputs.get(label, []))
            if label in ("casreg pull", "baseline pull"):
                (pulled if label == "casreg pull" else pulled_base).parent.mkdir(parents=True, exist_ok=True)
            res = run_timed(make(), cold=cold)
            name = f"round {r + 1}/{repeat}" if r >= 0 else f"warm-up {r + warmup + 1}/{warmup}"
            print(f"  {name}  {label:<26} {res.wall:7.3f} s  "
                  f"{(size / res.wall / MB) if nbytes else 0:8.1f} MB/s  rss {fmt_rss(res.maxrss)}", flush=True)
            if r >= 0:
                stats[label].add(res)
        if r < 0:
            continue
        stats["_pull_identical"].walls.append(1.0 if files_identical(base, pulled) else 0.0)
        unz_ok = files_identical(base, unz)
        if not unz_ok:
            raise RuntimeError("zstd round trip differs from the input: the benchmark setup is broken")
    for label, r in (("casreg push --level 1", reg1), ("casreg push --level 3", reg3)):
        stats[label].stored = tree_bytes(r)
    rm(cpd, zst, zst2, unz, reg, reg1, reg3, pulled.parent, reg_nocheck, reg_base, pulled_base.parent)
    return stats


# --------------------------------------------------------------------------- section 4: dedup series


@dataclass
class SeriesRow:
    key: str
    size: int
    ideal_new: float  # bytes of changed tensors / size
    version: int
    push: Run
    pull: Run
    stored_bytes: int
    new_bytes: int
    dedup_ratio: float
    chunks: int
    reused_prior: float  # share of chunks whose digest was stored before this push
    identical: bool

    def to_dict(self) -> dict[str, object]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("push", "pull")}
        d |= {"push_s": self.push.wall, "push_rss": self.push.maxrss, "pull_s": self.pull.wall,
              "pull_rss": self.pull.maxrss}
        return d


def changed_bytes(wf: WrittenFile) -> int:
    by_name = {t.name: t.nbytes for t in wf.spec.tensors}
    return sum(by_name[n] for n in wf.changed)


def chunk_digests(reg_url: str, ref: str) -> list[bytes]:
    from casreg import Registry

    m = Registry(reg_url).manifest(ref)
    return [c.digest for e in m.files for c in e.chunks]


def push_json(casreg: str, path: Path, reg: Path) -> tuple[Run, dict[str, object]]:
    # --json alone: with -q the CLI prints nothing at all (quiet wins over --json).
    res = run_timed([casreg, "push", MODEL, str(path), "--json", "-r", str(reg)])
    return res, json.loads(res.stdout)


def bench_series(files: dict[str, WrittenFile], work: Path, casreg: str) -> tuple[list[SeriesRow], dict[str, object]]:
    reg = work / "reg-series"
    seen: set[bytes] = set()
    base_chunks: set[bytes] = set()
    rows: list[SeriesRow] = []
    extra: dict[str, object] = {}
    for key in SERIES:
        wf = files[key]
        warm(wf.path)
        push, info = push_json(casreg, wf.path, reg)
        version = int(info["version"])  # type: ignore[arg-type]
        dest = work / "pull-series" / key / wf.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        pull = run_timed([casreg, "pull", f"{MODEL}:{version}", str(dest), "-q", "-r", str(reg)])
        identical = files_identical(wf.path, dest)
        rm(dest.parent)
        digests = chunk_digests(str(reg), f"{MODEL}:{version}")
        reused = sum(d in seen for d in digests) / len(digests) if digests else 1.0
        if key == "base":
            base_chunks = set(digests)
        if key == "insert":
            extra["insert_reuse_vs_base"] = sum(d in base_chunks for d in digests) / len(digests)
            extra["insert_chunks"] = len(digests)
        seen.update(digests)
        ideal = 1.0 if key == "base" else changed_bytes(wf) / wf.size  # the base goes into an empty registry
        row = SeriesRow(key, wf.size, ideal, version, push, pull,
                        int(info["stored_bytes"]), int(info["new_bytes"]),  # type: ignore[arg-type]
                        float(info["dedup_ratio"]), len(digests), reused, identical)  # type: ignore[arg-type]
        rows.append(row)
        print(f"  {key:<8} push {push.wall:6.2f} s  pull {pull.wall:6.2f} s  stored {fmt_mib(row.stored_bytes):>12}  "
              f"dedup {100 * row.dedup_ratio:5.1f}%  reused {100 * reused:5.1f}%  identical={identical}", flush=True)
    # The same base content once more: nothing new should be stored.
    base = files["base"]
    warm(base.path)
    again, info = push_json(casreg, base.path, reg)
    extra |= {"repush_stored_bytes": int(info["stored_bytes"]), "repush_new_bytes": int(info["new_bytes"]),  # type: ignore[arg-type]
              "repush_s": again.wall, "repush_size": base.size, "repush_version": int(info["version"])}  # type: ignore[arg-type]
    extra["registry_bytes"] = tree_bytes(reg)
    extra["logical_bytes"] = sum(r.size for r in rows) + base.size
    print(f"  base again: stored {extra['repush_stored_bytes']} B, new {extra['repush_new_bytes']} B", flush=True)
    rm(reg, work / "pull-series")
    return rows, extra


# --------------------------------------------------------------------------- section 5: 4 GiB RSS


def bench_rss_4g(work: Path, casreg: str) -> dict[str, object]:
    d = work / "rss4g"
    d.mkdir()
    try:
        t0 = time.perf_counter()
        wf = base_model(d / "base-4g.safetensors", size_bytes=4 * 2**30)
        gen_s = time.perf_counter() - t0
        warm(wf.path)
        reg = d / "reg"
        push = run_timed([casreg, "push", MODEL, str(wf.path), "-q", "-r", str(reg)])
        print(f"  4 GiB push {push.wall:.1f} s, peak RSS {fmt_rss(push.maxrss)}", flush=True)
        dest = d / "pull" / wf.path.name
        dest.parent.mkdir()
        pull = run_timed([casreg, "pull", f"{MODEL}:1", str(dest), "-q", "-r", str(reg)])
        identical = files_identical(wf.path, dest)
        print(f"  4 GiB pull {pull.wall:.1f} s, peak RSS {fmt_rss(pull.maxrss)}, identical={identical}", flush=True)
        return {"size": wf.size, "gen_s": gen_s, "push_s": push.wall, "push_rss": push.maxrss,
                "pull_s": pull.wall, "pull_rss": pull.maxrss, "identical": identical}
    finally:
        rm(d)


# --------------------------------------------------------------------------- environment


def sh_out(cmd: Sequence[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err})"
    return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else ""


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unavailable"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def environment(casreg: str, work: Path) -> dict[str, str]:
    import casreg as casreg_pkg

    repo = Path(__file__).resolve().parent.parent
    commit = sh_out(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", "casreg",
                            "casreg_cli"], capture_output=True, text=True).stdout.strip()
    fstype = subprocess.run(["df", "--output=fstype", str(work)], capture_output=True, text=True).stdout.split()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": mem_total(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_version()} ({sys.executable})",
        "casreg": f"{casreg_pkg.__version__} at git {commit}"
                  + (" with uncommitted changes in casreg/ or casreg_cli/" if dirty else ""),
        "casreg_cli": casreg,
        "zstd": sh_out(["zstd", "--version"]).strip("* "),
        "b3sum": sh_out(["b3sum", "--version"]),
        "workdir_fs": fstype[-1] if fstype else "unknown",
    }


# --------------------------------------------------------------------------- report


def render(*, args: argparse.Namespace, command: str, env: dict[str, str], started: dt.datetime,
           finished: dt.datetime, load_start: str, load_end: str, gen_s: float, files: dict[str, WrittenFile],
           single: dict[str, Stat], cold: dict[str, Stat] | None, rows: list[SeriesRow],
           extra: dict[str, object], rss4g: dict[str, object] | None) -> tuple[str, list[tuple[str, bool]]]:
    base_size = files["base"].size
    n = args.repeat
    L: list[str] = []
    checks: list[tuple[str, bool]] = []
    add = L.append

    add("# Benchmarks")
    add("")
    add("Generated by `benchmarks/run.py`; every number below was measured in the run described here.")
    add("Re-run it to refresh this page (see *How to read this* at the end).")
    add("")
    add("## Run")
    add("")
    add(f"- Command: `{command}`")
    add(f"- Date (UTC): {started:%Y-%m-%d %H:%M:%S} to {finished:%H:%M:%S} "
        f"({(finished - started).total_seconds() / 60:.1f} min)")
    add(f"- Load average (1/5/15 min) at start: {load_start}; at end: {load_end}")
    add(f"- Machine: {env['nproc']} CPUs ({env['cpu']}), {env['memory']} RAM, {env['kernel']}; "
        f"work directory on {env['workdir_fs']}")
    add(f"- Python {env['python']}; casreg {env['casreg']}")
    add(f"- Baselines: {env['zstd']}; {env['b3sum']}")
    add(f"- Workloads: `benchmarks/workloads.py` standard set, base {base_size:,} B ({fmt_mib(base_size)}), "
        f"generated in {gen_s:.0f} s into a temporary directory deleted afterwards")
    add("")

    # -- single file
    add(f"## Single file: the base model ({fmt_mib(base_size)}), warm input, median of {n}")
    add("")
    add("| command | median s | min s | max s | MB/s (median) | peak RSS |")
    add("|---|---:|---:|---:|---:|---:|")
    for label, st in single.items():
        if label.startswith("_"):
            continue
        mbps = f"{st.mbps:,.0f}" if st.mbps else "–"
        add(f"| `{st.shown_cmd}` | {st.median:.3f} | {min(st.walls):.3f} | {max(st.walls):.3f} | {mbps} | "
            f"{fmt_rss(max(st.rss))} |")
    add("")
    push, pull = single["casreg push"], single["casreg pull"]
    z3, zd = single["zstd -3 -T0"], single["zstd -d"]
    assert push.mbps and pull.mbps and z3.mbps and zd.mbps
    r_push, r_pull = push.mbps / z3.mbps, pull.mbps / zd.mbps
    ok_pull_identical = all(x == 1.0 for x in single["_pull_identical"].walls)
    c1 = (f"push vs zstd -3 -T0: {push.mbps:,.0f} / {z3.mbps:,.0f} MB/s = {r_push:.2f} (target >= {PUSH_VS_ZSTD_MIN})",
          r_push >= PUSH_VS_ZSTD_MIN)
    c2 = (f"pull vs zstd -d: {pull.mbps:,.0f} / {zd.mbps:,.0f} MB/s = {r_pull:.2f} (target >= {PULL_VS_UNZSTD_MIN})",
          r_pull >= PULL_VS_UNZSTD_MIN)
    checks += [c1, c2]
    for text, ok in (c1, c2):
        add(f"- {verdict(ok)} {text}")
    zs = single.get("zstd -3 -T0 + sync")
    if zs and zs.mbps:
        add(f"- (reference, no target) push vs zstd -3 -T0 *with its output fsynced*, as casreg fsyncs its packs: "
            f"{push.mbps:,.0f} / {zs.mbps:,.0f} MB/s = {push.mbps / zs.mbps:.2f}")
    add(f"- pulled copies identical to the input in {sum(single['_pull_identical'].walls):.0f} of {n} rounds")
    l1, l3 = single.get("casreg push --level 1"), single.get("casreg push --level 3")
    if l1 and l3 and l1.mbps and l3.mbps and l1.stored and l3.stored:
        add(f"- (zstd level, no target) `--level 1`: {l1.mbps:,.0f} MB/s = {l1.mbps / z3.mbps:.2f} x zstd -3 -T0, "
            f"registry {l1.stored:,} B; `--level 3`: {l3.mbps:,.0f} MB/s = {l3.mbps / z3.mbps:.2f} x, "
            f"registry {l3.stored:,} B ({100 * (l3.stored / l1.stored - 1):+.2f}% vs level 1)")
    nc = single.get("casreg push --no-check-writes")
    if nc and nc.mbps:
        add(f"- (check before write, no target) push with the check (the default) / without it "
            f"(`--no-check-writes`): {push.mbps:,.0f} / {nc.mbps:,.0f} MB/s = {push.mbps / nc.mbps:.2f}; "
            f"without it {nc.mbps / z3.mbps:.2f} x zstd -3 -T0")
    bp, bl = single.get("baseline push"), single.get("baseline pull")
    if bp and bl and bp.mbps and bl.mbps:
        add(f"- (against `--baseline-casreg {args.baseline_casreg}`, same rounds, no target) push now / baseline: "
            f"{push.mbps:,.0f} / {bp.mbps:,.0f} MB/s = {push.mbps / bp.mbps:.2f} "
            f"(without the check {nc.mbps / bp.mbps if nc and nc.mbps else float('nan'):.2f}); "
            f"pull now / baseline: {pull.mbps:,.0f} / {bl.mbps:,.0f} MB/s = {pull.mbps / bl.mbps:.2f}")
    add("")

    if cold:
        add(f"### Cold cache (page cache dropped before every command), median of {n}")
        add("")
        add("| command | median s | min s | max s | MB/s (median) | peak RSS |")
        add("|---|---:|---:|---:|---:|---:|")
        for label, st in cold.items():
            if label.startswith("_") or not st.size:
                continue
            add(f"| `{st.shown_cmd}` | {st.median:.3f} | {min(st.walls):.3f} | {max(st.walls):.3f} | "
                f"{st.mbps:,.0f} | {fmt_rss(max(st.rss))} |")
        cp_, cz, cpd, czd = cold["casreg push"], cold["zstd -3 -T0"], cold["casreg pull"], cold["zstd -d"]
        add("")
        add(f"- cold push / zstd -3 -T0 = {cp_.mbps / cz.mbps:.2f}; cold pull / zstd -d = {cpd.mbps / czd.mbps:.2f} "
            "(informational; the targets are judged on the warm rows)")
        add("")

    # -- series
    add("## Dedup: every workload pushed into one registry, in order")
    add("")
    add(f"One registry, model `{MODEL}`; each row is one push (a new version) followed by a pull of that version "
        "into a fresh directory and `cmp` with the original. One measurement per row (a repeat would "
        "dedup against itself). *ideal new* = bytes of the tensors that changed relative to the previous "
        "workload it derives from (base for change2/head/full/insert/ckpt-1, ckpt-(j-1) for ckpt-j) / size. "
        "*chunks already stored* = share of the version's chunks whose BLAKE3 id was in the registry before the push.")
    add("")
    add("| # | workload | size | ideal new | new bytes | dedup | stored bytes (compressed) | stored / size | chunks | "
        "chunks already stored | push MB/s | pull MB/s | push / pull peak RSS | pulled copy |")
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        add(f"| {r.version} | {r.key} | {fmt_mib(r.size)} | {100 * r.ideal_new:.2f}% | {fmt_mib(r.new_bytes)} | "
            f"{100 * r.dedup_ratio:.1f}% | {fmt_mib(r.stored_bytes)} | {100 * r.stored_bytes / r.size:.2f}% | "
            f"{r.chunks} | {100 * r.reused_prior:.1f}% | {r.size / r.push.wall / MB:,.0f} | "
            f"{r.size / r.pull.wall / MB:,.0f} | {fmt_rss(r.push.maxrss)} / {fmt_rss(r.pull.maxrss)} | "
            f"{'identical' if r.identical else '**DIFFERS (bug)**'} |")
    add("")
    reg_b, log_b = int(extra["registry_bytes"]), int(extra["logical_bytes"])  # type: ignore[arg-type]
    add(f"Registry on disk after all {len(rows) + 1} pushes (incl. the base re-push): {fmt_mib(reg_b)} for "
        f"{fmt_mib(log_b)} of logical versions ({reg_b / log_b:.3f}).")
    add("")
    by = {r.key: r for r in rows}
    ch = by["change2"]
    reuse = float(extra["insert_reuse_vs_base"])  # type: ignore[arg-type]
    rp_stored, rp_size = int(extra["repush_stored_bytes"]), int(extra["repush_size"])  # type: ignore[arg-type]
    series_checks = [
        (f"change2 stored bytes {ch.stored_bytes:,} B = {100 * ch.stored_bytes / ch.size:.2f}% of its size "
         f"(target < {100 * CHANGE2_STORED_MAX:.0f}%)", ch.stored_bytes < CHANGE2_STORED_MAX * ch.size),
        (f"insert chunk reuse vs base: {100 * reuse:.1f}% of {extra['insert_chunks']} chunks "
         f"(target >= {100 * INSERT_REUSE_MIN:.0f}%)", reuse >= INSERT_REUSE_MIN),
        (f"base pushed again (identical content): stored {rp_stored:,} B = {100 * rp_stored / rp_size:.4f}% of size, "
         f"new {int(extra['repush_new_bytes']):,} B (target < {100 * REPUSH_STORED_MAX:.1f}%)",  # type: ignore[arg-type]
         rp_stored < REPUSH_STORED_MAX * rp_size),
        (f"every pulled version byte-identical to its input ({sum(r.identical for r in rows)} of {len(rows)}, plus "
         f"{sum(single['_pull_identical'].walls):.0f} of {n} single-file pulls)",
         all(r.identical for r in rows) and ok_pull_identical),
    ]
    checks += series_checks
    for text, ok in series_checks:
        add(f"- {verdict(ok)} {text}")
    add("")

    # -- 4 GiB
    if rss4g:
        add("## Peak memory on a 4 GiB model")
        add("")
        size4 = int(rss4g["size"])  # type: ignore[arg-type]
        ok = int(rss4g["push_rss"]) < RSS_4G_MAX  # type: ignore[arg-type]
        text = (f"4 GiB push peak RSS {fmt_rss(int(rss4g['push_rss']))} (target < {RSS_4G_MAX / MB:.0f} MB)")  # type: ignore[arg-type]
        checks.append((text, ok))
        add(f"`base_model` at 4 GiB ({size4:,} B), pushed into a fresh registry and pulled back (one run each).")
        add("")
        add("| step | wall s | MB/s | peak RSS |")
        add("|---|---:|---:|---:|")
        for step in ("push", "pull"):
            w = float(rss4g[f"{step}_s"])  # type: ignore[arg-type]
            add(f"| casreg {step} | {w:.1f} | {size4 / w / MB:,.0f} | {fmt_rss(int(rss4g[f'{step}_rss']))} |")  # type: ignore[arg-type]
        add("")
        add(f"- {verdict(ok)} {text}")
        add(f"- pulled 4 GiB copy {'identical' if rss4g['identical'] else '**DIFFERS (bug)**'}")
        if not rss4g["identical"]:
            checks.append(("4 GiB pulled copy identical", False))
        add("")

    # -- summary
    add("## Acceptance checks")
    add("")
    for text, ok in checks:
        add(f"- {verdict(ok)} {text}")
    add("")

    # -- how to read
    add("## How to read this")
    add("")
    add("- **What is timed**: the wall time of one subprocess, from spawn to exit, including process start-up "
        "(the `casreg --help` row shows how much of a casreg command is interpreter and import time). "
        "MB/s = bytes of the logical file / median wall time, MB = 10^6 B; MiB = 2^20 B.")
    add(f"- **Medians of {n}**: the single-file section runs {n} round{'s' if n != 1 else ''}; "
        "each round runs every command once, in "
        "table order, so a busy phase of the machine hits all tools rather than one. Min and max show the spread. "
        "Each command starts from nothing: its previous output is deleted just before it runs (a fresh empty "
        "registry for push, a fresh destination for pull), and `zstd -d` / `casreg pull` read what this round's "
        "`zstd -3` / `casreg push` wrote. "
        + (f"Before the timed rounds, {args.warmup} untimed round{'s' if args.warmup != 1 else ''} ran every "
           "command the same way, so that no tool's first timed run writes into never-used memory (below) "
           "while the others recycle theirs; the first rounds after generating the workloads were the slowest "
           "for every tool in earlier runs." if args.warmup else "There was no untimed warm-up round."))
    add("- **Fresh memory pages on this VM**: the first write to a never-used page of guest memory is slow here "
        "(measured: writing 512 MiB into fresh pages took 1.0-1.5 s of kernel time, into just-freed pages 0.14 s), "
        "and the kernel hands freed pages out again first. Deleting each command's own previous output right "
        "before it runs lets every tool recycle its own pages; deleting all outputs at the start of a round "
        "charged the fresh pages to whichever tool ran last (casreg pull: 1.8 s instead of 0.8 s).")
    add("- **Warm input**: the input file is read once before each round (and each dedup push), so every tool "
        "reads it from the page cache; the comparison is CPU and write bound for all tools alike. `sync` runs "
        "before every timed command so one step's dirty-page writeback is not charged to the next; no command "
        "is charged for writeback *after* it exits, except that `casreg push` fsyncs every pack it writes (it is "
        "a durable store) and `zstd`/`cp` do not -- the `zstd ... && sync x2.zst` row is that fairer reference.")
    add("- **Not the same work**: `zstd -3 -T0` compresses; `casreg push` also cuts content-defined chunks "
        "(FastCDC, ~1.9 GB/s, on one thread), hashes every chunk and the whole file with BLAKE3 (the file digest "
        "equals `b3sum`), and fsyncs its packs and commit records; `casreg pull` decodes *and* verifies every "
        "chunk and file digest while `zstd -d` only decodes. Measured by hand on the 512 MiB file (`perf stat`, "
        "2026-11-22): push used ~1.8 s of CPU, about what `zstd -3 -T0` used (1.8-2.3 s), because casreg's zstd is "
        "cheaper -- python-zstandard bundles libzstd 1.5.7 and compresses ~1 MiB chunks (0.70 s of CPU for the file "
        "in 1 MiB pieces, 1.03 s in one piece) where the baseline is this machine's zstd CLI 1.5.4 (`-T1`: 1.7 s) "
        "-- which pays for the chunking and hashing; push's longer wall time is its serial part (start-up, the "
        "`casreg --help` row; the chunker's thread; the commit). Pull used ~1.05 s of CPU against `zstd -d`'s "
        "~0.93 s and is faster only because it decodes on both cores; with one core busy elsewhere it is slower.")
    if GNU_TIME:
        add("- **Peak RSS** is the largest resident set of the command (GNU `time` `%M`, i.e. `ru_maxrss` of a child "
            "forked from the ~1 MB `time` process, so it is not inflated by the benchmark's own Python process), "
            "including file pages it mapped. MB = 10^6 B.")
    else:
        add("- **Peak RSS** is `ru_maxrss` of the reaped subprocess (`os.wait4`). GNU `time` was not available, and "
            "Linux carries the spawning process's peak RSS across `exec`, so small values are a floor set by the "
            "benchmark's own Python process, not the command's.")
    add("- **Dedup section**: stored bytes are what the push added to the registry (zstd-compressed chunks plus "
        "pack index and manifest); new bytes are the logical bytes of chunks the registry lacked; dedup = "
        "1 - new/size. It is one run per workload, so its MB/s are noisier than the single-file medians.")
    spread = max((st for k, st in single.items() if not k.startswith("_") and min(st.walls) > 0),
                 key=lambda st: max(st.walls) / min(st.walls))
    add(f"- **Noise**: the machine has {env['nproc']} CPUs and was shared with other work during this run "
        f"(load average {load_start} at start, {load_end} at end). Throughput of multi-threaded tools "
        "(`zstd -T0`, `b3sum`, casreg's chunk and pull workers) suffers most when another job takes a core. "
        f"In this run the slowest round of a command took up to {max(spread.walls) / min(spread.walls):.1f}x "
        f"its fastest (`{spread.shown_cmd}`); read a ratio near its threshold as undecided rather than as a "
        "clear pass or fail, and compare medians only within one run.")
    add("- Generated files and registries live in a temporary directory that is deleted at the end.")
    add("")
    return "\n".join(L), checks


# --------------------------------------------------------------------------- main


def find_casreg(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("casreg")
    if beside.exists():
        return str(beside)
    found = shutil.which("casreg")
    if not found:
        raise SystemExit("casreg console script not found (install the package or pass --casreg)")
    return found


def compile_casreg() -> None:
    """Byte-compile casreg's modules first, as ``pip install`` does for an installed
    package: an editable install in an environment with PYTHONDONTWRITEBYTECODE set (this
    machine's) would otherwise compile them again on every command (~0.1 s of start-up)."""
    import casreg
    import casreg_cli

    for pkg in (casreg, casreg_cli):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(pkg.__file__).parent)],
                       check=True, stdout=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=parse_size, default=512 * MIB, help="base model size (default 512M)")
    p.add_argument("--repeat", type=int, default=3, help="rounds of the single-file timings (default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds of the single-file commands before the timed ones (default 1)")
    p.add_argument("--workdir", default=None, help="parent of the temporary work directory (default: system tmp)")
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown report path ('-' to only print)")
    p.add_argument("--json", dest="json_out", default=None, help="also write raw measurements as JSON here")
    p.add_argument("--rss-4g", action="store_true", help="also push a 4 GiB model and check peak RSS < 400 MB")
    p.add_argument("--cold", action="store_true",
                   help="also time the single-file commands with the page cache dropped before each "
                        "(needs a writable /proc/sys/vm/drop_caches; disturbs other work on the machine)")
    p.add_argument("--casreg", default=None, help="casreg executable (default: the one beside this python)")
    p.add_argument("--baseline-casreg", default=None, metavar="EXE",
                   help="another casreg executable (say, an older commit's) timed in the same rounds for comparison")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    for tool in ("zstd", "b3sum", "cp", "cmp", "sync"):
        if not shutil.which(tool):
            p.error(f"{tool} not found on PATH")
    if a.cold and not drop_caches_possible():
        p.error("--cold needs a writable /proc/sys/vm/drop_caches (root)")
    casreg = find_casreg(a.casreg)
    compile_casreg()
    raw_args = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "benchmarks.run", *raw_args])

    parent = Path(a.workdir) if a.workdir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    need = a.size * 16 + (13 * 2**30 if a.rss_4g else 0)
    free = shutil.disk_usage(parent).free
    if free < need:
        p.error(f"{parent} has {fmt_mib(free)} free; this run needs about {fmt_mib(need)}")

    started = dt.datetime.now(dt.UTC)
    load_start = loadavg()
    work = Path(tempfile.mkdtemp(prefix="casreg-bench-", dir=parent))
    print(f"work directory {work}; load average {load_start}", flush=True)
    try:
        env = environment(casreg, work)
        print(f"== generating the standard set at {fmt_mib(a.size)}", flush=True)
        t0 = time.perf_counter()
        files = write_standard_set(work / "data", size_bytes=a.size)
        gen_s = time.perf_counter() - t0
        print(f"   {len(files)} files in {gen_s:.0f} s", flush=True)

        print(f"== single file, warm input, {a.repeat} rounds", flush=True)
        single = bench_single_file(files["base"].path, work, casreg, a.repeat, cold=False, warmup=a.warmup,
                                   baseline=a.baseline_casreg)
        cold = None
        if a.cold:
            print(f"== single file, cold cache, {a.repeat} rounds", flush=True)
            cold = bench_single_file(files["base"].path, work, casreg, a.repeat, cold=True, warmup=a.warmup)

        print("== dedup series in one registry", flush=True)
        rows, extra = bench_series(files, work, casreg)
        rm(work / "data")  # free the disk before the 4 GiB case

        rss4g = None
        if a.rss_4g:
            print("== 4 GiB peak RSS", flush=True)
            rss4g = bench_rss_4g(work, casreg)

        finished = dt.datetime.now(dt.UTC)
        load_end = loadavg()
        report, checks = render(args=a, command=command, env=env, started=started, finished=finished,
                                load_start=load_start, load_end=load_end, gen_s=gen_s, files=files,
                                single=single, cold=cold, rows=rows, extra=extra, rss4g=rss4g)
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(report)
    if a.out != "-":
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(report)
        print(f"wrote {a.out}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({
            "command": command, "env": env, "started": started.isoformat(), "finished": finished.isoformat(),
            "load_start": load_start, "load_end": load_end,
            "single": {k: v.to_dict() for k, v in single.items() if not k.startswith("_")},
            "cold": {k: v.to_dict() for k, v in cold.items() if not k.startswith("_")} if cold else None,
            "series": [r.to_dict() for r in rows], "series_extra": extra, "rss_4g": rss4g,
            "checks": [{"check": t, "pass": ok} for t, ok in checks],
        }, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
