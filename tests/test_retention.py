"""Deletion and retention, audited (docs/retention.md), on a local directory and on S3
(the real SeaweedFS), through the library and the in-process CLI.

A deleted version keeps its ledger record but no longer resolves or pulls; an alias, the
policy's ``delete`` permission and its ``[protect]`` rules refuse a deletion; ``retain``
plans and deletes; gc reclaims exactly what the plan said (measured from the store's
object sizes before and after), and never an object a live version needs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess_cli import Run, fails, ok, run_cli

from casreg import Registry
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.errors import DeletedVersionError, IntegrityError, InvalidInputError, PolicyError
from casreg.keys import INDEXES, MANIFESTS, PACKS, tombstone_key
from casreg.storage import ObjectStore

#: Small chunks: a 512 KiB checkpoint is ~8 chunks, so versions share most of them.
SMALL = ChunkParams(avg_size=64 << 10, min_size=16 << 10, max_size=256 << 10)
BASE_SIZE = 512 << 10
REGION = 48 << 10  # version i rewrites 16 KiB at i * REGION: its own chunks, the rest shared



def object_bytes(store: ObjectStore) -> dict[str, int]:
    """Every pack, index and manifest with its stored size, from the store itself."""
    out: dict[str, int] = {}
    for prefix in (PACKS, INDEXES, MANIFESTS):
        for key in store.list(prefix):
            info = store.stat(key)
            if info is not None:
                out[key] = info.size
    return out


def checkpoint(base: bytes, i: int, seed: int = 0) -> bytes:
    """Checkpoint ``i``: the base itself for 1, else the base with 16 KiB at region ``i``
    replaced by bytes of its own."""
    if i == 1:
        return base
    data = bytearray(base)
    rng = random.Random(seed * 1000 + i)
    data[i * REGION:i * REGION + (16 << 10)] = rng.randbytes(16 << 10)
    return bytes(data)


@pytest.fixture
def reg(shared_url: str, author: Callable[[str], None]) -> Registry:
    author("alice@example.test")
    r = Registry(shared_url)
    init_config(r.store, SMALL)
    return r


def push_checkpoints(reg: Registry, tmp_path: Path, n: int, name: str = "m", seed: int = 7) -> dict[int, bytes]:
    """Push ``n`` checkpoints of ``name`` (versions 1..n); their contents by number."""
    base = random.Random(seed).randbytes(BASE_SIZE)
    contents = {}
    for i in range(1, n + 1):
        data = checkpoint(base, i)
        path = tmp_path / f"ckpt-{i}.bin"
        path.write_bytes(data)
        assert reg.push(name, path).version == i
        contents[i] = data
    return contents


@pytest.fixture
def cli(reg: Registry, tmp_path: Path) -> Run:
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CASREG_REGISTRY=reg.url, HOME=str(home), GIT_CEILING_DIRECTORIES=str(tmp_path),
                   NO_COLOR="1", COLUMNS="200")  # as the test acts now (CASREG_USER)
        return run_cli(args, env, tmp_path)

    return run




# -- delete ---------------------------------------------------------------------------------------
def test_a_deleted_version_no_longer_resolves_or_pulls(reg: Registry, cli: Run, tmp_path: Path) -> None:
    push_checkpoints(reg, tmp_path, 3)
    d = reg.delete("m", 2, reason="trained on leaked data")
    assert d.ref == "m:2" and d.event.kind == "delete" and d.event.author == "alice@example.test"
    with pytest.raises(DeletedVersionError) as info:
        reg.resolve("m:2")
    msg = str(info.value)
    assert msg.startswith("m:2 was deleted by alice@example.test at ") and msg.endswith(": trained on leaked data")
    assert info.value.exit_code == 3 and info.value.deleted_by == "alice@example.test"
    with pytest.raises(DeletedVersionError):
        reg.pull("m:2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    digest = str(d.version.digest)
    for args in (("resolve", "m:2"), ("pull", "m:2", str(tmp_path / "out")), ("show", "m:2"),
                 ("resolve", f"m@{digest}")):
        fails(cli(*args), 3, "m:2 was deleted by alice@example.test at ", ": trained on leaked data")
    # the ledger keeps everything: the record, and the event in the log and in SQL
    assert [v.version for v in reg.ls("m")] == [1, 2, 3]
    rows = reg.sql("SELECT version, deleted, deleted_by, deleted_reason FROM version_state ORDER BY version")
    assert [(r["version"], r["deleted"]) for r in rows] == [(1, False), (2, True), (3, False)]
    assert rows[1]["deleted_by"] == "alice@example.test" and rows[1]["deleted_reason"] == "trained on leaked data"
    events = reg.sql("SELECT to_version, reason FROM events WHERE kind = 'delete'")
    assert events == [{"to_version": 2, "reason": "trained on leaked data"}]
    assert [e.kind for e in reg.log("m")][-1] == "delete"
    # ls hides it unless asked
    listed = json.loads(ok(cli("ls", "m", "--json")).stdout)
    assert [v["version"] for v in listed] == [1, 3] and not any("deleted" in v for v in listed)
    listed = json.loads(ok(cli("ls", "m", "--deleted", "--json")).stdout)
    assert [(v["version"], v["deleted"]) for v in listed] == [(1, False), (2, True), (3, False)]
    assert "deleted" in ok(cli("ls", "m", "--deleted")).stdout.splitlines()[2]
    # NAME is the newest version not deleted
    reg.delete("m", 3, reason="superseded")
    assert reg.resolve("m").version == 1
    # the listing of every model shows m with its newest live version, not nothing
    assert [(v["name"], v["version"]) for v in json.loads(ok(cli("ls", "--json")).stdout)] == [("m", 1)]
    assert [(v["version"], v["deleted"]) for v in json.loads(ok(cli("ls", "--deleted", "--json")).stdout)] == [
        (3, True)]
    reg.delete("m", 1, reason="gone")
    with pytest.raises(DeletedVersionError, match="every version of m was deleted"):
        reg.resolve("m")
    assert json.loads(ok(cli("ls", "--json")).stdout) == []


def test_an_alias_blocks_the_deletion(reg: Registry, cli: Run, tmp_path: Path) -> None:
    push_checkpoints(reg, tmp_path, 2)
    reg.set_alias("m", "canary", 2)
    reg.set_alias("m", "production", 2)
    fails(cli("delete", "m:2", "--reason", "x"), 2, "m:2 is at m@canary, m@production", "move or remove")
    with pytest.raises(InvalidInputError, match="m@canary"):
        reg.delete("m", 2, reason="x")
    assert not reg.store.exists(tombstone_key("m", 2))  # nothing was written
    assert reg.resolve("m@canary").version == 2
    reg.remove_alias("m", "canary")
    reg.set_alias("m", "production", 1)
    out = json.loads(ok(cli("delete", "m:2", "--reason", "canary over", "--json")).stdout)
    assert out["version"] == 2 and out["reason"] == "canary over" and out["deleted_by"] == "alice@example.test"
    # an alias cannot be moved to a deleted version
    with pytest.raises(DeletedVersionError):
        reg.set_alias("m", "canary", 2)


def test_deleting_twice_is_an_error_that_changes_nothing(reg: Registry, cli: Run, tmp_path: Path) -> None:
    push_checkpoints(reg, tmp_path, 2)
    p = cli("delete", "m:1")
    assert p.returncode == 2 and "--reason" in p.stderr  # the reason is required (a usage error)
    ok(cli("delete", "m:1", "--reason", "first"))
    events_before = len(list(reg.store.list("ledger/events/m")))
    fails(cli("delete", "m:1", "--reason", "second"), 2, "m:1 is already deleted (by alice@example.test at",
          ": first); nothing was changed")
    assert len(list(reg.store.list("ledger/events/m"))) == events_before
    fails(cli("delete", "m", "--reason", "x"), 2, "does not name one version")
    fails(cli("delete", "m:9", "--reason", "x"), 3, "m:9 does not exist")


def test_a_delete_cut_off_before_its_event_is_repaired_by_retrying(reg: Registry, tmp_path: Path) -> None:
    """The tombstone is the commit; a crash before the event is appended leaves the
    version deleted, and the next delete of it appends that very event."""
    from casreg.ledger.tombstones import deletion_event

    push_checkpoints(reg, tmp_path, 1)
    v = reg.show("m:1")
    event = deletion_event("m", 1, v.digest, "crash test")
    reg.store.create(tombstone_key("m", 1), json.dumps(event.to_dict()).encode())  # as if killed right after
    assert reg.sql("SELECT count(*) AS n FROM events WHERE kind = 'delete'") == [{"n": 0}]
    with pytest.raises(DeletedVersionError):
        reg.resolve("m:1")
    with pytest.raises(InvalidInputError, match="already deleted"):
        reg.delete("m", 1, reason="again")
    rows = reg.sql("SELECT event_id, reason FROM events WHERE kind = 'delete'")
    assert rows == [{"event_id": event.event_id, "reason": "crash test"}]


def test_the_policy_permission_and_protect_rules_refuse(reg: Registry, cli: Run, tmp_path: Path,
                                                        author: Callable[[str], None]) -> None:
    push_checkpoints(reg, tmp_path, 4)
    reg.promote("m", 1, "production")
    reg.promote("m", 2, "production")  # m:1 leaves production (archived): no alias holds it now
    reg.set_policy("""
