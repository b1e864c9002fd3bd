"""Processes that read Parquet end cleanly.

pyarrow's ``read_table`` (the dataset scanner) leaves work on Arrow's threads that can
abort the interpreter at exit ("terminate called without an active exception", SIGABRT)
when segments were read from several threads: 5 in 80 commands on a read-only format-1
registry did. casreg reads single Parquet objects with ``ParquetFile.read`` instead."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_reads_parquet_through_the_dataset_scanner() -> None:
    offenders = []
    for path in sorted((ROOT / "casreg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("read_table", "ParquetDataset"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
    assert offenders == []


SCRIPT = textwrap.dedent("""
    import os, sys
    from casreg import Registry
    from casreg.content.chunking import DEFAULT_CHUNK_PARAMS
    from casreg.content.config import init_config
    from casreg.storage.local import LocalStore

    root = sys.argv[1]
    if sys.argv[2] == "make":
        reg = Registry(root)
        init_config(reg.store, DEFAULT_CHUNK_PARAMS, registry_format="casreg/1")
        for i in range(6):
            reg.push("m", os.path.join(sys.argv[3]), description=f"v{i}")
        sys.exit(0)

    class ReadOnly(LocalStore):  # a reader of a read-only registry: every write refused
        def create(self, key, data):
            from casreg.errors import StorageError
            raise StorageError(f"registry {self.url} is read-only: cannot create {key}")

    reg = Registry.from_store(ReadOnly(root), threads=4)
    assert [v.version for v in reg.ls("m")] == [1, 2, 3, 4, 5, 6]
    print(reg.resolve("m").version)
""")


def test_reading_format_1_records_from_threads_exits_cleanly(tmp_path: Path) -> None:
    """Format-1 records without their ``refs/`` copies are read from the segments' rows,
    concurrently, on a registry that refuses writes; the process must exit 0 every time."""
    script = tmp_path / "read.py"
    script.write_text(SCRIPT)
    (tmp_path / "m.bin").write_bytes(b"weights" * 1000)
    root = tmp_path / "reg"
    subprocess.run([sys.executable, str(script), str(root), "make", str(tmp_path / "m.bin")], check=True)
    for copy in (root / "refs").rglob("*.json"):
        copy.unlink()
    codes = []
    for _ in range(12):
        p = subprocess.run([sys.executable, str(script), str(root), "read"], capture_output=True, text=True)
        assert "Traceback" not in p.stderr, p.stderr
        codes.append((p.returncode, p.stderr[-300:]) if p.returncode else 0)
    assert codes == [0] * 12, codes
