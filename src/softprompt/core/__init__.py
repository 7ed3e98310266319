"""The injection mechanism, per-row prompt batching and the artifact format."""

from .batch import PromptBatch, collate, virtual
from .inject import PromptedModel

__all__ = ["PromptBatch", "PromptedModel", "collate", "virtual"]
