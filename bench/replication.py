"""A reported benchmark run beside its replication on other test examples, and the two pooled.

    .venv/bin/python bench/replication.py --report docs/results/cl_order1.json \
        --replication bench/results/rep.json --out docs/results/cl_order1_replication.json

`--replication` is a `cl_benchmark.py --split fresh-test` run (usually `--merge`d from one process per
row and seed) of the same order with other seeds.  Per row present in both: ACC mean ± SE over each
part's seeds and over all seeds pooled, and the per-seed difference to `lora` (same seed, same scored
examples, so the difference is paired); then issue 9's targets (cl_benchmark.criteria) on each part and
on the pooled seeds.  The plan this serves (docs/results/cl_order1_replication_plan.md) fixed in advance
that a target counts as met only on the pooled mean.  Writes JSON and a Markdown page next to it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cl_benchmark import aggregate, criteria, minus_lora, pct  # noqa: E402

PARTS = ("report", "replication", "pooled")


def part_settings(report: dict) -> dict:
    s = report["settings"]
    return {"split": s["split"], "scored_examples": s["sizes"]["test"], "seeds": s["seeds"],
            "cpu_flags": s.get("cpu_flags"), "commit": s.get("commit")}


def pool(report: dict, replication: dict) -> dict:
    """The pooled comparison (see the module docstring); refuses parts of different orders or seed clashes."""
    if report["order"] != replication["order"] or report["settings"]["tasks"] != replication["settings"]["tasks"]:
        raise SystemExit("the report and the replication run different task sequences; pool runs of one order")
    if replication["settings"]["split"] != "fresh-test":
        raise SystemExit(f"the replication scored split '{replication['settings']['split']}'; a replication scores "
                         f"--split fresh-test (test examples the report did not score)")
    names = [n for n, e in replication["methods"].items() if e.get("seeds") and report["methods"].get(n, {}).get("seeds")]
    if "lora" not in names:
        raise SystemExit("both parts need the lora row: every difference is taken against it")
    parts: dict[str, dict] = {"report": {}, "replication": {}, "pooled": {}}
    for name in names:
        a, b = report["methods"][name]["seeds"], replication["methods"][name]["seeds"]
        if set(a) & set(b):
            raise SystemExit(f"row {name} has seed(s) {sorted(set(a) & set(b))} in both parts; replicate with other seeds")
        base = {k: v for k, v in report["methods"][name].items() if k in ("method", "note", "per_task_bytes", "shared_bytes")}
        for part, seeds in (("report", a), ("replication", b), ("pooled", {**a, **b})):
            parts[part][name] = aggregate({**base, "seeds": {k: v for k, v in seeds.items() if "acc" in v}})
    rows = {}
    for name in names:
        row = {}
        for part in PARTS:
            entry, paired = parts[part][name], minus_lora(parts[part][name], parts[part]["lora"])
            row[part] = {"n_seeds": entry["n_seeds"], "acc": entry["mean"]["acc"], "acc_se": entry["se"]["acc"],
                         "bwt": entry["mean"]["bwt"], "per_seed_acc": {k: r["acc"] for k, r in entry["seeds"].items()},
                         "minus_lora": paired["per_seed"], "minus_lora_mean": paired["mean"],
                         "minus_lora_se": paired["se"]}
        rows[name] = row
    return {"order": report["order"], "tasks": report["settings"]["tasks"],
            "parts": {"report": part_settings(report), "replication": part_settings(replication)},
            "rows": rows,
            "criteria": {part: criteria({"methods": parts[part]}) for part in PARTS}}


def markdown(result: dict) -> str:
    rep, repl = result["parts"]["report"], result["parts"]["replication"]
    lines = [f"# Order {result['order']} ({' → '.join(result['tasks'])}): the report, its replication, pooled", "",
             f"Report: split {rep['split']}, {rep['scored_examples']} examples per cell, seeds "
             f"{', '.join(map(str, rep['seeds']))} ({rep['cpu_flags']}). Replication: split {repl['split']} "
             f"(test examples the report did not score), {repl['scored_examples']} per cell, seeds "
             f"{', '.join(map(str, repl['seeds']))} ({repl['cpu_flags']}). ACC in %, mean ± SE over seeds; "
             f"'− lora' is the mean ± SE of the per-seed difference to per-task LoRA (same seed, same examples).", "",
             "| row | report ACC | − lora | replication ACC | − lora | pooled ACC | − lora | per-seed − lora |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, row in result["rows"].items():
        cells = []
        for part in PARTS:
            p = row[part]
            cells += [pct(p["acc"], p["acc_se"]), pct(p["minus_lora_mean"], p["minus_lora_se"])]
        per_seed = ", ".join(f"{k}: {100 * v:+.1f}" for k, v in sorted(row["pooled"]["minus_lora"].items(),
                                                                           key=lambda kv: int(kv[0])))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_seed} |")
    lines += ["", "| target (issue 9) | report | replication | pooled (the verdict) | pooled figures |",
              "|---|---|---|---|---|"]
    verdict = {part: {c["criterion"]: c for c in result["criteria"][part]} for part in PARTS}
    for what, c in verdict["pooled"].items():
        cols = ["yes" if verdict[p].get(what, {}).get("met") else "no" for p in ("report", "replication")]
        lines.append(f"| {what} | {cols[0]} | {cols[1]} | **{'met' if c['met'] else 'not met'}** | {c['figures']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="the reported cl_benchmark JSON")
    parser.add_argument("--replication", type=Path, required=True, help="a cl_benchmark --split fresh-test JSON")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write (a .md page is written next to it)")
    args = parser.parse_args(argv)
    result = pool(json.loads(args.report.read_text()), json.loads(args.replication.read_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
