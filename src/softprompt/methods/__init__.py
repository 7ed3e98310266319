"""Prompt methods, one small module each, registered by name."""

from .base import METHODS, PromptMethod, get_method, register_method
from .hard_prompt import HardPrompt, HardPromptConfig
from .prefix_tuning import PrefixTuning, PrefixTuningConfig
from .prompt_tuning import PromptTuning, PromptTuningConfig
from .ptuning import PTuning, PTuningConfig
from .ptuning_v2 import PTuningV2, PTuningV2Config

__all__ = [
    "HardPrompt",
    "HardPromptConfig",
    "METHODS",
    "PTuning",
    "PTuningConfig",
    "PTuningV2",
    "PTuningV2Config",
    "PromptMethod",
    "PrefixTuning",
    "PrefixTuningConfig",
    "PromptTuning",
    "PromptTuningConfig",
    "get_method",
    "register_method",
]
