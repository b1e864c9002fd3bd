"""``casreg ui --allow-writes``: the write actions through Starlette's test client (each
one allowed, refused by the policy with its reason shown, and every guard: CSRF token,
Origin, Host, the author header), the read-only app's lack of any write route, the
lineage fields of the version page and deleted versions on the model page, all escaped.

Each test gets its own copy of one registry built once (a copy is a directory copy:
much faster than pushing again), so tests that write do not see each other's writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="casreg ui needs the ui extra (pip install 'casreg[ui]')")
pytest.importorskip("jinja2", reason="casreg ui needs the ui extra (pip install 'casreg[ui]')")

from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from casreg import Registry  # noqa: E402
from casreg.lineage import acting_as, current_author  # noqa: E402
from casreg.storage.base import ObjectStore  # noqa: E402
from casreg.testing.wrapper import StoreWrapper  # noqa: E402
from casreg.web import create_app  # noqa: E402
from casreg.web.actions import MAX_FORM_BYTES, Guard, loopback_hosts  # noqa: E402
from casreg.web.app import safe_link  # noqa: E402
from casreg_cli.main import run  # noqa: E402

SERVER = "http://127.0.0.1:8000"
ORIGIN = {"origin": SERVER}
PUSHER = "alice@example.com"
ME = "carol@example.com"  # who runs the server in these tests: a release manager
EVIL = "<script>alert(7)</script>"
HARDWARE = "8x H100 <script>alert(8)</script>"
POLICY = """\
[gates.production]
approvals = 1
self_approval = false

[roles]
release = ["*@example.com"]

[permissions]
promote = { production = ["release"], "*" = ["release"] }
approve = ["release"]
archive = ["release"]
"""
COMMIT = "3f2a9c1e"
_HEADER = json.dumps({"encoder.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
SAFETENSORS = len(_HEADER).to_bytes(8, "little") + _HEADER + bytes(16)  # one tensor: the version's schema
ACTION_URLS = ["/models/fraud/versions/2/promote", "/models/fraud/versions/2/decide",
               "/models/fraud/versions/2/archive", "/models/fraud/versions/2/alias",
               "/models/fraud/aliases/production/rollback"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry, built once: ``fraud`` v1..v3 pushed by alice (v3 with lineage: hardware,
    requirements, a signature and a link, and a hostile hardware text), production
    v1 -> v2, staging at v3, and the policy above; ``hostile`` pushed by an author whose
    name is markup."""
    root = tmp_path_factory.mktemp("ui-writes")
    saved = {k: os.environ.get(k) for k in ("CASREG_USER", "GIT_CEILING_DIRECTORIES")}
    os.environ["GIT_CEILING_DIRECTORIES"] = str(root)
    try:
        reg = Registry(root / "reg")
        src = root / "src"
        src.mkdir()
        (src / "requirements.txt").write_text("torch==2.1.0\nnumpy>=1.26\n")
        (src / "signature.json").write_text('{"inputs": [{"name": "x"}], "outputs": [{"name": "score"}]}')
        with acting_as(PUSHER):
            for n in (1, 2, 3):
                f = src / (f"m{n}.bin" if n < 3 else "model.safetensors")
                f.write_bytes(os.urandom(2048) + bytes([n]) if n < 3 else SAFETENSORS)
                extra: dict[str, object] = {}
                if n == 3:
                    extra = {"hardware": HARDWARE, "requirements": src / "requirements.txt", "git_commit": COMMIT,
                             "signature": src / "signature.json",
                             "links": {"dashboard": "https://grafana.example.com/d/fraud"}}
                reg.push("fraud", f, metrics={"auc": 0.9 + n / 100}, tags={"team": "fraud"},
                         detect_hardware=False, **extra)  # type: ignore[arg-type]
            reg.set_alias("fraud", "production", 1, reason="first")
            reg.set_alias("fraud", "production", 2, reason="second")
            reg.set_alias("fraud", "staging", 3, reason="candidate")
            reg.set_policy(POLICY, reason="release managers decide")
        with acting_as(f"mallory{EVIL}@example.com"):
            (src / "h.bin").write_bytes(b"hostile")
            reg.push("hostile", src / "h.bin", tags={"note": EVIL}, detect_hardware=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return root / "reg"


@pytest.fixture
def reg(template: Path, tmp_path: Path) -> Registry:
    shutil.copytree(template, tmp_path / "reg")
    return Registry(tmp_path / "reg")


def client_for(reg: Registry, **options: object) -> TestClient:
    options.setdefault("allow_writes", True)
    if options["allow_writes"] and "author_header" not in options:
        options.setdefault("author", ME)
    app = create_app(reg, **options)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False, base_url=SERVER)


