"""The `continual` command line: thin typer commands over library functions, no logic of its own."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tasks.errors import ContinualError, Interrupted

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Continual and multi-task fine-tuning with a versioned adapter registry.")
tasks_app = typer.Typer(no_args_is_help=True, help="Register and inspect tasks.")
adapters_app = typer.Typer(no_args_is_help=True, help="Adapter versions and aliases.")
app.add_typer(tasks_app, name="tasks")
app.add_typer(adapters_app, name="adapters")

console = Console()
err_console = Console(stderr=True)

Store = Annotated[Optional[str], typer.Option(
    "--store", envvar="CONTINUAL_STORE", show_envvar=True,
    help="Store folder, sqlite:///file.db or http(s):// MLflow server (default ./continual-store).")]


INTERRUPTED = ("the job was stopped before it finished: its run is marked KILLED and it registered nothing "
               "(versions registered before the signal are complete and stay)")


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def user_errors(fn):
    """Print a user's mistake as one red line and exit 1, never a traceback.

    SIGTERM (schedulers, CI, `kill`) raises `Interrupted` wherever the job is, so its run ends KILLED and
    nothing half-done is registered; the command then exits 143 (128 + SIGTERM) with one line.  Lightning
    would otherwise turn SIGTERM into a SystemExit(0), and a script would take the job for a success;
    its signal connector calls this handler too (it chains the handler it finds installed).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            return fn(*args, **kwargs)
        except ContinualError as err:
            err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Interrupted as err:
            err_console.print(f"[red]error:[/red] {err}: {INTERRUPTED}", highlight=False, soft_wrap=True)
            raise typer.Exit(128 + err.signum) from None
        except KeyboardInterrupt:
            err_console.print(f"[red]error:[/red] interrupted (Ctrl-C): {INTERRUPTED}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except SystemExit as err:
            # Lightning's SIGTERMException is a SystemExit(0); Lightning exits 1 after a Ctrl-C in fit.
            # Neither is a success: never let an interrupted job exit 0 silently.
            if type(err).__name__ == "SIGTERMException" or err.code not in (None, 0):
                err_console.print(f"[red]error:[/red] interrupted: {INTERRUPTED}", highlight=False, soft_wrap=True)
                raise typer.Exit(143 if type(err).__name__ == "SIGTERMException" else int(err.code or 1)) from None
            raise

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning that gets through the filters is ONE yellow line on stderr."""
    from tasks.errors import ContinualWarning

    text = " ".join(str(message).split())
    prefix = "" if issubclass(category, ContinualWarning) else f"{category.__name__}: "
    err_console.print(f"[yellow]warning:[/yellow] {prefix}{text}", highlight=False, soft_wrap=True)


def _quiet(training: bool = False) -> None:
    """Keep library chatter out of the user's terminal; the project's own warnings are one yellow line each."""
    from continual.noise import quiet_libraries

    quiet_libraries(training, show=_show_warning)


def _registry(store: str | None, create: bool = False):
    """The registry on `store`; only commands that register tasks (`create`) may start a new store."""
    from registry import AdapterRegistry

    return AdapterRegistry(store, create=create)


# -- tasks --------------------------------------------------------------------------------------------
@tasks_app.command("register")
@user_errors
def tasks_register(
    name: Annotated[str, typer.Argument(help="Task name (letters, digits, '-', '_').")],
    train: Annotated[Path, typer.Option("--train", help="Training split (JSONL, CSV, Parquet or datasets folder).")],
    dev: Annotated[Optional[Path], typer.Option("--dev", help="Dev split (early stopping).")] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="Test split (final accuracy).")] = None,
    text_field: Annotated[Optional[list[str]], typer.Option("--text-field", help="Text field; repeat for pairs (default: text; prompt for generation, or messages for chat turns).")] = None,
    label_field: Annotated[Optional[str], typer.Option("--label-field", help="Label field (default: label; completion for generation).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="classification or generation.")] = "classification",
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated label set (default: from train).")] = None,
    description: Annotated[str, typer.Option("--description", help="What the task is.")] = "",
    store: Store = None,
):
    """Check a task's data and register it."""
    from tasks.loaders import build_spec

    spec = build_spec(name, str(train), str(dev) if dev else None, str(test) if test else None, kind=kind,
                      text_fields=tuple(text_field) if text_field else None, label_field=label_field,
                      labels=[l.strip() for l in labels.split(",")] if labels else None, description=description)
    _quiet()
    reg = _registry(store, create=True)
    reg.register_task(spec)
    what = (f"{len(spec.labels)} labels ({', '.join(spec.labels[:8])}{', …' if len(spec.labels) > 8 else ''})"
            if spec.kind == "classification" else f"generation ({', '.join(spec.text_fields)} -> {spec.label_field})")
    console.print(f"registered task [bold]{spec.name}[/bold]: {what}, data fingerprint {spec.fingerprint[:12]}")
    _print_related(reg, spec.name, 3, "related registered tasks")


def _print_related(reg, name: str, k: int, title: str) -> None:
    related = reg.related(name, k=max(k, 2))  # two asked for: tells "one other task" from "k=1"
    if not related:
        console.print("no other registered task to compare with yet")
        return
    if len(related) == 1:  # profiles are centred on the tasks' mean: with two tasks they always score -1
        console.print(f"one other registered task ({related[0].task}); similarities mean something once a "
                      f"third task is registered")
        return
    table = Table("task", "similarity", title=title)
    for r in related[:k]:
        table.add_row(r.task, f"{r.score:.3f}")
    console.print(table)


@tasks_app.command("related")
@user_errors
def tasks_related(
    name: str,
    k: Annotated[int, typer.Option("-k", "--k", help="How many related tasks to list.", min=1)] = 3,
    store: Store = None,
):
    """The registered tasks most similar to NAME (task profiles in a FAISS index)."""
    _quiet()
    _print_related(_registry(store), name, k, f"tasks related to {name}")


@tasks_app.command("list")
@user_errors
def tasks_list(store: Store = None):
    """List registered tasks."""
    reg = _registry(store)
    table = Table("task", "kind", "labels", "versions", "train file")
    for spec in reg.tasks():
        table.add_row(spec.name, spec.kind, str(len(spec.labels)), str(len(reg.versions(spec.name))), spec.train)
    console.print(table)


@tasks_app.command("show")
@user_errors
def tasks_show(name: str, store: Store = None):
    """Show a task's spec and its adapter versions."""
    reg = _registry(store)
    spec = reg.task(name)
    console.print_json(json.dumps(spec.to_dict()))
    _print_versions(reg, name)


# -- training -----------------------------------------------------------------------------------------
@app.command("train")
@user_errors
def train(
    name: Annotated[str, typer.Argument(help="Registered task to train.")],
    method: Annotated[str, typer.Option("--method", help="Adapter kind, e.g. lora.")] = "lora",
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of TrainConfig settings.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a setting: key=value (repeatable).")] = [],
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="ID_OR_PATH_OR_NAME: a Hugging Face id, a local folder, or smollm2-135m (a causal LM; generation tasks need one). Default: all-MiniLM-L6-v2.")] = None,
    init_from: Annotated[str, typer.Option("--init-from", help="Warm start: auto (nearest related task), TASK[:N|@ALIAS], or none.")] = "none",
    store: Store = None,
):
    """Train the task's adapter and register it as a new version."""
    _quiet(training=True)
    from continual.config import TrainConfig
    from continual.train import train_task
    from modeling.kinds import get_kind

    kind = get_kind(method)
    cfg = TrainConfig.load(config, set_, kind_fields=_kind_fields(kind))
    reg = _registry(store)
    result = train_task(reg, name, cfg, method=method, base_model=base_model, show_progress=sys.stdout.isatty(),
                        init_from=init_from, announce=lambda line: console.print(line, highlight=False))
    from registry import tags as T

    if T.PARENT_ADAPTER in result.version.tags:
        console.print(f"warm-started from {result.version.tags[T.PARENT_ADAPTER]} "
                      f"(head {result.version.tags[T.WARM_START_HEAD]})")
    _print_result(result)


