"""The signed kinds added after the first signed-governance change (docs/signing.md):
``alias rm``, ``hooks set``, ``delete``/``retain`` and the policy restore are signed,
refused unsigned where the policy (or a pinned root) asks for a key, and reported by
``verify`` when a bucket writer makes them unsigned; imported moves are unsigned history
(flagged only while a pointer still stands on one). Local and S3, with the world of
``test_signed_governance`` (a policy signed by a pinned admin key)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import test_signed_governance as base
from inprocess_cli import fails, ok
from test_signed_governance import EMAIL, World, _promote_signed, _weights

from casreg.errors import PolicyError
from casreg.keys import HOOKS_KEY, policy_key
from casreg.storage import ObjectStore

keys = base.keys
backend = base.backend
world = base.world


def _new_problems(w: World) -> list[str]:
    """``verify``'s signing problems but the one every world starts with: m@production,
    set before the policy had [keys], by an unsigned move (test_signed_governance)."""
    return [p for p in w.verify_problems() if not p.startswith("unsigned pointers/m/production.json:")]


def _registry_marks(w: World) -> dict[str, str]:
    """What ``log _registry`` says of each signable registry-wide event, by kind."""
    checks = w.reg.event_signatures(w.reg.log("_registry"))
    return {e.kind: checks[e.event_id].status for e in w.reg.log("_registry") if e.event_id in checks}


def test_alias_rm_of_a_gated_stage_is_signed(world: World) -> None:
    w = world
    _promote_signed(w)
    # unsigned: refused in one line (exit 8); a key no [keys] entry names: refused
    fails(w.cli("alias", "rm", "m@production", CASREG_USER=EMAIL["alice"]), 8, "needs a signed event")
    fails(w.cli("alias", "rm", "m@production", "--key", w.key("mallory")), 8, "is not in the [keys]")
    assert w.reg.resolve("m@production").version == 2
    ok(w.cli("alias", "rm", "m@production", "--key", w.key("alice"), "--reason", "incident",
             CASREG_USER=EMAIL["alice"]))
    assert w.verify_problems() == []
    removal = next(e for e in w.reg.log("m") if e.kind == "alias.remove")
    assert w.log_marks()[removal.event_id] == "verified"
    # put back (signed), then taken down through the library internals, unsigned: reported
    w.act_as(EMAIL["alice"])
    w.reg.promote("m", 2, "production", key=w.key("alice"))
    from casreg.ledger.pointers import move_alias

    move_alias(w.store, "m", "production", None)
    problems = w.verify_problems()
    assert len(problems) == 1 and "m@production" in problems[0] and "alias.remove" in problems[0]


def test_hooks_set_needs_a_pinned_admin_key(world: World) -> None:
    w = world
    cfg = w.tmp / "hooks.toml"
    cfg.write_text("# no hooks yet\n")
    admin = {"CASREG_USER": EMAIL["admin"]}
    fails(w.cli("hooks", "set", str(cfg), **admin), 8, "pinned admin key")
    fails(w.cli("hooks", "set", str(cfg), "--key", w.key("alice"), **admin), 8, "not one of its keys")
    assert w.store.read_versioned(HOOKS_KEY) is None  # nothing written when refused
    ok(w.cli("hooks", "set", str(cfg), "--key", w.key("admin"), **admin))
    assert _new_problems(w) == []
    assert _registry_marks(w)["hooks.set"] == "verified"
    # a raw write of the config (no event): reported
    now = w.store.read_versioned(HOOKS_KEY)
    assert now is not None
    w.store.swap(HOOKS_KEY, b"# replaced by a bucket writer\n", now.token)
    assert any("written without a hooks.set event" in p for p in _new_problems(w))
    # an unsigned hooks.set through the internals, naming the new config: reported too
    from casreg.digest import Digest
    from casreg.ledger.events import record_event

    record_event(w.store, name="_registry", kind="hooks.set",
                 details={"digest": Digest.of(b"# replaced by a bucket writer\n"), "previous": None, "hooks": []})
    problems = _new_problems(w)
    assert any("hooks config in force" in p and "unsigned" in p for p in problems), problems


def test_delete_and_retain_are_signed(world: World, tmp_path: Path) -> None:
    w = world
    for seed in (3, 4, 5):
        w.act_as(EMAIL["carol"])
        w.reg.push("m", str(_weights(tmp_path, seed)))
    fails(w.cli("delete", "m:3", "--reason", "pii", CASREG_USER=EMAIL["carol"]), 8, "needs a signed event")
    ok(w.cli("delete", "m:3", "--reason", "pii", "--key", w.key("carol"), CASREG_USER=EMAIL["carol"]))
    deletion = next(e for e in w.reg.log("m") if e.kind == "delete")
    assert w.log_marks()[deletion.event_id] == "verified"
    assert _new_problems(w) == []
    # retain signs each deletion with one key, checked before anything is deleted
    w.act_as(EMAIL["carol"])
    with pytest.raises(PolicyError, match="needs a signed event"):
        w.reg.retain("m", keep_last=2)
    plan = w.reg.retain("m", keep_last=2, key=w.key("carol"))
    assert [d.version.version for d in plan.deleted] == [2]
    assert _new_problems(w) == []
    # a tombstone written through the internals, unsigned: reported
    from casreg.ledger.tombstones import deletion_event, record_deletion

    v5 = w.reg.show("m:5")
    record_deletion(w.store, deletion_event("m", 5, v5.digest, "forged"))
    problems = _new_problems(w)
    assert len(problems) == 1 and "deletion of m:5" in problems[0] and "unsigned" in problems[0]


def test_gc_retain_signs_its_deletions_with_key(world: World, tmp_path: Path) -> None:
    w = world
    (w.tmp / "p.toml").write_text(base.policy_text(w.keys) + "\n[retention]\nkeep_last = 2\n")
    w.act_as(EMAIL["admin"])
    w.reg.set_policy((w.tmp / "p.toml").read_text(), key=w.key("admin"))
    for seed in (3, 4):
        w.act_as(EMAIL["carol"])
        w.reg.push("m", str(_weights(tmp_path, seed)))
    carol = {"CASREG_USER": EMAIL["carol"]}
    fails(w.cli("gc", "--key", w.key("carol"), **carol), 2, "--retain")
    fails(w.cli("gc", "--retain", **carol), 8, "needs a signed event")
    assert not list(w.store.list("tombstones"))  # refused before anything is deleted
    ok(w.cli("gc", "--retain", "--key", w.key("carol"), **carol))
    deletions = [e for e in w.reg.log("m") if e.kind == "delete"]
    assert [e.to_version for e in deletions] == [2]  # m:1 is at production, m:3 and m:4 are the last 2
    assert all(w.log_marks()[e.event_id] == "verified" for e in deletions)
    assert _new_problems(w) == []


def test_policy_restore_needs_a_pinned_admin_key(world: World) -> None:
    w = world
    text = base.policy_text(w.keys)
    w.store.delete(policy_key(1))  # the policy file is damaged: only the restore is accepted
    (w.tmp / "p.toml").write_text(text)
    admin = {"CASREG_USER": EMAIL["admin"]}
    fails(w.cli("policy", "set", str(w.tmp / "p.toml"), **admin), 8, "pinned admin key")
    ok(w.cli("policy", "set", str(w.tmp / "p.toml"), "--key", w.key("admin"), **admin))
    assert w.reg.policy() is not None
    assert _registry_marks(w)["policy.restore"] == "verified"
    assert _new_problems(w) == []
    # an unsigned restore written past the client: reported
    from casreg.ledger.events import record_event

    pin = w.reg.policy()
    assert pin is not None
    forged = record_event(w.store, name="_registry", kind="policy.restore",
                          details={"policy_version": pin.version, "digest": pin.digest, "pinned_by": "x"})
    problems = _new_problems(w)
    assert len(problems) == 1 and "policy restore" in problems[0] and forged.event_id in problems[0], problems


def test_hooks_set_without_a_root_needs_a_key_allowed_to_change_the_policy(world: World) -> None:
    w = world
    w.monkeypatch.delenv("CASREG_TRUSTED_KEYS")
    cfg = w.tmp / "hooks.toml"
    cfg.write_text("# no hooks yet\n")
    # alice is in [keys] but holds no role allowed to change the policy (only admin does)
    fails(w.cli("hooks", "set", str(cfg), "--key", w.key("alice"), CASREG_USER=EMAIL["admin"]), 8,
          "holds none of the roles")
    fails(w.cli("hooks", "set", str(cfg), CASREG_USER=EMAIL["admin"]), 8, "needs a signed event")


def test_imported_moves_are_unsigned_history(world: World, tmp_path: Path) -> None:
    from casreg.governance.imports import import_move

    w = world
    w.act_as(EMAIL["carol"])
    w.reg.push("n", str(_weights(tmp_path, 7)))
    w.act_as(EMAIL["alice"])
    when = datetime.now(UTC) - timedelta(seconds=1)
    import_move(w.store, "n", "production", 1, notify=lambda _e: None, time=when,
                origin={"system": "mlflow", "stage": "Production"}, bypass_gates=True)
    problems = _new_problems(w)
    assert len(problems) == 1 and "n@production" in problems[0] and "imported move" in problems[0]
    # superseded by a signed promotion (with its signed approvals): the import is history, not reported
    for who in ("alice", "bob"):
        w.act_as(EMAIL[who])
        w.reg.approve("n", 1, stage="production", key=w.key(who))
    w.act_as(EMAIL["alice"])
    w.reg.set_alias("n", "production", 1, key=w.key("alice"))
    assert _new_problems(w) == []


def _unsigned(report: object) -> list[str]:
    return [f"{p.key}: {p.reason}" for p in report.problems if p.kind == "unsigned"]  # type: ignore[attr-defined]


def test_verify_ref_runs_the_signing_checks_of_that_version(world: World) -> None:
    w = world
    _promote_signed(w)
    assert _unsigned(w.reg.verify("m:2")) == []
    # one of m:2's approval signatures damaged: verify m:2 names it, verify m:1 does not
    approval = next(e for e in w.reg.log("m") if e.kind == "approve")
    key = next(k for k in w.store.list(f"signatures/events/{approval.event_id}/"))
    doc = w.store.read(key)
    w.store.delete(key)
    w.store.create(key, doc.replace(b'"payload": "', b'"payload": "e30', 1))
    problems = _unsigned(w.reg.verify("m:2"))
    assert any(approval.event_id in p and "Incorrect padding" in p for p in problems), problems
    assert any("points at m:2, which has 1 signed approval(s)" in p for p in problems), problems
    assert _unsigned(w.reg.verify("m:1")) == []
    # the pointer moved back to m:1 through the internals, unsigned: verify m:1 reports the move
    from casreg.ledger.pointers import move_alias

    v1 = w.reg.show("m:1")
    move_alias(w.store, "m", "production", (v1.digest, 1))
    moved = _unsigned(w.reg.verify("m:1"))
    assert any("no valid signed event explains m@production" in p for p in moved), moved
    out = w.cli("verify", "m:1")
    assert out.returncode != 0 and "m@production" in out.stdout + out.stderr


MOVES_WITHOUT_SIGNATURE = """
SELECT e.time, e.name, e.alias, e.kind, e.to_version, e.author, e.event_id
FROM events e
WHERE e.kind IN ('promote', 'alias.set', 'alias.remove', 'rollback')
  AND e.event_id NOT IN (SELECT event_id FROM event_signatures)