@pytest.fixture
def client(reg: Registry) -> TestClient:
    return client_for(reg, allowed_hosts=["127.0.0.1", "localhost"])


def token(client: TestClient, page: str, action: str, headers: dict[str, str] | None = None) -> str:
    """The CSRF token of the form on ``page`` that posts to ``action``."""
    html = client.get(page, headers=headers).text
    found = re.search(rf'action="{re.escape(action)}">\s*<input type="hidden" name="token" value="([0-9a-f]+)"', html)
    assert found is not None, f"no form posting to {action} on {page}"
    return found[1]


def post(client: TestClient, action: str, page: str, headers: dict[str, str] | None = None,
         **fields: str) -> object:
    tok = token(client, page, action, headers)
    return client.post(action, data={"token": tok, **fields}, headers={**ORIGIN, **(headers or {})},
                       follow_redirects=False)


def message(html: str) -> str:
    found = re.search(r'id="error-message">(.*?)</p>', html, re.S)
    assert found is not None, html[-600:]
    return found[1]


def flash(html: str) -> str:
    found = re.search(r'<p class="flash" id="flash" role="status">(.*?)</p>', html, re.S)
    assert found is not None, "no flash message on the page"
    return re.sub(r"<[^>]+>", "", found[1])


# -- no write route without --allow-writes -----------------------------------------------------
def test_the_read_only_app_has_no_write_route(reg: Registry) -> None:
    app = create_app(reg)
    methods = {m for r in app.routes if isinstance(r, Route) for m in (r.methods or ())}
    assert methods <= {"GET", "HEAD"}
    client = TestClient(app, raise_server_exceptions=False, base_url=SERVER)
    assert 'method="post"' not in client.get("/models/fraud/versions/2").text
    assert 'method="post"' not in client.get("/models/fraud").text
    for url in ACTION_URLS:
        r = client.post(url, data={"token": "x", "stage": "production", "decision": "approve"}, headers=ORIGIN)
        assert r.status_code in (404, 405), (url, r.status_code)
        assert "Traceback" not in r.text
    assert reg.aliases("fraud")[0].version == 2 and reg.state("fraud:2").approvals == {}


def test_the_write_app_adds_only_the_action_routes(reg: Registry) -> None:
    read_only = {(r.path, frozenset(r.methods or ())) for r in create_app(reg).routes if isinstance(r, Route)}
    writes = {(r.path, frozenset(r.methods or ())) for r in create_app(reg, allow_writes=True).routes
              if isinstance(r, Route)}
    added = writes - read_only
    assert {m for _, ms in added for m in ms} == {"POST"}
    assert {p.rsplit("/", 1)[1] for p, _ in added} == {"promote", "decide", "archive", "alias", "rollback"}


def test_write_options_need_allow_writes(reg: Registry) -> None:
    with pytest.raises(ValueError, match="only apply with allow_writes"):
        create_app(reg, author_header="X-Forwarded-User")
    with pytest.raises(ValueError, match="not an HTTP header name"):
        create_app(reg, allow_writes=True, author_header="X User: evil")


