"""Progressive unfreezing: the pure schedule functions, the spec parser, and the Lightning callback."""
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from continual.unfreeze import (
    ProgressiveUnfreezing, UnfreezeError, UnfreezeSchedule, layers_to_unfreeze, layerwise_lr, load_unfrozen_base_state,
    parse_unfreeze_schedule, unfrozen_base_state,
)
from modeling.kinds.lora import LoraKindConfig
from modeling.model import AdapterModel


pytestmark = pytest.mark.usefixtures("one_thread")


def test_layers_to_unfreeze_top_down_worked_examples():
    s = UnfreezeSchedule(every=2, group=1)
    assert [layers_to_unfreeze(t, s, 4) for t in range(0, 10, 2)] == [[], [3], [3, 2], [3, 2, 1], [3, 2, 1, 0]]
    assert layers_to_unfreeze(3, s, 4) == [3]  # between boundaries nothing changes
    assert layers_to_unfreeze(100, s, 4) == [3, 2, 1, 0]
    assert layers_to_unfreeze(1, UnfreezeSchedule(group=2), 6) == [5, 4]
    assert layers_to_unfreeze(2, UnfreezeSchedule(group=4), 6) == [5, 4, 3, 2, 1, 0]
    assert layers_to_unfreeze(9, UnfreezeSchedule(max_layers=2), 6) == [5, 4]


def test_layerwise_lr():
    assert layerwise_lr(1e-3, 5, 6, 0.5) == pytest.approx(5e-4)  # top layer: one step below the adapter
    assert layerwise_lr(1e-3, 0, 6, 0.5) == pytest.approx(1e-3 * 0.5**6)
    assert layerwise_lr(1e-3, 3, 6, 1.0) == 1e-3
    with pytest.raises(ValueError):
        layerwise_lr(1e-3, 6, 6, 0.5)


def test_parse_spec_round_trip_and_errors():
    s = parse_unfreeze_schedule("every=1, unit=step,group=2,lr_decay=0.8")
    assert s == UnfreezeSchedule(every=1, unit="step", group=2, lr_decay=0.8)
    assert parse_unfreeze_schedule(s.to_spec()) == s
    assert parse_unfreeze_schedule("max_layers=3").max_layers == 3
    for off in (None, "", "none", "OFF"):
        assert parse_unfreeze_schedule(off) is None
    for bad, says in [("every=0", "every=0"), ("unit=batch", "unit='batch'"), ("lr_decay=1.5", "lr_decay=1.5"),
                      ("every=x", "every='x'"), ("speed=2", "bad part 'speed=2'"), ("every", "bad part"),
                      ("group=1,group=2", "twice")]:
        with pytest.raises(UnfreezeError, match=says) as err:
            parse_unfreeze_schedule(bad)
        assert "\n" not in str(err.value) and "--set unfreeze_schedule=" in str(err.value)


class Stub(L.LightningModule):
    """Stand-in for continual.module.AdapterClassifier: .model, .slot, the same optimizer/scheduler shape."""

    def __init__(self, model: AdapterModel, slot: str):
        super().__init__()
        self.model, self.slot = model, slot
        self.lam = lambda step: 1.0 / (1 + step)  # the lr schedule every group must follow

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(self.slot, batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def configure_optimizers(self):
        from continual.optim import param_groups

        trainable = {id(p) for p in self.model.trainable_parameters(self.slot)}
        named = [(n, p) for n, p in self.model.named_parameters() if id(p) in trainable]
        self.opt = torch.optim.AdamW(param_groups(named, 1e-2, 0.01), lr=1e-2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lam)
        return {"optimizer": self.opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}


def fit(schedule: UnfreezeSchedule, **trainer_args) -> tuple[Stub, AdapterModel, dict, ProgressiveUnfreezing]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = AdapterModel(BertModel(config).requires_grad_(False))
    model.add_slot("t", "lora", LoraKindConfig(r=2), ("a", "b"))  # LoRA injected into the layers it unfreezes
    initial = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(1, 100, (6,), generator=g), "attention_mask": torch.ones(6, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(16)]
    module = Stub(model, "t")
    callback = ProgressiveUnfreezing(schedule)
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[callback], enable_checkpointing=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_args)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    return module, model, initial, callback


def test_callback_unfreezes_per_epoch_into_the_same_optimizer():
    module, model, initial, callback = fit(parse_unfreeze_schedule("every=1,unit=epoch,group=1,lr_decay=0.5"),
                                           max_epochs=3)  # 4 steps per epoch
    opt, sched = module.opt, module.sched
    assert callback.unfrozen == [1, 0]  # top layer after epoch 0, the next after epoch 1
    # 2 original groups (decay / no decay) + 2 per unfrozen layer, each at its layer-wise lr
    assert len(opt.param_groups) == 6
    assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx([1e-2] * 2 + [5e-3] * 2 + [2.5e-3] * 2)
    # the scheduler drives every group: per-group lists extended, lrs follow the same lambda
    assert len(sched.base_lrs) == len(sched.lr_lambdas) == len(sched.get_last_lr()) == 6
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * module.lam(12))
    # optimizer state kept: the adapter's Adam step count runs through all 12 steps; layers since they joined
    layers = model.encoder.encoder.layer
    assert opt.state[model.trainable_parameters("t")[0]]["step"] == 12
    assert opt.state[layers[1].attention.self.key.weight]["step"] == 8
    assert opt.state[layers[0].attention.self.key.weight]["step"] == 4
    now = dict(model.encoder.named_parameters())
    assert not torch.equal(now["encoder.layer.0.attention.self.key.weight"], initial["encoder.layer.0.attention.self.key.weight"])
    assert torch.equal(now["embeddings.word_embeddings.weight"], initial["embeddings.word_embeddings.weight"])  # stays frozen

    state = unfrozen_base_state(model)
    assert state and all(k.startswith("encoder.layer.") for k in state)
    assert not [k for k in state if "lora" in k or "base_layer" in k]  # plain encoder keys, no adapter weights
    assert "encoder.layer.0.attention.self.query.weight" in state  # peft's query.base_layer.weight, made portable
    assert len(state) == 2 * len(list(BertModel(model.encoder.config).encoder.layer[0].parameters()))
    fresh = AdapterModel(BertModel(model.encoder.config))
    load_unfrozen_base_state(fresh, state)
    torch.testing.assert_close(dict(fresh.encoder.named_parameters())["encoder.layer.1.output.dense.weight"],
                               state["encoder.layer.1.output.dense.weight"])


def test_callback_unfreezes_per_step():
    module, _, _, callback = fit(UnfreezeSchedule(every=2, unit="step", group=1), max_steps=5)
    assert callback.unfrozen == [1, 0]  # at global steps 2 and 4
    layers = module.model.encoder.encoder.layer
    assert module.opt.state[layers[1].output.dense.weight]["step"] == 3
    assert module.opt.state[layers[0].output.dense.weight]["step"] == 1
