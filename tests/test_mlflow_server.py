"""A sequence against a real `mlflow server` over HTTP: runs, nested runs, acc/<task> histories, artifacts."""
from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 90  # seconds; the server runs its database migrations first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT}s: "
                            f"{(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_sequence_over_http(server, tiny_base_dir, tmp_path):
    import torch

    from continual.sequence import SequenceSpec, run_sequence
    from registry import AdapterRegistry
    from tasks.demo import write_demo_suite

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: see test_sequence.py
    try:
        reg = AdapterRegistry(server)
        names = []
        for spec in write_demo_suite(tmp_path / "data", sizes={"train": 40, "dev": 10, "test": 20})[:2]:
            reg.register_task(dataclasses.replace(spec, name=f"http-{spec.name}"))
            names.append(f"http-{spec.name}")
        result = run_sequence(reg, SequenceSpec(name="over-http", tasks=tuple(names), method="lora",
                                                config={"max_epochs": 1}, base_model=str(tiny_base_dir)))
    finally:
        torch.set_num_threads(threads)

    # read everything back through a fresh client, as another machine would
    store = AdapterRegistry(server).store
    parent = store.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["continual.sequence"] == "over-http"
    nested = store.search_runs(f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert sorted(r.data.tags["continual.task"] for r in nested) == sorted(names)
    first = sorted(store.metric_history(result.parent_run_id, f"acc/{names[0]}"), key=lambda m: m.step)
    assert [m.step for m in first] == [0, 1]
    assert [m.value for m in first] == pytest.approx([result.R[0][0], result.R[1][0]])
    assert [m.step for m in store.metric_history(result.parent_run_id, f"acc/{names[1]}")] == [1]
    assert result.metrics["bwt"] == 0.0
    folder = Path(store.download(f"{parent.info.artifact_uri}/accuracy_matrix.json", tmp_path / "dl"))
    assert json.loads(folder.read_text())["R"] == result.R
    # a sequence registers experiment versions: "newest" skips them, so name the version
    assert reg.load(f"{names[1]}:1").predict(["hello there"])[0].label in reg.task(names[1]).labels
