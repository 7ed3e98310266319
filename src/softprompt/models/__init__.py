"""Base models: loading, embedded defaults, family facts and fingerprints."""

from .families import FAMILY_FACTS, ModelInfo, ModelKind, describe
from .fingerprint import fingerprint
from .loading import DEFAULT_MODEL, EMBEDDED, BaseModel, cache_dir, embedded_status, load_base, wrap_model

__all__ = [
    "BaseModel",
    "DEFAULT_MODEL",
    "EMBEDDED",
    "FAMILY_FACTS",
    "ModelInfo",
    "ModelKind",
    "cache_dir",
    "describe",
    "embedded_status",
    "fingerprint",
    "load_base",
    "wrap_model",
]
