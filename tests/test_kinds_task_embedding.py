"""task-embedding and adapter kinds: identity at start, shared f_in/f_out, e_i per task, isolation."""
import pytest
import torch

from modeling.kinds import BottleneckConfig, KindError, TaskEmbeddingConfig, get_kind
from modeling.model import AdapterModel, mean_pool
from tiny import tiny_model

LABELS = ("a", "b")


pytestmark = pytest.mark.usefixtures("one_thread")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, 4:] = 0
    return ids, mask


def base_pooled(model: AdapterModel, ids, mask) -> torch.Tensor:
    model.activate(None)
    with torch.no_grad():
        return mean_pool(model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def train(model: AdapterModel, slot: str, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(slot), lr=1e-2)
    ids, mask = batch()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(slot, ids, mask), torch.tensor([0, 1, 0, 1])).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("kind,config", [("task-embedding", TaskEmbeddingConfig(bottleneck=8, task_embedding_dim=4)),
                                         ("adapter", BottleneckConfig(bottleneck=8))])
def test_new_adapter_is_the_identity(kind, config):
    model = tiny_model()
    ids, mask = batch()
    expected = base_pooled(model, ids, mask)
    model.add_slot("t", kind, config, LABELS)
    with torch.no_grad():
        torch.testing.assert_close(model.embed("t", ids, mask), expected)
    # Houlsby placement: one adapter after attention.output.dense and one after output.dense per layer.
    names = sorted(model.adapter_modules[kind].site_names.values())
    assert names == ["encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense",
                     "encoder.layer.1.attention.output.dense", "encoder.layer.1.output.dense"]


def test_shared_bottleneck_is_shared_and_embedding_is_per_task():
    model = tiny_model()
    cfg = dict(bottleneck=8, task_embedding_dim=4)
    model.add_slot("t1", "task-embedding", TaskEmbeddingConfig(**cfg), LABELS)
    model.add_slot("t2", "task-embedding", TaskEmbeddingConfig(**cfg), LABELS)
    model.add_slot("t3", "task-embedding", TaskEmbeddingConfig(**cfg, train_shared=True), LABELS)
    store = model.adapter_modules["task-embedding"]
    assert list(store.shared) == ["default"]  # one f_in / f_out per site for all tasks
    k = get_kind("task-embedding")
    shared = {id(p) for p in store.shared["default"].parameters()}
    p1, p2, p3 = ({id(p) for p in k.trainable_parameters(model, t)} for t in ("t1", "t2", "t3"))
    assert shared <= p1 & p3  # the group's first task trains the shared part, and so does train_shared=true
    # by default a later task trains only its own e_i: earlier tasks keep answering as they did
    assert p2 == {id(store.embeddings["t2"])}
    assert store.embeddings["t1"] is not store.embeddings["t2"]


def test_a_later_task_embedding_moves_every_site_in_d_e_directions():
    """With the shared part frozen after the group's first task, a later task trains only e_i: the sites'
    outputs must then depend on e_i through a full-rank W_e (a zero-initialised W_e ends up rank one after
    the first task, and later tasks could only scale one direction per site)."""
    model = tiny_model()
    d_e = 4
    model.add_slot("t1", "task-embedding", TaskEmbeddingConfig(bottleneck=8, task_embedding_dim=d_e), LABELS)
    store = model.adapter_modules["task-embedding"]
    assert torch.equal(store.embeddings["t1"].detach(), torch.zeros(d_e))  # identity at the start
    ids, mask = batch()
    k = get_kind("task-embedding")
    params = k.trainable_parameters(model, "t1")
    optimizer = torch.optim.SGD(params, lr=0.5)
    for _ in range(3):  # the first task trains the shared part with its own e_1
        optimizer.zero_grad()
        model.embed("t1", ids, mask).pow(2).sum().backward()
        optimizer.step()
    for site in store.shared["default"].values():
        w_e = site.f_out.weight[:, 8:].detach()
        assert torch.linalg.matrix_rank(w_e) == d_e


def test_task_embedding_conditions_the_output_and_can_be_copied():
    model = tiny_model()
    cfg = dict(bottleneck=8, task_embedding_dim=4)
    model.add_slot("t1", "task-embedding", TaskEmbeddingConfig(**cfg), LABELS)
    train(model, "t1")  # f_out leaves zero
    model.add_slot("t2", "task-embedding", TaskEmbeddingConfig(**cfg), LABELS)
    ids, mask = batch()
    with torch.no_grad():
        e1, e2 = model.embed("t1", ids, mask), model.embed("t2", ids, mask)
    assert not torch.allclose(e1, e2)  # same shared layers, different e_i
    get_kind("task-embedding").init_task_embedding_from(model, "t2", "t1")
    with torch.no_grad():
        torch.testing.assert_close(model.embed("t2", ids, mask), e1)
    with pytest.raises(KindError, match="no task-embedding adapter"):
        get_kind("task-embedding").init_task_embedding_from(model, "t2", "nope")


def test_frozen_shared_layers_leave_task1_bit_identical():
    model = tiny_model()
    cfg = dict(bottleneck=8, task_embedding_dim=4, train_shared=False)
    model.add_slot("t1", "task-embedding", TaskEmbeddingConfig(**cfg), LABELS)
    train(model, "t1")  # the group's first task trains f_in / f_out anyway
    ids, mask = batch()
    with torch.no_grad():
        before = model("t1", ids, mask).clone()
    model.add_slot("t2", "task-embedding", TaskEmbeddingConfig(**cfg), LABELS)
    assert len(get_kind("task-embedding").trainable_parameters(model, "t2")) == 1  # only e_2
    e2 = model.adapter_modules["task-embedding"].embeddings["t2"].detach().clone()
    train(model, "t2")
    with torch.no_grad():
        assert torch.equal(model("t1", ids, mask), before)
    assert not torch.equal(model.adapter_modules["task-embedding"].embeddings["t2"], e2)


def test_group_settings_mismatch_and_validation():
    model = tiny_model()
    model.add_slot("t1", "task-embedding", TaskEmbeddingConfig(bottleneck=8), LABELS)
    with pytest.raises(KindError, match=r"bottleneck=8.*bottleneck=16"):
        model.add_slot("t2", "task-embedding", TaskEmbeddingConfig(bottleneck=16), LABELS)
    model.add_slot("t3", "task-embedding", TaskEmbeddingConfig(bottleneck=16, share_group="g2"), LABELS)
    with pytest.raises(KindError, match="--set activation="):
        TaskEmbeddingConfig(activation="swish")
    with pytest.raises(KindError, match="--set task_embedding_dim="):
        TaskEmbeddingConfig(task_embedding_dim=0)
    with pytest.raises(KindError, match="--set bottleneck="):
        BottleneckConfig(bottleneck=0)
    with pytest.raises(KindError, match="not found in the base model"):
        tiny_model().add_slot("t", "adapter", BottleneckConfig(target_modules="nothing_here"), LABELS)


def test_adapter_slots_are_independent():
    model = tiny_model()
    model.add_slot("t1", "adapter", BottleneckConfig(bottleneck=8), LABELS)
    train(model, "t1")
    ids, mask = batch()
    with torch.no_grad():
        before = model("t1", ids, mask).clone()
    model.add_slot("t2", "adapter", BottleneckConfig(bottleneck=8), LABELS)
    train(model, "t2")
    with torch.no_grad():
        assert torch.equal(model("t1", ids, mask), before)
        assert not torch.allclose(model.embed("t2", ids, mask), base_pooled(model, ids, mask))
