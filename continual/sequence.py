"""Task sequences with forgetting tracking: `continual run SEQUENCE.yaml`.

A sequence trains its tasks one after another in ONE `AdapterModel` (shared parts really shared) and,
after each task, re-evaluates every task seen so far, filling the accuracy matrix R (DESIGN.md,
"Forgetting metrics"; the metrics themselves are `continual.metrics`).  The file format is documented
in `notebooks/sequence.example.yaml`.  Before anything trains, `b[j]` is measured for every task: the
accuracy of task j's freshly initialised slot (adapter + head, seeded exactly as its training will
start it) on the untouched model.  Just before task i trains, the same fresh slot is evaluated on the
model as tasks 0..i-1 left it: that is R[i-1][i], which forward transfer needs.  Other cells above the
diagonal are never evaluated (null).

MLflow: one parent run per sequence (tag `continual.sequence=<name>`) with one nested run per training
step; on the parent, `acc/<task>` at step i (the row), `cl/acc|bwt|fwt|forgetting` of R[:i+1, :i+1] at
step i, and the artifacts `accuracy_matrix.json` and `accuracy_matrix.png`, rewritten after every row.

Task-agnostic evaluation (`task_agnostic: true`): each test example is predicted without its task name.
A `Router` picks a task per text and the example counts as correct when the routed task's head outputs
the gold label string; texts routed to a task that has no trained slot yet count as wrong.  The built-in
router is the oracle (the true task); `registry.routing` can plug in through `run_sequence(router=...)`.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

from tasks.errors import ContinualError

if TYPE_CHECKING:
    from continual.config import TrainConfig
    from registry.registry import AdapterRegistry

EVAL_SEED = 0  # which test examples `eval_limit` keeps: fixed, so every row evaluates the same ones
MATRIX_FILE = "accuracy_matrix.json"
HEATMAP_FILE = "accuracy_matrix.png"


class SequenceError(ContinualError):
    pass


# -- the sequence file ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequenceSpec:
    name: str  # names the parent MLflow run (tag continual.sequence)
    tasks: tuple[str, ...]  # registered task names, in training order, each once
    method: str  # a baseline (seq-lora, seq-ft, replay, ewc, mtl) or an adapter kind (lora, shared-b-lora, ...)
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig settings + the method's own settings
    eval_limit: int = 0  # evaluate at most this many test examples per task (0: all); always the same ones
    task_agnostic: bool = False  # predict without task names: a router picks the task of each example
    router: str = "index"  # task-agnostic router: "index" (the store's FAISS task router) or "oracle" (true task)
    base_model: str | None = None  # Hugging Face id or local path (default: all-MiniLM-L6-v2)
    source: str = "sequence"  # where the spec came from (error messages)

    REQUIRED = ("name", "tasks", "method")

    def __post_init__(self) -> None:
        where = self.source
        if not isinstance(self.name, str) or not self.name.strip() or "\n" in self.name:
            raise SequenceError(f"{where}: 'name' must be a one-line, non-empty string, got {self.name!r}")
        tasks = self.tasks
        if isinstance(tasks, str) or not isinstance(tasks, Iterable):
            raise SequenceError(f"{where}: 'tasks' must be a list of registered task names, got {tasks!r}")
        tasks = tuple(tasks)
        if not tasks:
            raise SequenceError(f"{where}: 'tasks' is empty; list at least one registered task")
        bad = [t for t in tasks if not isinstance(t, str)]
        if bad:
            raise SequenceError(f"{where}: 'tasks' must hold task names (strings), got {bad[0]!r}")
        seen = set()
        for t in tasks:
            if t in seen:
                raise SequenceError(f"{where}: task '{t}' appears twice in 'tasks'; a sequence visits each task once")
            seen.add(t)
        object.__setattr__(self, "tasks", tasks)
        if not isinstance(self.method, str):
            raise SequenceError(f"{where}: 'method' must be a method name, got {self.method!r}")
        if not isinstance(self.config, Mapping):
            raise SequenceError(f"{where}: 'config' must be a mapping of setting: value, got {self.config!r}")
        object.__setattr__(self, "config", dict(self.config))
        if isinstance(self.eval_limit, bool) or not isinstance(self.eval_limit, int) or self.eval_limit < 0:
            raise SequenceError(f"{where}: 'eval_limit' must be a whole number >= 0 (0: all), got {self.eval_limit!r}")
        if not isinstance(self.task_agnostic, bool):
            raise SequenceError(f"{where}: 'task_agnostic' must be true or false, got {self.task_agnostic!r}")
        if self.router not in ("index", "oracle"):
            raise SequenceError(f"{where}: 'router' must be index or oracle, got {self.router!r}")
        if self.base_model is not None and not isinstance(self.base_model, str):
            raise SequenceError(f"{where}: 'base_model' must be a model id or path, got {self.base_model!r}")
        from continual.methods import MethodError, make_method

        try:
            make_method(self.method, self.train_config().kind_options)  # checks the method and its settings
        except MethodError as err:
            raise SequenceError(f"{where}: {err}") from None

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "source"]

    @classmethod
    def from_dict(cls, data: Any, source: str = "sequence") -> "SequenceSpec":
        if not isinstance(data, Mapping):
            raise SequenceError(f"{source}: a sequence file holds a mapping with keys {', '.join(cls.keys())}")
        unknown = sorted(set(data) - set(cls.keys()))
        if unknown:
            raise SequenceError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: "
                                f"{', '.join(cls.keys())}")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise SequenceError(f"{source}: missing key(s) {', '.join(missing)}; a sequence needs "
                                f"{', '.join(cls.REQUIRED)}")
        values = dict(data)
        if values.get("config") is None:
            values["config"] = {}
        return cls(**values, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "SequenceSpec":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise SequenceError(f"sequence file '{path}' does not exist; see notebooks/sequence.example.yaml")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SequenceError(f"sequence file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
        return cls.from_dict(data, source=str(path))

    def train_config(self) -> "TrainConfig":
        """TrainConfig from `config`; the method's own settings (ewc_lambda, ...) land in kind_options."""
        from continual.config import ConfigError, TrainConfig
        from continual.methods import MethodError, setting_names

        try:
            return TrainConfig.from_dict(self.config, setting_names(self.method))
        except (ConfigError, MethodError) as err:
            raise SequenceError(f"{self.source}: {err}") from None

    def check_tasks(self, registered: Iterable[str]) -> None:
        registered = sorted(registered)
        for t in self.tasks:
            if t not in registered:
                raise SequenceError(f"{self.source}: unknown task '{t}' (registered: {', '.join(registered) or 'none'}); "
                                    f"register it with `continual tasks register {t} --train FILE`")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                ((k, getattr(self, k)) for k in self.keys())}


