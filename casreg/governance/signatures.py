"""The signature format of a version: an OpenSSF model-signing bundle, made from the manifest.

A signature object (``signatures/<version>/<key>.sig.json``, docs/FORMAT.md §1) is exactly
the Sigstore bundle (media type ``application/vnd.dev.sigstore.bundle.v0.3+json``) that the
``model_signing`` tool writes when it signs with an elliptic-curve key (``model_signing
sign key``): a DSSE envelope around an in-toto statement (predicate type
``https://model_signing/signature/v1.0``, serialization ``method = files``, ``hash_type =
blake3``) listing every file of the version with the BLAKE3 of its bytes. casreg's manifest
already holds those digests, so a version is signed **without reading a byte of its
files**, and after ``casreg pull`` the pulled directory (a directory version) or the pulled
file (a file version: its one resource is named ``.``, as model_signing names a single-file
model) verifies with ``model_signing verify key --signature SIG --public_key PUB PATH``
(docs/signing.md). Files model_signing always skips (``.git``, ``.gitattributes``,
``.github``, ``.gitignore`` at the top) are left out of the resources and named in
``ignore_paths``, as model_signing's own signer does.

The predicate also carries ``casreg``: the version digest (which commits to every entry,
file modes and empty directories included) and what was signed (kind, the reference at
signing time, when). model_signing's verifiers ignore predicate fields they do not know;
casreg checks both the resources and the digest against the version's manifest.

Keys are ECDSA on P-256 (also P-384 and P-521 when given, as model_signing accepts), PEM
files. A key's *fingerprint* is the SHA-256 (hex) of its public key's PEM
(SubjectPublicKeyInfo): the same value model_signing records as the bundle's
``publicKey.hint``.

Everything read from a registry is hostile: :func:`parse_bundle` is bounded
(:data:`MAX_SIGNATURE_BYTES`) and turns any malformed object into an
:class:`~casreg.errors.IntegrityError` naming it. ``cryptography`` is imported only here and
only when a key is used (the ``signing`` extra).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casreg.content.manifest import Entry, Manifest
from casreg.errors import AlreadyExistsError, IntegrityError, InvalidInputError, MissingDependencyError
from casreg.records import utcnow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
    from cryptography.hazmat.primitives.hashes import HashAlgorithm

__all__ = [
    "BUNDLE_MEDIA_TYPE", "PAYLOAD_TYPE", "STATEMENT_TYPE", "PREDICATE_TYPE", "IGNORED_PATHS",
    "MAX_SIGNATURE_BYTES", "PublicKey", "Bundle",
    "load_public_key", "read_public_key", "read_private_key", "generate_keypair",
    "statement", "sign_statement", "parse_bundle", "check_bundle", "dsse_sign", "dsse_verifies",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: Paths model_signing's verifier skips by default (at the model's top): never in the resources.
IGNORED_PATHS = (".git", ".gitignore", ".gitattributes", ".github")
#: A signature object read from a store, at most (a statement lists every file: ~150 bytes each).
MAX_SIGNATURE_BYTES = 64 << 20
_CURVES = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}


def _crypto() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise MissingDependencyError("signing needs the cryptography package: pip install 'casreg[signing]'") from None


@dataclass(frozen=True)
class PublicKey:
    """A public key: its PEM (SubjectPublicKeyInfo) and fingerprint; ``name`` is who it
    belongs to when a policy's ``[keys]`` named it (else the file it came from)."""

    pem: bytes
    fingerprint: str
    name: str
    key: EllipticCurvePublicKey

    @property
    def short(self) -> str:
        """The fingerprint's first 16 hex digits, for messages."""
        return self.fingerprint[:16]


