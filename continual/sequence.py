"""Task sequences with forgetting tracking: `continual run SEQUENCE.yaml`.

A sequence trains its tasks one after another in ONE `AdapterModel` (shared parts really shared) and,
after each task, re-evaluates every task seen so far, filling the accuracy matrix R (docs/design.md,
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
router is the store's FAISS task router (`router: index`, the default); `router: oracle` routes every text to
its true task (the upper bound), and any `Router` can plug in through `run_sequence(router=...)`.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

from continual.data import subsample
from registry import tags as T
from tasks.errors import ContinualError, ContinualWarning

if TYPE_CHECKING:
    from continual.config import TrainConfig
    from registry.registry import AdapterRegistry

EVAL_SEED = 0  # which test examples `eval_limit` keeps: fixed, so every row evaluates the same ones
MATRIX_FILE = "accuracy_matrix.json"
HEATMAP_FILE = "accuracy_matrix.png"
CURVES_FILE = "accuracy_curves.png"
# The parent run's description in the MLflow UI: how to read what the sequence logged.
READING_GUIDE = """Task sequence `{name}`, method `{method}`: {tasks}.

How to read it:
- **accuracy_curves.png** (Artifacts): every task's test accuracy after each training step, all on one 0-100% axis.
  A line that falls after its own task is forgetting; open markers are a task's fresh slot just before it trained.
- **accuracy_matrix.png / .json**: R[i][j] = accuracy on task j after training through task i (rows = time).
- Metrics `cl/acc`, `cl/bwt` (negative = forgetting), `cl/fwt`, `cl/forgetting` after each step, `final/*` at the end.
- Charts of `acc/<task>`: MLflow scales each chart to its own range, so small changes look large there; the
  curves figure is the faithful view.
