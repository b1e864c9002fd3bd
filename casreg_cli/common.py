"""What every casreg command shares: the typer apps, option aliases, flag parsing, and
:func:`command`, the one skeleton every command runs in (global options → output →
registry → the library call → rendering)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

from casreg.refs import parse_ref
from casreg_cli.output import Output

if TYPE_CHECKING:
    from casreg import Registry

__all__ = ["complete_model", "complete_ref", "app", "alias_app", "Cli", "command", "command_word", "json_requested",
           "RegistryOpt", "JsonOpt", "QuietOpt", "RefArg", "ReasonOpt", "AnnotateOpt", "pairs", "name_alias"]

F = TypeVar("F", bound=Callable[..., None])

app = typer.Typer(
    name="casreg",
    help="A model registry built as a content-addressed, immutable artifact store.",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # help text is prose: "[[hooks]]" stays text, a line break is not a paragraph
    add_completion=True,  # --install-completion, --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
alias_app = typer.Typer(help="Deployment pointers: NAME@ALIAS -> a version.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")


def _completion_registry(ctx: typer.Context) -> Registry | None:
    """The registry a command line being completed names (``--registry`` before or after
    the command, else ``CASREG_REGISTRY``, else ``~/.casreg``), if it is a local directory:
    completion lists keys, which is cheap only there."""
    from casreg import Registry
    from casreg.storage import default_registry_url

    url: object = None
    at: typer.Context | None = ctx
    while at is not None and url is None:  # typed after the command, else before it
        if at.params.get("registry") and _source(at, "registry") == "COMMANDLINE":
            url = at.params["registry"]
        at = typing.cast("typer.Context | None", at.parent)
    text = str(url) if url else default_registry_url()
    if "://" in text and not text.startswith("file://"):
        return None  # s3:// would cost a round trip per key press; memory:// is per process
    return Registry(text)


def complete_model(ctx: typer.Context, incomplete: str) -> list[str]:
    """Model names for shell completion; nothing (never an error) if they cannot be listed."""
    try:
        reg = _completion_registry(ctx)
        return reg.model_names(incomplete) if reg is not None else []
    except Exception:  # noqa: BLE001 - a completion must never print a traceback into a shell
        return []


def complete_ref(ctx: typer.Context, incomplete: str) -> list[str]:
    """``NAME`` or, once ``@`` is typed, ``NAME@ALIAS`` for shell completion."""
    name, at, alias = incomplete.partition("@")
    if not at:
        return complete_model(ctx, incomplete)
    try:
        reg = _completion_registry(ctx)
        return [f"{name}@{a}" for a in reg.alias_names(name, alias)] if reg is not None else []
    except Exception:  # noqa: BLE001 - as complete_model
        return []


RegistryOpt = Annotated[
    Optional[str],
    typer.Option("--registry", "-r", envvar="CASREG_REGISTRY", show_envvar=True,
                 help="Registry URL: a directory, s3://BUCKET/PREFIX or memory://NAME (default ~/.casreg)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
RefArg = Annotated[str, typer.Argument(help="NAME, NAME:N, NAME@ALIAS or a digest.", autocompletion=complete_ref)]
ReasonOpt = Annotated[Optional[str], typer.Option("--reason", help="Why (recorded in the log).")]
AnnotateOpt = Annotated[Optional[list[str]], typer.Option("--annotate", help="KEY=VALUE kept on the alias "
                                                          "(repeatable), e.g. weight=0.1 for a canary.")]
SignKeyOpt = Annotated[Optional[str], typer.Option(
    "--key", metavar="PRIVATE_KEY", help="Sign the event with this private key file (default: $CASREG_SIGNING_KEY; "
                                         "required when the policy has [keys]; docs/signing.md).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors "
                                                             "(and the JSON --json asks for).")]


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
        from casreg._version import package_version

        Output(False, False).line(f"casreg {package_version()}")  # the installed package's metadata
        raise typer.Exit()


#: The global options that take a value (the command word is the first argument that is
#: neither an option nor such a value).
_VALUED = ("--registry", "-r")


def json_requested(argv: list[str]) -> bool:
    """Whether ``argv`` asks for ``--json`` (before or after the command; not after
    ``--``): its errors are then JSON too, also those found before a command runs."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def command_word(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first argument that is not an option or the value
    of a global option before it (``casreg -r URL ls`` runs ``ls``); None if there is none."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif arg == "--" or not arg.startswith("-"):
            return None if arg == "--" else arg
    return None


