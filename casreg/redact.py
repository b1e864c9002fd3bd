"""Credentials out of printed text: :func:`redact_url` and the rule for what looks secret.

casreg prints and records URLs it was given: registry URLs, S3 endpoints
(``CASREG_S3_ENDPOINT_URL=http://user:pass@host:9000``), hook URLs. Any of them may carry
a credential, in its userinfo (``user:pass@``) or in a query parameter (``?token=...``).
Every message that can show one (errors, log lines, ``hook.failed`` events, ``casreg
hooks show``) passes its text through :func:`redact_url`; :class:`casreg.errors.CasregError`
does so for every error it is made with, so a new error message cannot forget it.

Contract of :func:`redact_url`:

- Every ``SCHEME://...`` in the text (a URL ends at whitespace, a quote, ``<``, ``>`` or
  a backtick) has its userinfo, of any kind (``user:pass@``, ``token@``, an empty ``@``),
  replaced by ``***@``; the userinfo runs to the last ``@`` before the first ``/`` after
  ``://`` (an unencoded ``@``, ``?`` or ``#`` in a password is still covered). The one
  exception is casreg's own ``casreg://NAME@ALIAS/path``, where ``@`` names an alias.
- Every query or fragment parameter of such a URL whose name :func:`is_secret_name`
  keeps its name and has its value replaced by ``***`` (``?token=***&team=ml``).
- Nothing else changes: text without ``://`` is returned as is, paths are kept (a token
  in a path is not recognisable as one; casreg's own hook records name a webhook's
  scheme and host only), and redacting twice gives the same text as once.

Redaction errs on the side of hiding: a value that merely looks like a secret's name
(``?monkey=1``) is hidden too.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact_url", "url_credentials", "is_secret_name", "REDACTED"]

REDACTED = "***"

#: Parameter and header names (their parts) that hold secrets.
_SECRET_PARTS = frozenset({
    "token", "secret", "password", "passwd", "pwd", "pass", "passphrase", "key", "apikey", "sig", "signature",
    "auth", "authorization", "credential", "credentials", "cookie", "session", "sessionid", "jwt", "bearer",
    "otp",
})
#: A part ending with one of these is secret too (``accesstoken``, ``apikey``, ``clientsecret``).
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "key", "signature", "credential", "credentials")

_NO_USERINFO = ("casreg://",)  # schemes whose '@' is not a userinfo (casreg://NAME@ALIAS)
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>`]*)")
_USERINFO = re.compile(r"^[^/]*@")  # greedy: to the last '@' before the first '/'
_PARAM = re.compile(r"(?P<sep>[?&;#])(?P<name>[^=&;#?/]*)=(?P<value>[^&;#]*)")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PARTS = re.compile(r"[^A-Za-z0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter, header or config key named ``name`` holds a secret:
    one of its parts (split at ``_``, ``-``, ``.``, other punctuation and camelCase) is
    ``token``, ``secret``, ``password``, ``key``, ``sig``, ``signature``, ``auth``,
    ``authorization``, ``credential``, ``cookie``, ``session`` ... or ends with ``token``,
    ``secret``, ``password``, ``key``, ``signature`` or ``credential`` (case-insensitive):
    ``access_token``, ``api_key``, ``apiKey``, ``X-Amz-Signature``, ``Authorization``,
    ``X-Auth-Token`` are; ``team``, ``author``, ``name`` are not."""
    parts = [p for p in _PARTS.split(_CAMEL.sub("_", unquote(name))) if p]
    return any(p.lower() in _SECRET_PARTS or p.lower().endswith(_SECRET_SUFFIXES) for p in parts)


def _has_userinfo(match: re.Match[str]) -> bool:
    return match["scheme"].lower() not in _NO_USERINFO and _USERINFO.match(match["rest"]) is not None


def _redact_one(match: re.Match[str]) -> str:
    rest = match["rest"]
    if _has_userinfo(match):
        rest = _USERINFO.sub(REDACTED + "@", rest, count=1)
    start = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if start >= 0:
        rest = rest[:start] + _PARAM.sub(
            lambda m: f"{m['sep']}{m['name']}={REDACTED}" if is_secret_name(m["name"]) else m[0], rest[start:])
    return match["scheme"] + rest


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***`` (the module
    docstring has the contract)."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_one, text)


def url_credentials(url: str) -> list[str]:
    """What in ``url`` is a credential, described for a message (empty: none): ``"a
    user name or password before '@'"`` and ``"the query parameter 'token'"`` entries,
    exactly what :func:`redact_url` would hide."""
    found: list[str] = []
    for match in _URL.finditer(url):
        rest = match["rest"]
        if _has_userinfo(match):
            found.append("a user name or password before '@'")
        start = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
        if start >= 0:
            found += [f"the query parameter {m['name']!r}" for m in _PARAM.finditer(rest[start:])
                      if is_secret_name(m["name"])]
    return found
