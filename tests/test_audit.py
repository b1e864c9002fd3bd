"""Every audit question in docs/audit.md, run as written (the SQL is read from the doc)
against a registry with a known history, on every backend."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import casreg
from casreg.records import utcnow

DOC = Path(__file__).resolve().parent.parent / "docs" / "audit.md"
DATASET = "s3://datasets/fraud/2026-10"
DOC_TIME = "2026-10-01 12:00:00+00"


def questions() -> dict[int, tuple[str, str]]:
    text = DOC.read_text()
    found = re.findall(r"^## (\d+)\. (.+?)\n.*?```sql\n(.*?)```", text, flags=re.S | re.M)
    return {int(n): (title, sql) for n, title, sql in found}


def test_the_doc_has_at_least_ten_questions_each_with_sql() -> None:
    qs = questions()
    assert len(qs) >= 10 and sorted(qs) == list(range(1, len(qs) + 1))
    assert all("SELECT" in sql for _, sql in qs.values())


def write(path: Path, fill: int, size: int = 4096) -> Path:
    path.write_bytes(bytes([fill]) * size)
    return path


@pytest.fixture
def history(registry: casreg.Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """fraud v1..v4 (v2, v3 fine-tunes of v1; v4 the same bytes as v1), churn v1 pushed
    from a clean git checkout; promotions, approvals, a rollback and two policy changes."""
    reg = registry
    monkeypatch.setenv("CASREG_USER", "alice")

    def step() -> None:
        time.sleep(0.002)

    reg.set_policy("", reason="start with an open policy")
    reg.push("fraud", write(tmp_path / "f1.bin", 1), metrics={"auc": 0.95}, dataset=DATASET)
    reg.push("fraud", write(tmp_path / "f2.bin", 2), metrics={"auc": 0.97}, dataset=DATASET, parent="fraud:1")
    reg.push("fraud", write(tmp_path / "f3.bin", 3), metrics={"auc": 0.96}, dataset="s3://datasets/other",
             parent="fraud:1")
    reg.push("fraud", write(tmp_path / "f4.bin", 1), metrics={"auc": 0.95}, dataset=DATASET)  # = v1's bytes
    repo = tmp_path / "repo"
    repo.mkdir()
    write(repo / "churn.bin", 9, 8192)
    git = ["git", "-C", str(repo), "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "churn.bin"], check=True)
    subprocess.run([*git, "commit", "-qm", "churn model"], check=True)
    reg.push("churn", repo / "churn.bin", metrics={"auc": 0.8})

    reg.promote("fraud", 1, "staging", reason="offline eval passed")
    for user in ("bob", "carol"):
        monkeypatch.setenv("CASREG_USER", user)
        reg.approve("fraud", 1, stage="production")
    monkeypatch.setenv("CASREG_USER", "alice")
    step()
    reg.promote("fraud", 1, "production", reason="first release")
    step()
    mid = utcnow()
    step()
    monkeypatch.setenv("CASREG_USER", "bob")
    reg.approve("fraud", 2, stage="production", comment="one approval only")
    monkeypatch.setenv("CASREG_USER", "dave")
    reg.promote("fraud", 2, "production", reason="hotfix straight to production")
    step()
    reg.rollback("fraud", "production", reason="latency regression")
    reg.set_alias("churn", "production", 1)  # no reason given
    monkeypatch.setenv("CASREG_USER", "alice")
    reg.set_policy("[gates.production]\napprovals = 2\n", reason="require two approvals")
    return {"reg": reg, "mid": mid}


def ask(reg: casreg.Registry, n: int, **replace: str) -> list[dict[str, Any]]:
    sql = questions()[n][1]
    for old, new in replace.items():
        assert old in sql
        sql = sql.replace(old, new)
    return reg.sql(sql)


def test_audit_questions(history: dict[str, Any]) -> None:
    reg: casreg.Registry = history["reg"]

    q1 = ask(reg, 1)
    assert [(r["name"], r["kind"], r["from_version"], r["to_version"], r["author"]) for r in q1] == [
        ("fraud", "promote", None, 1, "alice"), ("fraud", "promote", 1, 2, "dave"),
        ("fraud", "rollback", 2, 1, "dave"), ("churn", "alias.set", None, 1, "dave")]
    assert q1[1]["reason"] == "hotfix straight to production"

    assert [(r["name"], r["version"]) for r in ask(reg, 2)] == [("fraud", 1), ("fraud", 2), ("fraud", 4)]

    q3 = {(r["name"], r["version"]): r for r in ask(reg, 3)}
    assert sorted(q3) == [("churn", 1), ("fraud", 1), ("fraud", 2)]
    assert q3[("fraud", 1)]["stints"] == 2 and q3[("fraud", 2)]["stints"] == 1
    assert all(r["seconds_in_production"] > 0 for r in q3.values())
    assert q3[("fraud", 1)]["seconds_in_production"] > q3[("fraud", 2)]["seconds_in_production"]

    assert [(r["name"], r["version"], r["author"]) for r in ask(reg, 4)] == [
        ("fraud", 2, "dave"), ("churn", 1, "dave")]

    q5 = {r["name"]: r for r in ask(reg, 5)}
    assert q5["fraud"]["versions"] == 4 and q5["fraud"]["logical_bytes"] == 4 * 4096
    assert q5["fraud"]["dedup_ratio"] == 0.25  # v4 stored nothing new
    assert q5["churn"]["versions"] == 1 and q5["churn"]["dedup_ratio"] == 0
    assert q5["fraud"]["stored_bytes"] == sum(v.stored_bytes for v in reg.ls("fraud"))

    at_mid = history["mid"].isoformat(sep=" ")
    assert [(r["name"], r["version"]) for r in ask(reg, 6, **{DOC_TIME: at_mid})] == [("fraud", 1)]
    assert ask(reg, 6) == []  # 2026-10-01: before any of this

    assert [(r["name"], r["version"], r["approvals"]) for r in ask(reg, 7)] == [("fraud", 2, 1)]

    q8 = [(r["name"], r["alias"], r["version"]) for r in ask(reg, 8)]
    assert q8 == [("fraud", "production", 1), ("fraud", "staging", 1)]  # churn came from a clean commit

    q9 = [(r["parent_version"], r["child_version"], round(r["auc_gain"], 6)) for r in ask(reg, 9)]
    assert q9 == [(1, 2, 0.02), (1, 3, 0.01)]

    q10 = ask(reg, 10)
    assert [(r["name"], r["rolled_back_from"], r["restored"], r["reason"]) for r in q10] == [
        ("fraud", 2, 1, "latency regression")]

    assert [(r["policy_version"], r["reason"]) for r in ask(reg, 11)] == [
        (1, "start with an open policy"), (2, "require two approvals")]

    assert [(r["name"], r["alias"], r["kind"]) for r in ask(reg, 12)] == [("churn", "production", "alias.set")]

    # the rollback archived fraud:2; fraud:1 stayed at staging when 2 replaced it, so it was not
    q13 = [(r["name"], r["version"], r["archived"], r["archived_by"], r["aliases"]) for r in ask(reg, 13)]
    assert q13 == [("churn", 1, False, None, ["production"]), ("fraud", 1, False, None, ["production", "staging"]),
                   ("fraud", 2, True, "dave", []), ("fraud", 3, False, None, []), ("fraud", 4, False, None, [])]
    assert {(n, v) for n, v, archived, _, _ in q13 if archived} == set(reg.archived())