class _Globals:
    """The global options given before the command (``casreg --json -r URL ls``); each
    command also takes them after its own arguments (``casreg ls --json -r URL``)."""

    def __init__(self, registry: str | None = None, as_json: bool = False, quiet: bool = False) -> None:
        self.registry, self.as_json, self.quiet = registry, as_json, quiet


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    registry: Annotated[Optional[str], typer.Option(
        "--registry", "-r", help="Registry URL: a directory, s3://BUCKET/PREFIX or memory://NAME (default "
                                 "$CASREG_REGISTRY, else ~/.casreg). Every option here may also follow the "
                                 "command.")] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """A model registry built as a content-addressed, immutable artifact store."""
    ctx.obj = _Globals(registry, json_, quiet)


class Cli:
    """What a command gets besides its own arguments: where its output goes (``--json``,
    ``--quiet``) and the registry ``--registry`` names."""

    def __init__(self, registry: str | None, as_json: bool, quiet: bool) -> None:
        self.out = Output(as_json, quiet)
        self.url = registry

    def registry(self, *, zstd_level: int | None = None, check_writes: bool = True) -> Registry:
        """The registry ``--registry`` (or ``CASREG_REGISTRY``, else ``~/.casreg``) names."""
        from casreg import Registry

        return Registry(self.url, zstd_level=zstd_level, check_writes=check_writes)

    def emit(self, value: object, human: Callable[[Output], None]) -> None:
        """Print ``value`` as JSON under ``--json``, else let ``human`` render it (nothing
        under ``--quiet``, which :class:`Output` swallows)."""
        if self.out.as_json:
            self.out.json(value)
        else:
            human(self.out)


class _Command:
    """A command as typer sees it: ``fn``'s own parameters (after its :class:`Cli`) and the
    global options, worked out only when typer asks (the CLI builds just the command it
    runs, so the others' signatures are never computed: start-up stays short)."""

    def __init__(self, fn: Callable[..., None], registry: bool) -> None:
        self.fn, self.registry = fn, registry
        self.__name__, self.__qualname__ = fn.__name__, fn.__qualname__
        self.__module__, self.__doc__ = fn.__module__, fn.__doc__

    @functools.cached_property
    def __signature__(self) -> inspect.Signature:
        hints = typing.get_type_hints(self.fn, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in list(inspect.signature(self.fn).parameters.values())[1:]]
        extra: list[tuple[str, object, object]] = [("registry", RegistryOpt, None)] if self.registry else []
        extra += [("json_", JsonOpt, False), ("quiet", QuietOpt, False)]
        shared = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=a)
                  for n, a, d in extra]
        context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        return inspect.Signature([context, *own, *shared], return_annotation=None)

    @functools.cached_property
    def __annotations__(self) -> dict[str, object]:  # type: ignore[override]
        return {p.name: p.annotation for p in self.__signature__.parameters.values()} | {"return": None}

    def __call__(self, **kwargs: object) -> None:
        ctx = typing.cast("typer.Context", kwargs.pop("ctx"))
        root = ctx.obj if isinstance(ctx.obj, _Globals) else _Globals()
        registry = typing.cast("str | None", kwargs.pop("registry", None))
        if root.registry is not None and _source(ctx, "registry") != "COMMANDLINE":
            registry = root.registry  # before the command beats the environment; after it beats both
        cli = Cli(registry, bool(kwargs.pop("json_")) or root.as_json, bool(kwargs.pop("quiet")) or root.quiet)
        self.fn(cli, **kwargs)


def _source(ctx: typer.Context, name: str) -> str | None:
    """Where parameter ``name`` got its value: ``COMMANDLINE``, ``ENVIRONMENT``, ``DEFAULT``..."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


def command(group: typer.Typer, name: str | None = None, *, example: str, registry: bool = True) -> Callable[[F], F]:
    """Register ``fn(cli, ...)`` as a command of ``group``. The command line gets ``fn``'s
    own parameters (after ``cli``) followed by the global options: ``--registry``/``-r``
    (unless ``registry=False``), ``--json`` and ``--quiet``; ``fn`` gets the :class:`Cli`
    they make, with those given before the command (``casreg --json ls``) merged in: a
    flag set in either place is set, and ``--registry`` after the command wins. Help,
    usage errors and exit codes are typer's, as for any command. ``example`` is a whole
    command line, shown under ``--help`` (and listed in docs/cli.md)."""

    def register(fn: F) -> F:
        group.command(name, epilog=f"Example: {example}")(_Command(fn, registry))
        return fn

    return register
