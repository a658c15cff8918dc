"""The osf sequence baseline (peft's OSF through the osf-svd kind): the preserved-share rule, its settings,
a sequence with it, and the preserved subspace left alone by the next task."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from continual.methods import MethodError, make_method
from continual.methods.osf import OsfSettings
from continual.sequence import SequenceRunner, SequenceSpec
from modeling.kinds.osf import osf_targets
from tiny import one_line

CONFIG = {"max_epochs": 1, "batch_size": 16}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reg(new_registry):
    return new_registry("osf-store")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from tasks.demo import write_demo_suite

    return write_demo_suite(tmp_path_factory.mktemp("osf-data"), sizes={"train": 40, "dev": 10, "test": 20})


def targeted_weights(model) -> dict[str, torch.Tensor]:
    """The encoder's OSF-targeted weight matrices (plain Linears again once every task is folded)."""
    targets = osf_targets(None, model.encoder.config.model_type)
    return {name: module.weight.detach().clone() for name, module in model.encoder.named_modules()
            if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in targets)}


def run(reg, demo_files, base, prefix, n=2, after_row=None, **config):
    names = []
    for spec in demo_files[:n]:
        spec = dataclasses.replace(spec, name=f"{prefix}-{spec.name}")
        reg.register_task(spec)
        names.append(spec.name)
    spec = SequenceSpec(name=prefix, tasks=tuple(names), method="osf", config={**CONFIG, **config},
                        base_model=str(base))
    runner = SequenceRunner(reg, spec, on_row=(lambda i, task, matrix: after_row(i, runner.model)) if after_row else None)
    return names, runner.run()


# -- the rule and the settings -----------------------------------------------------------------------------------------
def test_preserved_share_grows_by_the_budget_rule_or_a_fixed_step():
    budget = OsfSettings()  # start 0.3, then (1 - 0.3) / n per task
    assert [budget.preserved(i, 3) for i in range(3)] == pytest.approx([0.3, 0.3 + 0.7 / 3, 0.3 + 1.4 / 3])
    assert budget.preserved(9, 10) == pytest.approx(0.93)  # the last task still trains (1 - 0.3) / 10
    fixed = OsfSettings(osf_rank_start=0.3, osf_rank_step=0.2)  # peft's example: 0.3, 0.5, 0.7
    assert [fixed.preserved(i, 3) for i in range(3)] == pytest.approx([0.3, 0.5, 0.7])


@pytest.mark.parametrize("options, message", [
    ({"osf_rank_start": 1.5}, "osf_rank_start=1.5, osf_rank_step=0.0: the start must be in (0, 1)"),
    ({"osf_rank_start": 0}, "osf_rank_start=0.0"),
    ({"osf_rank_step": -0.1}, "the step >= 0"),
    ({"osf_rank_start": "most"}, "osf_rank_start='most' is not a valid float"),
])
def test_bad_settings_are_one_line_errors(options, message):
    assert message in one_line(make_method, "osf", options)


def test_a_step_that_leaves_a_task_nothing_to_train_is_refused():
    settings = OsfSettings(osf_rank_start=0.5, osf_rank_step=0.3)
    assert settings.preserved(1, 3) == pytest.approx(0.8)
    message = one_line(settings.preserved, 2, 3)
    assert "= 1.1 leaves task 3 of 3 nothing to train" in message and "osf_rank_step: 0" in message


def test_the_kinds_bad_preserved_share_is_a_one_line_error_and_leaves_the_model_alone():
    from peft.tuners.osf import OSFLayer

    from modeling.kinds.osf import OsfConfig
    from tiny import tiny_model

    assert "effective_rank=1.5 is invalid: must be a fraction in (0, 1)" in one_line(OsfConfig, effective_rank=1.5)
    model = tiny_model()  # hidden 32: a share of 0.01 keeps int(0.32) = 0 directions
    message = one_line(model.add_slot, "t", "osf-svd", OsfConfig(effective_rank=0.01), ("a", "b"))
    assert "effective_rank=0.01 preserves no direction of encoder.layer.0.attention.self.query (32, 32)" in message
    assert not model.slots and not any(isinstance(m, OSFLayer) for m in model.encoder.modules())


