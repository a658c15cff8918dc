"""Training throughput: the platform's LoRA training path against Hugging Face `Trainer` + peft.

    python bench/train_throughput.py --data-dir ../shared/data/cl_benchmark --out throughput.json [--quick]

Both arms train LoRA (r=8, alpha 16, dropout 0.1, query/value) on the default base model
(all-MiniLM-L6-v2) over the same agnews training examples for one epoch, batch 16, AdamW at lr 1e-3
with 6% linear warm-up then linear decay, weight decay 0.01, grad-norm clip 1.0, max length 128 and
the same precision (`auto`: bf16 autocast where the CPU does bf16 natively) and thread count:

- `ours`: `continual.train.fit_slot` (Lightning, an MLflow run logging the loss every step, as
  `continual train` does) on a model built by `continual.train.build_model`;
- `hf`:   `AutoModelForSequenceClassification` + `peft.get_peft_model` + `Trainer` with
  `DataCollatorWithPadding` (dynamic padding), what a user would write instead.

Each arm runs in its own process (its own peak RSS, no state shared), arms alternate when
`--repeats` > 1, and the machine's practical peak (a large matmul in fp32 and in the training
precision) is measured in the same run.  Timed: tokenising plus training (not model loading, not
the test evaluation).  MFU = model FLOPs on real (non-pad) tokens / time / peak; the FLOPs
arithmetic (forward, and backward through a frozen base: activation gradients only, no weight
gradients except LoRA's) is `flops_per_example` below and is written to the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH_SIZE = 16
LEARNING_RATE = 1e-3
MAX_LENGTH = 128
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"])
SEED = 0


# -- FLOPs arithmetic -------------------------------------------------------------------------------
def flops_per_example(length: int, hidden: int, ffn: int, layers: int, r: int, lora_modules: int,
                      num_labels: int) -> dict[str, float]:
    """Model FLOPs of one example of `length` real tokens, forward and backward, frozen base + LoRA.

    A matmul (m x k) @ (k x n) is 2mkn FLOPs.  Per layer the frozen linears hold P = 4H² + 2HF
    weights (Q, K, V, O and the FFN).  Forward: 2P per token, attention scores and mixing
    2·L²·H each, LoRA 2·(rH + rH) per adapted module per token.  Backward with frozen weights
    computes activation gradients only (2P per token) and no weight gradients, except in layer 0,
    whose Q, K, V inputs (the frozen embeddings) need no gradient: minus 3·2H² per token there.
    Attention backward: dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q (4 × 2L²H), without dK in
    layer 0 (K there has no trainable input).  LoRA backward per module per token: dB, dA, the
    gradient into A's output (2rH each) and, above layer 0, into its input (2rH).  The head
    (H x num_labels) is counted too; biases, norms and softmax are left out (< 1%).
    """
    L, H, F = length, hidden, ffn
    p_layer = 4 * H * H + 2 * H * F
    per_module = lora_modules // layers  # adapted modules per layer
    fwd = L * layers * 2 * p_layer + layers * 2 * (2 * L * L * H) + L * lora_modules * 2 * (2 * r * H)
    fwd += 2 * H * num_labels
    bwd_linear = L * (layers * 2 * p_layer - 3 * 2 * H * H)
    bwd_attention = (layers - 1) * 4 * (2 * L * L * H) + 3 * (2 * L * L * H)
    bwd_lora = L * (lora_modules * 3 * (2 * r * H) + (lora_modules - per_module) * (2 * r * H))
    bwd = bwd_linear + bwd_attention + bwd_lora + 2 * 2 * H * num_labels
    return {"forward": float(fwd), "backward": float(bwd), "total": float(fwd + bwd)}


def model_flops(lengths: list[int], encoder_config, num_labels: int) -> dict[str, float]:
    layers = encoder_config.num_hidden_layers
    totals = {"forward": 0.0, "backward": 0.0, "total": 0.0}
    for n in lengths:
        f = flops_per_example(n, encoder_config.hidden_size, encoder_config.intermediate_size, layers,
                              LORA["r"], len(LORA["target_modules"]) * layers, num_labels)
        for k in totals:
            totals[k] += f[k]
    return totals


# -- data ------------------------------------------------------------------------------------------------
def load_agnews(data_dir: Path, split: str, limit: int) -> list[dict]:
    path = data_dir / "agnews" / f"{split}.jsonl"
    if not path.exists():
        sys.exit(f"error: '{path}' is missing; give --data-dir the cl_benchmark folder (it holds agnews/)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def labels_of(data_dir: Path) -> list[str]:
    return json.loads((data_dir / "agnews" / "labels.json").read_text())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- arms (each runs in its own process) -------------------------------------------------------------------
def arm_ours(args) -> dict:
    from continual.config import TrainConfig
    from continual.data import EncodedDataset, LengthBucketSampler
    from continual.evaluate import accuracy
    from continual.train import build_model, fit_slot
    from continual.trainer import mlflow_logger
    from modeling.base_model import load_base_model
    from modeling.kinds import get_kind
    from registry import AdapterRegistry
    from tasks.loaders import Example

    labels = labels_of(args.data_dir)
    train = [Example(r["text"], r["label"]) for r in load_agnews(args.data_dir, "train", args.train_examples)]
    test = [Example(r["text"], r["label"]) for r in load_agnews(args.data_dir, "test", args.test_examples)]
    config = TrainConfig(learning_rate=LEARNING_RATE, batch_size=BATCH_SIZE, max_epochs=1, max_length=MAX_LENGTH,
                         seed=SEED, num_threads=args.threads, **LORA)
    import lightning as L

    L.seed_everything(SEED, verbose=False)
    base = load_base_model()
    model = build_model(base)
    model.add_slot("agnews", "lora", get_kind("lora").make_config(config.flat()), tuple(labels))
    registry = AdapterRegistry(Path(args.work) / "store")
    with registry.run("throughput-bench") as run:
        logger = mlflow_logger(run)
        start, cpu_start = time.perf_counter(), time.process_time()
        steps, _ = fit_slot(model, "agnews", base, config, train, [], logger=logger)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    dataset = EncodedDataset(train, base.tokenizer, labels, MAX_LENGTH)
    lengths = dataset.lengths()
    batches = list(LengthBucketSampler(lengths, BATCH_SIZE, SEED))  # the same batches fit_slot drew (epoch 0)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    acc = accuracy(model, "agnews", base.tokenizer, test, max_length=MAX_LENGTH, precision=config.resolved_precision)
    return dict(seconds=seconds, cpu_seconds=cpu_seconds, steps=steps, samples=len(train), lengths=lengths,
                padded_tokens=padded, test_accuracy=acc, precision=config.resolved_precision, encoder_config=base.encoder.config.to_dict(),
                num_labels=len(labels))


def arm_hf(args) -> dict:
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)
    from transformers.utils import logging as hf_logging

    from modeling.base_model import resolve_path
    from modeling.hardware import apply_num_threads, resolve_precision

    hf_logging.set_verbosity_error()
    apply_num_threads(args.threads)
    precision = resolve_precision("auto")
    labels = labels_of(args.data_dir)
    index = {label: i for i, label in enumerate(labels)}
    train_rows = load_agnews(args.data_dir, "train", args.train_examples)
    test_rows = load_agnews(args.data_dir, "test", args.test_examples)
    _, path = resolve_path(None)
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, bias="none", **LORA))
    steps = -(-len(train_rows) // BATCH_SIZE)
    training_args = TrainingArguments(
        output_dir=str(Path(args.work) / "hf"), per_device_train_batch_size=BATCH_SIZE, num_train_epochs=1,
        learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=int(0.06 * steps), weight_decay=0.01,
        max_grad_norm=1.0, bf16=precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=max(steps // 10, 1), disable_tqdm=True, seed=SEED, dataloader_num_workers=0,
        per_device_eval_batch_size=64,
    )

    def encode(rows):
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH)
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "token_type_ids": enc["token_type_ids"][i], "labels": index[r["label"]]} for i, r in enumerate(rows)]

    start, cpu_start = time.perf_counter(), time.process_time()
    train = encode(train_rows)
    trainer = Trainer(model=model, args=training_args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer, return_tensors="pt"))
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # The batches the Trainer drew were random, so padding is estimated from a seeded shuffle.
    lengths = [len(x["input_ids"]) for x in train]
    order = np.random.RandomState(SEED).permutation(len(lengths))
    padded = sum(max(lengths[i] for i in order[s:s + BATCH_SIZE]) * len(order[s:s + BATCH_SIZE])
                 for s in range(0, len(order), BATCH_SIZE))
    test = encode(test_rows)
    with torch.no_grad():
        out = trainer.predict(test)
    acc = float((out.predictions.argmax(-1) == out.label_ids).mean())
    return dict(seconds=seconds, cpu_seconds=cpu_seconds, steps=trainer.state.global_step, samples=len(train), lengths=lengths,
                padded_tokens=padded, test_accuracy=acc, precision=precision, num_labels=len(labels))


def arm_peak(args) -> dict:
    """Best of a few large square matmuls: the practical peak of this machine with these threads."""
    import torch

    from modeling.hardware import apply_num_threads, detect, resolve_precision

    apply_num_threads(args.threads)
    n = 1024 if args.quick else 2048
    out = {"matmul_size": n, "threads": torch.get_num_threads(), "hardware": detect().description}
    for name, dtype in (("32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and resolve_precision("auto") != "bf16":
            # Emulated bf16 is ~100x slower and never used for training here: not measured.
            continue
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(args.peak_reps):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[f"peak_flops_{name}"] = 2 * n ** 3 / best
    return out


def arm_profile(args) -> dict:
    """torch.profiler over a few training steps of our path (forward, backward, optimizer): where time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from continual.data import EncodedDataset, make_loader
    from continual.train import build_model
    from modeling.base_model import load_base_model
    from modeling.hardware import apply_num_threads, autocast, resolve_precision
    from modeling.kinds import get_kind
    from tasks.loaders import Example

    apply_num_threads(args.threads)
    labels = labels_of(args.data_dir)
    train = [Example(r["text"], r["label"]) for r in load_agnews(args.data_dir, "train", 160)]
    base = load_base_model()
    model = build_model(base)
    model.add_slot("agnews", "lora", get_kind("lora").make_config(LORA), tuple(labels))
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.trainable_parameters("agnews")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE)
    precision = resolve_precision("auto")
    loader = make_loader(EncodedDataset(train, base.tokenizer, labels, MAX_LENGTH), base.tokenizer, BATCH_SIZE, True)
    model.train()

    def step(batch):
        y = batch.pop("labels")
        with autocast(precision):
            logits = model("agnews", **batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    from continual.config import TrainConfig
    from continual.trainer import fast_path

    batches = list(loader)
    # as fit_slot trains: frozen Linears in bf16, the base's own dropout off, eager attention in bf16 on a CPU
    with fast_path(model, TrainConfig(precision=precision)):
        step(dict(batches[0]))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches[1:9]:
                step(dict(batch))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls_per_step": e.count / 8}
           for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]
    return {"table": table, "top_ops": top, "precision": precision}


