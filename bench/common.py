"""What every bench script shares: quiet third-party logging (the figures are the output), fixed subsets of splits."""
from __future__ import annotations

import json
import logging
import os
import random
import warnings
from pathlib import Path


def quiet() -> None:
    """Silence third-party warnings, progress bars and INFO logs; nothing is downloaded (HF_HUB_OFFLINE)."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lightning  # noqa: F401  (importing it resets its loggers' level)
    from transformers.utils import logging as hf_logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def write_subset(data_dir: Path, task: str, out: Path, sizes: dict[str, int]) -> dict[str, str]:
    """A fixed sample (seed 0, original order) of `sizes[split]` rows of each split of `data_dir/task`, written
    under `out/task/`; returns split -> path.  For runs on a subset (nothing is copied into the repository)."""
    paths = {}
    for split, n in sizes.items():
        rows = [json.loads(line) for line in (data_dir / task / f"{split}.jsonl").read_text().splitlines() if line]
        keep = sorted(random.Random(0).sample(range(len(rows)), min(n, len(rows))))
        path = out / task / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(rows[i]) + "\n" for i in keep))
        paths[split] = str(path)
    return paths