ORDER BY e.time
"""


LAST_MOVES = """
SELECT a.name, a.alias, a.version, h.kind, h.author, h.event_id,
       count(s.key) AS signatures
FROM aliases a
JOIN alias_history h ON h.name = a.name AND h.alias = a.alias AND h.to_time IS NULL
LEFT JOIN event_signatures s ON s.event_id = h.event_id
GROUP BY ALL
ORDER BY a.name, a.alias
"""


def test_sql_event_signatures_and_moves_without_a_signature(world: World) -> None:
    from casreg.governance.event_signing import list_event_signatures

    w = world
    _promote_signed(w)
    rows = w.reg.sql("SELECT event_id, fingerprint, key FROM event_signatures ORDER BY key")
    listed = sorted(k for ks in list_event_signatures(w.store).values() for k in ks)
    assert [r["key"] for r in rows] == listed and len(rows) == 4  # 2 approvals, the promotion, the policy
    assert all(r["key"] == f"signatures/events/{r['event_id']}/{r['fingerprint']}.json" for r in rows)
    unsigned = w.reg.sql(MOVES_WITHOUT_SIGNATURE)
    assert [(r["kind"], r["to_version"]) for r in unsigned] == [("promote", 1)]  # m:1's, before the policy
    out = ok(w.cli("sql", "--json", MOVES_WITHOUT_SIGNATURE)).stdout
    assert unsigned[0]["event_id"] in out
    last = w.reg.sql(LAST_MOVES)
    assert [(r["alias"], r["version"], r["kind"], r["signatures"]) for r in last] == [("production", 2, "promote", 1)]


def test_gc_collects_the_signatures_of_deleted_versions(store: ObjectStore, keys: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from casreg import Registry
    from casreg.keys import signatures_prefix

    monkeypatch.delenv("CASREG_SIGNING_KEY", raising=False)
    monkeypatch.delenv("CASREG_TRUSTED_KEYS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    reg = Registry(store.url)
    gone = reg.push("m", str(_weights(tmp_path, 11)))
    kept = reg.push("m", str(_weights(tmp_path, 12)))
    shared = reg.push("twin", str(tmp_path / "w12.bin"))  # the same bytes as m:2: the same digest
    assert shared.digest == kept.digest
    for v in (gone, kept):
        reg.sign(v.ref, keys["carol"])
    reg.set_alias("m", "champion", 1, key=keys["alice"])  # an event signature (no policy: opt-in)
    reg.remove_alias("m", "champion", key=keys["alice"])
    events_before = sorted(store.list("signatures/events/"))
    assert len(events_before) == 2
    reg.delete("m", 1, reason="leak")
    reg.delete("m", 2, reason="dup")  # its digest stays live as twin:1
    mark = reg.gc(grace=0, delay=0)
    assert any(o.key.startswith(signatures_prefix(gone.digest)) for o in mark.condemned)
    assert not any(o.key.startswith(signatures_prefix(kept.digest)) for o in mark.condemned)
    assert list(store.list(signatures_prefix(gone.digest)))  # condemned, not deleted: the sweep is later
    reg.gc(grace=0, delay=0)
    assert list(store.list(signatures_prefix(gone.digest))) == []
    assert len(list(store.list(signatures_prefix(kept.digest)))) == 1
    assert sorted(store.list("signatures/events/")) == events_before  # events are never deleted, nor their signatures
    assert [c.status for c in reg.signatures("twin:1", str(keys["carol"]) + ".pub")] == ["verified"]  # still signed
