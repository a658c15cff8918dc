"""Adapter kinds: one module per kind, registered here with one explicit call each."""
from registry.kinds.base import KINDS, AdapterKind, KindConfig, KindError, get_kind, register_kind
from registry.kinds.lora import LoraKind, LoraKindConfig

register_kind(LoraKind())

__all__ = ["KINDS", "AdapterKind", "KindConfig", "KindError", "get_kind", "register_kind", "LoraKindConfig"]
