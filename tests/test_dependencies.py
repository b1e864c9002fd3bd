"""Every third-party package casreg imports is declared in pyproject.toml (a dependency
or an extra), not merely brought in by another package."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {_norm(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in specs}


def _imported() -> dict[str, str]:
    """Top-level module -> one file importing it, over casreg/ and casreg_cli/."""
    found: dict[str, str] = {}
    for package in ("casreg", "casreg_cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared() -> None:
    dists = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = []
    for module, where in sorted(_imported().items()):
        if module in sys.stdlib_module_names or module in ("casreg", "casreg_cli"):
            continue
        candidates = {_norm(d) for d in dists.get(module, [module])}
        if not candidates & declared:
            missing.append(f"{module} ({where}; distribution {sorted(candidates)})")
    assert not missing, "imported but not declared in pyproject.toml: " + ", ".join(missing)


def test_the_check_sees_an_undeclared_import() -> None:
    """The scan finds imports at any depth (a function-level one included)."""
    imported = _imported()
    assert {"blake3", "zstandard", "pyarrow", "aiobotocore", "rich", "ml_dtypes"} <= set(imported)
    assert "not-a-declared-package" not in _declared() and "blake3" in _declared()


#: The modules that may import a package of an extra (each turns its absence into one
#: line naming the extra: MissingDependencyError), and the packages they may import so.
OPTIONAL_IMPORTS = {
    "casreg/content/lazy.py": {"numpy", "torch", "ml_dtypes"},  # tensors, pt
    "casreg/governance/signatures.py": {"cryptography"},  # signing
    "casreg/governance/event_signing.py": {"cryptography"},  # signing
    "casreg/importers/mlflow.py": {"mlflow", "yaml"},  # mlflow
    "casreg/testing/store_suite.py": {"pytest", "hypothesis"},  # test: the conformance suite
    "casreg/web/app.py": {"starlette", "jinja2", "markupsafe"},  # ui
    "casreg/web/actions.py": {"starlette"},  # ui
    "casreg_cli/ui_cmds.py": {"uvicorn"},  # ui
}


def test_only_optional_modules_import_packages_of_extras() -> None:
    """A plain ``pip install casreg`` must push and pull: anything else that imports a
    package only an extra declares (the planes codec once imported numpy, which pyarrow
    no longer brings, and every push of a safetensors file failed) is refused here."""
    dists = importlib.metadata.packages_distributions()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {_norm(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in project["dependencies"]}
    wrong = []
    for package in ("casreg", "casreg_cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                for module in {n.split(".")[0] for n in names}:
                    if module in sys.stdlib_module_names or module in ("casreg", "casreg_cli"):
                        continue
                    if {_norm(d) for d in dists.get(module, [module])} & core:
                        continue
                    if module not in OPTIONAL_IMPORTS.get(where, set()):
                        wrong.append(f"{where} imports {module}")
    assert not wrong, "packages of extras imported outside the modules that handle their absence: " + \
        ", ".join(sorted(set(wrong)))
