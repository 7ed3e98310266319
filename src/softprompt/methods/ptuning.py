"""P-tuning v1 (Liu et al. 2021, "GPT Understands, Too"): virtual tokens anywhere in a template,
produced by a prompt encoder (a bidirectional LSTM with an MLP, or an MLP alone) from trainable
embeddings. The template places them, e.g. ``[P*3] {text} [P*2] It was {mask}.``; without [P]
tokens in the template they go first, like prompt tuning. The encoder exists in training only:
export() stores the final (n, hidden) tokens, and checkpoints keep the encoder to resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Sequence

import torch
from torch import nn

from ..core import PromptTensors
from ..configs import check_dropout, check_whole, coerce_enum
from ..errors import ConfigError
from .base import InputPrompt, register_method
from .prompt_tuning import PromptInit, PromptTuning, PromptTuningConfig


class PromptEncoder(str, Enum):
    LSTM = "lstm"  # bidirectional 2-layer LSTM, then a 2-layer MLP (the paper's encoder)
    MLP = "mlp"  # a 2-layer MLP


@dataclass
class PTuningConfig:
    """P-tuning settings."""

    num_virtual_tokens: int = 10  # must equal the template's [P] count when the template has any
    encoder: PromptEncoder = PromptEncoder.LSTM
    hidden: int = 0  # encoder width; 0 means the model's hidden size
    dropout: float = 0.0
    init: PromptInit = PromptInit.VOCAB  # random | vocab | text | labels, for the encoder's input embeddings
    init_text: str | None = None
    seed: int = 0

    def __post_init__(self):
        coerce_enum(self, "encoder", PromptEncoder, "method")
        coerce_enum(self, "init", PromptInit, "method")
        check_whole(self, "num_virtual_tokens", 1, 4096, "method")
        check_dropout(self, "method")
        if self.init is PromptInit.TEXT and not (self.init_text and self.init_text.strip()):
            raise ConfigError("method.init='text' needs method.init_text (or use init='vocab')")


@register_method
class PTuning(InputPrompt, nn.Module):
    """tokens = encoder(embedding) + embedding: the residual keeps the start at the initial words."""

    name: ClassVar[str] = "ptuning"
    default_lrs: ClassVar[dict] = {"any": 3e-3}  # training.lr when unset, by model kind (SST-2/smollm2, bench/results/ptuning_sst2.json)
    Config: ClassVar[type] = PTuningConfig

    def __init__(self, config: PTuningConfig, initial: torch.Tensor):
        super().__init__()
        self.config = config
        width = initial.shape[1]
        hidden = config.hidden or width
        self.embedding = nn.Parameter(initial.detach().to(torch.float32).clone())
        if config.encoder is PromptEncoder.LSTM:
            self.lstm = nn.LSTM(width, hidden // 2 or 1, num_layers=2, bidirectional=True, batch_first=True,
                                dropout=config.dropout)
            mlp_in = 2 * (hidden // 2 or 1)
        else:
            self.lstm = None
            mlp_in = width
        out = nn.Linear(hidden, width)
        # The output layer starts at zero, so the first tokens are exactly the initial embeddings.
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mlp = nn.Sequential(nn.Linear(mlp_in, hidden), nn.ReLU(), nn.Dropout(config.dropout), out)

    @classmethod
    def initialise(cls, config: PTuningConfig, base, label_words: Sequence[str] = ()):
        start = PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens, init=config.init,
                                   init_text=config.init_text, seed=config.seed)
        initial = PromptTuning.initialise(start, base, label_words).embedding
        torch.manual_seed(config.seed)
        return cls(config, initial)

    def _tokens(self) -> torch.Tensor:
        x = self.embedding
        if self.lstm is not None:
            x = self.lstm(x.unsqueeze(0))[0].squeeze(0)
        return self.embedding + self.mlp(x)

    def prompt_tensors(self) -> PromptTensors:
        return PromptTensors(input=self._tokens())

    def export(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"input": self._tokens().detach().to("cpu", torch.float32).clone()}

    @classmethod
    def from_export(cls, config: PTuningConfig, tensors: dict[str, torch.Tensor]):
        initial = tensors["input"]
        static = PromptTuningConfig(num_virtual_tokens=initial.shape[0], init="random")
        return PromptTuning(static, initial.shape[1], initial)
