"""What every casreg command shares: the typer apps, option aliases and flag parsing."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from casreg.refs import parse_ref

__all__ = ["app", "alias_app", "RegistryOpt", "JsonOpt", "QuietOpt", "RefArg", "ReasonOpt", "AnnotateOpt", "pairs",
           "name_alias"]

app = typer.Typer(
    name="casreg",
    help="A model registry built as a content-addressed, immutable artifact store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
alias_app = typer.Typer(help="Deployment pointers: NAME@ALIAS -> a version.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")

RegistryOpt = Annotated[
    Optional[str],
    typer.Option("--registry", "-r", envvar="CASREG_REGISTRY", show_envvar=True,
                 help="Registry URL: a directory, s3://BUCKET/PREFIX or memory://NAME (default ~/.casreg)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
RefArg = Annotated[str, typer.Argument(help="NAME, NAME:N, NAME@ALIAS or a digest.")]
ReasonOpt = Annotated[Optional[str], typer.Option("--reason", help="Why (recorded in the log).")]
AnnotateOpt = Annotated[Optional[list[str]], typer.Option("--annotate", help="KEY=VALUE kept on the alias "
                                                          "(repeatable), e.g. weight=0.1 for a canary.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and the JSON --json asks for).")]


def pairs(kind: str, items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=f"--{kind}")
        out[key] = value
    return out


def name_alias(text: str) -> tuple[str, str]:
    ref = parse_ref(text)
    if ref.alias is None or ref.name is None:
        raise typer.BadParameter(f"expected NAME@ALIAS, got {text!r}")
    return ref.name, ref.alias


def _version(value: bool) -> None:
    if value:
        from casreg import __version__

        typer.echo(f"casreg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """A model registry built as a content-addressed, immutable artifact store."""