def test_osf_is_a_sequence_method_with_its_own_settings():
    from continual.methods import setting_names

    assert make_method("osf").kind == "osf-svd"
    assert setting_names("osf") == {"osf_rank_start", "osf_rank_step"}
    with pytest.raises(MethodError):
        make_method("osf", {"osf_rank_start": 2})


# -- a sequence ---------------------------------------------------------------------------------------------------------
def test_osf_sequence_trains_one_encoder_fills_r_and_registers_nothing(reg, demo_files, tiny_base_dir):
    from peft.tuners.osf import OSFLayer

    from modeling.base_model import load_base_model

    names, result = run(reg, demo_files, tiny_base_dir, "osf", learning_rate=5e-3)
    R = result.matrix.R
    assert all(isinstance(R[i][j], float) for i in range(2) for j in range(i + 1))
    assert result.matrix.versions == [[None, None], [None, None]] and reg.versions(names[0]) == []
    model = result.model
    assert [model.slots[t].kind for t in names] == ["osf-svd", "osf-svd"]
    assert not any(isinstance(m, OSFLayer) for m in model.encoder.modules())  # every update merged (folded)
    trained = targeted_weights(model)
    base = targeted_weights(type(model)(load_base_model(str(tiny_base_dir)).fresh_encoder()))
    assert set(trained) == set(base) and len(trained) == 12  # 6 Linears per block, the pooler left alone
    assert all(not torch.equal(trained[k], base[k]) for k in base)  # the method trains the encoder's weights
    assert model.heads[names[0]] is not model.heads[names[1]]


def preserved_leak(reg, demo_files, base, prefix, **config) -> tuple[float, float]:
    """Train two tasks with osf; of the second task's change ΔW to each targeted weight W (as the first left it),
    the largest share ‖U_highᵀ ΔW‖ / ‖ΔW‖ (and ‖ΔW V_high‖ / ‖ΔW‖) in W's top-k singular directions, k being
    the second task's preserved rank; and the smallest ‖ΔW‖ / ‖W‖ (it did train)."""
    after: dict[int, dict[str, torch.Tensor]] = {}
    names, result = run(reg, demo_files, base, prefix,
                        after_row=lambda i, model: after.update({i: targeted_weights(model)}), **config)
    share = OsfSettings().preserved(1, 2)
    leak, moved = 0.0, float("inf")
    for name, w1 in after[0].items():
        delta = after[1][name] - w1
        U, _, Vh = torch.linalg.svd(w1)
        k = int(min(w1.shape) * share)
        leak = max(leak, float((U[:, :k].T @ delta).norm() / delta.norm()), float((delta @ Vh[:k].T).norm() / delta.norm()))
        moved = min(moved, float(delta.norm() / w1.norm()))
    return leak, moved


def test_the_second_task_leaves_the_first_tasks_preserved_subspace_alone(reg, demo_files, tiny_base_dir, monkeypatch):
    from peft.tuners.osf import OSFLayer

    # plain SGD keeps the projected steps in the projected subspace exactly (Adam's per-coordinate scaling would not)
    sgd = {"optimizer": "sgd", "learning_rate": 0.5}
    leak, moved = preserved_leak(reg, demo_files, tiny_base_dir, "osf-sgd", **sgd)
    assert moved > 1e-4  # the second task did change every targeted weight
    assert leak < 5e-5  # ... only outside the top-k singular directions the first task left (float noise: ~5e-6)
    # the same training without peft's gradient projection moves the preserved directions too
    monkeypatch.setattr(OSFLayer, "_attach_hooks", lambda self, adapter_name: None)
    free_leak, _ = preserved_leak(reg, demo_files, tiny_base_dir, "osf-free", **sgd)
    assert free_leak > 1e-3  # ~5e-3: small, as the trained factors carry the small singular values, but 1000x
