"""``casreg import mlflow`` against a real MLflow tracking store (sqlite backend, local
artifact root, no server) that this module builds once: 3 registered models x 5 versions
with runs (metrics, params), version and model tags, descriptions, stages and aliases, and
artifacts that share bytes between versions. Every field docs/migrate-mlflow.md says is
carried is compared with what MLflow's own client reads back, on a local and an S3
registry; re-importing is a no-op, and a new MLflow version is imported alone."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'casreg[mlflow]')")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from conftest import BACKENDS  # noqa: E402
from inprocess_cli import run_cli, run_executable  # noqa: E402

import casreg  # noqa: E402
from casreg.errors import InvalidNameError  # noqa: E402
from casreg.importers.mlflow import (  # noqa: E402
    MODEL_VERSION_TAG,
    SOURCE_TAG,
    TRACKING_URI_TAG,
    ImportReport,
    casreg_alias,
    casreg_name,
    import_mlflow,
)

SHARED = os.urandom(128 << 10)  # in every version of every model: stored once
MLMODEL = "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n  sklearn:\n    sklearn_version: 1.5.0\n"
MODELS = ["fraud-detector", "Churn Model", "ranker"]
CASREG_NAMES = {"fraud-detector": "fraud-detector", "Churn Model": "Churn-Model", "ranker": "ranker"}
# (MLflow stage transitions, in order) per version number; ranker has two versions in Production
STAGES: dict[str, dict[int, list[str]]] = {
    "fraud-detector": {1: ["Production", "Archived"], 2: ["Archived"], 3: ["Production"], 4: ["Staging"]},
    "Churn Model": {1: ["Archived"], 2: ["Staging", "Production"], 5: ["Staging"]},
    "ranker": {2: ["Production"], 3: ["Archived"], 4: ["Production"], 5: ["Staging"]},
}
ALIASES = {"fraud-detector": {"champion": 3, "Challenger": 4, "2nd": 2}, "Churn Model": {"champion": 2},
           "ranker": {}}
AUTHOR = "{model}-trainer-{n}@example.test"


@dataclass
class Store:
    uri: str
    root: Path  # the artifacts as logged: root/<model>/<n>/...
    client: Any


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def add_version(store: Store, experiment: str, model: str, n: int) -> Any:
    """Log a run (metrics with history, params, its author) with artifacts and register
    them as version ``n`` of ``model``."""
    from mlflow.entities import Metric, Param

    c = store.client
    run = c.create_run(experiment, tags={"mlflow.user": AUTHOR.format(model=model.split()[0].lower(), n=n),
                                         "mlflow.source.git.commit": f"{n:040x}"})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    c.log_batch(rid, metrics=[
        Metric("auc", 0.5, now, 0), Metric("auc", 0.8 + n / 100, now, 1),  # the latest step is the version's
        Metric("val loss", 1.0 / n, now, 0),  # a space: carried as val_loss
        Metric("diverged", float("nan"), now, 0),  # not a finite number: not carried, warned
    ], params=[Param("lr", f"{n}e-4"), Param("epochs", str(10 * n))])
    src = store.root / model / str(n)
    (src / "code").mkdir(parents=True)
    (src / "MLmodel").write_text(MLMODEL)
    (src / "shared.bin").write_bytes(SHARED)
    (src / "weights.bin").write_bytes(random.Random(f"{model}/{n}").randbytes(16 << 10))  # its own 16 KiB
    (src / "code" / "train.py").write_text(f"# {model} version {n}\n")
    c.log_artifacts(rid, str(src), "model")
    return c.create_model_version(model, f"runs:/{rid}/model", run_id=rid, description=f"{model} v{n}: better",
                                  tags={"k": str(n), "data set": "s3://data/v1"})


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The MLflow store, built once (its sqlite schema migrations take seconds)."""
    import warnings

    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    store = Store(uri, base / "logged", _client(uri))
    experiment = store.client.create_experiment("import", artifact_location=(base / "artifacts").as_uri())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in MLflow 2.9+, still what teams have
        for model in MODELS:
            store.client.create_registered_model(model, tags={"team": "risk", "owner": "ml-platform"},
                                                 description=f"the {model} model")
            for n in range(1, 6):
                add_version(store, experiment, model, n)
            for n, stages in STAGES[model].items():
                for stage in stages:
                    time.sleep(0.002)  # distinct last_updated times, in this order
                    store.client.transition_model_version_stage(model, str(n), stage)
            for alias, n in ALIASES[model].items():
                store.client.set_registered_model_alias(model, alias, str(n))
    yield store


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path, author: Any) -> Iterator[casreg.Registry]:
    """A fresh registry on a local directory or on the suite's SeaweedFS."""
    author("importer@example.test")
    spec = BACKENDS[request.param]
    if spec.fixture is not None:
        request.getfixturevalue(spec.fixture)
    store, cleanup = spec.make(tmp_path)
    yield casreg.Registry(store.url)
    cleanup()


