"""Import direction is one-way: tasks <- modeling <- retrieval <- registry <- training (continual) <- CLI.

- `tasks`: data only (no torch, no frameworks);
- `modeling`: the adapter kinds, the host model, base models, the artifact format (torch, peft,
  transformers; never mlflow, faiss or Lightning);
- `retrieval`: task profiles, the FAISS index, routing (no mlflow, no Lightning);
- `registry`: the MLflow store, versions, aliases, loading by name (no Lightning, no training code);
- `continual`: training, sequences, the CLI (which nothing else imports).

Parsed with `ast`, so a violation fails here even when it sits in a branch no test executes.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["tasks", "modeling", "retrieval", "registry", "continual"]
TRAINING_ONLY = {"lightning", "pytorch_lightning"}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", [p for layer in LAYERS for p in modules(layer)], ids=str)
def test_imports_only_point_down(path):
    layer = path.relative_to(ROOT).parts[0]
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    assert not {top(n) for n in imports_of(path)} & above, f"{path.name} imports a layer above {layer}"


@pytest.mark.parametrize("path", modules("tasks"), ids=str)
def test_tasks_import_no_framework(path):
    assert not {top(n) for n in imports_of(path)} & {"lightning", "mlflow", "torch", "faiss"}


@pytest.mark.parametrize("path", modules("modeling") + modules("retrieval") + modules("registry"), ids=str)
def test_inference_layers_never_import_lightning(path):
    # The inference path (modeling, retrieval, registry) must not pull in Lightning or training code.
    assert not {top(n) for n in imports_of(path)} & TRAINING_ONLY


@pytest.mark.parametrize("path", modules("modeling") + modules("retrieval"), ids=str)
def test_adapter_code_and_retrieval_never_import_mlflow(path):
    assert "mlflow" not in {top(n) for n in imports_of(path)}


@pytest.mark.parametrize("path", [p for p in modules("continual") if p.name != "cli.py"], ids=str)
def test_training_does_not_import_the_cli(path):
    assert "continual.cli" not in imports_of(path)


def test_mlflow_and_faiss_each_imported_in_one_module():
    owners = {"mlflow": set(), "faiss": set()}
    for package in LAYERS:
        for path in modules(package):
            for name in imports_of(path):
                if top(name) in owners:
                    owners[top(name)].add(path.relative_to(ROOT).as_posix())
    # The store's verbs live in store.py; the pyfunc flavour that makes versions servable by
    # `mlflow models serve` is mlflow's own file format, written and loaded in serving.py.
    assert owners["mlflow"] <= {"registry/store.py", "registry/serving.py"}, owners["mlflow"]
    assert owners["faiss"] <= {"retrieval/index.py"}, owners["faiss"]


def test_continual_reaches_the_store_only_through_the_registry():
    # Training code and benchmarks go through `AdapterRegistry`; only the registry package talks to the store.
    offenders = []
    for path in modules("continual") + modules("bench"):
        tree = ast.parse(path.read_text())
        uses = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "store"
                and not (isinstance(n.value, ast.Name) and n.value.id == "args")]  # argparse's --store
        if uses or "registry.store" in imports_of(path):
            offenders.append((path.relative_to(ROOT).as_posix(), uses))
    assert not offenders, offenders


def test_loading_an_adapter_does_not_import_lightning():
    import subprocess
    import sys

    code = "import sys, registry; registry.AdapterRegistry; assert 'lightning' not in sys.modules, 'lightning'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
