"""A short hash that identifies a base model: its architecture facts and a sample of its weights."""

from __future__ import annotations

import hashlib
import json

import torch

_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "d_model",
    "n_embd",
    "num_hidden_layers",
    "num_layers",
    "n_layer",
    "num_attention_heads",
    "num_heads",
    "n_head",
    "num_key_value_heads",
    "intermediate_size",
    "d_ff",
)


def fingerprint(model: torch.nn.Module, sample_rows: int = 64, sample_cols: int = 32) -> str:
    """Hex digest over the architecture facts and strided rows of the input embedding matrix.

    Weights are rounded to bfloat16 first, so a model loaded in float32, float16 or bfloat16 keeps
    one fingerprint, while any retrained or differently quantised copy gets another.
    """
    config = model.config
    facts = {key: getattr(config, key) for key in _CONFIG_KEYS if getattr(config, key, None) is not None}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    weight = model.get_input_embeddings().weight.detach()
    step = max(1, weight.shape[0] // sample_rows)
    sample = weight[::step][:sample_rows, :sample_cols].to("cpu", torch.float32).to(torch.bfloat16)
    digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
