"""Who and where: the author of an event and the lineage of a push."""

from __future__ import annotations

import getpass
import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["current_author", "hostname", "git_state", "GitState"]


def _git(args: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def current_author() -> str:
    """``CASREG_USER``, else git's ``user.email``, else the OS user (read on every call,
    so a process that changes ``CASREG_USER`` acts as the new user)."""
    user = os.environ.get("CASREG_USER", "").strip()
    if user:
        return user
    return _fallback_author()


@lru_cache(maxsize=1)
def _fallback_author() -> str:
    email = _git(["config", "user.email"])
    if email:
        return email
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def hostname() -> str:
    return socket.gethostname() or platform.node() or "unknown"


@dataclass(frozen=True, slots=True)
class GitState:
    commit: str | None
    dirty: bool | None


def git_state(path: str) -> GitState:
    """HEAD commit and dirty flag of the repository holding ``path``, if any."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    commit = _git(["rev-parse", "HEAD"], cwd=directory)
    if commit is None:
        return GitState(None, None)
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd=directory)
    return GitState(commit, bool(status) if status is not None else None)