# -- each action, allowed --------------------------------------------------------------------
def test_approve_then_promote(client: TestClient, reg: Registry) -> None:
    page = "/models/fraud/versions/3"
    r = post(client, page + "/decide", page, stage="production", decision="approve", reason="looks good")
    assert r.status_code == 303 and r.headers["location"].startswith(page + "?event=")  # type: ignore[attr-defined]
    shown = client.get(r.headers["location"]).text  # type: ignore[attr-defined]
    assert f"approve production fraud:3 by {ME}" in flash(shown) and "looks good" in flash(shown)
    assert reg.state("fraud:3").approvals == {"production": [ME]}
    r = post(client, page + "/promote", page, stage="production", reason="v3 wins")
    assert r.status_code == 303  # type: ignore[attr-defined]
    shown = client.get(r.headers["location"]).text  # type: ignore[attr-defined]
    assert "promote production fraud:3" in flash(shown)
    assert re.search(r"<h1>fraud:3 .*badge-production", shown)
    production = next(p for p in reg.aliases("fraud") if p.alias == "production")
    assert production.version == 3 and production.event.author == ME and production.event.reason == "v3 wins"
    assert reg.state("fraud:2").archived  # promoting to production archived the one it replaced, as the CLI does
    again = post(client, page + "/promote", page, stage="production")
    assert client.get(again.headers["location"]).status_code == 200  # type: ignore[attr-defined]
    assert "Nothing changed" in flash(client.get(again.headers["location"]).text)  # type: ignore[attr-defined]


def test_reject(client: TestClient, reg: Registry) -> None:
    page = "/models/fraud/versions/3"
    r = post(client, page + "/decide", page, stage="production", decision="reject", reason="bias found")
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert reg.state("fraud:3").rejections == {"production": [ME]}
    assert "rejected by carol@example.com" in client.get(page).text


def test_archive(client: TestClient, reg: Registry) -> None:
    post(client, "/models/fraud/versions/3/decide", "/models/fraud/versions/3", stage="production",
         decision="approve")
    post(client, "/models/fraud/versions/3/promote", "/models/fraud/versions/3", stage="production",
         reason="v3")
    assert not reg.state("fraud:1").archived
    r = post(client, "/models/fraud/versions/1/archive", "/models/fraud/versions/1", reason="superseded")
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert reg.state("fraud:1").archived
    shown = client.get(r.headers["location"]).text  # type: ignore[attr-defined]
    assert "archive fraud:1" in flash(shown) and "badge-archived" in shown
    assert 'id="form-archive"' not in shown  # nothing left to archive


def test_set_alias(client: TestClient, reg: Registry) -> None:
    r = post(client, "/models/fraud/versions/1/alias", "/models/fraud/versions/1", alias="canary", reason="try v1")
    assert r.status_code == 303  # type: ignore[attr-defined]
    canary = next(p for p in reg.aliases("fraud") if p.alias == "canary")
    assert canary.version == 1 and canary.event.author == ME and canary.event.kind == "alias.set"


def test_rollback(client: TestClient, reg: Registry) -> None:
    action = "/models/fraud/aliases/production/rollback"
    assert "Roll back to v1" in client.get("/models/fraud").text
    r = post(client, action, "/models/fraud", reason="v2 leaks memory")
    assert r.status_code == 303 and r.headers["location"].startswith("/models/fraud?event=")  # type: ignore
    production = next(p for p in reg.aliases("fraud") if p.alias == "production")
    assert production.version == 1 and production.event.kind == "rollback"
    assert production.event.reason == "v2 leaks memory" and production.event.author == ME
    shown = client.get(r.headers["location"]).text  # type: ignore[attr-defined]
    assert "rollback production fraud:1" in flash(shown) and "v2 leaks memory" in flash(shown)


