"""``casreg keys generate``, ``casreg sign`` and ``casreg verify-signature`` (docs/signing.md)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from casreg.errors import InvalidInputError
from casreg_cli.common import Cli, RefArg, app, command
from casreg_cli.output import Output

if TYPE_CHECKING:
    from casreg.governance.signing import SignatureCheck

keys_app = typer.Typer(help="Signing keys (ECDSA P-256 PEM files; docs/signing.md).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

KeyOpt = Annotated[Optional[list[str]], typer.Option(
    "--key", "-k", help="A public key PEM file to check signatures with (repeatable).")]
SignedByOpt = Annotated[Optional[list[str]], typer.Option(
    "--signed-by", help="A key name or role of the policy's [keys] (repeatable).")]


@command(keys_app, "generate", registry=False, example="casreg keys generate --out ~/.casreg-keys/alice.pem")
def generate(
    cli: Cli,
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write the private key (mode 0600); the "
                                                         "public key goes to OUT.pub. Neither may exist.")],
) -> None:
    """Make an ECDSA P-256 key pair for signing versions; prints the public key's fingerprint,
    never the private key."""
    from casreg.governance.signatures import generate_keypair

    pub = generate_keypair(out)
    record = {"private_key": os.path.abspath(out), "public_key": os.path.abspath(f"{out}.pub"),
              "fingerprint": pub.fingerprint}

    def human(o: Output) -> None:
        o.line(f"wrote private key {record['private_key']} (mode 0600: keep it secret, never in the registry)")
        o.line(f"wrote public key  {record['public_key']}")
        o.line(f"fingerprint       {pub.fingerprint}")

    cli.emit(record, human)


@command(app, "sign", example="casreg sign fraud-detector:3 --key ~/.casreg-keys/alice.pem")
def sign(
    cli: Cli,
    ref: RefArg,
    key: Annotated[str, typer.Option("--key", "-k", help="Your private key PEM file (casreg keys generate).")],
) -> None:
    """Sign a version with your private key: stores a model_signing bundle the pulled version
    verifies against (docs/signing.md)."""
    check = cli.registry().sign(ref, key)

    def human(out: Output) -> None:
        out.line(f"signed {ref} with key {check.fingerprint[:16]}" + (f" ({check.detail})" if check.detail else ""))
        out.line(f"  {check.key}")

    cli.emit(check.to_dict() | {"ref": ref}, human)


def describe(c: SignatureCheck, unknown: str = "no public key with this fingerprint was given") -> str:
    """One line about one signature, for ``verify-signature`` and ``show``; ``unknown``
    says why a signature by a key not given was not checked."""
    who = f"{c.signer} ({c.fingerprint[:16]})" if c.signer else c.fingerprint[:16]
    if c.status == "verified":
        return f"{who}: verified"
    if c.status == "unknown key":
        return f"{who}: not checked ({unknown})"
    return f"{who}: INVALID: {c.detail}"


@command(app, "verify-signature",
         example="casreg verify-signature fraud-detector:3 --key alice.pem.pub --save fraud-3.sig.json")
def verify_signature(
    cli: Cli,
    ref: RefArg,
    key: KeyOpt = None,
    signed_by: SignedByOpt = None,
    save: Annotated[Optional[str], typer.Option(
        "--save", help="Write the verified signature (a model_signing bundle) to this file.")] = None,
) -> None:
    """Check a version's signatures against public keys (--key files, or --signed-by names of
    the policy's [keys]; default: every key of the policy); fails unless one of them signed it."""
    reg = cli.registry()
    words = [*(key or []), *(signed_by or [])]
    if not words and not reg.trusted_keys():
        raise InvalidInputError("no public key to check with: give --key PUBLIC_KEY_FILE or --signed-by NAME "
                                "(the policy has no [keys])")
    checks = reg.signatures(ref, words or None)
    required = reg.require_signed(ref, words or [k.name for k in reg.trusted_keys()])
    if save is not None:
        _save(save, reg.signature_bundle(ref, words or [k.name for k in reg.trusted_keys()]))

    def human(out: Output) -> None:
        for c in checks:
            out.line(f"{ref} signature by {describe(c)}")

    cli.emit({"ref": ref, "verified_by": required.to_dict(), "signatures": [c.to_dict() for c in checks]}, human)


def _save(path: str, data: bytes) -> None:
    from casreg.errors import AlreadyExistsError

    try:
        with open(path, "xb") as f:
            f.write(data)
    except FileExistsError:
        raise AlreadyExistsError(f"{path} already exists") from None
    except OSError as err:
        raise InvalidInputError(f"cannot write {path}: {err.strerror or err}") from None
