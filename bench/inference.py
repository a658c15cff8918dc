"""Serving many task adapters on one base model: mixed-task batches, switching, load latency, cold start.

    python bench/inference.py --out inference.json [--quick]

Eight LoRA task adapters (r=8 on query/value, as `continual train` makes them) are registered on the
default base model (all-MiniLM-L6-v2) in a temporary store.  Their weights are random (B non-zero),
not trained: speed does not depend on the values, and training eight tasks would take most of the
time budget.  The requests are the built-in demo suite's test sentences, one task per request.

- (a) mixed: a batch whose rows belong to all eight tasks in one encoder forward, each row's own
  B·A applied with batched matmuls (`predict_mixed`, what `AdapterRegistry.predict_many` runs), and
  the same through peft's own mixed-batch LoRA (`adapter_names`, a Python loop over the adapters);
- (b) single: the same texts through one adapter (`Predictor.predict`, one batch);
- (c) swap: one request at a time, switching the active adapter per request (the adapters already
  loaded), which is what serving each request by its task's predictor does.
Also: warm load-by-name latency p50/p99 (base already loaded; each load really loads the adapter:
resolve, checksum, read, inject, since the bound of loaded adapters is 1 while it is measured), the
latency of `load` for an adapter already loaded, cold start (a new process: import, load base and
adapter, first prediction) and the import time of the inference path (`import registry`).
Ratios are measured side by side in one run; alternate rounds keep drift in the load out of them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_TASKS = 8


def register_random_lora_tasks(reg, names: list[str], data_dir: Path) -> None:
    import torch

    from modeling.base_model import load_base_model
    from modeling.kinds import get_kind
    from modeling.manifest import AdapterManifest
    from modeling.model import AdapterModel
    from registry import tags as T
    from tasks.loaders import build_spec

    base = load_base_model()
    for n, name in enumerate(names):
        labels = [f"{name}-{c}" for c in ("a", "b", "c", "d")]
        path = data_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": f"example {i}", "label": labels[i % 4]}) + "\n" for i in range(8)))
        reg.register_task(build_spec(name, path), embed=False)
        model = AdapterModel(base.fresh_encoder())
        model.add_slot(name, "lora", get_kind("lora").make_config({}), tuple(labels))
        torch.manual_seed(n)
        with torch.no_grad():
            for p in model.trainable_parameters(name):
                p.normal_(0, 0.05)
        manifest = AdapterManifest(task=name, kind="lora", kind_config=model.slots[name].config.to_dict(),
                                   labels=labels, base_model_id=base.model_id, base_model_fingerprint=base.fingerprint)
        with reg.run(f"bench-{name}") as run:
            reg.register_adapter(run, model, name, manifest, {T.ADAPTER_KIND: "lora"})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def subprocess_seconds(code: str, env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"error: subprocess failed:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("inference.json"))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for CI and smoke runs)")
    parser.add_argument("--batch", type=int, default=64, help="rows per mixed batch (8 per task by default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, also in the cold-start processes "
                        "(0: torch's choice; 1 on a shared CPU)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # --quick: a smoke run within the bench budget (README, Tests and benchmarks); the full run for figures.
    rounds = 2 if args.quick else 7
    best_of = 1 if args.quick else 3
    load_reps = 8 if args.quick else 80
    cold_reps = 1 if args.quick else 5
    started = time.perf_counter()

    import torch

    from modeling import predictor as P
    from modeling.hardware import apply_num_threads, detect, resolve_precision

    apply_num_threads(args.threads)
    from registry import AdapterRegistry
    from tasks.demo import write_demo_suite
    from tasks.loaders import load_split

    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    reg = AdapterRegistry(work / "store")
    names = [f"task{i}" for i in range(N_TASKS)]
    register_random_lora_tasks(reg, names, work)
    texts = [e.text for spec in write_demo_suite(work / "demo", sizes={"train": 40, "dev": 10, "test": 200})
             for e in load_split(spec, "test")]
    batch_texts = texts[: args.batch]
    items = [(names[i % N_TASKS], t) for i, t in enumerate(batch_texts)]  # every task in every batch

    # Switching per request is slow per row: --quick times it on 8 requests (1 per task), a rate all the same.
    swap_items = items[:N_TASKS] if args.quick else items
    predictors = {name: reg.load(name) for name in names}
    single = predictors[names[0]]
    mixed_items = [(predictors[ref], text) for ref, text in items]
    # Warm up every path once (first calls allocate and pick kernels).
    P.predict_mixed(mixed_items, batch_size=args.batch)
    P.predict_mixed(mixed_items, batch_size=args.batch, lora_impl="peft")
    single.predict(batch_texts, batch_size=args.batch)
    for ref, text in items[:N_TASKS]:
        predictors[ref].predict([text])

    paths = {
        "mixed": (lambda: P.predict_mixed(mixed_items, batch_size=args.batch), len(items)),
        "mixed_peft": (lambda: P.predict_mixed(mixed_items, batch_size=args.batch, lora_impl="peft"), len(items)),
        # The public call: also resolves each reference in the store.
        "mixed_api": (lambda: reg.predict_many(items, batch_size=args.batch), len(items)),
        "single": (lambda: single.predict(batch_texts, batch_size=args.batch), len(items)),
        "swap": (lambda: [predictors[ref].predict([text]) for ref, text in swap_items], len(swap_items)),
    }
    # Per round, each path runs `best_of` times and keeps its fastest run, in wall time and in this
    # process's CPU time: on a shared CPU a single run can be stalled by other jobs (a 2x swing was
    # seen between identical rounds), and CPU time counts the work done rather than the waiting.
    results = {k: [] for k in paths}
    cpu = {k: [] for k in paths}
    for r in range(rounds):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):  # alternate the order
            fn, rows = paths[name]
            walls, cpus = [], []
            for _ in range(best_of if name != "swap" else 1):
                t, c = time.perf_counter(), time.process_time()
                fn()
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            results[name].append(rows / min(walls))
            cpu[name].append(rows / min(cpus))
    throughput = {k: statistics.median(v) for k, v in results.items()}
    throughput_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratios_single = [m / s for m, s in zip(results["mixed"], results["single"])]
    ratios_swap = [m / s for m, s in zip(results["mixed"], results["swap"])]
    ratios_peft = [m / s for m, s in zip(results["mixed_peft"], results["single"])]

    # Warm load-by-name: base loaded; bound 1 so every load of another task really loads it.
    before = P.max_loaded_adapters()
    P.set_max_loaded_adapters(1)
    cycle = [names[i % N_TASKS] for i in range(load_reps)]
    load_times = []
    for name in cycle:
        t = time.perf_counter()
        reg.load(name)
        load_times.append(time.perf_counter() - t)
    P.set_max_loaded_adapters(before)
    reg.load(names[0])
    cached_times = timed(lambda: reg.load(names[0]), load_reps)

    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    store = str(work / "store")
    cold_code = (f"from registry import AdapterRegistry; "
                 f"print(AdapterRegistry({store!r}).load({names[0]!r}).predict(['Oil prices jump'])[0])")
    import_code = "import registry, modeling.predictor, sys; assert 'lightning' not in sys.modules"
    cold, imports = [], []
    for _ in range(cold_reps):
        cold.append(subprocess_seconds(cold_code, env))
        imports.append(subprocess_seconds(import_code, env) - subprocess_seconds("pass", env))

    result = {
        "machine": {"hardware": detect().description, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "precision": resolve_precision("auto"),
                    "load_average_at_end": os.getloadavg(),
                    "note": "shared machine: absolute times vary run to run; compare the side-by-side ratios"},
        "setup": {"tasks": N_TASKS, "batch_rows": len(items), "rounds": rounds, "kind": "lora r=8 query,value",
                  "weights": "random (untrained): speed does not depend on the values"},
        "rows_per_s": throughput,
        "rows_per_cpu_s": throughput_cpu,
        "mixed_vs_single_cpu": throughput_cpu["mixed"] / throughput_cpu["single"],
        "mixed_vs_swap_cpu": throughput_cpu["mixed"] / throughput_cpu["swap"],
        "mixed_vs_single": statistics.median(ratios_single),
        "mixed_vs_swap": statistics.median(ratios_swap),
        "peft_mixed_vs_single": statistics.median(ratios_peft),
        "ratios_per_round": {"mixed_vs_single": ratios_single, "mixed_vs_swap": ratios_swap,
                             "peft_mixed_vs_single": ratios_peft},
        "load_by_name_ms": {"p50": 1000 * percentile(load_times, 50), "p99": 1000 * percentile(load_times, 99),
                            "n": len(load_times)},
        "load_already_loaded_ms": {"p50": 1000 * percentile(cached_times, 50),
                                   "p99": 1000 * percentile(cached_times, 99)},
        "cold_start_s": {"median": statistics.median(cold), "runs": cold},
        "import_inference_path_s": {"median": statistics.median(imports), "runs": imports},
    }
    result["bench_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))


def table(r: dict) -> str:
    t, c = r["rows_per_s"], r["rows_per_cpu_s"]
    return "\n".join([
        f"Machine: {r['machine']['hardware']}; {r['machine']['threads']} threads; precision {r['machine']['precision']}; "
        f"load average at end {r['machine']['load_average_at_end'][0]:.1f} (shared machine)",
        "",
        "| path | rows/s (wall) | rows per CPU-second |",
        "|---|---|---|",
        f"| (a) mixed batch, {r['setup']['tasks']} tasks, one forward (`predict_mixed`) | {t['mixed']:.1f} | {c['mixed']:.1f} |",
        f"| (a) same, peft's own mixed batch (`adapter_names`) | {t['mixed_peft']:.1f} | {c['mixed_peft']:.1f} |",
        f"| (a) same through `AdapterRegistry.predict_many` (also resolves refs) | {t['mixed_api']:.1f} | {c['mixed_api']:.1f} |",
        f"| (b) same batch, one adapter | {t['single']:.1f} | {c['single']:.1f} |",
        f"| (c) one request at a time, switching adapters | {t['swap']:.1f} | {c['swap']:.1f} |",
        "",
        f"mixed_vs_single {r['mixed_vs_single']:.2f} (CPU time {r['mixed_vs_single_cpu']:.2f}; peft's mixed batch "
        f"{r['peft_mixed_vs_single']:.2f}), mixed_vs_swap {r['mixed_vs_swap']:.2f} (CPU time {r['mixed_vs_swap_cpu']:.2f}); "
        f"load by name p50 {r['load_by_name_ms']['p50']:.0f} ms, p99 {r['load_by_name_ms']['p99']:.0f} ms "
        f"(already loaded: p50 {r['load_already_loaded_ms']['p50']:.0f} ms); cold start "
        f"{r['cold_start_s']['median']:.1f} s; import of the inference path {r['import_inference_path_s']['median']:.1f} s",
    ])


if __name__ == "__main__":
    main()
