"""The ``casreg ui`` web app: read-only pages over :class:`casreg.Registry`.

Every page calls the façade's public methods only (no store, ledger or key is touched
here) and renders with Jinja2, autoescaping everything; each page's data is also served
as JSON under ``/api/...``, the records ``casreg ... --json`` prints. The app has GET
routes only (any other method gets 405), unless it is made with ``allow_writes``: then
:mod:`casreg.web.actions` adds the POST routes of the write actions and their forms show
on the version and model pages.

Security (docs/ui.md): every response carries a strict Content-Security-Policy (scripts
and styles from this server only, no inline script), ``X-Content-Type-Options: nosniff``,
no framing and no referrer; every text shown passes through :func:`visible`, which makes
control characters visible, before autoescaping; references and names are parsed by the
library (a bad one is a 400 page); a :class:`~casreg.CasregError` is a page with its one
line (404 for what does not exist, 400 for bad input, 500 for a damaged registry), any
other failure a page saying only "internal error", never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from casreg import describe
from casreg._version import __version__
from casreg.errors import (
    AliasNotMovedError,
    AlreadyExistsError,
    AmbiguousReferenceError,
    CasregError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PolicyError,
)
from casreg.lineage import current_author
from casreg.records import AliasPointer, Version
from casreg.redact import redact_url
from casreg.refs import parse_ref, validate_alias, validate_name
from casreg.registry import Registry
from casreg.web.actions import Guard
from casreg.web.actions import routes as write_routes
from casreg.web.charts import line_chart, timeline

__all__ = ["create_app", "visible", "CSP", "PER_PAGE", "MAX_PER_PAGE"]

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PER_PAGE = 50
MAX_PER_PAGE = 500
HISTORY_PAGE = 100
API_HISTORY_PAGE = 500
MAX_API_HISTORY_PAGE = 5000
MAX_FILES_SHOWN = 1000
#: The event kinds that move an alias (docs/lifecycle.md).
POINTER_KINDS = ("alias.set", "alias.remove", "promote", "rollback")
EVENT_KINDS = ("push", "alias.set", "alias.remove", "promote", "rollback", "archive", "approve", "reject",
               "policy.set", "hooks.set", "hook.failed", "delete")
#: The kinds of event the write actions record (docs/ui.md).
ACTION_KINDS = ("promote", "approve", "reject", "archive", "alias.set", "rollback")
_EVENT_ID = re.compile(r"[0-9a-f]{16,64}")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(value: object) -> object:
    """Text with every control character (C0 with newline and tab, DEL, C1) and every
    bidirectional override made visible (``\\n``, ``\\x1b``, ``\\u202e``), as
    ``casreg_cli.output.clean`` does for the terminal; other values unchanged. Applied to
    everything a template prints, before autoescaping."""
    if not isinstance(value, str) or isinstance(value, Markup):  # Markup: a macro's HTML, made of escaped parts
        return value
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                                                       else f"\\u{ord(m[0]):04x}"), value)


def human_bytes(n: float | None) -> str:
    """:func:`casreg.describe.human_bytes`, and ``""`` for a missing value."""
    return "" if n is None else describe.human_bytes(n)


#: Labels the page spells out where the terminal abbreviates to keep its column.
_WEB_LABELS = {"deps": "dependencies"}


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if t is not None else ""


def _num(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else str(v))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_JSON_RAW = re.compile(r"[\x7f-\x9f\u2028\u2029]")


def json_response(value: object, status: int = 200) -> Response:
    """Exact JSON as ``--json`` prints it (NaN and infinities as null, DEL and C1
    characters escaped), served as ``application/json``."""
    text = json.dumps(_finite(value), indent=2, default=str, ensure_ascii=False, allow_nan=False)
    return Response(_JSON_RAW.sub(lambda m: f"\\u{ord(m[0]):04x}", text) + "\n", status,
                    media_type="application/json")


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (pages, JSON, static
    files, errors). ``referrer``: the ``Referrer-Policy`` (``same-origin`` when the pages
    post forms, so the browser sends their ``Origin``; ``no-referrer`` otherwise)."""

    def __init__(self, app: ASGIApp, referrer: str = "no-referrer") -> None:
        self.app = app
        self.headers = [(k, referrer.encode() if k == b"referrer-policy" else v) for k, v in SECURITY_HEADERS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.headers if k not in names]
            await send(message)

        await self.app(scope, receive, with_headers)


