"""What every bench script shares: quiet third-party logging (the figures are the output), fixed subsets of splits."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path


def quiet() -> None:
    """Silence third-party warnings, progress bars and INFO logs, as the CLI does: the project's own warnings
    (ContinualWarning) still reach stderr. Nothing is downloaded (HF_HUB_OFFLINE)."""
    from continual.noise import quiet_libraries

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries(training=True)


def read_rows(data_dir: Path, task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (data_dir / task / f"{split}.jsonl").read_text().splitlines() if line]


def sample(rows: list[dict], *sizes: int) -> list[list[dict]]:
    """Disjoint subsets of `sizes` rows from one fixed draw (seed 0), each in file order."""
    if sum(sizes) > len(rows):
        raise SystemExit(f"asked for {sum(sizes)} rows of a split that has {len(rows)}; lower --train/--dev/--test")
    drawn = random.Random(0).sample(range(len(rows)), sum(sizes))
    cuts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [[rows[i] for i in sorted(drawn[a:b])] for a, b in zip(cuts, cuts[1:])]


def write_subset(data_dir: Path, task: str, out: Path, sizes: dict[str, int], split: str = "test") -> dict[str, str]:
    """train/dev/test files of `sizes[...]` rows; with split="dev" the "test" file holds dev rows and
    the "dev" file other dev rows, so test.jsonl is never read."""
    chosen = {"train": sample(read_rows(data_dir, task, "train"), sizes["train"])[0]}
    if split == "dev":
        chosen["test"], chosen["dev"] = sample(read_rows(data_dir, task, "dev"), sizes["test"], sizes["dev"])
    else:
        chosen["dev"] = sample(read_rows(data_dir, task, "dev"), sizes["dev"])[0]
        chosen["test"] = sample(read_rows(data_dir, task, "test"), sizes["test"])[0]
    paths = {}
    for name, rows in chosen.items():
        path = out / task / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[name] = str(path)
    return paths
