"""What a task is: its name, where its data lives and how to read it.

A ``TaskSpec`` is plain data. It is stored as JSON (in registry tags) and read back with
``from_dict``, so every field has a JSON-safe type and the spec validates itself on creation.
Reading and checking the data itself is ``tasks.loaders.build_spec``'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

from tasks.errors import TaskError

__all__ = ["DEFAULT_FIELDS", "MESSAGES_FIELD", "SPLITS", "TASK_KINDS", "TaskSpec", "validate_task_name"]

TASK_KINDS = ("classification", "generation")
SPLITS = ("train", "dev", "test")
# (text fields, label field) when none are given: a generation task reads `prompt` and `completion`.
DEFAULT_FIELDS = {"classification": (("text",), "label"), "generation": (("prompt",), "completion")}
# A generation task whose one text field is this reads chat turns: a list of {"role", "content"}
# objects, rendered with the tokenizer's chat template (tasks.loaders, "messages").
MESSAGES_FIELD = "messages"

# A task name becomes a folder name, an MLflow registered-model name and a CLI argument, so it is
# kept to characters that are safe in all three. '.' is refused too: a task name is also a key of
# torch ModuleDicts (per-task adapters and heads), which cannot contain dots, and without dots no
# name can climb out of the store directory.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_NAME_RULE = "use 1-64 letters, digits, '_' or '-', starting with a letter or digit (e.g. 'news-topic')"


def validate_task_name(name: str) -> str:
    """Return ``name`` if it is a safe task name, else raise ``TaskError`` naming the rule."""
    if not isinstance(name, str):
        raise TaskError(f"task name must be a string, got {type(name).__name__} {name!r}; {_NAME_RULE}")
    if not _NAME_RE.fullmatch(name):
        raise TaskError(f"task name {name!r} is not allowed: {_NAME_RULE}")
    return name


def _as_str_tuple(value: Any, field: str) -> tuple[str, ...]:
    # A bare string would otherwise become a tuple of its characters: ("t", "e", "x", "t").
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TaskError(f"{field} must be a list of strings, got {value!r}") from None
    if not all(isinstance(item, str) for item in items):
        raise TaskError(f"{field} must be a list of strings, got {list(items)!r}")
    return items


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: name, data files and how to read them."""

    name: str  # safe slug, see validate_task_name
    train: str  # absolute path of the train split (build_spec makes it absolute)
    dev: str | None = None  # absolute path of the dev split, if any
    test: str | None = None  # absolute path of the test split, if any
    kind: str = "classification"  # one of TASK_KINDS
    text_fields: tuple[str, ...] = ("text",)  # input columns; 2 = a text pair, more are joined
    label_field: str = "label"  # class column, or the target text (completion) for generation
    labels: tuple[str, ...] = ()  # ordered label set, index = class id (empty for generation)
    description: str = ""  # free text shown by `continual tasks show`
    fingerprint: str = ""  # sha256 hex of the normalised data (tasks.fingerprint)

    def __post_init__(self) -> None:
        validate_task_name(self.name)
        # Coerce lists (from JSON) to tuples so a spec read back equals the one written and stays
        # hashable; object.__setattr__ because the dataclass is frozen.
        object.__setattr__(self, "text_fields", _as_str_tuple(self.text_fields, "text_fields"))
        object.__setattr__(self, "labels", _as_str_tuple(self.labels, "labels"))
        if not isinstance(self.train, str) or not self.train:
            raise TaskError(f"task {self.name!r} needs a train file; pass --train PATH")
        if self.kind not in TASK_KINDS:
            raise TaskError(
                f"unknown task kind {self.kind!r}; valid kinds: {', '.join(TASK_KINDS)} (--kind)"
            )
        if not self.text_fields or not all(self.text_fields):
            raise TaskError(
                f"text fields {list(self.text_fields)!r} must name at least one column; "
                "pass --text-field NAME"
            )
        if len(set(self.text_fields)) != len(self.text_fields):
            raise TaskError(f"text fields {list(self.text_fields)!r} repeat a column; name each once")
        if not self.label_field:
            raise TaskError("label field is empty; pass --label-field NAME")
        if self.label_field in self.text_fields:
            raise TaskError(
                f"field {self.label_field!r} is both a text field and the label field; "
                "pass a different --label-field or --text-field"
            )
        if len(set(self.labels)) != len(self.labels):
            raise TaskError(f"labels {list(self.labels)!r} repeat a label; list each label once")
        if self.kind == "generation" and self.labels:
            raise TaskError(
                f"task {self.name!r} is a generation task but has labels {list(self.labels)!r}; "
                "labels apply only to classification tasks"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists) that ``from_dict`` reads back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        """Rebuild a spec from ``to_dict`` output; unknown or missing keys raise ``TaskError``."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise TaskError(f"unknown task spec field(s) {unknown}; valid fields: {', '.join(known)}")
        missing = [key for key in ("name", "train") if key not in d]
        if missing:
            raise TaskError(f"task spec is missing field(s) {missing}; a spec needs 'name' and 'train'")
        return cls(**dict(d))

    def split_path(self, split: str) -> str | None:
        """Path of ``split`` ("train", "dev" or "test"), or None when the task has no such split."""
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, split)
