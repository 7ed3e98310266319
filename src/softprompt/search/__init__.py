"""Hard-prompt search and soft-to-hard reading: score templates x verbalizers (zero- or few-shot,
optionally calibrated), report how sensitive a task is to the prompt, propose prompts (APE,
AutoPrompt), and read a trained soft prompt as its nearest words."""

from .ape import APEConfig, APEResult, search_ape
from .autoprompt import AutoPromptConfig, AutoPromptResult, search_autoprompt
from .candidates import SensitivityReport, evaluate_candidates, expand_candidates
from .demos import sample_demonstrations
from .run import SearchConfig, SearchResult, load_search_config, search
from .scoring import (CONTENT_FREE, HardPrompt, PromptScore, calibrate, content_free_probs, hard_task, label_scores,
                      score_prompt)
from .soft_to_hard import PromptReading, inspect_prompt, nearest_tokens

__all__ = [
    "APEConfig",
    "APEResult",
    "AutoPromptConfig",
    "AutoPromptResult",
    "CONTENT_FREE",
    "HardPrompt",
    "PromptReading",
    "PromptScore",
    "SearchConfig",
    "SearchResult",
    "SensitivityReport",
    "calibrate",
    "content_free_probs",
    "evaluate_candidates",
    "expand_candidates",
    "hard_task",
    "inspect_prompt",
    "label_scores",
    "load_search_config",
    "nearest_tokens",
    "sample_demonstrations",
    "score_prompt",
    "search",
    "search_ape",
    "search_autoprompt",
]
