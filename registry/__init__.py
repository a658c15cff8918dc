"""The adapter registry: tasks, adapter versions and aliases in MLflow; loading adapters by name."""
from modeling.generation import Generation
from modeling.predictor import Prediction, Predictor
from registry.registry import AdapterRegistry, AdapterVersion, RegistryError, Run
from retrieval.routing import Related, Route

__all__ = ["AdapterRegistry", "AdapterVersion", "Generation", "Prediction", "Predictor", "Related", "RegistryError", "Route", "Run"]