def _ms(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _events(reg: casreg.Registry, name: str) -> int:
    return len(reg.log(name))


def test_import_round_trips_every_field(mlflow_store: Store, target: casreg.Registry, tmp_path: Path) -> None:
    """All 3 x 5 versions into a local registry; on S3 (slower per push) one model's 5,
    the one with every kind of stage and alias."""
    models = ["fraud-detector"] if target.url.startswith("s3://") else MODELS
    started = time.monotonic()
    report = import_mlflow(target, mlflow_store.uri, models=models if len(models) < len(MODELS) else None)
    elapsed = time.monotonic() - started
    c = mlflow_store.client
    assert report.models == sorted(models)
    assert report.count("imported") == 5 * len(models) and report.count("skipped") == 0
    for model in models:
        name = CASREG_NAMES[model]
        rm = c.get_registered_model(model)
        for mv in sorted(c.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version)):
            n = int(mv.version)
            v = target.show(f"{name}:{n}")  # numbers kept: MLflow's have no gaps here
            run = c.get_run(mv.run_id)
            assert v.metrics == {"auc": run.data.metrics["auc"], "val_loss": run.data.metrics["val loss"]}
            assert v.metrics["auc"] == pytest.approx(0.8 + n / 100)  # the latest step's value
            assert v.params == run.data.params == {"lr": f"{n}e-4", "epochs": str(10 * n)}
            assert v.tags == {
                "team": rm.tags["team"], "owner": rm.tags["owner"],  # the registered model's tags
                "k": mv.tags["k"], "data_set": mv.tags["data set"],  # the version's, a space made "_"
                "mlflow.run.git_commit": f"{n:040x}", "mlflow.run.name": run.data.tags["mlflow.runName"],
                MODEL_VERSION_TAG: f"{model}/{n}", TRACKING_URI_TAG: mlflow_store.uri, SOURCE_TAG: mv.source,
            }
            assert v.lineage.run_id == mv.run_id
            assert v.author == run.info.user_id == AUTHOR.format(model=model.split()[0].lower(), n=n)
            assert v.created_at == _ms(mv.creation_timestamp)
            assert v.description == mv.description == f"{model} v{n}: better"
            assert v.framework == "sklearn"
            logged = _tree(mlflow_store.root / model / str(n))
            if target.url.startswith("s3://"):  # each file's digest (pulling 15 versions is the local run's)
                assert {f.path: str(f.digest) for f in target.files(f"{name}:{n}") if f.digest} == \
                    {path: f"blake3:{blake3(data).hexdigest()}" for path, data in logged.items()}
            else:
                dest = tmp_path / "pulled" / name / str(n)
                target.pull(f"{name}:{n}", dest)
                assert _tree(dest) == logged  # byte for byte, file by file
        # stages and aliases: where MLflow has them now
        pointers = {p.alias: p for p in target.aliases(name)}
        in_stage = {s: [int(mv.version) for mv in c.search_model_versions(f"name='{model}'")
                        if mv.current_stage == s] for s in ("Staging", "Production", "Archived")}
        expected = {casreg_alias(a): n for a, n in ALIASES[model].items() if casreg_alias(a)}
        for stage in ("Staging", "Production"):
            if in_stage[stage]:
                newest = max(in_stage[stage], key=lambda k: int(c.get_model_version(model, str(k))
                                                                 .last_updated_timestamp))
                expected[stage.lower()] = newest
        assert {a: p.version for a, p in pointers.items()} == expected, model
        for alias, p in pointers.items():
            assert p.event.details is not None and p.event.details["import"]["source"] == "mlflow"
            assert p.event.author == "importer@example.test"  # MLflow records no actor for moves
            if alias in ("staging", "production"):  # MLflow's time for it: the version's last update
                assert p.event.time == _ms(c.get_model_version(model, str(p.version)).last_updated_timestamp)
        archived = target.archived(name)
        assert sorted(n for (_, n) in archived) == sorted(in_stage["Archived"])
        for (_, n), event in archived.items():
            assert event.time == _ms(c.get_model_version(model, str(n)).last_updated_timestamp)
    if "ranker" in models:  # two versions in Production: both moves are in the history, oldest first
        moves = [e for e in target.log("ranker", alias="production") if e.kind == "alias.set"]
        assert [e.to_version for e in moves] == [2, 4]
    # "2nd" is no casreg alias; NaN metrics are not numbers: both said, neither carried
    assert any("fraud-detector@2nd" in w for w in report.warnings)
    assert sum("'diverged'" in w for w in report.warnings) == 5 * len(models)
    # dedup: the shared file, MLmodel and unchanged code are stored once; each weights file once
    files = [p for m in models for p in (mlflow_store.root / m).rglob("*") if p.is_file()]
    distinct = {hashlib.sha256(p.read_bytes()).hexdigest(): p.stat().st_size for p in files}
    assert report.bytes_after == sum(distinct.values())
    assert report.bytes_before == sum(p.stat().st_size for p in files)
    assert report.bytes_after < report.bytes_before / 3
    print(f"\n[{target.url.split(':')[0]}] {report.count('imported')} versions imported in {elapsed:.2f} s: "
          f"{report.bytes_before} bytes before dedup, {report.bytes_after} after, {report.stored_bytes} stored")

    # importing again changes nothing: every version skipped, no event recorded
    names = [CASREG_NAMES[m] for m in models]
    before = {n: _events(target, n) for n in names}
    again = import_mlflow(target, mlflow_store.uri, models=models)
    assert again.count("imported") == 0 and again.count("skipped") == 5 * len(models)
    assert {m.outcome for m in again.moves} <= {"unchanged", "refused"}
    assert {n: _events(target, n) for n in names} == before


