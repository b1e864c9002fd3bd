"""The public API is typed: no ``Any`` in its signatures, a contract on every method of
the façade, and ``py.typed`` in the package, so a user's type checker sees real types
(checked by running mypy on a caller's snippet against the built, installed wheel)."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import casreg

ROOT = Path(__file__).resolve().parent.parent
ANY = re.compile(r"\bAny\b")

#: Classes the façade's methods return (beyond ``casreg.__all__``): they are public too.
RETURNED = {
    "casreg.governance.lifecycle": ["Promotion"],
    "casreg.governance.history": ["LogEntry", "LogPage"],
    "casreg.governance.state": ["VersionState", "ListingState"],
    "casreg.ledger.sql": ["SqlResult"],
    "casreg.governance.policy": ["PolicyFile", "Policy", "GateResult", "Gate", "Rule", "Protect"],
    "casreg.governance.retention": ["Deletion", "RetentionPlan", "KeptVersion"],
    "casreg.governance.retention_rule": ["RetentionRule"],
    "casreg.governance.diff": ["VersionDiff"],
    "casreg.governance.catalog": ["ModelSummary"],
    "casreg.governance.imports": ["ImportedMove"],
    "casreg.governance.signing": ["SignatureCheck"],
    "casreg.governance.signatures": ["PublicKey"],
    "casreg.governance.event_signing": ["EventCheck"],
    "casreg.governance.signed_moves": ["MoveCheck", "SigningAudit"],
    "casreg.maintenance.verify": ["VerifyReport", "Problem"],
    "casreg.maintenance.gc": ["GcReport", "GcObject", "GcRecordInfo"],
    "casreg.ledger.compact": ["CompactResult"],
    "casreg.content.bundles": ["BundleResult"],
    "casreg.content.lazy": ["SafetensorsFile", "TensorInfo", "PinnedFile"],
    "casreg.content.manifest": ["Manifest", "Entry", "ChunkRef"],
    "casreg.fs": ["CasregFile", "PathInfo"],
    "casreg.progress": ["Progress"],
    "casreg.storage.base": ["ObjectStore", "ObjectWriter", "ByteRange", "Capabilities", "Leftover", "ObjectInfo",
                            "Versioned"],
}
#: Names an annotation may use that are not casreg classes.
PLAIN = {"str", "int", "float", "bool", "bytes", "None", "list", "dict", "tuple", "set", "type", "object",
         "Mapping", "Sequence", "Iterable", "Iterator", "Callable", "Literal", "datetime", "timedelta", "os",
         "PathLike", "Duration", "BF16Mode", "JsonValue", "Path", "np", "ndarray", "memoryview", "NoReturn",
         "AbstractContextManager", "Framework", "torch", "Tensor"}


def public_objects() -> dict[str, object]:
    objects: dict[str, object] = {name: getattr(casreg, name) for name in casreg.__all__}
    for module, names in RETURNED.items():
        mod = importlib.import_module(module)
        objects.update({name: getattr(mod, name) for name in names})
    return objects


def signatures(objects: dict[str, object]) -> dict[str, dict[str, str]]:
    """``where -> {parameter or field: annotation text}`` of every public callable."""
    out: dict[str, dict[str, str]] = {}

    def take(where: str, fn: object) -> None:
        try:
            out[where] = {k: str(v) for k, v in inspect.get_annotations(fn).items()}  # type: ignore[arg-type]
        except TypeError:
            pass

    for name, obj in objects.items():
        if inspect.isclass(obj):
            take(name, obj)  # fields
            for attr, value in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if isinstance(value, property):
                    value = value.fget
                if callable(value):
                    take(f"{name}.{attr}", value)
        elif callable(obj):
            take(name, obj)
    return out


def test_public_signatures_have_no_any() -> None:
    found = [f"{where} {param}: {text}" for where, params in signatures(public_objects()).items()
             for param, text in params.items() if ANY.search(text)]
    assert found == []


def test_the_check_sees_any() -> None:
    """The check above could fail: a function annotated with ``Any`` is reported."""
    from typing import Any

    def f(x: Any) -> int:
        return 0

    assert any(ANY.search(t) for t in signatures({"f": f})["f"].values())


def test_every_type_the_facade_uses_is_checked() -> None:
    """A new return type of a Registry method must join RETURNED (and so the Any check)."""
    names: set[str] = set()
    for params in (v for k, v in signatures({"Registry": casreg.Registry}).items() if k.startswith("Registry")):
        for text in params.values():
            names |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    unknown = names - PLAIN - set(public_objects())
    assert unknown == set()


def test_every_public_method_of_the_facade_states_its_contract() -> None:
    missing = [name for name, fn in vars(casreg.Registry).items()
               if not name.startswith("_") and callable(fn) and not (fn.__doc__ or "").strip()]
    missing += [name for name, p in vars(casreg.Registry).items()
                if isinstance(p, property) and not (p.__doc__ or "").strip()]
    assert missing == []


def test_py_typed_is_in_the_package() -> None:
    assert (Path(casreg.__file__).parent / "py.typed").is_file()


SNIPPET = '''\
import casreg

reg = casreg.Registry("memory://snippet")
ok: int = reg.push("m", "model.bin").version
reg.push(1, "model.bin")
reg.promote("m", 1, 2)
bad: str = reg.resolve("m").version
'''


@pytest.mark.slow
def test_a_callers_type_checker_sees_the_types(tmp_path: Path) -> None:
    """Build the wheel, install it into a bare virtual environment, and run mypy on a
    caller's code there: the wrong calls are reported, the right one is not, and casreg
    is not "missing library stubs or py.typed marker"."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("casreg-*.whl")
    assert "casreg/py.typed" in zipfile.ZipFile(wheel).namelist()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # pip --python: install into that environment only (never touching the one running the tests)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "-q", "--no-deps", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    (tmp_path / "caller.py").write_text(SNIPPET)
    checked = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable",
                              str(venv / "bin" / "python"), "caller.py"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in checked.stdout.splitlines() if ": error:" in ln]
    assert [ln.split(":")[1] for ln in lines] == ["5", "6", "7"], checked.stdout
    assert '"push" of "Registry" has incompatible type "int"' in lines[0]
    assert '"promote" of "Registry" has incompatible type "int"' in lines[1]
    assert 'has type "int | None", variable has type "str"' in lines[2]
    assert "py.typed" not in checked.stdout and "import-not-found" not in checked.stdout
