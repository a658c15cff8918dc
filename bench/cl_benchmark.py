"""Continual-learning benchmark: every method side by side on the standard sequence, one machine, one run.

    .venv/bin/python bench/cl_benchmark.py --data-dir ../shared/data/cl_benchmark --out bench/results/cl_order1.json
        [--order 1|2|3] [--quick] [--methods lora,seq-lora,...] [--threads N]

Sequence (order 1): dbpedia, amazon, yelp, agnews (../shared/data/cl_benchmark/README.md), on the
default base model all-MiniLM-L6-v2, in a temporary store.  Every method runs the same tasks, the same
subsampled splits and the same settings (below); per-method differences are listed in ROWS.  Writes
JSON {"order", "methods": {ROW: {"acc", "bwt", "fwt", "forgetting", "R", "b", "seconds", ...}},
"settings"} and a Markdown table next to it (same name, .md).

Budget: the default settings take about an hour on 2 CPU cores, `--quick` a few minutes; training and
evaluation are subsampled for that (the table says how much), so the figures compare methods with
each other rather than with published full-data numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import quiet  # noqa: E402

ORDERS = {
    1: ["dbpedia", "amazon", "yelp", "agnews"],
    2: ["dbpedia", "amazon", "agnews", "yelp"],
    3: ["yelp", "amazon", "agnews", "dbpedia"],
}

# Subsampling (per task): training examples, dev examples (early-stopping snapshot and the registered
# version's dev accuracy), test examples (every cell of R, always the same ones).
SIZES = {"default": {"train": 500, "dev": 50, "test": 150}, "quick": {"train": 32, "dev": 8, "test": 32}}

# Settings every row shares.  bf16 autocast: measured on dbpedia first (see the Markdown table's notes).
# r=8 pinned so the figures stay comparable with earlier runs of this bench (the training default is now 16).
COMMON = {"max_epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "max_length": 128, "eval_batch_size": 64,
          "precision": "auto", "seed": 0, "r": 8}
QUICK = {"max_length": 64}


@dataclass
class Row:
    name: str
    method: str
    config: dict = field(default_factory=dict)
    needs_kind: str | None = None  # skipped (with a note) when modeling.kinds lacks it
    note: str = ""


ROWS = [
    Row("lora", "lora", note="isolated per-task LoRA"),
    Row("seq-lora", "seq-lora", note="one LoRA through every task"),
    # Full fine-tuning at an adapter's learning rate wrecks the encoder.  One LR serves encoder and head, and
    # at the usual 5e-5 the new head barely learns in 32 steps (dbpedia 29%); 2e-4 learns it (86%).
    Row("seq-ft", "seq-ft", {"learning_rate": 2e-4}, note="full fine-tuning, lr 2e-4"),
    Row("replay", "replay", {"replay_per_task": 50}, note="seq-lora + 50 examples/task replayed"),
    Row("ewc", "ewc", {"ewc_lambda": 1e4, "fisher_samples": 200}, note="seq-lora + EWC, λ=1e4"),
    Row("mtl", "mtl", note="joint training on all tasks (upper bound)"),
    Row("o-lora", "o-lora", {"olora_lambda": 0.5}, note="O-LoRA: earlier LoRAs frozen and summed, new A orthogonal, λ1=0.5"),
    Row("shared-b-lora(B trained)", "shared-b-lora", {"train_shared": True}, "shared-b-lora",
        "one B trained with every task, A per task"),
    Row("shared-b-lora(B frozen)", "shared-b-lora", {"train_shared": False}, "shared-b-lora",
        "B trained with task 1 only, then frozen"),
    Row("shared-a-lora", "shared-a-lora", {}, "shared-a-lora", "one A trained with every task, B per task"),
    # At the adapters' 5e-3 this kind collapsed from the second task on (every task below chance); 1e-3 trains.
    Row("task-embedding", "task-embedding", {"learning_rate": 1e-3}, "task-embedding",
        "shared f_in/f_out trained with every task, e_i per task; lr 1e-3"),
    # One epoch: the schedule counts steps. Top layer at lr·0.05 = 1e-4, the next at 5e-6; at most 2 layers.
    Row("lora(progressive unfreezing)", "lora",
        {"unfreeze_schedule": "every=8,unit=step,group=1,lr_decay=0.05,max_layers=2"}, note="top 2 layers unfrozen"),
]


def write_tasks(data_dir: Path, tasks: list[str], sizes: dict[str, int], out: Path, seed: int = 0) -> list:
    """Subsampled copies of each task's splits (the same examples for every method), as TaskSpecs."""
    from continual.data import subsample
    from tasks.loaders import build_spec

    specs = []
    for task in tasks:
        folder = data_dir / task
        if not folder.is_dir():
            raise SystemExit(f"--data-dir {data_dir} has no folder '{task}'; point it at the cl_benchmark data")
        labels = json.loads((folder / "labels.json").read_text())
        paths = {}
        for split, n in sizes.items():
            lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            kept = subsample([l for l in lines if l.strip()], n, seed)
            paths[split] = out / task / f"{split}.jsonl"
            paths[split].parent.mkdir(parents=True, exist_ok=True)
            paths[split].write_text("\n".join(kept) + "\n", encoding="utf-8")
        specs.append(build_spec(task, str(paths["train"]), str(paths["dev"]), str(paths["test"]), labels=labels,
                                description=f"cl_benchmark {task} (subsampled)"))
    return specs


