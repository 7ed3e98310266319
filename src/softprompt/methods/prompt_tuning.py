"""Prompt tuning (Lester et al. 2021): n trainable virtual tokens placed before the input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from torch import nn

from ..configs import check_whole, coerce_enum
from ..errors import ConfigError
from .base import InputPrompt, register_method


class PromptInit(str, Enum):
    """How the virtual tokens start."""

    RANDOM = "random"  # normal noise at the scale of the embedding matrix
    VOCAB = "vocab"  # embeddings of tokens sampled from the 5,000 lowest (most frequent) ids
    TEXT = "text"  # embeddings of init_text's tokens, repeated to length
    LABELS = "labels"  # embeddings of the class-label words, then sampled vocabulary (Lester et al.)
    ARTIFACT = "artifact"  # a trained prompt (or a weighted average of several) from init_from (SPoT)


@dataclass
class PromptTuningConfig:
    """Prompt tuning settings."""

    num_virtual_tokens: int = 20  # trainable tokens before the input
    init: PromptInit = PromptInit.LABELS  # random | vocab | text | labels
    init_text: str | None = None  # required by init='text'
    seed: int = 0  # for random and vocab initialisation
    init_from: list[str] | None = None  # init='artifact': prompt files whose input prompts start this one
    init_weights: list[float] | None = None  # init='artifact': weight per init_from file (default: equal)

    def __post_init__(self):
        coerce_enum(self, "init", PromptInit, "method")
        check_whole(self, "num_virtual_tokens", 1, 4096, "method")
        if self.init is PromptInit.TEXT and not (self.init_text and self.init_text.strip()):
            raise ConfigError("method.init='text' needs method.init_text (or use init='labels' or 'vocab')")
        if self.init is PromptInit.ARTIFACT and not self.init_from:
            raise ConfigError("method.init='artifact' needs method.init_from=[path/to/prompt.safetensors, ...]")
        if self.init_weights is not None:
            if not self.init_from or len(self.init_weights) != len(self.init_from):
                raise ConfigError(f"method.init_weights has {len(self.init_weights)} weights for "
                                  f"{len(self.init_from or [])} init_from files; give one weight per file")
            if any(w < 0 for w in self.init_weights) or not sum(self.init_weights) > 0:
                raise ConfigError(f"method.init_weights={self.init_weights!r} must be >= 0 with a positive sum")


def _token_embeddings(base, token_ids: Sequence[int]) -> torch.Tensor:
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=base.device)
    with torch.no_grad():
        return base.input_embeddings()(ids).detach().to("cpu", torch.float32)


def _vocab_sample(base, n: int, generator: torch.Generator) -> torch.Tensor:
    vocab = base.info.vocab_size
    special = set(getattr(base.tokenizer, "all_special_ids", []) or [])
    low = min(vocab, 5000)
    candidates = torch.tensor([i for i in range(low) if i not in special] or list(range(low)))
    picks = candidates[torch.randint(len(candidates), (n,), generator=generator)]
    return _token_embeddings(base, picks.tolist())


def _from_artifacts(config: PromptTuningConfig, base) -> torch.Tensor:
    """The weighted average of the input prompts in config.init_from (weights normalised to sum 1)."""
    from ..core import PromptArtifact

    weights = torch.tensor(config.init_weights or [1.0] * len(config.init_from), dtype=torch.float32)
    weights = weights / weights.sum()
    total = torch.zeros(config.num_virtual_tokens, base.info.hidden_size)
    for path, weight in zip(config.init_from, weights):
        artifact = PromptArtifact.load(path)
        artifact.check_fits(base)
        prompt = artifact.tensors.get("prompt.input")
        if prompt is None:
            raise ConfigError(f"method.init_from: {path} has no input prompt ({artifact.method}); "
                              "prompt tuning starts only from an input prompt")
        if tuple(prompt.shape) != tuple(total.shape):
            raise ConfigError(f"method.init_from: {path} has {prompt.shape[0]} virtual tokens, but "
                              f"method.num_virtual_tokens={config.num_virtual_tokens}; set it to {prompt.shape[0]}")
        total += weight * prompt.to(torch.float32)
    return total


def _repeat_to(rows: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // rows.shape[0])
    return rows.repeat(reps, 1)[:n]


@register_method
class PromptTuning(InputPrompt, nn.Module):
    """A (num_virtual_tokens, hidden) float32 parameter written into the input sequence."""

    name: ClassVar[str] = "prompt_tuning"
    default_lrs: ClassVar[dict] = {"any": 3e-2}  # training.lr when unset, by model kind (SST-2/smollm2 sweeps, bench/results/sweep*_gpu.json)
    Config: ClassVar[type] = PromptTuningConfig

    def __init__(self, config: PromptTuningConfig, hidden_size: int, initial: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        if initial is None:
            initial = torch.zeros(config.num_virtual_tokens, hidden_size)
        if tuple(initial.shape) != (config.num_virtual_tokens, hidden_size):
            raise ConfigError(
                f"initial prompt has shape {tuple(initial.shape)}, expected ({config.num_virtual_tokens}, {hidden_size})"
            )
        # Float32 whatever the base dtype: bf16 updates of size lr*grad vanish against the weights.
        self.embedding = nn.Parameter(initial.detach().to(torch.float32).clone())

    @classmethod
    def initialise(cls, config: PromptTuningConfig, base, label_words: Sequence[str] = ()):
        """A new prompt for base, initialised as config.init says."""
        n, generator = config.num_virtual_tokens, torch.Generator().manual_seed(config.seed)
        init = config.init
        if init is PromptInit.RANDOM:
            scale = base.input_embeddings().weight.detach().float().std().item()
            initial = torch.randn(n, base.info.hidden_size, generator=generator) * scale
        elif init is PromptInit.VOCAB:
            initial = _vocab_sample(base, n, generator)
        elif init is PromptInit.TEXT:
            text = config.init_text
            if not text:
                raise ConfigError("method.init='text' needs method.init_text (or use init='labels' / 'vocab')")
            ids = base.tokenizer(text, add_special_tokens=False).input_ids
            if not ids:
                raise ConfigError(f"method.init_text={text!r} has no tokens")
            initial = _repeat_to(_token_embeddings(base, ids), n)
        elif init is PromptInit.ARTIFACT:
            initial = _from_artifacts(config, base)
        else:
            if not label_words:
                raise ConfigError("method.init='labels' needs a task with label words (a verbalizer or label names)")
            rows = []
            for word in label_words:
                ids = base.tokenizer(" " + word.strip(), add_special_tokens=False).input_ids
                rows.append(_token_embeddings(base, ids).mean(0))
            labels = torch.stack(rows)[:n]
            fill = _vocab_sample(base, n - labels.shape[0], generator) if n > labels.shape[0] else labels[:0]
            initial = torch.cat([labels, fill])
        return cls(config, base.info.hidden_size, initial)

    def prompt_tensors(self):
        from ..core import PromptTensors

        return PromptTensors(input=self.embedding)

    def export(self) -> dict[str, torch.Tensor]:
        return {"input": self.embedding.detach().to("cpu", torch.float32).clone()}

    @classmethod
    def from_export(cls, config: PromptTuningConfig, tensors: dict[str, torch.Tensor]):
        initial = tensors["input"]
        return cls(config, initial.shape[1], initial)
