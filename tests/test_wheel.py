"""The PyPI install path: the wheel ``pip wheel .`` builds installs into a clean virtual
environment and runs there, with everything it needs inside it (the CLI entry point,
``py.typed``, the web page's templates and static files, the version from the metadata).

The clean environment gets the wheel only; its third-party dependencies are borrowed from
the test environment through a path entry (installing them again from the package index
would take minutes and test pip rather than casreg). That entry adds the directory to the
path without running its ``.pth`` files, so the editable install of this checkout is not
visible there: every ``casreg`` module comes from the wheel (asserted).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


#: What ``pip wheel`` needs of the checkout: built from a copy, so that test processes that
#: build at once (pytest-xdist may give this module's tests to two) do not share the
#: checkout's ``build/`` directory (they did: a half-written ``build/bdist.*`` then broke later
#: builds), and the checkout gets no ``build/`` or ``*.egg-info`` from a test.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "casreg", "casreg_cli")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("wheel-src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (found,) = out.glob("casreg-*.whl")
    return found


def test_the_wheel_holds_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "casreg/py.typed" in names
    assert any(n.startswith("casreg/web/templates/") and n.endswith(".html") for n in names)
    assert any(n.startswith("casreg/web/static/") for n in names)
    assert "casreg_cli/main.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) or "__pycache__" in n for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "casreg = casreg_cli.main:main" in text and "casreg = casreg.fs:" in text


def test_the_wheel_installs_and_runs_in_a_clean_venv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=os.name != "nt")
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # --ignore-installed: a casreg the clean venv can see some other way (a PYTHONPATH that
    # held the checkout, with the egg-info the wheel build leaves there) must not count
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--ignore-installed", "--quiet", str(wheel)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (env_dir / "bin" / "casreg").is_file(), "the wheel installed no casreg script"
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env.update(HOME=str(tmp_path), CASREG_REGISTRY=str(tmp_path / "reg"), CASREG_USER="wheel@example.test",
               PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    casreg = env_dir / "bin" / "casreg"

    def run(*args: str) -> str:
        q = subprocess.run([str(casreg), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert q.returncode == 0, (args, q.stdout, q.stderr)
        return q.stdout

    assert run("--version").strip() == f"casreg {importlib.metadata.version('casreg')}"
    (tmp_path / "model.bin").write_bytes(os.urandom(300_000))
    run("push", "m", str(tmp_path / "model.bin"), "-q")
    run("pull", "m:1", str(tmp_path / "out.bin"), "-q")
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()
    where = subprocess.run([str(py), "-c", "import casreg, casreg_cli, casreg.web, fsspec; "
                                           "print(casreg.__file__); print(casreg_cli.__file__); "
                                           "print(type(fsspec.filesystem('casreg', registry='memory://w')).__module__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    casreg_file, cli_file, fs_module = where.stdout.split()
    assert Path(casreg_file).is_relative_to(site) and Path(cli_file).is_relative_to(site), where.stdout
    assert fs_module == "casreg.fs"
