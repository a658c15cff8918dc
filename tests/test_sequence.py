"""Task sequences: the file format and its errors, the accuracy matrix, MLflow logging, the CLI."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from continual.sequence import AccuracyMatrix, SequenceError, SequenceSpec, run_sequence
from tasks.errors import ContinualWarning

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"max_epochs": 1, "batch_size": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reg(new_registry):
    """One store for the module (creating one costs seconds); tests register tasks under their own prefix."""
    return new_registry("seq-store")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from tasks.demo import write_demo_suite

    return write_demo_suite(tmp_path_factory.mktemp("seq-data"), sizes={"train": 40, "dev": 10, "test": 20})


def register(reg, demo_files, prefix: str, n: int = 3) -> list[str]:
    names = []
    for spec in demo_files[:n]:
        spec = dataclasses.replace(spec, name=f"{prefix}-{spec.name}")
        reg.register_task(spec)
        names.append(spec.name)
    return names


def spec_for(tasks, method="lora", base=None, **extra) -> SequenceSpec:
    return SequenceSpec(name=extra.pop("name", f"seq-{tasks[0]}"), tasks=tuple(tasks), method=method,
                        config=extra.pop("config", CONFIG), base_model=str(base), **extra)


# -- the file format --------------------------------------------------------------------------------------------
def test_the_documented_example_file_is_valid():
    spec = SequenceSpec.load(ROOT / "notebooks" / "sequence.example.yaml")
    assert spec.tasks == ("demo-topic", "demo-sentiment", "demo-intent")
    assert spec.method == "seq-lora" and spec.eval_limit == 100 and spec.task_agnostic is False
    assert spec.train_config().max_epochs == 2


GOOD = {"name": "s", "tasks": ["a", "b"], "method": "lora"}


@pytest.mark.parametrize("change, message", [
    ({"tasks": []}, "'tasks' is empty"),
    ({"tasks": ["a", "b", "a"]}, "task 'a' appears twice"),
    ({"tasks": "a"}, "'tasks' must be a list"),
    ({"method": "lorra"}, "unknown method 'lorra'; valid methods: baselines seq-lora, seq-ft, replay, ewc, mtl, o-lora, osf; "
                          "adapter kinds"),
    ({"colour": "red"}, "unknown key(s) colour; valid keys: name, tasks, method, config"),
    ({"config": {"learning_rat": 1}}, "unknown setting 'learning_rat'"),
    ({"config": {"learning_rate": -1}}, "learning_rate=-1"),
    ({"config": {"ewc_lambda": 5}}, "unknown setting 'ewc_lambda'"),  # not a setting of lora
    ({"method": "ewc", "config": {"ewc_lambda": -5}}, "ewc_lambda=-5.0 must be >= 0"),
    ({"method": "replay", "config": {"shared_kind": "prefix"}}, "shared_kind='prefix' is invalid"),
    ({"eval_limit": -1}, "'eval_limit' must be a whole number >= 0"),
    ({"task_agnostic": "yes"}, "'task_agnostic' must be true or false"),
    ({"name": ""}, "'name' must be a one-line, non-empty string"),
])
def test_bad_sequence_files_fail_with_one_line(tmp_path, change, message):
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    with pytest.raises(SequenceError) as err:
        SequenceSpec.load(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(path))


def test_missing_keys_and_files(tmp_path):
    path = tmp_path / "seq.yaml"
    path.write_text("name: s\ntasks: [a]\n")
    with pytest.raises(SequenceError, match="missing key.s. method; a sequence needs name, tasks, method"):
        SequenceSpec.load(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(SequenceError, match="holds a mapping with keys name, tasks, method"):
        SequenceSpec.load(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(SequenceError, match="is not valid YAML"):
        SequenceSpec.load(path)
    with pytest.raises(SequenceError, match="does not exist"):
        SequenceSpec.load(tmp_path / "nope.yaml")


def test_method_settings_land_in_kind_options():
    spec = SequenceSpec(name="s", tasks=("a",), method="ewc", config={"ewc_lambda": "1e3", "max_epochs": 2})
    config = spec.train_config()
    assert config.max_epochs == 2 and config.kind_options == {"ewc_lambda": "1e3"}
    kind = SequenceSpec(name="s", tasks=("a",), method="shared-b-lora", config={"train_shared": False})
    assert kind.train_config().kind_options == {"train_shared": False}


def test_metrics_of_a_partial_matrix_are_none_where_cells_are_missing():
    m = AccuracyMatrix(["a", "b"])
    m.b = [0.5, 0.5]
    m.R[0][0] = 0.9
    assert m.metrics_at(0) == {"acc": 0.9, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}
    m.R[1] = [0.7, 0.8]
    assert m.metrics_at(1)["fwt"] is None and m.metrics_at(1)["bwt"] == pytest.approx(-0.2)
    assert json.loads(json.dumps(m.to_json()))["R"] == [[0.9, None], [0.7, 0.8]]


def test_unknown_tasks_list_the_registered_ones(reg, demo_files, tiny_base_dir):
    names = register(reg, demo_files, "u", n=1)
    with pytest.raises(SequenceError, match=rf"unknown task 'nope' \(registered: .*{names[0]}.*\); register it"):
        run_sequence(reg, spec_for([names[0], "nope"], base=tiny_base_dir))
    assert not reg.store.search_runs("tags.`continual.sequence` = 'seq-u-demo-topic'")  # nothing started


# -- running one -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(reg, demo_files, tiny_base_dir):
    names = register(reg, demo_files, "iso")
    return names, run_sequence(reg, spec_for(names, base=tiny_base_dir, name="iso", eval_limit=15))


def test_isolated_lora_adapters_never_forget(lora_run):
    names, result = lora_run
    m = result.metrics
    assert m["bwt"] == 0.0 and m["forgetting"] == 0.0  # exactly: nothing shared, nothing moves
    assert m["fwt"] == 0.0  # a fresh slot evaluates the same before and after earlier tasks train
    assert all(h["bwt"] == 0.0 for h in result.history)
    R = result.R
    for j in range(3):
        assert len({R[i][j] for i in range(j, 3)}) == 1  # column j never changes once trained


def test_matrix_shape_cells_and_versions(lora_run):
    names, result = lora_run
    R, mat = result.R, result.matrix
    assert len(R) == 3 and all(len(row) == 3 for row in R)
    assert R[0][2] is None  # never evaluated
    assert all(isinstance(R[i][j], float) for i in range(3) for j in range(3) if j <= i + 1)
    assert all(isinstance(b, float) for b in mat.b)
    assert mat.versions[2] == [f"{t}:1" for t in names] and mat.versions[0] == [f"{names[0]}:1", None, None]
    assert mat.shared == [None, None, None]
    assert set(result.model.slots) == set(names)  # every task in ONE model


def test_mlflow_parent_and_nested_runs_with_acc_histories(lora_run, reg):
    names, result = lora_run
    store = reg.store
    parent = store.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["continual.sequence"] == "iso" and parent.data.tags["continual.method"] == "lora"
    nested = store.search_runs(f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert sorted(r.data.tags["continual.task"] for r in nested) == sorted(names)
    assert {r.info.status for r in nested} == {"FINISHED"}
    for j, task in enumerate(names):
        history = store.metric_history(result.parent_run_id, f"acc/{task}")
        assert sorted(m.step for m in history) == list(range(j, 3))
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [result.R[i][j] for i in range(j, 3)])
    for key in ("cl/acc", "cl/bwt", "cl/fwt", "cl/forgetting"):
        assert sorted(m.step for m in store.metric_history(result.parent_run_id, key)) == [0, 1, 2]
    # every version the sequence made records it
    version = reg.resolve(names[1], include_experiments=True)  # newest skips experiments unless asked
    assert version.tags["continual.sequence"] == "iso" and version.run_id in {r.info.run_id for r in nested}


def test_artifacts_matrix_json_and_heatmap(lora_run, reg):
    names, result = lora_run
    folder = Path(reg.store.download(reg.store.get_run(result.parent_run_id).info.artifact_uri))
    data = json.loads((folder / "accuracy_matrix.json").read_text())
    assert data["tasks"] == names and data["R"] == result.R and data["b"] == result.matrix.b
    assert data["versions"][2][0] == f"{names[0]}:1"
    assert (folder / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "accuracy_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_mlflow_ui_opens_the_training_view_and_says_how_to_read_the_run(lora_run, reg):
    names, result = lora_run
    experiment = reg.store.client.get_experiment(reg.store.experiment_id)
    # MLflow 3 shows an untagged experiment in its GenAI view, without the runs' charts.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = reg.store.get_run(result.parent_run_id).data.tags["mlflow.note.content"]
    assert "accuracy_curves.png" in note and " → ".join(names) in note


def test_curves_share_one_axis_and_start_at_each_tasks_training():
    from continual.plots import curves_figure

    R = [[0.9, None, None], [0.8, 0.7, None], [0.75, 0.6, 0.95]]
    fig = curves_figure(R, ["a", "b", "c"], before=[None, 0.3, 0.2])
    (ax,) = fig.axes
    assert ax.get_ylim() == (0, 100)
    lines = [line for line in ax.get_lines() if line.get_label() in ("a", "b", "c")]
    assert [list(line.get_xdata()) for line in lines] == [[0, 1, 2], [1, 2], [2]]
    assert list(lines[0].get_ydata()) == pytest.approx([90, 80, 75])


# -- task-agnostic evaluation ---------------------------------------------------------------------------------------
class EverythingToFirst:
    def __init__(self, task):
        self.task = task

    def route(self, texts):
        return [self.task] * len(texts)


def test_task_agnostic_with_the_oracle_matches_task_aware(reg, demo_files, tiny_base_dir, lora_run):
    names, aware = lora_run
    agnostic = run_sequence(reg, spec_for(names, base=tiny_base_dir, name="iso-agnostic", eval_limit=15,
                                          task_agnostic=True, router="oracle"))
    assert agnostic.R == aware.R
    assert reg.store.get_run(agnostic.parent_run_id).data.tags["continual.task_agnostic"] == "true"


def test_task_agnostic_with_the_store_router(reg, demo_files, tiny_base_dir, lora_run):
    # The default router is the store's FAISS task router: the demo tasks are easy to tell apart,
    # so routing costs little, but a wrong route can only lower a cell.
    names, aware = lora_run
    routed = run_sequence(reg, spec_for(names, base=tiny_base_dir, name="iso-routed", eval_limit=15,
                                        task_agnostic=True))
    for row_routed, row_aware in zip(routed.R, aware.R):
        for a, b in zip(row_routed, row_aware):
            assert (a is None) == (b is None)
            assert a is None or b - 0.2 <= a <= b + 1e-9


def test_task_agnostic_judges_by_the_routed_heads_label_string(reg, demo_files, tiny_base_dir):
    # topic and sentiment labels are disjoint: routed to the topic head, no sentiment example can be right.
    names = register(reg, demo_files, "route", n=2)
    result = run_sequence(reg, spec_for(names, base=tiny_base_dir, name="route", task_agnostic=True),
                          router=EverythingToFirst(names[0]))
    assert result.R[1][1] == 0.0 and result.R[0][1] == 0.0
    assert result.matrix.b[1] == 0.0  # before anything trained, routing to the first task still counts


# -- the CLI ----------------------------------------------------------------------------------------------------------
def test_cli_run_prints_the_matrix(reg, demo_files, tiny_base_dir, tmp_path):
    from typer.testing import CliRunner

    from continual.cli import app

    names = register(reg, demo_files, "cli", n=2)
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump({"name": "cli-seq", "tasks": names, "method": "lora", "config": CONFIG,
                                    "base_model": str(tiny_base_dir)}))
    result = CliRunner().invoke(app, ["run", str(path), "--store", str(Path(reg.store.artifact_root).parent)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "accuracy matrix R" in result.output and "BWT 0.0" in result.output
    assert f"2/2 {names[1]}" in result.output


def test_cli_run_bad_file_is_one_red_line(tmp_path):
    from typer.testing import CliRunner

    from continual.cli import app

    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "tasks": ["a", "a"]}))
    result = CliRunner().invoke(app, ["run", str(path), "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "appears twice" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_init_from_related_warm_starts_from_the_nearest_trained_task_and_probes_transfer(reg, demo_files,
                                                                                          tiny_base_dir):
    names = register(reg, demo_files, "warm", n=2)
    # related_margin=-1: take the nearest task however far
    result = run_sequence(reg, spec_for(names, base=tiny_base_dir, name="warm", init_from="related",
                                        linear_probe=True, method="lora",
                                        config={**CONFIG, "related_margin": -1.0}))
    m = result.matrix
    assert m.init_from == [None, f"{names[0]}:1"]  # the only earlier task is the nearest one
    version = reg.resolve(names[1], include_experiments=True)
    assert version.tags["parent_adapter"] == f"{names[0]}:1"
    # the warm-started slot is not the fresh one: R[0][1] measures it (forward transfer is no longer 0 by design)
    assert m.probe_before[1] is not None and m.probe_after[1] is not None
    assert result.metrics["probe_fwt"] == pytest.approx(m.probe_after[1] - m.probe_before[1])
    history = reg.store.metric_history(result.parent_run_id, "cl/probe_fwt")
    assert [h.step for h in history] == [0, 1]


def test_init_from_related_starts_fresh_below_related_margin(new_registry, demo_files, tiny_base_dir):
    reg = new_registry("far-store")  # only these tasks: the module's store holds copies of them
    names = register(reg, demo_files, "far", n=3)
    config = {**CONFIG, "related_margin": 2.0}  # no cosine beats the mean by 2
    with pytest.warns(ContinualWarning, match=r"no registered task is related enough \(nearest: far-"):
        result = run_sequence(reg, spec_for(names[:2], base=tiny_base_dir, name="far", init_from="related",
                                            config=config))
    assert result.matrix.init_from == [None, None]
    assert "parent_adapter" not in reg.resolve(names[1], include_experiments=True).tags
    with pytest.raises(SequenceError, match="related_margin"):
        spec_for(names, config={**CONFIG, "related_margin": 3}).train_config()


def test_init_from_related_with_two_registered_tasks_takes_the_other_and_says_why(new_registry, demo_files,
                                                                                 tiny_base_dir):
    reg = new_registry("pair-store")
    names = register(reg, demo_files, "pair", n=2)
    with pytest.warns(ContinualWarning, match=r"only one other task \(pair-\S+\) is registered, so how related"):
        result = run_sequence(reg, spec_for(names, base=tiny_base_dir, name="pair", init_from="related"))
    assert result.matrix.init_from == [None, f"{names[0]}:1"]


def test_init_from_related_is_refused_for_baselines(reg):
    with pytest.raises(SequenceError, match="init_from: related needs an adapter-kind method"):
        SequenceSpec.from_dict({"name": "x", "tasks": ["a"], "method": "seq-lora", "init_from": "related"})
    with pytest.raises(SequenceError, match="'init_from' must be none or related"):
        SequenceSpec.from_dict({"name": "x", "tasks": ["a"], "method": "lora", "init_from": "auto"})