"""


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
    # "related": each task after the first starts from the adapter of its nearest task (registry.related)
    # among those the sequence already trained; "none": every task starts fresh.  Adapter-kind methods only.
    init_from: str = "none"
    linear_probe: bool = False  # also measure linear-probe forward transfer (continual.probe, cl/probe_fwt)
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
        if self.init_from not in ("none", "related"):
            raise SequenceError(f"{where}: 'init_from' must be none or related, got {self.init_from!r}")
        if not isinstance(self.linear_probe, bool):
            raise SequenceError(f"{where}: 'linear_probe' must be true or false, got {self.linear_probe!r}")
        if self.base_model is not None and not isinstance(self.base_model, str):
            raise SequenceError(f"{where}: 'base_model' must be a model id or path, got {self.base_model!r}")
        from continual.methods import BASELINES, MethodError, make_method

        try:
            make_method(self.method, self.train_config().kind_options)  # checks the method and its settings
        except MethodError as err:
            raise SequenceError(f"{where}: {err}") from None
        if self.init_from != "none" and self.method in BASELINES:
            raise SequenceError(f"{where}: init_from: {self.init_from} needs an adapter-kind method (each task its own "
                                f"adapter), not the baseline '{self.method}'; use init_from: none")

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
    # linear-probe accuracy of task j's starting slot: on the untouched model / as tasks 0..j-1 left it
    probe_before: list[float | None] = field(default_factory=list)
    probe_after: list[float | None] = field(default_factory=list)
    init_from: list[str | None] = field(default_factory=list)  # adapter version task j was warm-started from

    def __post_init__(self) -> None:
        T = len(self.tasks)
        self.R = self.R or [[None] * T for _ in range(T)]
        self.b = self.b or [None] * T
        self.versions = self.versions or [[None] * T for _ in range(T)]
        self.shared = self.shared or [None] * T
        self.probe_before = self.probe_before or [None] * T
        self.probe_after = self.probe_after or [None] * T
        self.init_from = self.init_from or [None] * T

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
        result = {k: out[k] for k in ("acc", "bwt", "fwt", "forgetting")}
        if any(v is not None for v in self.probe_before):  # the sequence measured linear probes
            try:
                result["probe_fwt"] = m.probe_fwt(self.probe_after[: i + 1], self.probe_before[: i + 1])
            except ValueError:
                result["probe_fwt"] = None
        return result

    def to_json(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "R": self.R, "b": self.b, "versions": self.versions, "shared": self.shared,
                "probe_before": self.probe_before, "probe_after": self.probe_after, "init_from": self.init_from}


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
    return SequenceRunner(registry, spec, show_progress, router, on_row).run()


class SequenceRunner:
    """One sequence, in named steps: prepare the data and the model, measure b (fresh slots), train the
    tasks in order (or jointly) filling R row by row, log everything to the parent run."""

    def __init__(self, registry: "AdapterRegistry", spec: SequenceSpec, show_progress: bool = False,
                 router: Router | None = None, on_row: Callable[[int, str, AccuracyMatrix], None] | None = None):
        from continual.methods import make_method
        from continual.train import load_task_data

        self.started = time.perf_counter()
        self.registry, self.spec, self.show_progress, self.on_row = registry, spec, show_progress, on_row
        spec.check_tasks(t.name for t in registry.tasks())
        self.config = spec.train_config()
        self.method = make_method(spec.method, self.config.kind_options)
        self.data = {t: load_task_data(registry.task(t)) for t in spec.tasks}
        for t in spec.tasks:
            if not self.data[t].test:
                raise SequenceError(f"task '{t}' has no test split, which the accuracy matrix needs; register it "
                                    f"again with --test FILE")
        self.evals = {t: subsample(self.data[t].test, spec.eval_limit, EVAL_SEED) for t in spec.tasks}
        self.router = self._choose_router(router)
        self.matrix = AccuracyMatrix(list(spec.tasks))
        self.trained_versions: dict[str, str] = {}  # task -> the version this sequence registered for it
        self.history: list[dict[str, float | None]] = []
        self.train_seconds = 0.0
        self.eval_kwargs = dict(max_length=self.config.max_length, batch_size=self.config.eval_batch_size,
                                precision=self.config.resolved_precision)

    def _choose_router(self, router: Router | None) -> Router | None:
        if not self.spec.task_agnostic:
            return None  # task-aware: every example is predicted with its own task's slot
        if router is not None:
            return router
        if self.spec.router == "index":
            return IndexRouter(self.registry)
        truth: dict[str, str] = {}
        for t in self.spec.tasks:
            for e in self.evals[t]:
                truth.setdefault(e.text, t)
        return OracleRouter(truth)

    # -- the steps ----------------------------------------------------------------------------------------
    def run(self) -> SequenceResult:
        from continual.methods import SequenceContext
        from continual.train import build_model, check_base_for_task, run_params
        from modeling.base_model import load_base_model

        spec, T_ = self.spec, len(self.spec.tasks)
        self.base = load_base_model(spec.base_model)
        for t in spec.tasks:
            check_base_for_task(self.data[t].spec, self.base)
        if self.base.causal_lm and spec.method in ("replay", "mtl", "ewc"):
            raise SequenceError(f"{spec.source}: method {spec.method} trains encoder classifiers only; on a causal LM "
                                f"use an adapter kind, seq-lora or seq-ft")
        # A private copy of the base weights (train_task's build_model): adapters attach in place, and a
        # sequence's shared parts (or base layers it unfreezes) must not leak into anything else in the process.
        self.model = build_model(self.base)
        tags = {T.SEQUENCE: spec.name, T.METHOD: spec.method, T.REGISTERED: str(self.method.registers).lower(),
                T.REGISTRATION: self.method.registration, T.TASK_AGNOSTIC: str(spec.task_agnostic).lower()}
        try:
            with self.registry.run(f"sequence-{spec.name}", tags) as parent:
                self.parent = parent
                parent.set_tags({T.RUN_DESCRIPTION: READING_GUIDE.format(
                    name=spec.name, method=spec.method, tasks=" → ".join(spec.tasks))})
                parent.log_params({**run_params(self.config, self.base, self.data[spec.tasks[0]].spec),
                                   "tasks": ",".join(spec.tasks), "method": spec.method,
                                   "eval_limit": spec.eval_limit, "task_agnostic": spec.task_agnostic})
                self.ctx = SequenceContext(self.registry, self.base, self.model, self.config, self.data,
                                           list(spec.tasks), spec.name, spec.method, parent.run_id,
                                           spec.base_model, self.show_progress)
                self.measure_baselines()
                if self.method.joint:
                    self.train_jointly()
                else:
                    for i, task in enumerate(spec.tasks):
                        self.train_step(i, task)
                final = self.matrix.metrics_at(T_ - 1)
                parent.log_metrics({f"final/{k}": v for k, v in final.items() if v is not None}, step=T_ - 1)
        finally:
            self.model.activate(None)  # hooks of shared kinds stay quiet if anything else runs this encoder
        return SequenceResult(spec, self.matrix, final, self.history, parent.run_id,
                              time.perf_counter() - self.started, self.train_seconds, self.method.registration,
                              self.model)

    def measure_baselines(self) -> None:
        """b[j]: every task's fresh slot (seeded exactly as its training will start it) on the untouched model."""
        for j, t in enumerate(self.spec.tasks):
            self.matrix.b[j], self.matrix.probe_before[j] = self.probe(t, set())
        self.parent.log_metrics({f"b/{t}": self.matrix.b[j] for j, t in enumerate(self.spec.tasks)}, step=0)
        if self.spec.linear_probe:
            self.parent.log_metrics({f"probe_before/{t}": self.matrix.probe_before[j]
                                     for j, t in enumerate(self.spec.tasks)}, step=0)

    def train_jointly(self) -> None:
        """Joint training (mtl): only the last row of R exists."""
        T_ = len(self.spec.tasks)
        outcome = self.method.train_all(self.ctx)
        self.train_seconds += outcome.seconds
        self.history.extend({k: None for k in ("acc", "bwt", "fwt", "forgetting")} for _ in range(T_ - 1))
        for j, t in enumerate(self.spec.tasks):
            self.matrix.R[T_ - 1][j] = self.evaluate(t, set(self.spec.tasks))
        self.log_row(T_ - 1)

    def train_step(self, i: int, task: str) -> None:
        """R[i-1][i] (the fresh slot on the model tasks 0..i-1 left), train task i, then row i of R."""
        seen = self.spec.tasks[: i + 1]
        if i > 0:
            self.choose_warm_start(i, task)
            self.matrix.R[i - 1][i], self.matrix.probe_after[i] = self.probe(task, set(seen[:-1]))
            self.parent.log_metrics({f"before/{task}": self.matrix.R[i - 1][i]}, step=i - 1)
            if self.spec.linear_probe:
                self.parent.log_metrics({f"probe_after/{task}": self.matrix.probe_after[i]}, step=i - 1)
        outcome = self.method.train(self.ctx, i, task)
        if outcome.version is not None:
            self.trained_versions[task] = outcome.version.ref
        self.train_seconds += outcome.seconds
        if outcome.version is not None:
            self.matrix.versions[i][i] = outcome.version.ref
        self.matrix.shared[i] = outcome.shared_ref
        for j, t in enumerate(seen):
            self.matrix.R[i][j] = self.evaluate(t, set(seen))
            if j < i:
                self.matrix.versions[i][j] = self.matrix.versions[i - 1][j]
        self.log_row(i)

    # -- evaluation and logging ----------------------------------------------------------------------------
    def evaluate(self, task: str, available: set[str]) -> float:
        return _accuracy(self.model, self.base.tokenizer, self.evals[task], task, available, self.router,
                         self.eval_kwargs)

    def probe(self, task: str, available: set[str]) -> tuple[float, float | None]:
        """(accuracy, linear-probe accuracy or None) of `task`'s slot exactly as its training would start it
        (fresh, or warm-started); the model is left as it was."""
        from continual.probe import probe_accuracy

        self.method.add_slot(self.ctx, task)
        try:
            accuracy = self.evaluate(task, available | {task})
            probed = None
            if self.spec.linear_probe:
                probed = probe_accuracy(self.model, task, self.base.tokenizer, self.ctx.train_examples(task),
                                        self.evals[task], max_length=self.config.max_length,
                                        precision=self.config.resolved_precision)
            return accuracy, probed
        finally:
            self.model.remove_slot(task)

    def choose_warm_start(self, i: int, task: str) -> None:
        """With `init_from: related`, the nearest task (registry.related, beating the mean by related_margin) among
        those this sequence trained already gives task i its starting adapter: the version registered for it."""
        if self.spec.init_from != "related":
            return
        from continual.warm_start import related_sources

        close, why_none = related_sources(self.registry, task, self.config.related_margin)
        for name in close:
            if name in self.trained_versions:
                self.ctx.init_sources[task] = self.matrix.init_from[i] = self.trained_versions[name]
                return
        why = "no related task trained in this sequence yet" if close else why_none
        warnings.warn(f"init_from: related: {why}; '{task}' starts fresh", ContinualWarning, stacklevel=2)

    def log_row(self, i: int) -> None:
        row_metrics = self.matrix.metrics_at(i)
        self.history.append(row_metrics)
        R = self.matrix.R
        self.parent.log_metrics({f"acc/{t}": R[i][j] for j, t in enumerate(self.spec.tasks) if R[i][j] is not None},
                                step=i)
        self.parent.log_metrics({f"cl/{k}": v for k, v in row_metrics.items() if v is not None}, step=i)
        _log_artifacts(self.parent, self.matrix, f"{self.spec.name} ({self.spec.method})")
        if self.on_row is not None:
            self.on_row(i, self.spec.tasks[i], self.matrix)


