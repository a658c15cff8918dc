"""Shared parts as registry objects: a share group's lineage of versions, found and loaded by name.

A shared part (the shared B of shared-B LoRA, the shared A of shared-A LoRA, the shared f_in/f_out of
task-embedding adapters) is a registered model of its own, `<kind>--<share group>`, with one version per
distinct state.  The group's first training creates version 1; every later training in the group starts
from the group's current version (or the one `shared_version` names).  A training that leaves the
shared part as it found it (train_shared=false) records that same version; one that changed it
registers a new version whose `parent_shared` tag names the one it started from.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modeling.manifest import SHARED_FILE, load_safetensors, verify_checksums
from registry import tags as T

if TYPE_CHECKING:
    from registry.registry import AdapterRegistry


def shared_part_name(kind: str, group: str) -> str:
    """The registered model holding a share group's versions, e.g. 'shared-b-lora--default'."""
    return f"{kind}--{group}"


@dataclass(frozen=True)
class SharedPart:
    name: str  # registered model, `<kind>--<group>`
    version: int
    state: dict[str, torch.Tensor]
    sha256: str  # of the stored shared file: a training that leaves it unchanged records this version

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def current_version(registry: "AdapterRegistry", name: str) -> int | None:
    """The newest version of shared part `name` that a task version records (None: the group has none)."""
    committed = registry.shared_versions(name, committed=True)
    return max(committed) if committed else None


def load_shared_part(registry: "AdapterRegistry", name: str, version: int, what: str) -> SharedPart:
    """Version `version` of shared part `name`, its file verified against the recorded sha256."""
    from registry.registry import RegistryError

    mv = registry.store.get_version(name, version)
    if mv is None:
        known = registry.shared_versions(name, committed=True)
        raise RegistryError(f"{what}: shared part {name} has no version {version} (versions: "
                            f"{', '.join(map(str, known)) or 'none'}); see `continual adapters versions`")
    expected = {k[len(T.SHA_PREFIX):]: v for k, v in mv.tags.items() if k.startswith(T.SHA_PREFIX)}
    folder = Path(registry.store.download(mv.source, tempfile.mkdtemp(prefix="continual-shared-")))
    verify_checksums(folder, expected, f"shared part {name}:{version}", required=(SHARED_FILE,))
    return SharedPart(name, version, load_safetensors(folder / SHARED_FILE), expected[SHARED_FILE])
