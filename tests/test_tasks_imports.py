"""`tasks` is the bottom layer: it must not import the layers above it or heavy frameworks."""

import ast
from pathlib import Path

import tasks

FORBIDDEN = {"registry", "continual", "torch", "mlflow", "lightning", "transformers", "peft", "faiss"}
LAZY = {"datasets", "pandas", "pyarrow"}  # allowed, but only inside the functions that need them


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node, [node.module]


def test_tasks_imports_only_downwards_and_heavy_libraries_lazily():
    package = Path(tasks.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = set(map(id, tree.body))
        for node, modules in _imports(tree):
            for module in modules:
                root = module.split(".")[0]
                assert root not in FORBIDDEN, f"{path.name} imports {module}"
                if root in LAZY:
                    assert id(node) not in top_level, f"{path.name} imports {module} at module level"
