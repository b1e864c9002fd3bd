"""``casreg ui`` at scale: how long each page takes on a registry of 1,000 models,
100,000 versions and 1,000,000 events on a local disk (issue 12: < 300 ms a page, after
the first request).

Building (not timed), in the way of benchmarks/ledger_scale.py: ``--seed`` small real
pushes give the content; then every version of every model is written in bulk, in
parallel, as the one-row Parquet segment and JSON copy ``commit_version`` writes, reusing
a seed's content with its own time, author, metrics, params and tags. One model, ``big``,
holds ``--big`` of the versions (pagination at ~100,000 versions); the others share the
rest. ``production`` and ``staging`` of every model are real alias moves, then the
ledger is compacted (``Registry.compact(full=True)``). The remaining events (alias moves
and approvals, ``--events`` in all) are written straight into one compacted events file
that a new HEAD lists, as compaction would have left them: writing a million one-row
segments first would take this 2-core machine most of an hour. So listing a million
event segments is not part of these timings (readers list only uncompacted segments'
keys after HEAD's; see docs/benchmarks-ui.md). The registry is cached in ``--cache``.

Measuring: the app runs in-process (Starlette's TestClient: no network, no uvicorn);
each page is requested once (the first request, reported on its own), then ``--runs``
times; the median is reported.

Usage::

    python -m benchmarks.ui [--models 1000] [--versions 100000] [--big 90010] [--events 1000000]
                            [--runs 5] [--cache DIR] [--out docs/benchmarks-ui.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.ledger_scale import machine

USER = "bench@example.test"
BIG = "big"


def model_name(i: int) -> str:
    return BIG if i == 0 else f"model-{i:04d}"


def _write_versions(args: tuple[str, str, int, int, list[dict[str, Any]], float]) -> int:
    """Worker: segments and JSON copies for versions lo..hi-1 of one model."""
    import pyarrow as pa

    from casreg._version import package_version
    from casreg.keys import version_copy_key, version_segment_key
    from casreg.ledger.schema import parquet_bytes, version_row, version_schema
    from casreg.records import Lineage, Version

    root, name, lo, hi, seeds, t0 = args
    schema = version_schema()
    rng = random.Random(f"{name}-{lo}")
    made: set[Path] = set()
    for n in range(lo, hi):
        seed = seeds[n % len(seeds)]
        rec = Version(
            name=name, version=n, digest=seed["digest"], kind=seed["kind"], size=seed["size"],
            stored_bytes=seed["size"] // 8, new_bytes=seed["size"] // 8, file_count=seed["file_count"],
            chunk_count=seed["chunk_count"], created_at=dt.datetime.fromtimestamp(t0 + n, dt.UTC),
            author=f"trainer-{n % 7}@example.test", framework="pytorch", description=f"synthetic version {n}",
            metrics={"auc": round(0.8 + 0.2 * rng.random(), 6), "loss": round(rng.random(), 6)},
            params={"lr": f"{rng.choice((1, 3))}e-{rng.randint(3, 5)}", "epochs": str(rng.randint(1, 40))},
            tags={"team": f"team-{hash(name) % 9}", "dataset": f"ds-{n % 13}"},
            lineage=Lineage(git_commit=f"{n:040x}", git_dirty=False, hostname="bench-host", python_version="3.11",
                            casreg_version=package_version(), parent=seed["digest"], run_id=f"run-{n}",
                            dataset=f"ds-{n % 13}"),
        )
        seg, side = Path(root, version_segment_key(name, n)), Path(root, version_copy_key(name, n))
        for d in (seg.parent, side.parent):
            if d not in made:
                d.mkdir(parents=True, exist_ok=True)
                made.add(d)
        seg.write_bytes(parquet_bytes(pa.Table.from_pylist([version_row(rec, seed["files"])], schema=schema)))
        side.write_bytes(json.dumps(rec.to_dict()).encode())
    return hi - lo


def _events_table(counts: dict[str, int], total: int, t0: float, span: float) -> Any:
    """``total`` events spread over the models: staging moves, approvals, archives."""
    import pyarrow as pa

    from casreg.keys import event_segment_key
    from casreg.ledger.schema import SEGMENT_COLUMN, compacted_event_schema

    names = sorted(counts)
    per = total // len(names)
    cols: dict[str, list[Any]] = {f.name: [] for f in compacted_event_schema()}
    rng = random.Random(7)
    for name in names:
        n_versions = counts[name]
        for j in range(per):
            t = dt.datetime.fromtimestamp(t0 + span * j / per + rng.random(), dt.UTC)
            eid = uuid.UUID(int=rng.getrandbits(128)).hex
            kind = ("alias.set", "approve", "alias.set", "archive")[j % 4]
            to = rng.randint(1, n_versions)
            row = {"event_id": eid, "time": t, "kind": kind, "name": name,
                   "alias": {"alias.set": "canary", "approve": "production", "archive": None}[kind],
                   "from_digest": None, "to_digest": None, "from_version": None, "to_version": to,
                   "author": f"reviewer-{j % 5}@example.test", "host": "bench-host",
                   "reason": f"synthetic {kind} {j}", "details": json.dumps({"stage": "production"})
                   if kind == "approve" else None, SEGMENT_COLUMN: event_segment_key(name, t, eid)}
            for k, v in row.items():
                cols[k].append(v)
    return pa.table(cols, schema=compacted_event_schema())


def build(root: Path, *, models: int, versions: int, big: int, events: int, seed_count: int, workers: int) -> float:
    from casreg import Registry
    from casreg.ledger.compact import _write
    from casreg.ledger.head import LedgerHead, read_head
    from casreg.ledger.schema import sort_events

    t = time.perf_counter()
    os.environ["CASREG_USER"] = USER
    reg = Registry(root)
    reg.compact_threshold = 0
    src = root.parent / "seed-src"
    src.mkdir(parents=True, exist_ok=True)
    seeds = []
    for i in range(1, seed_count + 1):
        f = src / f"model-{i}.bin"
        f.write_bytes(os.urandom(4096) + f"seed {i}".encode())
        v = reg.push("seed-model", f, metrics={"auc": 0.8}, description=f"seed {i}")
        files = [{"path": x.path, "type": x.type, "size": x.size, "digest": x.digest} for x in reg.files(v.ref)]
        seeds.append({"digest": v.digest, "kind": v.kind, "size": 512 << 20, "file_count": v.file_count,
                      "chunk_count": v.chunk_count, "files": files})
    # the seed model stays, as model number `models` (its versions count in the total)
    rest = versions - big - seed_count
    counts = {model_name(0): big}
    for i in range(1, models - 1):
        counts[model_name(i)] = rest // (models - 2) + (1 if i <= rest % (models - 2) else 0)
    t0 = time.time() - versions - 86400 * 30
    jobs = []
    for name, n in counts.items():
        for lo in range(1, n + 1, 5000):
            jobs.append((str(root), name, lo, min(lo + 5000, n + 1), seeds, t0))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_write_versions, jobs, chunksize=8))
    assert written == versions - seed_count, written
    counts["seed-model"] = seed_count
    for name, n in counts.items():
        reg.set_alias(name, "production", max(1, n // 2), reason="benchmark")
        reg.set_alias(name, "staging", n, reason="benchmark")
    reg.set_alias(BIG, "staging", big - 1, reason="benchmark")
    reg.rollback(BIG, "staging", reason="benchmark rollback")
    reg.compact(full=True)
    real = 2 * len(counts) + 2  # the moves above
    if events > real:
        head = read_head(reg.store)
        assert head is not None
        now = dt.datetime.now(dt.UTC)
        table = sort_events(_events_table(counts, events - real, t0, versions))
        f = _write(reg.store, "events", table, now)
        new = LedgerHead(uuid.uuid4().hex, head.generation + 1, now.isoformat().replace("+00:00", "Z"),
                         dict(head.covered), head.versions, head.events + (f,))
        current = reg.store.read_versioned("ledger/compacted/HEAD.json")
        assert current is not None
        reg.store.swap("ledger/compacted/HEAD.json", new.to_json(), current.token)
    return time.perf_counter() - t


def pages(counts_big: int) -> list[tuple[str, str]]:
    mid = counts_big // 2
    return [
        ("Models", "/"),
        ("Models, search", "/?q=model-01"),
        ("Models JSON", "/api/models"),
        (f"Model ({counts_big:,} versions), page 1", f"/models/{BIG}"),
        ("Model, page 1,000", f"/models/{BIG}?page=1000"),
        ("Model, last page", f"/models/{BIG}?page={-(-counts_big // 50)}"),
        ("Model, --where + sort", f"/models/{BIG}?where=metrics.auc+%3E+0.95+AND+tags.dataset+%3D+%27ds-3%27"
                                  "&sort=metrics.auc&desc=1"),
        ("Model JSON, page 1", f"/api/models/{BIG}"),
        ("Model (small)", "/models/model-0001"),
        ("Version", f"/models/{BIG}/versions/{mid}"),
        ("Version JSON", f"/api/models/{BIG}/versions/{mid}"),
        ("History", f"/models/{BIG}/history"),
        ("History, rollbacks only", f"/models/{BIG}/history?kind=rollback"),
        ("History JSON", f"/api/models/{BIG}/history"),
        ("Diff", f"/diff?a={BIG}%3A1&b={BIG}%3A{mid}"),
        ("Policy", "/policy"),
    ]


def measure(root: Path, big: int, runs: int) -> list[dict[str, Any]]:
    from starlette.testclient import TestClient

    from casreg import Registry
    from casreg.web import create_app

    client = TestClient(create_app(Registry(root)))
    out = []
    for label, path in pages(big):
        t = time.perf_counter()
        r = client.get(path)
        first = time.perf_counter() - t
        assert r.status_code == 200, (path, r.status_code, r.text[-300:])
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            r = client.get(path)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
        out.append({"page": label, "path": path, "first_ms": 1000 * first,
                    "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times), "runs": runs,
                    "bytes": len(r.content)})
        print(f"{label:<40} first {1000 * first:8.1f} ms  median {1000 * statistics.median(times):8.1f} ms",
              file=sys.stderr)
    return out


def report(args: argparse.Namespace, build_s: float | None, rows: list[dict[str, Any]]) -> str:
    import duckdb
    import pyarrow

    cmd = " ".join(["python -m benchmarks.ui", *sys.argv[1:]])
    lines = [
        "# casreg ui at scale",
        "",
        f"Measured with `{cmd}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({machine()}; Python "
        f"{platform.python_version()}, pyarrow {pyarrow.__version__}, duckdb {duckdb.__version__}).",
        "",
        f"Registry: {args.models:,} models, {args.versions:,} versions (one model, `{BIG}`, with {args.big:,} of "
        f"them), {args.events:,} events; compacted (`casreg compact --full`), local disk. "
        + (f"Building it took {build_s:.0f} s (not timed)." if build_s else "Built earlier (cached)."),
        "How it is built, and what it leaves out (the million event segments are written straight into a "
        "compacted file), is in the docstring of benchmarks/ui.py.",
        "",
        f"Each page is requested once (\"first\"), then {args.runs} times (median, max) through the app "
        "in-process (Starlette's TestClient: no network). Target: < 300 ms after the first request.",
        "",
        "| page | path | first ms | median ms | max ms | bytes | < 300 ms |",
        "|---|---|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        ok = "yes" if r["median_ms"] < 300 else "**no**"
        lines.append(f"| {r['page']} | `{r['path']}` | {r['first_ms']:.0f} | {r['median_ms']:.0f} | "
                     f"{r['max_ms']:.0f} | {r['bytes']:,} | {ok} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--versions", type=int, default=100_000)
    p.add_argument("--big", type=int, default=90_010)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path("/tmp/casreg-ui-bench"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    key = f"m{args.models}-v{args.versions}-b{args.big}-e{args.events}"
    root = args.cache / key / "reg"
    build_s = None
    if not (args.cache / key / "done").exists():
        import shutil

        shutil.rmtree(args.cache / key, ignore_errors=True)
        root.mkdir(parents=True)
        build_s = build(root, models=args.models, versions=args.versions, big=args.big, events=args.events,
                        seed_count=args.seed, workers=args.workers)
        (args.cache / key / "done").write_text(f"{build_s:.1f}\n")
        print(f"built {root} in {build_s:.0f} s", file=sys.stderr)
    rows = measure(root, args.big, args.runs)
    text = report(args, build_s, rows)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
