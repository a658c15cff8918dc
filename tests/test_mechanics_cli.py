"""Training mechanics from the CLI on a tiny random model: the full-mechanics command registers, a
divergence stops with one red line and exit 1 and registers nothing, the project's warnings show as
one yellow line each, and the precision chosen is printed."""
import warnings

import pytest
from typer.testing import CliRunner

from continual.cli import app
from registry import AdapterRegistry

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SMALL = ["--set", "max_length=32", "--set", "batch_size=8", "--set", "eval_batch_size=32"]


@pytest.fixture
def reg(new_registry):
    return new_registry("mech-cli", demo_sizes={"train": 32, "dev": 8, "test": 8})


def train(reg, tiny_base_dir, *extra):
    store = str(reg.local_root)
    return runner.invoke(app, ["train", "demo-topic", "--base-model", str(tiny_base_dir), "--store", store,
                               *SMALL, *extra])


def test_every_mechanic_at_once_trains_and_registers(reg, tiny_base_dir):
    result = train(reg, tiny_base_dir, "--set", "optimizer=lion", "--set", "learning_rate=1e-4",
                   "--set", "precision=bf16", "--set", "accumulate_grad_batches=2", "--set", "adaptive_clip=0.01",
                   "--set", "lr_schedule=cosine", "--set", "warmup_steps=5", "--set", "layer_lr_decay=0.9",
                   "--set", "max_steps=4")
    assert result.exit_code == 0, result.output
    assert "precision bf16 autocast (precision=bf16 as set" in result.output
    [version] = AdapterRegistry(reg.local_root).versions("demo-topic")
    params = AdapterRegistry(reg.local_root).run_info(version.run_id).data.params
    assert params["optimizer"] == "lion" and params["layer_lr_decay"] == "0.9" and params["adaptive_clip"] == "0.01"
    assert params["precision_used"] == "bf16"
    metrics = AdapterRegistry(reg.local_root).store.metric_history(version.run_id, "grad_norm/global")
    assert metrics, "gradient norms are logged to MLflow"


def test_divergence_stops_with_one_line_and_registers_nothing(reg, tiny_base_dir):
    result = train(reg, tiny_base_dir, "--set", "optimizer=sgd", "--set", "learning_rate=1e12",
                   "--set", "max_epochs=3")
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "error: training diverged at step" in out, result.output
    assert "optimizer=sgd, learning_rate=1e+12" in out and "nothing was registered" in out
    assert "Traceback" not in result.output
    store = AdapterRegistry(reg.local_root)
    assert store.versions("demo-topic") == []
    [run] = [r for r in store.find_runs() if r.info.run_name == "train-demo-topic"]
    assert run.info.status == "FAILED"


def test_project_warnings_are_one_yellow_line_each(reg, tiny_base_dir):
    # --init-from auto with no related adapter warns (ContinualWarning); the CLI must show it, once.
    result = train(reg, tiny_base_dir, "--init-from", "auto", "--set", "max_steps=1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "--init-from auto: no " in lines[0] and "from scratch" in lines[0], result.output


def test_cli_filters_keep_project_warnings_and_drop_library_noise():
    from continual.noise import filter_warnings
    from tasks.errors import ContinualWarning

    with warnings.catch_warnings(record=True) as caught:
        filter_warnings(show=lambda *a, **k: caught.append(a))  # record what would be printed
        warnings.warn("ours", ContinualWarning)
        warnings.warn_explicit("tip", UserWarning, "x.py", 1, module="lightning.pytorch.trainer")
        warnings.warn("old api", DeprecationWarning)
    assert [str(a[0]) for a in caught] == ["ours"]


@pytest.mark.parametrize("rows, expected", [
    (30, "no dev split: 3 of the 30 training examples are held out as dev (early stopping, best weights)"),
    (12, "no dev split and under 20 training examples: training without dev (no early stopping"),
])
def test_training_a_task_without_dev_says_what_it_uses_instead(new_store, tiny_base_dir, tmp_path, rows, expected):
    """The result line reports a dev accuracy: the user must be told it comes from examples held out of train."""
    import json

    store = new_store("no-dev")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"text number {i}", "label": "ab"[i % 2]}) + "\n" for i in range(rows)))
    assert runner.invoke(app, ["tasks", "register", "t", "--train", str(path), "--store", str(store)]).exit_code == 0
    result = runner.invoke(app, ["train", "t", "--base-model", str(tiny_base_dir), "--store", str(store), *SMALL,
                                 "--set", "max_steps=1"])
    assert result.exit_code == 0, result.output
    assert expected in " ".join(result.output.split())
