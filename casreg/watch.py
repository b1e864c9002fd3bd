"""Follow a deployment pointer: react when ``NAME@ALIAS`` moves.

Why: a serving host should pick up a promotion without anyone logging into it. A
:class:`Watcher` polls the pointer (one small read per poll: :func:`read_pointer`), and
when it moves:

1. with ``pull_dest``: pulls the new version, pinned by its digest (a pointer that moves
   again meanwhile cannot mix versions), into ``DEST.versions/<first 16 hex>/`` beside
   ``DEST``, verified and complete before it appears there; then switches ``DEST`` (a
   symlink) to it in one ``rename(2)``: a symlink to a temporary name, then ``os.replace``
   onto ``DEST``. Anyone who opens ``DEST`` sees the old version or the new one, whole.
   Old versions are pruned, keeping the newest ``keep`` (the served one always), so a
   reader that resolved ``DEST`` just before a switch can finish reading.
2. with ``exec_cmd``: runs it (through ``/bin/sh``) with ``CASREG_NAME``,
   ``CASREG_ALIAS``, ``CASREG_DIGEST``, ``CASREG_PREVIOUS_DIGEST``, ``CASREG_VERSION``,
   ``CASREG_REGISTRY`` and, with ``pull_dest``, ``CASREG_PATH`` (the version's directory)
   in its environment, and waits for it.

A reader that must see one version across several files resolves ``DEST`` once (opens
the directory, or ``os.path.realpath``) and reads relative to that (docs/watch.md).

Failures never stop a watcher: an unreachable registry, a failed pull or a failing
command are logged (logger ``casreg.watch``) and the change is tried again at the next
poll (a failed pull leaves ``DEST`` as it was).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casreg.errors import CasregError, InvalidInputError
from casreg.ledger.pointers import confirm_pointer, read_pointer
from casreg.refs import validate_alias, validate_name

if TYPE_CHECKING:
    from casreg.registry import Registry

__all__ = ["Change", "Watcher", "served_digest", "switch_symlink"]

log = logging.getLogger(__name__)

DIGEST_DIR_HEX = 16  # hex digits of the version digest naming its directory


@dataclass(frozen=True, slots=True)
class Change:
    """The pointer moved (or, at start with a destination, DEST was brought up to date)."""

    name: str
    alias: str
    digest: str
    version: int
    previous_digest: str | None
    time: str
    path: str | None = None  # the versioned directory DEST now points at
    exit_code: int | None = None  # of the command, if one ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hex(digest: str) -> str:
    return digest.removeprefix("blake3:")


def versions_dir(dest: Path) -> Path:
    return dest.parent / f"{dest.name}.versions"


def served_digest(dest: Path) -> str | None:
    """The digest prefix (``DIGEST_DIR_HEX`` hex digits) of the version ``dest`` points at,
    or ``None`` if it is not a symlink into its versions directory."""
    try:
        target = os.readlink(dest)
    except (FileNotFoundError, OSError):
        return None
    parent, _, leaf = target.rstrip("/").rpartition("/")
    if parent.rpartition("/")[2] != versions_dir(dest).name or len(leaf) != DIGEST_DIR_HEX:
        return None
    return leaf


def switch_symlink(dest: Path, target: Path) -> None:
    """Point the symlink ``dest`` at ``target`` atomically: a new symlink under a
    temporary name beside ``dest``, then ``rename(2)`` over it (relative, so moving the
    parent directory keeps it valid)."""
    rel = os.path.relpath(target, dest.parent)
    tmp = dest.parent / f".{dest.name}.casreg-link-{uuid.uuid4().hex[:12]}"
    os.symlink(rel, tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Watcher:
    """Polls ``name@alias`` on ``registry``; see the module docstring."""

    def __init__(self, registry: Registry, name: str, alias: str, *, interval: float = 5.0,
                 exec_cmd: str | None = None, pull_dest: str | os.PathLike[str] | None = None, keep: int = 3,
                 on_change: Callable[[Change], None] | None = None) -> None:
        validate_name(name)
        validate_alias(alias)
        if interval <= 0:
            raise InvalidInputError(f"the poll interval must be positive, got {interval}")
        if keep < 1:
            raise InvalidInputError(f"keep must be at least 1 (the served version), got {keep}")
        self.registry, self.name, self.alias = registry, name, alias
        self.interval = interval
        self.exec_cmd = exec_cmd
        self.dest = Path(pull_dest).absolute() if pull_dest is not None else None
        self.keep = keep
        self.on_change = on_change
        self.stop_event = threading.Event()
        self.polls = 0
        self.current: str | None = None  # the digest we act on: DEST's, or the last seen
        self._started = False
        self._warned: str | None = None
        if self.dest is not None and (self.dest.exists() or self.dest.is_symlink()) and not self.dest.is_symlink():
            raise InvalidInputError(
                f"{self.dest} exists and is not a symlink: a watch that pulls keeps its destination as a symlink to "
                f"{versions_dir(self.dest).name}/<digest>; move it away or pick another path")

    # -- one poll -------------------------------------------------------------------------------
    def poll(self) -> Change | None:
        """Read the pointer once and act if it moved; never raises for a registry, pull or
        command failure (they are logged and retried at the next poll)."""
        self.polls += 1
        try:
            pointer = read_pointer(self.registry.store, self.name, self.alias)
        except CasregError as err:
            self._warn(f"cannot read {self.name}@{self.alias}: {err}")
            return None
        if pointer is None:
            self._warn(f"{self.name}@{self.alias} is not set; waiting for it")
            return None
        self._warned = None
        if not self._started:
            self._started = True
            if self.dest is None:
                self.current = pointer.digest  # the baseline: act on moves from here
                return None
            served = served_digest(self.dest)
            if served is not None and _hex(pointer.digest).startswith(served):
                self.current = pointer.digest
                return None
            self.current = None  # DEST is missing or behind: bring it up to date now
        if pointer.digest == self.current:
            return None
        try:  # a moved pointer must agree with the ledger before anything is deployed
            confirm_pointer(self.registry.store, pointer)
        except CasregError as err:
            self._warn(f"not deploying {self.name}@{self.alias}: {err}")
            return None
        return self._apply(pointer.digest, pointer.version)

    def _warn(self, message: str) -> None:
        if message != self._warned:  # once per distinct problem, not once per poll
            log.warning("%s", message)
            self._warned = message

    def _apply(self, digest: str, version: int) -> Change | None:
        previous = self.current
        path: Path | None = None
        if self.dest is not None:
            try:
                path = self._pull(digest)
            except (CasregError, OSError) as err:
                log.warning("pull of %s:%s (%s) for %s failed, keeping what is served: %s",
                            self.name, version, digest, self.dest, err)
                return None
        self.current = digest
        change = Change(self.name, self.alias, digest, version, previous,
                        datetime.now(UTC).isoformat(timespec="seconds"),
                        str(path) if path else None)
        if self.exec_cmd:
            change = Change(**{**change.to_dict(), "exit_code": self._exec(change)})
        if self.on_change is not None:
            self.on_change(change)
        return change

    def _pull(self, digest: str) -> Path:
        assert self.dest is not None
        vdir = versions_dir(self.dest)
        vdir.mkdir(parents=True, exist_ok=True)
        target = vdir / _hex(digest)[:DIGEST_DIR_HEX]
        # pinned by digest: a pointer that moves again meanwhile cannot mix versions
        self.registry.pull(f"{self.name}@{digest}", target, force=True)
        os.utime(target, follow_symlinks=False)  # newest served first when pruning
        switch_symlink(self.dest, target)
        self._prune(target)
        return target

    def _prune(self, served: Path) -> None:
        assert self.dest is not None
        vdir = versions_dir(self.dest)
        olds = []
        for entry in os.scandir(vdir):
            if entry.name.startswith(".") or Path(entry.path) == served:
                continue
            try:
                olds.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path)))
            except FileNotFoundError:
                continue
        olds.sort(reverse=True)
        for _, p in olds[self.keep - 1:]:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def _exec(self, change: Change) -> int:
        env = {**os.environ,
               "CASREG_NAME": change.name, "CASREG_ALIAS": change.alias, "CASREG_DIGEST": change.digest,
               "CASREG_PREVIOUS_DIGEST": change.previous_digest or "", "CASREG_VERSION": str(change.version),
               "CASREG_REGISTRY": self.registry.url}
        if change.path:
            env["CASREG_PATH"] = change.path
        try:
            code = subprocess.run(self.exec_cmd or "", shell=True, env=env).returncode
        except OSError as err:
            log.warning("cannot run %r: %s", self.exec_cmd, err)
            return -1
        if code != 0:
            log.warning("command %r exited with %d after %s@%s moved to %s:%d", self.exec_cmd, code,
                        change.name, change.alias, change.name, change.version)
        return code

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, *, once: bool = False, max_polls: int | None = None) -> list[Change]:
        """Poll until :meth:`stop`, the first change (``once``) or ``max_polls`` polls."""
        changes: list[Change] = []
        while not self.stop_event.is_set():
            change = self.poll()
            if change is not None:
                changes.append(change)
                if once:
                    break
            if max_polls is not None and self.polls >= max_polls:
                break
            self.stop_event.wait(self.interval)
        return changes

    def stop(self) -> None:
        self.stop_event.set()
