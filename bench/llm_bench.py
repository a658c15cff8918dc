"""SmolLM2-135M-Instruct (the named base `smollm2-135m`) on instruction-posed classification, through the
platform's own paths (register, `train_task`, `AdapterRegistry.load`, `run_sequence`); writes JSON.

    # agnews as instruction + label: zero-shot vs LoRA after one epoch, training time and tokens/s
    python bench/llm_bench.py agnews --data-dir ../shared/data/cl_benchmark --out agnews.json
    # choosing settings: score dev examples instead (the test split is never read), e.g. another LR
    python bench/llm_bench.py agnews --split dev --set learning_rate=3e-3 --out agnews-dev.json
    # a 3-task sequence (agnews, sst2, dbpedia) with its forgetting matrix in MLflow; one method per process
    python bench/llm_bench.py sequence --data-dir ../shared/data/cl_benchmark --method lora --out seq-lora.json
    python bench/llm_bench.py table agnews.json seq-*.json          # a Markdown table of the JSON files

Each task is posed as one user turn "Classify the text. Answer with one of: <labels>.\\n\\n<text>" in the
chat template; the answer is the label with the highest log-probability (+ end token).  Zero-shot is the
freshly initialised LoRA slot (B = 0: exactly the base model).  The subsets of each split are fixed
samples (seed 0) written to a temporary folder; nothing is copied into the repository.  With
`--split dev` the scored examples are `--test` examples of dev.jsonl and the dev examples watched during
training are `--dev` further ones (disjoint), so settings can be chosen without reading test.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_subset  # noqa: E402

BASE = "smollm2-135m"
SEQUENCE = ("agnews", "sst2", "dbpedia")


def register(reg, data_dir: Path, tmp: Path, task: str, sizes: dict[str, int], split: str = "test"):
    from tasks.loaders import build_spec

    labels = json.loads((data_dir / task / "labels.json").read_text())
    p = write_subset(data_dir, task, tmp, sizes, split)
    return reg.register_task(build_spec(task, p["train"], p["dev"], p["test"], labels=labels))


def train_config(args):
    """The bench's settings; `--set key=value` (any TrainConfig field) overrides them."""
    from continual.config import TrainConfig, parse_overrides

    settings = dict(learning_rate=args.lr, batch_size=args.batch_size, max_epochs=1, max_length=args.max_length,
                    eval_batch_size=8, num_threads=args.threads, precision=args.precision)
    return TrainConfig.from_dict({**settings, **parse_overrides(args.set)})


def run_agnews(args) -> dict:
    from continual.lm_training import LMDataset, lm_accuracy
    from continual.train import build_model, load_task_data, train_task
    from modeling.base_model import load_base_model
    from modeling.hardware import apply_num_threads, detect
    from modeling.kinds import get_kind
    from registry import AdapterRegistry

    apply_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    reg = AdapterRegistry(args.store or tmp / "store")
    spec = register(reg, Path(args.data_dir), tmp / "data", "agnews", {"train": args.train, "dev": args.dev,
                                                                       "test": args.test}, args.split)
    config = train_config(args)
    data = load_task_data(spec)
    start = time.perf_counter()
    base = load_base_model(BASE)
    load_seconds = time.perf_counter() - start
    zero = build_model(base)
    zero.add_slot("agnews", "lora", get_kind("lora").make_config(config.flat()), spec.labels)
    start = time.perf_counter()
    zero_shot = None if args.no_zero_shot else lm_accuracy(zero, "agnews", data.test, max_length=config.max_length,
                                                           batch_size=8, precision=config.resolved_precision)
    zero_seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids, _ in LMDataset(data.train, zero, "agnews", config.max_length).rows)
    del zero
    result = train_task(reg, "agnews", config, method="lora", base_model=BASE)
    predictor = reg.load("agnews")
    sample = "Title: Striker scores twice in cup final\nText: The home side won 3-1 after a late double."
    return {
        "bench": "agnews", "base_model": BASE, "hardware": detect().description, "precision": config.resolved_precision,
        "threads": args.threads, "scored_split": args.split, "train_examples": len(data.train),
        "test_examples": len(data.test),
        "zero_shot_accuracy": zero_shot, "lora_test_accuracy": result.test_accuracy,
        "lora_test_metrics": result.version.metrics, "train_seconds": result.seconds, "train_steps": result.steps,
        "train_tokens": tokens, "train_tokens_per_second": tokens / result.seconds, "base_load_seconds": load_seconds,
        "zero_shot_eval_seconds": zero_seconds, "config": config.flat(), "loaded_prediction": str(predictor.predict([sample])[0]),
        "version": result.version.ref, "store": str(reg.tracking_uri),
    }


