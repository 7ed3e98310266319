"""A stored prompt as a matrix of token vectors, and its token-averaged summary."""

from __future__ import annotations

import torch

from ..core import PromptArtifact
from ..errors import ArtifactError


def prompt_tokens(artifact: PromptArtifact) -> torch.Tensor:
    """The prompt as (tokens, features) float32: the input prompt, else the deep prefixes per position.

    A deep prefix (layers, 2, heads, P, head_dim) becomes P rows of layers*2*heads*head_dim features,
    so token averaging and length checks mean the same thing for both kinds of prompt.
    """
    tensors = artifact.tensors
    if "prompt.input" in tensors:
        return tensors["prompt.input"].detach().to(torch.float32)
    deep = sorted(k for k in tensors if k.startswith("prompt.") and tensors[k].dim() == 5)
    if not deep:
        where = artifact.path or "artifact"
        raise ArtifactError(f"{where}: holds no prompt tensors (no 'prompt.input' and no deep prefixes)")
    parts = [tensors[k].detach().to(torch.float32).permute(3, 0, 1, 2, 4).flatten(1) for k in deep]
    if len({p.shape[0] for p in parts}) > 1:
        parts = [p.mean(0, keepdim=True) for p in parts]
    return torch.cat(parts, 1)


def summary_vector(artifact: PromptArtifact) -> torch.Tensor:
    """The token-averaged prompt: one vector per artifact, comparable across prompt lengths."""
    return prompt_tokens(artifact).mean(0)
