"""``casreg ui``'s routes through Starlette's test client: every page and its JSON, the
JSON equal to what the CLI's ``--json`` prints, escaping of hostile text, the security
headers, errors as pages with a status (never a traceback), and no write method at all."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="casreg ui needs the ui extra (pip install 'casreg[ui]')")
pytest.importorskip("jinja2", reason="casreg ui needs the ui extra (pip install 'casreg[ui]')")

from starlette.testclient import TestClient  # noqa: E402
from ui_registry import AUC, HOSTILE, HOSTILE_TAG, ROLLBACK_REASON, Built, build  # noqa: E402

from casreg import IntegrityError, Registry  # noqa: E402
from casreg.web import CSP, create_app  # noqa: E402
from casreg.web.app import visible  # noqa: E402
from casreg_cli.main import run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

PAGES = ["/", "/?q=fraud", "/?tag=team%3Dgrowth", "/models/fraud", "/models/fraud?page=2&per=2",
         "/models/fraud?where=metrics.auc+%3E+0.92&sort=metrics.auc&desc=1", "/models/fraud?stage=archived",
         "/models/fraud?metric=loss", "/models/fraud/versions/1", "/models/fraud/versions/2",
         "/models/churn/versions/1", "/models/fraud/history", "/models/fraud/history?kind=rollback&kind=promote",
         "/models/fraud/history?alias=production", "/diff", "/diff?a=fraud%3A2&b=fraud%3A3", "/policy",
         "/policy?version=1", "/registry/history"]
APIS = ["/api/models", "/api/models/fraud", "/api/models/fraud?page=2&per=3", "/api/models/fraud/versions/2",
        "/api/models/fraud/history", "/api/models/fraud/series?field=metrics.auc", "/api/diff?a=fraud:2&b=fraud:3",
        "/api/policy"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    import os

    saved = {k: os.environ.get(k) for k in ("CASREG_USER", "GIT_CEILING_DIRECTORIES")}
    try:
        return build(tmp_path_factory.mktemp("ui-routes"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def client(built: Built) -> TestClient:
    return TestClient(create_app(built.reg), raise_server_exceptions=False)


def cli_json(built: Built, *args: str, capsys: pytest.CaptureFixture[str]) -> object:
    capsys.readouterr()
    assert run([*args, "--json", "-r", built.url]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text[-500:]
    assert r.headers["content-type"].startswith("text/html")
    assert "<script>alert" not in r.text and "onerror=alert(2)>" not in r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize("path", APIS)
def test_every_api_route_is_json(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text[-500:]
    assert r.headers["content-type"].startswith("application/json")
    json.loads(r.text)


def test_the_api_gives_the_records_the_cli_prints(client: TestClient, built: Built,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    shown = client.get("/api/models/fraud/versions/2").json()
    assert {k: v for k, v in shown.items() if k != "deployments"} == cli_json(built, "show", "fraud:2", capsys=capsys)
    assert client.get("/api/models/fraud/history").json() == cli_json(built, "log", "fraud", capsys=capsys)
    assert client.get("/api/diff?a=fraud:2&b=fraud:3").json() == cli_json(built, "diff", "fraud:2", "fraud:3",
                                                                           capsys=capsys)
    policy = client.get("/api/policy").json()
    assert {k: v for k, v in policy.items() if k != "versions"} == cli_json(built, "policy", "show", capsys=capsys)
    listed = cli_json(built, "ls", "fraud", "--deleted", capsys=capsys)
    assert isinstance(listed, list)
    page = client.get("/api/models/fraud").json()["versions"]
    assert page == list(reversed(listed))  # archived and deleted marked, as ls --deleted --json marks them
    models = {m["name"]: m for m in client.get("/api/models").json()}
    every = cli_json(built, "ls", capsys=capsys)
    assert isinstance(every, list)
    for record in every:
        assert {k: models[record["name"]][k] for k in record} == record
    fraud = models["fraud"]
    assert fraud["versions"] == 4 and 0 < fraud["total_stored_bytes"] < fraud["total_size"]
    assert fraud["pointers"] == {"production": 3, "staging": 4}


def test_what_the_pages_say(client: TestClient) -> None:
    models = client.get("/").text
    assert "production → v3" in models and "staging → v4" in models
    model = client.get("/models/fraud").text
    assert 'id="metric-chart"' in model and 'id="storage-chart"' in model and "dedup saved" in model
    assert "archived" in model  # v1 and v2 left production by promotions
    version = client.get("/models/fraud/versions/3").text
    assert "1 of 1 required" in version and "approved by alice@example.com" in version
    assert 'id="signatures"' in version and "Not signed" in version
    assert "casreg pull fraud:3" in version and "fsspec.open(&#34;casreg://fraud:3&#34;" in version
    assert "v3 fixes the latency" in version  # deployed now, with its reason
    assert '/diff?a=fraud%3A2&amp;b=fraud%3A3' in version
    assert 'href="/models/fraud/versions/2"' in version  # the parent, as a link
    diff = client.get("/diff?a=fraud%3A2&b=fraud%3A3").text
    assert f"{AUC[3] - AUC[2]:+.6g}" in diff
    history = client.get("/models/fraud/history").text
    assert ROLLBACK_REASON in history and "rollback" in history
    churn = client.get("/models/churn/versions/1").text
    assert "config.json" in churn and "weights.bin" in churn


def test_what_production_was_at_a_time(client: TestClient, built: Built) -> None:
    moves = [e for e in built.reg.log("fraud", alias="production") if e.kind in ("alias.set", "rollback", "promote")]
    rollback = next(e for e in moves if e.kind == "rollback")
    at = rollback.time.isoformat()
    page = client.get("/models/fraud/history", params={"at": at, "at_alias": "production"}).text
    assert 'id="at-answer"' in page and "pointed at" in page and 'href="/models/fraud/versions/1"' in page
    assert client.get("/api/models/fraud/at", params={"alias": "production", "at": at}).json()["version"] == 1
    early = client.get("/models/fraud/history", params={"at": "2001-01-01T00:00:00Z"}).text
    assert "was not set" in early


def test_hostile_text_is_escaped_and_control_characters_shown(client: TestClient) -> None:
    for path in ("/models/fraud/versions/2", "/models/fraud/history", "/?q=fraud"):
        page = client.get(path).text
        assert "<script>alert(1)" not in page and "onerror=alert(2)>" not in page
        assert "\x1b" not in page and "\u202e" not in page
    page = client.get("/models/fraud/versions/2").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J\\u202e evil\\nsecond line" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    data = client.get("/api/models/fraud/versions/2").json()
    assert data["description"] == HOSTILE and data["tags"]["note"] == HOSTILE_TAG  # JSON keeps the exact value


def test_visible() -> None:
    assert visible("a\nb\tc\x1b[1m\x9b\u202e") == "a\\nb\\tc\\x1b[1m\\x9b\\u202e"
    assert visible(3) == 3
    assert visible(visible("x\ny")) == "x\\ny"


@pytest.mark.parametrize("path", ["/", "/models/fraud", "/api/models", "/static/casreg.css", "/models/nope",
                                  "/api/models/nope", "/no/such/page"])
def test_security_headers_everywhere(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "default-src 'none'" in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def test_no_inline_script_or_style(client: TestClient) -> None:
    for path in PAGES:
        page = client.get(path).text
        assert "<script>" not in page and " style=" not in page and "<style" not in page
        assert page.count("<script") == 1 and '<script src="/static/casreg.js" defer></script>' in page


@pytest.mark.parametrize("path,status,words", [
    ("/models/nope", 404, "model &#39;nope&#39; has no versions"),
    ("/models/fraud/versions/99", 404, "fraud:99"),
    ("/models/Bad%20Name", 400, "invalid"),
    ("/ref/fraud@nowhere", 404, "fraud@nowhere"),
    ("/ref/..%2F..%2Fetc%2Fpasswd", 400, ""),
    ("/diff?a=fraud%3A1&b=not+a+ref", 400, ""),
    ("/models/fraud?where=metrics.auc%3B+DROP+TABLE+x", 400, "--where"),
    ("/models/fraud?sort=version()", 400, "--sort"),
    ("/models/fraud?page=zero", 400, "page must be a whole number"),
    ("/models/fraud/history?since=yesterday", 400, "cannot read time"),
    ("/policy?version=7", 404, "policy version 7 does not exist"),
    ("/static/", 404, "no such page"),
    ("/static/..%2Fapp.py", 404, ""),
    ("/nowhere", 404, "no such page"),
])
def test_errors_are_pages_with_a_status(client: TestClient, path: str, status: int, words: str) -> None:
    r = client.get(path)
    assert r.status_code == status, r.text[-400:]
    assert r.headers["content-type"].startswith("text/html")
    assert 'id="error-message"' in r.text and words in r.text
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_api_errors_are_json(client: TestClient) -> None:
    r = client.get("/api/models/nope")
    assert r.status_code == 404 and r.json()["status"] == 404 and "nope" in r.json()["error"]
    assert client.get("/api/diff").status_code == 400


def test_a_damaged_registry_is_a_500_page_with_one_line(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(built.url)

    def damaged() -> list[object]:
        raise IntegrityError("ledger/versions/fraud/1.parquet is damaged (https://user:secret@example.com/x)")

    monkeypatch.setattr(reg, "models", damaged)
    client = TestClient(create_app(reg), raise_server_exceptions=False)
    r = client.get("/")
    assert r.status_code == 500 and "ledger/versions/fraud/1.parquet is damaged" in r.text
    assert "secret" not in r.text and "Traceback" not in r.text

    def crash(*args: object, **kwargs: object) -> object:
        raise RuntimeError("boom /very/secret/path")

    monkeypatch.setattr(reg, "diff", crash)
    r = client.get("/diff?a=fraud:1&b=fraud:2")
    assert r.status_code == 500 and "internal error" in r.text and "boom" not in r.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/models/fraud", "/models/fraud/versions/1", "/api/models", "/diff",
                                  "/static/casreg.css"])
def test_no_write_method_is_accepted(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 405


def test_writes_are_not_offered_by_default(built: Built, client: TestClient) -> None:
    """Only ``allow_writes`` adds write routes (tests/test_ui_writes.py tests them)."""
    from starlette.routing import Route

    assert {m for r in create_app(built.reg).routes if isinstance(r, Route) for m in r.methods or ()} <= {"GET",
                                                                                                           "HEAD"}
    page = client.get("/models/fraud/versions/3").text
    assert "<form" in page and 'method="post"' not in page and "read-only" in page


def test_pages_of_versions(client: TestClient) -> None:
    first = client.get("/api/models/fraud?per=3").json()
    assert [v["version"] for v in first["versions"]] == [4, 3, 2] and first["has_next"] and first["total"] == 4
    second = client.get("/api/models/fraud?per=3&page=2").json()
    assert [v["version"] for v in second["versions"]] == [1] and not second["has_next"]
    ordered = client.get("/api/models/fraud", params={"sort": "metrics.auc", "desc": "0"}).json()
    assert [v["version"] for v in ordered["versions"]] == [1, 2, 3, 4]
    filtered = client.get("/api/models/fraud", params={"where": "metrics.auc > 0.93"}).json()
    assert [v["version"] for v in filtered["versions"]] == [4, 3] and filtered["total"] is None
    archived = client.get("/api/models/fraud", params={"stage": "archived"}).json()
    assert {v["version"] for v in archived["versions"]} == {1, 2}
    assert all(v["archived"] for v in archived["versions"])


def test_the_web_layer_uses_only_the_facade() -> None:
    """casreg/web may import the façade and the foundation, never a layer below the façade."""
    below = ("casreg.storage", "casreg.content", "casreg.ledger", "casreg.governance", "casreg.maintenance")
    found = []
    for path in (ROOT / "casreg" / "web").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n.startswith(below)]
    assert found == []


def test_templates_and_static_files_are_package_data() -> None:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["casreg"]
    web = ROOT / "casreg" / "web"
    shipped = {p for pattern in data for p in (ROOT / "casreg").glob(pattern)}
    assert {*web.glob("templates/*"), *web.glob("static/*")} <= shipped


def test_library_queries_the_pages_use(built: Built) -> None:
    reg = built.reg
    assert [v.version for v in reg.ls("fraud", newest=2, upto=3)] == [2, 3]
    assert [v.version for v in reg.ls("fraud", newest=5, upto=2)] == [1, 2]
    assert [v.version for v in reg.search("fraud", descending=True, limit=2, offset=1)] == [3, 2]
    assert reg.search("fraud", limit=2, offset=4) == []
    assert reg.stage_versions("fraud", "archived") == [1, 2] and reg.stage_versions("fraud", "production") == [3]
    summaries = {s.name: s for s in reg.models()}
    assert set(summaries) == {"churn", "fraud"} and summaries["fraud"].latest.version == 4
    assert summaries["fraud"].versions == 4
    assert summaries["fraud"].logical_bytes == sum(v.size for v in reg.ls("fraud"))
    assert summaries["fraud"].stored_bytes == sum(v.stored_bytes for v in reg.ls("fraud"))
    rows = reg.series("fraud", ["metrics.auc", "size"])
    assert [(r["version"], r["metrics.auc"]) for r in rows] == [(n, AUC[n]) for n in (1, 2, 3, 4)]
    running = reg.series("fraud", ["size"], cumulative=True)
    assert running[-1]["size"] == summaries["fraud"].logical_bytes
    sampled = reg.series("fraud", ["size"], points=2)
    assert [r["version"] for r in sampled] == [1, 4]
    # a filter that leaves pushes out reads no version records, and still knows the model
    assert {e.kind for e in reg.log("fraud", kinds=["rollback"])} == {"rollback"}
    assert reg.log("churn", kinds=["rollback"]) == []
