"""Lineage that answers the registry guides' questions (issue 16, docs/lineage.md):
hardware, training code, dependencies, tensor schema and signature, links and grouped
metrics: recorded at push, shown, diffable, and usable in SQL, ``--where`` and policy."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from blake3 import blake3
from safetensors.numpy import save_file
from test_cli_conventions import cli as _cli
from test_cli_conventions import one_line_error as _one_line_error

import casreg
from casreg import lineage as lineage_mod
from casreg.errors import InvalidInputError, PolicyError
from casreg.keys import version_segment_key
from casreg.ledger.schema import RECORD_KEY, parquet_bytes, version_row, version_schema
from casreg.records import CodeInfo, Hardware, Lineage, Version

NEW_FIELDS = ("hardware", "code", "dependencies", "dependencies_source", "schema", "links")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No git repository above tmp_path; hooks off; hardware detection starts afresh."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("CASREG_HOOKS", "off")
    monkeypatch.setenv("CASREG_USER", "lineage@example.test")
    lineage_mod.detect_hardware.cache_clear()
    yield
    lineage_mod.detect_hardware.cache_clear()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.test", "-c", "user.name=T",
                           "-c", "commit.gpgsign=false", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _repo(tmp_path: Path, remote: str | None = None) -> tuple[Path, str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "code"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('train')\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    if remote:
        _git(repo, "remote", "add", "origin", remote)
    return repo, _git(repo, "rev-parse", "HEAD")


def _safetensors(path: Path, hidden: int = 4, extra: bool = False) -> Path:
    tensors = {"encoder.weight": np.zeros((hidden, 3), np.float32), "encoder.bias": np.zeros(hidden, np.float16)}
    if extra:
        tensors["head.weight"] = np.zeros((2, hidden), np.float32)
    save_file(tensors, str(path))
    return path


# -- everything recorded, stored and read back, on every backend ------------------------------------------
def test_every_field_recorded_stored_and_read_back(registry: casreg.Registry, tmp_path: Path) -> None:
    repo, head = _repo(tmp_path, remote="https://alice:s3cr3t-token@git.example.com/ml/train.git")
    model = _safetensors(tmp_path / "model.safetensors")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("torch==2.1.0\nNumPy>=1.26  # arrays\n-r other.txt\n\n"
                    "scikit_learn[extra]==1.4 ; python_version>'3'\n")
    sig = tmp_path / "signature.json"
    sig.write_text(json.dumps({"inputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32",
                                                                                         "shape": [-1, 3]}}]),
                               "outputs": json.dumps([{"type": "double"}])}))
    v = registry.push("m", model, metrics={"val.auc": 0.97, "test.auc": 0.96, "loss": 0.1},
                      hardware="8x H100", code_dir=repo, requirements=reqs, signature=sig,
                      links={"dashboard": "https://grafana.example.com/d/abc?orgId=1"})
    ln = v.lineage
    assert ln.hardware == Hardware(gpu_count=8, gpu_type="H100", source="given", text="8x H100")
    assert ln.code == CodeInfo(commit=head, branch="main", dirty=False, remote="https://git.example.com/ml/train.git",
                               source="code")
    assert (ln.git_commit, ln.git_dirty) == (head, False)  # the old fields follow the code's state
    assert ln.dependencies == {"numpy": ">=1.26", "scikit-learn": "1.4", "torch": "2.1.0"}
    assert ln.dependencies_source == "requirements:requirements.txt"
    assert ln.schema is not None and ln.schema.tensor_count == 2 and not ln.schema.truncated
    assert {(t.name, t.dtype, t.shape) for t in ln.schema.tensors} == {("encoder.weight", "F32", (4, 3)),
                                                                       ("encoder.bias", "F16", (4,))}
    assert json.loads(ln.schema.signature or "")["inputs"][0]["tensor-spec"]["shape"] == [-1, 3]
    assert ln.links == {"dashboard": "https://grafana.example.com/d/abc?orgId=1"}
    assert v.metrics == {"val.auc": 0.97, "test.auc": 0.96, "loss": 0.1}

    assert registry.show("m:1") == v  # the footer record
    fresh = casreg.Registry(registry.url)
    assert fresh.ls("m") == [v]  # the segment's row
    fresh.compact(full=True)
    assert casreg.Registry(registry.url).ls("m") == [v]  # the compacted file
    assert casreg.Registry(registry.url).search("m", where="lineage.hardware.gpu_count = 8") == [v]  # SQL rows
    assert "s3cr3t" not in json.dumps(v.to_dict())


def test_old_records_without_the_new_fields_still_read(registry: casreg.Registry, tmp_path: Path) -> None:
    """A segment as casreg wrote it before issue 16 (its row and its footer record lack
    the new lineage fields) reads as a record whose new fields are empty, through every
    reader: the footer, the row, compaction, SQL, --where and diff."""
    new_lineage = version_schema().field("lineage").type
    old_lineage = pa.struct([f for f in new_lineage if f.name not in NEW_FIELDS])
    old_schema = pa.schema([pa.field("lineage", old_lineage) if f.name == "lineage" else f for f in version_schema()])
    current = registry.push("m", _safetensors(tmp_path / "a.safetensors"), metrics={"auc": 0.9})
    rec = Version(name="old", version=1, digest=current.digest, kind="file", size=current.size, stored_bytes=0,
                  new_bytes=0, file_count=1, chunk_count=current.chunk_count, created_at=current.created_at,
                  author="old@example.test", metrics={"auc": 0.8},
                  lineage=Lineage(git_commit="a" * 40, git_dirty=True, hostname="h", run_id="r1"))
    row = version_row(rec, [{"path": "a.safetensors", "type": "f", "size": current.size, "digest": None}])
    row["lineage"] = {k: v for k, v in row["lineage"].items() if k not in NEW_FIELDS}
    record = {k: v for k, v in rec.to_dict().items()}
    record["lineage"] = {k: v for k, v in record["lineage"].items() if k not in NEW_FIELDS}
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    meta = {RECORD_KEY: json.dumps({"record": record, "blake3": blake3(canonical).hexdigest()})}
    table = pa.Table.from_pylist([row], schema=old_schema).replace_schema_metadata(meta)
    assert registry.store.create(version_segment_key("old", 1), parquet_bytes(table))

    got = registry.show("old:1")
    assert got == rec and got.lineage.hardware is None and got.lineage.dependencies == {}
    assert registry.ls("old") == [rec]
    assert registry.search("old", where="lineage.hardware.gpu_count IS NULL AND lineage.git_dirty") == [rec]
    assert registry.sql("SELECT count(*) AS n FROM tensors WHERE name = 'old'") == [{"n": 0}]
    registry.compact(full=True)
    reread = casreg.Registry(registry.url)
    assert reread.ls("old") == [rec] and reread.ls("m") == [current]
    d = reread.diff("old:1", "m:1")
    assert d.dependencies == {} and d.schema.digests == (None, current.lineage.schema.digest)  # type: ignore[union-attr]


# -- hardware -----------------------------------------------------------------------------------------------
def _fake_nvidia_smi(bin_dir: Path, names: list[str], delay: float = 0.0) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    lines = "\n".join(f"echo '{n}'" for n in names)
    script.write_text(f"#!/bin/sh\n{'sleep ' + str(delay) if delay else ''}\n{lines}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_hardware_detected_from_nvidia_smi_and_cuda_visible_devices(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path / "bin", ["NVIDIA H100 80GB HBM3"] * 4)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hw = lineage_mod.detect_hardware()
    assert (hw.gpu_count, hw.gpu_type, hw.source) == (4, "NVIDIA H100 80GB HBM3", "detected")
    assert hw.cpu_count == os.cpu_count() and hw.memory_bytes and hw.memory_bytes > 1 << 20
    lineage_mod.detect_hardware.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    hw = lineage_mod.detect_hardware()
    assert (hw.gpu_count, hw.cuda_visible_devices) == (2, "1,3")
    assert lineage_mod.detect_hardware() is hw  # once per process


def test_hardware_without_nvidia_smi_or_when_it_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hw = lineage_mod.detect_hardware()
    assert hw.gpu_count is None and hw.gpu_type is None and hw.cpu_count == os.cpu_count()
    lineage_mod.detect_hardware.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert lineage_mod.detect_hardware().gpu_count == 2  # the variable alone: a count, no type
    lineage_mod.detect_hardware.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert lineage_mod.detect_hardware().gpu_count == 0

    lineage_mod.detect_hardware.cache_clear()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    _fake_nvidia_smi(tmp_path / "slow", ["GPU"], delay=5)
    monkeypatch.setenv("PATH", f"{tmp_path / 'slow'}{os.pathsep}/bin{os.pathsep}/usr/bin")
    monkeypatch.setattr(lineage_mod, "NVIDIA_SMI_TIMEOUT", 0.3)
    t = time.monotonic()
    hw = lineage_mod.detect_hardware()
    assert time.monotonic() - t < 3 and hw.gpu_count is None


@pytest.mark.parametrize(("text", "count", "kind"), [("8x H100", 8, "H100"), ("2 x A100 80GB", 2, "A100 80GB"),
                                                     ("TPU v4-32", None, None)])
def test_hardware_given_overrides_detection(tmp_path: Path, text: str, count: int | None, kind: str | None) -> None:
    registry = casreg.Registry(str(tmp_path / "reg"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"w" * 100)
    v = registry.push("m", f, hardware=text)
    assert (v.lineage.hardware.gpu_count, v.lineage.hardware.gpu_type) == (count, kind)  # type: ignore[union-attr]
    assert v.lineage.hardware.text == text and v.lineage.hardware.cpu_model is None  # type: ignore[union-attr]
    assert registry.push("m", f, detect_hardware=False).lineage.hardware is None
    detected = registry.push("m", f).lineage.hardware
    assert detected is not None and detected.source == "detected" and detected.cpu_count == os.cpu_count()
    with pytest.raises(InvalidInputError, match="hardware"):
        registry.push("m", f, hardware=" ")


# -- code ---------------------------------------------------------------------------------------------------
def test_code_sources_and_credentials_stripped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    repo, head = _repo(tmp_path, remote="https://oauth2:ghp_abcdefSECRET@github.com/org/train.git?token=zzz")
    reg_url = str(tmp_path / "reg")
    monkeypatch.setenv("CASREG_REGISTRY", reg_url)
    outside = tmp_path / "ckpt.bin"
    outside.write_bytes(b"x" * 64)

    code, out, _ = _cli(capsys, "push", "m", str(outside), "--code", str(repo), "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["lineage"]["code"] == {"commit": head, "branch": "main", "dirty": False,
                                      "remote": "https://github.com/org/train.git?token=***", "source": "code"}
    assert "SECRET" not in out and "zzz" not in out
    (repo / "train.py").write_text("print('changed')\n")
    assert casreg.Registry(reg_url).push("m", outside, code_dir=repo).lineage.code.dirty is True  # type: ignore[union-attr]

    code, out, _ = _cli(capsys, "show", "m:1")
    assert code == 0 and f"code      {head} (main, clean) https://github.com/org/train.git" in out
    assert "[from --code]" in out and "SECRET" not in out

    assert _cli(capsys, "push", "m", str(outside), "--git-commit", "ABCDEF1234567")[0] == 0
    v3 = casreg.Registry(reg_url).show("m:3")
    assert v3.lineage.code == CodeInfo(commit="abcdef1234567", source="given")
    assert "[from --git-commit]" in _cli(capsys, "show", "m:3")[1]

    inside = repo / "model.bin"  # the fallback: the pushed path's repository
    inside.write_bytes(b"y" * 64)
    v4 = casreg.Registry(reg_url).push("m", inside)
    assert v4.lineage.code is not None and (v4.lineage.code.commit, v4.lineage.code.source) == (head, "model-path")
    assert "[from the pushed path's repository]" in _cli(capsys, "show", "m:4")[1]
    assert casreg.Registry(reg_url).push("m", outside).lineage.code is None  # no repository anywhere

    _one_line_error(_cli(capsys, "push", "m", str(outside), "--git-commit", "not-a-sha"), "--git-commit")
    _one_line_error(_cli(capsys, "push", "m", str(outside), "--code", str(tmp_path / "nowhere")), "--code")
    (tmp_path / "plain").mkdir()
    _one_line_error(_cli(capsys, "push", "m", str(outside), "--code", str(tmp_path / "plain")), "not in a git")
    assert len(casreg.Registry(reg_url).ls("m")) == 5  # the refused pushes stored nothing


@pytest.mark.parametrize(("url", "stripped"), [
    ("https://user:pass@host/x.git", "https://host/x.git"),
    ("https://token@host/x.git", "https://host/x.git"),
    ("git@github.com:org/x.git", "git@github.com:org/x.git"),
    ("ssh://git@host:22/x.git", "ssh://host:22/x.git"),
    ("https://host/x.git?access_token=abc", "https://host/x.git?access_token=***"),
])
def test_strip_credentials(url: str, stripped: str) -> None:
    assert lineage_mod.strip_credentials(url) == stripped


# -- dependencies -------------------------------------------------------------------------------------------
def test_dependencies_from_the_environment_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    model = _safetensors(tmp_path / "model.safetensors")
    assert _cli(capsys, "push", "m", str(model), "--capture-env")[0] == 0
    v1 = casreg.Registry(str(tmp_path / "reg")).show("m:1")
    assert v1.lineage.dependencies_source == "environment"
    assert v1.lineage.dependencies["numpy"] == np.__version__ and "safetensors" in v1.lineage.dependencies
    reqs = tmp_path / "r.txt"
    reqs.write_text(f"numpy=={np.__version__}\ntorch==2.2.0\n")
    model2 = _safetensors(tmp_path / "model2.safetensors", hidden=8, extra=True)
    assert _cli(capsys, "push", "m", str(model2), "--requirements", str(reqs))[0] == 0
    reqs.write_text("numpy==9.9\ntorch==2.2.0\nflash-attn==2.5\n")
    assert _cli(capsys, "push", "m", str(model2), "--requirements", str(reqs))[0] == 0

    code, out, _ = _cli(capsys, "diff", "m:2", "m:3")
    assert code == 0
    assert "dependencies" in out and "numpy" in out and f"{np.__version__} -> 9.9" in out
    assert "+ flash-attn" in out and "(none) -> 2.5" in out and "torch" not in out
    assert "schema" not in out  # unchanged: nothing to show
    code, out, _ = _cli(capsys, "diff", "m:2", "m:3", "--json")
    d = json.loads(out)
    assert d["dependencies"] == {"flash-attn": {"a": None, "b": "2.5"}, "numpy": {"a": np.__version__, "b": "9.9"}}
    assert d["schema"]["unchanged"] is True

    _one_line_error(_cli(capsys, "push", "m", str(model), "--capture-env", "--requirements", str(reqs)),
                    "not both")
    _one_line_error(_cli(capsys, "push", "m", str(model), "--requirements", str(tmp_path / "absent.txt")),
                    "--requirements")
    reqs.write_text("numpy==1\n!!!\n")
    _one_line_error(_cli(capsys, "push", "m", str(model), "--requirements", str(reqs)), "line 2")


# -- schema -------------------------------------------------------------------------------------------------
def test_schema_diff_shows_tensor_changes(registry: casreg.Registry, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    a = registry.push("m", _safetensors(tmp_path / "a.safetensors"))
    b = registry.push("m", _safetensors(tmp_path / "b.safetensors", hidden=8, extra=True))
    d = registry.diff("m:1", "m:2")
    assert d.schema.added == ["head.weight"] and d.schema.removed == []
    assert d.schema.changed == {"encoder.bias": ("F16[4]", "F16[8]"), "encoder.weight": ("F32[4, 3]", "F32[8, 3]")}
    assert not d.schema.unchanged
    text = _cli(capsys, "-r", registry.url, "diff", "m:1", "m:2")[1]
    assert "schema: 1 tensors added, 0 removed, 2 changed" in text and "+ head.weight" in text
    assert "~ encoder.weight  F32[4, 3] -> F32[8, 3]" in text
    assert a.lineage.schema and b.lineage.schema and a.lineage.schema.digest != b.lineage.schema.digest
    renamed = registry.push("m", _safetensors(tmp_path / "renamed.safetensors"))
    assert renamed.lineage.schema.digest == a.lineage.schema.digest  # type: ignore[union-attr]  # same tensors
    assert registry.diff("m:1", "m:3").schema.unchanged


def test_schema_of_a_directory_with_shards(registry: casreg.Registry, tmp_path: Path) -> None:
    if registry.store.url.startswith("s3://"):
        pytest.skip("reading headers is local: local and memory suffice")
    d = tmp_path / "model"
    d.mkdir()
    save_file({"a": np.zeros((2, 2), np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros(3, np.int64)}, str(d / "model-00002-of-00002.safetensors"))
    (d / "config.json").write_text("{}")
    v = registry.push("m", d)
    assert v.lineage.schema is not None and v.lineage.schema.tensor_count == 2
    assert [(t.file, t.name) for t in v.lineage.schema.tensors] == [("model-00001-of-00002.safetensors", "a"),
                                                                    ("model-00002-of-00002.safetensors", "b")]
    rows = registry.sql("SELECT file, tensor, dtype, shape FROM tensors WHERE name = 'm' ORDER BY tensor")
    assert rows == [{"file": "model-00001-of-00002.safetensors", "tensor": "a", "dtype": "F32", "shape": [2, 2]},
                    {"file": "model-00002-of-00002.safetensors", "tensor": "b", "dtype": "I64", "shape": [3]}]


def _hostile(path: Path, header: bytes, length: int | None = None, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize("kind", ["truncated", "huge-length", "bad-json", "not-object", "deep", "bad-offsets",
                                  "short"])
def test_hostile_safetensors_headers_do_not_break_push(tmp_path: Path, kind: str,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "evil.safetensors"
    good = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    if kind == "truncated":
        _hostile(f, good[:20], length=len(good))
    elif kind == "huge-length":
        _hostile(f, good, length=(1 << 64) - 1, data=b"\0" * 8)
    elif kind == "bad-json":
        _hostile(f, b"{\"w\": {\"dtype\": ", data=b"\0" * 8)
    elif kind == "not-object":
        _hostile(f, b"[1, 2, 3]", data=b"\0" * 8)
    elif kind == "deep":
        _hostile(f, b"[" * 100_000 + b"]" * 100_000)
    elif kind == "bad-offsets":
        _hostile(f, json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1 << 40]}}).encode())
    else:
        f.write_bytes(b"\x05\0")
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    code, out, err = _cli(capsys, "push", "m", str(f), "--json")
    assert code == 0, err
    assert json.loads(out)["lineage"]["schema"] is None
    assert "Traceback" not in err
    code, out, err = _cli(capsys, "show", "m:1")
    assert code == 0 and "schema" not in out


def test_schema_too_large_for_the_record_is_cut_but_its_digest_covers_all(tmp_path: Path) -> None:
    from casreg.content.source import scan_source
    from casreg.content.tensor_schema import MAX_SCHEMA_JSON, tensor_schema

    f = tmp_path / "many.safetensors"
    save_file({f"layer.{i:05d}.a_rather_long_tensor_name.weight": np.zeros(1, np.float32) for i in range(4000)},
              str(f))
    schema = tensor_schema(scan_source(f).files, single_file=True)
    assert schema is not None and schema.tensor_count == 4000 and schema.truncated
    assert 0 < len(schema.tensors) < 4000
    assert len(json.dumps([t.__repr__() for t in schema.tensors])) < MAX_SCHEMA_JSON * 2
    reg = casreg.Registry(str(tmp_path / "reg"))
    v = reg.push("m", f)
    assert v.lineage.schema == schema and reg.show("m:1") == v


# -- signature and links ------------------------------------------------------------------------------------
def test_signature_and_links(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx" * 10)
    sig = tmp_path / "sig.json"
    sig.write_text(json.dumps({"inputs": [{"name": "x", "type": "double"}], "outputs": "[{\"type\": \"long\"}]"}))
    code, out, err = _cli(capsys, "push", "m", str(model), "--signature", str(sig),
                          "--link", "dashboard=https://grafana.example.com/d/1", "--link", "run=http://mlflow:5000/r/7")
    assert code == 0, err
    v = casreg.Registry(str(tmp_path / "reg")).show("m:1")
    assert v.lineage.schema is not None and v.lineage.schema.digest is None  # no safetensors: the signature only
    assert json.loads(v.lineage.schema.signature or "") == {"inputs": [{"name": "x", "type": "double"}],
                                                            "outputs": [{"type": "long"}]}
    code, out, _ = _cli(capsys, "show", "m:1")
    assert "links     dashboard=https://grafana.example.com/d/1, run=http://mlflow:5000/r/7" in out
    assert "signature {\"inputs\"" in out
    rows = casreg.Registry(str(tmp_path / "reg")).sql("SELECT link, url FROM links ORDER BY link")
    assert rows == [{"link": "dashboard", "url": "https://grafana.example.com/d/1"},
                    {"link": "run", "url": "http://mlflow:5000/r/7"}]

    sig.write_text(json.dumps({"inputs": [{"name": "x", "type": "long"}]}))
    assert _cli(capsys, "push", "m", str(model), "--signature", str(sig))[0] == 0
    d = json.loads(_cli(capsys, "diff", "m:1", "m:2", "--json")[1])
    assert d["schema"]["signature_changed"] is True and d["schema"]["unchanged"] is False

    for bad, fragment in (("dashboard=ftp://host/x", "not an http"), ("dashboard=https://u:p@host/x", "credentials"),
                          ("dashboard=javascript:alert(1)", "not an http"), ("dashboard", "KEY=VALUE")):
        code, out, err = _cli(capsys, "push", "m", str(model), "--link", bad)
        assert code != 0 and fragment in err and "Traceback" not in err and "u:p" not in err
    for content, fragment in (("not json", "not valid JSON"), ("{\"weights\": 1}", "inputs"),
                              ("{\"inputs\": \"{bad\"}", "not JSON")):
        sig.write_text(content)
        _one_line_error(_cli(capsys, "push", "m", str(model), "--signature", str(sig)), "--signature", fragment)
    assert len(casreg.Registry(str(tmp_path / "reg")).ls("m")) == 2


# -- metrics of several sets ---------------------------------------------------------------------------------
def test_dotted_metrics_are_grouped_in_show_and_queryable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    model = tmp_path / "w.bin"
    model.write_bytes(b"w" * 10)
    assert _cli(capsys, "push", "m", str(model), "--metric", "val.auc=0.97", "--metric", "test.auc=0.96",
                "--metric", "val.f1=0.9", "--metric", "loss=0.25")[0] == 0
    out = _cli(capsys, "show", "m:1")[1]
    lines = [line for line in out.splitlines() if line.startswith("  metrics") or line.startswith("            ")]
    assert lines[:3] == ["  metrics   loss=0.25", "            test: auc=0.96", "            val:  auc=0.97, f1=0.9"]
    code, out, _ = _cli(capsys, "ls", "m", "--where", "metrics.val.auc > 0.95 AND metrics.test.auc > 0.95",
                        "--json")
    assert code == 0 and [r["version"] for r in json.loads(out)] == [1]


# -- SQL, --where and policy --------------------------------------------------------------------------------
def test_where_sql_and_policy_rules_use_the_new_fields(registry: casreg.Registry, tmp_path: Path) -> None:
    repo, head = _repo(tmp_path)
    a = _safetensors(tmp_path / "a.safetensors")
    b = _safetensors(tmp_path / "b.safetensors", hidden=8)
    registry.push("m", a, hardware="4x A100", code_dir=repo, links={"dashboard": "https://g.example.com/1"})
    registry.push("m", a, hardware="cpu box", code_dir=repo)
    (repo / "train.py").write_text("print('dirty')\n")
    registry.push("m", b, hardware="8x H100", code_dir=repo)
    registry.push("m", a, hardware="8x H100", git_commit=head)

    def where(text: str) -> list[int]:
        return [v.version for v in registry.search("m", where=text)]

    assert where("lineage.hardware.gpu_count >= 1") == [1, 3, 4]
    assert where("lineage.code.dirty = false") == [1, 2]
    assert where("lineage.code.source = 'given'") == [4]
    assert where("lineage.links.dashboard LIKE 'https://%'") == [1]
    first = registry.show("m:1").lineage.schema
    assert first is not None and where(f"lineage.schema.digest = '{first.digest}'") == [1, 2, 4]
    by_gpus = registry.search("m", sort="lineage.hardware.gpu_count", descending=True)
    assert [v.version for v in by_gpus] == [3, 4, 1, 2]  # ties by version; none last
    with pytest.raises(InvalidInputError, match="unknown field"):
        registry.search("m", where="lineage.hardware.nope = 1")
    rows = registry.sql("SELECT version, lineage.hardware.gpu_type AS gpu, lineage.code.dirty AS dirty, "
                        "lineage.links['dashboard'] AS dash FROM versions WHERE name = 'm' ORDER BY version")
    assert [(r["gpu"], r["dirty"], r["dash"]) for r in rows] == [
        ("A100", False, "https://g.example.com/1"), (None, False, None), ("H100", True, None), ("H100", None, None)]

    registry.set_policy('[gates.production]\nrules = ["lineage.hardware.gpu_count >= 1", '
                        '"lineage.code.dirty == false", "schema.unchanged_from @production"]\n')
    assert registry.promote("m", 1, "production").event is not None  # nothing at production yet
    with pytest.raises(PolicyError, match=r"lineage.hardware.gpu_count.*m:2 has no lineage.hardware.gpu_count"):
        registry.promote("m", 2, "production")
    with pytest.raises(PolicyError, match="lineage.code.dirty = true; needs == false"):
        registry.promote("m", 3, "production")
    dry = registry.promote("m", 3, "production", dry_run=True)
    failed = {r.rule: r.detail for r in dry.checks if not r.passed}
    assert "schema.unchanged_from @production" in failed and "casreg diff m:1 m:3" in failed[
        "schema.unchanged_from @production"]
    with pytest.raises(PolicyError, match="lineage.code.dirty"):  # --git-commit alone: its state is unknown
        registry.promote("m", 4, "production")
    registry.set_policy('[gates.production]\nrules = ["schema.unchanged_from @production", '
                        '"lineage.schema.digest == @production", "lineage.hardware.gpu_count >= 8"]\n')
    assert registry.promote("m", 4, "production").event is not None


def test_policy_rule_forms_are_checked() -> None:
    from casreg.errors import InvalidPolicyError
    from casreg.governance.policy import parse_policy

    for bad in ("lineage.code.dirty > true", "schema.unchanged_from production", "schema.unchanged_from @Prod"):
        with pytest.raises(InvalidPolicyError):
            parse_policy(f'[gates.production]\nrules = ["{bad}"]\n')
    parse_policy('[push]\nrequire = ["lineage.hardware.gpu_type", "lineage.dependencies.torch"]\n')


def test_push_requirement_of_a_nested_field(registry: casreg.Registry, tmp_path: Path) -> None:
    if registry.store.url.startswith("s3://"):
        pytest.skip("policy logic: local and memory suffice")
    f = tmp_path / "w.bin"
    f.write_bytes(b"w" * 10)
    registry.set_policy('[push]\nrequire = ["lineage.hardware.gpu_type", "lineage.links.dashboard"]\n')
    with pytest.raises(casreg.errors.MissingMetadataError, match="lineage.hardware.gpu_type, lineage.links.dashboard"):
        registry.push("m", f, hardware="a laptop")
    v = registry.push("m", f, hardware="1x RTX 4090", links={"dashboard": "https://g.example.com/x"})
    assert v.version == 1


# -- the examples of docs/lineage.md run ------------------------------------------------------------------
def test_the_examples_in_docs_lineage_md_run(tmp_path: Path) -> None:
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "lineage.md").read_text(encoding="utf-8")
    reg = casreg.Registry(str(tmp_path / "reg"))
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("torch==2.1.0\n")
    sig = tmp_path / "signature.json"
    sig.write_text(json.dumps({"inputs": [{"type": "double"}], "outputs": [{"type": "long"}]}))
    for i in range(2):
        reg.push("fraud-detector", _safetensors(tmp_path / f"m{i}.safetensors", hidden=4 + i),
                 metrics={"val.auc": 0.97, "test.auc": 0.96}, hardware="8x H100", requirements=reqs, signature=sig,
                 links={"dashboard": "https://grafana.example.com/d/fraud"})
    queries = re.findall(r'casreg sql "(.*?)"', doc, re.DOTALL)
    wheres = re.findall(r'casreg ls fraud-detector --where "(.*?)"', doc)
    assert len(queries) >= 6 and len(wheres) >= 3
    for q in queries:
        assert reg.sql(" ".join(q.split())) is not None
    assert reg.sql("SELECT version, lineage.dependencies['torch'] AS torch FROM versions "
                   "WHERE name = 'fraud-detector' ORDER BY version") == [{"version": 1, "torch": "2.1.0"},
                                                                       {"version": 2, "torch": "2.1.0"}]
    for w in wheres:
        reg.search("fraud-detector", where=w)
    assert [v.version for v in reg.search("fraud-detector", where=wheres[1])] == [1, 2]
    policy = re.search(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert policy is not None
    reg.set_policy(policy.group(1))
    assert reg.promote("fraud-detector", 1, "production", dry_run=True).allowed is False  # no code recorded: dirty


def test_a_forged_row_with_malformed_lineage_json_is_one_clear_error(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment without a footer record (as format 1 wrote them) whose row holds JSON
    text that does not parse as the lineage's hardware: readers fail naming it, exit 6."""
    reg = casreg.Registry(str(tmp_path / "reg"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"w" * 10)
    v = reg.push("m", f, detect_hardware=False)
    row = version_row(v, [{"path": "w.bin", "type": "f", "size": 10, "digest": None}])
    row["version"] = 2
    row["lineage"] = dict(row["lineage"], hardware="{\"gpu_count\": [[[")
    table = pa.Table.from_pylist([row], schema=version_schema())
    assert reg.store.create(version_segment_key("m", 2), parquet_bytes(table))
    monkeypatch.setenv("CASREG_REGISTRY", str(tmp_path / "reg"))
    line = _one_line_error(_cli(capsys, "show", "m:2"), "m:2", "lineage")
    assert "Traceback" not in line
    assert _cli(capsys, "show", "m:2")[0] == 6


# -- format vectors: what the documentation says is stored ------------------------------------------------
def test_format_vectors_schema_digest_and_row_encoding() -> None:
    """docs/lineage.md: the schema digest is BLAKE3 of ``[[file, name, dtype, shape], ...]``
    sorted, compact JSON, ``file`` empty for a single-file version; docs/FORMAT.md §6: the
    row holds hardware, code and schema as compact JSON objects, the maps as maps."""
    from casreg.content.tensor_schema import schema_digest
    from casreg.records import ModelSchema, TensorSpec

    tensors = [TensorSpec("model.safetensors", "encoder.weight", "F32", (4, 3)),
               TensorSpec("model.safetensors", "encoder.bias", "F16", (4,))]
    text = b'[["","encoder.bias","F16",[4]],["","encoder.weight","F32",[4,3]]]'
    assert schema_digest(tensors, single_file=True) == "blake3:" + blake3(text).hexdigest() == (
        "blake3:c55258da3e64b62e3e810682e377c4309e1faf1e092ce5849ca42a56d3648256")
    assert schema_digest(tensors, single_file=False) == (
        "blake3:18d093e691e486c7b4998b7899b253bb6e5b38908818dfc181558b380e9d25b1")
    v = Version(name="m", version=1, digest=casreg.Digest("blake3:" + "0" * 64), kind="file", size=1, stored_bytes=1,
                new_bytes=1, file_count=1, chunk_count=1, created_at=time_zero(), author="a",
                lineage=Lineage(hardware=Hardware(gpu_count=8, gpu_type="H100", source="given", text="8x H100"),
                                code=CodeInfo(commit="ab12cd3", source="given"), dependencies={"torch": "2.1.0"},
                                dependencies_source="environment",
                                schema=ModelSchema(digest="blake3:x", tensor_count=1, truncated=False,
                                                   tensors=(tensors[1],)),
                                links={"dashboard": "https://g.example.com/"}))
    lin = version_row(v, [])["lineage"]
    assert lin["hardware"] == ('{"gpu_count":8,"gpu_type":"H100","cpu_model":null,"cpu_count":null,'
                               '"memory_bytes":null,"cuda_visible_devices":null,"source":"given","text":"8x H100"}')
    assert lin["code"] == '{"commit":"ab12cd3","branch":null,"dirty":null,"remote":null,"source":"given"}'
    assert lin["schema"] == ('{"digest":"blake3:x","tensor_count":1,"truncated":false,"tensors":[{"file":'
                             '"model.safetensors","name":"encoder.bias","dtype":"F16","shape":[4]}],"signature":null}')
    assert (lin["dependencies"], lin["links"]) == ([("torch", "2.1.0")], [("dashboard", "https://g.example.com/")])
    table = pa.Table.from_pylist([version_row(v, [])], schema=version_schema())
    from casreg.ledger.schema import versions_from_table

    assert versions_from_table(table) == [v]
    assert Version.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def time_zero() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)
