from pathlib import Path

import pytest

from registry.store import StoreError, resolve_store


def test_path_store_keeps_everything_in_one_folder(tmp_path):
    uri, artifacts = resolve_store(tmp_path / "s")
    assert uri == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"
    assert artifacts == str(tmp_path / "s" / "artifacts")


def test_env_var_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_STORE", str(tmp_path / "env"))
    assert resolve_store(None)[0].endswith("env/mlflow.db")
    monkeypatch.delenv("CONTINUAL_STORE")
    monkeypatch.chdir(tmp_path)
    assert resolve_store(None)[0] == f"sqlite:///{tmp_path / 'continual-store' / 'mlflow.db'}"


def test_sqlite_and_http_uris(tmp_path):
    uri, artifacts = resolve_store(f"sqlite:///{tmp_path}/x.db")
    assert uri == f"sqlite:///{tmp_path}/x.db" and artifacts == str(tmp_path / "artifacts")
    assert resolve_store("http://127.0.0.1:5000/") == ("http://127.0.0.1:5000", None)


def test_bad_stores(tmp_path):
    with pytest.raises(StoreError, match="'s3://bucket' is not supported"):
        resolve_store("s3://bucket")
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        resolve_store(afile)
    # a server URI passed through pathlib.Path once left an MLflow database in a folder named 'http:'
    mangled = Path("http://127.0.0.1:5000")
    with pytest.raises(StoreError, match=r"lost a '/'.*e\.g\. http://127\.0\.0\.1:5000"):
        resolve_store(mangled)


def test_registry_exposes_tracking_uri(store_path):
    from registry import AdapterRegistry

    assert AdapterRegistry(store_path).tracking_uri == f"sqlite:///{store_path / 'mlflow.db'}"
