"""The registry against a plain dict model: hypothesis runs random sequences of pushes,
re-pushes, alias moves and removals, promotions, archives, rollbacks, compactions, gc
runs and abandoned pushes, and after every step checks that version numbers have no
gaps, that every reference resolves as the model says, that archived states agree, and
that every pull is byte-identical to what was pushed.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from casreg import InvalidInputError, Registry, UnknownReferenceError
from casreg.content.chunking import ChunkParams
from casreg.content.config import init_config
from casreg.content.packs import ChunkIndex
from casreg.content.push import store_source
from casreg.content.source import scan_source
from casreg.storage import ObjectStore

NAMES = ("alpha", "beta")
ALIASES = ("canary", "champion")
STAGES = ("staging", "production")
#: small chunks, so versions that share content share some chunks but not all
SMALL = ChunkParams(avg_size=1 << 13, min_size=1 << 12, max_size=1 << 15)


def content(seed: int, variant: int) -> bytes:
    """~40 KiB: ``seed`` picks the base, ``variant`` rewrites one region of it (a
    fine-tune of the same model shares most of its chunks)."""
    base = b"".join(hashlib.blake2b(f"{seed}/{i}".encode()).digest() for i in range(640))
    start = (variant * 7919) % (len(base) - 4096)
    patch = b"".join(hashlib.blake2b(f"{seed}/{variant}/v{i}".encode()).digest() for i in range(64))
    return base[:start] + patch + base[start + len(patch):] if variant else base


@dataclass
class Model:
    """What the registry should say: per model, the bytes of each version; per alias,
    its target and its last move (for rollback); the archived versions."""

    versions: dict[str, list[bytes]] = field(default_factory=dict)
    aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    last_move: dict[tuple[str, str], tuple[int | None, int | None]] = field(default_factory=dict)
    archived: dict[str, set[int]] = field(default_factory=dict)

    def move(self, name: str, alias: str, to: int | None) -> None:
        before = self.aliases.get((name, alias))
        if to is None:
            self.aliases.pop((name, alias), None)
        else:
            self.aliases[(name, alias)] = to
            self.archived.setdefault(name, set()).discard(to)  # a move to a version brings it back
        self.last_move[(name, alias)] = (before, to)

    def holding(self, name: str, version: int) -> list[str]:
        return [a for (n, a), v in self.aliases.items() if n == name and v == version]


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self, make_store: Callable[[], ObjectStore], workdir: Path) -> None:
        super().__init__()
        self.store = make_store()
        self.reg = Registry.from_store(self.store)
        init_config(self.store, SMALL)
        self.model = Model()
        self.workdir = workdir
        self.files = itertools.count()

    def _file(self, data: bytes) -> Path:
        path = self.workdir / f"src-{next(self.files)}" / "model.bin"  # one name: same bytes, same digest
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        return path

    def _versions(self, name: str) -> int:
        return len(self.model.versions.get(name, []))

    # -- rules ------------------------------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), seed=st.integers(0, 2), variant=st.integers(0, 3))
    def push(self, name: str, seed: int, variant: int) -> None:
        data = content(seed, variant)  # a small space of contents: re-pushes of the same bytes happen
        v = self.reg.push(name, self._file(data))
        self.model.versions.setdefault(name, []).append(data)
        assert v.version == self._versions(name)
        same = [i + 1 for i, d in enumerate(self.model.versions[name][:-1]) if d == data]
        if same:  # the same content has the same digest, whichever version holds it
            assert self.reg.resolve(f"{name}:{same[0]}").digest == v.digest

    @rule(name=st.sampled_from(NAMES), alias=st.sampled_from(ALIASES), pick=st.integers(1, 50))
    def set_alias(self, name: str, alias: str, pick: int) -> None:
        n = self._versions(name)
        if not n:
            with pytest.raises(UnknownReferenceError):
                self.reg.set_alias(name, alias, 1)
            return
        version = 1 + pick % n
        ev = self.reg.set_alias(name, alias, version, reason="model test")
        assert ev.to_version == version and ev.from_version == self.model.aliases.get((name, alias))
        self.model.move(name, alias, version)

    @rule(name=st.sampled_from(NAMES), alias=st.sampled_from(ALIASES + STAGES))
    def remove_alias(self, name: str, alias: str) -> None:
        if (name, alias) not in self.model.aliases:
            with pytest.raises(UnknownReferenceError):
                self.reg.remove_alias(name, alias)
            return
        self.reg.remove_alias(name, alias, reason="model test")
        self.model.move(name, alias, None)

    def _has_versions(self) -> bool:
        return any(self.model.versions.values())

    @precondition(_has_versions)
    @rule(name=st.sampled_from(NAMES), stage=st.sampled_from(STAGES), pick=st.integers(1, 50))
    def promote(self, name: str, stage: str, pick: int) -> None:
        n = self._versions(name)
        if not n:
            return
        version = 1 + pick % n
        previous = self.model.aliases.get((name, stage))
        result = self.reg.promote(name, version, stage, reason="model test")
        assert result.version == version and result.previous == previous
        if previous == version:
            assert not result.changed  # promoting to where it is changes nothing
            return
        self.model.move(name, stage, version)
        if stage == "production" and previous is not None and self.model.holding(name, previous):
            assert result.archived is None  # another alias still points at it: never archived
        elif stage == "production" and previous is not None:
            assert result.archived == previous
            self.model.archived.setdefault(name, set()).add(previous)

    @precondition(_has_versions)
    @rule(name=st.sampled_from(NAMES), pick=st.integers(1, 50))
    def archive(self, name: str, pick: int) -> None:
        n = self._versions(name)
        if not n:
            return
        version = 1 + pick % n
        if self.model.holding(name, version) or version in self.model.archived.get(name, set()):
            with pytest.raises(InvalidInputError):
                self.reg.archive(name, version)
            return
        self.reg.archive(name, version, reason="model test")
        self.model.archived.setdefault(name, set()).add(version)

    @rule(name=st.sampled_from(NAMES), alias=st.sampled_from(ALIASES + STAGES))
    def rollback(self, name: str, alias: str) -> None:
        last = self.model.last_move.get((name, alias))
        if last is None:
            with pytest.raises(UnknownReferenceError):
                self.reg.rollback(name, alias)
            return
        before, to = last
        if before is None:
            with pytest.raises(InvalidInputError):
                self.reg.rollback(name, alias)
            return
        ev = self.reg.rollback(name, alias, reason="model test")
        assert ev.to_version == before
        self.model.move(name, alias, before)
        if alias == "production" and to is not None and to != before and not self.model.holding(name, to):
            self.model.archived.setdefault(name, set()).add(to)  # unless another alias still points at it

    @rule()
    def compact(self) -> None:
        self.reg.compact()

    @rule(seed=st.integers(3, 4))
    def abandoned_push(self, seed: int) -> None:
        """A push that died before its commit: its objects are garbage."""
        store_source(self.store, scan_source(self._file(content(seed, 1))), params=SMALL, level=1,
                     index=ChunkIndex.load(self.store, cache=None))

    @rule()
    def gc(self) -> None:
        """Mark then sweep, with no grace: garbage goes, nothing a version uses does."""
        self.reg.gc(grace=0, delay=0)
        report = self.reg.gc(grace=0, delay=0)
        assert not report.warnings

    @precondition(_has_versions)
    @rule(name=st.sampled_from(NAMES), pick=st.integers(1, 50))
    def pull(self, name: str, pick: int) -> None:
        n = self._versions(name)
        if not n:
            return
        version = 1 + pick % n
        dest = self.workdir / f"pull-{next(self.files)}"
        self.reg.pull(f"{name}:{version}", dest)
        assert dest.read_bytes() == self.model.versions[name][version - 1]

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def versions_have_no_gaps_and_the_right_digests(self) -> None:
        for name, datas in self.model.versions.items():
            listed = self.reg.ls(name)
            assert [v.version for v in listed] == list(range(1, len(datas) + 1))
            assert self.reg.resolve(name).version == len(datas)
            by_content: dict[bytes, str] = {}
            for v, data in zip(listed, datas):
                assert by_content.setdefault(data, v.digest) == v.digest  # same bytes, same digest
                assert v.size == len(data)
            assert len(set(by_content.values())) == len(by_content)  # other bytes, other digests

    @invariant()
    def references_resolve_as_the_model_says(self) -> None:
        for name in NAMES:
            for alias in ALIASES + STAGES:
                want = self.model.aliases.get((name, alias))
                if want is None:
                    with pytest.raises(UnknownReferenceError):
                        self.reg.resolve(f"{name}@{alias}")
                else:
                    got = self.reg.resolve(f"{name}@{alias}")
                    assert (got.name, got.version) == (name, want)
                    assert got.digest == self.reg.resolve(f"{name}:{want}").digest

    @invariant()
    def archived_states_agree(self) -> None:
        for name in self.model.versions:
            got = {v.version for v in self.reg.search(name, stage="archived")}
            assert got == self.model.archived.get(name, set())
            assert not [v for v in got if self.model.holding(name, v)]  # an alias's target is never archived

    def teardown(self) -> None:
        """Every version pulls back byte-identical; verify finds nothing wrong."""
        for name, datas in self.model.versions.items():
            for number, data in enumerate(datas, 1):
                dest = self.workdir / f"final-{next(self.files)}"
                self.reg.pull(f"{name}:{number}", dest)
                assert dest.read_bytes() == data
        if self.model.versions:
            report = self.reg.verify()
            assert report.ok, [p.line() for p in report.problems]


@pytest.mark.parametrize("backend", ["local", "memory"])
def test_registry_matches_dict_model(backend: str, store_factory: Callable[[], ObjectStore], tmp_path: Path,
                                     author: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    author("model@example.test")
    monkeypatch.setenv("CASREG_COMPACT_THRESHOLD", "0")  # compaction happens when the rules say
    monkeypatch.setenv("CASREG_HOOKS", "off")
    runs = itertools.count()

    def machine() -> RegistryMachine:
        workdir = tmp_path / f"run-{next(runs)}"
        workdir.mkdir()
        return RegistryMachine(store_factory, workdir)

    run_state_machine_as_test(machine, settings=settings(
        max_examples=25, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))
