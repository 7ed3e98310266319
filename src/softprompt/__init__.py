"""softprompt: prompt learning for frozen transformers."""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    LoadedPrompt,
    Prediction,
    TrainResult,
    evaluate,
    generate,
    list_models,
    load_model,
    load_prompt,
    predict,
    predict_file,
    predict_mixed,
    stream,
    train,
)
from .core import PromptArtifact  # noqa: E402
from .engine import Engine, GenerationResult, SamplingParams  # noqa: E402
from .interop import export_peft, import_peft  # noqa: E402
from .errors import SoftpromptError  # noqa: E402
from .library import Library  # noqa: E402
from .search import evaluate_candidates, inspect_prompt, search_ape, search_autoprompt  # noqa: E402
from .search import search as search_prompts  # noqa: E402
from .transfer import rank_sources, similarity_matrix, zero_shot  # noqa: E402

__all__ = [
    "Engine",
    "GenerationResult",
    "Library",
    "LoadedPrompt",
    "Prediction",
    "PromptArtifact",
    "SamplingParams",
    "SoftpromptError",
    "TrainResult",
    "__version__",
    "evaluate",
    "evaluate_candidates",
    "export_peft",
    "generate",
    "import_peft",
    "inspect_prompt",
    "list_models",
    "load_model",
    "load_prompt",
    "predict",
    "predict_file",
    "predict_mixed",
    "rank_sources",
    "search_ape",
    "search_autoprompt",
    "search_prompts",
    "similarity_matrix",
    "stream",
    "train",
    "zero_shot",
]
