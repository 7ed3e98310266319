"""model.quantize: the base's linear layers as int8 for inference, through torchao.

Only the Linear modules inside the base are replaced (weights int8 per channel, activations
quantized per token on each call); the embeddings, the output head (tied to the embeddings in most
small models, and what verbalizer scoring reads), the attention computation, and every prompt and
task head stay in their own precision. The fingerprint is taken before quantizing, so an int8
base is the same model as its float32 self and prompts move between them.
"""

from __future__ import annotations

import importlib.util

import torch

from ..configs import QUANTIZE, check_quantize  # noqa: F401  (the checks live with the configs they check)
from ..errors import ConfigError, ModelError

INSTALL = "pip install 'softprompt[quantize]' (torchao)"


def _kept_float(model: torch.nn.Module) -> set[int]:
    """ids of the Linear modules that stay float: the output head and any module sharing a weight
    with the input embeddings (quantizing a tied weight would untie it and double the memory)."""
    kept = set()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        kept.add(id(output))
    embedding = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is embedding:
            kept.add(id(module))
    return kept


def quantize_model(model: torch.nn.Module, quantize: str, name: str) -> int:
    """Quantize model's linear layers in place as quantize says; returns how many were replaced."""
    if quantize != "int8":
        raise ConfigError(f"model.quantize={quantize!r} is not one of: {', '.join(QUANTIZE)}")
    if importlib.util.find_spec("torchao") is None:
        raise ModelError(f"model.quantize=int8 needs torchao: {INSTALL}")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    kept = _kept_float(model)
    replaced = []

    def chosen(module: torch.nn.Module, fqn: str) -> bool:
        take = isinstance(module, torch.nn.Linear) and id(module) not in kept
        if take:
            replaced.append(fqn)
        return take

    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=chosen)
    if not replaced:
        raise ModelError(f"{name}: model.quantize=int8 found no linear layers to quantize (its blocks use "
                         "other modules, such as GPT-2's Conv1D)")
    return len(replaced)
