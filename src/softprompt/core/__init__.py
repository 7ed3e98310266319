"""The injection mechanism, per-row prompt batching and the artifact format."""

from .batch import PromptBatch, collate, virtual
from .inject import PromptedModel

__all__ = ["PromptBatch", "PromptedModel", "collate", "virtual"]
from .artifact import FORMAT_VERSION, PromptArtifact

__all__ += ["FORMAT_VERSION", "PromptArtifact"]
