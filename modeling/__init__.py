"""The adapter code: adapter kinds, the host model, base models, hardware defaults and the artifact format.

Imports torch, transformers and peft; never mlflow, FAISS or Lightning (tests/test_imports.py).
"""
from modeling.base_model import BaseModel, load_base_model
from modeling.generation import Generation
from modeling.kinds import AdapterKind, KindConfig, get_kind
from modeling.manifest import AdapterManifest
from modeling.model import AdapterModel
from modeling.predictor import Prediction, Predictor

__all__ = ["AdapterKind", "AdapterManifest", "AdapterModel", "BaseModel", "Generation", "KindConfig", "Prediction",
           "Predictor", "get_kind", "load_base_model"]
