"""Signed versions (docs/signing.md): keys, signatures as model_signing bundles, and the
checks at pull time.

On a local directory and on S3 (the real SeaweedFS): a version signed at push or later
verifies after ``casreg pull`` with the OpenSSF model-signing library itself (a directory
version and a file version); ``pull --require-signed-by`` refuses an unsigned version, one
signed by another key (PolicyError, exit 8) and a forged, damaged or misplaced signature
(IntegrityError, exit 6), each in one line, before writing anything. Signature objects
read from the registry are hostile: malformed or oversized ones are one-line errors naming
the object.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from inprocess_cli import Run, fails, ok, run_cli, run_executable

from casreg import IntegrityError, Registry
from casreg.errors import PolicyError
from casreg.keys import parse_pointer_key, parse_signature_key, signature_key, signatures_prefix

HEX_A, HEX_B = "ab" * 32, "cd" * 32




def model_signing_verifies(path: Path, bundle: Path, public_key: Path) -> None:
    """model_signing's own verifier (its Python API; 1.1.1's ``verify key`` command hashes
    with SHA-256 whatever the signature says, docs/signing.md)."""
    import model_signing

    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(path, bundle)



@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Private key files of alice and bob (their public keys beside them, ``.pub``)."""
    from casreg.governance.signatures import generate_keypair

    (tmp_path / "keys").mkdir()
    out = {}
    for who in ("alice", "bob"):
        generate_keypair(tmp_path / "keys" / f"{who}.pem")
        out[who] = tmp_path / "keys" / f"{who}.pem"
    return out


def model_dir(root: Path, seed: int) -> Path:
    d = root / f"model{seed}"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"seed": seed}))
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\n" * (seed + 1))
    (d / "weights.bin").write_bytes(os.urandom(70_000 + seed))
    (d / ".gitattributes").write_text("*.bin filter=lfs\n")  # model_signing skips it; casreg signs it
    (d / "empty").mkdir()
    return d


# -- the key layout -------------------------------------------------------------------------------------
def test_signature_keys_parse_back_and_nothing_else_parses_as_one() -> None:
    key = signature_key(HEX_A, HEX_B)
    assert key == f"signatures/{HEX_A}/{HEX_B}.sig.json" and key.startswith(signatures_prefix(HEX_A))
    assert parse_signature_key(key) == (HEX_A, HEX_B)
    for other in (f"signatures/{HEX_A}/{HEX_B}.json", f"signatures/{HEX_A[:62]}/{HEX_B}.sig.json",
                  f"signatures/{HEX_A}/{HEX_B}.sig.json.tmp", f"pointers/m/{HEX_B}.json", key.upper()):
        assert parse_signature_key(other) is None, other
    assert parse_pointer_key(key) is None
    with pytest.raises(ValueError):
        signature_key(HEX_A, "../" + HEX_B[3:])


# -- keys generate ---------------------------------------------------------------------------------------
def test_keys_generate_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), NO_COLOR="1")
    p = ok(run_cli(["keys", "generate", "--out", "k.pem", "--json"], env, tmp_path))
    doc = json.loads(p.stdout)
    private, public = tmp_path / "k.pem", tmp_path / "k.pem.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert "PRIVATE" not in p.stdout + p.stderr and private.read_text().split("\n")[1] not in p.stdout
    from casreg.governance.signatures import read_public_key

    assert doc["fingerprint"] == read_public_key(public).fingerprint and doc["public_key"] == str(public)
    before = private.read_bytes()
    fails(run_cli(["keys", "generate", "--out", "k.pem"], env, tmp_path), 4, "k.pem", "already exists")
    assert private.read_bytes() == before
    (tmp_path / "w.bin").write_bytes(b"weights")
    fails(run_cli(["push", "m", "w.bin", "--sign", "k.pem.pub", "-r", str(tmp_path / "reg")], env, tmp_path), 2,
          "not a PEM private key")
    assert not (tmp_path / "reg").exists()  # refused before anything was stored


