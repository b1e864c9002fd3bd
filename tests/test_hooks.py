"""Hooks (casreg/governance/hooks.py, docs/hooks.md), against a real HTTP receiver on 127.0.0.1 that
checks the HMAC of every delivery, and real subprocesses for command hooks and the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from casreg import ConflictError, Registry
from casreg.governance.hooks import (
    HOOKS_KEY,
    InvalidHooksError,
    dispatch,
    parse_hooks,
    read_hooks,
    sign,
    verify_signature,
    write_hooks,
)

CLI = Path(sys.executable).with_name("casreg")
SECRET = "s3cr3t-for-tests"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("CASREG_USER", "hooks@example.test")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("CASREG_TEST_HOOK_SECRET", SECRET)
    monkeypatch.delenv("CASREG_HOOKS", raising=False)
    yield


class Receiver:
    """A webhook receiver: records every request and whether its signature verifies, as
    a real receiver would (HMAC-SHA256 of the exact body, constant-time compare)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.deliveries: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                header = self.headers.get("X-Casreg-Signature", "")
                expected = "sha256=" + hmac.new(outer.secret, body, hashlib.sha256).hexdigest()
                with outer.lock:
                    status = outer.fail_next.pop(0) if outer.fail_next else 204
                    outer.deliveries.append({"body": body, "json": json.loads(body), "headers": dict(self.headers),
                                             "valid": hmac.compare_digest(expected, header), "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/path-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/hook"


def config(url: str, **extra: Any) -> str:
    lines = ['[[hooks]]', 'name = "notify"', f'url = "{url}"', 'secret_env = "CASREG_TEST_HOOK_SECRET"',
             'backoff = 0.01', 'timeout = 5']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def model(tmp_path: Path, text: str = "weights v1") -> Path:
    p = tmp_path / "model.bin"
    p.write_text(text)
    return p


# -- deliveries ---------------------------------------------------------------------------------
def test_push_and_alias_moves_deliver_signed_payloads(tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(tmp_path / "reg")
    write_hooks(reg.store, config(receiver.url))
    v1 = reg.push("fraud", model(tmp_path))
    reg.set_alias("fraud", "production", v1.version, reason="first")
    v2 = reg.push("fraud", model(tmp_path, "weights v2"))
    reg.set_alias("fraud", "production", v2.version)

    kinds = [d["json"]["event"]["kind"] for d in receiver.deliveries]
    assert kinds == ["push", "alias.set", "push", "alias.set"], kinds
    assert all(d["valid"] for d in receiver.deliveries)  # the receiver verified every HMAC
    push, move = receiver.deliveries[0]["json"], receiver.deliveries[1]["json"]
    assert push["event"]["name"] == "fraud" and push["event"]["version"] == 1 and push["event"]["digest"] == v1.digest
    assert move["event"]["alias"] == "production" and move["event"]["to_digest"] == v1.digest
    assert move["event"]["reason"] == "first" and move["registry"] == reg.url and move["hook"] == "notify"
    last = receiver.deliveries[3]["json"]["event"]
    assert (last["from_version"], last["to_version"]) == (1, 2)
    for d in receiver.deliveries:
        h = d["headers"]
        assert h["X-Casreg-Delivery"] == d["json"]["delivery"] and h["X-Casreg-Event"] == d["json"]["event"]["kind"]
        assert abs(int(h["X-Casreg-Timestamp"]) - time.time()) < 60
    # the signature covers the exact body: one changed byte fails verification
    body = receiver.deliveries[0]["body"]
    header = receiver.deliveries[0]["headers"]["X-Casreg-Signature"]
    assert verify_signature(SECRET, body, header)
    assert not verify_signature(SECRET, body.replace(b"fraud", b"frauD", 1), header)
    assert not verify_signature("another secret", body, header)
    assert sign(SECRET, body) == header


def test_failed_attempts_are_retried_with_the_same_delivery_id(tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(tmp_path / "reg")
    write_hooks(reg.store, config(receiver.url, retries=3))
    receiver.fail_next = [503, 500]
    v = reg.push("m", model(tmp_path))
    assert [d["status"] for d in receiver.deliveries] == [503, 500, 204]
    assert len({d["json"]["delivery"] for d in receiver.deliveries}) == 1
    assert [d["headers"]["X-Casreg-Attempt"] for d in receiver.deliveries] == ["1", "2", "3"]
    assert all(d["valid"] for d in receiver.deliveries)
    assert not [e for e in reg.log("m") if e.kind == "hook.failed"]
    assert v.version == 1


def test_a_rejection_is_not_retried_and_is_recorded(tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(tmp_path / "reg")
    write_hooks(reg.store, config(receiver.url, retries=3))
    receiver.fail_next = [401]
    reg.push("m", model(tmp_path))
    assert len(receiver.deliveries) == 1  # 4xx: the receiver refused it; retrying would not help
    failed = [e for e in reg.log("m") if e.kind == "hook.failed"]
    assert len(failed) == 1 and "HTTP 401" in (failed[0].reason or "")


def test_hook_url_that_does_not_answer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(tmp_path / "reg")
    url = dead_url()
    write_hooks(reg.store, config(url, retries=2))
    t = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="casreg.governance.hooks"):
        v = reg.push("m", model(tmp_path))
        reg.set_alias("m", "production", v.version)
    assert time.monotonic() - t < 30
    # the events stand
    assert reg.resolve("m:1").digest == v.digest and reg.resolve("m@production").digest == v.digest
    # the failures are logged and recorded, visible in `casreg log`
    assert caplog.text.count("not delivered after 3 attempt(s)") == 2
    failed = [e for e in reg.log("m") if e.kind == "hook.failed"]
    assert len(failed) == 2
    assert failed[0].details["event_kind"] == "push" and failed[1].details["event_kind"] == "alias.set"
    assert failed[0].details["attempts"] == 3 and failed[0].to_digest == v.digest
    assert "path-token" not in json.dumps([e.to_dict() for e in failed], default=str)  # host only, never the path
    p = subprocess.run([str(CLI), "log", "m", "--registry", str(tmp_path / "reg")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("hook.failed") == 2 and "cannot reach http://127.0.0.1" in p.stdout


def test_missing_secret_sends_nothing_unsigned(tmp_path: Path, receiver: Receiver,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "reg")
    write_hooks(reg.store, config(receiver.url))
    monkeypatch.delenv("CASREG_TEST_HOOK_SECRET")
    reg.push("m", model(tmp_path))
    assert receiver.deliveries == []
    failed = [e for e in reg.log("m") if e.kind == "hook.failed"]
    assert len(failed) == 1 and "CASREG_TEST_HOOK_SECRET" in (failed[0].reason or "")


def test_command_hook_gets_the_event_on_stdin_and_in_its_environment(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    out = tmp_path / "seen.json"
    script = ("import json, os, sys; json.dump({'stdin': json.load(sys.stdin), "
              "'env': {k: v for k, v in os.environ.items() if k.startswith('CASREG_')}}, "
              f"open({str(out)!r}, 'w'))")
    write_hooks(reg.store, '[[hooks]]\nname = "cmd"\nevents = ["alias.*"]\n'
                           f'command = {json.dumps([sys.executable, "-c", script])}\n')
    v = reg.push("m", model(tmp_path))
    assert not out.exists()  # events = alias.* : a push does not fire it
    reg.set_alias("m", "staging", v.version)
    seen = json.loads(out.read_text())
    assert seen["stdin"]["event"]["kind"] == "alias.set" and seen["stdin"]["event"]["to_digest"] == v.digest
    env = seen["env"]
    assert (env["CASREG_EVENT"], env["CASREG_NAME"], env["CASREG_ALIAS"]) == ("alias.set", "m", "staging")
    assert env["CASREG_DIGEST"] == v.digest and env["CASREG_VERSION"] == "1"
    assert env["CASREG_DELIVERY"] == seen["stdin"]["delivery"]


def test_failing_command_is_retried_then_recorded(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    counter = tmp_path / "runs"
    script = f"import sys; open({str(counter)!r}, 'a').write('x'); sys.exit('model server unreachable')"
    write_hooks(reg.store, f'retries = 2\nbackoff = 0.01\n[[hooks]]\nname = "cmd"\n'
                           f'command = {json.dumps([sys.executable, "-c", script])}\n')
    results = dispatch(reg.store, {"kind": "push", "name": "m", "version": 1, "digest": "blake3:" + "a" * 64})
    assert counter.read_text() == "xxx" and len(results) == 1 and not results[0].ok
    assert "exited with 1: model server unreachable" in (results[0].error or "") and results[0].recorded


def test_filters_on_kind_model_and_alias(tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(tmp_path / "reg")
    write_hooks(reg.store, config(receiver.url, events=["alias.*", "promote"], models=["fraud-*"],
                                  aliases=["production"]))
    v = reg.push("fraud-eu", model(tmp_path))
    reg.set_alias("fraud-eu", "staging", v.version)
    reg.push("churn", model(tmp_path, "other"))
    reg.set_alias("churn", "production", 1)
    assert receiver.deliveries == []
    reg.set_alias("fraud-eu", "production", v.version)
    assert [(d["json"]["event"]["name"], d["json"]["event"]["alias"]) for d in receiver.deliveries] == [
        ("fraud-eu", "production")]


def test_dispatch_never_raises(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.store.swap(HOOKS_KEY, b"[[hooks]\nbroken", None)  # damaged behind casreg's back
    v = reg.push("m", model(tmp_path))  # the push stands
    assert reg.resolve("m").digest == v.digest
    failed = [e for e in reg.log("m") if e.kind == "hook.failed"]
    assert len(failed) == 1 and "cannot read the hooks config" in (failed[0].reason or "")
    assert dispatch(reg.store, {"kind": "hook.failed", "name": "m"}) == []  # no hooks on hook events
    assert dispatch(reg.store, {"no": "kind"}) == []


# -- the configuration ---------------------------------------------------------------------------
def test_config_errors_name_the_place(tmp_path: Path) -> None:
    with pytest.raises(InvalidHooksError, match=r"line 3, column"):
        parse_hooks('[[hooks]]\nname = "a"\nurl = http://x\n')
    with pytest.raises(InvalidHooksError, match=r"secrets are never stored.*secret_env"):
        parse_hooks('[[hooks]]\nname = "a"\nurl = "http://x"\nsecret = "hunter2"\n')
    with pytest.raises(InvalidHooksError, match=r"unknown key 'evnts' \(line 3\)"):
        parse_hooks('[[hooks]]\nname = "a"\nevnts = ["push"]\nurl = "http://x"\n')
    with pytest.raises(InvalidHooksError, match="exactly one of url"):
        parse_hooks('[[hooks]]\nname = "a"\nurl = "http://x"\ncommand = "true"\n')
    with pytest.raises(InvalidHooksError, match="http:// or https://"):
        parse_hooks('[[hooks]]\nname = "a"\nurl = "ftp://x"\n')
    with pytest.raises(InvalidHooksError, match="retries.*from 0 to 10"):
        parse_hooks('[[hooks]]\nname = "a"\nurl = "http://x"\nretries = 99\n')
    with pytest.raises(InvalidHooksError, match="two hooks are named"):
        parse_hooks('[[hooks]]\nname = "a"\ncommand = "true"\n[[hooks]]\nname = "a"\ncommand = "true"\n')
    hooks = parse_hooks('retries = 1\n[[hooks]]\nname = "a"\ncommand = "true"\n[[hooks]]\nname = "b"\n'
                        'command = ["true"]\nretries = 0\nevents = "push"\n')
    assert [(h.retries, h.events, h.command) for h in hooks] == [(1, ("*",), "true"), (0, ("push",), ("true",))]


def test_set_is_compare_and_swap(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    first = write_hooks(reg.store, '[[hooks]]\nname = "a"\ncommand = "true"\n', expected_digest=None)
    with pytest.raises(ConflictError):
        write_hooks(reg.store, '[[hooks]]\nname = "b"\ncommand = "true"\n', expected_digest=None)
    second = write_hooks(reg.store, '[[hooks]]\nname = "b"\ncommand = "true"\n', expected_digest=first.digest)
    with pytest.raises(ConflictError, match="changed meanwhile"):
        write_hooks(reg.store, '[[hooks]]\nname = "c"\ncommand = "true"\n', expected_digest=first.digest)
    current = read_hooks(reg.store)
    assert current is not None and current.digest == second.digest and [h.name for h in current.hooks] == ["b"]
    from casreg.keys import REGISTRY_EVENTS
    from casreg.ledger.history import read_events

    changes = [e for e in read_events(reg.store, REGISTRY_EVENTS, pointers=False) if e.kind == "hooks.set"]
    assert len(changes) == 2 and changes[-1].details["previous"] == first.digest


# -- the CLI ---------------------------------------------------------------------------------------
def cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, input=stdin)


def test_cli_hooks_set_show_test(tmp_path: Path, receiver: Receiver) -> None:
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[hooks]]\nname = "notify"\nurl = "http://x\n')
    p = cli("hooks", "set", str(bad), env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "line 3, column" in p.stderr, p.stderr
    p = cli("hooks", "set", str(tmp_path / "missing.toml"), env=env)
    assert p.returncode == 3 and "missing.toml" in p.stderr

    good = tmp_path / "hooks.toml"
    good.write_text(config(receiver.url))
    p = cli("hooks", "set", str(good), "--json", env=env)
    assert p.returncode == 0, p.stderr
    digest = json.loads(p.stdout)["digest"]
    p = cli("hooks", "show", env=env)
    assert digest in p.stdout and receiver.url in p.stdout and SECRET not in p.stdout
    shown = json.loads(cli("hooks", "show", "--json", env=env).stdout)
    assert shown["hooks"][0]["name"] == "notify" and shown["digest"] == digest
    p = cli("hooks", "set", "-", "--if-digest", "none", env=env, stdin=good.read_text())
    assert p.returncode == 5 and "changed meanwhile" in p.stderr

    p = cli("hooks", "test", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["ok"] and receiver.deliveries[-1]["json"]["event"]["kind"] == "test"
    assert receiver.deliveries[-1]["valid"]
    good.write_text(config(dead_url(), retries=0))
    assert cli("hooks", "set", str(good), "-q", env=env).returncode == 0
    p = cli("hooks", "test", env=env)
    assert p.returncode == 1 and "FAILED: cannot reach" in p.stdout
