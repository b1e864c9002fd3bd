"""SQL that cannot touch the machine (docs/audit.md, "What `casreg sql` can and cannot do").

``casreg sql`` and every internal query run in a DuckDB connection with external access
off and its configuration locked: reading or writing a file or URL, attaching a database
file, installing or loading an extension, or turning any of it back on is refused with a
one-line ``SQL error: ...`` (an ``InvalidInputError``, exit code 2 through the CLI), and
nothing is created. ``ls --sort`` and ``--where`` take field names of a fixed grammar
only, so nothing a user types reaches the SQL unvalidated.

Each abuse runs through the Python API and through the CLI, on every backend, with the
ledger compacted and not (the compacted files are read by a different path). The files
the queries aim at exist (a reader would succeed if it were allowed) and carry a canary
that must never show up in an answer or an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import casreg
from casreg.errors import InvalidInputError
from casreg.ledger.head import read_head
from casreg.ledger.sql import connect
from casreg.storage.local import LocalStore
from casreg_cli.main import run

CANARY = "canary-7f3c9d"
REFUSED = r"^SQL error: .*(Permission Error|disabled|locked)"


#: Each kind of store's registry as built once per parameter, as its objects: building it
#: anew for every case (three or four pushes, maybe a compaction) took 123 of this file's
#: 127 s. Every case still gets a fresh store of its own, with the same objects written in.
_BUILT: dict[tuple[str, bool], dict[str, bytes]] = {}


def _build(registry: casreg.Registry, tmp_path: Path, compacted: bool) -> None:
    """Three versions of ``m`` (compacted, plus one newer segment, when ``compacted``)."""
    for i in range(3):
        f = tmp_path / f"m{i}.bin"
        f.write_bytes(bytes([i]) * (100 + i))
        registry.push("m", f, metrics={"auc": 0.5 + i / 10}, tags={"team": "fraud"})
    if compacted:
        registry.compact()
        head = read_head(registry.store)
        assert head is not None and head.versions  # queries read a compacted file
        f = tmp_path / "m3.bin"
        f.write_bytes(b"newest")
        registry.push("m", f, metrics={"auc": 0.95}, tags={"team": "risk"})


@pytest.fixture(params=[False, True], ids=["segments", "compacted"])
def reg(registry: casreg.Registry, author: Callable[[str], None], tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> casreg.Registry:
    """A registry with three versions of ``m`` (compacted, plus one newer segment, when
    the parameter says so), in a store of its own; the test runs in an empty directory
    with a fresh HOME."""
    author("alice@example.test")
    registry.compact_threshold = 0  # compaction only when asked
    built = (type(registry.store).__name__, request.param)
    objects = _BUILT.get(built)
    if objects is None:
        _build(registry, tmp_path, request.param)
        _BUILT[built] = {key: registry.store.read(key) for key in registry.store.list("")}
    else:
        for key, data in objects.items():
            assert registry.store.create(key, data), key
        registry = casreg.Registry(registry.store.url)  # (one that has seen nothing of the empty store)
        registry.compact_threshold = 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return registry


@pytest.fixture
def secrets_on_disk(tmp_path: Path) -> dict[str, Path]:
    """Files with the canary in every format a DuckDB reader takes."""
    d = tmp_path / "secret"
    d.mkdir()
    text = d / "passwd"
    text.write_text(f"root:{CANARY}:0:0\n")
    csv = d / "data.csv"
    csv.write_text(f"a,b\n1,{CANARY}\n")
    parquet = d / "data.parquet"
    pq.write_table(pa.table({"a": [1], "b": [CANARY]}), parquet)
    json_file = d / "data.json"
    json_file.write_text(f'{{"a": 1, "b": "{CANARY}"}}\n')
    return {"text": text, "csv": csv, "parquet": parquet, "json": json_file}


def keys(reg: casreg.Registry) -> set[str]:
    return set(reg.store.list(""))


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def refused_api(reg: casreg.Registry, sql: str, pattern: str = REFUSED) -> str:
    """``reg.sql(sql)`` fails with a one-line SQL error matching ``pattern`` that shows no canary."""
    with pytest.raises(InvalidInputError, match=pattern) as info:
        reg.sql(sql)
    message = str(info.value)
    assert "\n" not in message
    assert CANARY not in message
    return message


def refused_cli(reg: casreg.Registry, capsys: pytest.CaptureFixture[str], *args: str,
                fragment: str = "SQL error: ") -> str:
    """The CLI exits 2 with one ``casreg: error: ...`` line on stderr (with --json, that
    line is ``{"error": ..., "exit_code": 2}``), no traceback, no rows."""
    capsys.readouterr()
    code = run([*args, "-r", reg.store.url])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    if "--json" in args:
        doc = json.loads(lines[0])
        assert set(doc) == {"error", "exit_code"} and doc["exit_code"] == 2, doc
        lines = ["casreg: error: " + doc["error"]]
    assert lines[0].startswith(f"casreg: error: {fragment}"), lines[0]
    assert "Traceback" not in err and out == ""
    assert CANARY not in out + err
    return lines[0]


def reads(paths: dict[str, Path]) -> list[str]:
    """Queries that would read a file of this machine, each in a different way."""
    return [
        f"SELECT * FROM read_text('{paths['text']}')",
        f"SELECT * FROM read_blob('{paths['text']}')",
        f"SELECT * FROM read_csv('{paths['text']}')",
        f"SELECT * FROM read_csv_auto('{paths['csv']}')",
        f"SELECT * FROM read_parquet('{paths['parquet']}')",
        f"SELECT * FROM parquet_scan(['{paths['parquet']}'])",
        f"SELECT * FROM parquet_metadata('{paths['parquet']}')",
        f"SELECT * FROM read_json('{paths['json']}')",
        f"SELECT * FROM '{paths['csv']}'",
        f"SELECT * FROM glob('{paths['text'].parent}/*')",
        f"SELECT * FROM sniff_csv('{paths['csv']}')",
        f"SELECT count(*) AS n FROM versions WHERE name IN (SELECT content FROM read_text('{paths['text']}'))",
        f"CREATE TABLE t AS SELECT * FROM read_csv('{paths['csv']}')",
        f"CREATE TABLE t (a INT, b VARCHAR); COPY t FROM '{paths['csv']}'",
        f"IMPORT DATABASE '{paths['text'].parent}'",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('http://127.0.0.1:9/x')",
    ]


# -- reading files ------------------------------------------------------------------------------
def test_no_query_reads_a_file(reg: casreg.Registry, secrets_on_disk: dict[str, Path]) -> None:
    before = keys(reg)
    for sql in reads(secrets_on_disk):
        refused_api(reg, sql)
    assert keys(reg) == before
    assert reg.sql("SELECT count(*) AS n FROM versions")[0]["n"] >= 3  # the views still work


def test_no_query_reads_a_file_through_the_cli(reg: casreg.Registry, secrets_on_disk: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = keys(reg)
    for sql in reads(secrets_on_disk):
        refused_cli(reg, capsys, "sql", sql)
        refused_cli(reg, capsys, "sql", sql, "--json")
    assert keys(reg) == before


# -- writing files ------------------------------------------------------------------------------
def writes(target: Path) -> list[tuple[str, Path]]:
    """(query, the path it would create)."""
    return [
        (f"COPY (SELECT * FROM versions) TO '{target / 'x.csv'}'", target / "x.csv"),
        (f"COPY (SELECT 1 AS a) TO '{target / 'x.parquet'}' (FORMAT parquet)", target / "x.parquet"),
        (f"COPY (SELECT name, version FROM versions) TO '{target / 'x.json'}' (FORMAT json)", target / "x.json"),
        (f"EXPORT DATABASE '{target / 'export'}'", target / "export"),
        (f"ATTACH '{target / 'x.duckdb'}' AS x", target / "x.duckdb"),
        (f"ATTACH '{target / 'y.duckdb'}' AS y; CREATE TABLE y.t AS SELECT * FROM versions", target / "y.duckdb"),
        (f"SELECT 1 AS a; COPY (SELECT 2) TO '{target / 'second.csv'}'", target / "second.csv"),
        ("COPY (SELECT 1) TO 'relative.csv'", Path.cwd() / "relative.csv"),
    ]


def test_no_query_writes_a_file(reg: casreg.Registry, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    before = keys(reg)
    for sql, path in writes(target):
        refused_api(reg, sql)
        assert not path.exists(), sql
    assert tree(target) == [] and tree(Path.cwd()) == []
    assert keys(reg) == before


def test_no_query_writes_a_file_through_the_cli(reg: casreg.Registry, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out"
    target.mkdir()
    before = keys(reg)
    for sql, path in writes(target):
        refused_cli(reg, capsys, "sql", sql)
        assert not path.exists(), sql
    assert tree(target) == [] and tree(Path.cwd()) == []
    assert keys(reg) == before


def test_no_query_writes_into_the_registry(reg: casreg.Registry, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A forged ledger segment, by a path relative to the working directory (the
    registry's root, for a local one) or absolute; nothing appears in the store."""
    store = reg.store
    root = Path(store.root) if isinstance(store, LocalStore) else Path.cwd()
    monkeypatch.chdir(root)
    before = keys(reg)
    forged = "ledger/versions/evil/1.parquet"
    for sql in (f"COPY (SELECT * FROM versions LIMIT 1) TO '{forged}' (FORMAT parquet)",
                f"COPY (SELECT * FROM versions LIMIT 1) TO '{root / forged}' (FORMAT parquet)",
                "COPY (SELECT * FROM versions) TO 'ledger/versions/m' (FORMAT parquet, PARTITION_BY (version))"):
        refused_api(reg, sql)
        refused_cli(reg, capsys, "sql", sql)
    assert not (root / forged).exists() and not (root / "ledger/versions/evil").exists()
    assert keys(reg) == before
    assert [v.version for v in reg.ls("m")] == sorted(v.version for v in reg.ls("m"))
    assert reg.sql("SELECT count(*) AS n FROM versions WHERE name = 'evil'") == [{"n": 0}]


