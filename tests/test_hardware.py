"""`precision: auto` follows what the hardware does natively: CPU features and GPUs monkeypatched."""
import os
import subprocess
import sys

import pytest
import torch

from modeling import hardware
from modeling.hardware import autocast, detect, resolve_precision


def cpu(monkeypatch, capability="AVX512", amx=False, avx512_bf16=False, avx512=True, avx2=True, isa=None):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    features = {"capability": capability, "amx": amx, "avx512_bf16": avx512_bf16, "avx512": avx512, "avx2": avx2}
    monkeypatch.setattr(hardware, "_cpu_features",
                        lambda: {**features, "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()})


@pytest.mark.parametrize("setup, expected", [
    (dict(amx=True, avx512_bf16=True), "bf16"),  # Sapphire Rapids and later: AMX tiles
    (dict(avx512_bf16=True), "bf16"),  # Cooper Lake / Zen 4: AVX512-BF16 without AMX
    (dict(avx512=True), "32"),  # Skylake-X: AVX-512 but bf16 emulated
    (dict(capability="AVX2", avx512=False), "32"),  # AVX2-only (the EPYC of the issue)
    (dict(amx=True, avx512_bf16=True, isa="AVX2"), "32"),  # AMX present but oneDNN capped at AVX2
    (dict(amx=True, avx512_bf16=True, capability="AVX2"), "32"),  # ATEN_CPU_CAPABILITY=avx2
    (dict(amx=True, isa="AVX512_CORE_AMX"), "bf16"),  # a cap that still includes AMX
])
def test_auto_precision_follows_cpu_features(monkeypatch, setup, expected):
    cpu(monkeypatch, **setup)
    assert resolve_precision("auto") == expected
    assert detect().native_bf16 is (expected == "bf16")
    assert ("bf16 native" if expected == "bf16" else "bf16 emulated") in detect().description


def test_explicit_precisions_pass_through_and_bad_ones_fail(monkeypatch):
    cpu(monkeypatch, capability="AVX2", avx512=False)
    assert [resolve_precision(p) for p in ("32", "bf16", "16", 32)] == ["32", "bf16", "16", "32"]
    with pytest.raises(ValueError, match="precision='8' is not one of auto, 32, bf16, 16"):
        resolve_precision("8")


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "32")])
def test_auto_precision_on_a_gpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    hw = detect()
    assert hw.device == "cuda" and hw.description.startswith("Some GPU")
    assert resolve_precision("auto") == expected


def test_autocast_contexts():
    assert not isinstance(autocast("32"), torch.autocast)
    with autocast("bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_avx2_emulation_env_resolves_to_fp32():
    """The real check, no monkeypatching: the variables that emulate an AVX2-only CPU make auto pick fp32."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    code = "from modeling.hardware import resolve_precision; print(resolve_precision('auto'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "32", out.stderr


def test_precision_line_says_what_and_why(monkeypatch):
    from continual.config import TrainConfig
    from continual.trainer import precision_note

    cpu(monkeypatch, capability="AVX2", avx512=False)
    assert precision_note(TrainConfig()).startswith("precision fp32 (auto: cpu dispatch AVX2")
    assert "emulated" in precision_note(TrainConfig())
    assert "expect it to be slow" in precision_note(TrainConfig(precision="bf16"))
    cpu(monkeypatch, amx=True, avx512_bf16=True)
    assert precision_note(TrainConfig()).startswith("precision bf16 autocast (auto: cpu dispatch AVX512")


def test_fp16_needs_a_gpu_one_clear_line(monkeypatch):
    from continual.config import ConfigError, TrainConfig
    from continual.trainer import LIGHTNING_PRECISION

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="precision=16 .* needs a CUDA GPU and none is available; on a CPU use"):
        TrainConfig(precision="16")
    # On a GPU it is Lightning's 16-mixed: autocast fp16 with a dynamic GradScaler (no GPU here to run it).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert LIGHTNING_PRECISION[TrainConfig(precision="16").resolved_precision] == "16-mixed"
