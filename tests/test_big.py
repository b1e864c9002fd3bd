"""Big data: a 2 GiB file round trip through the real CLI, with bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from blake3 import blake3

from casreg import Registry

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).with_name("casreg")
GIB = 1 << 30
BLOCK = 64 << 20
MAX_RSS_BYTES = 400 * 1000 * 1000

# Runs a command in a fresh child and reports that child's peak RSS (KiB on Linux), so
# nothing else this test process ever spawned is counted.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
    "sys.stderr.write(p.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "print(p.stdout)\n"
    "sys.exit(p.returncode)\n"
)


def write_big(path: Path, size: int, seed: int) -> bytes:
    """Stream ``size`` bytes of seeded random data to ``path``; return their BLAKE3."""
    rng = np.random.default_rng(seed)
    h = blake3(max_threads=blake3.AUTO)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(BLOCK, left)
            block = rng.integers(0, 1 << 63, size=(n + 7) // 8, dtype=np.uint64).tobytes()[:n]
            f.write(block)
            h.update(block)
            left -= n
    return h.digest()


def hash_file(path: Path) -> bytes:
    h = blake3(max_threads=blake3.AUTO)
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.digest()


def measured(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-c", _MEASURE, *args], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=1200)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    first, _, rest = p.stdout.partition("\n")
    return int(first) * 1024, rest


@pytest.fixture
def big_dir(tmp_path: Path):
    d = tmp_path / "big"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)  # never leave GBs behind, pass or fail


def test_2gib_file_roundtrip_with_bounded_push_memory(big_dir: Path) -> None:
    size = 2 * GIB
    src = big_dir / "model.safetensors"
    digest = write_big(src, size, seed=20240601)
    registry = big_dir / "registry"
    env = dict(os.environ, CASREG_REGISTRY=str(registry), CASREG_USER="big@example.test",
               GIT_CEILING_DIRECTORIES=str(big_dir), HOME=str(big_dir))

    peak, out = measured([str(SCRIPT), "push", "big", str(src), "--json"], env, big_dir)
    v = json.loads(out)
    assert v["size"] == size and v["version"] == 1
    assert v["new_bytes"] == size
    assert v["chunk_count"] >= size // (4 << 20)  # chunks of at most max_size
    assert peak < MAX_RSS_BYTES, f"casreg push peaked at {peak / 1e6:.0f} MB"

    print(f"casreg push of 2 GiB: peak RSS {peak / 1e6:.0f} MB")
    dest = big_dir / "pulled.safetensors"
    pull_peak, out = measured([str(SCRIPT), "pull", "big:1", str(dest), "--json"], env, big_dir)
    res = json.loads(out)
    assert res["size"] == size and res["digest"] == v["digest"]
    assert dest.stat().st_size == size
    assert hash_file(dest) == digest == hash_file(src)
    print(f"casreg pull of 2 GiB: peak RSS {pull_peak / 1e6:.0f} MB")
    assert pull_peak < MAX_RSS_BYTES, f"casreg pull peaked at {pull_peak / 1e6:.0f} MB"

    # pushing the same 2 GiB again stores nothing new
    again = Registry(registry).push("big", src)
    assert again.digest == v["digest"] and again.new_bytes == 0 and again.stored_bytes < size // 1000
    dest.unlink()
    src.unlink()
