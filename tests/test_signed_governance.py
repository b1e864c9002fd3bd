"""Signed governance events and a pinned trust root (docs/signing.md, docs/security.md).

The routes past a 2-approval production gate that issue 15 found (a spoofed CASREG_USER,
case-variant approvers, self-approval, pointer writes through library internals and the
raw store, a replaced or unsigned policy, a rollback to a version that predates the
policy), each on a local directory and on S3 (the real SeaweedFS), with a policy signed
by an admin key that the reader pins: each is refused, or detected by ``verify``, flagged
by ``log`` and refused by ``pull --require-signed-by``. A signed approval verifies; one
byte changed in an event signature object is detected; without keys nothing changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from inprocess_cli import fails, ok, run_cli, run_executable

from casreg import Registry
from casreg.errors import IntegrityError, PolicyError
from casreg.governance.event_signing import EVENT_PAYLOAD_TYPE, claims, list_event_signatures
from casreg.keys import (
    event_signature_key,
    event_signatures_prefix,
    parse_event_signature_key,
    parse_signature_key,
    pointer_key,
)
from casreg.storage import ObjectStore

PEOPLE = ("admin", "alice", "bob", "carol", "mallory")
EMAIL = {p: f"{p}@example.test" for p in PEOPLE}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Private key files (public ones beside them, ``.pub``), made once for the module."""
    from casreg.governance.signatures import generate_keypair

    d = tmp_path_factory.mktemp("keys")
    for who in PEOPLE:
        generate_keypair(d / f"{who}.pem")
    return {who: d / f"{who}.pem" for who in PEOPLE}


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """Local and S3 (this module's routes; conftest's ``store`` follows this)."""
    return request.param


def _pem(keys: dict[str, Path], who: str) -> str:
    return Path(f"{keys[who]}.pub").read_text()


def policy_text(keys: dict[str, Path], *, approvals: int = 2) -> str:
    """Release engineers alice, bob and carol (each a key), admin sets the policy;
    production needs ``approvals`` signed approvals, not the pusher's."""
    entries = "".join(f'"{EMAIL[w]}" = """{_pem(keys, w)}"""\n' for w in ("alice", "bob", "carol"))
    return (f'[roles]\nadmin = ["{EMAIL["admin"]}"]\nrelease = ["{EMAIL["alice"]}", "{EMAIL["bob"]}", '
            f'"{EMAIL["carol"]}"]\n\n[permissions]\npolicy = ["admin"]\napprove = ["release"]\n'
            f'promote = {{ production = ["release"], "*" = ["*"] }}\n\n'
            f'[gates.production]\napprovals = {approvals}\nself_approval = false\n\n[keys]\n{entries}')


@dataclass
class World:
    reg: Registry
    store: ObjectStore
    keys: dict[str, Path]
    tmp: Path
    act_as: Callable[[str], None]
    monkeypatch: pytest.MonkeyPatch

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = dict(os.environ, CASREG_REGISTRY=self.store.url, NO_COLOR="1", COLUMNS="250")
        return run_cli(list(args), dict(base, **env), self.tmp)

    def key(self, who: str) -> str:
        return str(self.keys[who])

    def approve(self, who: str, version: int, *, key: str | None = None, user: str | None = None) -> None:
        self.act_as(user or EMAIL[who])
        self.reg.approve("m", version, stage="production", key=key or self.key(who))

    def verify_problems(self) -> list[str]:
        """What ``verify`` adds about signed events (the rest of verify, re-hashing every
        object, is run once, in the pointer test)."""
        return [f"unsigned {key}: {why}" for key, why in self.reg.signing_audit().problems]

    def log_marks(self) -> dict[str, str]:
        """What ``log m --json`` says of each signable event (the library call behind it; the
        CLI's rendering is checked once per test where it matters)."""
        return {eid: c.status for eid, c in self.reg.event_signatures(self.reg.log("m")).items()}


def _weights(tmp: Path, seed: int) -> Path:
    p = tmp / f"w{seed}.bin"
    p.write_bytes(bytes([seed]) * 5000 + os.urandom(64))
    return p