# -- sign, pull, verify with model_signing: local and S3 ----------------------------------------------------
def test_signed_versions_verify_after_pull_with_model_signing(cli: Run, keys: dict[str, Path], tmp_path: Path) -> None:
    alice, alice_pub = keys["alice"], Path(f"{keys['alice']}.pub")
    src = model_dir(tmp_path, 1)
    pushed = json.loads(ok(cli("push", "m", str(src), "--sign", str(alice), "--json")).stdout)
    assert pushed["signature"]["status"] == "verified"
    ok(cli("pull", "m:1", "out/", "--require-signed-by", str(alice_pub)))
    ok(cli("verify-signature", "m:1", "--key", str(alice_pub), "--save", "m1.sig.json"))
    model_signing_verifies(tmp_path / "out" / "m", tmp_path / "m1.sig.json", alice_pub)
    # a file version: the pulled file itself is the model
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(os.urandom(50_000))
    ok(cli("push", "f", str(weights)))
    assert "signed f:1 with key" in ok(cli("sign", "f:1", "--key", str(alice))).stdout
    ok(cli("pull", "f:1", "pulled/", "--require-signed-by", str(alice_pub)))
    ok(cli("verify-signature", "f:1", "--key", str(alice_pub), "--save", "f1.sig.json"))
    model_signing_verifies(tmp_path / "pulled" / "w.safetensors", tmp_path / "f1.sig.json", alice_pub)
    # model_signing does check the bytes: a changed file fails its verification
    with (tmp_path / "out" / "m" / "weights.bin").open("r+b") as f:
        f.write(b"X")
    with pytest.raises(ValueError, match="weights.bin"):
        model_signing_verifies(tmp_path / "out" / "m", tmp_path / "m1.sig.json", alice_pub)
    shown = json.loads(ok(cli("show", "m:1", "--json")).stdout)["signatures"]
    assert [(s["fingerprint"], s["status"]) for s in shown] == [(pushed["signature"]["fingerprint"], "unknown key")]


def test_the_executable_refuses_an_unsigned_version_in_one_line(tmp_path: Path, keys: dict[str, Path]) -> None:
    """The real entry point (its exit, its stderr), once; the other tests run in process."""
    Registry(str(tmp_path / "reg")).push("m", str(model_dir(tmp_path, 1)))
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), NO_COLOR="1")
    fails(run_executable(["pull", "m:1", "out/", "--require-signed-by", f"{keys['alice']}.pub"], env, tmp_path), 8,
          "m:1 is not signed by")
    assert not (tmp_path / "out").exists()


def test_pull_requires_a_valid_signature_by_the_key_given(cli: Run, keys: dict[str, Path], tmp_path: Path,
                                                         shared_url: str) -> None:
    alice_pub, bob_pub = f"{keys['alice']}.pub", f"{keys['bob']}.pub"
    ok(cli("push", "m", str(model_dir(tmp_path, 1))))
    ok(cli("push", "m", str(model_dir(tmp_path, 2))))
    # unsigned: refused when a signature is required, pulled when not
    fails(cli("pull", "m:1", "a/", "--require-signed-by", alice_pub), 8, "m:1 is not signed by", "refused")
    assert not (tmp_path / "a").exists()
    ok(cli("pull", "m:1", "a/"))
    # signed by bob: not what alice's key requires
    ok(cli("sign", "m:1", "--key", str(keys["bob"])))
    fails(cli("pull", "m:1", "b/", "--require-signed-by", alice_pub), 8, "not signed by")
    fails(cli("verify-signature", "m:1", "--key", alice_pub), 8, "not signed by")
    ok(cli("pull", "m:1", "b/", "--require-signed-by", alice_pub, "--require-signed-by", bob_pub))
    # alice's signature of m:1 copied to m:2's place: it verifies as a signature, of other contents
    ok(cli("sign", "m:1", "--key", str(keys["alice"])))
    reg = Registry(shared_url)
    v1, v2 = reg.resolve("m:1").hexdigest, reg.resolve("m:2").hexdigest
    checked = json.loads(ok(cli("verify-signature", "m:1", "--key", alice_pub, "--json")).stdout)
    fp = checked["verified_by"]["fingerprint"]
    assert reg.store.create(signature_key(v2, fp), reg.store.read(signature_key(v1, fp)))
    fails(cli("pull", "m:2", "c/", "--require-signed-by", alice_pub), 6, signature_key(v2, fp), "other contents")
    assert not (tmp_path / "c").exists()
    fails(cli("verify-signature", "m:2", "--key", alice_pub), 6, "other contents")