def _kind_fields(kind) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(kind.config_cls)}


def _print_result(result) -> None:
    def pct(x):
        return "—" if x is None else f"{100 * x:.1f}%"

    m = result.version.metrics  # causal LMs add token accuracy and perplexity
    lm = (f", token accuracy {pct(m['test_token_accuracy'])}, perplexity {m['test_perplexity']:.2f}"
          if "test_perplexity" in m else "")
    console.print(f"[green]{result.version.ref}[/green] registered: test accuracy {pct(result.test_accuracy)}{lm}, "
                  f"dev {pct(result.dev_accuracy)}, {result.steps} steps in {result.seconds:.1f}s "
                  f"(run {result.run_id[:8]})")


# -- adapters -------------------------------------------------------------------------------------------
@adapters_app.command("list")
@user_errors
def adapters_list(store: Store = None):
    """Newest adapter version of every task."""
    reg = _registry(store)
    table = Table("task", "newest", "kind", "aliases", "test acc")
    for spec in reg.tasks():
        versions = reg.versions(spec.name)
        if versions:
            v = versions[-1]
            aliases = ", ".join(f"{a}→{x.version}" for x in versions for a in x.aliases)
            acc = v.metrics.get("test_accuracy")
            table.add_row(spec.name, str(v.version), v.kind, aliases, "—" if acc is None else f"{100 * acc:.1f}%")
    console.print(table)


