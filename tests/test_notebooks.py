"""The notebooks run top to bottom (nbclient), so they cannot rot."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_forgetting_notebook(tiny_base_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # The kernel inherits this environment: a tiny base model keeps the run to seconds (the committed
    # outputs come from the real MiniLM), one thread keeps tiny ops from stalling on a shared CPU.
    monkeypatch.setenv("FORGETTING_BASE_MODEL", str(tiny_base_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(ROOT / "notebooks" / "forgetting.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # one heatmap per method
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "seq-lora" in text and "forgetting" in text