def test_a_tampered_signature_fails_verification_in_one_line(cli: Run, keys: dict[str, Path], tmp_path: Path,
                                                            shared_url: str) -> None:
    alice_pub = f"{keys['alice']}.pub"
    ok(cli("push", "m", str(model_dir(tmp_path, 1)), "--sign", str(keys["alice"])))
    reg = Registry(shared_url)
    [key] = list(reg.store.list(signatures_prefix(reg.resolve("m:1").hexdigest)))
    bundle = json.loads(reg.store.read(key))
    payload = json.loads(__import__("base64").b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "00" * 32  # a forger's edit of what was signed
    bundle["dsseEnvelope"]["payload"] = __import__("base64").b64encode(json.dumps(payload).encode()).decode()
    reg.store.delete(key)
    reg.store.create(key, json.dumps(bundle).encode())
    fails(cli("verify-signature", "m:1", "--key", alice_pub), 6, key, "does not verify", "forged or damaged")
    fails(cli("pull", "m:1", "x/", "--require-signed-by", alice_pub), 6, key)
    shown = ok(cli("show", "m:1")).stdout  # show reports it, it does not fail
    assert "signed" in shown and "not checked" in shown
    for damage in (b"{not json", b"[]", b'{"mediaType": 1}', b"\xff" * 100):
        reg.store.delete(key)
        reg.store.create(key, damage)
        fails(cli("verify-signature", "m:1", "--key", alice_pub), 6, key, "malformed")


# -- hostile objects, through the library (local only: what is read does not depend on the store) --------
def test_an_oversized_signature_object_is_refused_unread(tmp_path: Path, keys: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import casreg.governance.signatures as signatures
    import casreg.governance.signing as signing

    reg = Registry(str(tmp_path / "reg"))
    reg.push("m", str(model_dir(tmp_path, 1)))
    check = reg.sign("m:1", keys["alice"])
    monkeypatch.setattr(signatures, "MAX_SIGNATURE_BYTES", 100)
    monkeypatch.setattr(signing, "MAX_SIGNATURE_BYTES", 100)
    with pytest.raises(IntegrityError, match=f"{check.key} is larger than"):
        reg.require_signed("m:1", f"{keys['alice']}.pub")


def test_signing_again_with_the_same_key_keeps_the_signature(tmp_path: Path, keys: dict[str, Path]) -> None:
    reg = Registry(str(tmp_path / "reg"))
    reg.push("m", str(model_dir(tmp_path, 1)))
    first = reg.sign("m:1", keys["alice"])
    stored = reg.store.read(first.key)
    again = reg.sign("m:1", keys["alice"])
    assert again.key == first.key and again.detail == "already signed by this key"
    assert reg.store.read(first.key) == stored
    assert [c.status for c in reg.signatures("m:1", [f"{keys['alice']}.pub", f"{keys['bob']}.pub"])] == ["verified"]


# -- keys in the policy ----------------------------------------------------------------------------------
def test_signed_by_names_keys_and_roles_of_the_policy(tmp_path: Path, keys: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_USER", "admin@example.test")
    reg = Registry(str(tmp_path / "reg"))
    reg.push("m", str(model_dir(tmp_path, 1)))
    reg.push("m", str(model_dir(tmp_path, 2)))
    alice_pem, bob_pem = (Path(f"{keys[w]}.pub").read_text() for w in ("alice", "bob"))
    reg.set_policy(f'[roles]\nrelease = ["alice@example.test"]\n\n[keys]\n"alice@example.test" = """{alice_pem}"""\n'
                   f'"bob@example.test" = ["""{bob_pem}"""]\n')
    reg.sign("m:1", keys["alice"])
    reg.sign("m:2", keys["bob"])
    assert reg.require_signed("m:1", "release").signer == "alice@example.test"
    assert reg.require_signed("m:2", "bob@example.test").status == "verified"
    with pytest.raises(PolicyError, match="m:2 is not signed by alice@example.test"):
        reg.pull("m:2", tmp_path / "x", require_signed_by="release")
    assert [(c.signer, c.status) for c in reg.signatures("m:2")] == [("bob@example.test", "verified")]
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), NO_COLOR="1", COLUMNS="200")
    assert "bob@example.test (" in ok(run_cli(["show", "m:2"], env, tmp_path)).stdout
    assert ": verified" in ok(run_cli(["verify-signature", "m:1"], env, tmp_path)).stdout  # the policy's keys
    fails(run_cli(["verify-signature", "m:1", "--signed-by", "carol"], env, tmp_path), 2, "'carol'")
    from casreg.errors import InvalidPolicyError

    with pytest.raises(InvalidPolicyError, match="keys.eve"):
        reg.set_policy('[keys]\neve = "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n"\n')


def test_verify_signature_without_any_key_says_what_to_give(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path / "reg"))
    reg.push("m", str(model_dir(tmp_path, 1)))
    env = dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), NO_COLOR="1")
    fails(run_cli(["verify-signature", "m:1"], env, tmp_path), 2, "--key")
