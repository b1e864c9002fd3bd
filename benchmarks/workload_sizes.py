"""Stored bytes of the whole peers workload for several average chunk sizes (casreg/3 registries).

    python -m benchmarks.workload_sizes W AVG [AVG ...]

``W`` is the peers workload directory (``python ../shared/bench/peers/make_workload.py W``);
each AVG (bytes) gets a fresh local registry cut with FastCDC(AVG, AVG/4, 4*AVG), into which
the ten versions are pushed in order. Prints the bytes on disk, push MB/s (MB = 10^6 bytes)
and each version's stored bytes as % of its size.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from casreg import Registry
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    os.environ["CASREG_CACHE"] = "off"
    workload = Path(sys.argv[1])
    versions = sorted(d for d in workload.iterdir() if d.name[:2].isdigit())
    for avg in (int(a) for a in sys.argv[2:]):
        with tempfile.TemporaryDirectory(prefix="casreg-sizes-") as tmp:
            reg = Registry(tmp)
            init_config(reg.store, ChunkParams(avg_size=avg, min_size=avg // 4, max_size=avg * 4))
            started, logical, per = time.perf_counter(), 0, []
            for v in versions:
                pushed = reg.push("m", v)
                logical += pushed.size
                per.append(round(100 * pushed.stored_bytes / pushed.size, 1))
            wall = time.perf_counter() - started
            total = disk_bytes(Path(tmp))
            print(f"avg {avg >> 10} KiB: logical {logical / 1e9:.3f} GB, on disk {total / 1e9:.3f} GB "
                  f"({100 * total / logical:.1f}%), push {logical / wall / 1e6:.0f} MB/s; stored % per version: {per}",
                  flush=True)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
