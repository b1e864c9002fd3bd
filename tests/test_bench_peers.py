"""benchmarks/peers.py writes only what its own run measured into the report."""

from __future__ import annotations

from pathlib import Path

from benchmarks import peers

HARNESS = {
    "run_peers.sh": 'mkdir -p "$RES"; echo "TEN VERSIONS $TOOLS" > "$RES/tables.md"\n',
    "single_small.sh": 'mkdir -p "$RES/ss"; echo "FRESH SMALL TABLES" > "$RES/ss/tables.md"\n',
}


def fake_harness(tmp_path: Path) -> Path:
    harness = tmp_path / "harness"
    harness.mkdir()
    for name, body in HARNESS.items():
        (harness / name).write_text("set -eu\n" + body)
    return harness


def test_a_run_without_small_leaves_out_an_earlier_runs_small_tables(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "results" / "ss").mkdir(parents=True)
    (root / "results" / "ss" / "tables.md").write_text("STALE SMALL TABLES\n")  # left by an earlier --small run
    out = tmp_path / "report.md"
    harness = fake_harness(tmp_path)
    assert peers.main(["--root", str(root), "--harness", str(harness), "--tools", "casreg", "--out", str(out)]) == 0
    report = out.read_text()
    assert "TEN VERSIONS casreg" in report and "SMALL TABLES" not in report
    assert peers.main(["--root", str(root), "--harness", str(harness), "--tools", "casreg", "--small",
                       "--out", str(out)]) == 0
    report = out.read_text()
    assert "FRESH SMALL TABLES" in report and "STALE" not in report
