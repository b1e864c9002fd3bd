"""``casreg ls NAME --where ... --stage ... --alias ... --sort ...``: a small, safe filter
language translated to SQL over the ledger's ``versions`` view.

The filter is tokenized and rebuilt, never pasted: only field names, literals,
comparison operators, ``AND``/``OR``/``NOT``, ``IS [NOT] NULL``, ``IN (...)``, ``LIKE``,
``BETWEEN`` and parentheses get through, so a filter cannot reach another table, call a
function or run a second statement.

A field name (in ``--where`` and ``--sort`` alike) must be exactly ``metrics.X``,
``params.X`` or ``tags.X`` (``X``: letters, digits, ``_``, ``.``, ``-``; at most 128
characters), ``lineage.X`` for a lineage field (``lineage.hardware.gpu_count``,
``lineage.code.dirty``, ``lineage.schema.digest``, ``lineage.dependencies.torch``,
``lineage.links.dashboard``: docs/lineage.md), or a column of :data:`_COLUMNS`; anything
else is an :class:`InvalidInputError` naming the flag, before any SQL is built.
"""

from __future__ import annotations

import re

from casreg.errors import InvalidInputError
from casreg.governance.state import stage_members
from casreg.ledger.sql import snapshot_query as query
from casreg.records import Version
from casreg.refs import validate_alias, validate_name
from casreg.storage import ObjectStore

__all__ = ["translate", "field_sql", "search"]

_COLUMNS = {"version", "digest", "kind", "size", "stored_bytes", "new_bytes", "file_count", "chunk_count",
            "created_at", "author", "framework", "description"}
_LINEAGE = {"git_commit", "git_dirty", "hostname", "python_version", "casreg_version", "parent", "run_id",
            "dataset", "dependencies_source"}
