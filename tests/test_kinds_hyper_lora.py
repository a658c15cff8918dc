"""hyper-lora: a task embedding that generates the task's LoRA; the output regulariser keeps earlier tasks."""
import dataclasses

import pytest
import torch

from modeling.kinds import HyperLoraConfig, KindError, get_kind
from modeling.model import AdapterModel, mean_pool
from tiny import one_line, tiny_model

LABELS = ("a", "b")
CFG = HyperLoraConfig(r=2, lora_dropout=0.0, task_embedding_dim=4)
KIND = get_kind("hyper-lora")

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**changes) -> HyperLoraConfig:
    return dataclasses.replace(CFG, **changes)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, 4:] = 0
    return ids, mask


def train(model: AdapterModel, slot: str, steps: int = 15, lr: float = 3e-2, labels=(0, 1, 0, 1)) -> None:
    """Adam on cross-entropy plus the kind's regulariser, as fit_slot trains."""
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters(slot), lr=lr)
    reg = model.begin_training(slot)
    ids, mask = batch()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(slot, ids, mask), torch.tensor(labels))
        (loss + (reg() if reg is not None else 0)).backward()
        opt.step()
    model.eval()


def delta_weights(model: AdapterModel, slot: str) -> dict[str, torch.Tensor]:
    layers = KIND.layers(model)
    gen = layers.shared[layers.group_of(slot)]
    with torch.no_grad():
        return gen.delta_weights(layers.embeddings[slot], CFG.lora_alpha / CFG.r)


def drift(before: dict, after: dict) -> float:
    return float(sum((after[k] - before[k]).pow(2).sum() for k in before) / sum(v.pow(2).sum() for v in before.values()))


