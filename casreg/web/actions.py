"""The write actions of ``casreg ui --allow-writes`` (docs/ui.md, "Write mode").

Promote, approve or reject, archive, set an alias, roll an alias back: each is one call
of the same :class:`casreg.Registry` method the CLI calls, so the same policy gates and
permissions apply and the same errors come back (rendered by the app as a page with the
library's one-line reason and a status: 403 refused by the policy, 409 a conflict, 400
bad input, 404 nothing there). Only :func:`routes` creates POST routes, and the app asks
for them only with ``allow_writes``: without it there is no write route at all.

Every POST passes :meth:`Guard.check` before anything is read:

- **Host**: when the server knows the names it is reached by (``allowed_hosts``: the
  loopback names when it listens on loopback), a request for any other ``Host`` is
  refused (403): a DNS-rebinding page, same-origin with a name of its own, cannot post.
- **Origin**: the request's ``Origin`` (else its ``Referer``) must name this server: an
  ``http`` or ``https`` URL whose host and port are the request's ``Host`` (either scheme,
  so a TLS-terminating proxy in front is fine); a request with neither, or with the opaque
  ``Origin: null``, is refused (403).
  Pages of a write-mode server say ``Referrer-Policy: same-origin`` so browsers send them.
- **CSRF token**: every form carries ``token``, an HMAC-SHA256 under a random secret made
  when the server starts (never stored) of the form's action path, which names the action
  and its model, version or alias; a token of another form, of another server or of an
  earlier run of this one is refused (403). No cookie is used.
- **Author**: the user who started the server (:func:`casreg.lineage.current_author` at
  start), or, with ``author_header``, the value of that request header, which an
  authenticating reverse proxy sets (a request without it gets 401). The action runs
  under :func:`casreg.lineage.acting_as` that author, so the policy checks and the
  recorded event name them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from casreg.errors import InvalidInputError
from casreg.lineage import acting_as
from casreg.refs import validate_alias, validate_name
from casreg.registry import Registry

__all__ = ["Guard", "routes", "loopback_hosts", "read_form", "ACTIONS", "MAX_FORM_BYTES", "MAX_REASON", "MAX_AUTHOR"]

#: The version actions, each a POST to ``/models/NAME/versions/N/<action>``; rollback is a
#: POST to ``/models/NAME/aliases/ALIAS/rollback``.
ACTIONS = ("promote", "decide", "archive", "alias")
MAX_FORM_BYTES = 16 * 1024
MAX_REASON = 4096
MAX_AUTHOR = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def loopback_hosts(host: str = "127.0.0.1") -> frozenset[str]:
    """The host names (without port) a server listening on the loopback address ``host``
    is reached by: the usual loopback names and ``host`` itself (``[...]`` for IPv6)."""
    host = host.strip().lower()
    return frozenset((*_LOOPBACK_NAMES, f"[{host}]" if ":" in host and not host.startswith("[") else host))


@dataclass(frozen=True)
class Guard:
    """The checks every POST passes, and the CSRF tokens the forms carry (see the module
    doc). ``author``: the fixed author (the user who started the server); with
    ``author_header``, each request's author is that header's value instead.
    ``allowed_hosts``: the host names (without port) requests may be addressed to;
    ``None``: any (the server cannot know them: it listens on a wildcard or public
    address, behind a proxy)."""

    author: str
    author_header: str | None = None
    allowed_hosts: frozenset[str] | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def token(self, path: str) -> str:
        """The CSRF token of the form that posts to ``path`` (hex HMAC-SHA256)."""
        return hmac.new(self.secret, b"casreg-ui-action\0" + path.encode(), hashlib.sha256).hexdigest()

    def check(self, request: Request, form: Mapping[str, str]) -> str:
        """The author the request acts for, once the request passed the host, origin and
        token checks (an :class:`HTTPException` otherwise: 403, or 401 without the author
        header)."""
        host = request.headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            raise HTTPException(403, f"requests to host {host[:80]!r} are refused: this server answers to "
                                     f"{', '.join(sorted(self.allowed_hosts))}")
        origin = request.headers.get("origin") or request.headers.get("referer") or ""
        parts = urlsplit(origin)  # "null" (an opaque origin) has neither scheme nor host
        # the host part must be this server's: the scheme may differ behind a TLS-terminating proxy
        if parts.scheme not in ("http", "https") or not host or parts.netloc.lower() != host.strip().lower():
            raise HTTPException(403, "cross-origin request refused: the form must be posted from this server's "
                                     "own pages (Origin or Referer missing or another site's)")
        given = form.get("token", "")
        if not hmac.compare_digest(given.encode(), self.token(request.url.path).encode()):
            raise HTTPException(403, "the form's CSRF token is missing or wrong (a form of an earlier run of the "
                                     "server?): reload the page and try again")
        if self.author_header is None:
            return self.author
        author = request.headers.get(self.author_header, "").strip()
        if not author:
            raise HTTPException(401, f"no {self.author_header} header: this server takes the author from the "
                                     "authenticating proxy in front of it")
        if len(author) > MAX_AUTHOR or _CONTROL.search(author):
            raise HTTPException(400, f"the {self.author_header} header is not a user name (control characters, "
                                     f"or longer than {MAX_AUTHOR} characters)")
        return author

    def author_of(self, request: Request) -> str | None:
        """Who a page's forms act as, for the page to say (``None``: the header is missing)."""
        if self.author_header is None:
            return self.author
        return request.headers.get(self.author_header, "").strip() or None


