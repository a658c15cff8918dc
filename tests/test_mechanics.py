"""Training mechanics on tiny random models: optimizers and parameter groups, layer-wise LR, adaptive
clipping, gradient accumulation, the `max_epochs: auto` budget, the held-out dev, augmentation and the
diagnostics rules."""
import types
import warnings

import pytest
import torch
from torch import nn

from continual.config import ConfigError, TrainConfig
from continual.module import AdapterClassifier, adaptive_clip_
from modeling.kinds import get_kind
from tasks.errors import ContinualWarning
from tasks.loaders import Example
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_module(config: TrainConfig, layers: int = 3) -> AdapterClassifier:
    model = tiny_model(layers=layers)
    model.add_slot("t", "lora", get_kind("lora").make_config(config.flat()), ("a", "b"))
    for p in model.trainable_parameters("t"):
        p.requires_grad_(True)
    return AdapterClassifier(model, "t", config, total_steps=10)


# -- optimizers and groups ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                       ("sgd", torch.optim.SGD), ("lion", None)])
def test_each_optimizer_is_built_and_decay_skips_biases_and_norms(name, cls):
    module = lora_module(TrainConfig(optimizer=name, weight_decay=0.05))
    optimizer = module.configure_optimizers()["optimizer"]
    if cls is None:
        from lion_pytorch import Lion

        cls = Lion
    assert type(optimizer) is cls
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.9
    names = {id(p): n for n, p in module.model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            expected = 0.05 if p.ndim >= 2 and "norm" not in names[id(p)].lower() else 0.0
            assert group["weight_decay"] == expected, names[id(p)]


def test_layer_lr_decay_gives_each_layer_its_lr():
    lr, decay = 1e-2, 0.5
    module = lora_module(TrainConfig(learning_rate=lr, layer_lr_decay=decay), layers=3)
    optimizer = module.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    layers = module.model.encoder.encoder.layer
    for i, layer in enumerate(layers):
        adapter = [p for n, p in layer.named_parameters() if "lora_" in n]
        assert adapter and all(lr_of[id(p)] == pytest.approx(lr * decay ** (2 - i)) for p in adapter), i
    assert all(lr_of[id(p)] == lr for p in module.model.heads["t"].parameters())  # the head: full LR
    assert optimizer.param_groups[0]["lr"] == lr  # group 0 is full-LR (progressive unfreezing reads it)


def test_head_lr_scale_sets_only_the_heads_lr_and_the_schedule_keeps_the_ratio():
    lr = 1e-2
    module = lora_module(TrainConfig(learning_rate=lr, head_lr_scale=0.25, warmup_steps=0), layers=2)
    built = module.configure_optimizers()
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    head = {id(p) for p in module.model.heads["t"].parameters()}
    adapter = [p for n, p in module.model.named_parameters() if "lora_" in n]
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert head and all(lr_of[i] == pytest.approx(lr * 0.25) for i in head)
    assert adapter and all(lr_of[id(p)] == lr for p in adapter)
    optimizer.step()
    scheduler.step()  # linear decay: both groups move by the same factor
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert all(lr_of[i] == pytest.approx(lr_of[id(adapter[0])] * 0.25) for i in head)
    assert lr_of[id(adapter[0])] < lr
    with pytest.raises(ConfigError, match=r"head_lr_scale=0.0 is invalid: must be a positive number"):
        TrainConfig.load(None, ["head_lr_scale=0"])


def test_layer_lr_decay_covers_unfrozen_base_weights():
    from continual.optim import layer_index, param_groups

    model = tiny_model(layers=2)
    layers = model.encoder.encoder.layer
    named = [("encoder.layer.0.output.dense.weight", layers[0].output.dense.weight),
             ("encoder.layer.0.output.LayerNorm.weight", layers[0].output.LayerNorm.weight),
             ("encoder.layer.1.output.dense.weight", layers[1].output.dense.weight)]
    layer_of, n = layer_index(model.encoder)
    groups = param_groups(named, 1.0, 0.1, layer_of=layer_of, num_layers=n, layer_lr_decay=0.8)
    by_name = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert by_name == {"layer1/decay": (1.0, 0.1), "layer0/decay": (pytest.approx(0.8), 0.1),
                       "layer0/no_decay": (pytest.approx(0.8), 0.0)}


def test_optimizer_and_decay_settings_are_validated():
    assert TrainConfig.load(None, ["optimizer=adam", "layer_lr_decay=0.9"]).optimizer == "adam"
    with pytest.raises(ConfigError, match="optimizer='rmsprop' is invalid: must be one of adamw, adam, sgd, lion"):
        TrainConfig.load(None, ["optimizer=rmsprop"])
    with pytest.raises(ConfigError, match=r"layer_lr_decay=1.5 is invalid: must be a number in \(0, 1\]"):
        TrainConfig.load(None, ["layer_lr_decay=1.5"])
    with pytest.raises(ConfigError, match="adaptive_clip=-1.0 is invalid"):
        TrainConfig.load(None, ["adaptive_clip=-1"])


# -- clipping -----------------------------------------------------------------------------------------
def test_adaptive_clip_rule():
    big = nn.Parameter(torch.tensor([2.0, 0.0]))  # ||theta|| = 2
    big.grad = torch.tensor([0.0, 10.0])  # ||g|| = 10 > 0.1 * 2: rescaled to 0.2, same direction
    small = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||theta|| = 5
    small.grad = torch.tensor([0.3, 0.0])  # 0.3 < 0.5: untouched
    zero = nn.Parameter(torch.zeros(2))  # ||theta|| = 0: the eps floor (1e-3) sets the cap
    zero.grad = torch.tensor([1.0, 0.0])
    assert adaptive_clip_([big, small, zero], alpha=0.1) == 2
    torch.testing.assert_close(big.grad, torch.tensor([0.0, 0.2]))
    torch.testing.assert_close(small.grad, torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(zero.grad, torch.tensor([1e-4, 0.0]))


def test_adaptive_clip_runs_where_lightning_clips(monkeypatch):
    module = lora_module(TrainConfig(adaptive_clip=0.01, grad_clip_norm=0))
    optimizer = module.configure_optimizers()["optimizer"]
    for p in module.trainable_parameters():
        p.grad = torch.ones_like(p) * 100
    monkeypatch.setattr(module, "clip_gradients", lambda *a, **k: None)  # the global clip needs a Trainer
    module.configure_gradient_clipping(optimizer, None, None)
    for p in module.trainable_parameters():
        cap = 0.01 * max(float(p.detach().norm()), 1e-3)
        assert float(p.grad.norm()) <= cap * (1 + 1e-5)


def test_accumulation_matches_one_big_batch(tiny_base_dir):
    """K=2 micro-batches of 4 take the same optimizer step as one batch of 8."""
    from continual.train import fit_slot
    from modeling.base_model import load_base_model

    base = load_base_model(str(tiny_base_dir))
    train = [Example(f"{w} thing number {i}", "a" if i % 2 else "b") for i, w in
             enumerate(["good", "bad", "fine awful", "nice", "poor old", "great", "sad", "happy day"])]

    def step(batch_size: int, accumulate: int) -> torch.Tensor:
        from continual.train import build_model

        torch.manual_seed(0)
        model = build_model(base)
        cfg = TrainConfig(optimizer="sgd", learning_rate=0.5, batch_size=batch_size, accumulate_grad_batches=accumulate,
                          max_epochs=1, grad_clip_norm=0, weight_decay=0, warmup_steps=0, lr_schedule="constant",
                          precision="32", lora_dropout=0.0, max_length=16)
        model.add_slot("t", "lora", get_kind("lora").make_config(cfg.flat()), ("a", "b"))
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        steps, _ = fit_slot(model, "t", base, cfg, train, [])
        assert steps == 1
        return torch.cat([p.detach().flatten().clone() for p in model.trainable_parameters("t")])

    one_batch, accumulated = step(8, 1), step(4, 2)
    torch.testing.assert_close(accumulated, one_batch, atol=1e-5, rtol=1e-4)


# -- the default budget -------------------------------------------------------------------------------
@pytest.mark.parametrize("batches, overrides, epochs", [
    (125, {}, 1),  # agnews 2,000 at batch 16: one epoch, as before
    (38, {}, 5),  # sst2 600: ~200 steps
    (19, {}, 10),  # 300 examples
    (1, {}, 20),  # tiny tasks: capped
    (38, {"accumulate_grad_batches": 2}, 10),  # counts optimizer steps, not micro-batches
    (38, {"max_steps": 1000}, 27),  # max_steps governs when set
    (38, {"max_epochs": 3}, 3),  # an explicit number is kept
    (38, {"strategy": "ddp", "devices": 2}, 10),  # each of 2 processes sees half the batches
])
def test_auto_epochs(batches, overrides, epochs):
    from continual.trainer import resolved_epochs

    assert resolved_epochs(TrainConfig(**overrides), batches) == epochs


def test_max_epochs_values():
    assert TrainConfig().max_epochs == "auto"
    assert TrainConfig.load(None, ["max_epochs=3"]).max_epochs == 3
    assert TrainConfig.load(None, ["max_epochs=AUTO"]).max_epochs == "auto"
    with pytest.raises(ConfigError, match="max_epochs='many' is invalid: must be auto or an integer >= 1"):
        TrainConfig.load(None, ["max_epochs=many"])
    with pytest.raises(ConfigError, match="max_epochs=0 is invalid"):
        TrainConfig.load(None, ["max_epochs=0"])


def test_ddp_needs_two_devices():
    with pytest.raises(ConfigError, match="strategy=ddp with devices=1 trains in one process; set --set devices=2"):
        TrainConfig.load(None, ["strategy=ddp"])
    with pytest.raises(ConfigError, match="strategy='fsdp' is invalid: must be one of auto, ddp"):
        TrainConfig.load(None, ["strategy=fsdp"])


def test_dev_is_held_out_of_train_when_missing(tmp_path):
    from continual.train import DEV_HOLDOUT_MIN_TRAIN, hold_out_dev, load_task_data
    from tasks.loaders import build_spec

    rows = "".join(f'{{"text": "text {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(50))
    (tmp_path / "train.jsonl").write_text(rows)
    data = load_task_data(build_spec("t", tmp_path / "train.jsonl"))
    assert data.dev_source == "train-holdout" and len(data.dev) == 5 and len(data.train) == 45
    assert not {e.text for e in data.dev} & {e.text for e in data.train}
    assert hold_out_dev(data.train + data.dev)[1] == hold_out_dev(data.train + data.dev)[1]  # the same slice
    (tmp_path / "small.jsonl").write_text("".join(rows.splitlines(True)[:DEV_HOLDOUT_MIN_TRAIN - 1]))
    small = load_task_data(build_spec("s", tmp_path / "small.jsonl"))
    assert small.dev_source == "none" and small.dev == []


# -- augmentation -------------------------------------------------------------------------------------
def test_augment_spec_and_rules():
    import random

    from continual.augment import AugmentError, parse_augment

    assert parse_augment("") is None and parse_augment("none") is None
    aug = parse_augment("word_dropout=0.3,word_swap=0.3")
    text = "the quick brown fox jumps over the lazy dog today"
    a, b = aug.apply(text, random.Random(1)), aug.apply(text, random.Random(1))
    assert a == b and a != text  # seeded: the same rng gives the same text
    assert sorted(aug.apply(text, random.Random(2)).split()) != [] and len(a.split()) <= len(text.split())
    assert parse_augment("word_dropout=0.99").apply("a b", random.Random(0)) in ("a", "b")  # one word stays
    for bad, message in [("word_dropout=2", "must be in"), ("shuffle=0.1", "bad part 'shuffle=0.1'"),
                         ("word_swap=x", "is not a number")]:
        with pytest.raises(AugmentError, match=message):
            parse_augment(bad)
    with pytest.raises(AugmentError, match="augment word_dropout=2.0 must be in"):
        TrainConfig.load(None, ["augment=word_dropout=2"])


def test_augmented_dataset_is_seeded_and_varies_by_epoch(tiny_base_dir):
    from continual.augment import AugmentedDataset, parse_augment
    from modeling.base_model import load_base_model

    tokenizer = load_base_model(str(tiny_base_dir)).tokenizer
    examples = [Example("one two three four five six seven eight", "a")]

    def draws(seed):
        ds = AugmentedDataset(examples, tokenizer, ("a",), 32, parse_augment("word_dropout=0.3"), seed)
        return [ds[0]["input_ids"] for _ in range(4)]

    first, again, other = draws(0), draws(0), draws(1)
    assert first == again  # the same run repeated sees the same texts
    assert len({tuple(x) for x in first}) > 1  # each epoch (draw) a different variant
    assert first != other


# -- diagnostics --------------------------------------------------------------------------------------
def test_spike_and_overfitting_rules():
    from continual.diagnostics import is_overfitting, is_spike

    history = [1.0] * 10
    assert is_spike(11.0, history, 10) and not is_spike(9.0, history, 10)
    assert not is_spike(100.0, history[:5], 10)  # too little history
    assert not is_spike(100.0, history, 0)  # off
    assert is_overfitting([1.0, 0.8, 0.6, 0.4], [0.5, 0.6, 0.7, 0.8], 3)
    assert not is_overfitting([1.0, 0.8, 0.6, 0.4], [0.5, 0.6, 0.55, 0.8], 3)  # dev dipped once
    assert not is_overfitting([1.0, 0.8, 0.9, 0.4], [0.5, 0.6, 0.7, 0.8], 3)  # train rose once
    assert not is_overfitting([1.0, 0.8], [0.5, 0.6], 3)  # too few evaluations


def fake_trainer(**extra):
    return types.SimpleNamespace(global_step=7, is_global_zero=True, sanity_checking=False, logger=None,
                                 callback_metrics={}, **extra)


def test_diagnostics_stop_on_nan_loss_and_grads():
    from continual.diagnostics import Diagnostics, DivergenceError

    diag = Diagnostics(hint="optimizer=sgd, learning_rate=1e+12")
    with pytest.raises(DivergenceError, match=r"diverged at step 7: the loss is nan \(optimizer=sgd"):
        diag.on_before_backward(fake_trainer(), None, torch.tensor(float("nan")))
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, float("inf")])
    optimizer = torch.optim.SGD([{"params": [p], "name": "layer0/decay"}], lr=0.1)
    with pytest.raises(DivergenceError, match=r"gradient norm is inf \(groups layer0/decay\)"):
        diag.on_before_optimizer_step(fake_trainer(), None, optimizer)
    Diagnostics(check_grads=False).on_before_optimizer_step(fake_trainer(), None, optimizer)  # fp16: scaler's job


def test_diagnostics_warn_once_per_kind():
    from continual.diagnostics import Diagnostics

    diag = Diagnostics(spike_factor=5, overfit_evals=2)
    trainer = fake_trainer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for loss in [1.0] * 12 + [50.0, 60.0]:
            diag.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)
        for train_loss, dev_loss in [(0.9, 0.5), (0.7, 0.6), (0.5, 0.7), (0.3, 0.8)]:
            diag.on_train_batch_end(trainer, None, {"loss": torch.tensor(train_loss)}, None, 0)
            diag._since_eval = [train_loss]
            trainer.callback_metrics = {"dev/loss": torch.tensor(dev_loss)}
            diag.on_validation_end(trainer, None)
    messages = [str(w.message) for w in caught if issubclass(w.category, ContinualWarning)]
    assert len(messages) == 2, messages
    assert messages[0].startswith("loss spike at step 7: 50 > 5 x the running median 1")
    assert messages[1].startswith("overfitting: dev loss rose for 2 evaluations")


def test_grad_norms_per_group_and_global():
    from continual.diagnostics import grad_norms

    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    optimizer = torch.optim.SGD([{"params": [a], "name": "x"}, {"params": [b]}], lr=0.1)
    assert grad_norms(optimizer) == {"x": 3.0, "1": 4.0, "global": pytest.approx(5.0)}
    assert grad_norms(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1)) == {"global": 0.0}  # no grads yet
