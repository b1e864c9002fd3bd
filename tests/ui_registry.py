"""The registry the ``casreg ui`` tests (routes and browser) look at, built with the
public API: a model ``fraud`` of four versions with metrics, params and tags (v2 with a
hostile description and tag), ``production`` moved v1 -> v2, rolled back to v1 with a
reason, then moved to v3; ``staging`` at v4; an approval of v3; a policy; and a second
model ``churn``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from casreg import Registry

HOSTILE = "<script>alert(1)</script>\x1b[2J\u202e evil\nsecond line"
HOSTILE_TAG = '"><img src=x onerror=alert(2)>'
ROLLBACK_REASON = "latency regression in v2"
POLICY = """\
[gates.production]
approvals = 1

[roles]
release = ["*@example.com"]
"""
AUC = {1: 0.91, 2: 0.925, 3: 0.947, 4: 0.951}


@dataclass
class Built:
    reg: Registry
    url: str
    root: Path


def build(root: Path, *, user: str = "alice@example.com") -> Built:
    """Make the registry under ``root`` (``root/reg``) as ``user``."""
    os.environ["CASREG_USER"] = user
    os.environ["GIT_CEILING_DIRECTORIES"] = str(root)
    reg = Registry(root / "reg")
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    base = os.urandom(64 * 1024)
    for n in range(1, 5):
        f = src / f"model-{n}.bin"
        f.write_bytes(base + bytes([n]) * (4096 * n))  # shares the base chunk(s) with earlier versions
        reg.push("fraud", f, metrics={"auc": AUC[n], "loss": round(0.5 / n, 4)}, params={"lr": f"{n}e-4"},
                 tags={"team": "fraud", **({"note": HOSTILE_TAG} if n == 2 else {})},
                 description=HOSTILE if n == 2 else f"weekly retrain {n}", framework="pytorch",
                 parent="fraud" if n > 1 else None, dataset=f"s3://data/fraud/{n}")
    d = src / "churn"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(8192))
    (d / "config.json").write_text('{"layers": 2}')
    reg.push("churn", d, metrics={"f1": 0.71}, tags={"team": "growth"}, description="churn model")
    reg.set_alias("fraud", "production", 1, reason="first model")
    reg.set_alias("fraud", "production", 2, reason="beats v1 on auc")
    reg.rollback("fraud", "production", reason=ROLLBACK_REASON)
    reg.set_policy(POLICY, reason="one approval for production")
    reg.approve("fraud", 3, stage="production", comment="reviewed")
    reg.promote("fraud", 3, "production", reason="v3 fixes the latency")
    reg.set_alias("fraud", "staging", 4, reason="candidate")
    return Built(reg, str(root / "reg"), root)
