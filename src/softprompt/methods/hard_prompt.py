"""A hard prompt: the template and label words as written, no trainable prompt tensors.

Training one evaluates the prompt zero-shot and saves it as an artifact like any other, so a hard
prompt found by `softprompt search` is served, evaluated and mixed into batches the same way. On
an encoder with a linear head only the head trains: the head-only probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from torch import nn

from ..core import PromptTensors
from .base import NoInputPrompt, register_method


@dataclass
class HardPromptConfig:
    """Nothing to set: the prompt is the task's template and verbalizer."""

    seed: int = 0  # accepted like every method's; a hard prompt has nothing random


@register_method
class HardPrompt(NoInputPrompt, nn.Module):
    name: ClassVar[str] = "hard_prompt"
    default_lrs: ClassVar[dict] = {"any": 1e-3}  # only a head (encoders) ever trains
    Config: ClassVar[type] = HardPromptConfig

    def __init__(self, config: HardPromptConfig | None = None):
        super().__init__()
        self.config = config or HardPromptConfig()

    @classmethod
    def initialise(cls, config: HardPromptConfig, base, label_words: Sequence[str] = ()):
        return cls(config)

    def prompt_tensors(self) -> PromptTensors:
        return PromptTensors()

    def export(self) -> dict:
        return {}

    @classmethod
    def from_export(cls, config, tensors) -> "HardPrompt":
        return cls(config)
