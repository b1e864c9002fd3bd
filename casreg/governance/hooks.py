"""Hooks: tell other systems when a model is pushed, moved or promoted.

Why in the registry: every writer (a CI job, a laptop, the Python API) pushes and promotes
through the same store, so a hook configured there fires whoever made the change, with
no server of our own. The configuration is one small TOML object, ``config/hooks.toml``,
replaced only by compare-and-swap (two admins editing it at once: one wins, the other
gets a conflict, nobody's edit is silently lost). docs/hooks.md has the format.

A hook is either a **webhook** (an HTTP POST of a JSON payload, signed with HMAC-SHA256
so receivers can check it came from someone holding the secret and was not altered) or a
**command** (run with the same JSON on stdin and the event in ``CASREG_*`` variables).

Delivery contract (:func:`dispatch`):

- It runs *after* the event is committed and **never undoes or fails it**: it never
  raises. Each delivery is tried ``1 + retries`` times with exponential backoff; the
  outcome of each hook is returned as a :class:`DeliveryResult` and logged
  (logger ``casreg.governance.hooks``).
- A delivery that still fails is recorded in the ledger as a ``hook.failed`` event of
  the model (``casreg log NAME`` shows it), so a missed notification is visible.
- Changing the configuration needs the ``policy`` permission of the policy in force
  (:func:`write_hooks`): a command hook runs in the processes of everyone who pushes or
  promotes, so whoever may change hooks may act as them.
- Secrets never enter the registry: the config names environment variables of the
  process that fires the hook (``secret_env`` for the HMAC key, ``${VAR}`` in header
  values); a config with a literal secret (a secret-looking key, a URL with ``user:pass@``
  or ``?token=...``, a literal value in a header such as ``Authorization``) is refused.
  Recorded failures name the webhook's scheme and host only (webhook URLs often carry
  tokens in their path), and every error and log line is passed through
  :func:`casreg.redact.redact_url`.
- Deliveries are synchronous: the pushing process waits at most about
  ``attempts * timeout + backoff * (2**retries - 1)`` seconds per hook (hooks run in
  parallel). ``CASREG_HOOKS=off`` skips dispatching in one process (bulk imports, tests).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import re
import shlex
import subprocess
import time
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from casreg._version import package_version
from casreg.digest import Digest
from casreg.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from casreg.governance.policy import read_policy
from casreg.keys import HOOKS_KEY, REGISTRY_EVENTS
from casreg.ledger.events import record_event
from casreg.lineage import current_author
from casreg.redact import REDACTED, is_secret_name, redact_url, url_credentials
from casreg.storage import ByteRange, ObjectStore

if TYPE_CHECKING:

    from casreg.governance.event_signing import EventSigner

__all__ = [
    "Hook",
    "HooksConfig",
    "DeliveryResult",
    "InvalidHooksError",
    "dispatch",
    "deliver",
    "parse_hooks",
    "read_hooks",
    "write_hooks",
    "sign",
    "verify_signature",
    "record_failure",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Casreg-Signature"
MAX_CONFIG_BYTES = 256 << 10
_DEFAULTS = {"retries": 3, "backoff": 0.5, "timeout": 10.0}
_TOP_KEYS = {"retries", "backoff", "timeout", "hooks"}
_HOOK_KEYS = {"name", "events", "models", "aliases", "url", "command", "secret_env", "headers",
              "retries", "backoff", "timeout", "enabled"}
_SECRET_WORDS = ("secret", "token", "password", "key")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF = re.compile(r"\$\{([^}]*)\}")  # ${VAR} in a header value
#: What a secret-looking header may hold: an optional scheme word, then one ${VAR}.
_SECRET_HEADER_VALUE = re.compile(r"(?:[A-Za-z][A-Za-z0-9._~+/-]* +)?\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class InvalidHooksError(InvalidInputError):
    """The hooks configuration is malformed (the message names the line where it can)."""


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hook:
    """One configured hook and when it fires."""

    name: str
    url: str | None = None
    command: str | tuple[str, ...] | None = None
    events: tuple[str, ...] = ("*",)  # event kinds; fnmatch patterns ("alias.*", "*")
    models: tuple[str, ...] = ("*",)  # model name patterns
    aliases: tuple[str, ...] | None = None  # only events about these aliases/stages
    secret_env: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 10.0
    enabled: bool = True

    def matches(self, event: Mapping[str, Any]) -> bool:
        kind, name, alias = str(event.get("kind", "")), str(event.get("name") or ""), event.get("alias")
        if not self.enabled:
            return False
        if not any(fnmatchcase(kind, p) for p in self.events):
            return False
        if not any(fnmatchcase(name, p) for p in self.models):
            return False
        if self.aliases is not None and not (alias and any(fnmatchcase(str(alias), p) for p in self.aliases)):
            return False
        return True

    @property
    def target(self) -> str:
        """What the hook reaches, safe to log and record: a webhook's scheme and host only
        (paths of webhook URLs often hold tokens), a command's program."""
        if self.url:
            u = urlsplit(self.url)
            host = f"[{u.hostname}]" if u.hostname and ":" in u.hostname else u.hostname
            port = _port(u)  # False: a config stored before ports were checked
            return f"{u.scheme}://{host}{f':{port}' if port else ''}"
        if isinstance(self.command, tuple):
            return f"command {redact_url(self.command[0])}"
        try:
            words = shlex.split(self.command or "")
        except ValueError:  # unbalanced quotes: /bin/sh will say so when it runs
            words = (self.command or "").split()
        return f"command {redact_url((words or [''])[0])}"

    def header_values(self, environ: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
        """The request headers with every ``${VAR}`` replaced by ``environ[VAR]``, and
        the first variable that is not set (``None``: all are); a delivery with a missing
        variable is not sent."""
        out: dict[str, str] = {}
        for name, value in self.headers.items():
            for var in _ENV_REF.findall(value):
                if not environ.get(var):
                    return {}, var
            out[name] = _ENV_REF.sub(lambda m: environ[m[1]], value)
        return out, None

    def to_dict(self) -> dict[str, Any]:
        """The hook as JSON, safe to print: credentials in the URL or command redacted,
        literal values of secret-looking headers (a config written before they were
        refused) shown as ``***``."""
        d = asdict(self)
        d["url"] = redact_url(self.url) if self.url else self.url
        if isinstance(self.command, str):
            d["command"] = redact_url(self.command)
        elif self.command is not None:
            d["command"] = [redact_url(c) for c in self.command]
        d["headers"] = {k: REDACTED if _literal_secret(k, v) else v for k, v in self.headers.items()}
        return d


def _port(parts: SplitResult) -> int | None | bool:
    """The URL's port, ``None`` if it names none, ``False`` if it is not a port number."""
    try:
        return parts.port
    except ValueError:
        return False


def _literal_secret(name: str, value: str) -> bool:
    """A secret-looking header (``Authorization``, ``X-Api-Key``...) whose value is not
    taken from an environment variable."""
    return is_secret_name(name) and not _SECRET_HEADER_VALUE.fullmatch(value)


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """The stored configuration. ``text`` is exactly what is stored (a config written by
    an older casreg may hold credentials); print :meth:`display_text` or :meth:`to_dict`."""

    hooks: tuple[Hook, ...]
    text: str
    digest: Digest  # of the stored bytes
    token: str | None = None  # the store's swap token (None: not stored)

    def to_dict(self) -> dict[str, Any]:
        """The parsed config as JSON, credentials redacted (:meth:`Hook.to_dict`)."""
        return {"key": HOOKS_KEY, "digest": self.digest, "hooks": [h.to_dict() for h in self.hooks]}

    def display_text(self) -> str:
        """The TOML text, safe to print: URLs redacted (:func:`casreg.redact.redact_url`)
        and the literal value of every secret-looking key outside the known hook keys
        (a header such as ``Authorization = "Bearer abc"``) replaced by ``"***"``. If a
        literal secret would still show (written in a form this cannot rewrite), the
        text is replaced by a comment pointing to ``--json``, never shown."""
        text = _KEY_VALUE.sub(_redact_key_value, redact_url(self.text))
        secrets = [v for h in self.hooks for k, v in h.headers.items() if _literal_secret(k, v) and v.strip()]
        if any(v in text for v in secrets):
            return ("# the stored config holds a secret written in a form that cannot be redacted here;\n"
                    "# casreg hooks show --json shows it parsed, with the secret redacted\n")
        return text


_KEY_VALUE = re.compile(r"""(?P<key>"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_-]+)(?P<eq>[ \t]*=[ \t]*)"""
                        r"""(?P<value>"(?:[^"\\\n]|\\.)*"|'[^'\n]*')""")


def _redact_key_value(m: re.Match[str]) -> str:
    key = m["key"].strip("\"'")
    if key in _HOOK_KEYS or key in _TOP_KEYS or not is_secret_name(key):
        return m[0]
    try:
        value = tomllib.loads(f"v = {m['value']}")["v"]
    except tomllib.TOMLDecodeError:
        value = m["value"]
    if isinstance(value, str) and not _literal_secret(key, value):
        return m[0]
    return f'{m["key"]}{m["eq"]}"{REDACTED}"'


def _line_of(text: str, needle: str) -> str:
    for i, line in enumerate(text.splitlines(), 1):
        if needle and needle in line:
            return f" (line {i})"
    return ""


def _patterns(value: Any, where: str, text: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidHooksError(f"hooks: {where}{_line_of(text, where.rsplit('.', 1)[-1])}: "
                                "expected a string or a non-empty list of strings")
    return tuple(value)


def _number(value: Any, where: str, text: str, lo: float, hi: float, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise InvalidHooksError(f"hooks: {where}{_line_of(text, where.rsplit('.', 1)[-1])}: "
                                f"expected {kind} from {lo:g} to {hi:g}, got {value!r}")
    return value


def parse_hooks(text: str, *, source: str = HOOKS_KEY, stored: bool = False) -> tuple[Hook, ...]:
    """Parse and validate a hooks document. TOML syntax errors name the line and column
    (``tomllib``'s message); other errors name the key and, where found, its line.

    A document about to be stored (``stored=False``, what ``casreg hooks set`` checks)
    may hold no credential: a URL (the hook's, or one in its command) with a userinfo or
    a secret-looking query parameter (:func:`casreg.redact.url_credentials`), or a
    secret-looking header (``Authorization``,
    ``X-Api-Key``, ...; :func:`casreg.redact.is_secret_name`) whose value is not
    ``[SCHEME ]${VAR}``, is refused; header names must be HTTP tokens and values free of
    control characters. ``stored=True`` reads a config already in the registry, which an
    older casreg may have written with such credentials: it still works, and is shown
    redacted (:meth:`HooksConfig.display_text`)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidHooksError(f"{source} is not valid TOML: {err}") from None
    except RecursionError:  # tomllib recurses per nesting level: arrays or tables nested thousands deep
        raise InvalidHooksError(f"{source} nests arrays or tables too deeply to read") from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise InvalidHooksError(f"hooks: unknown key {unknown[0]!r}{_line_of(text, unknown[0])} "
                                f"(known: {', '.join(sorted(_TOP_KEYS))}; each hook is a [[hooks]] table)")
    defaults = dict(_DEFAULTS)
    for k in ("retries", "backoff", "timeout"):
        if k in doc:
            defaults[k] = _check_tuning(k, doc[k], k, text)
    raw_hooks = doc.get("hooks", [])
    if not isinstance(raw_hooks, list) or not all(isinstance(h, dict) for h in raw_hooks):
        raise InvalidHooksError(f"hooks: 'hooks'{_line_of(text, 'hooks')} must be an array of tables ([[hooks]])")
    out: list[Hook] = []
    seen: set[str] = set()
    for i, h in enumerate(raw_hooks):
        out.append(_parse_hook(i, h, defaults, text, stored=stored, seen=seen))
    return tuple(out)


def _parse_hook(i: int, h: dict[str, Any], defaults: Mapping[str, float], text: str, *, stored: bool,
                seen: set[str]) -> Hook:
    """One ``[[hooks]]`` table (the ``i``-th) as a :class:`Hook`, its name added to ``seen``
    (the names of the tables before it, which it may not repeat); see :func:`parse_hooks`."""
    where = f"hooks[{i}]"
    name = h.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidHooksError(f"hooks: {where}: 'name' must be 1-64 letters, digits, '_', '.' or '-' "
                                f"(got {name!r})")
    where = f"hook {name!r}"
    if name in seen:
        raise InvalidHooksError(f"hooks: two hooks are named {name!r}")
    seen.add(name)
    bad = sorted(set(h) - _HOOK_KEYS)
    if bad:
        secretish = next((k for k in bad if is_secret_name(k) or any(w in k.lower() for w in _SECRET_WORDS)), None)
        if secretish:
            raise InvalidHooksError(
                f"hooks: {where}: {secretish!r}{_line_of(text, secretish)}: secrets are never stored in the "
                "registry; put it in an environment variable and name that with secret_env = \"VAR\"")
        raise InvalidHooksError(f"hooks: {where}: unknown key {bad[0]!r}{_line_of(text, bad[0])} "
                                f"(known: {', '.join(sorted(_HOOK_KEYS))})")
    url, command = _check_target(h.get("url"), h.get("command"), where, text, stored=stored)
    secret_env = h.get("secret_env")
    if secret_env is not None and not (isinstance(secret_env, str) and _ENV.fullmatch(secret_env)):
        raise InvalidHooksError(f"hooks: {where}: secret_env must name an environment variable, got {secret_env!r}")
    headers = h.get("headers", {})
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise InvalidHooksError(f"hooks: {where}: headers must be a table of strings")
    if not stored:
        _check_headers(headers, where, text)
    enabled = h.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidHooksError(f"hooks: {where}: enabled must be true or false")
    tuning = {k: _check_tuning(f"{where}.{k}", h[k], k, text) if k in h else defaults[k]
              for k in ("retries", "backoff", "timeout")}
    return Hook(
        name=name, url=url, command=command,
        events=_patterns(h.get("events", "*"), f"{where}.events", text),
        models=_patterns(h.get("models", "*"), f"{where}.models", text),
        aliases=_patterns(h["aliases"], f"{where}.aliases", text) if "aliases" in h else None,
        secret_env=secret_env, headers=dict(headers), enabled=enabled,
        retries=int(tuning["retries"]), backoff=float(tuning["backoff"]), timeout=float(tuning["timeout"]),
    )


def _check_target(url: Any, command: Any, where: str, text: str, *,
                  stored: bool) -> tuple[str | None, str | tuple[str, ...] | None]:
    """A hook's ``url`` or ``command`` (exactly one), checked: an http(s) URL, or a shell
    string or argv list; neither may carry a credential unless ``stored``."""
    if (url is None) == (command is None):
        raise InvalidHooksError(f"hooks: {where}: give exactly one of url = \"https://...\" or command = ...")
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or _port(parts) is False:
            raise InvalidHooksError(f"hooks: {where}: url{_line_of(text, str(url))} must be an http:// or "
                                    f"https:// URL, got {redact_url(repr(url))}")
        found = url_credentials(url)
        if found and not stored:
            raise InvalidHooksError(
                f"hooks: {where}: url{_line_of(text, url)} carries a credential ({found[0]}); secrets are never "
                "stored in the registry: put the secret in an environment variable and send it in a header, "
                "e.g. headers = { Authorization = \"Bearer ${VAR}\" }, or sign with secret_env = \"VAR\"")
    if command is not None:
        if isinstance(command, list) and command and all(isinstance(c, str) and c for c in command):
            command = tuple(command)
        elif not (isinstance(command, str) and command.strip()):
            raise InvalidHooksError(f"hooks: {where}: command must be a string (run by /bin/sh) or a "
                                    "non-empty list of strings (argv)")
        found = url_credentials(command if isinstance(command, str) else " ".join(command))
        if found and not stored:
            raise InvalidHooksError(
                f"hooks: {where}: command carries a URL with a credential ({found[0]}); secrets are never "
                "stored in the registry: the command runs with the environment of the process that fires "
                "it, so read the secret from an environment variable there")
    return url, command


def _check_headers(headers: Mapping[str, str], where: str, text: str) -> None:
    """Header names are HTTP tokens, values have no control characters, every ``${...}``
    names an environment variable, and a secret-looking header takes its value from one."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidHooksError(f"hooks: {where}: header name {name!r}{_line_of(text, name)} is not a valid "
                                    "HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
        if _CONTROL.search(value):
            raise InvalidHooksError(f"hooks: {where}: header {name!r}{_line_of(text, name)}: the value may not "
                                    "contain control characters (newlines, tabs, ...)")
        bad = next((v for v in _ENV_REF.findall(value) if not _ENV.fullmatch(v)), None)
        if bad is not None:
            raise InvalidHooksError(f"hooks: {where}: header {name!r}{_line_of(text, name)}: ${{{bad}}} does not "
                                    "name an environment variable (letters, digits and '_')")
        if _literal_secret(name, value):
            raise InvalidHooksError(
                f"hooks: {where}: header {name!r}{_line_of(text, name)} holds a literal value; secrets are never "
                "stored in the registry: put it in an environment variable and name that, e.g. "
                f"{name} = \"Bearer ${{VAR}}\" or \"${{VAR}}\"")


def _check_tuning(where: str, value: Any, key: str, text: str) -> Any:
    if key == "retries":
        return _number(value, where, text, 0, 10, integer=True)
    if key == "backoff":
        return _number(value, where, text, 0, 300)
    return _number(value, where, text, 0.001, 600)


def read_hooks(store: ObjectStore) -> HooksConfig | None:
    """The registry's hooks configuration, or ``None`` if it has none (one small read)."""
    try:  # bounded first: a planted huge object is refused without being read whole
        data = store.read(HOOKS_KEY, ByteRange(0, MAX_CONFIG_BYTES + 1))
    except NotFoundError:
        return None
    where = f"{HOOKS_KEY} in {store.url}"
    current = store.read_versioned(HOOKS_KEY) if len(data) <= MAX_CONFIG_BYTES else None
    if current is None and len(data) <= MAX_CONFIG_BYTES:
        return None  # removed in between
    if current is None or len(current.data) > MAX_CONFIG_BYTES:
        raise IntegrityError(f"{where} is larger than {MAX_CONFIG_BYTES:,} bytes: damaged; set it again with "
                             "casreg hooks set")
    data = current.data
    try:
        text = data.decode("utf-8")
        hooks = parse_hooks(text, source=HOOKS_KEY, stored=True)
    except (UnicodeDecodeError, InvalidHooksError) as err:
        why = "not UTF-8" if isinstance(err, UnicodeDecodeError) else str(err).replace(HOOKS_KEY, "it")
        raise IntegrityError(f"{where} is damaged ({why}); set it again with casreg hooks set") from None
    return HooksConfig(hooks, text, Digest.of(data), current.token)


def _hooks_signer(store: ObjectStore, key: str | os.PathLike[str] | None) -> EventSigner | None:
    """The key a ``hooks.set`` is signed with (``key``, else ``$CASREG_SIGNING_KEY``, else
    ``None``), checked as an admin change: with a trust root pinned it must be a pinned
    admin key (and the policy in force signed by one); else, when the policy has
    ``[keys]``, a key of a person holding the ``policy`` permission (docs/signing.md)."""
    from casreg.governance.event_signing import load_signer, require_signer
    from casreg.governance.lifecycle import rules_and_keys
    from casreg.governance.trust import pinned_keys, require_root_signer

    signer = load_signer(key)
    policy, keys = rules_and_keys(store, None)
    if pinned_keys():
        require_root_signer(signer, "changing the hooks")
    elif keys:
        require_signer(signer, keys, policy, "policy", None, "changing the hooks")
    return signer


def write_hooks(store: ObjectStore, text: str, *, expected_digest: str | None | bool = True,
                key: str | os.PathLike[str] | None = None) -> HooksConfig:
    """Validate ``text`` and make it the registry's hooks configuration, by compare-and-swap.

    Who may: the same as who may change the policy. If a policy is in force, the current
    author (:func:`casreg.lineage.current_author`) needs its ``policy`` permission, else
    :class:`~casreg.errors.PolicyError` (exit 8) and nothing is read or written (a
    command hook runs in the processes of everyone who pushes or promotes). Without a
    policy, anyone may, as for the policy itself.

    ``expected_digest=True``: replace whatever is there now (its token is read first, so a
    change by someone else in between is still a conflict, never silently overwritten);
    a digest string (``casreg hooks show``'s) or ``None`` (no config yet): replace only
    that. ``text`` may hold no credential (:func:`parse_hooks`). The change is recorded
    as a ``hooks.set`` event of the registry, signed with ``key`` (default
    ``$CASREG_SIGNING_KEY``; required as an admin's under a pinned root or a policy
    with ``[keys]``: :func:`_hooks_signer`)."""
    policy = read_policy(store)
    if policy is not None:
        policy.for_model(None).require_permission(current_author(), "policy", None, what="changing the hooks")
    signer = _hooks_signer(store, key)
    data = text.encode()
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidHooksError(f"hooks config is {len(data):,} bytes; at most {MAX_CONFIG_BYTES:,}")
    hooks = parse_hooks(text, source="the hooks config")
    current = store.read_versioned(HOOKS_KEY)
    current_digest = Digest.of(current.data) if current else None
    if expected_digest is not True and expected_digest != current_digest:
        raise ConflictError(f"the hooks config changed meanwhile (it is now {current_digest or 'unset'}, "
                            f"expected {expected_digest or 'unset'}); nothing was changed")
    try:
        token = store.swap(HOOKS_KEY, data, current.token if current else None)
    except ConflictError:
        raise ConflictError("the hooks config was changed by someone else meanwhile; nothing was changed "
                            "(run casreg hooks show and try again)") from None
    digest = Digest.of(data)
    from casreg.governance.event_signing import signs_event

    try:
        record_event(store, name=REGISTRY_EVENTS, kind="hooks.set", reason=f"{len(hooks)} hook(s)",
                     details={"digest": digest, "previous": current_digest, "hooks": [h.name for h in hooks]},
                     before=signs_event(store, signer))
    except Exception as err:  # the change is made; a missing audit row must not undo it
        log.warning("hooks config written but its hooks.set event was not recorded: %s", _one_line(err))
    return HooksConfig(hooks, text, digest, token)


# -- signing -----------------------------------------------------------------------------------
def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Casreg-Signature`` value for ``body``: ``sha256=`` + hex HMAC-SHA256."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does (docs/hooks.md): recompute over the exact bytes received and
    compare in constant time."""
    return bool(header) and hmac.compare_digest(sign(secret, body), str(header))


# -- delivery ----------------------------------------------------------------------------------
@dataclass(slots=True)
class DeliveryResult:
    """The outcome of one hook for one event."""

    hook: str
    target: str
    ok: bool
    attempts: int
    delivery_id: str
    status: int | None = None  # HTTP status, or the command's exit code
    error: str | None = None  # one line, when not ok
    seconds: float = 0.0
    recorded: bool = False  # a hook.failed event was written

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_line(err: BaseException | str) -> str:
    """An error as one line of at most 500 characters, URL credentials redacted."""
    text = str(err) or type(err).__name__ if isinstance(err, BaseException) else err
    return redact_url(" ".join(str(text).split()))[:500]


def _payload(hook: Hook, event: Mapping[str, Any], delivery_id: str, registry: str) -> bytes:
    doc = {"delivery": delivery_id, "hook": hook.name, "registry": registry,
           "sent_at": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": dict(event)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False).encode()


@functools.cache
def _opener() -> Any:
    """urllib without redirects (a redirected POST would be re-sent as a GET without its
    body: a 3xx counts as a failure) and with the environment's proxy settings."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirect())


def _post(hook: Hook, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
    """One POST: (status, error or None); 2xx is success, status 0 means no answer."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(hook.url or "", data=body, headers=headers, method="POST")
    try:
        with _opener().open(req, timeout=hook.timeout) as resp:
            resp.read(1 << 16)
            status = resp.status
    except urllib.error.HTTPError as err:
        return err.code, f"{hook.target} answered HTTP {err.code} {_one_line(str(err.reason))}"
    except urllib.error.URLError as err:
        return 0, f"cannot reach {hook.target}: {_one_line(err.reason)}"
    except (TimeoutError, OSError) as err:
        return 0, f"{hook.target}: {_one_line(err) or 'timed out'}"
    if 200 <= status < 300:
        return status, None
    return status, f"{hook.target} answered HTTP {status}"


def _event_env(event: Mapping[str, Any], delivery_id: str, registry: str) -> dict[str, str]:
    digest = event.get("to_digest") or event.get("digest") or ""
    version = event.get("to_version") if event.get("to_version") is not None else event.get("version")
    return {
        "CASREG_EVENT": str(event.get("kind") or ""),
        "CASREG_EVENT_ID": str(event.get("event_id") or ""),
        "CASREG_NAME": str(event.get("name") or ""),
        "CASREG_ALIAS": str(event.get("alias") or ""),
        "CASREG_DIGEST": str(digest),
        "CASREG_VERSION": "" if version is None else str(version),
        "CASREG_PREVIOUS_DIGEST": str(event.get("from_digest") or ""),
        "CASREG_DELIVERY": delivery_id,
        "CASREG_REGISTRY": registry,
    }


def _run(hook: Hook, body: bytes, env: dict[str, str]) -> tuple[int, str | None]:
    cmd = hook.command
    try:
        assert cmd is not None  # a command hook
        p = subprocess.run(list(cmd) if isinstance(cmd, tuple) else cmd, shell=isinstance(cmd, str), input=body,
                           env={**os.environ, **env}, capture_output=True, timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        return -1, f"{hook.target} timed out after {hook.timeout:g} s"
    except OSError as err:
        return -1, f"{hook.target} cannot run: {_one_line(err)}"
    if p.returncode == 0:
        return 0, None
    tail = _one_line(p.stderr.decode(errors="replace").strip().splitlines()[-1]) if p.stderr.strip() else ""
    return p.returncode, f"{hook.target} exited with {p.returncode}" + (f": {tail}" if tail else "")


def deliver(hook: Hook, event: Mapping[str, Any], *, registry: str = "",
            sleep: Any = time.sleep) -> DeliveryResult:
    """Deliver one event to one hook with bounded retries; never raises."""
    delivery_id = uuid.uuid4().hex
    t0 = time.monotonic()
    res = DeliveryResult(hook.name, hook.target, False, 0, delivery_id)
    try:
        body = _payload(hook, event, delivery_id, registry)
        env = _event_env(event, delivery_id, registry)
        extra, missing = hook.header_values(os.environ) if hook.url else ({}, None)
        if missing is not None:
            res.error = (f"environment variable {missing} (named in headers) is not set here; "
                         "refusing to send the delivery without it")
            return res
        headers = {"Content-Type": "application/json", "User-Agent": _user_agent(),
                   "X-Casreg-Event": env["CASREG_EVENT"], "X-Casreg-Delivery": delivery_id, **extra}
        if hook.url and hook.secret_env:
            secret = os.environ.get(hook.secret_env)
            if not secret:
                res.error = (f"environment variable {hook.secret_env} (secret_env) is not set here; "
                             "refusing to send an unsigned delivery")
                return res
            headers[SIGNATURE_HEADER] = sign(secret, body)
        for attempt in range(hook.retries + 1):
            res.attempts = attempt + 1
            headers["X-Casreg-Attempt"] = str(attempt + 1)
            headers["X-Casreg-Timestamp"] = str(int(time.time()))
            if hook.url:
                status, error = _post(hook, body, headers)
                retry = status == 0 or status in _RETRY_STATUS or 300 <= status < 400
            else:
                status, error = _run(hook, body, env)
                retry = True
            res.status, res.error = status, error
            if error is None:
                res.ok = True
                return res
            if not retry or attempt == hook.retries:
                break
            delay = min(hook.backoff * 2 ** attempt, 60.0)
            log.info("hook %s: attempt %d failed (%s); retrying in %.2f s", hook.name, attempt + 1, error, delay)
            sleep(delay)
        return res
    except Exception as err:  # a bug here must not fail the event either
        res.error = f"hook {hook.name} failed: {_one_line(err)}"
        return res
    finally:
        res.seconds = round(time.monotonic() - t0, 3)


def _user_agent() -> str:
    return f"casreg-hooks/{package_version()}"


def record_failure(store: ObjectStore, event: Mapping[str, Any], result: DeliveryResult) -> bool:
    """Record a failed delivery as a ``hook.failed`` event of the event's model (the
    registry's own events for registry-wide ones), visible in ``casreg log``. One small
    function so the recording path is easy to change; returns whether it was written."""
    try:
        digest = event.get("to_digest") or event.get("digest")
        version = event.get("to_version") if event.get("to_version") is not None else event.get("version")
        to = (Digest(str(digest)), int(version)) if digest and version is not None else None
        record_event(
            store, name=str(event.get("name") or REGISTRY_EVENTS), kind="hook.failed",
            alias=event.get("alias") or None, to=to,
            reason=(f"hook {result.hook} ({event.get('kind')}) failed after {result.attempts} attempt(s): "
                    f"{result.error}"),
            details={"hook": result.hook, "target": result.target, "delivery": result.delivery_id,
                     "attempts": result.attempts, "status": result.status,
                     "event_kind": event.get("kind"), "event_id": event.get("event_id")},
        )
        return True
    except Exception as err:
        log.warning("hook %s failed and its failure could not be recorded: %s", result.hook, _one_line(err))
        return False


def _off() -> bool:
    return os.environ.get("CASREG_HOOKS", "").strip().lower() in ("off", "0", "false", "no")


def dispatch(store: ObjectStore, event: Mapping[str, Any], *, config: HooksConfig | None = None,
             sleep: Any = time.sleep) -> list[DeliveryResult]:
    """Deliver ``event`` (a committed push, alias move, promotion, archive, rollback...) to
    every matching hook, in parallel; record and log failures. Never raises: the event
    has happened, whatever its hooks do. Events about hooks themselves fire nothing."""
    kind = str(event.get("kind", "")) if isinstance(event, Mapping) else ""
    if not kind or kind.startswith("hook") or _off():
        return []
    try:
        cfg = config if config is not None else read_hooks(store)
    except Exception as err:
        res = DeliveryResult("(config)", HOOKS_KEY, False, 0, uuid.uuid4().hex,
                             error=f"cannot read the hooks config: {_one_line(err)}")
        log.warning("hooks not run for %s of %s: %s", kind, event.get("name"), res.error)
        res.recorded = record_failure(store, event, res)
        return [res]
    if cfg is None:
        return []
    hooks = [h for h in cfg.hooks if h.matches(event)]
    if not hooks:
        return []
    if len(hooks) == 1:
        results = [deliver(hooks[0], event, registry=store.url, sleep=sleep)]
    else:
        with ThreadPoolExecutor(min(len(hooks), 8), thread_name_prefix="casreg-hook") as pool:
            results = list(pool.map(lambda h: deliver(h, event, registry=store.url, sleep=sleep), hooks))
    for res in results:
        if res.ok:
            log.debug("hook %s delivered %s in %d attempt(s)", res.hook, kind, res.attempts)
            continue
        log.warning("hook %s: %s of %s not delivered after %d attempt(s): %s", res.hook, kind,
                    event.get("name"), res.attempts, res.error)
        res.recorded = record_failure(store, event, res)
    return results


def sample_event(name: str = "casreg-test") -> dict[str, Any]:
    """A harmless event for ``casreg hooks test``."""
    return {"kind": "test", "name": name, "event_id": uuid.uuid4().hex,
            "time": datetime.now(UTC).isoformat(), "reason": "casreg hooks test"}


def select(hooks: Sequence[Hook], names: Sequence[str] | None) -> list[Hook]:
    """The hooks named ``names`` (all when empty); an unknown name is a clear error."""
    if not names:
        return list(hooks)
    known = {h.name: h for h in hooks}
    missing = [n for n in names if n not in known]
    if missing:
        raise InvalidInputError(f"no hook named {missing[0]!r} (configured: {', '.join(known) or 'none'})")
    return [known[n] for n in names]
