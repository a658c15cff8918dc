"""The slow tier runs the continual-learning bench end to end (`bench/cl_benchmark.py --quick`) on the real
benchmark data and checks what must hold whatever the seed: isolated per-task LoRA never forgets (BWT
exactly 0, every seed) and one LoRA trained through every task does (seq-LoRA BWT < 0 on average), and the
report carries a mean and a standard error per metric and per cell of R.  (--quick trains 2 steps a task:
enough to move a shared LoRA, not to learn a task well, so no accuracy bound is asserted here.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data/cl_benchmark beside the repository (or $CL_BENCHMARK_DIR, e.g. from a git worktree).
DATA = Path(os.environ.get("CL_BENCHMARK_DIR") or ROOT.parent / "shared" / "data" / "cl_benchmark")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/cl_benchmark")]


def test_quick_bench_lora_never_forgets_and_seq_lora_does(tmp_path):
    out = tmp_path / "quick.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "cl_benchmark.py"), "--data-dir", str(DATA), "--out",
                    str(out), "--quick", "--methods", "lora,seq-lora", "--seeds", "2"], check=True, timeout=1800)
    report = json.loads(out.read_text())
    lora, seq = report["methods"]["lora"], report["methods"]["seq-lora"]
    assert lora["n_seeds"] == seq["n_seeds"] == 2
    assert all(run["bwt"] == 0.0 for run in lora["seeds"].values())  # isolated slots: bit-identical answers
    assert seq["mean"]["bwt"] < 0
    for entry in (lora, seq):
        assert entry["se"]["acc"] is not None and len(entry["R_mean"]) == len(report["settings"]["tasks"])
        assert 0.0 <= entry["mean"]["acc"] <= 1.0
    # R is lower-triangular plus the cells just above the diagonal (a task's fresh slot before it trains)
    T = len(report["settings"]["tasks"])
    for entry in (lora, seq):
        R = entry["R_mean"]
        assert all(R[i][j] is None for i in range(T) for j in range(i + 2, T))
        assert all(0.0 <= R[i][j] <= 1.0 for i in range(T) for j in range(min(i + 2, T)))
    assert out.with_suffix(".md").read_text().count("±") >= 4
