"""Every kind: safetensors save -> load round trip, per-task counts vs formulas, kinds side by side."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling.kinds import (
    KINDS, BottleneckConfig, FullConfig, KindError, PrefixConfig, PromptConfig, SharedLoraConfig, TaskEmbeddingConfig,
    get_kind,
)
from modeling.model import AdapterModel, mean_pool
from tiny import kind_configs, perturb, tiny_model

LABELS = ("a", "b", "c")


pytestmark = pytest.mark.usefixtures("one_thread")


configs = kind_configs


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


def test_all_kinds_are_registered():
    assert sorted(KINDS) == sorted(configs())


@pytest.mark.parametrize("kind", sorted(configs()))
def test_save_load_round_trip(kind, tmp_path):
    k = get_kind(kind)
    model = tiny_model()
    model.add_slot("task", kind, configs()[kind], LABELS)
    perturb(model, "task", seed=3)
    ids, mask = batch()
    with torch.no_grad():
        expected = model("task", ids, mask)
    save_file(k.slot_state_dict(model, "task"), tmp_path / "adapter.safetensors")
    save_file({k2: v for k2, v in model.heads["task"].state_dict().items()}, tmp_path / "head.safetensors")
    shared = k.shared_state_dict(model, "task")
    if shared:
        save_file(shared, tmp_path / "shared.safetensors")

    fresh = tiny_model()
    fresh.add_slot("task__v1", kind, configs()[kind], LABELS)  # another slot name
    k.load_slot_state(fresh, "task__v1", load_file(tmp_path / "adapter.safetensors"))
    if shared:
        k.load_shared_state(fresh, "task__v1", load_file(tmp_path / "shared.safetensors"))
    fresh.heads["task__v1"].load_state_dict(load_file(tmp_path / "head.safetensors"))
    with torch.no_grad():
        got = fresh("task__v1", ids, mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(configs()))
def test_per_task_count_matches_trainable_parameters(kind):
    k = get_kind(kind)
    model = tiny_model()
    config = configs()[kind]
    model.add_slot("t1", kind, config, LABELS)
    if k.has_shared_part:  # a later task of the group with the shared part frozen
        model.add_slot("t2", kind, type(config)(**{**config.to_dict(), "train_shared": False}), LABELS)
        counted = sum(p.numel() for p in k.trainable_parameters(model, "t2"))
        first = sum(p.numel() for p in k.trainable_parameters(model, "t1"))
        if kind == "hyper-lora":  # the first task trains its bank column only (A frozen, other columns unused)
            bank = k.layers(model).shared["default"]
            assert first == counted + sum(p.numel() for p in bank.column(0))
        else:
            assert first == counted + k.shared_parameter_count(config, model.encoder.config)
    else:
        counted = sum(p.numel() for p in k.trainable_parameters(model, "t1"))
    assert counted == k.per_task_parameter_count(config, model.encoder.config) > 0


def test_per_task_formulas_by_hand():
    base = tiny_model().encoder.config  # H=32, F=64, L=2, vocab 100, 512 positions, 2 token types
    H, F, L = 32, 64, 2
    count = lambda kind, cfg: get_kind(kind).per_task_parameter_count(cfg, base)  # noqa: E731
    assert count("shared-b-lora", SharedLoraConfig(r=2)) == 2 * L * 2 * H  # A_i per query and value
    assert count("shared-a-lora", SharedLoraConfig(r=2)) == 2 * L * H * 2  # B_i per query and value
    assert count("task-embedding", TaskEmbeddingConfig(task_embedding_dim=4)) == 4
    assert count("adapter", BottleneckConfig(bottleneck=8)) == 2 * L * (2 * H * 8 + 8 + H)
    assert count("prefix", PrefixConfig(num_virtual_tokens=3)) == 3 * 2 * L * H
    assert count("prompt", PromptConfig(num_virtual_tokens=3)) == 3 * H
    embeddings = (100 + 512 + 2) * H + 2 * H
    assert count("full", FullConfig()) == embeddings + L * (4 * H * H + 2 * H * F + 9 * H + F) + H * H + H
    assert get_kind("task-embedding").shared_parameter_count(TaskEmbeddingConfig(bottleneck=8, task_embedding_dim=4), base) \
        == 2 * L * (H * 8 + 8 + (8 + 4) * H + H)


def test_kinds_coexist_and_activating_one_disables_the_others(tmp_path):
    kinds = ["lora", "shared-b-lora", "task-embedding", "adapter", "prefix", "prompt", "full", "shared-a-lora"]
    model = tiny_model()
    for i, kind in enumerate(kinds):
        model.add_slot(f"s{i}", kind, configs()[kind], LABELS)
        perturb(model, f"s{i}", seed=10 + i)
    ids, mask = batch()
    with torch.no_grad():
        together = {kind: model(f"s{i}", ids, mask) for i, kind in enumerate(kinds)}
        again = model(f"s{0}", ids, mask)  # switching back and forth changes nothing
    torch.testing.assert_close(again, together["lora"], rtol=0, atol=0)
    for i, kind in enumerate(kinds):  # each slot alone in a model of its own gives the same logits
        k = get_kind(kind)
        alone = tiny_model()
        alone.add_slot("x", kind, configs()[kind], LABELS)
        k.load_slot_state(alone, "x", k.slot_state_dict(model, f"s{i}"))
        if k.has_shared_part:
            k.load_shared_state(alone, "x", k.shared_state_dict(model, f"s{i}"))
        alone.heads["x"].load_state_dict(model.heads[f"s{i}"].state_dict())
        with torch.no_grad():
            torch.testing.assert_close(alone("x", ids, mask), together[kind], msg=f"{kind} differs when not alone")


def test_hooks_on_a_shared_base_encoder_go_away_with_their_model():
    import gc

    first = tiny_model()
    encoder = first.encoder  # like load_base_model's encoder: shared by every AdapterModel of the process
    for i, kind in enumerate(["shared-b-lora", "task-embedding", "adapter", "prefix"]):
        first.add_slot(f"s{i}", kind, configs()[kind], LABELS)
        perturb(first, f"s{i}", seed=i)
    first.activate("s0")  # left active, then the model is dropped
    count = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in encoder.modules())  # noqa: E731
    with_hooks = count()
    ids, mask = batch()
    del first
    gc.collect()
    second = AdapterModel(encoder).eval()
    second.add_slot("x", "adapter", configs()["adapter"], LABELS)
    with torch.no_grad():
        out = second.embed("x", ids, mask)  # the first model's hooks remove themselves here
        second.activate(None)
        plain = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, mean_pool(plain, mask))  # nothing of the dead model's slots leaked in
    assert count() < with_hooks


@pytest.mark.parametrize("kind,config", [
    ("task-embedding", lambda **kw: TaskEmbeddingConfig(bottleneck=8, task_embedding_dim=4, **kw)),
    ("shared-b-lora", lambda **kw: SharedLoraConfig(r=2, **kw)),
])
def test_shared_lr_scale_slows_only_a_later_tasks_shared_part(kind, config):
    """shared_lr_scale: with train_shared, a later task trains the group's shared part at LR x the factor;
    the group's first task (which creates it) and every task's own part keep the full LR."""
    from continual.config import TrainConfig
    from continual.module import AdapterClassifier

    model = tiny_model()
    for slot in ("t1", "t2"):
        model.add_slot(slot, kind, config(train_shared=True, shared_lr_scale=0.1), ("a", "b"))
    shared = {id(p) for p in get_kind(kind).layers(model).shared["default"].parameters()}

    def lr_of(slot: str) -> dict[int, float]:
        optimizer = AdapterClassifier(model, slot, TrainConfig(learning_rate=1e-3), total_steps=4) \
            .configure_optimizers()["optimizer"]
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # group 0 at the base LR (unfreezing reads it)
        return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}

    assert all(lr == pytest.approx(1e-3) for lr in lr_of("t1").values())
    later = lr_of("t2")
    assert shared <= set(later)
    assert all(later[i] == pytest.approx(1e-4 if i in shared else 1e-3) for i in later)
    with pytest.raises(KindError, match=r"shared_lr_scale=0 must be in \(0, 1\]"):
        config(shared_lr_scale=0)
