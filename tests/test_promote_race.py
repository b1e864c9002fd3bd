"""Two processes promoting different versions to production at the same moment (issue 3):
exactly one wins, the other gets a conflict error naming the winner, and the event log
matches the pointer. Real CLI processes, on a local directory and on S3 (SeaweedFS).

Each promotion says which version it replaces (``--if-current``), as a deployment
pipeline does: so whatever the interleaving (both read the old pointer, or one reads
after the other's swap), the second must lose. Without it, a promotion that starts after
the other finished is simply the next promotion (tests/test_lifecycle.py covers the
stale read between gate check and swap)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import casreg
from casreg.ledger.pointers import read_pointer

POLICY = """
[gates.production]
rules = ["metrics.auc >= 0.9"]
approvals = 1
"""


@pytest.fixture
def url(shared_url: str) -> str:
    return shared_url


def start(url: str, version: int, replacing: int, user: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "casreg_cli.main", "promote", "fraud", str(version), "production",
           "--if-current", str(replacing), "--reason", f"{user} ships v{version}", "--registry", url]
    env = {**__import__("os").environ, "CASREG_USER": user}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_promote_at_once(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_USER", "setup")
    reg = casreg.Registry(url)
    for i in (1, 2, 3):
        src = tmp_path / f"v{i}.bin"
        src.write_bytes(f"model {i}\n".encode() * 500)
        reg.push("fraud", src, metrics={"auc": 0.9 + i / 100})
    reg.set_policy(POLICY)
    monkeypatch.setenv("CASREG_USER", "reviewer")
    for i in (1, 2, 3):
        reg.approve("fraud", i, stage="production")
    monkeypatch.setenv("CASREG_USER", "setup")
    reg.promote("fraud", 1, "production", reason="baseline")

    current = 1
    rounds = [(2, 3), None]  # the second round races the first round's loser against v1
    winners = [1]
    for contenders in rounds:
        if contenders is None:
            contenders = (loser, 1)  # noqa: F821 - set by the first round
        procs = {v: start(url, v, current, f"deployer-{v}") for v in contenders}
        results = {v: (p.wait(timeout=120), *p.communicate()) for v, p in procs.items()}
        won = [v for v, (code, _, _) in results.items() if code == 0]
        lost = [v for v, (code, _, _) in results.items() if code != 0]
        assert len(won) == 1 and len(lost) == 1, results
        winner, loser = won[0], lost[0]
        code, _, err = results[loser]
        assert code == 5, err
        assert err.count("\n") == 1 and err.startswith("casreg: error: ")
        # the loser names the winner, whichever way the race went
        assert (f"fraud@production was moved to fraud:{winner} by deployer-{winner}" in err
                or f"fraud@production is at fraud:{winner} (moved by deployer-{winner}" in err), err
        assert "nothing was changed" in err
        pointer = read_pointer(reg.store, "fraud", "production")
        assert pointer is not None and pointer.version == winner
        current = winner
        winners.append(winner)

    promotions = [e for e in reg.log("fraud", alias="production") if e.kind == "promote"]
    assert [e.to_version for e in promotions] == winners  # every win logged once, no loser
    assert [e.from_version for e in promotions] == [None, *winners[:-1]]
    assert all(e.author == (f"deployer-{e.to_version}" if i else "setup") for i, e in enumerate(promotions))
    pointer = read_pointer(reg.store, "fraud", "production")
    assert pointer is not None and pointer.event.event_id == promotions[-1].event_id
    archives = [e.to_version for e in reg.log("fraud") if e.kind == "archive"]
    assert archives == winners[:-1]  # each promotion archived exactly the version it replaced
    rows = reg.sql("SELECT version FROM alias_history WHERE alias = 'production' ORDER BY from_time")
    assert [r["version"] for r in rows] == winners
