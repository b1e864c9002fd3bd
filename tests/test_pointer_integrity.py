"""Alias pointers that lie, on a local directory and on S3 (the real SeaweedFS).

A pointer (``pointers/<name>/<alias>.json``) is a mutable object: a bucket writer can
rewrite it. Every lie a hostile tester found on main is forged here from the format, and
every command that reads the pointer must refuse it in one line naming the key (exit 6),
never deliver another version's bytes; ``ls`` flags it; ``verify`` names the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from inprocess_cli import Run, fails, ok

from casreg import IntegrityError, Registry
from casreg.errors import AliasNotMovedError, PolicyError
from casreg.keys import pointer_key
from casreg.ledger.resolve import resolve
from casreg.storage import ObjectStore, open_store
from casreg.testing.counting import CountingStore

KEY = "pointers/m/production.json"






@pytest.fixture
def world(shared_url: str, tmp_path: Path, author: Callable[[str], None]) -> tuple[Registry, dict[str, bytes]]:
    """m:1..3 and o:1, each a different file; m@production -> m:2 and m@staging moved
    twice (so it has a previous target)."""
    author("setup@example.test")
    reg = Registry(shared_url)
    content: dict[str, bytes] = {}
    for ref, size in (("m:1", 3000), ("m:2", 3100), ("m:3", 3200), ("o:1", 3300)):
        name = ref.split(":")[0]
        data = os.urandom(size)
        src = tmp_path / f"{ref.replace(':', '-')}.bin"
        src.write_bytes(data)
        v = reg.push(name, src)
        assert v.ref == ref
        content[ref] = data
    reg.set_alias("m", "production", 2)
    reg.set_alias("m", "staging", 1)
    reg.set_alias("m", "staging", 2)
    return reg, content


def forge(store: ObjectStore, key: str, change: Callable[[dict[str, object]], object] | bytes) -> None:
    """Rewrite the pointer at ``key`` (its JSON changed by ``change``, or raw bytes)."""
    current = store.read_versioned(key)
    assert current is not None
    if isinstance(change, bytes):
        data = change
    else:
        doc = json.loads(current.data)
        change(doc)
        data = json.dumps(doc).encode()
    store.swap(key, data, current.token)


def _set(**fields: object) -> Callable[[dict[str, object]], None]:
    return lambda doc: doc.update(fields)


def digest_of(reg: Registry, ref: str) -> str:
    return str(reg.show(ref).digest)


# -- the lies -----------------------------------------------------------------------------------
LIES: dict[str, tuple[Callable[[Registry], Callable[[dict[str, object]], object] | bytes], str]] = {
    # to_version no longer matches to_digest (ls showed m:3, pull delivered m:2)
    "version-moved": (lambda reg: _set(to_version=3), "the ledger records m:3 as"),
    # aimed at another model's version: m:1 by number, o:1's digest (pull delivered o's bytes)
    "other-models-digest": (lambda reg: _set(to_version=1, to_digest=digest_of(reg, "o:1")),
                            "the ledger records m:1 as"),
    # the pointer of m@production holds a move of o@production
    "other-model": (lambda reg: _set(name="o", to_version=1, to_digest=digest_of(reg, "o:1")),
                    "holds a move of o@production, not of m@production"),
    # the pointer of m@production holds a move of m@staging
    "other-alias": (lambda reg: _set(alias="staging"), "holds a move of m@staging, not of m@production"),
    # a version the ledger does not have
    "no-such-version": (lambda reg: _set(to_version=9), "which no version records (the ledger has no m:9)"),
    # a version without a digest
    "half-removed": (lambda reg: _set(to_digest=None), "names a version without a digest"),
    # not a pointer move at all
    "not-a-move": (lambda reg: _set(kind="approve"), "not a move of the alias"),
    "not-json": (lambda reg: b"{\"event_id\": ", "is corrupt"),
}


# the pointer aimed at another model's version (pull delivered o's bytes on main) runs
# through the real executable, end to end (its exit codes, one-line errors, no traceback);
# the other lies in this process
@pytest.mark.parametrize(("lie", "executable"), [
    pytest.param(lie, lie == "other-models-digest", id=f"{lie}-executable" if lie == "other-models-digest" else lie)
    for lie in LIES])
def test_every_command_refuses_a_lying_pointer(lie: str, world: tuple[Registry, dict[str, bytes]], cli: Run,
                                               tmp_path: Path) -> None:
    reg, content = world
    make, says = LIES[lie]
    forge(reg.store, KEY, make(reg))

    fails(cli("resolve", "m@production"), 6, KEY, says)
    fails(cli("resolve", "m@production", "--json"), 6, KEY, says, as_json=True)
    fails(cli("show", "m@production"), 6, KEY, says)
    dest = tmp_path / "served"
    fails(cli("pull", "m@production", str(dest)), 6, KEY, says)
    assert not dest.exists()  # nothing delivered, neither m:2's bytes nor o:1's
    assert not any(p.name.startswith(".served") for p in tmp_path.iterdir())
    fails(cli("promote", "m", "3", "production"), 6, KEY)
    fails(cli("alias", "set", "m@production", "3"), 6, KEY)
    fails(cli("rollback", "m@production"), 6, KEY)
    fails(cli("alias", "ls", "m"), 6, KEY)
    fails(cli("ls", "m", "--stage", "production"), 6, KEY)
    fails(cli("alias", "rm", "m@production"), 6, KEY)
    fails(cli("sql", "SELECT name, alias, version FROM aliases"), 6, KEY)
    v = cli("verify")
    assert v.returncode == 6 and "Traceback" not in v.stderr, v.stderr
    assert f"corrupt {KEY}: " in v.stderr, v.stderr
    assert "1 bad or missing object" in v.stderr
    # the pointer was not changed by any of it
    assert reg.store.read_versioned(KEY) is not None
    with pytest.raises(IntegrityError, match=KEY):
        resolve(reg.store, "m@production")


@pytest.mark.parametrize("lie", ["version-moved", "other-models-digest"])
def test_ls_and_show_flag_a_pointer_that_lies_about_a_listed_version(
        lie: str, world: tuple[Registry, dict[str, bytes]], cli: Run) -> None:
    """ls checks the badges against the rows it lists (no extra read): the lying alias is
    shown flagged, never as valid, and ls exits 6 naming the key."""
    reg, _ = world
    forge(reg.store, KEY, LIES[lie][0](reg))
    p = cli("ls", "m")
    fails(p, 6, KEY, "but the ledger records", stdout=True)
    rows = {line.split()[0]: line for line in p.stdout.splitlines()[1:]}
    flagged = "m:3" if lie == "version-moved" else "m:1"
    assert "production(corrupt)" in rows[flagged]
    assert all("production" not in line for ref, line in rows.items() if ref != flagged)
    assert "staging" in rows["m:2"]  # honest pointers keep their badge
    j = cli("ls", "m", "--json")
    fails(j, 6, KEY, stdout=True, as_json=True)
    listed = {r["ref"] if "ref" in r else f"{r['name']}:{r['version']}": r["aliases"] for r in json.loads(j.stdout)}
    assert "production" not in listed[flagged] and "production(corrupt)" not in listed[flagged]
    fails(cli("show", flagged), 6, KEY)
    ok(cli("show", "m:2"))  # a version no lying pointer names shows as before


def test_a_pointer_aimed_at_another_models_version_never_delivers_its_bytes(
        world: tuple[Registry, dict[str, bytes]], cli: Run, tmp_path: Path) -> None:
    reg, content = world
    forge(reg.store, KEY, _set(name="o", to_version=1, to_digest=digest_of(reg, "o:1")))
    dest = tmp_path / "out.bin"
    fails(cli("pull", "m@production", str(dest)), 6, KEY)
    assert not dest.exists()
    # an honest move repairs it: remove the lying pointer (the ledger keeps its history), set it again
    forge(reg.store, KEY, _set(name="m", to_version=3, to_digest=digest_of(reg, "m:3")))
    ok(cli("alias", "rm", "m@production"))
    ok(cli("alias", "set", "m@production", "2"))
    ok(cli("pull", "m@production", str(dest)))
    assert dest.read_bytes() == content["m:2"]


def test_rollback_refuses_a_forged_previous_target(world: tuple[Registry, dict[str, bytes]], cli: Run) -> None:
    reg, _ = world
    staging = pointer_key("m", "staging")
    forge(reg.store, staging, _set(from_version=1, from_digest=digest_of(reg, "o:1")))
    line = fails(cli("rollback", "m@staging"), 6, staging, "says it was at m:1 as")
    assert digest_of(reg, "o:1") in line
    assert reg.resolve("m@staging").version == 2  # resolve checks where it points now, which is true


def test_honest_pointers_resolve_and_verify(world: tuple[Registry, dict[str, bytes]], cli: Run,
                                            tmp_path: Path) -> None:
    reg, content = world
    assert ok(cli("resolve", "m@production")).stdout.strip() == digest_of(reg, "m:2")
    ok(cli("pull", "m@production", str(tmp_path / "x.bin")))
    assert (tmp_path / "x.bin").read_bytes() == content["m:2"]
    assert "production" in ok(cli("ls", "m")).stdout
    assert "all good" in ok(cli("verify")).stdout


# -- push --alias whose move fails ------------------------------------------------------------------
def test_push_alias_refused_by_policy_says_the_version_was_committed(
        world: tuple[Registry, dict[str, bytes]], cli: Run, tmp_path: Path) -> None:
    reg, _ = world
    policy = tmp_path / "policy.toml"
    policy.write_text("[gates.production]\napprovals = 1\n")
    ok(cli("policy", "set", str(policy)))
    src = tmp_path / "new.bin"
    src.write_bytes(os.urandom(2000))
    line = fails(cli("push", "m", str(src), "--alias", "production"), 8,
                 "m:4 was committed (blake3:", "but moving m@production was refused: ",
                 "refused by policy version 1")
    assert digest_of(reg, "m:4") in line
    assert reg.resolve("m@production").version == 2  # the alias did not move
    assert "m:4" in ok(cli("ls", "m")).stdout

    with pytest.raises(AliasNotMovedError) as caught:
        reg.push("m", src, alias="production")
    err = caught.value
    assert (err.name, err.version, err.ref) == ("m", 5, "m:5")
    assert err.digest == digest_of(reg, "m:5")
    assert isinstance(err.cause, PolicyError) and err.exit_code == 8


def test_push_alias_onto_a_lying_pointer_says_the_version_was_committed(
        world: tuple[Registry, dict[str, bytes]], cli: Run, tmp_path: Path) -> None:
    reg, _ = world
    forge(reg.store, KEY, _set(to_version=3))
    src = tmp_path / "new.bin"
    src.write_bytes(os.urandom(2000))
    fails(cli("push", "m", str(src), "--alias", "production"), 6, "m:4 was committed (blake3:",
          "but moving m@production was refused: ", KEY)
    assert reg.show("m:4").version == 4


class _Listings(CountingStore):
    """Counts listings too."""

    listings = 0

    def list(self, prefix: str) -> Iterator[str]:
        self.listings += 1
        return self.inner.list(prefix)


def test_resolve_reads_one_pointer_and_one_bounded_segment(world: tuple[Registry, dict[str, bytes]]) -> None:
    """The price of checking: one more read (the version's ledger segment), no listing."""
    reg, _ = world
    counting = _Listings(open_store(reg.url))
    assert resolve(counting, "m@production").version == 2
    assert counting.listings == 0
    assert dict(counting.reads) == {"pointers": 1, "ledger": 1}, counting.reads


# -- a deleted pointer ------------------------------------------------------------------------
def test_a_deleted_pointer_is_damage_not_an_unset_alias(world: tuple[Registry, dict[str, bytes]], cli: Run,
                                                        tmp_path: Path) -> None:
    """Nothing deletes a pointer (a removed alias keeps its pointer, holding the removal),
    so a pointer gone although the ledger's last move set the alias is damage: reads and
    moves name the key (exit 6) instead of treating the alias as unset or creating it
    anew; verify names it; ``alias restore`` writes back the ledger's last move, and
    only that."""
    reg, content = world
    before = reg.store.read(KEY)
    reg.store.delete(KEY)
    for args in (("resolve", "m@production"), ("pull", "m@production", str(tmp_path / "out")),
                 ("alias", "set", "m@production", "3"), ("promote", "m", "3", "production"),
                 ("alias", "rm", "m@production")):
        fails(cli(*args), 6, KEY, "is missing", "set it to m:2", "casreg alias restore m@production")
    assert not reg.store.exists(KEY) and not (tmp_path / "out").exists()  # nothing moved, nothing pulled
    p = cli("verify")
    assert p.returncode == 6 and f"missing {KEY}: " in p.stderr and "set it to m:2" in p.stderr, p.stderr
    # an alias removed the honest way is a tombstone, not damage; an alias never set is unknown
    ok(cli("alias", "rm", "m@staging"))
    fails(cli("resolve", "m@staging"), 3, "m@staging is not set")
    fails(cli("resolve", "m@canary"), 3, "m@canary is not set")
    assert "restored m@production -> m:2" in ok(cli("alias", "restore", "m@production")).stdout
    assert reg.store.read(KEY) == before  # byte for byte the pointer that was deleted
    assert ok(cli("resolve", "m@production")).stdout.strip() == digest_of(reg, "m:2")
    ok(cli("verify"))
    fails(cli("alias", "restore", "m@production"), 2, "has an intact pointer: nothing to restore")
    fails(cli("alias", "restore", "m@canary"), 2, "has no move in the ledger")


@pytest.mark.parametrize("lie", ["not-json", "version-moved", "other-model"])
def test_alias_restore_rewrites_a_damaged_pointer_from_the_ledger(lie: str, world: tuple[Registry, dict[str, bytes]],
                                                                  cli: Run) -> None:
    """A pointer every read refuses cannot be moved or removed (each would trust it);
    ``alias restore`` rewrites it as the ledger's last move, after which it works again."""
    reg, _ = world
    before = reg.store.read(KEY)
    forge(reg.store, KEY, LIES[lie][0](reg))
    fails(cli("alias", "rm", "m@production"), 6, KEY)
    assert "restored m@production -> m:2" in ok(cli("alias", "restore", "m@production")).stdout
    assert reg.store.read(KEY) == before
    ok(cli("verify"))
    ok(cli("alias", "rm", "m@production"))