ARMS = {"ours": arm_ours, "hf": arm_hf, "peak": arm_peak, "profile": arm_profile}


def run_arm(name: str, args) -> dict:
    """Run one arm in a fresh process and return its JSON (with the process's peak RSS)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as work:
        out = Path(work) / "result.json"
        cmd = [sys.executable, __file__, "--arm", name, "--arm-out", str(out), "--work", work,
               "--data-dir", str(args.data_dir), "--train-examples", str(args.train_examples),
               "--test-examples", str(args.test_examples), "--threads", str(args.threads),
               "--peak-reps", str(args.peak_reps)] + (["--quick"] if args.quick else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: arm '{name}' failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def summarize(arm: dict, peak: dict, encoder_config) -> dict:
    flops = model_flops(arm["lengths"], encoder_config, arm["num_labels"])
    real = sum(arm["lengths"])
    peak_used = peak.get(f"peak_flops_{arm['precision']}", peak["peak_flops_32"])
    achieved = flops["total"] / arm["seconds"]
    return {
        "seconds": arm["seconds"], "cpu_seconds": arm["cpu_seconds"], "steps": arm["steps"], "samples": arm["samples"],
        "samples_per_cpu_s": arm["samples"] / arm["cpu_seconds"],
        "samples_per_s": arm["samples"] / arm["seconds"], "real_tokens_per_s": real / arm["seconds"],
        "real_token_fraction": real / arm["padded_tokens"], "test_accuracy": arm["test_accuracy"],
        "precision": arm["precision"], "model_flops": flops["total"], "achieved_flops": achieved,
        "mfu": achieved / peak_used, "mfu_vs_fp32_peak": achieved / peak["peak_flops_32"],
        "peak_rss_mb": arm["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "cl_benchmark")
    parser.add_argument("--out", type=Path, default=Path("train_throughput.json"))
    parser.add_argument("--quick", action="store_true", help="128 training examples, 64 test, one repeat")
    parser.add_argument("--train-examples", type=int, default=None, help="default: 2000 (all), 128 with --quick")
    parser.add_argument("--test-examples", type=int, default=None, help="default: 1000 (all), 64 with --quick")
    parser.add_argument("--repeats", type=int, default=None, help="alternating ours/hf pairs (default 2, 1 quick)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both arms (0: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also profile 8 steps of our path (torch.profiler)")
    parser.add_argument("--peak-reps", type=int, default=5)
    parser.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--arm-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.train_examples = args.train_examples if args.train_examples is not None else (128 if args.quick else 2000)
    args.test_examples = args.test_examples if args.test_examples is not None else (64 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 2)
    if not (args.data_dir / "agnews").is_dir():
        sys.exit(f"error: '{args.data_dir}/agnews' does not exist; give --data-dir the cl_benchmark folder")

    if args.arm:  # inside one arm's process
        result = ARMS[args.arm](args)
        result["peak_rss_mb"] = peak_rss_mb()
        args.arm_out.write_text(json.dumps(result))
        return

    started = time.perf_counter()
    peak = run_arm("peak", args)
    runs = {"ours": [], "hf": []}
    for i in range(repeats):
        for name in (("ours", "hf") if i % 2 == 0 else ("hf", "ours")):  # alternate who goes first
            runs[name].append(run_arm(name, args))
    from transformers import BertConfig

    encoder_config = BertConfig.from_dict(runs["ours"][0]["encoder_config"])
    arms = {name: [summarize(r, peak, encoder_config) for r in results] for name, results in runs.items()}
    ratios = [o["samples_per_s"] / h["samples_per_s"] for o, h in zip(arms["ours"], arms["hf"])]
    mean_len = statistics.mean(runs["ours"][0]["lengths"])
    per_token = flops_per_example(round(mean_len), encoder_config.hidden_size, encoder_config.intermediate_size,
                                  encoder_config.num_hidden_layers, LORA["r"],
                                  len(LORA["target_modules"]) * encoder_config.num_hidden_layers, 4)
    result = {
        "machine": {"hardware": peak["hardware"], "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "threads": peak["threads"], "load_average_at_end": os.getloadavg(),
                    "note": "shared machine: absolute times vary run to run; compare the side-by-side ratios"},
        "setup": {"train_examples": args.train_examples, "test_examples": args.test_examples, "batch_size": BATCH_SIZE,
                  "learning_rate": LEARNING_RATE, "max_length": MAX_LENGTH, "lora": LORA, "epochs": 1,
                  "repeats": repeats},
        "peak": peak,
        "flops_arithmetic": {
            "mean_real_tokens_per_example": mean_len,
            "per_token_at_mean_length": {k: v / round(mean_len) for k, v in per_token.items()},
            "formula": flops_per_example.__doc__.strip(),
        },
        "ours": arms["ours"], "hf_trainer": arms["hf"],
        "ratio_vs_hf_trainer": statistics.median(ratios), "ratios_per_pair": ratios,
        # The same in CPU time (all threads of the arm's process): less sensitive to other jobs.
        "ratio_vs_hf_trainer_cpu": statistics.median(o["samples_per_cpu_s"] / h["samples_per_cpu_s"]
                                                     for o, h in zip(arms["ours"], arms["hf"])),
        "mfu": statistics.median(a["mfu"] for a in arms["ours"]),
        "mfu_hf_trainer": statistics.median(a["mfu"] for a in arms["hf"]),
        "accuracy_ours": statistics.mean(a["test_accuracy"] for a in arms["ours"]),
        "accuracy_hf_trainer": statistics.mean(a["test_accuracy"] for a in arms["hf"]),
    }
    if args.profile:
        result["profile"] = run_arm("profile", args)
    result["bench_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))


def table(r: dict) -> str:
    def row(name, arms):
        a = arms[0] if len(arms) == 1 else {k: statistics.median(x[k] for x in arms) for k in
                                            ("samples_per_s", "real_tokens_per_s", "mfu", "test_accuracy",
                                             "peak_rss_mb", "real_token_fraction")}
        return (f"| {name} | {a['samples_per_s']:.1f} | {a['real_tokens_per_s']:.0f} | {100 * a['real_token_fraction']:.0f}% "
                f"| {100 * a['mfu']:.1f}% | {100 * a['test_accuracy']:.1f}% | {a['peak_rss_mb']:.0f} |")

    peak = r["peak"]
    lines = [
        f"Machine: {r['machine']['hardware']}; {r['machine']['threads']} threads; "
        f"peak fp32 {peak['peak_flops_32'] / 1e9:.0f} GFLOP/s"
        + (f", bf16 {peak['peak_flops_bf16'] / 1e9:.0f} GFLOP/s" if "peak_flops_bf16" in peak else "")
        + f"; load average at end {r['machine']['load_average_at_end'][0]:.1f} (shared machine)",
        "",
        "| arm | samples/s | real tokens/s | real/padded | MFU | test acc | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        row("continual (ours)", r["ours"]),
        row("HF Trainer + peft", r["hf_trainer"]),
        "",
        f"ratio_vs_hf_trainer {r['ratio_vs_hf_trainer']:.2f} (pairs: {', '.join(f'{x:.2f}' for x in r['ratios_per_pair'])}; "
        f"in CPU time {r['ratio_vs_hf_trainer_cpu']:.2f}); "
        f"MFU vs the {r['ours'][0]['precision']} peak; "
        f"{r['flops_arithmetic']['per_token_at_mean_length']['total'] / 1e6:.1f} MFLOP per real token at the mean length",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