def _hostname(host: str) -> str:
    """``host`` of a ``Host`` header without its port (``[::1]:8000`` -> ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (at most :data:`MAX_FORM_BYTES`; a field given twice
    keeps its first value). Another content type is a 415, a larger body a 413."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "a form post is application/x-www-form-urlencoded")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise HTTPException(413, f"the form is larger than {MAX_FORM_BYTES // 1024} KiB")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, f"the form is larger than {MAX_FORM_BYTES // 1024} KiB")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form is not valid UTF-8 urlencoded text") from None
    form: dict[str, str] = {}
    for k, v in pairs:
        form.setdefault(k, v)
    return form


def _reason(form: Mapping[str, str], key: str = "reason") -> str | None:
    text = form.get(key, "").strip()
    if len(text) > MAX_REASON:
        raise InvalidInputError(f"the reason is longer than {MAX_REASON} characters")
    return text or None


def _field(form: Mapping[str, str], key: str, what: str) -> str:
    text = form.get(key, "").strip()
    if not text:
        raise InvalidInputError(f"{what} is required")
    return text


def version_url(name: str, number: int) -> str:
    return f"/models/{quote(name, safe='')}/versions/{number}"


def model_url(name: str) -> str:
    return f"/models/{quote(name, safe='')}"


def _done(url: str, event_id: str | None) -> str:
    """Where a successful action redirects: the page, naming the recorded event (which
    the page looks up and shows; nothing of the URL is shown as is)."""
    return f"{url}?event={event_id}" if event_id else f"{url}?event=unchanged"


Handler = Callable[[Request, Mapping[str, str]], str]


class Actions:
    """The handlers: each parses its form, makes one registry call and returns the URL
    to redirect to."""

    def __init__(self, registry: Registry) -> None:
        self.reg = registry

    @staticmethod
    def _target(request: Request) -> tuple[str, int]:
        return validate_name(str(request.path_params["name"])), int(request.path_params["number"])

    def promote(self, request: Request, form: Mapping[str, str]) -> str:
        name, number = self._target(request)
        stage = validate_alias(_field(form, "stage", "the stage"))
        result = self.reg.promote(name, number, stage, reason=_reason(form))
        return _done(version_url(name, number), result.event.event_id if result.event else None)

    def decide(self, request: Request, form: Mapping[str, str]) -> str:
        name, number = self._target(request)
        stage = validate_alias(_field(form, "stage", "the stage"))
        decision = form.get("decision", "")
        if decision not in ("approve", "reject"):
            raise InvalidInputError("decision must be approve or reject")
        call = self.reg.approve if decision == "approve" else self.reg.reject
        event = call(name, number, stage=stage, comment=_reason(form))
        return _done(version_url(name, number), event.event_id)

    def archive(self, request: Request, form: Mapping[str, str]) -> str:
        name, number = self._target(request)
        event = self.reg.archive(name, number, reason=_reason(form))
        return _done(version_url(name, number), event.event_id)

    def alias(self, request: Request, form: Mapping[str, str]) -> str:
        name, number = self._target(request)
        alias = validate_alias(_field(form, "alias", "the alias"))
        event = self.reg.set_alias(name, alias, number, reason=_reason(form))
        return _done(version_url(name, number), event.event_id)

    def rollback(self, request: Request, form: Mapping[str, str]) -> str:
        name = validate_name(str(request.path_params["name"]))
        alias = validate_alias(str(request.path_params["alias"]))
        event = self.reg.rollback(name, alias, reason=_reason(form))
        return _done(model_url(name), event.event_id)


def _endpoint(handler: Handler, guard: Guard, back: Callable[[Request], str]) -> Callable[[Request],
                                                                                        Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        request.state.back = back(request)  # the error page links back to the form
        form = await read_form(request)
        author = guard.check(request, form)

        def call() -> str:
            with acting_as(author):
                return handler(request, form)

        return RedirectResponse(await run_in_threadpool(call), 303)

    endpoint.__name__ = handler.__name__
    return endpoint


def routes(registry: Registry, guard: Guard) -> list[Route]:
    """The POST routes of the write actions (only ever added with ``allow_writes``)."""
    actions = Actions(registry)

    def to_version(request: Request) -> str:
        return version_url(str(request.path_params["name"]), int(request.path_params["number"]))

    def to_model(request: Request) -> str:
        return model_url(str(request.path_params["name"]))

    base = "/models/{name}/versions/{number:int}/"
    return [Route(base + a, _endpoint(getattr(actions, a), guard, to_version), methods=["POST"]) for a in ACTIONS] + [
        Route("/models/{name}/aliases/{alias}/rollback", _endpoint(actions.rollback, guard, to_model),
              methods=["POST"])]
