"""Linear probes (continual.probe): a head fitted on frozen features measures how separable a task is."""
import torch

from continual.probe import ProbeSettings, fit_probe


def blobs(n: int, seed: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[shift, 0.0], [0.0, shift], [-shift, -shift]])
    x = centres[y] + torch.randn(n, 2, generator=g)
    # large, uneven feature scales and offsets: the probe standardises, so it needs no LR tuning per model
    return torch.cat([x * torch.tensor([50.0, 0.02]) + 7.0, torch.randn(n, 6, generator=g)], 1), y


def accuracy(head, x, y) -> float:
    with torch.no_grad():
        return float((head(x).argmax(-1) == y).float().mean())


def test_probe_separates_separable_features_and_not_noise():
    train_x, train_y = blobs(300, 0, shift=4.0)
    test_x, test_y = blobs(300, 1, shift=4.0)
    head = fit_probe(train_x, train_y, 3, ProbeSettings(steps=200))
    assert accuracy(head, test_x, test_y) > 0.9
    # the same features with labels unrelated to them: held-out accuracy stays near chance (1/3)
    noise_y = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(2))
    head = fit_probe(train_x, noise_y, 3, ProbeSettings(steps=200))
    assert accuracy(head, test_x, torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(3))) < 0.45


def test_probe_is_deterministic_for_a_seed():
    x, y = blobs(100, 0, shift=2.0)
    a, b = fit_probe(x, y, 3, ProbeSettings(steps=20)), fit_probe(x, y, 3, ProbeSettings(steps=20))
    torch.testing.assert_close(a.weight, b.weight)


def test_head_init_probe_starts_the_head_where_a_linear_probe_fits(tiny_base_dir):
    """LP-FT: with head_init=probe a slot starts with a head that already separates the training data
    (a random head is near chance); the head's shape and the adapter stay as they were."""
    from continual.evaluate import accuracy
    from continual.probe import init_head_by_probe
    from continual.train import build_model
    from modeling.base_model import load_base_model
    from modeling.kinds import LoraKindConfig
    from tasks.loaders import Example

    base = load_base_model(str(tiny_base_dir))
    model = build_model(base)
    labels = ["sports", "cooking"]
    words = {"sports": "football goal match team striker league", "cooking": "recipe oven butter flour bake sauce"}
    examples = [Example(f"{words[label].split()[i % 6]} {words[label].split()[(i + 2) % 6]}", label)
                for i in range(24) for label in labels]
    model.add_slot("t", "lora", LoraKindConfig(r=2), labels)
    fresh = accuracy(model, "t", base.tokenizer, examples, max_length=16)
    adapter_before = {n: p.clone() for n, p in model.named_parameters() if "lora" in n}
    init_head_by_probe(model, "t", base.tokenizer, examples, max_length=16, precision="32")
    assert accuracy(model, "t", base.tokenizer, examples, max_length=16) >= max(0.9, fresh + 0.2)
    assert model.heads["t"].weight.shape == (2, model.hidden_size)
    assert all(torch.equal(p, adapter_before[n]) for n, p in model.named_parameters() if "lora" in n)


def test_head_init_auto_follows_the_kind_and_keeps_a_head_a_warm_start_copied():
    """auto: LP-FT for the kinds whose per-task part is small (chosen on dev), a random head for LoRA; a head
    copied from a task with the same labels already answers the task, so auto keeps it, while an explicit
    head_init wins over both."""
    from continual.train import resolved_head_init

    assert resolved_head_init("lora", "auto") == "fresh"
    assert resolved_head_init("task-embedding", "auto") == "probe"
    assert resolved_head_init("shared-b-lora", "auto") == "probe"
    assert resolved_head_init("shared-a-lora", "auto") == "fresh"
    assert resolved_head_init("task-embedding", "auto", head_copied=True) == "fresh"
    assert resolved_head_init("task-embedding", "probe", head_copied=True) == "probe"
    assert resolved_head_init("lora", "probe") == "probe"
