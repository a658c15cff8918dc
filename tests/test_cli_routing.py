"""CLI: related tasks at registration, `tasks related`, `route`, `predict auto`, `train --init-from`."""
import pytest
from typer.testing import CliRunner

from continual.cli import app
from tasks.demo import write_demo_suite

runner = CliRunner()


@pytest.fixture(scope="module")
def store(new_store, tiny_base_dir):
    root = new_store("cli-routing")
    specs = write_demo_suite(root / "data", sizes={"train": 48, "dev": 8, "test": 8})
    outputs = []
    for spec in specs:
        result = runner.invoke(app, ["tasks", "register", spec.name, "--train", spec.train, "--dev", spec.dev,
                                     "--test", spec.test, "--store", str(root)])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    for spec in specs:
        result = runner.invoke(app, ["train", spec.name, "--set", "max_steps=2", "--set", "max_length=32",
                                     "--base-model", str(tiny_base_dir), "--store", str(root)])
        assert result.exit_code == 0, result.output
    return root, outputs


def test_register_prints_related_tasks(store):
    _, outputs = store
    assert "no other registered task" in outputs[0]
    # Two tasks' profiles, centred on their mean, always score -1: named, not shown as a similarity.
    assert "one other registered task (" in outputs[1] and "-1.000" not in outputs[1]
    assert "related registered tasks" in outputs[2] and "demo-topic" in outputs[2]
    assert not [o for o in outputs if "warning" in o]  # the task index lagging one registration is not a fault


def test_tasks_related(store):
    root, _ = store
    result = runner.invoke(app, ["tasks", "related", "demo-topic", "-k", "1", "--store", str(root)])
    assert result.exit_code == 0, result.output
    assert "tasks related to demo-topic" in result.output
    assert result.output.count("demo-") == 2  # the title and one row


def test_route_shows_runner_up_and_margin(store):
    root, _ = store
    result = runner.invoke(app, ["route", "wake me up at 6 with an alarm", "--store", str(root)])
    assert result.exit_code == 0, result.output
    assert "runner-up" in result.output and "margin" in result.output and "demo-intent" in result.output


def test_predict_auto_routes_then_predicts(store):
    root, _ = store
    result = runner.invoke(app, ["predict", "auto", "set an alarm for 7 tomorrow", "--store", str(root)])
    assert result.exit_code == 0, result.output
    assert "demo-intent" in result.output and "routed task" in result.output


def test_train_init_from_reports_lineage(store, tiny_base_dir):
    root, _ = store
    result = runner.invoke(app, ["train", "demo-sentiment", "--init-from", "demo-topic", "--set", "max_steps=1",
                                 "--base-model", str(tiny_base_dir), "--store", str(root)])
    assert result.exit_code == 0, result.output
    assert "warm-started from demo-topic:1 (head fresh)" in result.output
    bad = runner.invoke(app, ["train", "demo-sentiment", "--init-from", "nope", "--base-model", str(tiny_base_dir),
                              "--store", str(root)])
    assert bad.exit_code == 1 and "no task named 'nope'" in bad.output
