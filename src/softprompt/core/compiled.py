"""Compiled prompts: the keys/values of the part of a row that does not depend on the input.

For a causal LM, everything before the first input field of a template (the tokenizer's leading
tokens, an input prompt's virtual tokens, an instruction, few-shot demonstrations) is the same for
every row of a task, and a causal row's later tokens never change what came before. Run that fixed
start once, keep its per-layer keys and values (after the prompt's own deep prefixes, which it
attended to), and a row that begins with exactly those tokens is served by attending to them and
running only the rest, its positions continuing after them: the same logits as running it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..models import ModelKind
from .deep import IMPLEMENTATIONS, attention_implementation
from .inject import PromptedModel, PromptTensors


@dataclass(frozen=True)
class CompiledPrompt:
    """A prompt's fixed start and its keys/values per decoder layer (its deep prefixes first)."""

    tokens: tuple[int, ...]  # the fixed start, virtual slots as negative entries
    prefixes: dict[str, torch.Tensor]  # "decoder" -> (layers, 2, kv_heads, deep + len(tokens), head_dim)

    def applies_to(self, row: Sequence[int]) -> bool:
        """Whether a row begins with the fixed start and has at least one token after it."""
        n = len(self.tokens)
        return len(row) > n and tuple(row[:n]) == self.tokens

    @property
    def length(self) -> int:
        return len(self.tokens)


def can_compile(pm: PromptedModel) -> bool:
    """Compiled prompts need a causal LM that takes position ids and an attention we can prefix."""
    return (pm.info.kind is ModelKind.CAUSAL and pm.info.position_ids == "absolute"
            and attention_implementation(pm.model) in IMPLEMENTATIONS)


@torch.no_grad()
def compile_prompt(pm: PromptedModel, key: str, prompt: PromptTensors | None,
                   tokens: Sequence[int]) -> CompiledPrompt | None:
    """The compiled form of a prompt's fixed start (None when there is nothing to gain or no way to)."""
    tokens = tuple(tokens)
    if not tokens or not can_compile(pm):
        return None
    prompts = {key: prompt} if prompt is not None else {}
    batch = pm.collate([list(tokens)], [key if prompt is not None else None], padding_side="right")
    captured: dict = {}
    pm.encode(batch, prompts, capture=captured)
    layers = captured.get("decoder", {})
    own = torch.stack([torch.stack([k[0], v[0]]) for k, v in (layers[i] for i in sorted(layers))])
    deep = (prompt.deep or {}).get("decoder") if prompt is not None else None
    if deep is not None:
        own = torch.cat([deep.to(device=own.device, dtype=own.dtype), own], dim=3)
    return CompiledPrompt(tokens, {"decoder": own.contiguous()})