def _print_versions(reg, name: str) -> None:
    from registry import tags as T

    table = Table("version", "kind", "aliases", "test acc", "dev acc", "shared part", "run")
    for v in reg.versions(name):
        m = v.metrics
        table.add_row(str(v.version), v.kind, ", ".join(v.aliases),
                      *(f"{100 * m[k]:.1f}%" if k in m else "—" for k in ("test_accuracy", "dev_accuracy")),
                      v.tags.get(T.SHARED_PART, "—"), v.run_id[:8])
    console.print(table)


@adapters_app.command("versions")
@user_errors
def adapters_versions(name: str, store: Store = None):
    """Every adapter version of a task."""
    _print_versions(_registry(store), name)


@adapters_app.command("alias")
@user_errors
def adapters_alias(
    name: str,
    alias: str,
    version: Annotated[Optional[int], typer.Argument(help="Version to point the alias at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the alias instead.")] = False,
    store: Store = None,
):
    """Set or move an alias (NAME ALIAS VERSION), or delete it (--delete)."""
    reg = _registry(store)
    if delete:
        reg.delete_alias(name, alias)
        console.print(f"deleted alias {name}@{alias}")
        return
    if version is None:
        raise ContinualError(f"give the version for {name}@{alias}: `continual adapters alias {name} {alias} N`")
    v = reg.set_alias(name, alias, version)
    console.print(f"{name}@{alias} → version {v.version}")


@adapters_app.command("verify")
@user_errors
def adapters_verify(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is safe: quarantine broken versions, drop "
                                         "unreferenced shared versions, rebuild the task index.")] = False,
    store: Store = None,
):
    """Check every version's files and checksums, shared parts and the task index; exit 1 naming each problem."""
    _quiet()
    report = _registry(store).verify(repair=repair)
    for p in report.problems:
        if p.repaired:
            console.print(f"[green]repaired[/green] {p} → {p.repair}", highlight=False, soft_wrap=True)
        else:
            hint = f" (--repair: {p.repair})" if p.repair else ""
            err_console.print(f"[red]problem:[/red] {p}{hint}", highlight=False, soft_wrap=True)
    counts = ", ".join(f"{n} {what}" for what, n in report.checked.items())
    left = sum(not p.repaired for p in report.problems)
    console.print(f"checked {counts}: {len(report.problems)} problem(s), {left} left")
    if left:
        raise typer.Exit(1)