# -- refused by the library: the reason, the status, nothing changed ----------------------------
@pytest.mark.parametrize("action,page,fields,status,words", [
    ("/models/fraud/versions/3/promote", "/models/fraud/versions/3", {"stage": "production"}, 403,
     "rule &#39;approvals &gt;= 1&#39; failed"),
    ("/models/fraud/versions/2/archive", "/models/fraud/versions/2", {}, 400,
     "fraud:2 is at fraud@production; move or remove those aliases first"),
    ("/models/fraud/versions/1/promote", "/models/fraud/versions/1", {"stage": "prodution"}, 400, "production"),
    ("/models/fraud/versions/1/decide", "/models/fraud/versions/1", {"stage": "production", "decision": "maybe"},
     400, "decision must be approve or reject"),
    ("/models/fraud/versions/1/alias", "/models/fraud/versions/1", {"alias": "Bad Alias!"}, 400, "alias"),
    ("/models/fraud/versions/1/alias", "/models/fraud/versions/1", {"alias": "archived"}, 400,
     "archived is a state of versions"),
])
def test_refusals_show_the_reason(client: TestClient, reg: Registry, action: str, page: str,
                                  fields: dict[str, str], status: int, words: str) -> None:
    before = [e.event_id for e in reg.log("fraud")]
    r = post(client, action, page, **fields)
    assert r.status_code == status, r.text[-400:]  # type: ignore[attr-defined]
    assert words in message(r.text) and "Traceback" not in r.text  # type: ignore[attr-defined]
    assert f'href="{page}" id="back"' in r.text  # type: ignore[attr-defined]
    assert [e.event_id for e in reg.log("fraud")] == before


def test_rollback_to_a_deleted_version_is_refused(client: TestClient, reg: Registry) -> None:
    with acting_as(ME):
        reg.delete("fraud", 1, reason="trained on leaked data")
    r = post(client, "/models/fraud/aliases/production/rollback", "/models/fraud", reason="back")
    assert r.status_code == 404  # type: ignore[attr-defined]
    assert "cannot roll fraud@production back: fraud:1 was deleted by carol@example.com" in message(r.text)  # type: ignore
    assert next(p for p in reg.aliases("fraud") if p.alias == "production").version == 2


def test_pusher_cannot_approve_own_version(reg: Registry) -> None:
    client = client_for(reg, author=PUSHER)
    r = post(client, "/models/fraud/versions/3/decide", "/models/fraud/versions/3", stage="production",
             decision="approve")
    assert r.status_code == 403  # type: ignore[attr-defined]
    assert "does not let a pusher approve their own version" in message(r.text)  # type: ignore[attr-defined]


