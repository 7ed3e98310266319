"""P-tuning v2 (Liu et al. 2022): trainable key/value prefixes in every layer (deep prompt tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from ..configs import check_dropout
from ..core import PromptTensors
from ..errors import ConfigError
from .base import NoInputPrompt, register_method
from .deep_common import DeepInit, deep_stacks, random_prefixes, validate_deep_config, word_activations


@dataclass
class PTuningV2Config:
    """Deep prompt tuning settings."""

    prefix_length: int = 20  # prefix positions per layer
    init: DeepInit = DeepInit.RANDOM  # random | words
    init_text: str | None = None  # for init='words' (default: the label words)
    cross_attention: bool = False  # encoder-decoders: also prefix the decoder's cross-attention
    dropout: float = 0.0  # dropout on the prefixes while training (the reference code uses the model's 0.1)
    position_shift: int = 0  # real tokens start at this position (PEFT's prefix tuning: prefix_length); 0 = none
    seed: int = 0

    def __post_init__(self):
        validate_deep_config(self)
        check_dropout(self, "method")


def initial_prefixes(config, base, label_words: Sequence[str]) -> dict[str, torch.Tensor]:
    stacks = deep_stacks(base, config.cross_attention)
    if config.init is DeepInit.WORDS:
        text = config.init_text or " ".join(label_words)
        if not text.strip():
            raise ConfigError("method.init='words' needs method.init_text or a task with label words")
        return word_activations(base, stacks, config.prefix_length, text)
    return random_prefixes(base, stacks, config.prefix_length, config.seed)


@register_method
class PTuningV2(NoInputPrompt, nn.Module):
    """Per-stack (layers, 2, kv_heads, prefix_length, head_dim) float32 parameters."""

    name: ClassVar[str] = "ptuning_v2"
    default_lrs: ClassVar[dict] = {"any": 3e-3, "encoder": 3e-2}  # training.lr when unset, by model kind (SST-2/smollm2; SST-2 and CoNLL on minilm-l6: bench/results/minilm_*)
    Config: ClassVar[type] = PTuningV2Config

    def __init__(self, config, prefixes: dict[str, torch.Tensor], dropout: float | None = None):
        """``dropout`` (prefix entries dropped in training) defaults to ``config.dropout``."""
        super().__init__()
        self.config = config
        self.prefixes = nn.ParameterDict(
            {stack: nn.Parameter(t.detach().to(torch.float32).clone()) for stack, t in prefixes.items()}
        )
        self.dropout = nn.Dropout(config.dropout if dropout is None else dropout)

    @classmethod
    def initialise(cls, config: PTuningV2Config, base, label_words: Sequence[str] = ()):
        return cls(config, initial_prefixes(config, base, label_words))

    def prompt_tensors(self) -> PromptTensors:
        shift = self.config.position_shift
        if self.training and self.dropout.p > 0:
            return PromptTensors(deep={stack: self.dropout(p) for stack, p in self.prefixes.items()}, position_shift=shift)
        return PromptTensors(deep=dict(self.prefixes.items()), position_shift=shift)

    def export(self) -> dict[str, torch.Tensor]:
        return {f"deep.{stack}": p.detach().to("cpu", torch.float32).clone() for stack, p in self.prefixes.items()}

    @classmethod
    def from_export(cls, config, tensors: dict[str, torch.Tensor], dropout: float | None = None):
        prefixes = {name[len("deep."):]: t for name, t in tensors.items() if name.startswith("deep.")}
        return cls(config, prefixes, dropout)
