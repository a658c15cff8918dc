"""The baselines (seq-lora, seq-ft, replay, ewc, mtl) and adapter kinds as sequence methods, on one store."""
from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from continual.methods.ewc import ewc_penalty
from continual.methods.mixed_batches import replay_batches
from continual.sequence import SequenceSpec, run_sequence

CONFIG = {"max_epochs": 1, "batch_size": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reg(new_registry):
    return new_registry("baseline-store")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from tasks.demo import write_demo_suite

    return write_demo_suite(tmp_path_factory.mktemp("baseline-data"), sizes={"train": 40, "dev": 10, "test": 20})


def run(reg, demo_files, base, method, prefix, n=2, **config):
    names = []
    for spec in demo_files[:n]:
        spec = dataclasses.replace(spec, name=f"{prefix}-{spec.name}")
        reg.register_task(spec)
        names.append(spec.name)
    spec = SequenceSpec(name=prefix, tasks=tuple(names), method=method, config={**CONFIG, **config},
                        base_model=str(base))
    return names, run_sequence(reg, spec)


# -- pure parts ------------------------------------------------------------------------------------------------------
def test_ewc_penalty_by_hand():
    p = torch.tensor([1.0, 2.0])
    # two earlier tasks: (lam/2) * [F1·(p-a1)² + F2·(p-a2)²] = 5 * [(1·0² + 2·1²) + (3·1² + 0·0²)] = 25
    anchors = [[torch.tensor([1.0, 1.0])], [torch.tensor([0.0, 2.0])]]
    fishers = [[torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 0.0])]]
    assert float(ewc_penalty([p], anchors, fishers, lam=10.0)) == pytest.approx(25.0)
    assert float(ewc_penalty([p], [[p.clone()]], [[torch.ones(2)]], lam=10.0)) == 0.0  # at the anchor
    assert float(ewc_penalty([p], [], [], lam=10.0)) == 0.0  # no earlier task


def test_replay_batches_mix_each_new_batch_with_distinct_buffered_examples():
    n_current, n_buffer = 37, 10
    batches = replay_batches(n_current, n_buffer, batch_size=8, replay_batch_size=4, seed=0)
    assert len(batches) == 5
    current = [i for b in batches for i in b if i < n_current]
    assert sorted(current) == list(range(n_current))  # every new example once per epoch
    for batch in batches:
        replayed = [i for i in batch if i >= n_current]
        assert len(replayed) == 4 and len(set(replayed)) == 4 and all(i < n_current + n_buffer for i in replayed)
    counts = Counter(i for b in batches for i in b if i >= n_current)
    assert max(counts.values()) - min(counts.values()) <= 1  # the buffer is walked evenly
    assert replay_batches(5, 2, 4, 16, seed=1)[0][-2:] in ([5, 6], [6, 5])  # never more than the buffer
    assert sorted(map(len, replay_batches(5, 0, 4, 4, seed=1))) == [1, 4]  # empty buffer: new examples only


# -- the shared baselines ---------------------------------------------------------------------------------------------
def test_seq_lora_trains_one_lora_through_every_task(reg, demo_files, tiny_base_dir):
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    from modeling.kinds import get_kind

    names, result = run(reg, demo_files, tiny_base_dir, "seq-lora", "sl")
    model = result.model
    layers = [m for m in model.encoder.modules() if isinstance(m, LoraLayer)]
    assert layers and all(l.lora_A[names[1]] is l.lora_A[names[0]] for l in layers)  # one tensor, not copies
    assert model.heads[names[0]] is not model.heads[names[1]]
    # task 0's version holds the shared LoRA as it was after task 0; task 1 moved it since
    saved = load_file(str(reg.local_adapter_dir(reg.resolve(f"{names[0]}:1")) / "adapter_model.safetensors"))
    now = get_kind("lora").slot_state_dict(model, names[0])
    assert any(not torch.equal(saved[f"adapter.{k}"], v) for k, v in now.items())
    assert result.matrix.shared == [f"{names[0]}:1", f"{names[1]}:1"]
    tags = reg.store.get_run(result.parent_run_id).data.tags
    assert tags["continual.registered"] == "true" and "shared adapter" in tags["continual.registration"]


def test_seq_ft_fine_tunes_one_encoder_copy(reg, demo_files, tiny_base_dir):
    names, result = run(reg, demo_files, tiny_base_dir, "seq-ft", "sf")
    copies = result.model.adapter_modules["full"]
    assert copies[names[0]] is copies[names[1]] and len({id(m) for m in copies.values()}) == 1
    assert reg.resolve(names[1], include_experiments=True).kind == "full"
    assert result.metrics["acc"] is not None and result.R[0][1] is not None