def test_first_task_starts_as_the_base_encoder_and_learns():
    model = tiny_model()
    ids, mask = batch()
    with torch.no_grad():
        base = mean_pool(model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    model.add_slot("t1", "hyper-lora", cfg(), LABELS)
    with torch.no_grad():
        torch.testing.assert_close(model.embed("t1", ids, mask), base)  # B = G_B z = 0 at the start
    assert sorted(KIND.layers(model).site_names.values()) == [
        f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]  # LoRA's sites
    train(model, "t1")
    with torch.no_grad():
        assert not torch.allclose(model.embed("t1", ids, mask), base)  # the generated LoRA is no longer zero


def test_a_later_task_starts_on_a_free_column_of_the_bank():
    """B = 0 for a new task (a bank column of its own), in a sequence's model and after the shared part is loaded
    in a new one (the CLI), while the bank holds the earlier task's LoRA; with every column used it takes the
    least-used direction."""
    model = tiny_model()
    ids, mask = batch()
    with torch.no_grad():
        base = mean_pool(model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    model.add_slot("t1", "hyper-lora", cfg(task_embedding_dim=2), LABELS)
    train(model, "t1")
    model.add_slot("t2", "hyper-lora", cfg(task_embedding_dim=2), LABELS)

    def moved(m, slot):  # how far the slot's embedding is from the base encoder's, relative to t1's
        with torch.no_grad():
            return float((m.embed(slot, ids, mask) - base).norm() / (model.embed("t1", ids, mask) - base).norm())

    assert moved(model, "t2") == 0.0
    fresh = tiny_model()
    fresh.add_slot("t2", "hyper-lora", cfg(task_embedding_dim=2), LABELS)
    assert moved(fresh, "t2") == 0.0  # its own bank is empty
    KIND.load_shared_state(fresh, "t2", KIND.shared_state_dict(model, "t1"))  # attach, then load: as `continual train`
    assert moved(fresh, "t2") == 0.0
    torch.testing.assert_close(KIND.layers(model).embeddings["t2"].detach(), torch.tensor([0.0, 1.0]))  # column 2
    train(model, "t2", labels=(1, 0, 1, 0))
    model.add_slot("t3", "hyper-lora", cfg(task_embedding_dim=2), LABELS)  # two tasks fill a bank of width 2
    assert moved(model, "t3") > 0.0


def test_counts_match_the_parameters():
    model = tiny_model()
    model.add_slot("t1", "hyper-lora", cfg(), LABELS)
    layers = KIND.layers(model)
    assert KIND.per_task_parameter_count(cfg(), model.encoder.config) == layers.embeddings["t1"].numel() == 4
    shared = sum(p.numel() for p in layers.shared["default"].parameters())
    assert KIND.shared_parameter_count(cfg(), model.encoder.config) == shared


def test_a_task_on_a_column_of_its_own_leaves_earlier_tasks_bit_identical():
    """A frozen, each task trains only its own column: nothing to regularise, earlier tasks answer exactly as before."""
    model = tiny_model()
    ids, mask = batch()
    model.add_slot("t1", "hyper-lora", cfg(), LABELS)
    assert model.begin_training("t1") is None  # the group's first task: nothing to keep
    A = {k: a.detach().clone() for k, a in KIND.layers(model).shared["default"].A.items()}
    train(model, "t1")
    with torch.no_grad():
        before = model("t1", ids, mask)
    model.add_slot("t2", "hyper-lora", cfg(), LABELS)
    assert model.begin_training("t2") is None
    train(model, "t2", labels=(1, 0, 1, 0))
    with torch.no_grad():
        torch.testing.assert_close(model("t1", ids, mask), before, rtol=0, atol=0)
    layers = KIND.layers(model)
    assert layers.columns == {"t1": 0, "t2": 1}
    assert float(layers.embeddings["t2"].detach()[0]) != 0.0  # t2 mixes in t1's column (read-only) as it trains
    for k, a in layers.shared["default"].A.items():
        torch.testing.assert_close(a.detach(), A[k], rtol=0, atol=0)  # A stays as drawn


def test_a_warm_start_begins_at_its_sources_lora_and_trains_a_column_of_its_own():
    ids, mask = batch()
    model = tiny_model()
    model.add_slot("t1", "hyper-lora", cfg(), LABELS)
    train(model, "t1")
    source = KIND.slot_state_dict(model, "t1")
    shared = KIND.shared_state_dict(model, "t1")
    with torch.no_grad():
        t1_out = model.embed("t1", ids, mask)
    # as `continual train --init-from t1` does in a new process: attach, copy e_1, then load the group's bank
    fresh = tiny_model()
    fresh.add_slot("t2", "hyper-lora", cfg(), LABELS)
    KIND.load_slot_state(fresh, "t2", source)
    KIND.load_shared_state(fresh, "t2", shared)
    layers = KIND.layers(fresh)
    assert layers.columns["t2"] == 1  # not t1's column, though the bank was empty when t2 was attached
    assert fresh.begin_training("t2") is None  # a column of its own: nothing to regularise
    assert float(layers.embeddings["t2"].detach()[1]) == 1.0  # its column enters e_2, so it gets a gradient
    with torch.no_grad():
        torch.testing.assert_close(fresh.embed("t2", ids, mask), t1_out)  # still exactly t1's LoRA
    train(fresh, "t2", labels=(1, 0, 1, 0))
    assert any(bool(col.detach().any()) for col in layers.shared["default"].column(1))


def test_regulariser_exists_only_where_an_earlier_task_can_be_moved():
    model = tiny_model()
    model.add_slot("t1", "hyper-lora", cfg(task_embedding_dim=1), LABELS)
    train(model, "t1")
    model.add_slot("t2", "hyper-lora", cfg(task_embedding_dim=1), LABELS)  # the bank is full: t2 shares t1's column
    model.add_slot("t3", "hyper-lora", cfg(task_embedding_dim=1, train_shared=False), LABELS)
    model.add_slot("t4", "hyper-lora", cfg(task_embedding_dim=1, output_reg=0.0), LABELS)
    assert KIND.layers(model).columns["t2"] == 0
    assert model.begin_training("t3") is None  # trains e_i only: the bank, and so t1, cannot move
    assert model.begin_training("t4") is None  # switched off
    reg = model.begin_training("t2")
    assert float(reg().detach()) == 0.0  # targets are the bank as training starts
    with torch.no_grad():
        KIND.layers(model).shared["default"].column(0)[0].add_(0.01)
    assert float(reg().detach()) > 0


def test_output_regulariser_keeps_an_earlier_task_on_a_shared_column():
    """Fails when the regulariser is not applied: the earlier task's generated ΔW then moves much further."""
    drifts = {}
    for strength in (0.0, 100.0):
        torch.manual_seed(0)
        model = tiny_model()
        model.add_slot("t1", "hyper-lora", cfg(task_embedding_dim=1), LABELS)
        train(model, "t1")
        before = delta_weights(model, "t1")
        model.add_slot("t2", "hyper-lora", cfg(task_embedding_dim=1, output_reg=strength), LABELS)
        train(model, "t2", labels=(1, 0, 1, 0))
        drifts[strength] = drift(before, delta_weights(model, "t1"))
    assert drifts[0.0] > 0.05  # unprotected, task 2's training rewrites task 1's weights
    assert drifts[100.0] < drifts[0.0] / 10


def test_anchors_travel_with_the_shared_part():
    """A new process (the CLI) loads the shared part with the tasks that trained it (not the frozen ones) and
    keeps them when it must share their column."""
    model = tiny_model()
    model.add_slot("t1", "hyper-lora", cfg(task_embedding_dim=1), LABELS)
    train(model, "t1")
    model.add_slot("t2", "hyper-lora", cfg(task_embedding_dim=1, train_shared=False), LABELS)
    state = KIND.shared_state_dict(model, "t2")
    assert sorted(k for k in state if k.startswith("anchor.")) == ["anchor.t1"]  # t2 left the bank alone
    torch.testing.assert_close(state["anchor.t1"], KIND.layers(model).embeddings["t1"].detach())

    fresh = tiny_model()
    fresh.add_slot("t5", "hyper-lora", cfg(task_embedding_dim=1), LABELS)
    KIND.load_shared_state(fresh, "t5", state)
    assert KIND.shared_state_dict(fresh, "t5").keys() == state.keys() | {"anchor.t5"}
    reg = fresh.begin_training("t5")
    assert reg is not None and float(reg().detach()) == 0.0
    with torch.no_grad():
        before = KIND.layers(model).shared["default"].delta_weights(state["anchor.t1"], CFG.lora_alpha / CFG.r)
    train(fresh, "t5", labels=(1, 0, 1, 0))
    with torch.no_grad():
        after = KIND.layers(fresh).shared["default"].delta_weights(state["anchor.t1"], CFG.lora_alpha / CFG.r)
    assert drift(before, after) < 0.05


def test_bad_settings_and_foreign_shared_weights_get_one_line():
    assert "task_embedding_dim=0" in one_line(HyperLoraConfig, task_embedding_dim=0)
    assert "output_reg=-1" in one_line(HyperLoraConfig, output_reg=-1)
    model = tiny_model()
    model.add_slot("t1", "hyper-lora", cfg(), LABELS)
    state = KIND.shared_state_dict(model, "t1")
    wrong = {k: v for k, v in state.items() if "bank" not in k}
    assert "missing" in one_line(KIND.load_shared_state, model, "t1", wrong)
    assert "anchor 'x'" in one_line(KIND.load_shared_state, model, "t1", {**state, "anchor.x": torch.zeros(7)})
    with pytest.raises(KindError):
        model.add_slot("t2", "hyper-lora", cfg(task_embedding_dim=8), LABELS)  # the group's bank has d_e=4
    wider = tiny_model()  # a new process asking for another width than the registered group's
    wider.add_slot("t2", "hyper-lora", cfg(task_embedding_dim=8), LABELS)
    assert "has task_embedding_dim=4, this task asks for task_embedding_dim=8" in one_line(
        KIND.load_shared_state, wider, "t2", state)