# -- routing --------------------------------------------------------------------------------------------------
class Router(Protocol):
    """Picks a task for each text (task-agnostic evaluation)."""

    def route(self, texts: Sequence[str]) -> list[str]: ...


class IndexRouter:
    """Routes each text with the store's task router (`AdapterRegistry.route`, FAISS): the real
    task-agnostic setting, where a wrong route costs the example."""

    def __init__(self, registry: "AdapterRegistry"):
        self.registry = registry

    def route(self, texts: Sequence[str]) -> list[str]:
        return [routes[0].task for routes in self.registry.route(list(texts))] if texts else []


class OracleRouter:
    """Routes each text to its true task: task-agnostic evaluation's upper bound (a text found in two
    tasks goes to the first)."""

    def __init__(self, truth: Mapping[str, str]):
        self.truth = dict(truth)

    def route(self, texts: Sequence[str]) -> list[str]:
        return [self.truth.get(t, "") for t in texts]


# -- the accuracy matrix (pure bookkeeping) ---------------------------------------------------------------------
@dataclass
class AccuracyMatrix:
    tasks: list[str]
    R: list[list[float | None]] = field(default_factory=list)  # None: not evaluated
    b: list[float | None] = field(default_factory=list)
    versions: list[list[str | None]] = field(default_factory=list)  # adapter version each cell evaluated
    shared: list[str | None] = field(default_factory=list)  # row i: version holding the shared part in force

    def __post_init__(self) -> None:
        T = len(self.tasks)
        self.R = self.R or [[None] * T for _ in range(T)]
        self.b = self.b or [None] * T
        self.versions = self.versions or [[None] * T for _ in range(T)]
        self.shared = self.shared or [None] * T

    def metrics_at(self, i: int) -> dict[str, float | None]:
        """ACC, BWT, FWT, forgetting of R[:i+1, :i+1] (None where the cells they need are missing)."""
        from continual import metrics as m

        sub = [row[: i + 1] for row in self.R[: i + 1]]
        out: dict[str, float | None] = {}
        for key, fn in (("acc", m.acc), ("bwt", m.bwt), ("forgetting", m.forgetting),
                        ("fwt", lambda R: m.fwt(R, self.b[: i + 1]))):
            try:
                out[key] = fn(sub)
            except ValueError:
                out[key] = None
        return {k: out[k] for k in ("acc", "bwt", "fwt", "forgetting")}

    def to_json(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "R": self.R, "b": self.b, "versions": self.versions, "shared": self.shared}


