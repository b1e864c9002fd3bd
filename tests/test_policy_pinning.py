"""The policy in force is the one the latest ``policy.set`` event pins, by digest.

A policy file is an object a bucket writer can edit, empty or delete; the ``policy.set``
event that pinned it is an immutable ledger segment. On a local directory and on S3 (the
real SeaweedFS): every damage to the pinned file makes everything the policy governs
fail closed in one line naming the key (exit 6), ``policy show`` says it is damaged,
``verify`` names it, and ``policy set`` with the pinned file restores the gate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from inprocess_cli import Run, fails, ok

from casreg import IntegrityError, Registry
from casreg.digest import Digest
from casreg.keys import REGISTRY_EVENTS, policy_key
from casreg.ledger.pins import latest_pin
from casreg.ledger.segments import events_table
from casreg.storage import ObjectStore

KEY = policy_key(1)  # policy/versions/000001.toml
POLICY = ('[gates.production]\napprovals = 2\n\n[permissions]\npolicy = ["admin"]\n\n'
          '[roles]\nadmin = ["tester@example.test"]\n')






@pytest.fixture
def gated(shared_url: str, tmp_path: Path, cli: Run) -> tuple[Registry, Path]:
    """m:1 and m:2, m@staging moved twice, and policy version 1 (production needs two
    approvals; only admins change the policy) set through the CLI."""
    for i in (1, 2):
        src = tmp_path / f"v{i}.bin"
        src.write_bytes(os.urandom(2000 + i))
        ok(cli("push", "m", str(src)))
    ok(cli("alias", "set", "m@staging", "1"))
    ok(cli("alias", "set", "m@staging", "2"))
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    ok(cli("policy", "set", str(policy)))
    return Registry(shared_url), policy


def overwrite(store: ObjectStore, key: str, data: bytes) -> None:
    current = store.read_versioned(key)
    assert current is not None
    store.swap(key, data, current.token)


DAMAGE: dict[str, tuple[Callable[[ObjectStore], None], str]] = {
    "gate-lowered": (lambda s: overwrite(s, KEY, POLICY.replace("approvals = 2", "approvals = 0").encode()),
                     "was altered (its digest is blake3:"),
    "gate-removed": (lambda s: overwrite(s, KEY, b"[push]\n"), "was altered"),
    "emptied": (lambda s: overwrite(s, KEY, b""), "is empty"),
    "deleted": (lambda s: s.delete(KEY), "is missing"),
    "not-toml": (lambda s: overwrite(s, KEY, b"\xff\xfe[[[" * 10), "was altered"),
}


# the lowered gate (the attack this file is about) runs through the real executable, end to
# end (its exit codes, one-line errors, no traceback); the other damages in this process
@pytest.mark.parametrize(("damage", "executable"), [
    pytest.param(d, d == "gate-lowered", id=f"{d}-executable" if d == "gate-lowered" else d) for d in DAMAGE])
def test_a_damaged_policy_fails_every_governed_action_closed(damage: str, gated: tuple[Registry, Path], cli: Run,
                                                               tmp_path: Path) -> None:
    reg, policy = gated
    pinned = str(Digest.of(POLICY.encode()))
    hurt, says = DAMAGE[damage]
    hurt(reg.store)
    what = (KEY, says, f"pins policy version 1 as {pinned}")

    fails(cli("promote", "m", "2", "production"), 6, *what)
    fails(cli("promote", "m", "2", "production", "--dry-run"), 6, *what)
    fails(cli("alias", "set", "m@production", "2"), 6, *what)
    fails(cli("approve", "m", "2", "--stage", "production"), 6, *what)
    fails(cli("reject", "m", "2", "--stage", "production"), 6, *what)
    fails(cli("archive", "m", "1"), 6, *what)
    fails(cli("rollback", "m@staging"), 6, *what)
    fails(cli("alias", "rm", "m@staging"), 6, *what)
    src = tmp_path / "v3.bin"
    src.write_bytes(os.urandom(3000))
    fails(cli("push", "m", str(src)), 6, *what)
    looser = tmp_path / "looser.toml"
    looser.write_text("[gates.production]\napprovals = 0\n")
    fails(cli("policy", "set", str(looser)), 6, *what)
    hooks = tmp_path / "hooks.toml"
    hooks.write_text('[[hooks]]\nname = "h"\nurl = "https://example.test/hook"\n')
    fails(cli("hooks", "set", str(hooks)), 6, *what)
    fails(cli("policy", "show"), 6, *what)  # never prints the altered text
    fails(cli("policy", "show", "--json"), 6, *what, as_json=True)
    v = cli("verify")
    assert v.returncode == 6 and "Traceback" not in v.stderr, v.stderr
    kind = "missing" if damage == "deleted" else "corrupt"
    assert f"{kind} {KEY}: " in v.stderr, v.stderr
    assert reg.resolve("m@staging").version == 2  # nothing moved
    assert reg.ls("m")[-1].version == 2  # nothing pushed
    assert not reg.store.exists(policy_key(2))  # no looser policy stored

    # restoring the pinned file (whoever has it: its digest is what the ledger pins) brings the gate back
    ok(cli("policy", "set", str(policy)))
    assert reg.store.read(KEY) == POLICY.encode()
    fails(cli("promote", "m", "2", "production"), 8, "refused by policy version 1", "approvals >= 2")
    assert "all good" in ok(cli("verify")).stdout
    kinds = [e["kind"] for e in events_table(reg.store, name=REGISTRY_EVENTS).to_pylist()]
    assert kinds == ["policy.set", "policy.restore"]
    # the restored policy governs again: its admin may replace it, and then version 2 is in force
    fails(cli("policy", "set", str(looser), CASREG_USER="intruder@example.test"), 8, "holds none of the roles")
    ok(cli("policy", "set", str(looser)))
    ok(cli("promote", "m", "2", "production"))


def test_only_the_pinned_file_restores_it(gated: tuple[Registry, Path], cli: Run, tmp_path: Path) -> None:
    reg, _ = gated
    overwrite(reg.store, KEY, b"[push]\n")
    other = tmp_path / "other.toml"
    other.write_text(POLICY + "\n# an innocent comment\n")
    line = fails(cli("policy", "set", str(other)), 6, KEY, "was altered",
                 f"(the policy given has digest {Digest.of(other.read_bytes())})")
    assert "is in force" not in line
    assert reg.store.read(KEY) == b"[push]\n"


def test_a_policy_file_no_event_pins_fails_closed_until_the_policy_is_set_again(
        gated: tuple[Registry, Path], cli: Run, tmp_path: Path) -> None:
    """Writing policy/versions/000002.toml directly, a policy set cut between its two
    writes, or deleting the policy.set event that pinned version 2 all leave a stored
    version newer than the latest pin. It is never in force, and the older pin is not
    either (a deleted event must not bring an older policy, or none, back): governed
    actions fail closed until an admin, as the latest pinned policy allows, sets it again."""
    reg, _ = gated
    assert reg.store.create(policy_key(2), b"[gates.production]\napprovals = 0\n")
    fails(cli("promote", "m", "2", "production"), 6, policy_key(2), "no event pins it")
    fails(cli("policy", "show"), 6, policy_key(2), "no event pins it")
    fails(cli("policy", "show", "--version", "2"), 6, policy_key(2), "not pinned by any policy.set event")
    v = cli("verify")
    assert v.returncode == 6 and policy_key(2) in v.stdout + v.stderr, (v.stdout, v.stderr)
    again = tmp_path / "again.toml"
    again.write_text(POLICY)
    fails(cli("policy", "set", str(again), CASREG_USER="intruder@example.test"), 8, "holds none of the roles")
    ok(cli("policy", "set", str(again)))
    assert "# policy version 3" in ok(cli("policy", "show")).stdout
    fails(cli("promote", "m", "2", "production"), 8, "refused by policy version 3")


def test_deleting_the_latest_policy_set_event_fails_closed(gated: tuple[Registry, Path], cli: Run,
                                                           tmp_path: Path) -> None:
    """The first policy.set deleted: without the unpinned-file rule the registry would have
    no policy at all, and every gate would be gone."""
    reg, _ = gated
    events = [k for k in reg.store.list("ledger/events/_registry") if k.endswith(".parquet")]
    assert len(events) == 1
    reg.store.delete(events[0])
    fails(cli("promote", "m", "2", "production"), 6, policy_key(1), "no event pins it")


def test_an_older_pinned_version_is_checked_against_its_own_event(gated: tuple[Registry, Path], cli: Run,
                                                                   tmp_path: Path) -> None:
    reg, _ = gated
    newer = tmp_path / "newer.toml"
    newer.write_text(POLICY.replace("approvals = 2", "approvals = 1"))
    ok(cli("policy", "set", str(newer)))
    overwrite(reg.store, KEY, b"[push]\n")  # version 1 is no longer in force, but it is history
    assert "# policy version 2" in ok(cli("policy", "show")).stdout
    fails(cli("policy", "show", "--version", "1"), 6, KEY, "its policy.set event", "was altered")
    v = cli("verify")
    assert v.returncode == 6 and f"corrupt {KEY}: " in v.stderr


def test_a_damaged_policy_set_event_fails_closed(gated: tuple[Registry, Path], cli: Run) -> None:
    reg, _ = gated
    pin = latest_pin(reg.store)
    assert pin is not None
    overwrite(reg.store, pin.event_key, b"PAR1 not a parquet file PAR1")
    fails(cli("promote", "m", "2", "production"), 6, pin.event_key, "the policy in force cannot be known")
    fails(cli("policy", "show"), 6, pin.event_key)
    v = cli("verify")
    assert v.returncode == 6 and f"corrupt {pin.event_key}: " in v.stderr, v.stderr


def test_a_registry_that_never_had_a_policy_has_no_gates(shared_url: str, tmp_path: Path, cli: Run) -> None:
    src = tmp_path / "v.bin"
    src.write_bytes(os.urandom(1000))
    ok(cli("push", "m", str(src), "--alias", "production"))
    ok(cli("approve", "m", "1", "--stage", "production"))
    assert "no policy" in ok(cli("policy", "show")).stdout
    assert Registry(shared_url).policy() is None


def test_library_callers_get_the_pin(gated: tuple[Registry, Path]) -> None:
    from casreg.ledger.pins import DamagedPolicyError

    reg, _ = gated
    reg.store.delete(KEY)
    with pytest.raises(DamagedPolicyError) as caught:
        reg.policy()
    assert caught.value.pin.version == 1 and caught.value.pin.digest == Digest.of(POLICY.encode())
    assert isinstance(caught.value, IntegrityError) and caught.value.exit_code == 6
