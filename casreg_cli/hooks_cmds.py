"""``casreg hooks set|show|test``: webhooks and commands fired by registry events
(docs/hooks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from casreg.errors import InvalidInputError, NotFoundError
from casreg_cli.common import Cli, SignKeyOpt, app, command

hooks_app = typer.Typer(help="Hooks: webhooks and commands run on push, alias moves and promotions.",
                        no_args_is_help=True)
app.add_typer(hooks_app, name="hooks")


@command(hooks_app, "set", example='casreg hooks set hooks.toml')
def set_(
    cli: Cli,
    file: Annotated[str, typer.Argument(help="A TOML file of [[hooks]] tables (docs/hooks.md); - reads stdin.")],
    if_digest: Annotated[Optional[str], typer.Option(
        "--if-digest", help="Replace the config only if it is still this digest (from hooks show); "
                            "'none': only if there is no config yet.")] = None,
    key: SignKeyOpt = None,
) -> None:
    """Validate FILE and make it the registry's hooks config (compare-and-swap; needs the
    policy's 'policy' permission; signed by an admin key under a pinned root or [keys])."""
    from casreg.governance.hooks import write_hooks

    out = cli.out
    if file == "-":
        import sys

        text = sys.stdin.read()
    else:
        path = Path(file)
        if not path.is_file():
            raise NotFoundError(f"hooks file {file} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"hooks file {file} is not UTF-8 text") from None
    expected: str | None | bool = True
    if if_digest is not None:
        expected = None if if_digest.lower() == "none" else if_digest
    cfg = write_hooks(cli.registry().store, text, expected_digest=expected, key=key)
    if out.as_json:
        out.json(cfg.to_dict())
        return
    names = ", ".join(h.name for h in cfg.hooks) or "none"
    out.line(f"hooks set: {len(cfg.hooks)} hook{'s' if len(cfg.hooks) != 1 else ''} ({names})  {cfg.digest}")


@command(hooks_app, "show", example='casreg hooks show')
def show(cli: Cli) -> None:
    """Print the registry's hooks config (its TOML text, or --json), credentials redacted."""
    from casreg.governance.hooks import read_hooks

    out = cli.out
    cfg = read_hooks(cli.registry().store)
    if out.as_json:
        out.json(cfg.to_dict() if cfg else {"key": "config/hooks.toml", "digest": None, "hooks": []})
        return
    if cfg is None:
        out.line("# no hooks configured (casreg hooks set FILE.toml; docs/hooks.md)")
        return
    out.line(f"# config/hooks.toml  {cfg.digest}")
    shown = cfg.display_text()
    if shown != cfg.text:
        out.line("# credentials redacted (***): casreg hooks set now refuses them; move them to environment "
                 "variables (docs/hooks.md)")
    out.block(shown.rstrip("\n"))


@command(hooks_app, "test", example='casreg hooks test --hook slack')
def test(
    cli: Cli,
    hook: Annotated[Optional[list[str]], typer.Option("--hook", help="Only this hook (repeatable).")] = None,
    name: Annotated[str, typer.Option("--name", help="Model name put in the test event.")] = "casreg-test",
) -> None:
    """Send a 'test' event to the configured hooks (ignoring their filters) and report
    each delivery; nothing is recorded. Exits 1 if any delivery failed."""
    from casreg.governance.hooks import deliver, read_hooks, sample_event, select

    out = cli.out
    reg = cli.registry()
    cfg = read_hooks(reg.store)
    if cfg is None or not cfg.hooks:
        raise NotFoundError(f"no hooks are configured in {reg.url} (casreg hooks set FILE.toml)")
    event = sample_event(name)
    results = [deliver(h, event, registry=reg.url) for h in select(cfg.hooks, hook)]
    if out.as_json:
        out.json([r.to_dict() for r in results])
    else:
        for r in results:
            status = "ok" if r.ok else f"FAILED: {r.error}"
            out.line(f"{r.hook:<20} {r.target:<32} {r.attempts} attempt{'s' if r.attempts != 1 else ''}  {status}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
