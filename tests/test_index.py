"""VectorIndex: exact and approximate search, persistence, and detection of bad index files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from retrieval.index import IndexConfig, IndexStale, VectorIndex, content_checksum, load_or_rebuild


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = 32, families: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((families, d))
    return unit(centres[rng.integers(0, families, n)] + 0.5 * rng.standard_normal((n, d)))


@pytest.fixture
def small():
    x = clustered(200, seed=1)
    return [f"v{i}" for i in range(len(x))], x


def test_exact_search_matches_brute_force(small):
    names, x = small
    index = VectorIndex.build(names, x)
    assert index.kind == "flat" and len(index) == 200 and index.dim == 32
    q = clustered(10, seed=2)
    scores, labels = index.search(q, k=5)
    sims = q @ x.T
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert labels == [[names[j] for j in row] for row in expected]
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, 1), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_k_is_capped_and_names_may_repeat():
    x = unit(np.eye(4, 8) + 0.01)
    index = VectorIndex.build(["a", "a", "b", "b"], x)
    scores, labels = index.search(x[:1], k=10)
    assert scores.shape == (1, 4) and len(labels[0]) == 4
    assert labels[0][0] == "a"


def test_auto_switches_to_hnsw_above_threshold_with_good_recall():
    x = clustered(3000, seed=3)
    names = [str(i) for i in range(len(x))]
    index = VectorIndex.build(names, x, IndexConfig(exact_max=1000))
    assert index.kind == "hnsw"
    q = clustered(200, seed=4)
    _, got = index.search_ids(q, 1)
    truth = np.argmax(q @ x.T, axis=1)
    assert np.mean(got[:, 0] == truth) >= 0.95


def test_ivf_kind_searches_reasonably():
    x = clustered(3000, seed=5)
    index = VectorIndex.build([str(i) for i in range(len(x))], x, IndexConfig(kind="ivf", ivf_nprobe=32))
    assert index.kind == "ivf"
    q = clustered(100, seed=6)
    _, got = index.search_ids(q, 1)
    assert np.mean(got[:, 0] == np.argmax(q @ x.T, axis=1)) >= 0.9


def test_build_and_search_validate_shapes(small):
    names, x = small
    with pytest.raises(ValueError, match="one name per vector"):
        VectorIndex.build(names[:-1], x)
    index = VectorIndex.build(names, x)
    with pytest.raises(ValueError, match="dimension 16"):
        index.search(np.zeros((1, 16), np.float32), 1)
    with pytest.raises(ValueError, match="kind='tree'"):
        IndexConfig(kind="tree")


@pytest.mark.parametrize("config", [IndexConfig(), IndexConfig(kind="hnsw", ef_search=40)])
def test_save_load_round_trip(tmp_path, small, config):
    names, x = small
    index = VectorIndex.build(names, x, config)
    path = tmp_path / "store" / "tasks.faiss"
    index.save(path)
    sidecar = json.loads(Path(str(path) + ".json").read_text())
    assert sidecar["count"] == 200 and sidecar["dim"] == 32 and sidecar["kind"] == index.kind
    assert sidecar["ids"]["0"] == "v0" and sidecar["checksum"] == content_checksum(names, x)
    loaded = VectorIndex.load(path, expected_checksum=content_checksum(names, x), expected_count=200)
    assert loaded.names == names and loaded.kind == index.kind and loaded.config.ef_search == config.ef_search
    q = clustered(5, seed=7)
    s1, l1 = index.search(q, 3)
    s2, l2 = loaded.search(q, 3)
    assert l1 == l2
    np.testing.assert_allclose(s1, s2)


def _saved(tmp_path, small) -> tuple[Path, VectorIndex]:
    names, x = small
    index = VectorIndex.build(names, x)
    path = tmp_path / "i.faiss"
    index.save(path)
    return path, index


def test_corrupt_file_is_detected(tmp_path, small):
    path, _ = _saved(tmp_path, small)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the vectors: FAISS would read it silently
    path.write_bytes(bytes(data))
    with pytest.raises(IndexStale, match="corrupt"):
        VectorIndex.load(path)


def test_truncated_file_and_bad_sidecar_are_detected(tmp_path, small):
    path, _ = _saved(tmp_path, small)
    side = Path(str(path) + ".json")
    meta = json.loads(side.read_text())
    path.write_bytes(path.read_bytes()[:100])
    meta["file_sha256"] = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))  # sidecar agrees with the truncated file: FAISS itself must fail
    with pytest.raises(IndexStale, match="corrupt"):
        VectorIndex.load(path)
    side.write_text("{not json")
    with pytest.raises(IndexStale, match="sidecar is corrupt"):
        VectorIndex.load(path)
    side.unlink()
    with pytest.raises(IndexStale, match="sidecar"):
        VectorIndex.load(path)


def test_stale_index_is_detected(tmp_path, small):
    path, index = _saved(tmp_path, small)
    with pytest.raises(IndexStale, match="stale"):
        VectorIndex.load(path, expected_count=201)
    with pytest.raises(IndexStale, match="stale"):
        VectorIndex.load(path, expected_checksum="0" * 64)
    assert VectorIndex.load(path, expected_checksum=index.checksum).checksum == index.checksum


def test_load_or_rebuild_warns_rebuilds_and_writes_back(tmp_path, small):
    names, x = small
    path, _ = _saved(tmp_path, small)
    path.write_bytes(b"garbage")
    calls = []

    def build():
        calls.append(1)
        return VectorIndex.build(names, x)

    with pytest.warns(RuntimeWarning, match="rebuilding"):
        index = load_or_rebuild(path, build, expected_checksum=content_checksum(names, x))
    assert calls == [1] and len(index) == 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file now loads without a warning
        again = load_or_rebuild(path, build, expected_checksum=content_checksum(names, x))
    assert calls == [1] and again.names == names
    with pytest.warns(RuntimeWarning, match="missing"):
        load_or_rebuild(tmp_path / "absent.faiss", build)
    assert (tmp_path / "absent.faiss").exists()