@dataclass
class SequenceResult:
    spec: SequenceSpec
    matrix: AccuracyMatrix
    metrics: dict[str, float | None]  # of the final matrix
    history: list[dict[str, float | None]]  # metrics after each row (None for rows that do not exist)
    parent_run_id: str
    seconds: float  # whole sequence, evaluation included
    train_seconds: float
    registration: str  # how the method's adapter versions relate to what was evaluated
    model: Any = None  # the sequence's AdapterModel, every task's slot in it (drop it to free the memory)

    @property
    def R(self) -> list[list[float | None]]:
        return self.matrix.R

    def to_json(self) -> dict[str, Any]:
        return {"name": self.spec.name, "method": self.spec.method, **self.matrix.to_json(),
                "metrics": self.metrics, "history": self.history, "parent_run_id": self.parent_run_id,
                "seconds": self.seconds, "train_seconds": self.train_seconds, "registration": self.registration,
                "task_agnostic": self.spec.task_agnostic}


# -- the runner -----------------------------------------------------------------------------------------------------
def run_sequence(registry: "AdapterRegistry", spec: SequenceSpec, show_progress: bool = False,
                 router: Router | None = None,
                 on_row: Callable[[int, str, AccuracyMatrix], None] | None = None) -> SequenceResult:
    """Train `spec.tasks` in order with `spec.method`, filling and logging the accuracy matrix."""
    from continual.data import subsample
    from continual.methods import SequenceContext, make_method
    from continual.train import load_task_data
    from registry.base_model import load_base_model
    from registry.model import AdapterModel

    started = time.perf_counter()
    spec.check_tasks(t.name for t in registry.tasks())
    config = spec.train_config()
    method = make_method(spec.method, config.kind_options)
    data = {t: load_task_data(registry.task(t)) for t in spec.tasks}
    for t in spec.tasks:
        if not data[t].test:
            raise SequenceError(f"task '{t}' has no test split, which the accuracy matrix needs; register it "
                                f"again with --test FILE")
    evals = {t: subsample(data[t].test, spec.eval_limit, EVAL_SEED) for t in spec.tasks}
    if not spec.task_agnostic:
        router = None  # task-aware: every example is predicted with its own task's slot
    elif router is None and spec.router == "index":
        router = IndexRouter(registry)
    elif router is None:
        truth: dict[str, str] = {}
        for t in spec.tasks:
            for e in evals[t]:
                truth.setdefault(e.text, t)
        router = OracleRouter(truth)
    base = load_base_model(spec.base_model)
    # A private copy of the base weights (as train_task's build_model): adapters attach in place, and a
    # sequence's shared parts (or base layers it unfreezes) must not leak into anything else in the process.
    model = AdapterModel(base.fresh_encoder())
    store = registry.store
    T = len(spec.tasks)
    parent = store.start_run(f"sequence-{spec.name}", {
        "continual.sequence": spec.name, "continual.method": spec.method,
        "continual.registered": str(method.registers).lower(), "continual.registration": method.registration,
        "continual.task_agnostic": str(spec.task_agnostic).lower(),
    })
    ctx = SequenceContext(registry, base, model, config, data, list(spec.tasks), spec.name, spec.method, parent,
                          spec.base_model, show_progress)
    matrix = AccuracyMatrix(list(spec.tasks))
    history: list[dict[str, float | None]] = []
    train_seconds = 0.0
    eval_kwargs = dict(max_length=config.max_length, batch_size=config.eval_batch_size, precision=config.precision)

    def evaluate(task: str, available: set[str]) -> float:
        return _accuracy(model, base.tokenizer, evals[task], task, available, router, eval_kwargs)

    def probe(task: str, available: set[str]) -> float:
        """Accuracy of `task`'s fresh slot, as its training would start it; the model is left as it was."""
        method.add_slot(ctx, task)
        try:
            return evaluate(task, available | {task})
        finally:
            model.remove_slot(task)

    def log_row(i: int) -> None:
        row_metrics = matrix.metrics_at(i)
        history.append(row_metrics)
        store.log_metrics(parent, {f"acc/{t}": matrix.R[i][j] for j, t in enumerate(spec.tasks)
                                   if matrix.R[i][j] is not None}, step=i)
        store.log_metrics(parent, {f"cl/{k}": v for k, v in row_metrics.items() if v is not None}, step=i)
        _log_artifacts(store, parent, matrix, f"{spec.name} ({spec.method})")
        if on_row is not None:
            on_row(i, spec.tasks[i], matrix)

    try:
        store.log_params(parent, {
            "tasks": ",".join(spec.tasks), "method": spec.method, "eval_limit": spec.eval_limit,
            "task_agnostic": spec.task_agnostic, "base_model": base.model_id, **config.flat(),
        })
        for j, t in enumerate(spec.tasks):
            matrix.b[j] = probe(t, set())
        store.log_metrics(parent, {f"b/{t}": matrix.b[j] for j, t in enumerate(spec.tasks)}, step=0)
        if method.joint:
            outcome = method.train_all(ctx)
            train_seconds += outcome.seconds
            history.extend({k: None for k in ("acc", "bwt", "fwt", "forgetting")} for _ in range(T - 1))
            for j, t in enumerate(spec.tasks):
                matrix.R[T - 1][j] = evaluate(t, set(spec.tasks))
            log_row(T - 1)
        else:
            for i, task in enumerate(spec.tasks):
                if i > 0:
                    matrix.R[i - 1][i] = probe(task, set(spec.tasks[:i]))
                    store.log_metrics(parent, {f"before/{task}": matrix.R[i - 1][i]}, step=i - 1)
                outcome = method.train(ctx, i, task)
                train_seconds += outcome.seconds
                if outcome.version is not None:
                    matrix.versions[i][i] = outcome.version.ref
                matrix.shared[i] = outcome.shared_ref
                for j, t in enumerate(spec.tasks[: i + 1]):
                    matrix.R[i][j] = evaluate(t, set(spec.tasks[: i + 1]))
                    if j < i:
                        matrix.versions[i][j] = matrix.versions[i - 1][j]
                log_row(i)
        final = matrix.metrics_at(T - 1)
        store.log_metrics(parent, {f"final/{k}": v for k, v in final.items() if v is not None}, step=T - 1)
        store.end_run(parent, "FINISHED")
    except BaseException:
        store.end_run(parent, "FAILED")
        raise
    finally:
        model.activate(None)  # hooks of shared kinds stay quiet if anything else runs this encoder
    return SequenceResult(spec, matrix, final, history, parent, time.perf_counter() - started, train_seconds,
                          method.registration, model)