# -- extensions, settings -----------------------------------------------------------------------
def test_no_extension_is_installed_or_loaded(reg: casreg.Registry, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "evil.duckdb_extension"
    fake.write_bytes(b"\x7fELF not really")
    home = Path(os.environ["HOME"])
    for sql in ("INSTALL httpfs", "FORCE INSTALL httpfs", "INSTALL spatial FROM community", "LOAD httpfs",
                f"LOAD '{fake}'", f"INSTALL '{fake}'", "SELECT * FROM duckdb_extensions()"):
        refused_api(reg, sql)
        refused_cli(reg, capsys, "sql", sql)
    # an s3:// or https:// path would make DuckDB fetch httpfs on its own if it could
    refused_api(reg, "SELECT * FROM read_parquet('s3://bucket/x.parquet')")
    refused_api(reg, "SELECT * FROM read_csv('https://example.com/x.csv')")
    assert not (home / ".duckdb").exists()


@pytest.mark.parametrize("setting", [
    "SET enable_external_access = true", "SET GLOBAL enable_external_access = true",
    "RESET enable_external_access", "SET lock_configuration = false", "SET allowed_directories = ['/']",
    "SET allowed_paths = ['/etc/passwd']", "SET autoinstall_known_extensions = true",
    "SET autoload_known_extensions = true", "SET allow_community_extensions = true",
    "SET allow_unsigned_extensions = true", "SET temp_directory = '.'", "SET extension_directory = '.'",
    "SET python_enable_replacements = true", "PRAGMA enable_profiling = 'json'", "SET profiling_output = 'p.json'",
    "SET log_query_path = 'q.log'", "CALL enable_logging(storage = 'file', storage_path = 'logs')",
])
def test_no_query_unlocks_the_connection(reg: casreg.Registry, secrets_on_disk: dict[str, Path], setting: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Alone, or followed by what it would allow, in one query text: refused, and nothing
    is written to the working directory (profiling output, query logs, spill files)."""
    refused_api(reg, setting, r"^SQL error: .*(locked|Permission Error|disabled)")
    refused_api(reg, f"{setting}; SELECT * FROM read_text('{secrets_on_disk['text']}')")
    refused_cli(reg, capsys, "sql", f"{setting}; SELECT * FROM read_text('{secrets_on_disk['text']}')")
    assert tree(Path.cwd()) == []


def test_the_lockdown_is_in_force(reg: casreg.Registry) -> None:
    rows = reg.sql("SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
                   "'lock_configuration', 'autoinstall_known_extensions', 'autoload_known_extensions', "
                   "'allow_community_extensions', 'allow_persistent_secrets', 'temp_directory', "
                   "'python_enable_replacements')")
    assert {r["name"]: r["value"] for r in rows} == {
        "enable_external_access": "false", "lock_configuration": "true", "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false", "allow_community_extensions": "false",
        "allow_persistent_secrets": "false", "temp_directory": "", "python_enable_replacements": "false"}
    refused_api(reg, "CREATE PERSISTENT SECRET s (TYPE http)", r"^SQL error: .*[Pp]ersistent secrets are disabled")


def test_internal_connections_are_locked_too(reg: casreg.Registry, secrets_on_disk: dict[str, Path]) -> None:
    """``connect`` (the Arrow path other code builds on) gives the same locked connection;
    a bare name never reads a Python variable of the caller."""
    import duckdb

    canary_table = pa.table({"secret": [CANARY]})  # noqa: F841 -- what a replacement scan would find
    def run_sql(sql: str) -> list[tuple[object, ...]]:
        relation = con.sql(sql)
        return [] if relation is None else relation.fetchall()

    con = connect(reg.store)
    try:
        assert run_sql("SELECT count(*) FROM versions") == [(reg.sql("SELECT count(*) AS n FROM versions")[0]["n"],)]
        for sql in (f"SELECT * FROM read_text('{secrets_on_disk['text']}')", "SET enable_external_access = true",
                    f"COPY (SELECT 1) TO '{secrets_on_disk['text'].parent / 'x.csv'}'", "INSTALL httpfs"):
            with pytest.raises(duckdb.Error, match="(Permission Error|disabled|locked)"):
                run_sql(sql)
        with pytest.raises(duckdb.Error, match="canary_table"):
            run_sql("SELECT * FROM canary_table")
    finally:
        con.close()
    assert not (secrets_on_disk["text"].parent / "x.csv").exists()


# -- what still works ---------------------------------------------------------------------------
def test_the_views_work_locked(reg: casreg.Registry) -> None:
    """Every view, over compacted files and segments alike, with external access off."""
    compacted = len(reg.ls("m")) == 4
    rows = reg.sql("SELECT version, metrics['auc'] AS auc, tags['team'] AS team FROM versions ORDER BY version")
    expected = [(1, 0.5, "fraud"), (2, 0.6, "fraud"), (3, 0.7, "fraud")] + ([(4, 0.95, "risk")] if compacted else [])
    assert [(r["version"], round(r["auc"], 6), r["team"]) for r in rows] == expected
    assert reg.sql("SELECT count(*) AS n FROM versions WHERE metrics['auc'] > 0.65") == [{"n": 2 if compacted else 1}]
    assert reg.sql("SELECT count(*) AS n FROM files")[0]["n"] == len(expected)
    assert reg.sql("SELECT count(*) AS n FROM events WHERE kind = 'push'")[0]["n"] == len(expected)
    assert reg.sql("SELECT * FROM aliases") == []
    assert reg.sql("SELECT count(*) AS n FROM lineage") == [{"n": 0}]
    # what DuckDB does in memory is allowed: temporary tables, CTEs, built-in functions
    assert reg.sql("CREATE TABLE t AS SELECT version FROM versions; SELECT max(version) AS v FROM t") == [
        {"v": len(expected)}]
    assert reg.sql("SELECT to_json(metrics) AS j FROM versions WHERE version = 1") == [{"j": '{"auc":0.5}'}]


def test_version_state_works_locked_and_only_its_queries_read_events_and_pointers(reg: casreg.Registry) -> None:
    """``version_state`` (each version's ``archived`` and ``aliases``) works with external
    access off, over compacted files and segments; a query that names only ``versions``
    still reads no event segment and no pointer (the state is a view of its own for that)."""
    from casreg.ledger.sql import query, tables_for
    from casreg.testing.wrapper import StoreWrapper

    reg.promote("m", 1, "production")
    reg.promote("m", 2, "production")  # archives m:1
    reg.set_alias("m", "canary", 2)
    rows = reg.sql("SELECT version, archived, archived_by, aliases, typeof(archived) AS t_archived, "
                   "typeof(aliases) AS t_aliases FROM version_state WHERE name = 'm' ORDER BY version")
    newer = [(4, False, None, [])] if len(rows) == 4 else []
    assert [(r["version"], r["archived"], r["archived_by"], r["aliases"]) for r in rows] == [
        (1, True, "alice@example.test", []), (2, False, None, ["canary", "production"]), (3, False, None, []),
        *newer]
    assert {(r["t_archived"], r["t_aliases"]) for r in rows} == {("BOOLEAN", "VARCHAR[]")}
    assert {("m", r["version"]) for r in rows if r["archived"]} == set(reg.archived("m"))
    assert tables_for("SELECT * FROM version_state") == {"_versions", "_events", "_aliases"}

    class Reads(StoreWrapper):
        def __init__(self, inner: casreg.storage.ObjectStore) -> None:
            super().__init__(inner)
            self.keys: list[str] = []

        def read(self, key, byte_range=None):  # type: ignore[no-untyped-def]
            self.keys.append(key)
            return self.inner.read(key, byte_range)

    reads = Reads(reg.store)
    assert query(reads, "SELECT count(*) AS n FROM versions WHERE NOT starts_with(name, 'x')") == [{"n": len(rows)}]
    assert reads.keys and not [k for k in reads.keys if k.startswith(("pointers/", "ledger/events"))]


# -- ls --sort and --where ----------------------------------------------------------------------
SORT_INJECTIONS = [
    "metrics.a'], (SELECT CAST(content AS INT) FROM read_text('/etc/passwd'))--",
    "metrics.a'] --",
    "metrics.auc DESC",
    "metrics.auc, (SELECT 1)",
    "version; DROP TABLE versions",
    "(SELECT 1)",
    "version()",
    "metrics.a'b",
    "metrics.",
    "metrics.auc\n",
    "lineage.nope",
    "name",
    "1",
    "",
]


@pytest.mark.parametrize("sort", [s for s in SORT_INJECTIONS if s])
def test_sort_takes_field_names_only(reg: casreg.Registry, sort: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from casreg.ledger import sql as ledger_sql

    ran: list[str] = []
    real = ledger_sql.query
    monkeypatch.setattr("casreg.governance.search.query", lambda store, q: ran.append(q) or real(store, q))
    with pytest.raises(InvalidInputError, match=r"^--sort: (bad|unknown) field") as info:
        reg.search("m", sort=sort)
    assert "\n" not in str(info.value)
    assert "root:" not in str(info.value)
    refused_cli(reg, capsys, "ls", "m", "--sort", sort, fragment="--sort: ")
    assert ran == []  # refused before any SQL was built


def test_sort_by_every_kind_of_field(reg: casreg.Registry) -> None:
    assert [v.version for v in reg.search("m", sort="metrics.auc", descending=True, limit=2)][0] == len(reg.ls("m"))
    assert [v.version for v in reg.search("m", sort="metrics.no-such.key_1")] == [v.version for v in reg.ls("m")]
    assert [v.version for v in reg.search("m", sort="lineage.dataset")] == [v.version for v in reg.ls("m")]
    assert [v.version for v in reg.search("m", sort="Version", descending=True)] == sorted(
        (v.version for v in reg.ls("m")), reverse=True)
    assert reg.search("m", sort="tags.team")[-1].tags["team"] in ("fraud", "risk")


@pytest.mark.parametrize("where", [
    "version() LIKE 'v%'", "version ( ) IS NOT NULL", "digest IN (version())", "size(1) > 0",
    "metrics.auc > 0.5) OR (1 = 1", "metrics.auc > 0 --", "tags.team = 'x' /* */", "1 = 1; SELECT 1",
    "metrics.a'b = 1", "tags.team = E'\\x27'", "tags.team = $$x$$",
])
def test_where_refuses_functions_and_anything_unreadable(reg: casreg.Registry, where: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidInputError, match=r"^--where"):
        reg.search("m", where=where)
    refused_cli(reg, capsys, "ls", "m", "--where", where, fragment="--where")


def test_where_strings_stay_strings(reg: casreg.Registry) -> None:
    """A quote inside a literal is doubled, never closes it: the text is compared, not run."""
    for text in ("x' OR '1' = '1", "') OR (1 = 1", "x''; DROP TABLE versions; --", "\\'"):
        literal = "'" + text.replace("'", "''") + "'"
        assert reg.search("m", where=f"tags.team = {literal}") == []
    assert len(reg.search("m", where="tags.team IN ('fraud', 'risk')")) == len(reg.ls("m"))
