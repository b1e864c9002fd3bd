"""casreg/_version.py: the version every push records, read without importlib.metadata."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from casreg import _version


def test_the_fast_reader_agrees_with_importlib_metadata() -> None:
    assert _version._dist_info_version() == version("casreg") == _version.package_version()


def dist_info(root: Path, name: str, metadata: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "METADATA").write_text(metadata)


def test_the_first_casreg_dist_info_on_the_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    dist_info(a, "casreg_hooks-1.0.dist-info", "Name: casreg_hooks\nVersion: 1.0\n")  # another project
    dist_info(a, "casreg-extra-2.0.dist-info", "Name: casreg-extra\nVersion: 2.0\n")  # and another
    dist_info(b, "casreg-9.9.dist-info", "Metadata-Version: 2.4\nName: casreg\nVersion: 9.9\n\nVersion: 1\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(a), str(b), str(tmp_path / "x.zip")])
    assert _version._dist_info_version() == "9.9"


def test_no_readable_version_leaves_it_to_importlib_metadata(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dist_info(tmp_path, "casreg-1.0.dist-info", "Name: casreg\n\nVersion: 1.0\n")  # after the headers
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert _version._dist_info_version() is None
    monkeypatch.setattr(sys, "path", [str(tmp_path / "nothing")])
    assert _version._dist_info_version() is None