def run_row(reg, row: Row, tasks: list[str], config: dict, order: int) -> dict:
    from continual.sequence import SequenceSpec, run_sequence

    spec = SequenceSpec(name=f"order{order}-{row.name}", tasks=tuple(tasks), method=row.method,
                        config={**config, **row.config})
    start = time.perf_counter()
    result = run_sequence(reg, spec)
    seconds = time.perf_counter() - start
    out = {**result.metrics, "R": result.R, "b": result.matrix.b, "seconds": round(seconds, 1),
           "train_seconds": round(result.train_seconds, 1), "method": row.method, "config": row.config,
           "note": row.note, "registration": result.registration}
    result.model = None  # free the sequence's model before the next row
    return out


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# Continual-learning benchmark, order {report['order']}: {' → '.join(s['tasks'])}",
        "",
        f"Base model {s['base_model']}; per task {s['sizes']['train']} training examples (subsampled, "
        f"seed 0), {s['sizes']['dev']} dev, {s['sizes']['test']} test examples evaluated in every cell of R; "
        f"{s['config']['max_epochs']} epoch, batch {s['config']['batch_size']}, lr {s['config']['learning_rate']:g}, "
        f"max_length {s['config']['max_length']}, precision {s['config']['precision']}; {s['threads']} torch "
        f"thread(s) on {s['cpu_count']} CPU cores{' (--quick)' if s['quick'] else ''}. All rows in one run on one "
        f"machine. Accuracies in %, BWT/FWT/forgetting in points (docs/design.md definitions).",
        "",
        "| method | ACC | BWT | FWT | forgetting | seconds | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    base_seconds = report["methods"].get("lora", {}).get("seconds")
    for name, r in report["methods"].items():
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | — | — | — | — | — | {r.get('skipped') or 'failed: ' + r['error']} |")
            continue
        ratio = f" ({r['seconds'] / base_seconds:.1f}× lora)" if base_seconds and name != "lora" else ""
        lines.append(f"| {name} | {pct(r['acc'])} | {pct(r['bwt'])} | {pct(r['fwt'])} | {pct(r['forgetting'])} | "
                     f"{r['seconds']:.0f}{ratio} | {r['note']} |")
    lines += ["", "mtl trains once on all tasks: only the last row of R exists, so BWT, FWT and forgetting are "
              "undefined (—).", ""]
    for note in s.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the cl_benchmark folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (a .md table is written next to it)")
    parser.add_argument("--order", type=int, choices=sorted(ORDERS), default=1)
    parser.add_argument("--quick", action="store_true", help="tiny subsample: a few minutes in all")
    parser.add_argument("--methods", help=f"comma-separated rows (default: all): {', '.join(r.name for r in ROWS)}")
    parser.add_argument("--tasks", help="comma-separated tasks instead of the order's sequence (for measurements)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a CPU shared with other jobs a second thread can stall)")
    parser.add_argument("--precision", choices=["auto", "32", "bf16"], default=COMMON["precision"],
                        help="auto: bf16 only where the CPU/GPU does it natively (modeling/hardware.py)")
    parser.add_argument("--store", help="MLflow store to keep the runs in (default: a temporary one)")
    args = parser.parse_args(argv)

    quiet()
    import torch

    torch.set_num_threads(args.threads)
    from continual.sequence import SequenceSpec  # noqa: F401  (fail early on a broken install)
    from registry import AdapterRegistry
    from modeling.base_model import DEFAULT_BASE_MODEL
    from modeling.kinds import KINDS

    rows = ROWS
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in {r.name for r in ROWS}]
        if unknown:
            raise SystemExit(f"unknown method row(s) {unknown}; valid: {', '.join(r.name for r in ROWS)}")
        rows = [r for r in ROWS if r.name in wanted]
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else ORDERS[args.order]
    sizes = SIZES["quick" if args.quick else "default"]
    config = {**COMMON, **(QUICK if args.quick else {}), "precision": args.precision}
    settings = {"tasks": tasks, "sizes": sizes, "config": config, "base_model": DEFAULT_BASE_MODEL,
                "threads": args.threads, "cpu_count": os.cpu_count(), "quick": args.quick,
                "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                "notes": NOTES}
    report = {"order": args.order, "methods": {}, "settings": settings}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cl-bench-") as tmp:
        reg = AdapterRegistry(args.store or Path(tmp) / "store")
        for spec in write_tasks(args.data_dir, tasks, sizes, Path(tmp) / "data"):
            reg.register_task(spec)
        for row in rows:
            if row.needs_kind and row.needs_kind not in KINDS:
                report["methods"][row.name] = {"skipped": f"adapter kind '{row.needs_kind}' is not available"}
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {row.name} ...", flush=True)
            try:
                report["methods"][row.name] = run_row(reg, row, tasks, config, args.order)
            except Exception as err:  # one failing row must not lose the others
                traceback.print_exc()
                report["methods"][row.name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            r = report["methods"][row.name]
            print(f"    {row.name}: " + ("  ".join(f"{k} {pct(r.get(k))}" for k in ("acc", "bwt", "fwt", "forgetting"))
                                        + f"  {r.get('seconds')}s" if "acc" in r else str(r)), flush=True)
            args.out.write_text(json.dumps(report, indent=2))  # partial results survive an interruption
            args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


NOTES = [
    "Registration: lora and the kind rows register one adapter version per task (train_task); seq-lora, seq-ft, "
    "replay and ewc register the shared adapter's weights after each task plus that task's head; mtl registers "
    "nothing (a joint model is not a per-task version).",
    "Precision: bf16 autocast, measured against fp32 on dbpedia then amazon first (lora, 1000 training examples "
    "each, lr 2e-3): 91.0/36.5% vs 90.5/36.0% test accuracy, 197 s vs 311 s for the whole 2-task sequence.",
    "Learning rate 5e-3 for adapters (dbpedia, 500 examples, 1 epoch: 91.5%; lr 2e-3 with 300 examples reached "
    "only 45%); seq-ft 2e-4 (at 5e-5 the new heads barely learn: dbpedia 29%); task-embedding 1e-3 (at 5e-3 every "
    "task fell below chance from the second task on: ACC 19.8). EWC λ=1e4 from a sweep on dbpedia then amazon (λ=1e2: BWT -13.0, 1e4: 0.0 with "
    "amazon learning as without EWC, 1e6: 0.0 but amazon stuck at 19.5%; seq-lora: -26.5).",
    "Replay: 50 examples per finished task; each batch carries as many replayed examples as new ones, each "
    "through its own task's head.",
    "FWT: a task's fresh slot has a random head, so R[j-1][j] and b[j] are both near chance; isolated kinds give "
    "exactly 0 (same fresh slot, untouched model).",
]


if __name__ == "__main__":
    main()