@pytest.fixture
def world(store: ObjectStore, keys: dict[str, Path], tmp_path: Path, author: Callable[[str], None],
          monkeypatch: pytest.MonkeyPatch) -> World:
    """m:1 pushed and put in production before any policy; then a policy signed by the
    pinned admin key; m:2 pushed and signed by carol."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no trust file but the test's own
    monkeypatch.delenv("CASREG_SIGNING_KEY", raising=False)
    monkeypatch.delenv("CASREG_TRUSTED_KEYS", raising=False)
    reg = Registry(store.url)
    author(EMAIL["carol"])
    reg.push("m", str(_weights(tmp_path, 1)))
    reg.promote("m", 1, "production")  # no policy yet: m:1 predates it
    author(EMAIL["admin"])
    monkeypatch.setenv("CASREG_TRUSTED_KEYS", f"{keys['admin']}.pub")
    reg.set_policy(policy_text(keys), key=keys["admin"])
    author(EMAIL["carol"])
    reg.push("m", str(_weights(tmp_path, 2)))
    reg.sign("m:2", keys["carol"])
    return World(reg, store, keys, tmp_path, author, monkeypatch)


def _promote_signed(w: World) -> None:
    w.approve("alice", 2)
    w.approve("bob", 2)
    w.act_as(EMAIL["alice"])
    w.reg.promote("m", 2, "production", key=w.key("alice"))


# -- the good path ------------------------------------------------------------------------------------
def test_signed_approvals_open_the_gate_and_everything_verifies(world: World) -> None:
    w = world
    with pytest.raises(PolicyError, match="0 approval"):
        w.act_as(EMAIL["alice"])
        w.reg.promote("m", 2, "production", key=w.key("alice"))
    _promote_signed(w)
    assert w.reg.resolve("m@production").version == 2
    # m:1 was put in production before the policy: verify names nothing but the move that is now signed
    assert w.verify_problems() == []
    logged = json.loads(ok(w.cli("log", "m", "--json")).stdout)
    marks = {e["event_id"]: e["signature"]["status"] for e in logged if "signature" in e}
    assert marks == w.log_marks()
    # two approvals, the promotion and the admin's policy.set (checked with the pinned key)
    assert sorted(marks.values()) == ["unsigned", "verified", "verified", "verified", "verified"]  # +m:1's move
    resolved = json.loads(ok(w.cli("resolve", "m@production", "--json")).stdout)
    assert resolved["signed"] is True and resolved["trusted"] is True
    assert resolved["last_move"]["signature"]["signer"] == EMAIL["alice"]
    ok(w.cli("pull", "m@production", "out/", "--require-signed-by", "release"))
    table = ok(w.cli("log", "m")).stdout
    assert f"yes ({EMAIL['alice']})" in table and "signed" in table.splitlines()[0]
    # the signature object is a DSSE envelope over the event's canonical claims
    promo = w.reg.move_signature("m", "production")
    assert promo is not None and promo.check.key is not None
    envelope = json.loads(w.store.read(promo.check.key))
    assert envelope["payloadType"] == EVENT_PAYLOAD_TYPE
    assert parse_event_signature_key(promo.check.key) == (promo.event.event_id, envelope["signatures"][0]["keyid"])


# -- routes past the gate -------------------------------------------------------------------------------
def test_spoofed_user_and_case_variant_approvers_do_not_count(world: World) -> None:
    w = world
    # CASREG_USER says alice, but no key: refused in one line, exit 8
    fails(w.cli("approve", "m", "2", "--stage", "production", CASREG_USER=EMAIL["alice"]), 8, "needs a signed event")
    # a key no [keys] entry names (mallory's), claiming to be alice: refused
    fails(w.cli("approve", "m", "2", "--key", w.key("mallory"), CASREG_USER=EMAIL["alice"]), 8, "is not in the [keys]")
    # bob twice, as BOB@ and Bob@: one person, one approval
    w.approve("bob", 2, user="BOB@example.test")
    w.approve("bob", 2, user="Bob@example.test")
    w.act_as(EMAIL["alice"])
    with pytest.raises(PolicyError, match=r"1 approval\(s\) \(bob@example.test\)"):
        w.reg.promote("m", 2, "production", key=w.key("alice"))
    # an approval forged into the ledger through the library internals, unsigned: not counted
    from casreg.ledger.events import record_event

    w.act_as(EMAIL["alice"])
    v2 = w.reg.show("m:2")
    forged = record_event(w.store, name="m", kind="approve", alias="production", to=(v2.digest, 2))
    with pytest.raises(PolicyError, match=r"1 approval\(s\)"):
        w.reg.promote("m", 2, "production", key=w.key("alice"))
    assert w.log_marks()[forged.event_id] == "unsigned"
    assert "NO" in ok(w.cli("log", "m", "--kind", "approve")).stdout
    # bob's signature copied onto the forged approval: made for another event
    bob_sig = next(k for eid, ks in list_event_signatures(w.store).items() for k in ks
                   if eid != forged.event_id and "approve" in json.dumps(claims_of(w, eid)))
    fp = parse_event_signature_key(bob_sig)[1]  # type: ignore[index]
    w.store.create(event_signature_key(forged.event_id, fp), w.store.read(bob_sig))
    assert w.log_marks()[forged.event_id] == "invalid"
    assert any("made for another event" in p for p in w.verify_problems())


def claims_of(w: World, event_id: str) -> dict[str, object]:
    for e in w.reg.log("m"):
        if e.event_id == event_id:
            return claims(e, None)
    return {}


def test_self_approval_is_judged_by_key(world: World) -> None:
    w = world
    # carol pushed and signed m:2: her approval is refused, whatever name she uses
    w.act_as("someone-else@example.test")
    with pytest.raises(PolicyError, match="does not let a pusher approve"):
        w.reg.approve("m", 2, stage="production", key=w.key("carol"))
    # written anyway through the internals (signed by her key): the gate does not count it
    from casreg.governance.event_signing import load_signer, sign_event
    from casreg.ledger.events import record_event

    signer = load_signer(w.keys["carol"])
    assert signer is not None
    v2 = w.reg.show("m:2")
    record_event(w.store, name="m", kind="approve", alias="production", to=(v2.digest, 2),
                 before=lambda e: None if sign_event(w.store, e, signer) else None)
    w.approve("alice", 2)
    w.act_as(EMAIL["alice"])
    with pytest.raises(PolicyError, match=r"1 approval\(s\) \(alice@example.test\)"):
        w.reg.promote("m", 2, "production", key=w.key("alice"))


def test_pointer_writes_through_internals_and_the_raw_store_are_detected(world: World) -> None:
    w = world
    from casreg.ledger.pointers import move_alias

    key = pointer_key("m", "production")
    # m:1 was put in production before the policy: no signed event explains it
    assert any(p.startswith(f"unsigned {key}: no valid signed event explains m@production") for p in
               w.verify_problems())
    _promote_signed(w)
    assert w.verify_problems() == []
    v1, v2 = w.reg.show("m:1"), w.reg.show("m:2")
    w.reg.sign("m:1", w.keys["carol"])  # its bytes are signed: what pull refuses below is the move
    move_alias(w.store, "m", "production", (v1.digest, 1), kind="rollback")  # no gate, no signature
    assert any(p.startswith(f"unsigned {key}: no valid signed event explains m@production") for p in
               w.verify_problems())
    verified = w.cli("verify")
    assert verified.returncode == 6 and "no valid signed event explains m@production" in verified.stderr
    assert verified.stderr.splitlines()[-1].startswith("casreg: error: verify found")
    fails(w.cli("pull", "m@production", "out/", "--require-signed-by", "release"), 8, "m@production",
          "no valid signed event explains it")
    assert json.loads(ok(w.cli("resolve", "m@production", "--json")).stdout)["signed"] is False
    assert "unsigned" in w.log_marks().values()
    # the raw store: the pointer's bytes replaced by a promotion of m:1 that claims to be alice's
    current = json.loads(w.store.read(key))
    forged = dict(current, event_id="f" * 32, to_version=1, to_digest=str(v1.digest), from_version=2,
                  from_digest=str(v2.digest), author=EMAIL["alice"], kind="promote", details=None,
                  time=datetime.now(UTC).isoformat())
    versioned = w.store.read_versioned(key)
    assert versioned is not None
    w.store.swap(key, json.dumps(forged).encode(), versioned.token)
    problems = w.verify_problems()
    assert any("no valid signed event explains m@production" in p for p in problems), problems
    fails(w.cli("pull", "m@production", "out2/", "--require-signed-by", "release"), 8, "no valid signed event")
    # audit question 7 (docs/audit.md, as written) lists the move only the pointer records
    rows = w.reg.sql(audit_question(7))
    assert [(r["name"], r["version"], r["recorded"], r["approvals"]) for r in rows][-1] == ("m", 1, "pointer only", 0)
    # the signature of the real promotion, copied to the forged event id: made for another event
    real = w.reg.log("m", kinds=["promote"])[-2]
    fp = next(parse_event_signature_key(k)[1] for k in w.store.list(event_signatures_prefix(real.event_id or ""))
              if parse_event_signature_key(k) is not None)
    w.store.create(event_signature_key("f" * 32, fp), w.store.read(event_signature_key(real.event_id or "", fp)))
    problems = w.verify_problems()
    assert any("made for another event" in p for p in problems), problems
    fails(w.cli("pull", "m@production", "out3/", "--require-signed-by", "release"), 6, "made for another event")


def test_a_replaced_or_unsigned_policy_cannot_relax_the_rules(world: World) -> None:
    w = world
    w.act_as(EMAIL["admin"])
    relaxed = policy_text(w.keys, approvals=0)
    # where the root is pinned, the client refuses an unsigned policy, or one signed by a non-admin key
    with pytest.raises(PolicyError, match="trust root is pinned"):
        w.reg.set_policy(relaxed)
    fails(w.cli("policy", "set", str(_write(w.tmp, "p.toml", relaxed)), "--key", w.key("alice"),
                CASREG_USER=EMAIL["admin"]), 8, "not one of its keys")
    # a writer without the root pinned (or with no casreg at all) sets it anyway: CASREG_USER is the admin's
    w.monkeypatch.delenv("CASREG_TRUSTED_KEYS")
    w.reg.set_policy(relaxed, key=w.keys["alice"])
    w.monkeypatch.setenv("CASREG_TRUSTED_KEYS", f"{w.keys['admin']}.pub")
    w.act_as(EMAIL["alice"])
    with pytest.raises(IntegrityError, match="policy version 2 .* is signed by no pinned key: it is not trusted"):
        w.reg.promote("m", 2, "production", key=w.key("alice"))
    fails(w.cli("promote", "m", "2", "production", "--key", w.key("alice"), CASREG_USER=EMAIL["alice"]), 6,
          "not trusted")
    fails(w.cli("pull", "m:2", "out/", "--require-signed-by", "release"), 6, "not trusted")
    assert any("policy version 2" in p and "not trusted" in p for p in w.verify_problems())
    # a pull that names a key file does not rely on the policy
    ok(w.cli("pull", "m:2", "out/", "--require-signed-by", f"{w.keys['carol']}.pub"))
    # the admin signs a policy again: trusted again
    w.act_as(EMAIL["admin"])
    w.reg.set_policy(policy_text(w.keys), key=w.keys["admin"])
    assert not any("not trusted" in p for p in w.verify_problems())


def audit_question(n: int) -> str:
    """The SQL of question ``n`` of docs/audit.md, as tests/test_audit.py reads it."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "audit.md").read_text()
    found = re.findall(r"^## (\d+)\. (.+?)\n.*?```sql\n(.*?)```", text, flags=re.S | re.M)
    return {int(k): sql for k, _title, sql in found}[n]


