"""Training-mechanics figures (issue 10), side by side in one run on one machine, written as JSON + Markdown.

    python bench/mechanics.py --data-dir ../shared/data/cl_benchmark --out mechanics.json [--only agnews,sst2,sequence] [--quick]

- agnews, 2,000 training examples, equal steps (one epoch, 125 steps at batch 16): the old defaults
  (lr 1e-3, 1 epoch) against today's defaults, AdamW against Lion, fp32 against bf16: test accuracy
  and training seconds (ratios to the old defaults, measured in this run);
- sst2 with 600 training examples, default settings: test accuracy;
- the per-task LoRA sequence agnews -> sst2 -> dbpedia, 300 training examples each, default settings: ACC.

`--quick` is a smoke run of the same rows within the bench budget: fixed subsets of 96 training, 32 dev
and 48 test examples per task and at most 12 steps a training; its accuracies are not the figures.
Test sets are scored once per row; every setting was chosen on dev splits beforehand.  Times depend on the
machine and its load: the JSON records the CPU flags torch sees, the thread count and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import quiet, write_subset  # noqa: E402

SEQUENCE = ["agnews", "sst2", "dbpedia"]
OLD_DEFAULTS = {"learning_rate": 1e-3, "max_epochs": 1, "early_stopping_patience": 0}  # before issue 10
# Lion takes steps of size lr in every coordinate (sign updates): its paper uses a 3-10x smaller LR than AdamW.
LION_LR_FACTOR = 0.2
QUICK_SIZES = {"train": 96, "dev": 32, "test": 48}
QUICK_SETTINGS = {"max_steps": 12}


def register(registry, data_dir: Path, task: str, subset_dir: Path | None = None):
    """Register `task` from the cl_benchmark folder; with `subset_dir`, from fixed QUICK_SIZES subsets written there."""
    from tasks.loaders import build_spec

    folder = data_dir / task
    if not folder.is_dir():
        raise SystemExit(f"--data-dir {data_dir} has no folder '{task}'; point it at the cl_benchmark data")
    labels = json.loads((folder / "labels.json").read_text())
    paths = (write_subset(data_dir, task, subset_dir, QUICK_SIZES) if subset_dir is not None else
             {split: folder / f"{split}.jsonl" for split in ("train", "dev", "test")})
    spec = build_spec(task, paths["train"], paths["dev"], paths["test"], labels=labels)
    return registry.register_task(spec)


def train_row(registry, task: str, name: str, **settings) -> dict:
    from continual.config import TrainConfig
    from continual.train import train_task

    config = TrainConfig(**settings)
    result = train_task(registry, task, config)
    params = registry.run_info(result.run_id).data.params
    row = {"name": name, "task": task, "settings": settings, "test_accuracy": result.test_accuracy,
           "dev_accuracy": result.dev_accuracy, "steps": result.steps, "train_seconds": round(result.seconds, 2),
           "epochs": params.get("max_epochs_used"), "precision": params["precision_used"]}
    print(json.dumps(row), flush=True)
    return row


def machine() -> dict:
    import torch

    from modeling.hardware import detect

    return {"hardware": detect().description, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(), "torch": torch.__version__}


def agnews(registry, extra: dict) -> dict:
    from continual.config import TrainConfig

    default_lr = TrainConfig().learning_rate
    equal = {"max_epochs": 1, "early_stopping_patience": 0}  # equal steps: one epoch each
    rows = [
        train_row(registry, "agnews", "old defaults (adamw, lr 1e-3, 1 epoch, auto precision)", **OLD_DEFAULTS, **extra),
        train_row(registry, "agnews", "defaults (max_epochs auto, early stopping)", **extra),
        train_row(registry, "agnews", "adamw bf16", precision="bf16", **equal, **extra),
        train_row(registry, "agnews", f"lion bf16 (lr {default_lr * LION_LR_FACTOR:g})", optimizer="lion",
                  learning_rate=default_lr * LION_LR_FACTOR, precision="bf16", **equal, **extra),
        train_row(registry, "agnews", "adamw fp32", precision="32", **equal, **extra),
    ]
    base = rows[0]["train_seconds"]
    for row in rows:
        row["time_vs_old_defaults"] = round(row["train_seconds"] / base, 2)
    return {"rows": rows}


def sst2(registry, extra: dict) -> dict:
    return {"rows": [train_row(registry, "sst2", "defaults, 600 training examples", train_limit=600, **extra)]}


def sequence(registry, extra: dict) -> dict:
    from continual.sequence import SequenceSpec, run_sequence

    spec = SequenceSpec(name="mechanics-defaults", tasks=tuple(SEQUENCE), method="lora",
                        config={"train_limit": 300, **extra})
    result = run_sequence(registry, spec)
    out = {"tasks": SEQUENCE, "train_examples": 300, **{k: v for k, v in result.to_json().items()
                                                          if k in ("R", "metrics", "seconds", "train_seconds")}}
    print(json.dumps(out), flush=True)
    return out


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']['hardware']}; {results['machine']['torch_threads']} torch threads; "
             f"load average at start {results['machine']['load_average_at_start']} (shared machine: times are noisy, "
             f"ratios within this run are the figures to read)"
             + ("; --quick: a smoke run on small subsets, not the figures." if results.get("quick") else "."), ""]
    for section in ("agnews", "sst2"):
        if section in results:
            lines += [f"| {section} | test acc | steps | epochs | precision | train s | time vs old defaults |",
                      "|---|---|---|---|---|---|---|"]
            for r in results[section]["rows"]:
                lines.append(f"| {r['name']} | {100 * r['test_accuracy']:.1f}% | {r['steps']} | {r['epochs']} | "
                             f"{r['precision']} | {r['train_seconds']:.1f} | {r.get('time_vs_old_defaults', '')} |")
            lines.append("")
    if "sequence" in results:
        m = results["sequence"]["metrics"]
        lines.append(f"Per-task LoRA, {' -> '.join(SEQUENCE)}, 300 examples each, defaults: ACC {100 * m['acc']:.1f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="the cl_benchmark folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON results (a .md table is written beside it)")
    parser.add_argument("--only", default="agnews,sst2,sequence", help="sections to run, comma-separated")
    parser.add_argument("--store", type=Path, default=None, help="store folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small fixed subsets, at most 12 steps a training")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for every training (0: torch's choice)")
    args = parser.parse_args()
    quiet()
    from registry import AdapterRegistry

    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    store = args.store or Path(tempfile.mkdtemp(prefix="mechanics-"))
    registry = AdapterRegistry(store)
    for task in SEQUENCE:
        register(registry, args.data_dir, task, Path(tempfile.mkdtemp(prefix="mechanics-data-")) if args.quick else None)
    extra = {**(QUICK_SETTINGS if args.quick else {}), **({"num_threads": args.threads} if args.threads else {})}
    from modeling.hardware import apply_num_threads

    apply_num_threads(args.threads)  # before machine() records it
    results: dict = {"machine": machine(), "quick": args.quick}
    start = time.perf_counter()
    for name in sections:
        results[name] = {"agnews": agnews, "sst2": sst2, "sequence": sequence}[name](registry, extra)
        results["seconds"] = round(time.perf_counter() - start, 1)
        args.out.write_text(json.dumps(results, indent=2))  # after each section: partial results survive
    args.out.with_suffix(".md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