@adapters_app.command("export")
@user_errors
def adapters_export(
    ref: Annotated[str, typer.Argument(help="TASK, TASK@ALIAS or TASK:VERSION.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (must not exist, or be empty).")],
    format: Annotated[str, typer.Option("--format", help="Format to write: peft (LoRA versions).")] = "peft",
    store: Store = None,
):
    """Write an adapter version in a format other tools read (peft: PeftModel.from_pretrained, vLLM, LoRAX)."""
    _quiet()
    out = _registry(store).export(ref, out_dir, format)
    console.print(f"wrote {ref} as a {format} adapter to {out}")


# -- inference -----------------------------------------------------------------------------------------
@app.command("predict")
@user_errors
def predict(
    task: Annotated[str, typer.Argument(help="TASK, TASK@ALIAS or TASK:VERSION.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify.")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", help="File with one text per line.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Generation tasks: most tokens to generate.", min=1)] = 64,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Generation tasks: stop at this string (repeatable).")] = None,
    store: Store = None,
):
    """Predict labels with a task's adapter (generation tasks: print the generated text)."""
    _quiet()
    items = list(texts or [])
    if input is not None:
        if not input.exists():
            raise ContinualError(f"input file '{input}' does not exist; check the --input path")
        items += [line for line in input.read_text().splitlines() if line.strip()]
    if not items:
        raise ContinualError("no text to predict; give TEXT arguments or --input FILE")
    reg = _registry(store)
    if task == "auto":  # no task name: the router picks each text's task
        routes = [r[0] for r in reg.route(items)]
        generative = {task for task in {r.task for r in routes} if reg.task(task).kind == "generation"}
        # One mixed-task batch for every routed text of a classification task, not one load and forward per text.
        labelled = iter(reg.predict_many([(route.task, text) for text, route in zip(items, routes)
                                          if route.task not in generative]))
        table = Table("text", "routed task", "route score", "label", "score", title="predict auto")
        for text, route in zip(items, routes):
            if route.task in generative:
                answer = _answer(reg.load(route.task), [text], max_new_tokens, stop)[0]
            else:
                p = next(labelled)
                answer = (p.label, f"{p.score:.3f}")
            table.add_row(_short(text), route.task, f"{route.score:.3f}", *answer)
        console.print(table)
        return
    predictor = reg.load(task)
    answers = _answer(predictor, items, max_new_tokens, stop)
    if getattr(predictor, "objective", "classification") == "generation":
        for text, (generated, score) in zip(items, answers):  # whole text: a generation is the answer itself
            console.print(f"[bold]{predictor.task}:{predictor.version}[/bold] (mean log-prob {score})")
            console.print(generated, markup=False, highlight=False)
        return
    table = Table("text", "label", "score", title=f"{predictor.task}:{predictor.version}")
    for text, p in zip(items, answers):
        table.add_row(_short(text), *p)
    console.print(table)


def _answer(predictor, items: list[str], max_new_tokens: int, stop: list[str] | None) -> list[tuple[str, str]]:
    """(answer, score) per text: the label of a classifier, the generated text of a generation task."""
    if getattr(predictor, "objective", "classification") == "generation":
        return [(g.text, f"{g.score:.3f}") for g in predictor.generate(items, max_new_tokens=max_new_tokens, stop=stop or ())]
    return [(p.label, f"{p.score:.3f}") for p in predictor.predict(items)]


def _short(text: str) -> str:
    return text if len(text) < 80 else text[:77] + "…"