def _write(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


def test_a_rollback_to_a_version_that_predates_the_policy_is_refused(world: World) -> None:
    w = world
    _promote_signed(w)  # production: m:1 (before the policy) -> m:2
    w.act_as(EMAIL["alice"])
    with pytest.raises(PolicyError, match=r"back to m:1 refused .* 0 signed approval\(s\)"):
        w.reg.rollback("m", "production", key=w.key("alice"))
    fails(w.cli("rollback", "m@production", CASREG_USER=EMAIL["alice"]), 8, "needs a signed event")
    # approved by two keys, the rollback goes through, signed with the key CASREG_SIGNING_KEY names
    w.approve("alice", 1)
    w.approve("bob", 1)
    rolled = json.loads(ok(w.cli("rollback", "m@production", "--json", CASREG_USER=EMAIL["alice"],
                                 CASREG_SIGNING_KEY=w.key("alice"))).stdout)
    assert w.reg.resolve("m@production").version == 1 and w.verify_problems() == []
    assert w.log_marks()[rolled["event_id"]] == "verified"


def test_one_changed_byte_of_an_event_signature_is_detected(world: World) -> None:
    w = world
    _promote_signed(w)
    move = w.reg.move_signature("m", "production")
    assert move is not None and move.check.key is not None
    data = bytearray(w.store.read(move.check.key))
    at = data.index(b'"sig": "') + 12
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    w.store.delete(move.check.key)
    w.store.create(move.check.key, bytes(data))
    problems = w.verify_problems()
    assert any(move.check.key in p and "does not verify" in p for p in problems), problems
    assert w.log_marks()[move.event.event_id] == "invalid"
    assert "BAD" in ok(w.cli("log", "m", "--kind", "promote")).stdout
    fails(w.cli("pull", "m@production", "out/", "--require-signed-by", "release"), 6, "BADLY SIGNED")
    assert json.loads(ok(w.cli("resolve", "m@production", "--json")).stdout)["signed"] is False


# -- without keys: as before --------------------------------------------------------------------------
def test_without_keys_nothing_changes_and_verify_says_signing_is_opt_in(store: ObjectStore, tmp_path: Path,
                                                                      author: Callable[[str], None],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CASREG_SIGNING_KEY", raising=False)
    monkeypatch.delenv("CASREG_TRUSTED_KEYS", raising=False)
    author("a@example.test")
    reg = Registry(store.url)
    reg.set_policy("[gates.production]\napprovals = 1\n")
    reg.push("m", str(_weights(tmp_path, 3)))
    author("b@example.test")
    reg.approve("m", 1, stage="production")
    reg.promote("m", 1, "production")
    env = dict(os.environ, CASREG_REGISTRY=store.url, NO_COLOR="1", COLUMNS="200")
    header = ok(run_cli(["log", "m"], env, tmp_path)).stdout.splitlines()[0]
    assert "signed" not in header
    assert all("signature" not in e for e in json.loads(ok(run_cli(["log", "m", "--json"], env, tmp_path)).stdout))
    verified = ok(run_cli(["verify"], env, tmp_path))
    assert "all good" in verified.stdout
    assert verified.stdout.count("signing is not configured (opt-in)") == 1 and not verified.stderr
    assert json.loads(ok(run_cli(["resolve", "m@production", "--json"], env, tmp_path)).stdout)["signed"] is False
    assert not list(store.list("signatures/"))


def test_event_signature_keys_parse_back() -> None:
    eid, fp = "0123456789abcdef" * 2, "ab" * 32
    key = event_signature_key(eid, fp)
    assert key == f"signatures/events/{eid}/{fp}.json" and key.startswith(event_signatures_prefix(eid))
    assert parse_event_signature_key(key) == (eid, fp)
    assert parse_signature_key(key) is None  # never mistaken for a version's signature
    for other in (key + ".tmp", key.upper(), f"signatures/events/{eid[:30]}/{fp}.json",
                  f"signatures/{fp}/{fp}.sig.json"):
        assert parse_event_signature_key(other) is None, other
    for bad in (("../" + eid[3:], fp), (eid, fp[:63])):
        with pytest.raises(ValueError):
            event_signature_key(*bad)


def test_the_executable_refuses_an_untrusted_policy_in_one_line(tmp_path: Path, keys: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real entry point (its exit, its stderr), once; the other tests run in process."""
    monkeypatch.delenv("CASREG_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("CASREG_SIGNING_KEY", raising=False)
    monkeypatch.setenv("CASREG_USER", EMAIL["alice"])
    monkeypatch.setenv("HOME", str(tmp_path))
    reg = Registry(str(tmp_path / "reg"))
    reg.push("m", str(_weights(tmp_path, 4)))
    reg.set_policy(policy_text(keys, approvals=0), key=keys["alice"])  # signed, but not by the admin
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), NO_COLOR="1",
               CASREG_TRUSTED_KEYS=f"{keys['admin']}.pub")
    fails(run_executable(["promote", "m", "1", "production", "--key", str(keys["alice"])], env, tmp_path), 6,
          "policy version 1", "is signed by no pinned key: it is not trusted; refused")
    assert reg.resolve("m:1").version == 1 and not list(reg.aliases("m"))
