"""Lifecycle and governance (issue 3): stages, gates, approvals, roles, archive, rollback,
history and time travel, on every backend; then every refusal the issue lists, each one
line, non-zero and changing nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import casreg
from casreg.errors import (
    ConflictError,
    InvalidInputError,
    InvalidNameError,
    InvalidPolicyError,
    PolicyError,
    UnknownReferenceError,
)
from casreg.records import utcnow
from casreg.storage import ObjectStore
from casreg_cli.main import run

POLICY = """
# who may do what, and what production needs
[push]
require = ["metrics.auc", "lineage.dataset"]

[gates.staging]
rules = ["metrics.auc >= 0.5"]

[gates.production]
rules = ["metrics.auc >= 0.95", "metrics.auc > @production"]
after = ["staging"]
approvals = 2
self_approval = false

[roles]
admin = ["alice"]
ml = ["alice", "dave", "*@ml.example.com"]
release = ["bob", "carol", "dave"]

[permissions]
push = ["ml"]
promote = { production = ["ml", "release"], "*" = ["ml"] }
approve = ["release"]
archive = ["ml", "release"]
policy = ["admin"]
"""


@pytest.fixture
def as_user(author: Callable[[str], None]) -> Callable[[str], None]:
    author("alice")
    return author


def model_file(tmp_path: Path, i: int) -> Path:
    p = tmp_path / f"model-{i}.bin"
    p.write_bytes(f"weights {i}\n".encode() * (100 + i))
    return p


def snapshot(store: ObjectStore) -> dict[str, bytes]:
    return {k: store.read(k) for k in sorted(store.list(""))}


def tick() -> None:
    """Event times are microseconds; make "before" and "after" strictly ordered."""
    time.sleep(0.002)


def test_scripted_session(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    """The issue's session: v1..v3; v1 to staging then production; a gate refuses v2
    with the failing rule shown; v3 approved twice and promoted; v1 archived
    automatically; rollback returns production to v1; resolve --at for three points in
    time; log shows every step with author and reason."""
    reg = registry
    assert reg.set_policy(POLICY, reason="initial policy") == 1
    aucs = {1: 0.96, 2: 0.94, 3: 0.98}
    for i in (1, 2, 3):
        v = reg.push("fraud", model_file(tmp_path, i), metrics={"auc": aucs[i]}, dataset="s3://data/fraud/2026-10")
        assert v.version == i and v.author == "alice"

    reg.promote("fraud", 1, "staging", reason="v1 passes offline eval")
    with pytest.raises(PolicyError, match=r"rule 'approvals >= 2' failed: 0 approval\(s\) of 2"):
        reg.promote("fraud", 1, "production", reason="too early")
    as_user("bob")
    reg.approve("fraud", 1, stage="production", comment="looks good")
    as_user("carol")
    reg.approve("fraud", 1, stage="production")
    as_user("alice")
    tick()
    p1 = reg.promote("fraud", 1, "production", reason="first production model")
    assert (p1.previous, p1.archived) == (None, None)
    tick()
    t_v1 = utcnow()
    tick()

    reg.promote("fraud", 2, "staging", reason="candidate")
    for user in ("bob", "carol"):
        as_user(user)
        reg.approve("fraud", 2, stage="production")
    as_user("alice")
    with pytest.raises(PolicyError) as refused:
        reg.promote("fraud", 2, "production", reason="should not pass")
    message = str(refused.value)
    assert "\n" not in message
    assert "rule 'metrics.auc >= 0.95' failed: fraud:2 has metrics.auc = 0.94; needs >= 0.95" in message
    assert ("rule 'metrics.auc > @production' failed: fraud:2 has metrics.auc = 0.94; "
            "needs > 0.96 (fraud:1 @production)") in message
    assert "approvals" not in message  # the approvals gate passed and is not blamed
    assert reg.resolve("fraud@production").version == 1  # nothing moved

    reg.promote("fraud", 3, "staging", reason="better candidate")
    for user in ("bob", "carol"):
        as_user(user)
        reg.approve("fraud", 3, stage="production", comment=f"ok from {user}")
    as_user("dave")
    tick()
    p3 = reg.promote("fraud", 3, "production", reason="v3 beats v1")
    assert (p3.version, p3.previous, p3.archived) == (3, 1, 1)
    assert [v.version for v in reg.search("fraud", stage="archived")] == [1]
    assert [v.version for v in reg.search("fraud", stage="production")] == [3]
    tick()
    t_v3 = utcnow()
    tick()

    back = reg.rollback("fraud", "production", reason="v3 raises false positives")
    assert (back.kind, back.from_version, back.to_version, back.author) == ("rollback", 3, 1, "dave")
    assert reg.resolve("fraud@production").version == 1
    # v1 is back in use; v3, which production left, is still at staging, so it is not archived:
    # a version an alias points at is never archived, whichever command would (docs/lifecycle.md)
    assert reg.search("fraud", stage="archived") == []
    assert [v.version for v in reg.search("fraud", stage="staging")] == [3]
    with pytest.raises(InvalidInputError, match="fraud:3 is at fraud@staging"):
        reg.archive("fraud", 3)
    tick()
    t_back = utcnow()

    assert reg.resolve_at("fraud@production", t_v1).version == 1
    assert reg.resolve_at("fraud@production", t_v3).version == 3
    assert reg.resolve_at("fraud@production", t_back).version == 1
    with pytest.raises(UnknownReferenceError, match="was not set at"):
        reg.resolve_at("fraud@production", p1.event.time - timedelta(seconds=1))  # type: ignore[union-attr]
    assert reg.resolve_at("fraud", t_v1).version == 3  # all three pushes came before

    log = reg.log("fraud")
    steps = [(e.kind, e.alias, e.from_version, e.to_version, e.author, e.reason) for e in log]
    assert steps == [
        ("policy.set", None, None, None, "alice", "initial policy"),
        ("push", None, None, 1, "alice", None),
        ("push", None, None, 2, "alice", None),
        ("push", None, None, 3, "alice", None),
        ("promote", "staging", None, 1, "alice", "v1 passes offline eval"),
        ("approve", "production", None, 1, "bob", "looks good"),
        ("approve", "production", None, 1, "carol", None),
        ("promote", "production", None, 1, "alice", "first production model"),
        ("promote", "staging", 1, 2, "alice", "candidate"),
        ("approve", "production", None, 2, "bob", None),
        ("approve", "production", None, 2, "carol", None),
        ("promote", "staging", 2, 3, "alice", "better candidate"),
        ("approve", "production", None, 3, "bob", "ok from bob"),
        ("approve", "production", None, 3, "carol", "ok from carol"),
        ("promote", "production", 1, 3, "dave", "v3 beats v1"),
        ("archive", None, None, 1, "dave", "replaced in production by fraud:3"),
        ("rollback", "production", 3, 1, "dave", "v3 raises false positives"),
    ]
    assert all(e.host for e in log)
    production = [(e.kind, e.to_version) for e in reg.log("fraud", alias="production")]
    assert production == [("approve", 1), ("approve", 1), ("promote", 1), ("approve", 2), ("approve", 2),
                          ("approve", 3), ("approve", 3), ("promote", 3), ("archive", 1), ("rollback", 1)]
    # the SQL views tell the same story
    rows = reg.sql("SELECT version, from_time, to_time FROM alias_history WHERE alias = 'production' "
                   "ORDER BY from_time")
    assert [r["version"] for r in rows] == [1, 3, 1] and rows[-1]["to_time"] is None
    assert rows[0]["to_time"] == rows[1]["from_time"]


def test_cli_session_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    reg_dir = str(tmp_path / "reg")
    monkeypatch.setenv("CASREG_REGISTRY", reg_dir)
    monkeypatch.setenv("CASREG_USER", "alice")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)

    def cli(*args: str) -> tuple[int, str, str]:
        code = run(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    assert cli("policy", "set", str(policy), "--reason", "start")[0] == 0
    code, _, err = cli("push", "fraud", str(model_file(tmp_path, 1)), "--metric", "auc=0.97")
    assert code == 8 and err.count("\n") == 1
    assert "missing lineage.dataset" in err
    assert casreg.Registry(reg_dir).ls("fraud", newest=0) == []  # nothing was pushed
    for i, auc in ((1, "0.97"), (2, "0.99")):
        code, _, err = cli("push", "fraud", str(model_file(tmp_path, i)), "--metric", f"auc={auc}",
                           "--dataset", "s3://d", "-q")
        assert code == 0, err
    assert cli("promote", "fraud", "1", "staging", "-q")[0] == 0
    code, out, err = cli("promote", "fraud", "1", "production", "--dry-run")
    assert code == 8 and "FAIL  approvals >= 2" in out and "nothing changed" in out
    code, out, _ = cli("promote", "fraud", "1", "production", "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 8 and doc["allowed"] is False and doc["dry_run"] is True
    assert {c["rule"]: c["passed"] for c in doc["checks"]} == {
        "metrics.auc >= 0.95": True, "metrics.auc > @production": True, "after staging": True,
        "approvals >= 2": False}
    code, _, err = cli("approve", "fraud", "1", "--stage", "production")
    assert code == 8 and err.startswith("casreg: error: ") and "alice holds none of the roles" in err
    monkeypatch.setenv("CASREG_USER", "bob")
    assert cli("approve", "fraud", "1", "--comment", "ok", "-q")[0] == 0
    code, _, err = cli("approve", "fraud", "1")
    assert code == 2 and "bob already approved fraud:1 for production" in err and err.count("\n") == 1
    monkeypatch.setenv("CASREG_USER", "carol")
    assert cli("approve", "fraud", "1", "-q")[0] == 0
    code, out, _ = cli("promote", "fraud", "1", "production", "--reason", "go")
    assert code == 0 and "fraud@production -> fraud:1" in out
    code, out, _ = cli("log", "fraud", "--json")
    kinds = [e["kind"] for e in json.loads(out)]
    assert kinds == ["policy.set", "push", "push", "promote", "approve", "approve", "promote"]
    monkeypatch.setenv("CASREG_USER", "alice")
    assert cli("alias", "set", "fraud@canary", "2", "--annotate", "weight=0.2", "-q")[0] == 0
    code, out, _ = cli("resolve", "fraud@canary", "--json")
    assert code == 0 and json.loads(out)["annotations"] == {"weight": "0.2"} and json.loads(out)["version"] == 2
    code, out, _ = cli("resolve", "fraud@production", "--at", "2000-01-01")
    assert code == 3
    code, out, err = cli("resolve", "fraud@production", "--at", "yesterday-ish")
    assert code == 2 and "ISO 8601" in err
    code, out, _ = cli("ls", "fraud", "--where", "metrics.auc > 0.98", "--json")
    assert [v["version"] for v in json.loads(out)] == [2]
    code, out, _ = cli("ls", "fraud", "--sort", "metrics.auc", "--desc", "--json")
    assert [v["version"] for v in json.loads(out)] == [2, 1]
    code, out, _ = cli("diff", "fraud:1", "fraud:2", "--json")
    d = json.loads(out)
    assert code == 0 and d["metrics"]["auc"]["delta"] == pytest.approx(0.02)
    code, out, err = cli("policy", "show", "--json")
    assert json.loads(out)["policy_version"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[gates.production]\nrules = [\"metrics.auc >= 0.9\"\napprovals = 2\n")
    monkeypatch.setenv("CASREG_USER", "alice")
    code, _, err = cli("policy", "set", str(bad))
    assert code == 2 and "line 3, column" in err and err.count("\n") == 1
    monkeypatch.setenv("CASREG_USER", "carol")
    code, _, err = cli("policy", "set", str(policy))
    assert code == 8 and "changing the policy refused: carol" in err


def test_refusals_change_nothing(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    reg = registry
    for i in (1, 2):
        reg.push("fraud", model_file(tmp_path, i), metrics={"auc": 0.9 + i / 100}, dataset="d")
    reg.push("churn", model_file(tmp_path, 9), metrics={"auc": 0.99}, dataset="d")
    as_user("dave")  # both a pusher and an approver
    reg.push("fraud", model_file(tmp_path, 3), metrics={"auc": 0.99}, dataset="d")
    as_user("alice")
    reg.set_policy(POLICY)
    reg.promote("fraud", 1, "staging")
    before = snapshot(reg.store)

    cases: list[tuple[type[Exception], str, object]] = [
        (InvalidNameError, "alias", lambda: reg.promote("fraud", 1, "Prod Uction")),
        (InvalidInputError, "is a version of churn, not of fraud",
         lambda: reg.promote("fraud", "churn:1", "staging")),
        (UnknownReferenceError, "fraud:9 does not exist (latest is fraud:3)",
         lambda: reg.promote("fraud", 9, "staging")),
        (PolicyError, "fraud:1 has metrics.auc = 0.91; needs >= 0.95", lambda: reg.promote("fraud", 1, "production")),
        (PolicyError, "fraud:2 has never been in staging", lambda: reg.promote("fraud", 2, "production")),
        (PolicyError, "does not let a pusher approve their own version",
         lambda: (as_user("dave"), reg.approve("fraud", 3, stage="production"))),
        (PolicyError, "mallory holds none of the roles allowed to promote staging",
         lambda: (as_user("mallory"), reg.promote("fraud", 2, "staging"))),
        (PolicyError, "pushing fraud refused: mallory",
         lambda: (as_user("mallory"), reg.push("fraud", model_file(tmp_path, 5), metrics={"auc": 1}, dataset="d"))),
        (PolicyError, "missing metrics.auc, lineage.dataset",
         lambda: (as_user("alice"), reg.push("fraud", model_file(tmp_path, 5)))),
        (InvalidInputError, "fraud:1 is at fraud@staging", lambda: (as_user("alice"), reg.archive("fraud", 1))),
        (InvalidInputError, "no previous target", lambda: reg.rollback("fraud", "staging")),
        (UnknownReferenceError, "was never set", lambda: reg.rollback("fraud", "production")),
        (InvalidInputError, "archived is a state", lambda: reg.set_alias("fraud", "archived", 1)),
        (ConflictError, "fraud@staging is at fraud:1", lambda: reg.promote("fraud", 2, "staging", if_current=2)),
        (InvalidPolicyError, "(at line 3, column 1: end of document)", lambda: reg.set_policy("[push]\nrequire = [\n")),
        (InvalidPolicyError, "unknown table 'gate'", lambda: reg.set_policy("[gate.production]\napprovals = 1\n")),
        (InvalidPolicyError, "cannot read rule 'auc >> 1'",
         lambda: reg.set_policy("[gates.production]\nrules = ['auc >> 1']\n")),
        (InvalidPolicyError, "role 'ops' is not defined",
         lambda: reg.set_policy("[permissions]\npolicy = ['ops']\n")),
    ]
    for error, text, action in cases:
        with pytest.raises(error) as caught:
            action()  # type: ignore[operator]
        assert text in str(caught.value), (text, str(caught.value))
        assert "\n" not in str(caught.value)
    as_user("alice")
    assert snapshot(reg.store) == before


def test_gate_on_a_metric_the_version_lacks(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    registry.push("m", model_file(tmp_path, 1), metrics={"loss": 0.3})
    registry.set_policy('[gates.production]\nrules = ["metrics.auc >= 0.9", "metrics.loss < 0.5"]\n')
    result = registry.promote("m", 1, "production", dry_run=True)
    assert [(c.rule, c.passed) for c in result.checks] == [("metrics.auc >= 0.9", False), ("metrics.loss < 0.5", True)]
    with pytest.raises(PolicyError, match=r"m:1 has no metrics.auc \(the rule needs one\)"):
        registry.promote("m", 1, "production")
    assert registry.aliases("m") == []


def test_keep_previous_annotations_and_archive(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    reg = registry
    for i in (1, 2, 3):
        reg.push("m", model_file(tmp_path, i))
    reg.promote("m", 1, "production")
    p = reg.promote("m", 2, "production", keep_previous=True)
    assert (p.previous, p.archived) == (1, None)
    assert reg.search("m", stage="archived") == []
    same = reg.promote("m", 2, "production")
    assert same.changed is False and same.event is None
    reg.set_alias("m", "canary", 3, annotations={"weight": "0.1"}, reason="10% canary")
    [canary] = [a for a in reg.aliases("m") if a.alias == "canary"]
    assert canary.annotations == {"weight": "0.1"} and canary.version == 3
    assert reg.resolve("m@canary").annotations == {"weight": "0.1"}
    assert reg.sql("SELECT annotations['weight'] AS w FROM aliases WHERE alias = 'canary'") == [{"w": "0.1"}]
    with pytest.raises(InvalidInputError, match="m:3 is at m@canary"):
        reg.archive("m", 3)
    reg.archive("m", 1, reason="superseded")
    with pytest.raises(InvalidInputError, match="already archived"):
        reg.archive("m", 1)
    assert [v.version for v in reg.search("m", stage="archived")] == [1]
    archived = reg.state("m:1").archived
    assert archived is not None and archived.reason == "superseded"
    reg.promote("m", 1, "staging")  # bringing a version back un-archives it
    assert reg.search("m", stage="archived") == [] and reg.state("m:1").archived is None
    assert reg.pull("m:1", tmp_path / "out.bin").size > 0  # nothing was deleted


def test_rejection_blocks_until_withdrawn(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    reg = registry
    reg.push("m", model_file(tmp_path, 1))
    reg.set_policy("[gates.production]\napprovals = 1\n")
    as_user("bob")
    reg.approve("m", 1, stage="production")
    as_user("carol")
    reg.reject("m", 1, stage="production", comment="bias audit pending")
    with pytest.raises(PolicyError, match="rejected for production by carol at .*: bias audit pending"):
        reg.promote("m", 1, "production")
    state = reg.state("m:1")
    assert (state.approvals, state.rejections) == ({"production": ["bob"]}, {"production": ["carol"]})
    reg.approve("m", 1, stage="production", comment="audit done")  # carol changes her mind
    assert reg.promote("m", 1, "production").version == 1
    assert reg.state("m:1").to_dict()["approvals"] == {"production": ["bob", "carol"]}
    rows = reg.sql("SELECT author, decision, comment FROM approvals ORDER BY time")
    assert rows == [{"author": "bob", "decision": "approve", "comment": None},
                    {"author": "carol", "decision": "reject", "comment": "bias audit pending"},
                    {"author": "carol", "decision": "approve", "comment": "audit done"}]


def test_per_model_policy_and_policy_history(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    reg = registry
    reg.push("fraud", model_file(tmp_path, 1), metrics={"auc": 0.96})
    reg.push("churn", model_file(tmp_path, 2), metrics={"auc": 0.96})
    reg.set_policy('[gates.production]\nrules = ["metrics.auc >= 0.9"]\n'
                   '[models."fraud".gates.production]\nrules = ["metrics.auc >= 0.97"]\n')
    assert reg.promote("churn", 1, "production").version == 1
    with pytest.raises(PolicyError, match="needs >= 0.97"):
        reg.promote("fraud", 1, "production")
    assert reg.set_policy("") == 2  # an empty policy allows everything
    assert reg.promote("fraud", 1, "production").version == 1
    assert reg.policy(1).text.startswith("[gates.production]") and reg.policy().version == 2
    changes = [(e.kind, e.details.get("policy_version")) for e in reg.log("fraud") if e.kind == "policy.set"]
    assert changes == [("policy.set", 1), ("policy.set", 2)]


def test_authors_come_from_casreg_user_then_git(registry: casreg.Registry, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import casreg.lineage

    registry.push("m", model_file(tmp_path, 1))
    monkeypatch.setenv("CASREG_USER", "erin@example.com")
    assert registry.set_alias("m", "a", 1).author == "erin@example.com"
    monkeypatch.delenv("CASREG_USER")
    casreg.lineage._fallback_author.cache_clear()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\temail = frank@example.com\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    try:
        ev = registry.set_alias("m", "b", 1)
    finally:
        casreg.lineage._fallback_author.cache_clear()
    assert ev.author == "frank@example.com" and ev.host == casreg.lineage.hostname()


def test_stale_promotion_loses_with_the_winner_named(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    """A promotion whose gates were checked against a pointer someone else moved before
    its swap fails with a conflict naming the winner, and changes nothing."""
    import casreg.governance.lifecycle as lifecycle

    reg = registry
    for i in (1, 2, 3):
        reg.push("m", model_file(tmp_path, i), metrics={"auc": 0.9 + i / 100})
    reg.promote("m", 1, "production")
    real = lifecycle.evaluate

    def racing_evaluate(*args, **kwargs):  # type: ignore[no-untyped-def]
        lifecycle.evaluate = real  # the other promotion runs once, between read and swap
        as_user("bob")
        reg.promote("m", 3, "production", reason="bob was faster")
        as_user("alice")
        after_bob.update(snapshot(reg.store))
        return real(*args, **kwargs)

    after_bob: dict[str, bytes] = {}
    lifecycle.evaluate = racing_evaluate
    try:
        with pytest.raises(ConflictError,
                           match=r"m@production was moved to m:3 by bob at .* meanwhile; nothing was changed"):
            reg.promote("m", 2, "production", reason="alice was slower")
    finally:
        lifecycle.evaluate = real
    assert after_bob and snapshot(reg.store) == after_bob
    assert reg.resolve("m@production").version == 3
    assert [e.to_version for e in reg.log("m", kinds=["promote"])] == [1, 3]


def test_history_survives_a_crash_between_pointer_and_ledger(  # type: ignore[no-untyped-def]
    registry: casreg.Registry, tmp_path: Path, as_user
) -> None:
    """The pointer holds its last move (and the archive it implies): if the ledger append
    is lost, history and resolve --at still see it, and the next move writes it."""
    from casreg.keys import event_key

    reg = registry
    for i in (1, 2):
        reg.push("m", model_file(tmp_path, i))
    reg.promote("m", 1, "production")
    p = reg.promote("m", 2, "production")
    assert p.event is not None
    keys = [k for k in reg.store.list("ledger/events/m")]
    reg.store.delete(event_key(p.event))  # as if the process died right after the swap
    archive_keys = [k for k in keys if k != event_key(p.event) and k > event_key(p.event)[:-40]]
    for k in archive_keys:
        reg.store.delete(k)
    kinds = [e.kind for e in reg.log("m")]
    assert kinds == ["push", "push", "promote", "promote", "archive"]
    assert reg.resolve_at("m@production", utcnow()).version == 2
    reg.rollback("m", "production")
    assert reg.store.exists(event_key(p.event))
    assert [e.kind for e in reg.log("m")] == ["push", "push", "promote", "promote", "archive", "rollback", "archive"]


def test_stage_typos_and_disallowed_aliases_are_refused(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    reg = registry
    reg.push("m", model_file(tmp_path, 1))
    before = snapshot(reg.store)
    for typo, meant in (("stagign", "staging"), ("prodution", "production"), ("archive", "archived")):
        with pytest.raises(InvalidInputError, match=f"unknown stage '{typo}': did you mean '{meant}'"):
            reg.promote("m", 1, typo)
    with pytest.raises(InvalidInputError, match="did you mean 'production'"):
        reg.approve("m", 1, stage="productoin")
    assert snapshot(reg.store) == before
    reg.set_alias("m", "champion", 1)  # free-form aliases are fine without a policy
    reg.set_alias("m", "production-eu", 1)  # and so are deliberate variants of a stage
    reg.set_policy('[aliases]\nallowed = ["champion", "canary"]\n')
    reg.set_alias("m", "canary", 1, annotations={"weight": "0.05"})
    with pytest.raises(InvalidInputError, match="alias 'shadow' is not allowed by policy version 1"):
        reg.set_alias("m", "shadow", 1)
    assert reg.promote("m", 1, "staging").version == 1  # stages are always allowed


def test_promote_moves_only_stages_and_gated_aliases(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    """A word that is not a stage (a typo such as prod, or a free-form alias) is refused by
    promote with the closest stage named, in the library's terms (no command-line flags);
    free-form aliases are moved by set_alias; an alias the policy gates may be promoted."""
    from casreg.errors import UnknownStageError

    reg = registry
    reg.push("m", model_file(tmp_path, 1))
    before = snapshot(reg.store)
    for word, meant in (("prod", "production"), ("stag", "staging"), ("producton", "production"),
                        ("champion", None), ("canary", None)):
        with pytest.raises(UnknownStageError) as refused:
            reg.promote("m", 1, word)
        message = str(refused.value)
        assert refused.value.stage == word and refused.value.suggestion == meant
        assert (f"did you mean '{meant}'?" in message) == (meant is not None), message
        assert "set_alias" in message and "casreg" not in message and "--" not in message
        assert isinstance(refused.value, InvalidInputError) and refused.value.exit_code == 2
    assert snapshot(reg.store) == before  # nothing was written, no alias created
    assert reg.aliases("m") == []
    reg.set_alias("m", "prod", 1)  # a free-form alias goes through set_alias, as before
    reg.set_policy('[gates.champion]\nrules = ["version >= 1"]\n')
    assert reg.promote("m", 1, "champion").version == 1  # a gated alias is promotable
    with pytest.raises(UnknownStageError, match="did you mean 'champion'"):
        reg.promote("m", 1, "champio")
    assert reg.promote("m", 1, "production").version == 1


def test_no_command_archives_a_version_an_alias_points_at(registry: casreg.Registry, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          as_user) -> None:
    """archive refuses a version an alias points at; promoting to production and rolling
    production back skip archiving such a version in the same way (they used to archive
    it while staging still held it)."""
    reg = registry
    for i in (1, 2, 3):
        reg.push("m", model_file(tmp_path, i))
    reg.promote("m", 1, "production")
    reg.set_alias("m", "champion", 1)
    p = reg.promote("m", 2, "production")  # v1 is still m@champion
    assert (p.previous, p.archived) == (1, None)
    assert reg.search("m", stage="archived") == [] and reg.state("m:1").archived is None
    with pytest.raises(InvalidInputError, match="m:1 is at m@champion"):
        reg.archive("m", 1)

    reg.promote("m", 3, "staging")
    reg.promote("m", 3, "production")  # v2 left production and nothing holds it: archived
    assert [v.version for v in reg.search("m", stage="archived")] == [2]
    back = reg.rollback("m", "production")  # leaves v3, still at staging: not archived
    assert (back.from_version, back.to_version) == (3, 2)
    assert back.details is None or "archived" not in back.details
    assert reg.search("m", stage="archived") == []  # v2 is back in use, v3 is at staging
    with pytest.raises(InvalidInputError, match="m:3 is at m@staging"):
        reg.archive("m", 3)
    assert [e.kind for e in reg.log("m")].count("archive") == 1

    reg.remove_alias("m", "staging")
    reg.promote("m", 3, "production")  # v2 leaves production; nothing else holds it
    back = reg.rollback("m", "production")  # v3 leaves, nothing holds it: archived, as before
    assert [v.version for v in reg.search("m", stage="archived")] == [3]


def test_log_of_the_registry_itself(registry: casreg.Registry, tmp_path: Path, as_user) -> None:  # type: ignore[no-untyped-def]
    registry.set_policy("", reason="open")
    registry.set_policy("[gates.production]\napprovals = 1\n", reason="one approval")
    entries = registry.log("_registry")
    assert [(e.kind, e.reason, e.details["policy_version"]) for e in entries] == [
        ("policy.set", "open", 1), ("policy.set", "one approval", 2)]
    with pytest.raises(InvalidNameError):
        registry.log("_other")