def run_sequence_bench(args) -> dict:
    from continual.config import parse_overrides
    from continual.sequence import SequenceSpec, run_sequence
    from modeling.hardware import apply_num_threads, detect
    from registry import AdapterRegistry

    apply_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="llm-seq-"))
    reg = AdapterRegistry(args.store or tmp / "store")
    for task in SEQUENCE:
        register(reg, Path(args.data_dir), tmp / "data", task, {"train": args.train, "dev": args.dev, "test": args.test},
                 args.split)
    chosen = {"learning_rate", "batch_size", "max_epochs", "max_length", "eval_batch_size", "num_threads", "precision",
              *parse_overrides(args.set)}
    config = {k: v for k, v in train_config(args).flat().items() if k in chosen}
    spec = SequenceSpec(name=f"smollm2-{args.method}", tasks=SEQUENCE, method=args.method, config=config,
                        base_model=BASE)
    result = run_sequence(reg, spec)
    return {"bench": "sequence", "base_model": BASE, "hardware": detect().description, "threads": args.threads,
            "scored_split": args.split, "train_examples": args.train, "test_examples": args.test,
            "store": str(reg.tracking_uri),
            **result.to_json()}


def fmt(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def table(paths: list[str]) -> str:
    lines = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        if r["bench"] == "agnews":
            lines += ["| agnews (SmolLM2-135M) | zero-shot % | LoRA, 1 epoch % | train s | tokens/s |", "|---|---|---|---|---|",
                      f"| {r['train_examples']} train / {r['test_examples']} {r.get('scored_split', 'test')} | "
                      f"{fmt(r['zero_shot_accuracy'])} | {fmt(r['lora_test_accuracy'])} | {r['train_seconds']:.0f} | "
                      f"{r['train_tokens_per_second']:.0f} |", ""]
        else:
            m = r["metrics"]
            rows = ["| after \\ on | " + " | ".join(r["tasks"]) + " |", "|---" * (len(r["tasks"]) + 1) + "|"]
            rows += [f"| {t} | " + " | ".join(fmt(v) for v in row) + " |" for t, row in zip(r["tasks"], r["R"])]
            lines += [f"**{r['method']}**: ACC {fmt(m['acc'])}, BWT {fmt(m['bwt'])}, FWT {fmt(m['fwt'])}, "
                      f"forgetting {fmt(m['forgetting'])}, training {r['train_seconds']:.0f}s", "", *rows, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", choices=["agnews", "sequence", "table"])
    parser.add_argument("files", nargs="*", help="table: the JSON files to tabulate")
    parser.add_argument("--data-dir", default="../shared/data/cl_benchmark")
    parser.add_argument("--out", default="")
    parser.add_argument("--store", default="", help="MLflow store (default: a temporary folder)")
    parser.add_argument("--method", default="lora", help="sequence: lora (per-task LoRA) or seq-lora")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 24 train, 8 dev, 16 test examples, "
                        "max length 128 (sizes given explicitly win)")
    parser.add_argument("--train", type=int, default=None, help="training examples per task (default 300)")
    parser.add_argument("--dev", type=int, default=None, help="dev examples per task (default 40)")
    parser.add_argument("--test", type=int, default=None, help="test examples per task (default 200)")
    parser.add_argument("--lr", type=float, default=3e-3, help="3e-3: chosen on agnews dev (README)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=None, help="tokens per example (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared CPU)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--split", choices=["test", "dev"], default="test",
                        help="the split scored: test, or dev (--test dev examples; for choosing settings)")
    parser.add_argument("--no-zero-shot", action="store_true", help="agnews: skip the zero-shot score (it does not "
                        "depend on the training settings)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any training setting, e.g. --set target_modules=q_proj,v_proj --set r=8 (repeatable)")
    args = parser.parse_args(argv)
    for key, full, quick in (("train", 300, 24), ("dev", 40, 8), ("test", 200, 16), ("max_length", 256, 128)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.bench == "table":
        print(table(args.files))
        return
    result = run_agnews(args) if args.bench == "agnews" else run_sequence_bench(args)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
