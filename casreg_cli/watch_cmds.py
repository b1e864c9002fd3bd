"""``casreg watch NAME@ALIAS``: run a command and/or swap a served directory when the
pointer moves (docs/watch.md)."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from casreg_cli.common import Cli, app, command, complete_ref, name_alias
from casreg_cli.output import install_log_escaping


@command(app, example="casreg watch fraud-detector@production --pull /srv/fraud --exec 'systemctl reload fraud-server'")
def watch(
    cli: Cli,
    target: Annotated[str, typer.Argument(help="NAME@ALIAS to follow.", autocompletion=complete_ref)],
    exec_: Annotated[Optional[str], typer.Option(
        "--exec", "-e", help="Shell command run after each move, with CASREG_NAME, CASREG_ALIAS, CASREG_DIGEST, "
                             "CASREG_PREVIOUS_DIGEST, CASREG_VERSION (and CASREG_PATH with --pull) set.")] = None,
    pull: Annotated[Optional[str], typer.Option(
        "--pull", help="Keep DEST (a symlink) pointing at the alias's version, pulled into DEST.versions/ "
                       "and switched atomically.")] = None,
    interval: Annotated[float, typer.Option("--interval", "-i", min=0.05,
                                            help="Seconds between polls (one small read each).")] = 5.0,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Versions kept in DEST.versions/ (with --pull).")] = 3,
    once: Annotated[bool, typer.Option("--once", help="Exit after the first change.")] = False,
    max_polls: Annotated[Optional[int], typer.Option("--max-polls", min=1, help="Exit after N polls.")] = None,
) -> None:
    """Follow NAME@ALIAS: when it moves, pull the new version (--pull) and run a command
    (--exec). Runs until interrupted (or --once / --max-polls)."""
    from casreg.watch import Change, Watcher

    out = cli.out
    name, alias = name_alias(target)
    if not out.quiet and not logging.getLogger().handlers:
        logging.getLogger().addHandler(install_log_escaping("casreg watch: %(message)s"))
        logging.getLogger().setLevel(logging.WARNING)

    def report(c: Change) -> None:
        if out.as_json:
            out.json_line(c.to_dict())  # one JSON object per line
            return
        prev = c.previous_digest[:19] if c.previous_digest else "(nothing)"
        where = f"  {pull} -> {c.path}" if c.path else ""
        ran = f"  exec exit {c.exit_code}" if c.exit_code is not None else ""
        out.line(f"{c.time}  {name}@{alias} -> {name}:{c.version} {c.digest[:19]} (was {prev}){where}{ran}")
        out.flush()

    w = Watcher(cli.registry(), name, alias, interval=interval, exec_cmd=exec_, pull_dest=pull, keep=keep,
                on_change=report)
    w.run(once=once, max_polls=max_polls)
