"""The engine: one inference path for scoring and generation, batched continuously across prompts."""

from .engine import (Engine, EngineBusy, EngineClosed, EnginePrompt, GenerationHandle, GenerationResult, RequestState,
                     generate_rows)
from .sampling import SamplingParams

__all__ = ["Engine", "EngineBusy", "EngineClosed", "EnginePrompt", "GenerationHandle", "GenerationResult",
           "RequestState", "SamplingParams", "generate_rows"]
