"""The CLI process loads numpy only where casreg's own code needs it (the planes codec of a
push or pull of tensor data, where its C loops were not built) and pandas never
(casreg_cli/imports.py): each costs start-up time that pyarrow would otherwise make every
command pay."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from casreg.content import planes

#: Whether this install built the planes codec's C loops: then nothing needs numpy.
LOOPS = planes._loops is not None


def run_traced(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``casreg ARGS`` in a new interpreter (the real entry point, ``main()``), with the
    packages it loaded: those whose submodules were imported (``-X importtime`` also lists
    a refused attempt at a top-level name, which loads nothing)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "casreg_cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return proc, {name.partition(".")[0] for name in names if "." in name}


def test_numpy_only_for_tensor_data_and_pandas_never(tmp_path: Path) -> None:
    weights = (np.random.default_rng(0).normal(0, 0.02, 200_000).astype("<f4").view("<u4") >> 16).astype("<u2")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [200_000], "data_offsets": [0, weights.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    model = tmp_path / "model.safetensors"
    model.write_bytes(struct.pack("<Q", len(header)) + header + weights.tobytes())
    env = {**os.environ, "CASREG_REGISTRY": str(tmp_path / "reg"), "CASREG_USER": "ci@example.test"}
    proc, modules = run_traced(["push", "m", str(model)], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pandas" not in modules
    assert ("numpy" in modules) == (not LOOPS)  # the planes codec coded the weights, with numpy only without C loops
    proc, modules = run_traced(["ls", "m", "--json"], env)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["version"] == 1
    assert "numpy" not in modules and "pandas" not in modules  # pyarrow read the ledger without them
    out = tmp_path / "back.safetensors"
    proc, modules = run_traced(["pull", "m", str(out)], env)
    assert proc.returncode == 0 and out.read_bytes() == model.read_bytes()
    assert ("numpy" in modules) == (not LOOPS) and "pandas" not in modules


def test_the_gate_refuses_numpy_to_others_and_pandas_to_all() -> None:
    from casreg_cli.imports import NumpyGate

    gate = NumpyGate()
    namespace = {"__name__": "pyarrow.lib"}
    exec("def ask(name):\n    return gate.find_spec(name)", {**namespace, "gate": gate}, namespace)
    for name in ("numpy", "numpy.core", "pandas"):
        try:
            namespace["ask"](name)  # type: ignore[operator]
        except ImportError:
            continue
        raise AssertionError(f"{name} was let through for pyarrow")
    mine = {"__name__": "casreg.content.planes"}
    exec("def ask(name):\n    return gate.find_spec(name)", {**mine, "gate": gate}, mine)
    assert mine["ask"]("numpy") is None  # type: ignore[operator]
    try:
        mine["ask"]("pandas")  # type: ignore[operator]
    except ImportError:
        pass
    else:
        raise AssertionError("pandas was let through")


def test_a_missing_dependency_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """An environment without numpy (a broken install: it is a declared dependency) fails a
    push of float tensors with one line naming the package, exit 2, and stores nothing
    (the planes codec's C loops are blocked too: with them, nothing needs numpy)."""
    weights = (np.random.default_rng(0).normal(0, 0.02, 50_000).astype("<f4").view("<u4") >> 16).astype("<u2")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [50_000], "data_offsets": [0, weights.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    model = tmp_path / "model.safetensors"
    model.write_bytes(struct.pack("<Q", len(header)) + header + weights.tobytes())
    env = {**os.environ, "CASREG_REGISTRY": str(tmp_path / "reg"), "CASREG_USER": "ci@example.test"}
    blocked = ("import sys; sys.modules['numpy'] = sys.modules['casreg.content._planes_c'] = None; "
               "from casreg_cli.main import main; main()")
    proc = subprocess.run([sys.executable, "-c", blocked, "push", "m", str(model)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "casreg needs the Python package 'numpy'" in proc.stderr
    listed = subprocess.run([sys.executable, "-m", "casreg_cli.main", "ls", "--json"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_probed_files_need_no_numpy(tmp_path: Path) -> None:
    """Files without a safetensors header are probed chunk by chunk for floats (a model
    directory's ``tokenizer.json``, a raw ``.bin`` of weights): the probe needs no numpy,
    and the weights it finds are coded with the C loops, so the push loads none either."""
    from casreg import Registry
    from casreg.content.codec import Codec

    src = tmp_path / "model"
    src.mkdir()
    weights = (np.random.default_rng(1).normal(0, 0.02, 400_000).astype("<f4").view("<u4") >> 16).astype("<u2")
    (src / "weights.bin").write_bytes(weights.tobytes())
    (src / "tokenizer.json").write_text(json.dumps({f"token{i}": i for i in range(40_000)}))
    assert (src / "tokenizer.json").stat().st_size > 256 << 10  # probed (PROBE_MIN_BYTES)
    env = {**os.environ, "CASREG_REGISTRY": str(tmp_path / "reg"), "CASREG_USER": "ci@example.test"}
    proc, modules = run_traced(["push", "m", str(src)], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("numpy" in modules) == (not LOOPS)
    codecs = {e.path: {c.codec for c in e.chunks} for e in Registry(tmp_path / "reg").manifest("m").entries}
    assert codecs["weights.bin"] == {Codec.PLANES} and Codec.PLANES not in codecs["tokenizer.json"]
