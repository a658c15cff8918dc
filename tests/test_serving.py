"""Registered versions are MLflow pyfunc models: loadable by `mlflow.pyfunc` and servable over HTTP
with `mlflow models serve -m models:/<task>@<alias>` (the HTTP test is slow: it starts a server)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_predict_many import register_random_adapters

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the match ended in a draw", "stocks fell sharply today", "a new phone was released"]
STARTUP_TIMEOUT = 180  # seconds: the server imports mlflow, torch and transformers, then loads the model


@pytest.fixture(scope="module")
def served(new_registry, tiny_base_dir, tmp_path_factory):
    reg = new_registry("serving")
    register_random_adapters(reg, tiny_base_dir, ["news", "bottle"], ["lora", "adapter"],
                             tmp_path_factory.mktemp("serving-data"))
    reg.set_alias("news", "production", 1)
    return reg


@pytest.fixture
def tracking(served, monkeypatch):
    """Point mlflow's process-wide tracking and registry URIs at the store (other tests, e.g. training
    through Lightning's MLflow logger, may have set them to their own store), and put them back."""
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.tracking_uri)
    mlflow.set_tracking_uri(served.tracking_uri)
    mlflow.set_registry_uri(served.tracking_uri)
    yield
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def expected(reg, ref):
    return [(p.label, p.score) for p in reg.load(ref).predict(TEXTS)]


@pytest.mark.parametrize("task", ["news", "bottle"])
def test_version_loads_as_a_pyfunc_model(served, task, tracking):
    import mlflow.pyfunc
    import pandas as pd

    ref = "news@production" if task == "news" else "bottle:1"
    model = mlflow.pyfunc.load_model(f"models:/{ref.replace(':', '/')}")
    out = model.predict(pd.DataFrame({"text": TEXTS}))
    assert list(out.columns) == ["label", "score"]
    got = list(zip(out["label"], out["score"]))
    want = expected(served, ref)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert all(abs(g[1] - w[1]) < 1e-5 for g, w in zip(got, want))


def test_bad_input_column_is_one_clear_error(served, tracking):
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/news@production")
    with pytest.raises(Exception, match=r"missing inputs \['text'\]"):  # mlflow's schema check
        model.predict(pd.DataFrame({"sentence": TEXTS}), params=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_over_http(served, tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.tracking_uri,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           # mlflow runs `uvicorn` by name: the venv's bin must be on PATH as in an activated venv.
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/news@production",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}: "
                            f"{(tmp_path / 'serve.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not serving after {STARTUP_TIMEOUT}s: {(tmp_path / 'serve.log').read_text()[-3000:]}")
            time.sleep(1)
        body = json.dumps({"dataframe_records": [{"text": t} for t in TEXTS]}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        got = [(row["label"], row["score"]) for row in answer["predictions"]]
        want = expected(served, "news@production")
        assert [g[0] for g in got] == [w[0] for w in want]
        assert all(abs(g[1] - w[1]) < 1e-4 for g, w in zip(got, want))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