#: Nested lineage fields (docs/lineage.md): ``lineage.hardware.gpu_count`` and so on.
_LINEAGE_NESTED = {
    "hardware": {"gpu_count", "gpu_type", "cpu_model", "cpu_count", "memory_bytes", "cuda_visible_devices", "source",
                 "text"},
    "code": {"commit", "branch", "dirty", "remote", "source"},
    "schema": {"digest", "tensor_count", "truncated", "signature"},
}
#: Lineage maps: ``lineage.dependencies.torch``, ``lineage.links.dashboard``.
_LINEAGE_MAPS = {"dependencies", "links"}
_KEYWORDS = {"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "ILIKE", "BETWEEN", "TRUE", "FALSE"}
_MAX_KEY = 128
#: A field name: a map key of ``metrics``/``params``/``tags``, a lineage field, or a bare
#: word (a column or a keyword); ASCII only, no quote, space or bracket can be part of one.
_FIELD_PATTERN = r"(?:metrics|params|tags|lineage)\.[A-Za-z0-9_.\-]+|[A-Za-z_][A-Za-z0-9_]*"
_FIELD = re.compile(_FIELD_PATTERN)
_TOKEN = re.compile(rf"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<op><=|>=|<>|!=|==|=|<|>)
  | (?P<punct>[(),])
  | (?P<field>{_FIELD_PATTERN})
""", re.VERBOSE)


def field_sql(name: str, flag: str = "--where") -> str:
    """The SQL for one field name: ``metrics.auc`` → ``metrics['auc']``,
    ``lineage.dataset`` → ``lineage.dataset``, ``Version`` → ``version``.

    ``name`` must be a whole field of the grammar (see the module doc), so what comes
    back is safe to put into SQL; anything else raises :class:`InvalidInputError`, its
    message starting with ``flag`` (the option the name came from)."""
    if not _FIELD.fullmatch(name):
        raise InvalidInputError(f"{flag}: bad field {name!r}: use metrics.X, params.X or tags.X (X: letters, "
                                f"digits, '_', '.', '-'), lineage.X or one of {', '.join(sorted(_COLUMNS))}")
    head, dot, rest = name.partition(".")
    if dot and head in ("metrics", "params", "tags"):
        if len(rest) > _MAX_KEY:
            raise InvalidInputError(f"{flag}: bad field {name[:40]!r}...: a key has at most {_MAX_KEY} characters")
        return f"{head}[{_quote(rest)}]"
    if dot and head == "lineage":
        sub, dot2, leaf = rest.partition(".")
        if dot2 and sub in _LINEAGE_MAPS and leaf:
            if len(leaf) > _MAX_KEY:
                raise InvalidInputError(f"{flag}: bad field {name[:40]!r}...: a key has at most {_MAX_KEY} characters")
            return f"lineage.{sub}[{_quote(leaf)}]"
        if dot2 and leaf in _LINEAGE_NESTED.get(sub, ()):
            return f"lineage.{sub}.{leaf}"
        if dot2 or rest not in _LINEAGE:
            nested = [f"{k}.{leaf}" for k, leaves in sorted(_LINEAGE_NESTED.items()) for leaf in sorted(leaves)]
            raise InvalidInputError(f"{flag}: unknown field {name!r} (lineage has "
                                    f"{', '.join(sorted(_LINEAGE) + nested)}, dependencies.NAME, links.NAME)")
            raise InvalidInputError(f"{flag}: unknown field {name!r} (lineage has {', '.join(sorted(_LINEAGE))})")
        return f"lineage.{rest}"
    if not dot and name.lower() in _COLUMNS:
        return name.lower()
    raise InvalidInputError(f"{flag}: unknown field {name!r}: use metrics.X, params.X, tags.X, lineage.X or one of "
                            f"{', '.join(sorted(_COLUMNS))}")


def _quote(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled; the field grammar admits none,
    this keeps it safe should the grammar ever widen)."""
    return "'" + text.replace("'", "''") + "'"


def translate(where: str) -> str:
    """The SQL boolean expression for a ``--where`` filter (raises
    :class:`InvalidInputError`, naming ``--where``, on anything else: an unreadable
    character, an unknown field, a field used as a function, unbalanced parentheses)."""
    out: list[str] = []
    pos, depth = 0, 0
    after_field = False
    while pos < len(where):
        m = _TOKEN.match(where, pos)
        if m is None:
            raise InvalidInputError(f"--where: cannot read {where[pos:pos + 20]!r} (at character {pos + 1})")
        pos = m.end()
        kind, text = m.lastgroup, m.group()
        if kind == "space":
            continue
        if kind == "punct" and text == "(" and after_field:  # `version()` is a DuckDB function
            raise InvalidInputError(f"--where: {out[-1]!r} is a field, not a function (at character {pos})")
        after_field = False
        if kind == "field":
            if text.upper() in _KEYWORDS:
                out.append(text.upper())
            else:
                out.append(field_sql(text, "--where"))
                after_field = True
        elif kind == "op":
            out.append({"==": "=", "!=": "<>"}.get(text, text))
        elif kind == "punct":
            depth += {"(": 1, ")": -1}.get(text, 0)
            if depth < 0:
                raise InvalidInputError("--where: unbalanced parentheses")
            out.append(text)
        else:
            out.append(text)
    if depth:
        raise InvalidInputError("--where: unbalanced parentheses")
    if not out:
        raise InvalidInputError("--where is empty")
    return " ".join(out)


def search(store: ObjectStore, name: str, *, where: str | None = None, stage: str | None = None,
           alias: str | None = None, sort: str | None = None, descending: bool = False,
           limit: int | None = None, offset: int = 0) -> list[Version]:
    """Versions of ``name`` matching a ``--where`` filter, a stage or an alias, sorted by
    version or by a field (see the module doc for what a filter and a field may say).
    Every piece of text that reaches the SQL is validated first: ``name`` and ``alias``
    against the naming rules, ``where`` by :func:`translate`, ``sort`` by
    :func:`field_sql`; anything else raises :class:`InvalidInputError`. ``limit`` and
    ``offset`` page through the result (``offset`` rows skipped first), so a page of a
    model with 100,000 versions builds only its own records."""
    validate_name(name)
    order = "version DESC" if descending else "version"
    if sort:
        order = f"{field_sql(sort, '--sort')} {'DESC' if descending else 'ASC'} NULLS LAST, version"
    clauses = [f"name = '{name}'"]
    if where:
        clauses.append(f"({translate(where)})")
    for label, pick in (("stage", stage), ("alias", alias)):
        if pick is None:
            continue
        if label == "stage" and pick not in ("staging", "production", "archived"):
            raise InvalidInputError(f"unknown stage {pick!r} (staging, production, archived; free-form aliases "
                                    "go with --alias)")
        validate_alias(pick)
        members = stage_members(store, name, pick)
        clauses.append(f"version IN ({', '.join(str(v) for v in members)})" if members else "FALSE")
    sql = f"SELECT * EXCLUDE (files) FROM versions WHERE {' AND '.join(clauses)} ORDER BY {order}"
    if limit is not None:
        sql += f" LIMIT {max(0, int(limit))}"
    if offset:
        sql += f" OFFSET {max(0, int(offset))}"
    return [Version.from_dict(row) for row in query(store, sql)]