[roles]
admin = ["alice@example.test"]
[permissions]
delete = ["admin"]
[protect]
ever_in = ["production"]
rules = ["tags.keep == 'yes'"]
""")
    author("bob@example.test")
    fails(cli("delete", "m:3", "--reason", "x"), 8, "deleting m:3 refused: bob@example.test holds none of the roles "
          "allowed to delete (admin)")
    with pytest.raises(PolicyError):
        reg.retain("m", keep_last=1)
    author("alice@example.test")
    fails(cli("delete", "m:1", "--reason", "x"), 8, "deleting m:1 refused by policy version 1: it was in production "
          "(protect.ever_in)")
    plan = reg.retain("m", keep_last=1, dry_run=True)
    kept = {k.version: k.why for k in plan.keep}
    assert kept[1].startswith("protected by policy version 1: it was in production")
    assert kept[2] == "at m@production" and kept[4] == "one of the last 1"
    assert [v.version for v in plan.delete] == [3]
    ok(cli("delete", "m:3", "--reason", "never deployed"))


def test_a_deleted_version_is_never_deployed_again(reg: Registry, cli: Run, tmp_path: Path) -> None:
    """Not by alias set, promote or archive (they resolve it), nor by a rollback to it."""
    push_checkpoints(reg, tmp_path, 2)
    reg.promote("m", 1, "production")
    reg.promote("m", 2, "production")
    reg.delete("m", 1, reason="bad weights")
    fails(cli("rollback", "m@production"), 3, "cannot roll m@production back: m:1 was deleted by alice@example.test",
          ": bad weights")
    for args in (("promote", "m", "1", "production"), ("alias", "set", "m@canary", "1"), ("archive", "m", "1")):
        fails(cli(*args), 3, "m:1 was deleted by alice@example.test at ")
    assert reg.resolve("m@production").version == 2


# -- retain ---------------------------------------------------------------------------------------
def test_retain_dry_run_lists_and_frees_nothing(reg: Registry, cli: Run, tmp_path: Path) -> None:
    push_checkpoints(reg, tmp_path, 5)
    before = object_bytes(reg.store)
    plan = reg.retain("m", keep_last=2, dry_run=True)
    assert plan.dry_run and [v.version for v in plan.delete] == [1, 2, 3] and plan.deleted == []
    assert [k.version for k in plan.keep] == [4, 5] and plan.frees_bytes > 0
    out = json.loads(ok(cli("retain", "m", "--keep-last", "2", "--dry-run", "--json")).stdout)
    assert [v["version"] for v in out["delete"]] == [1, 2, 3] and out["frees_bytes"] == plan.frees_bytes
    human = ok(cli("retain", "m", "--keep-last", "2", "--dry-run")).stdout
    assert "would delete 3 versions" in human and "gc then reclaims" in human
    assert " KiB in " in human or " MiB in " in human
    assert not list(reg.store.list("tombstones"))
    assert reg.resolve("m:1").version == 1
    reg.gc(grace=0, delay=0)
    report = reg.gc(grace=0, delay=0)
    assert report.deleted == [] and object_bytes(reg.store) == before
    fails(cli("retain", "m", "--keep-since", "3x"), 2, "invalid age '3x'")
    fails(cli("retain", "m"), 2, "a retention rule needs --keep-last N or --keep-since AGE")  # it must keep something
    fails(cli("retain", "m", "--keep-since", "0d"), 2, "keep-since must be a positive age")


def test_retain_last_3_of_10_then_gc_reclaims_what_the_dry_run_predicted(reg: Registry, tmp_path: Path) -> None:
    """The issue's measurement: 10 checkpoints sharing most chunks, keep the last 3; the
    bytes gc reclaims (the store's object sizes before and after) equal the plan's
    prediction, which equals what only the deleted versions stored."""
    contents = push_checkpoints(reg, tmp_path, 10)
    records = {v.version: v for v in reg.ls("m")}
    predicted = reg.retain("m", keep_last=3, dry_run=True)
    applied = reg.retain("m", keep_last=3)
    assert [d.ref for d in applied.deleted] == [f"m:{i}" for i in range(1, 8)]
    assert applied.frees_bytes == predicted.frees_bytes and applied.frees_objects == predicted.frees_objects
    before = object_bytes(reg.store)
    mark = reg.gc(grace=0, delay=0)
    assert mark.deleted == [] and mark.condemned_bytes == predicted.frees_bytes and mark.deleted_versions == 7
    sweep = reg.gc(grace=0, delay=0)
    after = object_bytes(reg.store)
    reclaimed = sum(before.values()) - sum(after.values())
    assert reclaimed == sweep.deleted_bytes == predicted.frees_bytes
    assert len(before) - len(after) == predicted.frees_objects
    # independently, from the ledger: v2..v7 each stored its own pack, index and manifest,
    # all freed; v1 stored the base, which the kept versions still use, except its manifest
    v1_manifest = before[f"{MANIFESTS}/{records[1].digest.hex[:2]}/{records[1].digest.hex}.manifest"]
    assert reclaimed == sum(records[i].stored_bytes for i in range(2, 8)) + v1_manifest
    assert sweep.repack_bytes == predicted.repack_bytes
    print(f"\nmeasure[{reg.store.url.split(':')[0]}]: stored before gc {sum(before.values()):,} B, after "
          f"{sum(after.values()):,} B; reclaimed {reclaimed:,} B in {len(before) - len(after)} objects; "
          f"predicted {predicted.frees_bytes:,} B in {predicted.frees_objects}; "
          f"repack-only {predicted.repack_bytes:,} B")
    for i in (8, 9, 10):  # kept versions pull byte-identical
        dest = tmp_path / f"pulled-{i}"
        reg.pull(f"m:{i}", dest)
        assert dest.read_bytes() == contents[i]
    report = reg.verify()
    assert report.ok, [p.line() for p in report.problems]
    assert report.deleted_versions == 7 and report.unreferenced_manifests == 0 and report.unreferenced_packs == 0
    with pytest.raises(DeletedVersionError):
        reg.pull("m:5", tmp_path / "gone")


def test_chunks_in_a_pack_a_kept_version_uses_are_reported_not_reclaimed(reg: Registry, tmp_path: Path) -> None:
    """m:1 is the base; m:2 rewrites region 2, so the base's chunk there is only m:1's, but
    it sits in m:1's pack, which m:2 uses: gc frees only m:1's manifest and reports the
    chunk as reclaimable by repacking, as the plan said."""
    push_checkpoints(reg, tmp_path, 2)
    plan = reg.retain("m", keep_last=1)
    assert [d.ref for d in plan.deleted] == ["m:1"] and plan.frees_objects == 1 and plan.repack_bytes > 0
    before = object_bytes(reg.store)
    reg.gc(grace=0, delay=0)
    sweep = reg.gc(grace=0, delay=0)
    assert [o.key.split("/")[0] for o in sweep.deleted] == ["manifests"]
    assert sum(before.values()) - sum(object_bytes(reg.store).values()) == plan.frees_bytes == sweep.deleted_bytes
    assert sweep.repack_bytes == plan.repack_bytes


def test_gc_retain_applies_the_policy_rule(reg: Registry, cli: Run, tmp_path: Path) -> None:
    push_checkpoints(reg, tmp_path, 4)
    push_checkpoints(reg, tmp_path, 2, name="o", seed=8)
    reg.set_policy("""
[retention]
keep_last = 2
[models.o.retention]
enabled = false
""")
    out = ok(cli("gc", "--retain", "--dry-run", "--grace", "0")).stdout
    assert "retention m: keep the last 2: would delete 2 versions (m:1, m:2)" in out
    assert not list(reg.store.list("tombstones"))
    report = json.loads(ok(cli("gc", "--retain", "--grace", "0", "--delay", "0", "--json")).stdout)
    assert [p["name"] for p in report["retention"]] == ["m"]
    assert [d["version"] for d in report["retention"][0]["deleted"]] == [1, 2]
    assert report["condemned_bytes"] == report["retention"][0]["frees_bytes"] > 0
    assert report["deleted_versions"] == 2
    swept = reg.gc(grace=0, delay=0)
    assert swept.deleted_bytes == report["condemned_bytes"]
    assert [v.version for v in reg.search("o")] == [1, 2] and reg.resolve("o:1").version == 1
    assert reg.verify().ok


def test_a_push_reusing_a_deleted_versions_chunks_is_never_left_without_them(reg: Registry, tmp_path: Path) -> None:
    """Deleted, condemned, then the very same content pushed again before the sweep: the
    push rescues the condemned objects (gc's existing protocol), the sweep spares them,
    and the new version pulls."""
    contents = push_checkpoints(reg, tmp_path, 2)
    digest = reg.show("m:2").digest
    reg.delete("m", 2, reason="old")
    mark = reg.gc(grace=0, delay=0)
    condemned = {o.key.split("/")[0] for o in mark.condemned}
    assert condemned == {"manifests", "packs", "index"}  # m:2's manifest and the pack of its own chunks
    again = tmp_path / "ckpt-2.bin"  # the same name: the same version digest
    assert again.read_bytes() == contents[2]
    v = reg.push("m", again)
    assert v.version == 3 and v.digest == digest and v.stored_bytes == 0  # deduplicated against what was condemned
    sweep = reg.gc(grace=0, delay=0)
    assert {o.key for o in sweep.spared} == {o.key for o in mark.condemned} and sweep.deleted == []
    reg.pull("m:3", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == contents[2]
    assert reg.verify().ok


def test_a_forged_tombstone_stops_gc_and_resolve(reg: Registry, cli: Run, tmp_path: Path) -> None:
    push_checkpoints(reg, tmp_path, 2)
    reg.store.create(tombstone_key("m", 1), b'{"kind": "delete"}')
    fails(cli("resolve", "m:1"), 6, "tombstone tombstones/m/0000000001.json is corrupt")
    with pytest.raises(IntegrityError, match="tombstones/m/0000000001.json"):
        reg.gc(grace=0, delay=0)
    report = reg.verify()
    assert [p.key for p in report.problems] == [tombstone_key("m", 1)]


def test_keep_since_and_keep_stages(reg: Registry, cli: Run, tmp_path: Path) -> None:
    from datetime import timedelta

    from casreg.governance.retention import plan_retention
    from casreg.governance.retention_rule import RetentionRule

    push_checkpoints(reg, tmp_path, 4)
    reg.set_alias("m", "staging", 1)
    reg.set_alias("m", "staging", 4)  # m:1 was in staging, is at no alias now
    newest = reg.show("m:4").created_at
    rule = RetentionRule(keep_since=timedelta(days=90))
    assert plan_retention(reg.store, "m", rule, now=newest).delete == []  # all younger than 90 days
    later = plan_retention(reg.store, "m", rule, now=newest + timedelta(days=91))
    assert [v.version for v in later.delete] == [1, 2, 3]  # m:4 is at m@staging
    staged = plan_retention(reg.store, "m", RetentionRule(keep_since=timedelta(days=90), keep_stages=True),
                            now=newest + timedelta(days=91))
    assert [v.version for v in staged.delete] == [2, 3]
    assert {k.version: k.why for k in staged.keep} == {1: "was in staging (keep-stages)", 4: "at m@staging"}
    out = json.loads(ok(cli("retain", "m", "--keep-since", "90d", "--keep-stages", "--json")).stdout)
    assert out["delete"] == [] and out["rule"] == {"keep_last": None, "keep_since": "90d", "keep_stages": True}


def test_an_alias_moved_to_a_version_as_it_was_deleted_keeps_its_bytes(reg: Registry, tmp_path: Path) -> None:
    """The race the checks cannot close (the move checked the version before the tombstone,
    the deletion checked the aliases before the move): the version is deleted, resolving
    the alias says so, and gc keeps its objects while the alias points at it."""
    from casreg.ledger.tombstones import deletion_event, record_deletion

    contents = push_checkpoints(reg, tmp_path, 2)
    reg.set_alias("m", "canary", 2)
    v = reg.show("m:2")
    assert record_deletion(reg.store, deletion_event("m", 2, v.digest, "raced"))  # past the checks, as in the race
    with pytest.raises(DeletedVersionError, match="m:2 was deleted by alice@example.test at .*: raced"):
        reg.resolve("m@canary")
    reg.gc(grace=0, delay=0)
    report = reg.gc(grace=0, delay=0)
    assert report.deleted == [] and report.deleted_versions == 0
    assert any("m:2 is deleted but an alias still points at it" in w for w in report.warnings)
    checked = reg.verify()
    assert checked.ok and any("an alias points at it" in w for w in checked.warnings)
    reg.set_alias("m", "canary", 1)  # the alias moves away: now gc reclaims m:2's own objects
    reg.gc(grace=0, delay=0)
    assert reg.gc(grace=0, delay=0).deleted_bytes > 0
    reg.pull("m:1", tmp_path / "one.bin")
    assert (tmp_path / "one.bin").read_bytes() == contents[1]
    assert reg.verify().ok


# -- property: gc never removes what a live version needs ------------------------------------------
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), min_size=2, max_size=5),
       doomed=st.sets(st.integers(1, 5)))
def test_gc_never_removes_a_chunk_a_live_version_needs(tmp_path: Path, picks: list[list[int]],
                                                       doomed: set[int]) -> None:
    """Versions made of random blocks from a shared pool; any subset deleted; gc run to
    the end: every live version still pulls byte-identical, verify is clean."""
    import uuid

    reg = Registry(f"memory://retention-{uuid.uuid4().hex}")
    init_config(reg.store, SMALL)
    pool = [random.Random(b).randbytes(24 << 10) for b in range(6)]
    contents = {}
    for blocks in picks:
        data = b"".join(pool[b] for b in blocks)
        path = tmp_path / f"p-{uuid.uuid4().hex}.bin"
        path.write_bytes(data)
        contents[reg.push("m", path).version] = data
    for n in sorted(doomed & set(contents)):
        reg.delete("m", n, reason="property")
    reg.gc(grace=0, delay=0)
    reg.gc(grace=0, delay=0)
    for n, data in contents.items():
        if n in doomed:
            continue
        dest = tmp_path / f"out-{uuid.uuid4().hex}"
        reg.pull(f"m:{n}", dest)
        assert dest.read_bytes() == data
    assert reg.verify().ok


def test_the_python_example_of_docs_retention_md_runs(author: Callable[[str], None]) -> None:
    """docs/retention.md's example is a script: it runs, and its asserts hold."""
    import re

    author("doc@example.test")
    text = (Path(__file__).resolve().parent.parent / "docs" / "retention.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/retention.md", "exec"), {"__name__": "retention_doc"})  # noqa: S102


@pytest.mark.parametrize(("text", "fragment"), [
    ('[retention]\nkeep_since = "0d"', "retention: keep-since must be a positive age"),
    ("[retention]\nkeep_stages = true", "a retention rule needs --keep-last N or --keep-since AGE"),
    ("[retention]\nkeep_last = 0", "retention.keep_last: expected a whole number from 1"),
    ("[retention]\nfoo = 1", "line 2: retention: unknown key 'foo'"),
    ('[protect]\nrules = ["metrics.auc > @production"]', "protect rules compare with constants"),
    ('[protect]\never_in = ["prod uction"]', "protect.ever_in"),
    ('[permissions]\ndelete = ["nobody"]', "permissions.delete: role 'nobody' is not defined"),
])
def test_malformed_retention_and_protect_tables_are_refused(text: str, fragment: str) -> None:
    from casreg.errors import InvalidPolicyError
    from casreg.governance.policy import parse_policy

    with pytest.raises(InvalidPolicyError) as info:
        parse_policy(text)
    assert fragment in str(info.value)


def test_policy_tables_merge_per_model() -> None:
    from casreg.digest import Digest
    from casreg.governance.policy import PolicyFile, parse_policy
    from casreg.governance.retention_rule import RetentionRule

    doc = parse_policy('[retention]\nkeep_last = 5\n[models.a.retention]\nkeep_since = "30d"\n'
                       '[models.b.retention]\nenabled = false\n[protect]\never_in = ["production"]')
    pf = PolicyFile(1, "", doc, Digest.of(b""))
    assert pf.for_model("c").retention == RetentionRule(keep_last=5)
    a = pf.for_model("a").retention
    assert a is not None and a.keep_last == 5 and a.keep_since is not None and a.keep_since.days == 30
    assert pf.for_model("b").retention is None
    assert pf.for_model("b").protect.ever_in == ("production",)
