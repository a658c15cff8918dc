"""The adapter-kind contract (modeling/kinds/base.py): a real drop for every kind, tying, the shared-part
methods, LoRA settings checked in one place."""
import dataclasses

import pytest
import torch

from continual.config import ConfigError, TrainConfig
from modeling.kinds import KINDS, AdapterKind, KindError, SharedLoraConfig, SharedPartSettings, get_kind, register_kind
from modeling.kinds.hooks import KIND_HOOK_MARK
from modeling.kinds.lora import LoraKind, LoraKindConfig
from modeling.model import AdapterModel
from tiny import kind_configs, perturb, tiny_model

LABELS = ("a", "b")

pytestmark = pytest.mark.usefixtures("one_thread")


def config(kind: str, **changes):
    return dataclasses.replace(kind_configs()[kind], **changes)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (3, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[2, 3:] = 0
    return ids, mask


def snapshot(model: AdapterModel) -> dict:
    """What drop must restore: modules, parameters, hooks on the encoder, peft's record, encoder outputs."""
    ids, mask = batch()
    # transformers adds hooks of its own on first use of output_hidden_states (prefix init does): count ours
    hooks = sum(getattr(h, KIND_HOOK_MARK, False) for m in model.encoder.modules()
                for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))
    with torch.no_grad():
        out = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.clone()
    return {
        "modules": sorted(n for n, _ in model.named_modules()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "hooks": hooks,
        "peft_config": sorted(getattr(model.encoder, "peft_config", {})),
        "encoder_out": out,
    }


def assert_same(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["parameters"] == before["parameters"]
    assert after["hooks"] == before["hooks"]
    assert after["peft_config"] == before["peft_config"]
    assert torch.equal(after["encoder_out"], before["encoder_out"])  # bit-identical


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_add_then_remove_leaves_a_bare_model_as_it_was(kind):
    model = tiny_model()
    before = snapshot(model)
    model.add_slot("t", kind, config(kind), LABELS)
    perturb(model, "t", seed=1)
    ids, mask = batch()
    with torch.no_grad():
        model("t", ids, mask)  # active while it is removed
    assert sum(p.numel() for p in model.parameters()) > before["parameters"]
    model.remove_slot("t")
    assert_same(before, snapshot(model))
    model.add_slot("t", kind, config(kind), LABELS)  # and the name can be used again
    with torch.no_grad():
        model("t", ids, mask)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_remove_keeps_every_other_slot_exactly(kind):
    """Next to a slot of the same kind (same share group) and slots of two other kinds."""
    model = tiny_model()
    others = {"keep": kind, "other-lora": "lora", "other-adapter": "adapter"}
    for i, (slot, k) in enumerate(others.items()):
        model.add_slot(slot, k, config(k), LABELS)
        perturb(model, slot, seed=10 + i)
    ids, mask = batch()
    model.activate(None)  # every kind off (peft switches a freshly injected adapter on)
    before = snapshot(model)
    with torch.no_grad():
        logits = {slot: model(slot, ids, mask).clone() for slot in others}
    # train_shared=False: "t" must not train the shared part "keep" uses (that is no part of removing it)
    model.add_slot("t", kind, config(kind, **({"train_shared": False} if get_kind(kind).has_shared_part else {})), LABELS)
    perturb(model, "t", seed=3)
    with torch.no_grad():
        model("t", ids, mask)
    model.remove_slot("t")
    model.activate(None)
    assert_same(before, snapshot(model))
    with torch.no_grad():
        for slot in others:
            assert torch.equal(model(slot, ids, mask), logits[slot]), slot


def test_removed_lora_slot_leaves_the_encoder():
    model = tiny_model()
    model.add_slot("a", "lora", config("lora"), LABELS)
    model.add_slot("b", "lora", config("lora"), LABELS)
    model.remove_slot("a")
    query = model.encoder.encoder.layer[0].attention.self.query
    assert list(query.lora_A) == ["b"] and list(model.encoder.peft_config) == ["b"]
    assert [p for p in get_kind("lora").trainable_parameters(model, "a")] == []
    model.remove_slot("b")
    assert type(model.encoder.encoder.layer[0].attention.self.query) is torch.nn.Linear  # peft's wrapper is gone


@pytest.mark.parametrize("kind", ["shared-b-lora", "task-embedding"])
def test_shared_part_goes_with_the_groups_last_slot(kind):
    k = get_kind(kind)
    model = tiny_model()
    model.add_slot("t1", kind, config(kind), LABELS)
    model.add_slot("t2", kind, config(kind), LABELS)
    model.add_slot("g", kind, config(kind, share_group="g"), LABELS)
    perturb(model, "t1", seed=1)
    shared = k.shared_state_dict(model, "t2")
    model.remove_slot("t1")  # t2 still uses the default group's shared part
    for name, value in k.shared_state_dict(model, "t2").items():
        assert torch.equal(value, shared[name])
    with_default = sum(p.numel() for p in model.parameters())
    model.remove_slot("t2")
    assert with_default - sum(p.numel() for p in model.parameters()) \
        == k.shared_parameter_count(config(kind), model.encoder.config) + k.per_task_parameter_count(config(kind), model.encoder.config) \
        + sum(p.numel() for p in model.heads["g"].parameters())
    assert list(model.adapter_modules[kind].shared) == ["g"]


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_tie_shares_the_very_parameters(kind):
    k = get_kind(kind)
    model = tiny_model()
    model.add_slot("first", kind, config(kind), LABELS)
    model.add_slot("second", kind, config(kind), LABELS)
    k.tie(model, "second", "first")
    first, second = k.trainable_parameters(model, "first"), k.trainable_parameters(model, "second")
    assert first and all(a is b for a, b in zip(first, second))
    model.remove_slot("second")  # the source keeps its modules
    assert [id(p) for p in k.trainable_parameters(model, "first")] == [id(p) for p in first]


@pytest.mark.parametrize("kind", ["adapter", "prompt", "prefix", "task-embedding", "shared-b-lora"])
def test_kinds_that_cannot_tie_say_which_can(kind):
    model = tiny_model()
    model.add_slot("a", kind, config(kind), LABELS)
    model.add_slot("b", kind, config(kind), LABELS)
    with pytest.raises(KindError, match=f"'{kind}' cannot tie slot 'b' to 'a'; kinds that can: lora, full"):
        get_kind(kind).tie(model, "b", "a")


def test_lora_tie_refuses_another_rank():
    model = tiny_model()
    model.add_slot("a", "lora", config("lora"), LABELS)
    model.add_slot("b", "lora", config("lora", r=4), LABELS)
    with pytest.raises(KindError, match=r"r=4.*r=2"):
        get_kind("lora").tie(model, "b", "a")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_shared_part_methods_follow_has_shared_part(kind):
    k = get_kind(kind)
    assert k.has_shared_part == issubclass(k.config_cls, SharedPartSettings)
    model = tiny_model()
    model.add_slot("t", kind, config(kind), LABELS)
    if k.has_shared_part:
        assert k.share_group_of(config(kind)) == "default"
        renamed = k.renamed_share_group(config(kind), "default__s1_ab")
        assert k.share_group_of(renamed) == "default__s1_ab" and type(renamed) is k.config_cls
        with pytest.raises(KindError, match="--set share_group="):
            k.renamed_share_group(config(kind), "a.b")
        assert k.shared_state_dict(model, "t") and k.shared_parameter_count(config(kind), model.encoder.config) > 0
    else:
        assert k.share_group_of(config(kind)) is None
        assert k.shared_state_dict(model, "t") == {} and k.shared_parameter_count(config(kind), model.encoder.config) == 0
        with pytest.raises(KindError, match=f"'{kind}' has no shared part"):
            k.renamed_share_group(config(kind), "g")
        with pytest.raises(KindError, match=f"'{kind}' has no shared part"):
            k.load_shared_state(model, "t", {"x": torch.zeros(1)})


def test_every_kind_method_is_abstract_and_registration_checks_the_shared_flag():
    assert {"attach", "drop", "activate", "slot_state_dict", "load_slot_state", "trainable_parameters",
            "per_task_parameter_count"} == set(AdapterKind.__abstractmethods__)

    written = {m: (lambda self, *args: None) for m in AdapterKind.__abstractmethods__ - {"drop"}}
    no_drop = type("NoDrop", (AdapterKind,), {"name": "no-drop", **written})  # a kind that forgot drop
    with pytest.raises(TypeError, match="drop"):
        no_drop()

    class Lying(LoraKind):
        name = "lying-lora"
        has_shared_part = True

    with pytest.raises(ValueError, match="has_shared_part=True but its config LoraKindConfig does not extend"):
        register_kind(Lying())
    assert "lying-lora" not in KINDS


@pytest.mark.parametrize("settings, message", [
    (dict(r=0), "r=0 is invalid: must be an integer >= 1 (--set r=...)"),
    (dict(lora_alpha=0), "lora_alpha=0 is invalid: must be a positive number (--set lora_alpha=...)"),
    (dict(lora_dropout=1.5), "lora_dropout=1.5 is invalid: must be a number in [0, 1) (--set lora_dropout=...)"),
])
def test_lora_settings_are_checked_once_with_the_same_message_everywhere(settings, message):
    for make in (LoraKindConfig, SharedLoraConfig):  # the shared-factor kinds take LoRA's checks
        with pytest.raises(KindError) as err:
            make(**settings)
        assert str(err.value) == message
    with pytest.raises(ConfigError) as err:
        TrainConfig(**settings)
    assert str(err.value) == message
    assert TrainConfig(target_modules="query, value").target_modules == ["query", "value"]
    assert SharedLoraConfig(target_modules="query,key").target_modules == ["query", "key"]


@pytest.mark.parametrize("kind", ["shared-b-lora", "task-embedding", "adapter"])
def test_a_refused_first_slot_leaves_nothing_behind(kind):
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(KindError, match="not found in the base model"):
        model.add_slot("t", kind, config(kind, target_modules=["nothing_here"]), LABELS)
    assert_same(before, snapshot(model))
    assert not model.slots
