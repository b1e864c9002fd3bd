"""Hooks and secrets (docs/hooks.md, docs/security.md): changing hooks needs the policy's
``policy`` permission; credentials never enter the hooks config; and no error, log line
or recorded event shows a URL's credentials (casreg/redact.py)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import casreg
from casreg.errors import CasregError, InvalidInputError, NotFoundError, PolicyError, StorageError
from casreg.governance.hooks import HOOKS_KEY, InvalidHooksError, dispatch, parse_hooks, read_hooks, write_hooks
from casreg.keys import REGISTRY_EVENTS
from casreg.ledger.history import read_events
from casreg.redact import is_secret_name, redact_url, url_credentials
from casreg_cli.main import run

POLICY = """
[roles]
admin = ["alice"]
ml = ["alice", "mallory"]

[permissions]
push = ["ml"]
policy = ["admin"]
"""
SECRET = "hunter2-very-secret"


@pytest.fixture(autouse=True)
def _hooks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASREG_HOOKS", raising=False)


@pytest.fixture
def reg(tmp_path: Path, author: Callable[[str], None]) -> casreg.Registry:
    """A registry whose policy lets only alice (admin) change the policy."""
    author("alice")
    r = casreg.Registry(tmp_path / "reg")
    r.set_policy(POLICY)
    return r


def marker_hook(marker: Path) -> str:
    """A command hook that leaves ``marker`` behind when it runs (what an attacker's
    hook would do inside someone else's process)."""
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"]
    return f'[[hooks]]\nname = "evil"\ncommand = {json.dumps(argv)}\n'


def hooks_set_events(store: Any) -> list[Any]:
    return [e for e in read_events(store, REGISTRY_EVENTS, pointers=False) if e.kind == "hooks.set"]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- the permission ---------------------------------------------------------------------------
def test_changing_hooks_needs_the_policy_permission(reg: casreg.Registry, tmp_path: Path,
                                                    author: Callable[[str], None]) -> None:
    marker = tmp_path / "ran"
    author("mallory")  # may push, may not change the policy
    with pytest.raises(PolicyError, match=r"changing the hooks refused: mallory holds none of the roles allowed "
                                          r"to policy \(admin\)") as caught:
        write_hooks(reg.store, marker_hook(marker))
    assert caught.value.exit_code == 8 and "\n" not in str(caught.value)
    assert read_hooks(reg.store) is None and hooks_set_events(reg.store) == []  # nothing was written
    (tmp_path / "m.bin").write_text("weights")
    reg.push("m", tmp_path / "m.bin")  # the next user's action runs no hook of mallory's
    assert not marker.exists()

    author("alice")
    cfg = write_hooks(reg.store, marker_hook(marker))
    assert [h.name for h in cfg.hooks] == ["evil"]
    assert [e.author for e in hooks_set_events(reg.store)] == ["alice"]
    reg.push("m", tmp_path / "m.bin", alias="canary")  # an admin's hook does run
    assert marker.read_text() == "ran"


def test_cli_hooks_set_without_the_permission_is_one_line_exit_8(
        reg: casreg.Registry, tmp_path: Path, author: Callable[[str], None], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    config = tmp_path / "hooks.toml"
    config.write_text(marker_hook(tmp_path / "ran"))
    author("mallory")
    code, out, err = cli(capsys, "hooks", "set", str(config))
    assert code == 8 and out == "" and err.count("\n") == 1
    assert err.startswith("casreg: error: changing the hooks refused: mallory") and "policy" in err
    assert read_hooks(reg.store) is None
    author("alice")
    code, out, err = cli(capsys, "hooks", "set", str(config))
    assert code == 0 and "hooks set: 1 hook (evil)" in out, err


def test_without_a_policy_or_a_policy_permission_anyone_may(tmp_path: Path, author: Callable[[str], None]) -> None:
    """As for the policy itself: no policy in force, or one that does not restrict the
    ``policy`` action, leaves hooks open to everyone."""
    author("mallory")
    r = casreg.Registry(tmp_path / "reg")
    write_hooks(r.store, '[[hooks]]\nname = "a"\ncommand = "true"\n')
    r.set_policy("[roles]\nadmin = [\"alice\"]\n[permissions]\npush = [\"admin\"]\n")
    write_hooks(r.store, '[[hooks]]\nname = "b"\ncommand = "true"\n')
    cfg = read_hooks(r.store)
    assert cfg is not None and [h.name for h in cfg.hooks] == ["b"]


# -- credentials in the config ---------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    f"https://user:{SECRET}@hooks.example.com/x",
    f"https://{SECRET}@hooks.example.com/x",
    "https://@hooks.example.com/x",
    f"https://hooks.example.com/x?token={SECRET}",
    f"https://hooks.example.com/x?team=ml&Access_Token={SECRET}",
    f"https://hooks.example.com/x?API_KEY={SECRET}",
    f"https://hooks.example.com/x?sig={SECRET}",
    f"https://hooks.example.com/x?X-Amz-Signature={SECRET}",
    f"https://hooks.example.com/x?password={SECRET}",
    f"https://hooks.example.com/x?auth={SECRET}",
    f"https://hooks.example.com/x?secret={SECRET}",
    f"https://hooks.example.com/x#access_token={SECRET}",
])
def test_urls_with_credentials_are_refused(url: str) -> None:
    with pytest.raises(InvalidHooksError) as caught:
        parse_hooks(f'[[hooks]]\nname = "a"\nurl = "{url}"\n')
    message = str(caught.value)
    assert "carries a credential" in message and "environment variable" in message and "(line 3)" in message
    assert SECRET not in message and "\n" not in message
    assert parse_hooks(f'[[hooks]]\nname = "a"\nurl = "{url}"\n', stored=True)[0].url == url  # an old config reads


