"""``casreg ui``: serve the web page of a registry, read-only unless ``--allow-writes`` (docs/ui.md)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Annotated, Optional

import typer

from casreg.errors import CasregError, InvalidInputError
from casreg.lineage import current_author
from casreg.redact import redact_url
from casreg_cli.common import Cli, app, command


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), so the URL printed is
    the one being served before the server starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise InvalidInputError(f"--host {host!r}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {err.strerror} (another --port?)") from None
    sock.listen(128)
    return sock


def _host_name(name: str) -> str:
    """An ``--allowed-host`` value as the Host check compares it: lower case, without a
    port; an IPv6 address in brackets. A URL, a path, a port or brackets around anything
    but an IPv6 address are refused in one line."""
    text = name.strip().lower()
    bracketed = text.startswith("[") and text.endswith("]")
    bare = text[1:-1] if bracketed else text
    try:
        if ":" in bare:
            return f"[{ipaddress.IPv6Address(bare).compressed}]"
        if not bracketed and re.fullmatch(r"[a-z0-9.\-]+", bare):
            return bare
    except ValueError:
        pass
    raise InvalidInputError(f"--allowed-host {name!r}: give a host name without scheme or port "
                            "(e.g. models.example.com)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@command(app, example='casreg ui --port 8000')
def ui(
    cli: Cli,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (default: this machine only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    allow_writes: Annotated[bool, typer.Option(
        "--allow-writes", help="Offer promote, approve/reject, archive, alias and rollback forms (CSRF-protected; "
                               "the policy applies).")] = False,
    author_header: Annotated[Optional[str], typer.Option(
        "--author-header", metavar="NAME", help="With --allow-writes: take each action's author from this request "
                                                "header, set by an authenticating reverse proxy (only safe behind "
                                                "one); default: the user who starts the server.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        "--allowed-host", metavar="NAME", help="With --allow-writes: a host name (no port) write requests may be "
                                               "addressed to, e.g. the proxy's public name; repeatable. Others get "
                                               "403 (against DNS rebinding).")] = None,
) -> None:
    """Serve a web page of the registry: models, versions, stages, history, diffs, policy (read-only unless
    --allow-writes; docs/ui.md)."""
    try:
        import uvicorn

        from casreg.web import create_app
        from casreg.web.actions import loopback_hosts
    except ImportError as err:
        raise CasregError(f"casreg ui needs the ui extra ({err.name} is missing): "
                                "pip install 'casreg[ui]'") from None
    out = cli.out
    if author_header is not None and not allow_writes:
        raise InvalidInputError("--author-header names the author of write actions: it needs --allow-writes")
    if allowed_host and not allow_writes:
        raise InvalidInputError("--allowed-host names where write actions may be posted: it needs --allow-writes")
    named = frozenset(_host_name(h) for h in allowed_host or [])
    from casreg.governance.event_signing import SIGNING_KEY_ENV

    if allow_writes and os.environ.pop(SIGNING_KEY_ENV, ""):
        # the library signs every event with this key when none is given: the server must never sign what
        # whoever reaches its port asks for with the key of the user who started it (docs/ui.md, "Not signed")
        out.warn(f"{SIGNING_KEY_ENV} is ignored by casreg ui: actions taken through the UI are never signed")
    reg = cli.registry()
    loopback = _is_loopback(host)
    author = None if author_header is not None or not allow_writes else current_author()
    # on loopback, only loopback names may be posted to (no DNS rebinding); behind a proxy (--author-header,
    # or a public address) the proxy's name is not known here unless --allowed-host names it
    hosts = loopback_hosts(host) if allow_writes and loopback and author_header is None else None
    if named:
        hosts = (hosts or frozenset()) | named
    web = create_app(reg, allow_writes=True, author=author, author_header=author_header, allowed_hosts=hosts) \
        if allow_writes else create_app(reg)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    who = f"the {author_header} header" if author_header is not None else author
    if out.as_json:
        out.json_line({"url": url, "registry": redact_url(reg.url), "read_only": not allow_writes}
                      | ({"author": author, "author_header": author_header} if allow_writes else {}))
    else:
        mode = f"writes allowed, as {who}" if allow_writes else "read-only"
        out.line(f"casreg ui: {redact_url(reg.url)} at {url} ({mode}; Ctrl-C stops it)")
        if not loopback:
            out.warn(f"listening on {host}: anyone who can reach this port can read the registry; there is no "
                     "login (docs/ui.md: put it behind a proxy with authentication)")
    if allow_writes and not loopback:
        out.warn(f"--allow-writes on {host}: anyone who can reach this port can promote, approve and archive "
                 f"as {who} (docs/ui.md: only behind an authenticating proxy)")
    if allow_writes and hosts is None:
        out.warn("write requests are taken for any Host name: name the proxy's with --allowed-host NAME "
                 "(a DNS-rebinding page could otherwise post)")
    out.flush()
    config = uvicorn.Config(web, log_level="warning", access_log=False, server_header=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
