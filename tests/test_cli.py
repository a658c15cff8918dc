"""The CLI on a user's mistakes: one clear line, exit code 1, no traceback, store unchanged."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from continual.cli import app
from registry import AdapterRegistry

runner = CliRunner()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path):
    rows = [{"text": f"good thing {i}", "label": "pos"} for i in range(4)]
    rows += [{"text": f"bad thing {i}", "label": "neg"} for i in range(4)]
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows),
        "empty": write_jsonl(tmp_path / "empty.jsonl", []),
        "malformed": write_jsonl(tmp_path / "malformed.jsonl", rows[:2] + ['{"text": "oops", "label": '] + rows[2:]),
        "nofield": write_jsonl(tmp_path / "nofield.jsonl", [{"sentence": "x", "label": "pos"}]),
        "other_label": write_jsonl(tmp_path / "dev.jsonl", [{"text": "meh", "label": "neutral"}]),
    }


def snapshot(store: Path):
    reg = AdapterRegistry(store)
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and p.name != "mlflow.db")
    return [t.name for t in reg.tasks()], files


def invoke(args, store):
    return runner.invoke(app, [*args, "--store", str(store)])


def test_register_list_show(data, store_path):
    result = invoke(["tasks", "register", "sent", "--train", str(data["train"])], store_path)
    assert result.exit_code == 0, result.output
    assert "registered task sent: 2 labels (neg, pos)" in result.output
    listing = invoke(["tasks", "list"], store_path)
    assert "sent" in listing.output and "classification" in listing.output
    shown = invoke(["tasks", "show", "sent"], store_path)
    assert '"labels": [' in shown.output and "neg" in shown.output


@pytest.mark.parametrize("args, message", [
    (["tasks", "register", "t", "--train", "missing.jsonl"], "missing.jsonl' does not exist; check the path"),
    (["tasks", "register", "t", "--train", "{empty}"], "has no examples; a split needs at least one row"),
    (["tasks", "register", "t", "--train", "{malformed}"], "malformed.jsonl' line 3"),
    (["tasks", "register", "t", "--train", "{nofield}"], "field 'text'"),
    (["tasks", "register", "t", "--train", "{train}", "--dev", "{other_label}"], "label 'neutral'"),
    (["tasks", "register", "t", "--train", "{train}", "--labels", "pos,x"], "label 'neg'"),
    (["tasks", "register", "../x", "--train", "{train}"], "task name '../x' is not allowed"),
    (["tasks", "register", "a b", "--train", "{train}"], "task name 'a b' is not allowed"),
    (["tasks", "register", "", "--train", "{train}"], "task name '' is not allowed"),
    (["tasks", "register", "taken", "--train", "{train}"], "task name 'taken' is already registered"),
    (["tasks", "show", "nope"], "no task named 'nope'"),
    (["train", "nope"], "no task named 'nope'"),
    (["train", "taken", "--set", "batch_size=0"], "batch_size=0 is invalid"),
    (["train", "taken", "--method", "magic"], "unknown adapter kind 'magic'; choose one of"),
    (["train", "taken", "--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
    (["train", "taken", "--base-model", "./no/such/model"], "base model path './no/such/model' does not exist"),
    (["predict", "taken", "hello"], "task 'taken' has no adapter version yet"),
    (["predict", "taken"], "no text to predict"),
    (["adapters", "alias", "taken", "production", "1"], "task 'taken' has no adapter version yet"),
])
def test_user_mistakes(data, store_path, args, message):
    assert invoke(["tasks", "register", "taken", "--train", str(data["train"])], store_path).exit_code == 0
    before = snapshot(store_path)
    args = [a.format(**{k: str(v) for k, v in data.items()}) for a in args]
    result = invoke(args, store_path)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())  # rich may wrap a long line
    assert message in out, result.output
    assert out.startswith("error:")
    assert "Traceback" not in result.output
    assert snapshot(store_path) == before  # nothing half-written


@pytest.mark.parametrize("args", [["route", "set an alarm"], ["predict", "auto", "set an alarm"]])
def test_routing_in_a_store_without_tasks_is_one_line_naming_the_store(store_path, args):
    """An empty store (often a mistyped --store) used to end `continual route` in a ValueError traceback."""
    result = invoke(args, store_path)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert out.startswith("error: no task with an embedding is registered in") and str(store_path) in out
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["tasks", "list"], ["tasks", "show", "t"], ["adapters", "list"], ["route", "hi"],
                                  ["predict", "t", "hi"], ["adapters", "verify"], ["train", "t"], ["ui"]])
def test_a_command_that_reads_a_store_never_creates_one_at_a_mistyped_path(tmp_path, args):
    """It used to create an empty store there and answer from it (empty tables), hiding the typo."""
    typo = tmp_path / "my-stor"
    result = invoke(args, typo)
    assert result.exit_code == 1, result.output
    assert " ".join(result.output.split()).startswith(f"error: no store at {typo} (nothing is registered there)")
    assert not typo.exists()
    assert invoke(args, f"sqlite:///{tmp_path / 'typo.db'}").exit_code == 1 and not (tmp_path / "typo.db").exists()


def test_registering_a_task_starts_a_new_store(data, tmp_path):
    fresh = tmp_path / "new-store"
    assert invoke(["tasks", "register", "t", "--train", str(data["train"])], fresh).exit_code == 0
    assert [t.name for t in AdapterRegistry(fresh).tasks()] == ["t"]
