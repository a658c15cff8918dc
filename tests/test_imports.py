"""Import direction is one-way: tasks <- registry <- training (continual) <- CLI.

Parsed with `ast`, so a violation fails here even when it sits in a branch no test executes.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("path", modules("tasks"), ids=str)
def test_tasks_import_nothing_above_them(path):
    assert not {top(n) for n in imports_of(path)} & {"registry", "continual", "lightning", "mlflow", "torch"}


@pytest.mark.parametrize("path", modules("registry"), ids=str)
def test_registry_never_imports_training_or_lightning(path):
    # The inference path (registry) must not pull in Lightning or training code.
    assert not {top(n) for n in imports_of(path)} & {"continual", "lightning", "pytorch_lightning"}


@pytest.mark.parametrize("path", [p for p in modules("continual") if p.name != "cli.py"], ids=str)
def test_training_does_not_import_the_cli(path):
    assert "continual.cli" not in imports_of(path)


def test_mlflow_and_faiss_each_imported_in_one_module():
    owners = {"mlflow": set(), "faiss": set()}
    for package in ("tasks", "registry", "continual"):
        for path in modules(package):
            for name in imports_of(path):
                if top(name) in owners:
                    owners[top(name)].add(path.relative_to(ROOT).as_posix())
    assert owners["mlflow"] <= {"registry/store.py"}, owners["mlflow"]
    assert owners["faiss"] <= {"registry/index.py"}, owners["faiss"]


def test_loading_an_adapter_does_not_import_lightning():
    import subprocess
    import sys

    code = "import sys, registry; registry.AdapterRegistry; assert 'lightning' not in sys.modules, 'lightning'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
