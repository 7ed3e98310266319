"""Prompt methods, one small module each, registered by name."""

from .base import Injection, METHODS, get_method, register_method
from .prompt_tuning import PromptTuning, PromptTuningConfig

__all__ = ["Injection", "METHODS", "PromptTuning", "PromptTuningConfig", "get_method", "register_method"]
