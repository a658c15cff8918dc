"""Continual-learning methods a task sequence can use: the baselines, and every adapter kind.

Baselines are registered here with one explicit call each; any name in `modeling.kinds.KINDS` is a
method too (that kind trained per task in the sequence's one model, `KindMethod`).
"""
from __future__ import annotations

from typing import Any

from continual.methods.base import Method, MethodError, SequenceContext, StepOutcome, parse_settings
from continual.methods.ewc import EwcMethod
from continual.methods.kind import KindMethod
from continual.methods.mtl import MtlMethod
from continual.methods.olora import OLoraMethod
from continual.methods.osf import OsfMethod
from continual.methods.replay import ReplayMethod
from continual.methods.sequential import SeqFtMethod, SeqLoraMethod

BASELINES: dict[str, type[Method]] = {}


def register_baseline(cls: type[Method]) -> None:
    if cls.name in BASELINES:
        raise ValueError(f"method '{cls.name}' is already registered")
    BASELINES[cls.name] = cls


register_baseline(SeqLoraMethod)
register_baseline(SeqFtMethod)
register_baseline(ReplayMethod)
register_baseline(EwcMethod)
register_baseline(MtlMethod)
register_baseline(OLoraMethod)
register_baseline(OsfMethod)


def method_names() -> list[str]:
    """Baselines first, then adapter kinds."""
    from modeling.kinds import KINDS

    return list(BASELINES) + sorted(k for k in KINDS if k not in BASELINES)


def _check(name: str) -> None:
    from modeling.kinds import KINDS

    if name not in BASELINES and name not in KINDS:
        raise MethodError(f"unknown method '{name}'; valid methods: baselines {', '.join(BASELINES)}; "
                          f"adapter kinds {', '.join(sorted(KINDS))}")


def setting_names(name: str) -> set[str]:
    """Keys a sequence's `config` may hold besides TrainConfig fields: the method's (and its kind's) settings."""
    _check(name)
    if name in BASELINES:
        return BASELINES[name].setting_names()
    return KindMethod.setting_names_for(name)


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """A fresh method object (methods keep per-sequence state) with its settings from `options`."""
    _check(name)
    options = options or {}
    if name in BASELINES:
        cls = BASELINES[name]
        return cls(parse_settings(cls.settings_cls, options, name))
    return KindMethod(name)


__all__ = ["BASELINES", "Method", "MethodError", "SequenceContext", "StepOutcome", "make_method", "method_names",
           "register_baseline", "setting_names"]