@pytest.mark.parametrize("command", [f'"curl -d @- https://bot:{SECRET}@chat.example.com/x"',
                                     f'["curl", "https://chat.example.com/x?token={SECRET}"]'])
def test_commands_with_credentials_in_urls_are_refused(command: str) -> None:
    with pytest.raises(InvalidHooksError, match="command carries a URL with a credential.*environment") as caught:
        parse_hooks(f'[[hooks]]\nname = "a"\ncommand = {command}\n')
    assert SECRET not in str(caught.value)
    assert parse_hooks('[[hooks]]\nname = "a"\ncommand = "curl -H \\"Authorization: Bearer $TOKEN\\" https://h/x"\n')


@pytest.mark.parametrize("url", ["https://hooks.example.com/x", "https://hooks.example.com/x?team=ml&author=bob",
                                 "http://127.0.0.1:8080/hook/path-part", "https://h.example.com/x?design=1"])
def test_urls_without_credentials_are_accepted(url: str) -> None:
    assert parse_hooks(f'[[hooks]]\nname = "a"\nurl = "{url}"\n')[0].url == url


@pytest.mark.parametrize("header", ["Authorization = \"Bearer abc123\"", "X-Api-Key = \"abc123\"",
                                    "X-Auth-Token = \"${TOKEN}abc\"", "Cookie = \"session=abc\"",
                                    "\"X-Hub-Signature\" = \"sha1=abc\""])
def test_literal_secrets_in_headers_are_refused(header: str) -> None:
    with pytest.raises(InvalidHooksError, match=r"holds a literal value; secrets are never stored.*\$\{VAR\}"):
        parse_hooks(f'[[hooks]]\nname = "a"\nurl = "https://h.example.com"\nheaders = {{ {header} }}\n')


def test_headers_name_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = parse_hooks('[[hooks]]\nname = "a"\nurl = "https://h.example.com"\n'
                       'headers = { Authorization = "Bearer ${DEPLOY_TOKEN}", X-Team = "fraud", '
                       'X-Api-Key = "${API_KEY}" }\n')[0]
    assert hook.header_values({"DEPLOY_TOKEN": "t0k", "API_KEY": "k3y"}) == (
        {"Authorization": "Bearer t0k", "X-Team": "fraud", "X-Api-Key": "k3y"}, None)
    assert hook.header_values({"DEPLOY_TOKEN": "t0k"}) == ({}, "API_KEY")
    for bad, match in (('"X Team" = "a"', "not a valid HTTP header name"),
                       ('X-Team = "a\\r\\nX-Injected: 1"', "control characters"),
                       ('X-Team = "${not-a-var}"', "does not name an environment variable")):
        with pytest.raises(InvalidHooksError, match=match):
            parse_hooks(f'[[hooks]]\nname = "a"\nurl = "https://h.example.com"\nheaders = {{ {bad} }}\n')


