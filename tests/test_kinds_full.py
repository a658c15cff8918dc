"""full kind: a private plain encoder per slot; two full slots served side by side; the base untouched."""
import pytest
import torch

from modeling.base_model import fingerprint_module
from modeling.kinds import FullConfig, PrefixConfig, SharedLoraConfig, get_kind
from modeling.kinds.hooks import KIND_HOOK_MARK
from modeling.kinds.lora import LoraKindConfig
from modeling.model import AdapterModel, mean_pool
from tiny import tiny_model

LABELS = ("a", "b")


pytestmark = pytest.mark.usefixtures("one_thread")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[2, 3:] = 0
    return ids, mask


def test_two_full_slots_in_one_process_and_the_base_is_untouched():
    model = tiny_model()
    base_print = fingerprint_module(model.encoder)
    model.add_slot("f1", "full", FullConfig(), LABELS)
    model.add_slot("f2", "full", FullConfig(), LABELS)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters("f1"), lr=1e-2)
    ids, mask = batch()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model("f1", ids, mask), torch.tensor([0, 1, 0, 1])).backward()
        opt.step()
    model.eval()
    assert fingerprint_module(model.encoder) == base_print
    with torch.no_grad():
        base = mean_pool(model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        torch.testing.assert_close(model.embed("f2", ids, mask), base)  # untrained copy = base
        assert not torch.allclose(model.embed("f1", ids, mask), base)
    state = get_kind("full").slot_state_dict(model, "f1")
    assert set(state) == set(model.encoder.state_dict())  # the encoder's weights, the encoder's keys


def test_copy_is_the_plain_encoder_without_other_slots():
    model = tiny_model()
    model.add_slot("l", "lora", LoraKindConfig(r=2), LABELS)
    model.add_slot("s", "shared-b-lora", SharedLoraConfig(r=2), LABELS)
    model.add_slot("p", "prefix", PrefixConfig(num_virtual_tokens=2), LABELS)  # pre-hooks on self-attention
    model.add_slot("f", "full", FullConfig(), LABELS)
    copy = model.adapter_modules["full"]["f"]
    assert not [n for n, _ in copy.named_modules() if "lora" in n]
    hooks = [h for m in copy.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    assert not [h for h in hooks if getattr(h, KIND_HOOK_MARK, False)]  # transformers' own hooks may stay
    marked = [h for m in model.encoder.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
              if getattr(h, KIND_HOOK_MARK, False)]
    assert len(marked) == 4 + 2  # shared-b-lora: query and value of 2 layers; prefix: 2 self-attentions
    assert all(p.requires_grad for p in copy.parameters())
    assert set(copy.state_dict()) == set(tiny_model().encoder.state_dict())
    # the shared encoder keeps its hooks and LoRA layers
    assert model.encoder.encoder.layer[0].attention.self.query.base_layer._forward_hooks
    assert model.encoder.encoder.layer[0].attention.self._forward_pre_hooks
