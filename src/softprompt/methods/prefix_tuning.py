"""Prefix tuning (Li & Liang 2021): per-layer prefixes produced by an MLP from a small embedding.

The MLP exists in training only: export() folds it into plain prefixes, while training
checkpoints keep it so a run resumes. Li & Liang found the starting point matters: by default the
prefixes start exactly at the keys/values the model computes for real words (the MLP's output
layer starts at zero and is added to them), so an untrained prefix does not wreck the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from ..core import PromptTensors
from .base import NoInputPrompt, register_method
from ..configs import check_dropout, check_whole
from .deep_common import DeepInit, validate_deep_config
from .ptuning_v2 import PTuningV2, initial_prefixes


@dataclass
class PrefixTuningConfig:
    """Prefix tuning settings."""

    prefix_length: int = 10  # prefix positions per layer
    hidden: int = 512  # width of the reparameterisation MLP
    dropout: float = 0.0  # dropout inside the MLP
    init: DeepInit = DeepInit.WORDS  # words | random
    init_text: str | None = None  # for init='words' (default: the label words)
    cross_attention: bool = False
    position_shift: int = 0  # real tokens start at this position (PEFT's prefix tuning: prefix_length); 0 = none
    seed: int = 0

    def __post_init__(self):
        validate_deep_config(self)
        check_whole(self, "hidden", 1, 1 << 16, "method")
        check_dropout(self, "method")


@register_method
class PrefixTuning(NoInputPrompt, nn.Module):
    """prefix[stack] = start[stack] + MLP_stack(embedding), reshaped to (layers, 2, kv_heads, P, head_dim)."""

    name: ClassVar[str] = "prefix_tuning"
    default_lrs: ClassVar[dict] = {"any": 3e-3}  # training.lr when unset, by model kind (SST-2/smollm2, bench/results/prefix_tuning_sst2.json)
    Config: ClassVar[type] = PrefixTuningConfig

    def __init__(self, config: PrefixTuningConfig, start: dict[str, torch.Tensor], width: int):
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        self.embedding = nn.Parameter(torch.randn(config.prefix_length, width, generator=generator) * 0.02)
        self.shapes = {stack: tuple(t.shape) for stack, t in start.items()}
        for stack, t in start.items():
            self.register_buffer(f"start_{stack}", t.detach().to(torch.float32).clone())
        self.mlps = nn.ModuleDict()
        for stack, shape in self.shapes.items():
            layers, two, heads, length, dim = shape
            out = nn.Linear(config.hidden, layers * two * heads * dim)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.mlps[stack] = nn.Sequential(nn.Linear(width, config.hidden), nn.Tanh(), nn.Dropout(config.dropout), out)

    @classmethod
    def initialise(cls, config: PrefixTuningConfig, base, label_words: Sequence[str] = ()):
        return cls(config, initial_prefixes(config, base, label_words), base.info.hidden_size)

    def prompt_tensors(self) -> PromptTensors:
        deep = {}
        for stack, (layers, two, heads, length, dim) in self.shapes.items():
            delta = self.mlps[stack](self.embedding)  # (P, layers * 2 * heads * dim)
            delta = delta.view(length, layers, two, heads, dim).permute(1, 2, 3, 0, 4)
            deep[stack] = getattr(self, f"start_{stack}") + delta
        return PromptTensors(deep=deep, position_shift=self.config.position_shift)

    def export(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            deep = self.prompt_tensors().deep
        return {f"deep.{stack}": t.detach().to("cpu", torch.float32).clone() for stack, t in deep.items()}

    @classmethod
    def from_export(cls, config, tensors: dict[str, torch.Tensor]):
        # An artifact holds the folded prefixes; serving needs no MLP (whose dropout config.dropout is).
        return PTuningV2.from_export(config, tensors, dropout=0.0)