def test_ewc_consolidates_with_a_fisher_per_task(reg, demo_files, tiny_base_dir):
    names, result = run(reg, demo_files, tiny_base_dir, "ewc", "ew", ewc_lambda=100.0, fisher_samples=8)
    nested = reg.store.search_runs(f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert len(nested) == 2
    for r in nested:
        assert r.data.params["ewc_lambda"] == "100.0" and r.data.params["fisher_samples"] == "8"
        assert r.data.metrics["ewc/fisher_mean"] > 0
    assert result.metrics["bwt"] is not None


def test_replay_keeps_a_buffer_and_trains_old_heads(reg, demo_files, tiny_base_dir):
    names, result = run(reg, demo_files, tiny_base_dir, "replay", "rp", n=3, replay_per_task=12)
    nested = sorted(reg.store.search_runs(f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"),
                    key=lambda r: r.info.start_time)
    assert [r.data.params["replay_buffer_examples"] for r in nested] == ["0", "12", "24"]
    assert all(r.data.params["replay_batch_size"] == "16" for r in nested)
    # the first head kept training through replay after its version was registered
    from safetensors.torch import load_file

    saved = load_file(str(reg.local_adapter_dir(reg.resolve(names[0], include_experiments=True)) / "adapter_model.safetensors"))
    assert not torch.equal(saved["head.weight"], result.model.heads[names[0]].weight)


def test_mtl_fills_only_the_last_row_and_registers_nothing(reg, demo_files, tiny_base_dir):
    names, result = run(reg, demo_files, tiny_base_dir, "mtl", "mt")
    assert result.R[0] == [None, None] and all(v is not None for v in result.R[1])
    assert result.metrics["acc"] is not None
    assert result.metrics["bwt"] is None and result.metrics["fwt"] is None and result.metrics["forgetting"] is None
    assert all(reg.versions(t) == [] for t in names)
    tags = reg.store.get_run(result.parent_run_id).data.tags
    assert tags["continual.registered"] == "false"
    history = reg.store.metric_history(result.parent_run_id, f"acc/{names[0]}")
    assert [m.step for m in history] == [1]


# -- adapter kinds as methods ----------------------------------------------------------------------------------------
def test_shared_b_lora_shares_one_b_and_records_shared_versions(reg, demo_files, tiny_base_dir):
    names, result = run(reg, demo_files, tiny_base_dir, "shared-b-lora", "sb", train_shared=False)
    assert result.matrix.shared == ["shared-b-lora--default:1", "shared-b-lora--default:2"]
    # B frozen after the first task: the first task's outputs cannot move, so BWT is exactly 0
    assert result.metrics["bwt"] == 0.0
    assert reg.resolve(names[1], include_experiments=True).kind == "shared-b-lora"


def test_shared_b_lora_with_b_trained_moves_the_b_earlier_tasks_use(reg, demo_files, tiny_base_dir):
    from pathlib import Path

    from safetensors.torch import load_file

    from modeling.kinds import get_kind

    names, result = run(reg, demo_files, tiny_base_dir, "shared-b-lora", "sbt", train_shared=True)
    kind = get_kind("shared-b-lora")
    first, second = (kind.shared_parameters(result.model, t) for t in names)
    assert first.keys() == second.keys() and all(first[k] is second[k] for k in first)  # one B per layer
    name, number = result.matrix.shared[0].rsplit(":", 1)  # the B registered after task 0
    folder = Path(reg.store.download(reg.store.get_version(name, int(number)).source))
    after_first = load_file(str(folder / "shared_model.safetensors"))
    now = kind.shared_state_dict(result.model, names[0])
    assert any(not torch.equal(after_first[k], v) for k, v in now.items())  # task 1 moved task 0's B


def test_orthogonality_loss_by_hand():
    from continual.methods.olora import orthogonality_loss

    a_new = {"q": torch.tensor([[1.0, 0.0, 0.0]])}  # r=1, k=3
    same = {"q": torch.tensor([[2.0, 0.0, 0.0]])}  # overlap 2 -> 4
    orthogonal = {"q": torch.tensor([[0.0, 3.0, 0.0]]), "v": torch.tensor([[5.0, 5.0, 5.0]])}  # "v": not shared
    assert float(orthogonality_loss(a_new, [same])) == pytest.approx(4.0)
    assert float(orthogonality_loss(a_new, [orthogonal])) == 0.0
    assert float(orthogonality_loss(a_new, [same, same])) == pytest.approx(8.0)
    assert float(orthogonality_loss(a_new, [])) == 0.0


def test_o_lora_sums_frozen_earlier_loras_and_pushes_the_new_one_orthogonal(reg, demo_files, tiny_base_dir):
    from continual.methods.olora import orthogonality_loss
    from modeling.kinds import get_kind

    def overlap(result, names):
        lora = get_kind("lora")
        return float(orthogonality_loss(lora.down_projections(result.model, names[1]),
                                        [lora.down_projections(result.model, names[0])]))

    free_names, free = run(reg, demo_files, tiny_base_dir, "o-lora", "olora0", olora_lambda=0.0, learning_rate=5e-2)
    names, result = run(reg, demo_files, tiny_base_dir, "o-lora", "olora", olora_lambda=50.0, learning_rate=5e-2)
    # the penalty is applied: the second task's A overlaps the first's far less than without it
    assert overlap(result, names) < 0.2 * overlap(free, free_names)
    # the earlier LoRA stays switched on (summed) while the later task is evaluated, and was frozen
    assert result.model.slots[names[1]].stacked == (names[0],)
    assert result.model.slots[names[0]].stacked == (names[1],)
    assert result.matrix.versions == [[None, None], [None, None]]  # nothing registered
    assert reg.versions(names[0]) == []