class Receiver:
    """An HTTP receiver on 127.0.0.1 that records each request's headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.headers.append(dict(self.headers))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_a_header_secret_comes_from_the_environment_of_the_sender(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    r = casreg.Registry(tmp_path / "reg")
    write_hooks(r.store, f'[[hooks]]\nname = "a"\nurl = "{receiver.url}"\nretries = 0\n'
                         'headers = { Authorization = "Bearer ${CASREG_TEST_TOKEN}" }\n')
    monkeypatch.setenv("CASREG_TEST_TOKEN", SECRET)
    [res] = dispatch(r.store, {"kind": "push", "name": "m"})
    assert res.ok and receiver.headers[-1]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in r.store.read(HOOKS_KEY).decode()  # the registry holds the variable's name only
    monkeypatch.delenv("CASREG_TEST_TOKEN")
    [res] = dispatch(r.store, {"kind": "push", "name": "m"})
    assert not res.ok and "CASREG_TEST_TOKEN" in (res.error or "") and len(receiver.headers) == 1  # nothing sent


def old_config(url: str) -> str:
    """What an older casreg let anyone store: credentials in the URL and in a header."""
    return (f'[[hooks]]\nname = "old"\nurl = "{url}"\nretries = 0\n'
            f'headers = {{ Authorization = "Bearer {SECRET}", X-Team = "fraud" }}\n')


def test_hooks_show_never_prints_a_credential_of_an_old_config(tmp_path: Path, receiver: Receiver,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    r = casreg.Registry(tmp_path / "reg")
    host = receiver.url.removeprefix("http://")
    r.store.swap(HOOKS_KEY, old_config(f"http://bot:{SECRET}@{host}?token={SECRET}&team=ml").encode(), None)
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    code, out, err = cli(capsys, "hooks", "show")
    assert code == 0, err
    assert SECRET not in out and "credentials redacted" in out
    assert f"http://***@{host}?token=***&team=ml" in out and 'Authorization = "***"' in out
    assert 'X-Team = "fraud"' in out
    code, out, err = cli(capsys, "hooks", "show", "--json")
    assert code == 0 and SECRET not in out
    shown = json.loads(out)["hooks"][0]
    assert shown["headers"] == {"Authorization": "***", "X-Team": "fraud"} and "***@" in shown["url"]
    code, out, err = cli(capsys, "hooks", "test")
    assert SECRET not in out + err
    # an old config keeps working: its deliveries go out as before
    r.store.swap(HOOKS_KEY, old_config(f"{receiver.url}?token={SECRET}").encode(), read_hooks(r.store).token)
    [res] = dispatch(r.store, {"kind": "push", "name": "m"})
    assert res.ok and receiver.headers[-1]["Authorization"] == f"Bearer {SECRET}"
    code, out, err = cli(capsys, "hooks", "test")
    assert code == 0 and SECRET not in out + err


# -- redaction ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("http://user:pw@127.0.0.1:9000", "http://***@127.0.0.1:9000"),
    ("connect to 'https://u:p@ss@h.example.com/a?b=1' failed", "connect to 'https://***@h.example.com/a?b=1' failed"),
    ("https://tok@h/x", "https://***@h/x"),
    ("https://h/x?token=abc&team=ml&Api_Key=k;sig=s", "https://h/x?token=***&team=ml&Api_Key=***;sig=***"),
    ("https://h/x?PASSWORD=a#access_token=b", "https://h/x?PASSWORD=***#access_token=***"),
    ("s3://bucket/prefix and /local/path@x", "s3://bucket/prefix and /local/path@x"),
    ("https://h/user@example.com/x", "https://h/user@example.com/x"),  # '@' in a path is no userinfo
    ("no url here: token=abc user:pw@host", "no url here: token=abc user:pw@host"),
    ("https://hooks.example.com/services/T0/B0/path-token", "https://hooks.example.com/services/T0/B0/path-token"),
    ("casreg://m@production/weights.bin", "casreg://m@production/weights.bin"),  # NAME@ALIAS, no userinfo
    ("casreg://m@production/x?token=t", "casreg://m@production/x?token=***"),
])
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected
    assert redact_url(expected) == expected  # redacting twice is redacting once
    assert bool(url_credentials(text)) == (expected != text)


def test_secret_names() -> None:
    for name in ("token", "access_token", "api_key", "apiKey", "X-Amz-Signature", "Authorization", "X-Auth-Token",
                 "sig", "password", "client_secret", "PRIVATE-TOKEN", "Cookie"):
        assert is_secret_name(name), name
    for name in ("team", "author", "name", "design", "region", "X-Team", "page"):
        assert not is_secret_name(name), name


def test_errors_redact_any_url_they_quote() -> None:
    for err in (StorageError(f"cannot reach http://u:{SECRET}@h:1/x"), NotFoundError(f"no https://h/x?token={SECRET}"),
                PolicyError(f"https://a:{SECRET}@h"), InvalidInputError(f"'https://{SECRET}@h'")):
        assert SECRET not in str(err) and SECRET not in repr(err) and SECRET not in str(err.args)
        assert "***" in str(err)


def test_s3_endpoint_credentials_are_redacted_from_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_S3_ENDPOINT_URL", "http://user:secret@127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "casreg-test")  # credentials, so the request reaches the endpoint
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "casreg-test-key")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    r = casreg.Registry("s3://bucket/x")
    assert "secret" not in r.store.endpoint  # type: ignore[attr-defined]
    with pytest.raises(CasregError) as caught:
        r.resolve("m")
    message = str(caught.value)
    assert isinstance(caught.value, StorageError) and "***@127.0.0.1:1" in message
    assert "secret" not in message


@pytest.mark.parametrize("url", [f"https://user:{SECRET}@h.example.com/x", f"s3://user:{SECRET}@bucket/x",
                                 f"s3://bucket?token={SECRET}/x", f"gs://bucket/x?token={SECRET}"])
def test_registry_urls_are_redacted_from_errors(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CasregError) as caught:
        casreg.Registry(url)
    assert SECRET not in str(caught.value) and "***" in str(caught.value)
    code, out, err = cli(capsys, "ls", "--registry", url)
    assert code in (2, 7) and err.count("\n") == 1 and SECRET not in err and "***" in err


def test_failed_deliveries_record_and_log_no_credential(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A command hook whose error names a URL with credentials (from its environment, as
    it should be): the hook.failed event, the log line and ``casreg log`` show it redacted."""
    r = casreg.Registry(tmp_path / "reg")
    monkeypatch.setenv("CASREG_TEST_CHAT_URL", f"https://bot:{SECRET}@chat.example.com/x?token={SECRET}")
    script = "import os, sys; sys.exit('cannot post to ' + os.environ['CASREG_TEST_CHAT_URL'])"
    command = json.dumps([sys.executable, "-c", script])
    write_hooks(r.store, f'[[hooks]]\nname = "chat"\nretries = 0\ncommand = {command}\n')
    (tmp_path / "m.bin").write_text("weights")
    with caplog.at_level(logging.WARNING, logger="casreg.governance.hooks"):
        r.push("m", tmp_path / "m.bin")
    assert "not delivered" in caplog.text and SECRET not in caplog.text
    [failed] = [e for e in r.log("m") if e.kind == "hook.failed"]
    recorded = json.dumps(failed.to_dict(), default=str)
    assert SECRET not in recorded and "https://***@chat.example.com/x?token=***" in recorded
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    code, out, err = cli(capsys, "log", "m")
    assert code == 0 and "hook.failed" in out and SECRET not in out + err


@pytest.mark.parametrize("hook", ['url = "http://127.0.0.1:notaport/x"', "command = \"echo 'unbalanced\""])
def test_an_odd_hook_never_fails_the_event(tmp_path: Path, hook: str) -> None:
    """A hook whose target cannot even be named (a bad port stored before ports were
    checked, a command with an unbalanced quote) fails its delivery, recorded, not the
    push (both made dispatch raise after the push was committed)."""
    r = casreg.Registry(tmp_path / "reg")
    r.store.swap(HOOKS_KEY, f'[[hooks]]\nname = "odd"\nretries = 0\n{hook}\n'.encode(), None)
    (tmp_path / "m.bin").write_text("weights")
    v = r.push("m", tmp_path / "m.bin")
    assert r.resolve("m").digest == v.digest
    failed = [e.details["hook"] for e in r.log("m") if e.kind == "hook.failed"]
    assert failed == (["(config)"] if "url" in hook else ["odd"])  # a bad port: the config itself is refused
    if "url" in hook:
        with pytest.raises(InvalidHooksError, match="must be an http"):
            parse_hooks(f'[[hooks]]\nname = "odd"\n{hook}\n')