def status_of(err: CasregError) -> int:
    """The HTTP status of a library error: 404 nothing there, 400 bad input, 403 refused
    by the policy, 409 a conflict (a race lost, already there), 500 anything else (damage)."""
    if isinstance(err, AliasNotMovedError):
        return status_of(err.cause)
    if isinstance(err, NotFoundError):
        return 404
    if isinstance(err, (InvalidInputError, AmbiguousReferenceError)):
        return 400
    if isinstance(err, PolicyError):
        return 403
    if isinstance(err, (ConflictError, AlreadyExistsError)):
        return 409
    return 500


def _int(request: Request, key: str, default: int, lo: int = 1, hi: int | None = None) -> int:
    text = request.query_params.get(key)
    if text is None or text == "":
        return default
    try:
        n = int(text)
    except ValueError:
        raise InvalidInputError(f"{key} must be a whole number, got {text[:40]!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise InvalidInputError(f"{key} must be between {lo} and {hi}" if hi else f"{key} must be at least {lo}")
    return n


def _opt(request: Request, key: str) -> str | None:
    text = request.query_params.get(key, "").strip()
    return text or None


def _flag(request: Request, key: str, default: bool) -> bool:
    text = request.query_params.get(key)
    return default if text is None or text == "" else text not in ("0", "false", "no")


def _model_name(request: Request) -> str:
    return validate_name(str(request.path_params["name"]))


@dataclass(frozen=True, slots=True)
class Interval:
    """``alias`` pointed at ``version`` (``None``: removed) from ``start`` to ``end``
    (``None``: still), put there by ``author`` for ``reason``."""

    alias: str
    version: int | None
    start: datetime
    end: datetime | None
    author: str
    reason: str | None
    kind: str

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["start"] = self.start.isoformat()
        d["end"] = self.end.isoformat() if self.end else None
        return d


class Pages:
    """The routes, over one registry. ``guard``: the write mode's checks and tokens
    (``None``: read-only; no form is shown)."""

    def __init__(self, registry: Registry, guard: Guard | None = None) -> None:
        self.reg = registry
        self.guard = guard
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                               undefined=StrictUndefined, finalize=visible, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(bytes=human_bytes, when=_when, num=_num, short=lambda d: str(d)[:19],
                                url=lambda s: quote(str(s), safe=""), safe_link=safe_link)
        self.env.globals.update(version=__version__, registry_url=redact_url(registry.url), qs=self._qs,
                                writes=guard is not None, csrf=guard.token if guard is not None else None,
                                header_author=guard is not None and guard.author_header is not None,
                                server_author=guard.author if guard is not None else None)

    @staticmethod
    def _qs(base: Mapping[str, object], **changes: object) -> str:
        """A query string: ``base`` with ``changes`` (``None`` removes a key)."""
        merged = {k: v for k, v in {**base, **changes}.items() if v is not None and v != ""}
        return "?" + urlencode({k: str(v) for k, v in merged.items()}) if merged else "?"

    def render(self, template: str, code: int = 200, **context: object) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, code, headers={"cache-control": "no-store"})

    def _by_version(self, pointers: Iterable[AliasPointer]) -> dict[tuple[str, int], list[str]]:
        out: dict[tuple[str, int], list[str]] = {}
        for p in pointers:
            out.setdefault((p.name, p.version), []).append(p.alias)
        return out

    # -- models --------------------------------------------------------------------------
    def _models(self, request: Request) -> dict[str, Any]:
        q = (_opt(request, "q") or "").lower()
        tag = _opt(request, "tag")
        want: tuple[str, str] | None = None
        if tag is not None:
            key, sep, value = tag.partition("=")
            if not sep or not key:
                raise InvalidInputError(f"tag filter must be KEY=VALUE, got {tag[:60]!r}")
            want = (key, value)
        summaries = self._live(self.reg.models())
        by_model: dict[str, dict[str, int]] = {}
        for p in self.reg.aliases():
            by_model.setdefault(p.name, {})[p.alias] = p.version
        rows = []
        for s in summaries:
            v = s.latest
            if q and q not in v.name.lower() and q not in (v.description or "").lower() and not any(
                    q in f"{k}={t}".lower() for k, t in v.tags.items()):
                continue
            if want is not None and v.tags.get(want[0]) != want[1]:
                continue
            rows.append((s, dict(sorted(by_model.get(v.name, {}).items()))))
        page = _int(request, "page", 1)
        per = _int(request, "per", PER_PAGE, 1, MAX_PER_PAGE)
        return {"rows": rows[(page - 1) * per: page * per], "total": len(rows), "page": page, "per": per,
                "pages": max(1, -(-len(rows) // per)), "q": q, "tag": tag or "", "models": len(summaries)}

    def _live(self, summaries: list[Any]) -> list[Any]:
        """The model summaries with deleted versions left out of their counts, and as
        their latest the newest version that is not deleted (what ``NAME`` resolves to);
        a model whose every version is deleted is left out, as ``casreg ls`` leaves it
        out (docs/retention.md). Their byte totals stay those of every version recorded:
        a deleted version's chunks stay stored until gc reclaims them."""
        tombstones = self.reg.deleted_versions()  # one listing of the tombstones
        dead: dict[str, int] = {}
        for name, _ in tombstones:
            dead[name] = dead.get(name, 0) + 1
        out = []
        for s in summaries:
            gone = dead.get(s.name, 0)
            if not gone:
                out.append(s)
            elif gone < s.versions:
                # a read only where the latest itself is deleted: NAME resolves to the newest live one
                latest = self.reg.show(s.name) if (s.name, s.latest.version) in tombstones else s.latest
                out.append(replace(s, latest=latest, versions=s.versions - gone))
        return out

    def models(self, request: Request) -> Response:
        return self.render("models.html", **self._models(request), args=dict(request.query_params))

    def api_models(self, request: Request) -> Response:
        data = self._models(request)
        archived = self.reg.archived() if data["rows"] else {}
        # the record `casreg ls --json` prints for the model (its latest version, the aliases
        # at that version, whether it is archived), then the model's totals and every alias
        # with its version
        return json_response([s.latest.to_dict() | {"aliases": sorted(a for a, n in aliases.items()
                                                                      if n == s.latest.version),
                                                    "archived": (s.latest.name, s.latest.version) in archived}
                              | s.to_dict() | {"pointers": aliases} for s, aliases in data["rows"]])

    # -- model ---------------------------------------------------------------------------
    def _model(self, request: Request) -> dict[str, Any]:
        name = _model_name(request)
        where, sort = _opt(request, "where"), _opt(request, "sort")
        stage = _opt(request, "stage")
        desc = _flag(request, "desc", sort is None)
        page = _int(request, "page", 1)
        per = _int(request, "per", PER_PAGE, 1, MAX_PER_PAGE)
        newest = self.reg.ls(name, newest=1)[0]  # raises for an unknown model
        dead = {n for _, n in self.reg.deleted_versions(name)}  # one listing (docs/retention.md)
        live_latest: Version | None = newest
        if newest.version in dead:
            try:
                live_latest = self.reg.show(name)  # the newest version that is not deleted
            except NotFoundError:
                live_latest = None
        filtered = where is not None or stage is not None
        if not filtered and sort in (None, "version"):
            # in version order: the page's numbers are known (they are gap-free), read only those
            count = newest.version
            last = count - (page - 1) * per if desc else min(count, page * per)
            first = max(1, last - per + 1) if desc else (page - 1) * per + 1
            versions = self.reg.ls(name, newest=last - first + 1, upto=last) if last >= first else []
            if desc:
                versions.reverse()
            has_next = page * per < count
        else:
            versions = self.reg.search(name, where=where, stage=stage, sort=sort, descending=desc, limit=per + 1,
                                       offset=(page - 1) * per)
            has_next = len(versions) > per
            versions = versions[:per]
        pointers = self.reg.aliases(name)
        by_version = self._by_version(pointers)
        archived = set(self.reg.stage_versions(name, "archived")) if versions else set()
        total = None if filtered else newest.version
        metric_names = sorted({k for v in versions for k in v.metrics})
        rows = [{"version": v, "aliases": sorted(by_version.get((v.name, v.version), [])),
                 "archived": v.version in archived, "deleted": v.version in dead} for v in versions]
        return {"name": name, "latest": newest, "rows": rows, "page": page, "per": per, "has_next": has_next,
                "total": total, "pages": -(-total // per) if total else None, "where": where or "",
                "sort": sort or "", "desc": desc, "stage": stage or "", "pointers": pointers,
                "metric_names": metric_names[:6], "filtered": filtered, "live_latest": live_latest,
                "live": newest.version - len(dead), "deleted": len(dead)}

    def model(self, request: Request) -> Response:
        data = self._model(request)
        name, latest = data["name"], data["latest"]
        metric = _opt(request, "metric") or (sorted(latest.metrics)[0] if latest.metrics else None)
        charts: dict[str, Any] = {}
        if metric is not None:
            rows = self.reg.series(name, [f"metrics.{metric}"], points=400)
            xs = [int(r["version"] or 0) for r in rows]
            charts["metric"] = line_chart(xs, [(metric, [_float(r[f"metrics.{metric}"]) for r in rows])],
                                          href=lambda n: f"/models/{quote(name)}/versions/{n}",
                                          dot_label=lambda n, v: f"{name}:{n}  {metric} = {v:.6g}")
        storage = self.reg.series(name, ["size", "stored_bytes"], points=400, cumulative=True)
        xs = [int(r["version"] or 0) for r in storage]
        charts["storage"] = line_chart(xs, [
            ("logical bytes (cumulative)", [_float(r["size"]) for r in storage]),
            ("stored bytes (cumulative)", [_float(r["stored_bytes"]) for r in storage])],
                                       fmt=human_bytes, zero=True,
                                       dot_label=lambda n, v: f"up to {name}:{n}: {human_bytes(v)}")
        last = storage[-1] if storage else {}
        logical, stored = _float(last.get("size")) or 0.0, _float(last.get("stored_bytes")) or 0.0
        savings = {"logical": logical, "stored": stored, "saved": logical - stored,
                   "fraction": (1 - stored / logical) if logical else 0.0}
        all_metrics = sorted(latest.metrics)
        return self.render("model.html", **data, charts=charts, metric=metric or "", all_metrics=all_metrics,
                           savings=savings, args=dict(request.query_params), flash=self._flash(request, name),
                           actor=self.guard.author_of(request) if self.guard else None)

    def api_model(self, request: Request) -> Response:
        data = self._model(request)
        return json_response({
            "name": data["name"], "latest_version": data["live_latest"].version if data["live_latest"] else None,
            "total": data["total"], "live": data["live"], "deleted": data["deleted"],
            "page": data["page"], "per": data["per"], "has_next": data["has_next"],
            "aliases": [p.to_dict() for p in data["pointers"]],
            "versions": [r["version"].to_dict() | {"aliases": r["aliases"], "archived": r["archived"],
                                                   "deleted": r["deleted"]} for r in data["rows"]],
        })

    def api_series(self, request: Request) -> Response:
        name = _model_name(request)
        fields = [f for f in request.query_params.getlist("field") if f] or ["size", "stored_bytes"]
        points = _int(request, "points", 500, 2, 2000)
        return json_response(self.reg.series(name, fields, points=points,
                                             cumulative=_flag(request, "cumulative", False)))

    def _flash(self, request: Request, name: str) -> dict[str, Any] | None:
        """What a write action just did, for the page it redirected to (``?event=ID``):
        the recorded event, looked up in the model's log (so the page shows only what the
        ledger says), or that nothing changed (``?event=unchanged``)."""
        ident = request.query_params.get("event")
        if self.guard is None or ident is None:
            return None
        if ident == "unchanged":
            return {"unchanged": True, "event": None}
        if not _EVENT_ID.fullmatch(ident):
            return None
        found = next((e for e in reversed(self.reg.log(name, kinds=ACTION_KINDS)) if e.event_id == ident), None)
        return {"unchanged": False, "event": found} if found is not None else None

    # -- version -------------------------------------------------------------------------
    def _intervals(self, name: str) -> list[Interval]:
        """Every alias move of ``name`` as intervals, oldest first."""
        moves = self.reg.log(name, kinds=POINTER_KINDS)
        out: list[Interval] = []
        open_: dict[str, int] = {}
        for e in moves:
            if e.alias is None:
                continue
            if e.alias in open_:
                prev = out[open_[e.alias]]
                out[open_[e.alias]] = Interval(prev.alias, prev.version, prev.start, e.time, prev.author,
                                               prev.reason, prev.kind)
            open_[e.alias] = len(out)
            out.append(Interval(e.alias, e.to_version if e.kind != "alias.remove" else None, e.time, None,
                                e.author, e.reason, e.kind))
        return out

    def _version(self, request: Request) -> dict[str, Any]:
        name = _model_name(request)
        number = int(request.path_params["number"])
        v = self.reg.show(f"{name}:{number}")
        files = self.reg.files(v.digest)
        pointers = self.reg.aliases(name)
        aliases = [p.alias for p in pointers if p.version == v.version]
        state = self.reg.state(v)
        deployed = [i for i in self._intervals(name) if i.version == v.version]
        gates: dict[str, int] = {}
        stages = {"staging", "production"}
        policy = self.reg.policy()
        if policy is not None:
            effective = policy.for_model(name)
            gates = {stage: g.approvals for stage, g in effective.gates.items() if g.approvals}
            stages |= set(effective.gates)
        chain = self.reg.ancestors(v, limit=10)
        signatures = self.reg.signatures(v.digest)  # checked against the policy's [keys] (docs/signing.md)
        return {"v": v, "files": files, "aliases": aliases, "state": state, "deployed": deployed, "gates": gates,
                "chain": chain, "pointers": pointers, "signatures": signatures, "stages": sorted(stages)}

    def version(self, request: Request) -> Response:
        d = self._version(request)
        v: Version = d["v"]
        first = next((f.path for f in d["files"] if f.type != "d"), "")
        inner = "" if v.kind == "file" else f"/{first}"
        url = redact_url(self.reg.url)
        shared = not url.startswith("memory://")  # a memory registry is this process's only
        flag, opt, arg = (f" -r {url}", f", registry={url!r}", repr(url)) if shared else ("", "", "")
        snippets = [f"casreg pull {v.ref}{flag}"] + [f"casreg pull {v.name}@{a}{flag}" for a in d["aliases"]] + [
            f'fsspec.open("casreg://{v.ref}{inner}", "rb"{opt})',
            f"casreg.Registry({arg}).pull({v.ref!r}, \"./model\")"]
        compare = sorted({p.version for p in d["pointers"] if p.version != v.version}
                         | ({v.version - 1} if v.version > 1 else set()))
        return self.render("version.html", **d, snippets=snippets, compare=compare,
                           files_shown=d["files"][:MAX_FILES_SHOWN], flash=self._flash(request, v.name),
                           actor=self.guard.author_of(request) if self.guard else None,
                           lineage_rows=lineage_rows(v))

    def api_version(self, request: Request) -> Response:
        d = self._version(request)
        v: Version = d["v"]
        return json_response(v.to_dict() | {"aliases": d["aliases"], "lifecycle": d["state"].to_dict(),
                                            "files": [asdict(f) for f in d["files"]],
                                            "signatures": [c.to_dict() for c in d["signatures"]],
                                            "deployments": [i.to_dict() for i in d["deployed"]]})

    def ref(self, request: Request) -> Response:
        """``/ref/REF``: any reference (``NAME@ALIAS``, a digest...) to its version page."""
        text = str(request.path_params["ref"])
        parse_ref(text)  # a bad reference is a 400 before any read
        v = self.reg.show(text)
        return RedirectResponse(f"/models/{quote(v.name)}/versions/{v.version}", 303)

    # -- history -------------------------------------------------------------------------
    def _history(self, request: Request, per: int) -> dict[str, Any]:
        """One page of the model's history, newest first (``page``, ``per``): only that
        page's entries are built (``Registry.log_page``)."""
        name = _model_name(request)
        kinds = [k for k in request.query_params.getlist("kind") if k]
        alias = _opt(request, "alias")
        if alias is not None:
            validate_alias(alias)
        page = _int(request, "page", 1)
        logged = self.reg.log_page(name, alias=alias, kinds=kinds or None, since=_opt(request, "since"),
                                   until=_opt(request, "until"), limit=per, offset=(page - 1) * per)
        return {"name": name, "entries": logged.entries, "total": logged.total, "page": page, "per": per,
                "pages": max(1, -(-logged.total // per)), "kinds": kinds, "alias": alias or "",
                "since": _opt(request, "since") or "", "until": _opt(request, "until") or ""}

    def history(self, request: Request) -> Response:
        d = self._history(request, HISTORY_PAGE)
        name = d["name"]
        intervals = self._intervals(name)
        at_text, at_alias = _opt(request, "at"), _opt(request, "at_alias") or "production"
        validate_alias(at_alias)
        answer: dict[str, Any] | None = None
        at: datetime | None = None
        if at_text is not None:
            at = _parse_when(at_text)
            try:
                r = self.reg.resolve_at(f"{name}@{at_alias}", at)
                answer = {"alias": at_alias, "at": at, "version": r.version, "digest": r.digest}
            except NotFoundError as err:
                answer = {"alias": at_alias, "at": at, "version": None, "digest": None, "error": str(err)}
        now = datetime.now(UTC)
        chart = timeline([(i.alias, i.version, i.start, i.end) for i in intervals], now=now, at=at,
                         href=lambda n: f"/models/{quote(name)}/versions/{n}")
        aliases = sorted({i.alias for i in intervals})
        return self.render("history.html", **d, rows=d["entries"], chart=chart, answer=answer, at_text=at_text or "",
                           at_alias=at_alias, all_aliases=aliases, event_kinds=EVENT_KINDS, intervals=intervals,
                           args=dict(request.query_params))

    def api_history(self, request: Request) -> Response:
        """The ``casreg log --json`` records, oldest first, of one page counted from the
        newest (``page``, ``per``; default the newest 500: the whole log of most
        models); ``X-Total-Count`` and a ``Link: rel="next"`` header page on."""
        d = self._history(request, _int(request, "per", API_HISTORY_PAGE, 1, MAX_API_HISTORY_PAGE))
        response = json_response([e.to_dict() for e in reversed(d["entries"])])
        response.headers["x-total-count"] = str(d["total"])
        if d["page"] < d["pages"]:
            args = [(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "per")]
            args += [("page", str(d["page"] + 1)), ("per", str(d["per"]))]
            response.headers["link"] = f'<{request.url.path}?{urlencode(args)}>; rel="next"'
        return response

    def api_at(self, request: Request) -> Response:
        name = _model_name(request)
        alias = validate_alias(_opt(request, "alias") or "production")
        at_text = _opt(request, "at")
        if at_text is None:
            raise InvalidInputError("at= is required (ISO 8601, e.g. 2026-10-01T12:00:00Z)")
        r = self.reg.resolve_at(f"{name}@{alias}", _parse_when(at_text))
        return json_response({"name": r.name, "alias": alias, "at": at_text, "version": r.version,
                              "digest": r.digest})

    # -- diff ----------------------------------------------------------------------------
    def _diff(self, request: Request) -> Any:
        a, b = _opt(request, "a"), _opt(request, "b")
        if a is None or b is None:
            return None
        parse_ref(a)
        parse_ref(b)
        return self.reg.diff(a, b)

    def diff(self, request: Request) -> Response:
        d = self._diff(request)
        return self.render("diff.html", d=d, a=_opt(request, "a") or "", b=_opt(request, "b") or "")

    def api_diff(self, request: Request) -> Response:
        d = self._diff(request)
        if d is None:
            raise InvalidInputError("a= and b= are required: two references, e.g. a=NAME:1&b=NAME:2")
        return json_response(d.to_dict())

    # -- policy --------------------------------------------------------------------------
    def _policy_versions(self) -> list[dict[str, Any]]:
        try:
            entries = self.reg.log("_registry", kinds=["policy.set"])
        except NotFoundError:
            return []
        return [{"version": e.details.get("policy_version"), "time": e.time, "author": e.author, "reason": e.reason}
                for e in reversed(entries)]

    def policy(self, request: Request) -> Response:
        number = _int(request, "version", 0, 1) if request.query_params.get("version") else None
        p = self.reg.policy(number)
        if p is None and number is not None:
            raise NotFoundError(f"policy version {number} does not exist")
        return self.render("policy.html", p=p, versions=self._policy_versions())

    def api_policy(self, request: Request) -> Response:
        number = _int(request, "version", 0, 1) if request.query_params.get("version") else None
        p = self.reg.policy(number)
        if p is None:
            if number is not None:
                raise NotFoundError(f"policy version {number} does not exist")
            return json_response(None)
        return json_response({"policy_version": p.version, "digest": p.digest, "policy": p.doc, "text": p.text,
                              "versions": [v | {"time": _when(v["time"])} for v in self._policy_versions()]})

    def registry_history(self, request: Request) -> Response:
        try:
            entries = self.reg.log("_registry")
        except NotFoundError:
            entries = []
        return self.render("registry_history.html", rows=list(reversed(entries)))

    # -- errors --------------------------------------------------------------------------
    def error_page(self, request: Request, status: int, message: str) -> Response:
        message = redact_url(message)
        if request.url.path.startswith("/api/"):
            return json_response({"error": message, "status": status}, status)
        back = getattr(request.state, "back", None)  # a write action's form page
        return self.render("error.html", status, status=status, message=message, back=back)

    async def on_casreg_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CasregError)
        return self.error_page(request, status_of(exc), str(exc))

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        allow = (exc.headers or {}).get("Allow") or "GET, HEAD"  # a write action's route allows POST only
        not_allowed = "this registry page is read-only: only GET is allowed" if self.guard is None else \
            f"{request.method} is not allowed here (only {allow})"
        text = {404: "no such page", 405: not_allowed}.get(exc.status_code, str(exc.detail))
        response = self.error_page(request, exc.status_code, text)
        if exc.status_code == 405:
            response.headers["allow"] = allow
        return response

    async def on_crash(self, request: Request, exc: Exception) -> Response:
        log.error("casreg ui: %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return self.error_page(request, 500, "internal error (the server's log has the details)")


def lineage_rows(v: Version) -> list[tuple[str, str]]:
    """The version page's lines for the lineage of docs/lineage.md, as ``casreg show``
    prints them (:func:`casreg.describe.lineage_rows`); ``links`` are shown apart, as links.
    Plain text: the template escapes it."""
    return [(_WEB_LABELS.get(label, label), text) for label, text in describe.lineage_rows(v, links=False)]


def safe_link(url: str) -> str | None:
    """``url`` if it is an ``http``/``https`` URL with a host (what ``--link`` accepts),
    else ``None``: a record from a hostile store never makes a ``javascript:`` link."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc and not _CONTROL.search(url) else None


def _float(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _parse_when(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"cannot read time {text[:40]!r}; use ISO 8601, e.g. 2026-10-01T12:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _sync(fn: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Awaitable[Response]]:
    """Run a page's (blocking) library calls on a worker thread, all of them on one look
    at whether the ledger changed (``Registry.consistent_reads``: taken when the request
    is served, so a page is never older than its request)."""
    from starlette.concurrency import run_in_threadpool

    def call(request: Request) -> Response:
        with registry.consistent_reads():
            return fn(request)

    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(call, request)

    endpoint.__name__ = fn.__name__
    return endpoint


def create_app(registry: Registry, *, allow_writes: bool = False, author: str | None = None,
               author_header: str | None = None, allowed_hosts: Iterable[str] | None = None) -> Starlette:
    """The web app over ``registry`` (an ASGI app: serve it with uvicorn, as ``casreg ui``
    does). Read-only unless ``allow_writes``: only then are the POST routes of the write
    actions (:mod:`casreg.web.actions`) added, and their forms shown. Their author is
    ``author`` (default: :func:`casreg.lineage.current_author` now, the user who starts
    the server) or, with ``author_header``, each request's value of that header (set by
    an authenticating reverse proxy; a request without it gets 401). ``allowed_hosts``:
    the host names (no port) write requests may be addressed to (``None``: any)."""
    if not allow_writes and (author is not None or author_header is not None or allowed_hosts is not None):
        raise InvalidInputError("an author, an author header or allowed hosts only apply with allow_writes")
    if author_header is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", author_header):
        raise InvalidInputError(f"--author-header {author_header[:70]!r} is not an HTTP header name "
                                "(letters, digits and '-')")
    guard = Guard(author if author is not None else current_author(), author_header,
                  frozenset(h.lower() for h in allowed_hosts) if allowed_hosts is not None else None) \
        if allow_writes else None
    pages = Pages(registry, guard)
    get = ["GET"]
    routes = [
        Route("/", _sync(pages.models, registry), methods=get),
        Route("/models/{name}", _sync(pages.model, registry), methods=get),
        Route("/models/{name}/versions/{number:int}", _sync(pages.version, registry), methods=get),
        Route("/models/{name}/history", _sync(pages.history, registry), methods=get),
        Route("/ref/{ref:path}", _sync(pages.ref, registry), methods=get),
        Route("/diff", _sync(pages.diff, registry), methods=get),
        Route("/policy", _sync(pages.policy, registry), methods=get),
        Route("/registry/history", _sync(pages.registry_history, registry), methods=get),
        Route("/api/models", _sync(pages.api_models, registry), methods=get),
        Route("/api/models/{name}", _sync(pages.api_model, registry), methods=get),
        Route("/api/models/{name}/series", _sync(pages.api_series, registry), methods=get),
        Route("/api/models/{name}/versions/{number:int}", _sync(pages.api_version, registry), methods=get),
        Route("/api/models/{name}/history", _sync(pages.api_history, registry), methods=get),
        Route("/api/models/{name}/at", _sync(pages.api_at, registry), methods=get),
        Route("/api/diff", _sync(pages.api_diff, registry), methods=get),
        Route("/api/policy", _sync(pages.api_policy, registry), methods=get),
        Mount("/static", StaticFiles(directory=HERE / "static", html=False), name="static"),
    ]
    if guard is not None:
        routes += write_routes(registry, guard)
    app = Starlette(routes=routes, exception_handlers={
        CasregError: pages.on_casreg_error, HTTPException: pages.on_http_error, Exception: pages.on_crash})
    app.add_middleware(SecurityHeaders, referrer="same-origin" if guard is not None else "no-referrer")
    return app
