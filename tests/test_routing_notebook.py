"""notebooks/routing.ipynb runs top to bottom (nbclient) on the packaged MiniLM, so it cannot rot."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "routing.ipynb"


def python3_kernel_for_this_interpreter(folder: Path, monkeypatch) -> str:
    """Make the kernel name 'python3' start this interpreter, and return that name.

    A 'python3' kernelspec found first on the Jupyter path (a user-level one, say) may point at another
    Python that lacks this project; JUPYTER_PATH is searched before every other folder, so a spec written
    there for sys.executable wins on any machine.
    """
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(folder / "kernels" / "python3")  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    return "python3"


def test_routing_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    kernel = python3_kernel_for_this_interpreter(tmp_path / "jupyter", monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(run_dir)}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "Related(task='demo-sentiment'" in text  # shop-reviews' nearest task, printed as Related
    assert "Route(task='demo-topic'" in text  # the first text routed without a task name
    for task in ("demo-topic", "demo-intent"):  # the diagnosis table names the routed tasks
        assert task in text
    assert "warm start picked: demo-sentiment:1" in text  # init_from="auto" found the related task's adapter
    assert "('shop-reviews:2', 'demo-sentiment:1')" in text  # and the lineage tag is in the registry
