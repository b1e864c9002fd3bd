"""``casreg ui``: serve the read-only web page of a registry (docs/ui.md)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated

import typer

from casreg.errors import CasregError, InvalidInputError
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
) -> None:
    """Serve a read-only web page of the registry: models, versions, stages, history, diffs, policy (docs/ui.md)."""
    try:
        import uvicorn

        from casreg.web import create_app
    except ImportError as err:
        raise CasregError(f"casreg ui needs the ui extra ({err.name} is missing): "
                                "pip install 'casreg[ui]'") from None
    out = cli.out
    reg = cli.registry()
    web = create_app(reg)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    if out.as_json:
        out.json_line({"url": url, "registry": redact_url(reg.url), "read_only": True})
    else:
        out.line(f"casreg ui: {redact_url(reg.url)} at {url} (read-only; Ctrl-C stops it)")
        if not _is_loopback(host):
            out.warn(f"listening on {host}: anyone who can reach this port can read the registry; there is no "
                     "login (docs/ui.md: put it behind a proxy with authentication)")
    out.flush()
    config = uvicorn.Config(web, log_level="warning", access_log=False, server_header=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