def _copy(store: Store, tmp_path: Path) -> Store:
    """A copy of the MLflow store's database (the artifacts stay where they are): a test
    that changes MLflow changes only its copy."""
    db = tmp_path / "mlflow-copy.db"
    shutil.copyfile(store.uri.removeprefix("sqlite:///"), db)
    uri = f"sqlite:///{db}"
    return Store(uri, tmp_path / "logged", _client(uri))


def test_a_new_version_is_imported_alone_and_casreg_moves_are_kept(mlflow_store: Store, tmp_path: Path,
                                                                   author: Any) -> None:
    import warnings

    author("importer@example.test")
    copy = _copy(mlflow_store, tmp_path)
    reg = casreg.Registry(tmp_path / "reg")
    import_mlflow(reg, copy.uri, models=["fraud-detector"])
    # in casreg, someone moves champion by hand; in MLflow, version 6 arrives, takes
    # Staging and champion
    author("alice@example.test")
    reg.set_alias("fraud-detector", "champion", 5, reason="our own pick")
    experiment = copy.client.get_experiment_by_name("import").experiment_id
    add_version(copy, experiment, "fraud-detector", 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy.client.transition_model_version_stage("fraud-detector", "6", "Staging")
    copy.client.set_registered_model_alias("fraud-detector", "champion", "6")
    copy.client.delete_registered_model_alias("fraud-detector", "Challenger")
    author("importer@example.test")
    report = import_mlflow(reg, copy.uri, models=["fraud-detector"])
    assert [(v.mlflow_version, v.status) for v in report.versions if v.status != "skipped"] == [(6, "imported")]
    assert report.count("skipped") == 5
    pointers = {p.alias: p.version for p in reg.aliases("fraud-detector")}
    assert pointers["staging"] == 6  # an imported pointer follows MLflow
    assert pointers["champion"] == 5  # casreg's own move is kept, and said so
    assert "challenger" not in pointers  # removed in MLflow, and only an import had set it
    kept = [m for m in report.moves if m.outcome == "kept"]
    assert [m.alias for m in kept] == ["champion"] and "alice@example.test" in kept[0].detail
    assert reg.show("fraud-detector:6").tags[MODEL_VERSION_TAG] == "fraud-detector/6"


def test_gated_stages_are_refused_unless_bypassed(mlflow_store: Store, tmp_path: Path, author: Any) -> None:
    author("importer@example.test")
    reg = casreg.Registry(tmp_path / "reg")
    reg.set_policy('[gates.production]\nrules = ["metrics.auc >= 0.5"]\napprovals = 1\n')
    report = import_mlflow(reg, mlflow_store.uri, models=["Churn Model"])
    refused = [m for m in report.moves if m.outcome == "refused"]
    assert [m.alias for m in refused] == ["production"] and "approvals >= 1" in refused[0].detail
    assert "production" not in {p.alias for p in reg.aliases("Churn-Model")}
    assert report.count("imported") == 5  # the versions themselves are in
    bypassed = import_mlflow(reg, mlflow_store.uri, models=["Churn Model"], bypass_gates=True)
    moved = [m for m in bypassed.moves if m.alias == "production" and m.outcome == "moved"]
    assert len(moved) == 1 and moved[0].event is not None
    details = moved[0].event.details or {}
    assert details["import"]["bypassed_gates"] == ["approvals >= 1"]  # type: ignore[index]
    assert details["policy_version"] == 1


def test_names_are_mapped_by_a_stated_rule() -> None:
    assert casreg_name("fraud-detector") == "fraud-detector"
    assert casreg_name("Churn Model") == "Churn-Model"
    assert casreg_name("team: fraud  (v2)") == "team-fraud-v2-"
    assert casreg_name("_private..model") == "private.model"
    with pytest.raises(InvalidNameError, match="has no casreg name"):
        casreg_name("  ")
    assert casreg_alias("Challenger") == "challenger"
    assert casreg_alias("blue green") == "blue-green"
    assert casreg_alias("2nd") is None and casreg_alias("production") is None and casreg_alias("latest") is None


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, CASREG_REGISTRY=str(tmp_path / "reg"), CASREG_USER="importer@example.test",
                GIT_CEILING_DIRECTORIES=str(tmp_path), NO_COLOR="1", COLUMNS="200")


