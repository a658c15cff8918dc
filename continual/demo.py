"""`continual demo`: the main job on built-in data — register the demo tasks, train, predict."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from continual.config import TrainConfig
from continual.train import TrainResult, train_task
from registry.registry import AdapterRegistry, RegistryError
from tasks.demo import write_demo_suite
from tasks.spec import TaskSpec

# Demo settings: the built-in tasks are small and easy, so 3 epochs (75 steps) at the default LR learn them
# well; `max_epochs: auto` would give 8 epochs, and the demo must finish in under 2 minutes on a 2-core CPU.
# precision "auto": bf16 autocast where the CPU/GPU does bf16 natively (AMX: ~1.6x faster at equal
# accuracy), fp32 where bf16 would be emulated (AVX2-only CPUs: ~100x slower than fp32).
DEMO_CONFIG = TrainConfig(max_epochs=3, early_stopping_patience=1, precision="auto")


@dataclass
class DemoResult:
    results: list[TrainResult]
    data_dir: Path


def demo_data_dir(registry: AdapterRegistry) -> Path:
    """Next to a local store (so the tasks' files outlive the demo), else a temporary folder."""
    if registry.local_root is not None:
        return registry.local_root / "demo-data"
    return Path(tempfile.mkdtemp(prefix="continual-demo-"))


def ensure_registered(registry: AdapterRegistry, spec: TaskSpec) -> TaskSpec:
    """Register `spec`, or reuse the task of that name when it holds the same data."""
    try:
        existing = registry.task(spec.name)
    except RegistryError:
        return registry.register_task(spec)
    if existing.fingerprint != spec.fingerprint:
        raise RegistryError(
            f"task '{spec.name}' already exists with other data; use another --store for the demo"
        )
    return existing


def run_demo(registry: AdapterRegistry, config: TrainConfig = DEMO_CONFIG, show_progress: bool = False,
             on_task=None) -> DemoResult:
    data_dir = demo_data_dir(registry)
    specs = write_demo_suite(data_dir)
    for spec in specs:
        ensure_registered(registry, spec)
    results = []
    for spec in specs:
        if on_task is not None:
            on_task(spec)
        results.append(train_task(registry, spec.name, config, show_progress=show_progress))
    return DemoResult(results, data_dir)
