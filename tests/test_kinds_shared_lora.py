"""shared-b-lora / shared-a-lora: equal to peft LoRA for one task, one shared tensor, frozen-B isolation."""
import pytest
import torch

from modeling.kinds import KindError, SharedLoraConfig, get_kind
from modeling.kinds.lora import LoraKindConfig
from modeling.model import AdapterModel, mean_pool
from tiny import tiny_model

LABELS = ("a", "b")


pytestmark = pytest.mark.usefixtures("one_thread")


def base_pooled(model: AdapterModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The frozen base encoder's mean-pooled output, every slot switched off."""
    model.activate(None)
    with torch.no_grad():
        return mean_pool(model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def batch(seed: int = 1, n: int = 4, t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, t - 2:] = 0  # some padding
    return ids, mask


@pytest.mark.parametrize("targets", [None, ["intermediate.dense"]])  # LoRA's default sites; a site with d_out != d_in
@pytest.mark.parametrize("kind", ["shared-b-lora", "shared-a-lora"])
def test_one_task_equals_peft_lora_for_the_same_factors(kind, targets):
    lora_model, shared_model = tiny_model(), tiny_model()
    settings = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
    lora_model.add_slot("t", "lora", LoraKindConfig(**settings), LABELS)
    shared_model.add_slot("t", kind, SharedLoraConfig(**settings), LABELS)
    store = shared_model.adapter_modules[kind]
    g = torch.Generator().manual_seed(2)
    for key, name in store.site_names.items():
        peft_layer = lora_model.encoder.get_submodule(name)
        A, B = store.factors("t", key)  # (r, d_in), (d_out, r)
        with torch.no_grad():
            A.copy_(torch.randn(A.shape, generator=g))
            B.copy_(torch.randn(B.shape, generator=g))
            peft_layer.lora_A["t"].weight.copy_(A)
            peft_layer.lora_B["t"].weight.copy_(B)
    ids, mask = batch()
    with torch.no_grad():
        expected = lora_model.embed("t", ids, mask)
        got = shared_model.embed("t", ids, mask)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, base_pooled(shared_model, ids, mask))  # the delta is not trivially zero


@pytest.mark.parametrize("kind", ["shared-b-lora", "shared-a-lora"])
def test_shared_factor_is_one_tensor_per_group(kind):
    model = tiny_model()
    model.add_slot("t1", kind, SharedLoraConfig(r=2), LABELS)
    model.add_slot("t2", kind, SharedLoraConfig(r=2), LABELS)
    model.add_slot("t3", kind, SharedLoraConfig(r=2, share_group="other"), LABELS)
    k = get_kind(kind)
    s1, s2, s3 = (k.shared_parameters(model, s) for s in ("t1", "t2", "t3"))
    assert s1.keys() == s2.keys() and s1
    for key in s1:
        assert s1[key] is s2[key]  # the very same Parameter object
        assert s1[key] is not s3[key]
        assert s1[key].data_ptr() != s3[key].data_ptr()
    store = model.adapter_modules[kind]
    for key in s1:  # and it is what both tasks compute with
        shared_index = 1 if kind == "shared-b-lora" else 0
        assert store.factors("t1", key)[shared_index] is store.factors("t2", key)[shared_index]


def test_trainable_parameters_follow_train_shared():
    k = get_kind("shared-b-lora")
    model = tiny_model()
    model.add_slot("t1", "shared-b-lora", SharedLoraConfig(r=2, train_shared=False), LABELS)
    model.add_slot("t2", "shared-b-lora", SharedLoraConfig(r=2, train_shared=False), LABELS)
    model.add_slot("t3", "shared-b-lora", SharedLoraConfig(r=2, train_shared=True), LABELS)
    shared = {id(p) for p in k.shared_parameters(model, "t1").values()}
    ids = lambda slot: {id(p) for p in k.trainable_parameters(model, slot)}  # noqa: E731
    assert shared <= ids("t1")  # the group's first task trains B
    assert not shared & ids("t2")  # later tasks with train_shared=False don't
    assert shared <= ids("t3")
    # A B loaded from the registry was trained elsewhere: a first task here trains it only if asked.
    fresh = tiny_model()
    fresh.add_slot("t9", "shared-b-lora", SharedLoraConfig(r=2, train_shared=False), LABELS)
    k.load_shared_state(fresh, "t9", k.shared_state_dict(model, "t1"))
    assert not {id(p) for p in k.shared_parameters(fresh, "t9").values()} & {id(p) for p in k.trainable_parameters(fresh, "t9")}


def _train(model: AdapterModel, slot: str, steps: int = 3) -> None:
    model.train()
    params = model.trainable_parameters(slot)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids, mask = batch(seed=5)
    labels = torch.tensor([0, 1, 0, 1])
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(slot, ids, mask), labels).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("kind", ["shared-b-lora", "shared-a-lora"])
def test_frozen_shared_factor_leaves_task1_bit_identical(kind):
    model = tiny_model()
    model.add_slot("t1", kind, SharedLoraConfig(r=2, train_shared=False), LABELS)
    _train(model, "t1")
    ids, mask = batch()
    with torch.no_grad():
        before = model("t1", ids, mask).clone()
    shared_before = {k: v.clone() for k, v in get_kind(kind).shared_state_dict(model, "t1").items()}
    model.add_slot("t2", kind, SharedLoraConfig(r=2, train_shared=False), LABELS)
    with torch.no_grad():  # a new task starts as the identity: per-task factor zero
        torch.testing.assert_close(model.embed("t2", ids, mask), base_pooled(model, ids, mask))
    own_before = get_kind(kind).slot_state_dict(model, "t2")
    _train(model, "t2")
    with torch.no_grad():
        after = model("t1", ids, mask)
    assert torch.equal(before, after)
    for k, v in get_kind(kind).shared_state_dict(model, "t1").items():
        assert torch.equal(v, shared_before[k])
    own_after = get_kind(kind).slot_state_dict(model, "t2")
    assert any(not torch.equal(own_before[k], own_after[k]) for k in own_before)  # task 2 did learn


