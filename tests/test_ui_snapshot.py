"""What makes ``casreg ui`` fast at scale, and what keeps it correct: the ledger snapshot
that casreg's own queries share (``casreg.ledger.sql.Snapshot``), the listing token of a
local registry that says when it may be reused, the caches of the ledger
(``casreg.ledger.cache``), and the paged log and one-query lineage the pages use.

Correctness first: a page never shows the ledger older than the request (a push, a move,
a compaction are on the next page), and no query can leave anything behind in the
shared connection for another caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import casreg
from casreg.errors import InvalidInputError
from casreg.ledger import cache
from casreg.ledger import sql as ledger_sql
from casreg.ledger.sql import snapshot, snapshot_query
from casreg.storage.local import LocalStore


def age(root: Path, seconds: float = 3600.0) -> None:
    """Make every directory of the registry look untouched for ``seconds`` (an idle
    registry: its listing tokens are then trusted, outside the racy window)."""
    t = time.time() - seconds
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))


@pytest.fixture
def reg(tmp_path: Path, author: Callable[[str], None]) -> Iterator[casreg.Registry]:
    author("alice@example.test")
    cache.clear()
    r = casreg.Registry(tmp_path / "reg")
    r.compact_threshold = 0
    for i in range(3):
        f = tmp_path / f"m{i}.bin"
        f.write_bytes(bytes([i]) * (100 + i))
        r.push("m", f, metrics={"auc": 0.5 + i / 10})
    r.set_alias("m", "production", 2, reason="first")
    yield r
    cache.clear()


def push(reg: casreg.Registry, tmp_path: Path, data: bytes) -> casreg.Version:
    f = tmp_path / "new.bin"
    f.write_bytes(data)
    return reg.push("m", f, metrics={"auc": 0.99})


# -- the listing token ---------------------------------------------------------------------------
def test_listing_token_moves_with_every_change_and_abstains_while_racy(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.create("a/b/one", b"1")
    assert store.listing_token("a") is None  # just written: within the racy window
    age(tmp_path / "s")
    first = store.listing_token("a")
    assert first is not None and store.listing_token("a") == first
    store.create("a/b/two", b"2")
    assert store.listing_token("a") != first
    age(tmp_path / "s", 1800)
    second = store.listing_token("a")
    store.create("a/c/three", b"3")  # a new directory
    age(tmp_path / "s", 900)
    third = store.listing_token("a")
    assert len({first, second, third}) == 3
    cur = store.read_versioned("a/b/one")
    assert cur is not None
    store.swap("a/b/one", b"changed", cur.token)  # a swap replaces by renaming: moves it
    age(tmp_path / "s", 600)
    assert store.listing_token("a") not in (third, None)
    assert store.listing_token("missing") == store.listing_token("missing")


# -- the snapshot: reused while unchanged, never stale --------------------------------------------
def test_the_next_query_sees_a_push_a_move_and_a_compaction(reg: casreg.Registry, tmp_path: Path) -> None:
    root = Path(reg.url)
    age(root)
    assert reg.models()[0].versions == 3
    v = push(reg, tmp_path, b"fourth")
    assert reg.models()[0].versions == 4  # inside the racy window: read again
    age(root, 1800)
    assert reg.models()[0].latest.version == v.version
    push(reg, tmp_path, b"fifth")
    age(root, 900)  # outside the window again, but the token moved
    assert reg.models()[0].versions == 5
    reg.set_alias("m", "staging", 5, reason="move")
    age(root, 600)
    assert snapshot_query(reg.store, "SELECT version FROM aliases WHERE alias = 'staging'") == [{"version": 5}]
    reg.compact(full=True)
    push(reg, tmp_path, b"sixth")
    age(root, 300)
    assert [r["version"] for r in snapshot_query(reg.store, "SELECT version FROM versions ORDER BY version")] == [
        1, 2, 3, 4, 5, 6]
    assert reg.log_page("m", limit=1).entries[0].to_version == 6


def test_an_unchanged_ledger_is_read_once(reg: casreg.Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    age(Path(reg.url))
    calls: list[str] = []
    real = ledger_sql.versions_table
    monkeypatch.setattr(ledger_sql, "versions_table", lambda store, **kw: calls.append("v") or real(store, **kw))
    for _ in range(3):
        assert reg.models()[0].versions == 3
        assert len(reg.series("m", ["metrics.auc"])) == 3
    assert calls == ["v"]


def test_a_store_without_tokens_reads_every_time(author: Callable[[str], None], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    author("alice@example.test")
    reg = casreg.Registry(f"memory://snap-{os.getpid()}-{time.time_ns()}")
    f = tmp_path / "a.bin"
    f.write_bytes(b"a")
    reg.push("m", f)
    assert reg.models()[0].versions == 1
    f.write_bytes(b"b")
    reg.push("m", f)
    assert reg.models()[0].versions == 2


def test_the_web_pages_show_a_push_on_the_next_request(reg: casreg.Registry, tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from casreg.web import create_app

    client = TestClient(create_app(reg))
    root = Path(reg.url)
    age(root)
    for path in ("/", "/models/m", "/models/m/history", "/api/models/m/history"):
        assert client.get(path).status_code == 200
    push(reg, tmp_path, b"fresh")
    age(root, 1800)  # even with the registry idle again at once
    assert "m:4" in client.get("/").text or ">4<" in client.get("/").text
    assert client.get("/api/models").json()[0]["version"] == 4
    assert client.get("/api/models/m").json()["versions"][0]["version"] == 4
    history = client.get("/api/models/m/history")
    assert history.json()[-1]["to_version"] == 4 and history.headers["x-total-count"] == "5"
    assert "/models/m/versions/4" in client.get("/models/m/history").text


def test_consistent_reads_look_once_and_never_before_the_block(reg: casreg.Registry, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    looks: list[int] = []
    real = ledger_sql.Snapshot._look
    monkeypatch.setattr(ledger_sql.Snapshot, "_look", lambda self: looks.append(1) or real(self))
    push(reg, tmp_path, b"before the block")
    with reg.consistent_reads():
        assert reg.models()[0].versions == 4  # the block's one look is taken after the push
        reg.series("m", ["metrics.auc"])
        reg.log_page("m")
        assert len(looks) == 1
    push(reg, tmp_path, b"after it")
    assert reg.models()[0].versions == 5


# -- the snapshot keeps no one's state -------------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "CREATE TABLE leak AS SELECT 1 AS x",
    "CREATE OR REPLACE VIEW versions AS SELECT 1 AS x",
    "CREATE MACRO leak(a) AS a + 1",
    "CREATE TEMP TABLE leak AS SELECT 1 AS x",
    "SET VARIABLE leak = 1",
    "SET threads = 1",
    "DROP VIEW versions",
    "SELECT 1; CREATE TABLE leak AS SELECT 1 AS x",
    "ATTACH ':memory:' AS other",
    "PIVOT versions ON name USING count(*)",
    "INSERT INTO _versions SELECT * FROM _versions",
])
def test_the_shared_snapshot_runs_one_select_only(reg: casreg.Registry, sql: str) -> None:
    before = snapshot_query(reg.store, "SELECT count(*) AS n FROM versions")
    with pytest.raises(InvalidInputError, match="one SELECT statement only"):
        snapshot_query(reg.store, sql)
    assert snapshot_query(reg.store, "SELECT count(*) AS n FROM versions") == before
    names = snapshot_query(reg.store, "SELECT table_name FROM information_schema.tables ORDER BY 1")
    assert {r["table_name"] for r in names} >= {"versions", "events", "aliases"}
    assert not any("leak" in r["table_name"] for r in names)


def test_user_sql_runs_on_its_own_connection(reg: casreg.Registry) -> None:
    """``casreg sql`` text may create, replace and set what it likes on its own connection;
    nothing of it reaches the shared snapshot (or the next user query)."""
    expected = reg.models()[0].versions
    assert reg.sql("CREATE OR REPLACE VIEW versions AS SELECT 1 AS x; CREATE MACRO leak(a) AS a; "
                   "SET VARIABLE leak = 7; SELECT getvariable('leak') AS v") == [{"v": 7}]
    assert reg.models()[0].versions == expected
    assert reg.sql("SELECT getvariable('leak') AS v") == [{"v": None}]
    assert reg.sql("SELECT count(*) AS n FROM versions") == [{"n": 3}]
    with pytest.raises(InvalidInputError):
        snapshot_query(reg.store, "SELECT leak(1) AS x")


def test_the_shared_snapshot_stays_locked(reg: casreg.Registry, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("canary-8d1e")
    for sql in (f"SELECT * FROM read_text('{secret}')", f"SELECT * FROM read_csv('{secret}')",
                "SELECT current_setting('enable_external_access') AS x WHERE x"):
        try:
            rows = snapshot_query(reg.store, sql)
        except InvalidInputError as err:
            assert "canary" not in str(err)
        else:
            assert rows == [] and "canary" not in repr(rows)
    con = snapshot(reg.store).con
    assert con is not None
    with pytest.raises(Exception, match="locked"):
        con.execute("SET enable_external_access = true")


# -- paged log, one-query lineage ----------------------------------------------------------------
def test_log_page_is_the_log_newest_first(reg: casreg.Registry, tmp_path: Path) -> None:
    reg.set_policy("[permissions]\n", reason="policy")
    reg.set_alias("m", "staging", 3, reason="stage")
    reg.set_alias("m", "production", 3, reason="forward")
    reg.rollback("m", "production", reason="back")
    everything = reg.log("m")
    newest = [e.to_dict() for e in reversed(everything)]
    for limit, offset in ((100, 0), (2, 0), (2, 2), (3, 5), (5, 100)):
        page = reg.log_page("m", limit=limit, offset=offset)
        assert page.total == len(everything)
        assert [e.to_dict() for e in page.entries] == newest[offset:offset + limit]
    for kw in ({"kinds": ["push"]}, {"kinds": ["rollback", "alias.set"]}, {"alias": "production"},
               {"since": everything[2].time, "until": everything[-2].time}, {"kinds": ["no'such"]}):
        want = [e.to_dict() for e in reversed(reg.log("m", **kw))]  # type: ignore[arg-type]
        page = reg.log_page("m", limit=3, **kw)  # type: ignore[arg-type]
        assert page.total == len(want) and [e.to_dict() for e in page.entries] == want[:3]


def test_log_page_of_an_unknown_model(reg: casreg.Registry) -> None:
    with pytest.raises(casreg.NotFoundError):
        reg.log("nosuch")
    with pytest.raises(casreg.NotFoundError):
        reg.log_page("nosuch")


def test_ancestors_is_the_parent_chain(reg: casreg.Registry, tmp_path: Path) -> None:
    a = reg.show("m:1")
    f = tmp_path / "child.bin"
    f.write_bytes(b"child")
    b = reg.push("m", f, parent=str(a.digest))
    f.write_bytes(b"grandchild")
    c = reg.push("m", f, parent=str(b.digest))
    assert [v.ref for v in reg.ancestors(c)] == [b.ref, a.ref]
    assert reg.ancestors(a) == []
    assert [v.ref for v in reg.ancestors(c, limit=1)] == [b.ref]