def _pem(key: EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _checked_public(key: object, where: str, name: str) -> PublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise InvalidInputError(f"{where}: not an ECDSA P-256, P-384 or P-521 public key (model_signing's key types)")
    pem = _pem(key)
    return PublicKey(pem, hashlib.sha256(pem).hexdigest(), name, key)


def load_public_key(data: bytes, where: str, name: str | None = None) -> PublicKey:
    """A public key from PEM text; :class:`InvalidInputError` naming ``where`` if it is not
    one of the supported key types."""
    _crypto()
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise InvalidInputError(f"{where}: not a PEM public key ({str(err)[:120]})") from None
    return _checked_public(key, where, name or where)


def _read_small(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(1 << 16)
    except FileNotFoundError:
        raise InvalidInputError(f"{what} {p}: no such file") from None
    except OSError as err:
        raise InvalidInputError(f"{what} {p}: {err.strerror or err}") from None
    return data


def read_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """The public key in PEM file ``path`` (a ``.pub`` from :func:`generate_keypair`, or
    any PEM public key of a supported type). A private key file is refused: pass its
    ``.pub``."""
    data = _read_small(path, "public key file")
    if b"PRIVATE KEY" in data:
        raise InvalidInputError(f"{path} holds a private key: pass the public key ({path}.pub)")
    return load_public_key(data, str(path))


def read_private_key(path: str | os.PathLike[str]) -> tuple[EllipticCurvePrivateKey, PublicKey]:
    """The private key in PEM file ``path`` (unencrypted) and its public key."""
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_small(path, "private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidInputError(f"{path}: an encrypted private key (casreg signs with unencrypted keys; "
                                "keep the file readable only by you)") from None
    except ValueError as err:
        raise InvalidInputError(f"{path}: not a PEM private key ({str(err)[:120]})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInputError(f"{path}: not an ECDSA private key (generate one with casreg keys generate)")
    return key, _checked_public(key.public_key(), str(path), str(path))


def generate_keypair(out: str | os.PathLike[str]) -> PublicKey:
    """Write a new ECDSA P-256 private key to ``out`` (PEM, PKCS#8, unencrypted, mode
    0600, created exclusively) and its public key to ``out.pub``; neither may exist
    (:class:`AlreadyExistsError`). Returns the public key."""
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = Path(out), Path(f"{os.fspath(out)}.pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise AlreadyExistsError(f"{p} already exists; casreg keys generate never overwrites a key")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AlreadyExistsError(f"{private} already exists; casreg keys generate never overwrites a key") from None
    except OSError as err:
        raise InvalidInputError(f"cannot write {private}: {err.strerror or err}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(private, 0o600)  # whatever the umask
    pub = _checked_public(key.public_key(), str(public), str(public))
    try:
        with public.open("xb") as f:
            f.write(pub.pem)
    except OSError as err:
        private.unlink()
        raise InvalidInputError(f"cannot write {public}: {err.strerror or err}") from None
    return pub


# -- the statement -----------------------------------------------------------------------------------------
def _ignored(path: str) -> bool:
    return path.split("/", 1)[0] in IGNORED_PATHS


def _parts(e: Entry) -> tuple[str, ...]:
    return tuple(e.path.split("/"))  # model_signing sorts resources by path components


def resources(manifest: Manifest) -> dict[str, str]:
    """What model_signing records of a version: resource name -> BLAKE3 hex of its bytes.
    A file version's one file is ``.`` (model_signing's name for a single-file model)."""
    if manifest.kind == "file":
        return {".": manifest.files[0].digest.hex()}
    return {e.path: e.digest.hex() for e in sorted(manifest.files, key=_parts) if not _ignored(e.path)}


def _root_digest(digests: list[str]) -> str:
    h = hashlib.sha256()
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def statement(manifest: Manifest, *, name: str, ref: str | None) -> dict[str, Any]:
    """The in-toto statement model_signing signs for this version (module docstring)."""
    res = resources(manifest)
    serialization: dict[str, Any] = {"method": "files", "hash_type": "blake3", "allow_symlinks": False,
                                     "ignore_paths": list(IGNORED_PATHS)}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": _root_digest(list(res.values()))}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": serialization,
            "resources": [{"name": n, "algorithm": "blake3", "digest": d} for n, d in res.items()],
            "casreg": {"digest": str(manifest.version_digest), "kind": manifest.kind, "ref": ref,
                       "signed_at": utcnow().isoformat(timespec="seconds")},
        },
    }


def _pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """DSSE's pre-authentication encoding (DSSE v1.0), what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def dsse_sign(payload: bytes, payload_type: str, private: EllipticCurvePrivateKey, public: PublicKey) -> bytes:
    """The raw ECDSA signature by ``private`` over DSSE's PAE of ``payload`` with
    ``payload_type`` (what any DSSE envelope carries, base64-encoded)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return private.sign(_pae(payload, payload_type), ec.ECDSA(_hash_for(public.key)))


def dsse_verifies(signature: bytes, payload: bytes, payload_type: str, key: PublicKey) -> bool:
    """Whether ``signature`` is ``key``'s signature over DSSE's PAE of ``payload`` with
    ``payload_type``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key.key.verify(signature, _pae(payload, payload_type), ec.ECDSA(_hash_for(key.key)))
    except InvalidSignature:
        return False
    return True


def _hash_for(key: EllipticCurvePublicKey) -> HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    name = _CURVES[key.curve.name]
    return hashes.SHA256() if name == "sha256" else hashes.SHA384() if name == "sha384" else hashes.SHA512()


def sign_statement(stmt: dict[str, Any], private: EllipticCurvePrivateKey, public: PublicKey) -> bytes:
    """The bundle (JSON bytes) of ``stmt`` signed by ``private``, as model_signing's key
    signer makes it."""
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    sig = private.sign(_pae(payload), ec.ECDSA(_hash_for(public.key)))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": public.fingerprint}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]},
    }
    return json.dumps(bundle, indent=2).encode() + b"\n"


# -- reading and checking -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """A parsed signature object: the key it names (``hint``), the signed payload and its
    signature, and the statement the payload holds (parsed, not yet trusted)."""

    hint: str
    payload: bytes
    signature: bytes
    statement: dict[str, Any]

    @property
    def casreg(self) -> dict[str, Any]:
        predicate = self.statement.get("predicate")
        value = predicate.get("casreg") if isinstance(predicate, dict) else None
        return value if isinstance(value, dict) else {}


def _get(doc: object, *path: str) -> Any:
    for p in path:
        if not isinstance(doc, dict) or p not in doc:
            raise ValueError(f"no {'.'.join(path)}")
        doc = doc[p]
    return doc


def parse_bundle(data: bytes, where: str) -> Bundle:
    """Parse a signature object read from a store (at most :data:`MAX_SIGNATURE_BYTES`);
    anything malformed is an :class:`IntegrityError` naming ``where``. Nothing is trusted
    yet: :func:`check_bundle` checks the signature and the contents."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise IntegrityError(f"signature object {where} is larger than {MAX_SIGNATURE_BYTES >> 20} MiB: refused")
    try:
        doc = json.loads(data)
        if _get(doc, "mediaType") != BUNDLE_MEDIA_TYPE:
            raise ValueError(f"media type is not {BUNDLE_MEDIA_TYPE}")
        hint = _get(doc, "verificationMaterial", "publicKey", "hint")
        if not isinstance(hint, str):
            raise ValueError("publicKey.hint is not text")
        if _get(doc, "dsseEnvelope", "payloadType") != PAYLOAD_TYPE:
            raise ValueError(f"payload type is not {PAYLOAD_TYPE}")
        sigs = _get(doc, "dsseEnvelope", "signatures")
        if not isinstance(sigs, list) or len(sigs) != 1:
            raise ValueError("not exactly one signature")
        payload = base64.b64decode(_get(doc, "dsseEnvelope", "payload"), validate=True)
        signature = base64.b64decode(_get(sigs[0], "sig"), validate=True)
        stmt = json.loads(payload)
        if not isinstance(stmt, dict):
            raise ValueError("the payload is not a JSON object")
    except (ValueError, TypeError, binascii.Error, RecursionError) as err:
        raise IntegrityError(f"signature object {where} is malformed ({str(err)[:160]})") from None
    return Bundle(hint, payload, signature, stmt)


def check_bundle(bundle: Bundle, key: PublicKey, manifest: Manifest, where: str) -> None:
    """Check that ``bundle`` is a signature by ``key`` of exactly this version: the
    signature verifies over the payload, the statement is model_signing's, its root digest
    matches its resources, the resources are the version's files and digests, and its
    ``casreg.digest`` is the version's digest. :class:`IntegrityError` naming ``where``
    and what failed otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    if bundle.hint != key.fingerprint:
        raise IntegrityError(f"signature object {where} names key {bundle.hint[:16]}, not {key.short}")
    try:
        key.key.verify(bundle.signature, _pae(bundle.payload), ec.ECDSA(_hash_for(key.key)))
    except InvalidSignature:
        raise IntegrityError(f"signature object {where} does not verify with key {key.short} "
                             "(forged or damaged)") from None
    stmt = bundle.statement
    try:
        if stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
            raise ValueError("not a model_signing statement")
        ser = _get(stmt, "predicate", "serialization")
        if _get(ser, "method") != "files" or _get(ser, "hash_type") != "blake3":
            raise ValueError("not a files/blake3 serialization")
        listed = _get(stmt, "predicate", "resources")
        if not isinstance(listed, list):
            raise ValueError("resources is not a list")
        signed = {str(_get(r, "name")): str(_get(r, "digest")) for r in listed}
        if len(signed) != len(listed) or any(_get(r, "algorithm") != "blake3" for r in listed):
            raise ValueError("resources repeat a name or use another algorithm")
        subject = _get(stmt, "subject")
        if not isinstance(subject, list) or len(subject) != 1:
            raise ValueError("not exactly one subject")
        if _get(subject[0], "digest", "sha256") != _root_digest([str(_get(r, "digest")) for r in listed]):
            raise ValueError("the subject digest does not match the resources")
    except (ValueError, TypeError) as err:
        raise IntegrityError(f"signature object {where} holds a malformed statement ({str(err)[:160]})") from None
    digest = bundle.casreg.get("digest")
    if digest != str(manifest.version_digest) or signed != resources(manifest):
        raise IntegrityError(f"signature object {where} was made for other contents "
                             f"({str(digest)[:80]}), not version {manifest.version_digest}")