class RollbackFirst(StoreWrapper):
    """The real store, where another user rolls ``fraud@production`` back just before this
    process's first swap of that pointer: the swap then expects a state that is gone."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.raced = False

    def swap(self, key: str, data: bytes, expected: str | None) -> str:
        if not self.raced and "production" in key:
            self.raced = True
            with acting_as("dave@example.com"):
                Registry.from_store(self.inner).rollback("fraud", "production", reason="dave was faster")
        return super().swap(key, data, expected)


def test_a_lost_race_is_a_409(reg: Registry) -> None:
    with acting_as(ME):
        reg.approve("fraud", 3, stage="production")
    racing = Registry.from_store(RollbackFirst(reg.store))
    client = client_for(racing)
    r = post(client, "/models/fraud/versions/3/promote", "/models/fraud/versions/3", stage="production")
    assert r.status_code == 409, r.text[-400:]  # type: ignore[attr-defined]
    assert "dave@example.com" in message(r.text)  # type: ignore[attr-defined]  # the winner is named
    production = next(p for p in reg.aliases("fraud") if p.alias == "production")
    assert production.version == 1 and production.event.author == "dave@example.com"


# -- the guards --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "wrong", "another form's", "another server's"])
def test_csrf_token_missing_or_wrong_is_403(client: TestClient, reg: Registry, case: str) -> None:
    action = "/models/fraud/versions/3/decide"
    fields = {"stage": "production", "decision": "approve"}
    if case == "wrong":
        fields["token"] = "0" * 64
    elif case == "another form's":
        fields["token"] = token(client, "/models/fraud/versions/3", "/models/fraud/versions/3/archive")
    elif case == "another server's":
        fields["token"] = token(client_for(reg), "/models/fraud/versions/3", action)
    r = client.post(action, data=fields, headers=ORIGIN)
    assert r.status_code == 403 and "CSRF token is missing or wrong" in message(r.text)
    assert reg.state("fraud:3").approvals == {}


@pytest.mark.parametrize("headers,ok", [
    ({"origin": "http://evil.example"}, False),
    ({"origin": "null"}, False),
    ({"origin": "http://127.0.0.1:9999"}, False),
    ({"referer": "http://evil.example/models/fraud"}, False),
    ({}, False),
    ({"referer": SERVER + "/models/fraud/versions/3"}, True),
    ({"origin": SERVER}, True),
    ({"origin": "https://127.0.0.1:8000"}, True),  # a TLS-terminating proxy in front
])
def test_origin_must_be_this_server(client: TestClient, reg: Registry, headers: dict[str, str], ok: bool) -> None:
    action = "/models/fraud/versions/3/decide"
    tok = token(client, "/models/fraud/versions/3", action)
    r = client.post(action, data={"token": tok, "stage": "production", "decision": "approve"}, headers=headers,
                    follow_redirects=False)
    if ok:
        assert r.status_code == 303 and reg.state("fraud:3").approvals == {"production": [ME]}
    else:
        assert r.status_code == 403 and "cross-origin request refused" in message(r.text)
        assert reg.state("fraud:3").approvals == {}


def test_host_must_be_one_the_server_answers_to(client: TestClient, reg: Registry) -> None:
    """A DNS-rebinding page is same-origin with its own name: it could read a token, but its
    posts say its Host and are refused."""
    action = "/models/fraud/versions/3/decide"
    tok = token(client, "/models/fraud/versions/3", action)
    r = client.post(action, data={"token": tok, "stage": "production", "decision": "approve"},
                    headers={"host": "evil.example:8000", "origin": "http://evil.example:8000"})
    assert r.status_code == 403 and "requests to host" in message(r.text)
    assert reg.state("fraud:3").approvals == {}


def test_author_from_the_proxy_header(reg: Registry) -> None:
    client = client_for(reg, author_header="X-Forwarded-User")
    page, action = "/models/fraud/versions/3", "/models/fraud/versions/3/decide"
    who = {"x-forwarded-user": "bob@example.com"}
    assert "Acting as bob@example.com" in client.get(page, headers=who).text
    r = post(client, action, page, headers=who, stage="production", decision="approve")
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert reg.state("fraud:3").approvals == {"production": ["bob@example.com"]}
    tok = token(client, page, action)
    r = client.post(action, data={"token": tok, "stage": "production", "decision": "reject"}, headers=ORIGIN)
    assert r.status_code == 401 and "no X-Forwarded-User header" in message(r.text)
    r = client.post(action, data={"token": tok, "stage": "production", "decision": "reject"},
                    headers={**ORIGIN, "x-forwarded-user": "  "})
    assert r.status_code == 401
    r = client.post(action, data={"token": tok, "stage": "production", "decision": "reject"},
                    headers={**ORIGIN, "x-forwarded-user": "eve\x1b[2J@example.com"})
    assert r.status_code == 400
    assert reg.state("fraud:3").rejections == {}
    # the policy decides about the header's user as about anyone
    r = post(client, "/models/fraud/versions/1/decide", "/models/fraud/versions/1",
             headers={"x-forwarded-user": "mallory@evil.test"}, stage="production", decision="approve")
    assert r.status_code == 403 and "mallory@evil.test" in message(r.text)  # type: ignore[attr-defined]
    assert current_author() != "bob@example.com"  # the request's author did not leak into this thread


def test_forms_are_bounded(client: TestClient) -> None:
    action = "/models/fraud/versions/3/decide"
    tok = token(client, "/models/fraud/versions/3", action)
    big = client.post(action, content=b"token=" + tok.encode() + b"&reason=" + b"x" * MAX_FORM_BYTES,
                      headers={**ORIGIN, "content-type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413
    js = client.post(action, json={"token": tok}, headers=ORIGIN)
    assert js.status_code == 415
    long_reason = client.post(action, data={"token": tok, "stage": "production", "decision": "approve",
                                            "reason": "y" * 5000}, headers=ORIGIN)
    assert long_reason.status_code == 400 and "longer than 4096" in message(long_reason.text)


def test_loopback_hosts() -> None:
    assert {"127.0.0.1", "localhost", "[::1]"} <= loopback_hosts()
    assert "127.0.0.2" in loopback_hosts("127.0.0.2") and "[::1]" in loopback_hosts("::1")


def test_guard_tokens_are_bound_to_the_path() -> None:
    g = Guard("me")
    assert g.token("/models/a/versions/1/promote") != g.token("/models/a/versions/2/promote")
    assert g.token("/models/a/versions/1/promote") != Guard("me").token("/models/a/versions/1/promote")
    assert re.fullmatch(r"[0-9a-f]{64}", g.token("/x"))


# -- escaping of what the actions and the new fields show -------------------------------------
def test_hostile_reason_author_and_lineage_are_escaped(reg: Registry) -> None:
    client = client_for(reg, author_header="X-Forwarded-User")
    who = {"x-forwarded-user": f"dave{EVIL}@example.com"}
    r = post(client, "/models/fraud/versions/3/decide", "/models/fraud/versions/3", headers=who, stage="production",
             decision="approve", reason=EVIL)
    assert r.status_code == 303  # type: ignore[attr-defined]
    for page in (client.get(r.headers["location"]).text,  # type: ignore[attr-defined]
                 client.get("/models/fraud/versions/3").text, client.get("/models/hostile/versions/1").text,
                 client.get("/models/hostile").text, client.get("/").text, client.get("/models/fraud/history").text):
        assert "<script>alert" not in page
    shown = client.get(r.headers["location"]).text  # type: ignore[attr-defined]
    assert "&lt;script&gt;alert(7)&lt;/script&gt;" in flash(shown).replace("&amp;", "&")
    assert "8x H100 &lt;script&gt;alert(8)&lt;/script&gt;" in shown  # the hardware text, as text
    hostile = client.get("/models/hostile/versions/1").text
    assert "mallory&lt;script&gt;alert(7)&lt;/script&gt;@example.com" in hostile
    assert "&lt;script&gt;alert(7)&lt;/script&gt;" in hostile.split('id="form-decide"')[0]  # the tag


def test_links_are_links_only_when_http() -> None:
    assert safe_link("https://grafana.example.com/d/x") == "https://grafana.example.com/d/x"
    for bad in ("javascript:alert(1)", "data:text/html,<b>", "//evil.example/x", "https://", "http://a\nb"):
        assert safe_link(bad) is None


# -- the version page's lineage, the model page's deleted versions ------------------------------
def test_version_page_shows_the_lineage(client: TestClient) -> None:
    page = client.get("/models/fraud/versions/3").text
    block = page.split('id="lineage-more"', 1)[1].split("</table>", 1)[0]
    assert "hardware" in block and "8x H100" in block and "[given]" in block
    assert f"{COMMIT}  [from --git-commit]" in block
    assert "1 tensors in 1 safetensors file(s), blake3:" in block and "encoder.weight  F32[2, 2]" in block
    assert "dependencies" in block and "2 from requirements:requirements.txt" in block
    assert "torch==2.1.0" in block and "numpy&gt;=1.26" in block
    assert "signature" in block and "score" in block
    assert ('<a class="lineage-link" href="https://grafana.example.com/d/fraud" rel="noopener noreferrer nofollow">'
            'dashboard</a>') in block
    assert 'id="lineage-more"' not in client.get("/models/fraud/versions/1").text  # nothing recorded, no table


def test_deleted_versions_are_not_counted(client: TestClient, reg: Registry,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with acting_as(ME):
        reg.set_alias("fraud", "staging", 1, reason="move off v3")
        reg.delete("fraud", 3, reason="trained on leaked data")
    page = client.get("/models/fraud").text
    assert re.search(r'id="summary">\s*2 versions \(1 deleted\)', page)
    assert 'latest <a href="/models/fraud/versions/2">v2</a>' in page
    row = page.split('href="/models/fraud/versions/3">v3</a>', 1)[1].split("</tr>", 1)[0]
    assert "badge-deleted" in row
    data = client.get("/api/models/fraud").json()
    assert data["live"] == 2 and data["deleted"] == 1 and data["latest_version"] == 2
    assert [v["deleted"] for v in data["versions"]] == [True, False, False]
    capsys.readouterr()
    assert run(["ls", "fraud", "--deleted", "--json", "-r", reg.url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert data["versions"] == list(reversed(listed))  # the records `ls --deleted --json` prints
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["fraud"]["versions"] == 2 and models["fraud"]["version"] == 2
    row = client.get("/?q=fraud").text.split('href="/models/fraud/versions/2">v2</a>', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num">2</td>' in row  # the versions column: live ones
    assert client.get("/models/fraud/versions/3").status_code == 404


# -- the command ------------------------------------------------------------------------------
def test_cli_flags(reg: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(["ui", "-r", reg.url, "--author-header", "X-User", "--port", "0"]) == 2
    assert "--author-header names the author of write actions: it needs --allow-writes" in capsys.readouterr().err


def test_cli_warns_when_writes_listen_beyond_loopback(reg: Registry) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "casreg_cli.main", "ui", "-r", reg.url, "--host", "0.0.0.0",
                             "--port", "0", "--allow-writes", "--author-header", "X-Forwarded-User"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert "writes allowed, as the X-Forwarded-User header" in line, line
        warnings = [proc.stderr.readline(), proc.stderr.readline(), proc.stderr.readline()]
        assert any("--allow-writes on 0.0.0.0" in w and "authenticating proxy" in w for w in warnings), warnings
        assert any("taken for any Host name" in w and "--allowed-host" in w for w in warnings), warnings
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_allowed_host_is_checked_and_reaches_the_server(reg: Registry,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(["ui", "-r", reg.url, "--allowed-host", "models.example.com", "--port", "0"]) == 2
    assert "--allowed-host names where write actions may be posted: it needs --allow-writes" in capsys.readouterr().err
    for bad in ("https://models.example.com", "models.example.com:443", "a b"):
        assert run(["ui", "-r", reg.url, "--allow-writes", "--allowed-host", bad, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "give a host name without scheme or port" in err, err
    # behind a proxy (--author-header) any Host was taken; --allowed-host names the proxy's
    proc = subprocess.Popen([sys.executable, "-m", "casreg_cli.main", "ui", "-r", reg.url, "--port", "0",
                             "--allow-writes", "--author-header", "X-User", "--allowed-host", "Models.Example.com"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0]
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        import http.client

        for host, refused in (("evil.example", True), ("models.example.com", False)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/models/fraud/versions/3/decide", body="token=x",
                         headers={"Host": f"{host}:{port}", "Origin": f"http://{host}:{port}", "X-User": "bob",
                                  "Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            body = resp.read().decode()
            conn.close()
            # the Host check comes first: a named host passes it and is refused later, for its token
            assert resp.status == 403 and ("requests to host" in body) == refused, (host, body[:300])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_server_never_signs_with_the_starting_users_key(reg: Registry, tmp_path: Path) -> None:
    """The library signs every event with ``$CASREG_SIGNING_KEY`` when no key is given:
    a write-mode server drops it, so nobody reaching its port signs as its owner."""
    env = {**os.environ, "CASREG_SIGNING_KEY": str(tmp_path / "owner.pem")}
    proc = subprocess.Popen([sys.executable, "-m", "casreg_cli.main", "ui", "-r", reg.url, "--port", "0",
                             "--allow-writes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        warning = proc.stderr.readline()
        assert "CASREG_SIGNING_KEY is ignored by casreg ui" in warning and "never signed" in warning, warning
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_other_methods_on_action_urls(client: TestClient) -> None:
    r = client.get("/models/fraud/versions/3/promote")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "only POST" in message(r.text)
    r = client.post("/models/fraud/versions/3", headers=ORIGIN)
    assert r.status_code == 405 and "POST" not in r.headers["allow"] and "GET" in r.headers["allow"]