def test_training_shared_b_changes_task1():
    model = tiny_model()
    model.add_slot("t1", "shared-b-lora", SharedLoraConfig(r=2), LABELS)
    _train(model, "t1")
    model.add_slot("t2", "shared-b-lora", SharedLoraConfig(r=2, train_shared=True), LABELS)
    ids, mask = batch()
    with torch.no_grad():
        before = model("t1", ids, mask).clone()
    _train(model, "t2")
    with torch.no_grad():
        assert not torch.equal(before, model("t1", ids, mask))  # forgetting is possible, and measured


def test_group_settings_mismatch_is_refused():
    model = tiny_model()
    model.add_slot("t1", "shared-b-lora", SharedLoraConfig(r=4), LABELS)
    with pytest.raises(KindError, match=r"r=4.*r=8.*share_group"):
        model.add_slot("t2", "shared-b-lora", SharedLoraConfig(r=8), LABELS)


def test_config_validation_names_the_fix():
    with pytest.raises(KindError, match="--set r="):
        SharedLoraConfig(r=0)
    with pytest.raises(KindError, match="--set share_group="):
        SharedLoraConfig(share_group="a.b")
    assert SharedLoraConfig(target_modules="query, value").target_modules == ["query", "value"]


def test_coexists_with_peft_lora_on_the_same_linear():
    model = tiny_model()
    model.add_slot("s", "shared-b-lora", SharedLoraConfig(r=2, lora_dropout=0.0), LABELS)
    model.add_slot("l", "lora", LoraKindConfig(r=2, lora_dropout=0.0), LABELS)  # wraps the hooked query/value
    torch.manual_seed(3)
    with torch.no_grad():  # random, not constant: LayerNorm outputs sum to ~0, so A = const gives ΔW x = 0
        for p in get_kind("shared-b-lora").trainable_parameters(model, "s"):
            p.add_(torch.randn_like(p))
    ids, mask = batch()
    with torch.no_grad():
        shared_out = model.embed("s", ids, mask)
        lora_out = model.embed("l", ids, mask)  # LoRA's B is zero: the base output
    torch.testing.assert_close(lora_out, base_pooled(model, ids, mask))
    assert not torch.allclose(shared_out, lora_out)


@pytest.mark.parametrize("name", ["shared-b-lora", "shared-a-lora"])
def test_freeze_shared_keeps_the_drawn_factor_and_every_earlier_task(name):
    """freeze_shared: no task trains the shared factor, not even the group's first; each trains only its own."""
    model = tiny_model()
    ids, mask = batch()
    cfg = dict(r=2, lora_dropout=0.0, freeze_shared=True)
    model.add_slot("t1", name, SharedLoraConfig(**cfg), LABELS)
    kind = get_kind(name)
    shared = {k: p.detach().clone() for k, p in kind.shared_parameters(model, "t1").items()}
    assert {id(p) for p in kind.trainable_parameters(model, "t1")} == {
        id(p) for p in model.adapter_modules[name].per_task["t1"].values()}

    def train(slot: str, labels) -> None:
        opt = torch.optim.Adam(model.trainable_parameters(slot), lr=5e-2)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(slot, ids, mask), torch.tensor(labels)).backward()
            opt.step()

    train("t1", [0, 1, 0, 1])
    with torch.no_grad():
        before = model("t1", ids, mask)
    model.add_slot("t2", name, SharedLoraConfig(**cfg), LABELS)
    train("t2", [1, 0, 1, 0])
    for k, p in kind.shared_parameters(model, "t1").items():
        torch.testing.assert_close(p.detach(), shared[k], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model("t1", ids, mask), before, rtol=0, atol=0)
        assert not torch.allclose(model("t2", ids, mask), before)


def test_shared_b_at_the_ffn_up_projection_stores_half_of_lora_at_query_and_value():
    """The bench's shared-B FFN row: A_i is r·d_in, so r 16 at intermediate.dense (d_in = hidden) stores exactly
    half of LoRA r 8 at query and value (2 sites · 8 · 2·hidden per layer), whatever the FFN's width; B,
    (d_ff, r), is stored once per group.  LoRA's own count matches a dotted site name as peft does."""
    from transformers import BertConfig

    base = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    shared_b, lora = get_kind("shared-b-lora"), get_kind("lora")
    ffn = SharedLoraConfig(r=16, target_modules=["intermediate.dense"])
    assert shared_b.per_task_parameter_count(ffn, base) == 2 * 16 * 32
    assert shared_b.shared_parameter_count(ffn, base) == 2 * 64 * 16
    assert lora.per_task_parameter_count(LoraKindConfig(r=8), base) == 2 * 2 * 8 * (32 + 32)
    assert 2 * shared_b.per_task_parameter_count(ffn, base) == lora.per_task_parameter_count(LoraKindConfig(r=8), base)
    assert lora.per_task_parameter_count(LoraKindConfig(r=16, target_modules=["intermediate.dense"]), base) == (
        2 * 16 * (32 + 64))
