"""The loaders serving code really uses, each round-tripping a real object through
casreg:// (push a file, load it back by NAME@ALIAS, compare). docs/loaders.md shows the
same calls. A local registry keeps these fast; the filesystem itself is tested on every
backend in tests/test_fs.py."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pytest

from casreg import Registry


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def publish(reg: Registry, name: str, path: Path) -> str:
    """Push ``path`` as ``name`` and point ``production`` at it; returns the URL prefix."""
    v = reg.push(name, path)
    reg.set_alias(name, "production", v.version)
    return f"casreg://{name}@production"


def test_json(reg: Registry, tmp_path: Path) -> None:
    doc = {"labels": ["fraud", "ok"], "threshold": 0.73, "nested": {"k": [1, 2, 3]}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    url = publish(reg, "cfg", tmp_path / "config.json")
    with fsspec.open(url, "r", registry=reg.url) as f:
        assert json.load(f) == doc
    with fsspec.open(f"{url}/config.json", "r", registry=reg.url) as f:  # the file's own name works too
        assert json.load(f) == doc


def test_numpy_npy_and_npz(reg: Registry, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((300, 500)).astype(np.float32)  # 600 kB: a few chunks
    d = tmp_path / "arrays"
    d.mkdir()
    np.save(d / "emb.npy", arr)
    np.savez_compressed(d / "bundle.npz", a=arr[:10], idx=np.arange(7))
    url = publish(reg, "arrays", d)
    with fsspec.open(f"{url}/emb.npy", registry=reg.url) as f:
        assert np.array_equal(np.load(f), arr)
    with fsspec.open(f"{url}/bundle.npz", registry=reg.url) as f, np.load(f) as z:  # zip: seeks to its end first
        assert np.array_equal(z["a"], arr[:10]) and z["idx"].tolist() == list(range(7))


def test_parquet_with_pandas_and_pyarrow(reg: Registry, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    import pyarrow.parquet as pq
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    df = pd.DataFrame({"id": np.arange(5000), "score": np.linspace(0, 1, 5000),
                       "label": ["fraud" if i % 7 == 0 else "ok" for i in range(5000)]})
    df.to_parquet(tmp_path / "features.parquet", row_group_size=1000)
    url = publish(reg, "features", tmp_path / "features.parquet")
    back = pd.read_parquet(url, storage_options={"registry": reg.url})  # pandas hands the URL to fsspec
    pd.testing.assert_frame_equal(back, df)
    fs = fsspec.filesystem("casreg", registry=reg.url)
    table = pq.read_table("features@production", filesystem=PyFileSystem(FSSpecHandler(fs)), columns=["score"])
    assert table.column("score").to_pylist() == df["score"].tolist()
    with fs.open("features@production") as f:  # a file object: pyarrow reads the footer, then row groups
        pf = pq.ParquetFile(f)
        assert pf.metadata.num_row_groups == 5
        assert pf.read_row_group(3).column("id").to_pylist() == list(range(3000, 4000))


def test_safetensors_from_bytes_and_from_a_pulled_directory(reg: Registry, tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"embed.weight": np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32),
               "head.bias": np.arange(10, dtype=np.int64)}
    d = tmp_path / "model"
    d.mkdir()
    st.save_file(tensors, d / "model.safetensors", metadata={"format": "np"})
    (d / "config.json").write_text('{"hidden_size": 32}')
    url = publish(reg, "llm", d)
    fs = fsspec.filesystem("casreg", registry=reg.url)
    loaded = st.load(fs.cat_file(f"{url}/model.safetensors"))
    assert loaded.keys() == tensors.keys() and all(np.array_equal(loaded[k], tensors[k]) for k in tensors)
    fs.get(url, str(tmp_path / "serving"), recursive=True)  # a whole directory, verified like a pull
    from_dir = st.load_file(tmp_path / "serving" / "model.safetensors")
    assert all(np.array_equal(from_dir[k], tensors[k]) for k in tensors)
    assert json.loads((tmp_path / "serving" / "config.json").read_text()) == {"hidden_size": 32}
    pulled = reg.pull("llm@production", tmp_path / "pulled")
    assert all(np.array_equal(st.load_file(Path(pulled.dest) / "model.safetensors")[k], tensors[k]) for k in tensors)


class Scaler:
    """A small fitted model object, as pickled by scikit-learn-style pipelines."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean, self.scale = mean, scale

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


def test_pickle_and_joblib(reg: Registry, tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    model = Scaler(np.arange(4.0), np.full(4, 2.0))
    d = tmp_path / "sk"
    d.mkdir()
    with open(d / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    joblib.dump({"scaler": model, "weights": np.ones((200, 200))}, d / "pipeline.joblib", compress=3)
    url = publish(reg, "sk", d)
    x = np.array([[2.0, 3.0, 4.0, 5.0]])
    with fsspec.open(f"{url}/model.pkl", registry=reg.url) as f:
        assert np.array_equal(pickle.load(f).transform(x), model.transform(x))
    with fsspec.open(f"{url}/pipeline.joblib", registry=reg.url) as f:
        bundle = joblib.load(f)
    assert np.array_equal(bundle["scaler"].transform(x), model.transform(x))
    assert np.array_equal(bundle["weights"], np.ones((200, 200)))


def test_torch_state_dict(reg: Registry, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    url = publish(reg, "net", tmp_path / "model.pt")
    with fsspec.open(url, registry=reg.url) as f:
        state = torch.load(f, weights_only=True)
    again = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    again.load_state_dict(state)
    x = torch.randn(3, 16)
    assert torch.equal(again(x), net(x))