def _accuracy(model, tokenizer, examples, task: str, available: set[str], router: Router | None,
              eval_kwargs: dict) -> float:
    from continual.evaluate import accuracy, predict_ids

    if router is None:
        return accuracy(model, task, tokenizer, examples, **eval_kwargs)
    routed = router.route([e.text for e in examples])
    if getattr(model, "is_causal_lm", False):  # the router read the prompts; the routed slot answers as text
        from continual.lm_training import routed_lm_accuracy

        return routed_lm_accuracy(model, examples, routed, available, **eval_kwargs)
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


def _log_artifacts(run, matrix: AccuracyMatrix, title: str) -> None:
    from continual.plots import save_curves, save_heatmap

    with tempfile.TemporaryDirectory(prefix="continual-seq-") as tmp:
        path = Path(tmp) / MATRIX_FILE
        path.write_text(json.dumps(matrix.to_json(), indent=2))
        run.log_artifact(path)
        save_heatmap(matrix.R, matrix.tasks, Path(tmp) / HEATMAP_FILE, title=title)
        run.log_artifact(Path(tmp) / HEATMAP_FILE)
        before = [None] + [matrix.R[j - 1][j] for j in range(1, len(matrix.tasks))]
        save_curves(matrix.R, matrix.tasks, Path(tmp) / CURVES_FILE, before=before, title=title)
        run.log_artifact(Path(tmp) / CURVES_FILE)
