"""What this machine does natively, and the precision and thread count that follow from it.

`precision: auto` (the default everywhere: training, evaluation, inference, task profiles, routing)
picks bf16 autocast only where the hardware computes bf16 natively and fp32 otherwise.  On a CPU
without AMX or AVX512-BF16, bf16 matmuls are emulated: measured here, a 1024² matmul ran at
~236 GFLOP/s in fp32 and 0.8 GFLOP/s in emulated bf16, while with AMX bf16 ran at ~860 GFLOP/s
against ~200 in fp32.  A default tuned on one machine would be ~100x too slow on the other, so the
choice is made per machine, from the CPU's features as torch and oneDNN will actually use them:

- torch's kernel dispatch level (`torch.backends.cpu.get_cpu_capability()`, lowered by
  `ATEN_CPU_CAPABILITY`) must be AVX512 or better;
- the CPU must have AMX tiles or AVX512-BF16 (`torch.cpu._is_amx_tile_supported()` and
  `_is_avx512_bf16_supported()`: private helpers, the only feature checks torch has);
- oneDNN must be allowed to use them (`ONEDNN_MAX_CPU_ISA`, when set, at AVX512_CORE_BF16 or above).

On a CUDA GPU, bf16 where `torch.cuda.is_bf16_supported()`; fp16 (`precision: 16`) is GPU-only.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "32", "bf16", "16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include native bf16 instructions.
_ONEDNN_BF16_ISAS = {
    "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
    "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
}


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda"
    description: str  # CPU/GPU features that decided the precision, for logs and reports
    native_bf16: bool


def _cpu_features() -> dict[str, bool | str]:
    cpu = getattr(torch, "cpu", None)

    def check(name: str) -> bool:
        fn = getattr(cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except Exception:  # a torch build without the helper
            return False

    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "amx": check("_is_amx_tile_supported"),
        "avx512_bf16": check("_is_avx512_bf16_supported"),
        "avx512": check("_is_avx512_supported"),
        "avx2": check("_is_avx2_supported"),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper(),
    }


def detect(device: str | None = None) -> Hardware:
    """The hardware training and inference will run on, and whether it does bf16 natively."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
        bf16 = bool(torch.cuda.is_bf16_supported())
        return Hardware("cuda", f"{name} (bf16 {'native' if bf16 else 'not supported'})", bf16)
    f = _cpu_features()
    isa_ok = not f["onednn_max_isa"] or f["onednn_max_isa"] in _ONEDNN_BF16_ISAS
    native = f["capability"] in ("AVX512",) and bool(f["amx"] or f["avx512_bf16"]) and isa_ok
    present = [k for k in ("amx", "avx512_bf16", "avx512", "avx2") if f[k]]
    text = f"cpu dispatch {f['capability']}, flags {'+'.join(present) or 'none'}"
    if f["onednn_max_isa"]:
        text += f", ONEDNN_MAX_CPU_ISA={f['onednn_max_isa']}"
    return Hardware("cpu", f"{text}; bf16 {'native' if native else 'emulated'}", native)


def resolve_precision(requested: str | int, device: str | None = None) -> str:
    """'auto' -> 'bf16' where the hardware does bf16 natively, else '32'; other values pass through."""
    requested = str(requested)
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    return "bf16" if detect(device).native_bf16 else "32"


def autocast(precision: str, device: str = "cpu"):
    """The autocast context for a resolved precision ('32' -> no autocast)."""
    precision = resolve_precision(precision, device)
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.split(":")[0], dtype=dtype)


def apply_num_threads(num_threads: int) -> int:
    """Set torch's intra-op threads when `num_threads` > 0 (0 keeps torch's choice); returns the count in use."""
    if num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def training_attention(encoder, precision: str, device: str | None = None):
    """While training in bf16 on a CPU, run a transformers encoder's attention as plain matmul-softmax-matmul
    ("eager") instead of `scaled_dot_product_attention` ("sdpa"); put back on exit.

    With dropout off, SDPA picks torch's CPU flash-attention kernel, fast forward but slow backward in bf16
    (MiniLM's shapes: batch 16, 12 heads of 32, 40-100 tokens, one thread, AMX: 57-184 ms forward +
    backward against 14-60 ms for SDPA's math kernel); the math kernel's masked-row checks (`all`,
    `isneginf`, `where`) then cost more than eager's plain softmax: a LoRA training step took 1.28x less
    CPU time eager than math.  Inference (forward only) keeps SDPA, faster there.  Other precisions,
    GPUs and encoders not on "sdpa": no change.
    """
    config = getattr(encoder, "config", None)
    switch = (precision == "bf16" and detect(device).device == "cpu"
              and getattr(config, "_attn_implementation", None) == "sdpa")
    if switch:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        if switch:
            config._attn_implementation = "sdpa"