def test_cli_dry_run_then_import_json_and_quiet(mlflow_store: Store, tmp_path: Path) -> None:
    env = _env(tmp_path)
    args = ["import", "mlflow", "--tracking-uri", mlflow_store.uri, "--model", "ranker"]
    dry = run_cli([*args, "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "would import 5 versions of 1 model" in dry.stdout
    assert not (tmp_path / "reg").exists()  # nothing written
    done = run_cli([*args, "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["imported"] == 5 and summary["bytes_after_dedup"] < summary["bytes_before_dedup"]
    quiet = run_cli([*args, "--quiet"], env, tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == ""
    human = run_cli(args, env, tmp_path)
    assert "skipped ranker/5: already ranker:5" in human.stdout
    assert "imported 0 versions of 1 model" in human.stdout and "skipped 5 imported before" in human.stdout


def test_cli_errors_are_one_line(mlflow_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(tmp_path)
    unknown = run_cli(["import", "mlflow", "--tracking-uri", mlflow_store.uri, "--model", "nope"], env, tmp_path)
    assert unknown.returncode == 3 and unknown.stderr.count("\n") == 1
    assert "has no registered model 'nope'" in unknown.stderr
    typo = tmp_path / "no-such-dir" / "mlflow.db"
    absent = run_cli(["import", "mlflow", "--tracking-uri", f"sqlite:///{typo}"], env, tmp_path)
    assert absent.returncode == 3 and f"there is no MLflow database at {typo}" in absent.stderr
    assert not typo.parent.exists()  # MLflow was not left to create it
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    missing = run_cli(["import", "mlflow", "--tracking-uri", mlflow_store.uri], env, tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "pip install 'casreg[mlflow]'" in missing.stderr


def test_the_real_executable_loads_mlflow(mlflow_store: Store, tmp_path: Path) -> None:
    """The console script blocks numpy at start-up (casreg_cli/main.py); MLflow needs it,
    so the import command lifts the block."""
    p = run_executable(["import", "mlflow", "--tracking-uri", mlflow_store.uri, "--dry-run", "--json"],
                       _env(tmp_path), tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["would_import"] == 15


def test_report_sums_only_imported_versions() -> None:
    from casreg.importers.mlflow import ImportedVersion

    r = ImportReport("sqlite:///x.db", False, versions=[
        ImportedVersion("m", 1, "m", "imported", 1, size=100, new_bytes=40, stored_bytes=30),
        ImportedVersion("m", 2, "m", "skipped", 2, size=999, new_bytes=999, stored_bytes=999)])
    assert (r.bytes_before, r.bytes_after, r.stored_bytes, r.count("skipped")) == (100, 40, 30, 1)


def test_push_records_a_given_author_and_time_but_checks_the_pusher(tmp_path: Path, author: Any) -> None:
    """The additive ``author=``/``created=`` of ``Registry.push``: recorded as given, while
    the policy's push permission is the current user's."""
    from casreg.errors import InvalidInputError, PolicyError

    reg = casreg.Registry(tmp_path / "reg")
    author("admin@example.test")
    reg.set_policy('[roles]\nadmin = ["admin@example.test"]\nimporters = ["importer@example.test"]\n'
                   '[permissions]\npush = ["importers"]\npolicy = ["admin"]\n')
    model = tmp_path / "m.bin"
    model.write_bytes(b"weights")
    when = datetime(2024, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)
    author("importer@example.test")
    v = reg.push("m", model, author="someone@mlflow.test", created=when)
    assert (v.author, v.created_at) == ("someone@mlflow.test", when)
    assert reg.show("m:1").author == "someone@mlflow.test" and reg.show("m:1").created_at == when
    author("someone@mlflow.test")  # the recorded author may not push: the permission is the pusher's
    with pytest.raises(PolicyError):
        reg.push("m", model, author="importer@example.test")
    author("importer@example.test")
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        reg.push("m", model, created=datetime(2024, 3, 1))
    with pytest.raises(InvalidInputError, match="invalid author"):
        reg.push("m", model, author="two\nlines")
