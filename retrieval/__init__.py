"""Retrieval over tasks: task profiles from the frozen encoder, the FAISS index, related tasks and routing.

Pure functions and in-memory indexes (numpy, torch, FAISS); the registry keeps the vectors in the
store and the index as a cache (`registry.profile_index`).
"""
from retrieval.routing import Related, Route, RouteDiagnosis, RouterConfig, TaskRouter, TextRouter

__all__ = ["Related", "Route", "RouteDiagnosis", "RouterConfig", "TaskRouter", "TextRouter"]