def run_sequence_file(registry: "AdapterRegistry", path: str | Path, show_progress: bool = False,
                      on_row: Callable[[int, str, AccuracyMatrix], None] | None = None) -> SequenceResult:
    """`continual run SEQUENCE.yaml`: load, validate, run."""
    return run_sequence(registry, SequenceSpec.load(path), show_progress=show_progress, on_row=on_row)


def _accuracy(model, tokenizer, examples, task: str, available: set[str], router: Router | None,
              eval_kwargs: dict) -> float:
    from continual.evaluate import accuracy, predict_ids

    if router is None:
        return accuracy(model, task, tokenizer, examples, **eval_kwargs)
    routed = router.route([e.text for e in examples])
    correct = 0
    for slot in sorted(set(routed) & available):
        chosen = [e for e, r in zip(examples, routed) if r == slot]
        labels = model.slots[slot].labels
        # The gold label may not exist in the routed task's label space: predict with a placeholder.
        inputs = [replace(e, label=labels[0]) for e in chosen]
        predicted = predict_ids(model, slot, tokenizer, inputs, **eval_kwargs)
        # Label spaces differ between tasks: judged by the label string of the routed task's head.
        correct += sum(labels[p] == e.label for p, e in zip(predicted, chosen))
    return correct / len(examples) if examples else math.nan


def _log_artifacts(store, run_id: str, matrix: AccuracyMatrix, title: str) -> None:
    from continual.plots import save_heatmap

    with tempfile.TemporaryDirectory(prefix="continual-seq-") as tmp:
        path = Path(tmp) / MATRIX_FILE
        path.write_text(json.dumps(matrix.to_json(), indent=2))
        store.log_artifact(run_id, path)
        save_heatmap(matrix.R, matrix.tasks, Path(tmp) / HEATMAP_FILE, title=title)
        store.log_artifact(run_id, Path(tmp) / HEATMAP_FILE)
