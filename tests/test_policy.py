"""Property tests for the policy's rule language and the ``ls --where`` filter: the
boundaries a hostile or careless input can reach."""

from __future__ import annotations

import operator
import os
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import casreg
from casreg.errors import InvalidInputError, InvalidPolicyError
from casreg.governance.policy import Rule, parse_policy
from casreg.governance.search import translate
from casreg.records import Version

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


def version(metrics: dict[str, float], number: int = 1, tags: dict[str, str] | None = None) -> Version:
    return Version(name="m", version=number, digest="blake3:" + "0" * 64, kind="file", size=1, stored_bytes=1,
                   new_bytes=1, file_count=1, chunk_count=1, created_at=datetime.now(UTC), author="a",
                   metrics=metrics, tags=tags or {})


@given(name=names, op=st.sampled_from(sorted(OPS)), threshold=finite, value=finite)
def test_numeric_rules_agree_with_python(name: str, op: str, threshold: float, value: float) -> None:
    rule = Rule.parse(f"metrics.{name} {op} {threshold!r}", "t")
    ok, detail = rule.check(version({name: value}), None)
    assert ok == OPS[op](value, float(repr(threshold)))
    assert detail.startswith(f"m:1 has metrics.{name} = ")


@given(name=names, op=st.sampled_from(sorted(OPS)), mine=finite, theirs=finite)
def test_rules_against_an_alias_compare_with_its_version(name: str, op: str, mine: float, theirs: float) -> None:
    rule = Rule.parse(f"metrics.{name} {op} @production", "t")
    ok, detail = rule.check(version({name: mine}), version({name: theirs}, number=2))
    assert ok == OPS[op](mine, theirs)
    assert "(m:2 @production)" in detail
    assert rule.check(version({name: mine}), None)[0] is True  # nothing in production yet: nothing to beat
    assert rule.check(version({}), version({name: theirs}, number=2))[0] is False  # lacking the metric fails


@given(text=st.text(max_size=60))
def test_any_rule_text_parses_or_is_refused_in_one_line(text: str) -> None:
    try:
        Rule.parse(text, "gates.production.rules[0]")
    except InvalidPolicyError as err:
        assert "\n" not in str(err).replace(repr(text), "")
        assert str(err).startswith("gates.production.rules[0]: ")


@given(text=st.text(max_size=200))
def test_any_policy_text_is_accepted_or_refused_cleanly(text: str) -> None:
    try:
        parse_policy(text)
    except InvalidPolicyError:
        pass


_REG: casreg.Registry | None = None


def small_registry(tmp: str) -> casreg.Registry:
    """Models "a" (versions 1-3) and "b" (1) on a memory registry, built once."""
    global _REG
    if _REG is None:
        reg = casreg.Registry(f"memory://where-{uuid.uuid4().hex}")
        for i, (model, auc, team) in enumerate([("a", 0.8, "fraud"), ("a", 0.9, "fraud"), ("a", 0.95, "risk"),
                                                ("b", 0.99, "fraud")]):
            path = os.path.join(tmp, f"f{i}")
            with open(path, "wb") as f:
                f.write(bytes([i]) * 100)
            reg.push(model, path, metrics={"auc": auc}, tags={"team": team})
        _REG = reg
    return _REG


WORDS = ["metrics.auc", "tags.team", "version", "size", "AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE",
         "'fraud'", "'risk'", "0.9", "2", "(", ")", ",", ">", "<", "=", "!=", ";", "--", "/*", "name",
         "FROM", "SELECT", "versions", "'", "\"", "1=1", "params.lr", "lineage.dataset", "UNION"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(tokens=st.lists(st.sampled_from(WORDS), min_size=1, max_size=8))
def test_where_never_escapes_its_model(tokens: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever the filter, the result is versions of the named model or a one-line
    InvalidInputError: never another model's rows, never another statement."""
    reg = small_registry(str(tmp_path_factory.mktemp("where")))
    where = " ".join(tokens)
    try:
        found = reg.search("a", where=where)
    except InvalidInputError as err:
        assert "\n" not in str(err)
        return
    assert {v.name for v in found} <= {"a"}


def test_where_translation_examples(tmp_path_factory: pytest.TempPathFactory) -> None:
    reg = small_registry(str(tmp_path_factory.mktemp("where")))
    assert translate("metrics.auc > 0.9 AND tags.team == 'fraud'") == "metrics['auc'] > 0.9 AND tags['team'] = 'fraud'"
    assert [v.version for v in reg.search("a", where="metrics.auc >= 0.9 AND tags.team = 'fraud'")] == [2]
    assert [v.version for v in reg.search("a", where="tags.team IN ('risk', 'x') OR version = 1")] == [1, 3]
    assert [v.version for v in reg.search("a", sort="metrics.auc", descending=True, limit=2)] == [3, 2]
    for bad, why in [("1; DROP TABLE versions", "cannot read ';"), ("name = 'b' OR 1", "unknown field 'name'"),
                     ("(metrics.auc > 1", "unbalanced"), ("metrics.auc > (SELECT 1)", "unknown field 'SELECT'")]:
        with pytest.raises(InvalidInputError, match=why):
            reg.search("a", where=bad)
