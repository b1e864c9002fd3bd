"""``casreg ls NAME --where ... --stage ... --alias ... --sort ...``: a small, safe filter
language translated to SQL over the ledger's ``versions`` view.

The filter is tokenized and rebuilt, never pasted: only field names, literals,
comparison operators, ``AND``/``OR``/``NOT``, ``IS [NOT] NULL``, ``IN (...)``, ``LIKE``,
``BETWEEN`` and parentheses get through, so a filter cannot reach another table or run
a second statement.
"""

from __future__ import annotations

import re

from casreg.errors import InvalidInputError
from casreg.governance.state import stage_members
from casreg.ledger.sql import query
from casreg.records import Version
from casreg.refs import validate_alias, validate_name
from casreg.storage import ObjectStore

__all__ = ["translate", "field_sql", "search"]

_COLUMNS = {"version", "digest", "kind", "size", "stored_bytes", "new_bytes", "file_count", "chunk_count",
            "created_at", "author", "framework", "description"}
_LINEAGE = {"git_commit", "git_dirty", "hostname", "python_version", "casreg_version", "parent", "run_id",
            "dataset"}
_KEYWORDS = {"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "ILIKE", "BETWEEN", "TRUE", "FALSE"}
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<op><=|>=|<>|!=|==|=|<|>)
  | (?P<punct>[(),])
  | (?P<field>(?:metrics|params|tags|lineage)\.[A-Za-z0-9_.\-]+|[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)


def field_sql(name: str) -> str:
    """``metrics.auc`` → ``metrics['auc']``; ``lineage.dataset`` → ``lineage.dataset``."""
    head, dot, rest = name.partition(".")
    if dot and head in ("metrics", "params", "tags"):
        if not rest or len(rest) > 128:
            raise InvalidInputError(f"bad field {name!r}")
        return f"{head}['{rest}']"
    if dot and head == "lineage":
        if rest not in _LINEAGE:
            raise InvalidInputError(f"unknown field {name!r} (lineage has {', '.join(sorted(_LINEAGE))})")
        return f"lineage.{rest}"
    if not dot and name.lower() in _COLUMNS:
        return name.lower()
    raise InvalidInputError(f"unknown field {name!r}: use metrics.X, params.X, tags.X, lineage.X or one of "
                            f"{', '.join(sorted(_COLUMNS))}")


def translate(where: str) -> str:
    """The SQL boolean expression for a ``--where`` filter (raises on anything else)."""
    out: list[str] = []
    pos, depth = 0, 0
    while pos < len(where):
        m = _TOKEN.match(where, pos)
        if m is None:
            raise InvalidInputError(f"--where: cannot read {where[pos:pos + 20]!r} (at character {pos + 1})")
        pos = m.end()
        kind, text = m.lastgroup, m.group()
        if kind == "space":
            continue
        if kind == "field":
            out.append(text.upper() if text.upper() in _KEYWORDS else field_sql(text))
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
           limit: int | None = None) -> list[Version]:
    """Versions of ``name`` matching a ``--where`` filter, a stage or an alias, sorted by
    version or by a field (see the module doc for what a filter may say)."""
    validate_name(name)
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
    order = "version"
    if sort:
        order = f"{field_sql(sort)} {'DESC' if descending else 'ASC'} NULLS LAST, version"
    elif descending:
        order = "version DESC"
    sql = f"SELECT * EXCLUDE (files) FROM versions WHERE {' AND '.join(clauses)} ORDER BY {order}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [Version.from_dict(row) for row in query(store, sql)]
