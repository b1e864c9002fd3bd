"""``casreg ui`` at scale: how long each page takes on a registry of 1,000 models,
100,000 versions and 1,000,000 events on a local disk (issue 12: < 300 ms a page, after
the first request).

Building (not timed; ``--build-only`` stops there). What is real and what is not:

- **real pushes**: ``--seed`` small files pushed as ``seed-model`` (they give the content
  every other version reuses), and at the end 20 pushes to ``big`` left uncompacted;
- **real version segments, written in bulk**: every other version (99,970) as the
  one-row format-2 Parquet segment ``commit_version`` writes (same schema, zstd, the
  record in the footer metadata), straight to its key, in parallel (no fsync, no
  create-if-absent); each reuses a seed's content with its own time, author, metrics,
  params and tags. One model, ``big``, holds ``--big`` of them;
- **compacted files written directly**: one versions file holding exactly those rows and
  one events file holding the synthetic events (canary moves, approvals, archives:
  ``--events`` in all, minus the real ones), each written by compaction's own writer
  (``casreg.ledger.compact._write``), and a HEAD covering them, swapped in as compaction
  does. The synthetic events have **no segment files**: a real registry keeps one
  segment per event for ever, and every reader that lists all events (the SQL views,
  compaction) lists them (~5 s for a million keys through ``LocalStore.list`` here);
  these timings do not include that;
- **real alias moves**: ``production`` and ``staging`` of every model, a move and a
  rollback of ``big@staging`` (2,002 moves, each with its event segment), then a real
  ``casreg compact --full`` (which merges everything into one file per table);
- **real uncompacted tail**: 20 pushes, 20 approvals and 20 ``canary`` moves of ``big``
  after that compaction (the steady state the automatic compaction allows).

The registry is cached in ``--cache``.

Measuring: the app runs in-process (Starlette's TestClient: no network, no uvicorn);
each page is requested once (the first request, reported on its own), then ``--runs``
times; every run and the median are reported. Paths with ``N`` ask for another page or
version each run (nothing kept from an earlier request of the same page).

Usage::

    python -m benchmarks.ui [--models 1000] [--versions 100000] [--big 90010] [--events 1000000]
                            [--runs 5] [--cache DIR] [--out FILE] [--build-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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


def _record(name: str, n: int, seed: dict[str, Any], t0: float) -> Any:
    """The synthetic record of ``name:n`` (deterministic: the workers writing segments and
    the parent writing the compacted file make the same one)."""
    from casreg._version import package_version
    from casreg.records import Lineage, Version

    rng = random.Random(f"{name}-{n}")
    return Version(
        name=name, version=n, digest=seed["digest"], kind=seed["kind"], size=seed["size"],
        stored_bytes=seed["size"] // 8, new_bytes=seed["size"] // 8, file_count=seed["file_count"],
        chunk_count=seed["chunk_count"], created_at=dt.datetime.fromtimestamp(int(t0) + n, dt.UTC),
        author=f"trainer-{n % 7}@example.test", framework="pytorch", description=f"synthetic version {n}",
        metrics={"auc": round(0.8 + 0.2 * rng.random(), 6), "loss": round(rng.random(), 6)},
        params={"lr": f"{rng.choice((1, 3))}e-{rng.randint(3, 5)}", "epochs": str(rng.randint(1, 40))},
        tags={"team": f"team-{sum(map(ord, name)) % 9}", "dataset": f"ds-{n % 13}"},
        lineage=Lineage(git_commit=f"{n:040x}", git_dirty=False, hostname="bench-host", python_version="3.11",
                        casreg_version=package_version(), parent=seed["digest"], run_id=f"run-{n}",
                        dataset=f"ds-{n % 13}"),
    )


def _write_versions(args: tuple[str, str, int, int, list[dict[str, Any]], float]) -> int:
    """Worker: the format-2 ledger segments of versions lo..hi-1 of one model, byte for byte
    what ``commit_version(tree=2)`` writes (one row, zstd, the record in the footer
    metadata), written straight to their keys (no fsync, no create-if-absent dance)."""
    import pyarrow as pa

    from casreg.keys import version_segment_key
    from casreg.ledger.schema import parquet_bytes, record_metadata, version_row, version_schema

    root, name, lo, hi, seeds, t0 = args
    schema = version_schema()
    Path(root, version_segment_key(name, 1)).parent.mkdir(parents=True, exist_ok=True)
    recs = [_record(name, n, seeds[n % len(seeds)], t0) for n in range(lo, hi)]
    rows = pa.Table.from_pylist([version_row(r, seeds[r.version % len(seeds)]["files"]) for r in recs], schema=schema)
    for i, rec in enumerate(recs):  # one row each (a slice: the same one-row table commit_version makes)
        Path(root, version_segment_key(name, rec.version)).write_bytes(
            parquet_bytes(rows.slice(i, 1).replace_schema_metadata(record_metadata(rec))))
    return hi - lo


def _versions_rows(counts: dict[str, int], seeds: list[dict[str, Any]], t0: float) -> Any:
    """Every synthetic version as one sorted Arrow table: what compaction makes of their
    segments."""
    import pyarrow as pa

    from casreg.ledger.schema import sort_versions, version_row, version_schema

    schema = version_schema()
    parts = []
    for name, count in sorted(counts.items()):
        for lo in range(1, count + 1, 10_000):
            rows = [version_row(_record(name, n, seeds[n % len(seeds)], t0), seeds[n % len(seeds)]["files"])
                    for n in range(lo, min(lo + 10_000, count + 1))]
            parts.append(pa.Table.from_pylist(rows, schema=schema))
    return sort_versions(pa.concat_tables(parts))


def _events_table(counts: dict[str, int], total: int, t0: float, span: float) -> Any:
    """``total`` events spread over the models: canary moves, approvals, archives."""
    import pyarrow as pa

    from casreg.keys import event_segment_key
    from casreg.ledger.schema import SEGMENT_COLUMN, compacted_event_schema

    names = sorted(counts)
    per = total // len(names)
    cols: dict[str, list[Any]] = {f.name: [] for f in compacted_event_schema()}
    rng = random.Random(7)
    for i, name in enumerate(names):
        n_versions = counts[name]
        for j in range(per + (1 if i < total % len(names) else 0)):
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


def _swap_head(reg: Any, **changes: Any) -> None:
    """Move HEAD by compare-and-swap, as ``compact`` does, to one with ``changes``."""
    from casreg.keys import HEAD_KEY
    from casreg.ledger.head import LedgerHead, read_head

    current = reg.store.read_versioned(HEAD_KEY)
    head = read_head(reg.store)
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    fields = {"covered": {}, "versions": (), "events": ()} if head is None else {
        "covered": dict(head.covered), "versions": head.versions, "events": head.events}
    fields.update(changes)
    new = LedgerHead(uuid.uuid4().hex, (head.generation if head else 0) + 1, now, **fields)
    if current is None:
        assert reg.store.create(HEAD_KEY, new.to_json())
    else:
        reg.store.swap(HEAD_KEY, new.to_json(), current.token)


def build(root: Path, *, models: int, versions: int, big: int, events: int, seed_count: int, workers: int,
          tail_versions: int = 20, tail_events: int = 40) -> dict[str, Any]:
    """Build the registry (see the module doc); returns what was made and how long each
    step took."""
    from casreg import Registry
    from casreg.ledger.compact import _write

    steps: dict[str, float] = {}
    t = t_all = time.perf_counter()

    def step(label: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[label] = round(now - t, 1)
        print(f"  {label}: {now - t:.0f} s", file=sys.stderr)
        t = now

    os.environ["CASREG_USER"] = USER
    reg = Registry(root)
    reg.compact_threshold = 0  # compaction only where the build says so
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
    step("seed pushes")
    # the seed model stays, as model number `models` (its versions count in the total);
    # `big` gets its real tail pushes at the end
    rest = versions - big - seed_count
    counts = {model_name(0): big - tail_versions}
    for i in range(1, models - 1):
        counts[model_name(i)] = rest // (models - 2) + (1 if i <= rest % (models - 2) else 0)
    t0 = time.time() - versions - 86400 * 30
    jobs = [(str(root), name, lo, min(lo + 2000, n + 1), seeds, t0)
            for name, n in counts.items() for lo in range(1, n + 1, 2000)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_write_versions, jobs, chunksize=4))
    assert written == sum(counts.values()), written
    step(f"{written:,} version segments")
    now = dt.datetime.now(dt.UTC)
    vfile = _write(reg.store, "versions", _versions_rows(counts, seeds, t0), now)
    efile = _write(reg.store, "events", _events_table(counts | {"seed-model": seed_count}, max(0, events - (
        2 * (len(counts) + 1) + 2 + tail_events)), t0, versions), now)
    _swap_head(reg, covered=dict(counts), versions=(vfile,), events=(efile,))
    step("compacted files of the bulk (versions, events) + HEAD")
    counts["seed-model"] = seed_count
    for name, n in counts.items():
        reg.set_alias(name, "production", max(1, n // 2), reason="benchmark")
        reg.set_alias(name, "staging", n, reason="benchmark")
    reg.set_alias(BIG, "staging", counts[BIG] - 1, reason="benchmark")
    reg.rollback(BIG, "staging", reason="benchmark rollback")
    step(f"{2 * len(counts) + 2:,} real alias moves")
    reg.compact(full=True)
    step("casreg compact --full")
    # the steady state after that: real pushes and events compaction has not folded in yet
    for i in range(tail_versions):
        f = src / f"tail-{i}.bin"
        f.write_bytes(os.urandom(2048))
        reg.push(BIG, f, metrics={"auc": 0.9 + i / 1000, "loss": 0.1}, tags={"team": "team-0", "dataset": "ds-3"},
                 description=f"tail push {i}")
    n_big = counts[BIG] + tail_versions
    for i in range(tail_events // 2):
        reg.approve(BIG, n_big - i, stage="production", comment=f"tail approval {i}")
        reg.set_alias(BIG, "canary", n_big - i, reason=f"tail move {i}")
    step(f"{tail_versions} real pushes and {tail_events} real events left uncompacted")
    return {"seconds": round(time.perf_counter() - t_all, 1), "steps": steps}


def pages(counts_big: int) -> list[tuple[str, str]]:
    mid = counts_big // 2
    return [
        ("Models", "/"),
        ("Models, search", "/?q=model-01"),
        ("Models JSON", "/api/models"),
        (f"Model ({counts_big:,} versions), page 1", f"/models/{BIG}"),
        ("Model, page 1,000", f"/models/{BIG}?page=1000"),
        ("Model, another page each run", f"/models/{BIG}?page={{n}}"),
        ("Model, last page", f"/models/{BIG}?page={-(-counts_big // 50)}"),
        ("Model, --where + sort", f"/models/{BIG}?where=metrics.auc+%3E+0.95+AND+tags.dataset+%3D+%27ds-3%27"
                                  "&sort=metrics.auc&desc=1"),
        ("Model JSON, page 1", f"/api/models/{BIG}"),
        ("Model (small)", "/models/model-0001"),
        ("Version", f"/models/{BIG}/versions/{mid}"),
        ("Version, another each run", f"/models/{BIG}/versions/{{n}}"),
        ("Version JSON", f"/api/models/{BIG}/versions/{mid}"),
        ("History", f"/models/{BIG}/history"),
        ("History, rollbacks only", f"/models/{BIG}/history?kind=rollback"),
        ("History JSON", f"/api/models/{BIG}/history"),
        ("History, another page each run", f"/models/{BIG}/history?page={{n}}"),
        ("Diff", f"/diff?a={BIG}%3A1&b={BIG}%3A{mid}"),
        ("Policy", "/policy"),
    ]


def measure(root: Path, big: int, runs: int) -> list[dict[str, Any]]:
    from starlette.testclient import TestClient

    from casreg import Registry
    from casreg.web import create_app

    client = TestClient(create_app(Registry(root)))
    out = []
    for label, template in pages(big):
        path = template.format(n=7)
        t = time.perf_counter()
        r = client.get(path)
        first = time.perf_counter() - t
        assert r.status_code == 200, (path, r.status_code, r.text[-300:])
        times = []
        for i in range(runs):
            url = template.format(n=100 + 37 * i)  # a page not asked for before, where the path says {n}
            t = time.perf_counter()
            r = client.get(url)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, (url, r.status_code)
        path = template.replace("{n}", "N")
        out.append({"page": label, "path": path, "first_ms": 1000 * first,
                    "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times), "runs": runs,
                    "all_ms": [round(1000 * x) for x in times], "bytes": len(r.content)})
        print(f"{label:<40} first {1000 * first:8.1f} ms  median {1000 * statistics.median(times):8.1f} ms",
              file=sys.stderr)
    return out


def report(args: argparse.Namespace, build: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    import duckdb
    import pyarrow

    cmd = " ".join(["python -m benchmarks.ui", *sys.argv[1:]])
    steps = "; ".join(f"{k} {v:.0f} s" for k, v in build["steps"].items())
    lines = [
        f"Measured with `{cmd}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({machine()}; "
        f"pyarrow {pyarrow.__version__}, duckdb {duckdb.__version__}; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} when it ended).",
        "",
        f"Registry: {args.models:,} models, {args.versions:,} versions (`{BIG}` has {args.big:,}), "
        f"{args.events:,} events, local disk; built in {build['seconds']:.0f} s ({steps}).",
        "",
        f"Each page is requested once (\"first\", after the pages above it), then {args.runs} times; "
        "`N` in a path is another page or version each time. Target: < 300 ms after the first request.",
        "",
        "| page | path | first ms | median ms | every run (ms) | bytes | < 300 ms |",
        "|---|---|---:|---:|---|---:|:-:|",
    ]
    for r in rows:
        ok = "yes" if r["median_ms"] < 300 else "**no**"
        lines.append(f"| {r['page']} | `{r['path']}` | {r['first_ms']:.0f} | {r['median_ms']:.0f} | "
                     f"{' '.join(str(x) for x in r['all_ms'])} | {r['bytes']:,} | {ok} |")
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
    p.add_argument("--build-only", action="store_true")
    args = p.parse_args(argv)
    key = f"m{args.models}-v{args.versions}-b{args.big}-e{args.events}"
    root = args.cache / key / "reg"
    done = args.cache / key / "done.json"
    if not done.exists():
        import shutil

        shutil.rmtree(args.cache / key, ignore_errors=True)
        root.mkdir(parents=True)
        built = build(root, models=args.models, versions=args.versions, big=args.big, events=args.events,
                      seed_count=args.seed, workers=args.workers)
        done.write_text(json.dumps(built))
        print(f"built {root} in {built['seconds']:.0f} s", file=sys.stderr)
    build_info = json.loads(done.read_text())
    if args.build_only:
        return 0
    rows = measure(root, args.big, args.runs)
    text = report(args, build_info, rows)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