@app.command("route")
@user_errors
def route(
    texts: Annotated[list[str], typer.Argument(help="Texts to route to a registered task.")],
    store: Store = None,
):
    """Which registered task each text belongs to, with the runner-up and the margin."""
    _quiet()
    table = Table("text", "task", "score", "runner-up", "margin")
    for text, d in zip(texts, _registry(store).diagnose_routes(texts)):
        table.add_row(_short(text), d.task, f"{d.score:.3f}", d.runner_up or "—",
                      "—" if d.runner_up is None else f"{d.margin:.3f}")
    console.print(table)


# -- the main job and the UI --------------------------------------------------------------------------------
@app.command("demo")
@user_errors
def demo(store: Store = None):
    """Register three built-in tasks, train an adapter for each, load them by name and predict."""
    _quiet(training=True)
    from continual.demo import DEMO_CONFIG, run_demo
    from continual.trainer import precision_note

    reg = _registry(store, create=True)
    console.print(f"[bold]continual demo[/bold] — store: {reg.tracking_uri}")
    console.print(precision_note(DEMO_CONFIG), highlight=False)
    result = run_demo(reg, show_progress=sys.stdout.isatty(),
                      on_task=lambda spec: console.print(f"\ntraining [bold]{spec.name}[/bold] "
                                                         f"({len(spec.labels)} labels: {', '.join(spec.labels)})"))
    table = Table("task", "version", "test accuracy", "train seconds", title="demo results")
    for r in result.results:
        table.add_row(r.task, str(r.version.version), f"{100 * r.test_accuracy:.1f}%", f"{r.seconds:.1f}")
    console.print(table)
    first = result.results[0]
    predictor = reg.load(first.task)
    sample = "The striker scored twice as the home team won the cup final"
    console.print(f'AdapterRegistry().load("{first.task}").predict(["{sample}"]) → {predictor.predict([sample])[0]}')
    store_arg = f" --store {store}" if store else ""
    console.print(f"\nLook at the runs and registered adapters in MLflow: [bold]continual ui{store_arg}[/bold] "
                  f"then open http://127.0.0.1:5000 (Experiments → continual; Models → one model per task).")


@app.command("ui")
@user_errors
def ui(
    port: Annotated[int, typer.Option("--port", help="Port for the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    store: Store = None,
):
    """Start the MLflow UI on the store."""
    import subprocess

    reg = _registry(store)
    if reg.tracking_uri.startswith("http"):
        raise ContinualError(f"the store is the MLflow server {reg.tracking_uri}; open it in a browser instead")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", reg.tracking_uri,
           "--default-artifact-root", (reg.local_root / "artifacts").as_uri(), "--host", host, "--port", str(port)]
    console.print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd))


@app.command("run")
@user_errors
def run(
    sequence: Annotated[Path, typer.Argument(help="Sequence file (YAML); see notebooks/sequence.example.yaml.")],
    store: Store = None,
):
    """Train a task sequence, re-evaluating every earlier task after each one (forgetting, in MLflow)."""
    _quiet(training=True)
    from continual.sequence import SequenceSpec, run_sequence

    def pct(x):
        return "—" if x is None else f"{100 * x:.1f}"

    def on_row(i, task, matrix):
        console.print(f"[bold]{i + 1}/{len(matrix.tasks)} {task}[/bold]: "
                      + "  ".join(f"{t} {pct(v)}" for t, v in zip(matrix.tasks, matrix.R[i]) if v is not None))

    spec = SequenceSpec.load(sequence)  # a bad file is named before the store is looked at
    result = run_sequence(_registry(store), spec, show_progress=sys.stdout.isatty(), on_row=on_row)
    table = Table("after \\ on", *result.matrix.tasks, title=f"accuracy matrix R (%): {result.spec.name}, "
                                                             f"{result.spec.method}")
    for task, row in zip(result.matrix.tasks, result.R):
        table.add_row(task, *(pct(v) for v in row))
    console.print(table)
    console.print("  ".join(f"{k.upper()} {pct(v)}" for k, v in result.metrics.items())
                  + f"  ({result.seconds:.0f}s, parent run {result.parent_run_id[:8]})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
