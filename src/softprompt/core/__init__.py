"""The injection mechanism, per-row prompt batching and the artifact format."""

from .batch import PromptBatch, collate, virtual
from .inject import PromptedModel, PromptTensors

__all__ = ["PromptBatch", "PromptTensors", "PromptedModel", "collate", "virtual"]
from .artifact import FORMAT_VERSION, PromptArtifact

__all__ += ["FORMAT_VERSION", "PromptArtifact"]
