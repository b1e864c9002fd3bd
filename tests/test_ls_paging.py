"""`ls NAME` shows the newest versions by default and says how many older ones exist;
the same with the ledger compacted or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from casreg import Registry
from casreg_cli.main import run


@pytest.mark.parametrize("compacted", [False, True])
def test_newest_versions_and_the_count_of_older_ones(tmp_path: Path, compacted: bool,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry(tmp_path / "reg")
    reg.compact_threshold = 0  # compaction only when asked
    for i in range(6):
        f = tmp_path / f"m{i}.bin"
        f.write_bytes(bytes([i]) * (100 + i))
        reg.push("m", f)
    if compacted:
        reg.compact()
    assert [v.version for v in reg.ls("m", newest=2)] == [5, 6]
    assert [v.version for v in reg.ls("m")] == [1, 2, 3, 4, 5, 6]
    assert reg.ls("m", newest=0) == []

    assert run(["ls", "m", "--limit", "2", "-r", str(tmp_path / "reg")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "(4 older versions not shown; --all or --limit N)"
    assert [line.split()[0] for line in out[2:]] == ["m:5", "m:6"]

    assert run(["ls", "m", "--all", "-r", str(tmp_path / "reg")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "older" not in out[0]
    assert [line.split()[0] for line in out[1:]] == [f"m:{i}" for i in range(1, 7)]
