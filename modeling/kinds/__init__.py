"""Adapter kinds: one module per kind, registered here with one explicit call each (the contract: base.py)."""
from modeling.kinds.base import KINDS, AdapterKind, KindConfig, KindError, SharedPartSettings, get_kind, register_kind
from modeling.kinds.bottleneck import BottleneckConfig, BottleneckAdapterKind
from modeling.kinds.full import FullConfig, FullFineTuningKind
from modeling.kinds.hyper_lora import HyperLoraConfig, HyperLoraKind
from modeling.kinds.lora import LoraKind, LoraKindConfig
from modeling.kinds.osf import OsfConfig, OsfKind
from modeling.kinds.prompt import PrefixConfig, PrefixTuningKind, PromptConfig, PromptTuningKind
from modeling.kinds.shared_lora import SharedALoraKind, SharedLoraConfig, SharedLoraKind
from modeling.kinds.task_embedding import TaskEmbeddingConfig, TaskEmbeddingKind

register_kind(LoraKind())
register_kind(SharedLoraKind())  # shared-b-lora
register_kind(SharedALoraKind())  # shared-a-lora
register_kind(TaskEmbeddingKind())
register_kind(HyperLoraKind())
register_kind(BottleneckAdapterKind())  # adapter
register_kind(PrefixTuningKind())
register_kind(PromptTuningKind())
register_kind(FullFineTuningKind())
register_kind(OsfKind())  # osf-svd

__all__ = [
    "KINDS", "AdapterKind", "KindConfig", "KindError", "SharedPartSettings", "get_kind", "register_kind", "LoraKindConfig",
    "SharedLoraConfig", "TaskEmbeddingConfig", "HyperLoraConfig", "BottleneckConfig", "PrefixConfig", "PromptConfig", "FullConfig", "OsfConfig",
]
