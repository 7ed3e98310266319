"""The few facts the core needs about a model family, as data.

Family differences live here and only here. A family is described by its config (sizes) and by a
row of `FAMILY_FACTS` (quirks), so supporting a new family means adding data, not branches.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from enum import Enum

from torch import nn

from ..errors import ModelError


class ModelKind(str, Enum):
    """How a base model consumes a prompt and produces an answer."""

    CAUSAL = "causal"  # decoder-only LM: answer read from next-token scores
    ENCODER = "encoder"  # bidirectional encoder: answer from a head (or a masked-LM slot)
    SEQ2SEQ = "seq2seq"  # encoder-decoder: prompt enters the encoder, answer from the decoder


# Quirks per `config.model_type`:
#   position_offset: added to 0-based position ids before the model sees them. RoBERTa-style
#     embeddings count positions from padding_idx + 1 when handed explicit ids.
#   position_ids: "absolute" (the model takes position ids; left padding is safe when we pass them),
#     "relative" (no absolute positions: padding side never matters), "implicit" (positions are
#     0..L-1 whatever we pass, so encoder inputs must be right-padded).
#   mlm_head: attribute names of a masked-LM model's head, applied in order to hidden states to get
#     vocabulary logits (get_output_embeddings() alone is only the last projection).
FAMILY_FACTS: dict[str, dict] = {
    "gpt2": {"kind": ModelKind.CAUSAL},
    "llama": {"kind": ModelKind.CAUSAL},
    "qwen2": {"kind": ModelKind.CAUSAL},
    "qwen3": {"kind": ModelKind.CAUSAL},
    "mistral": {"kind": ModelKind.CAUSAL},
    "gemma": {"kind": ModelKind.CAUSAL},
    "phi3": {"kind": ModelKind.CAUSAL},
    "gpt_neox": {"kind": ModelKind.CAUSAL},
    "opt": {"kind": ModelKind.CAUSAL},
    "bert": {"kind": ModelKind.ENCODER, "mlm_head": ("cls",)},
    "roberta": {"kind": ModelKind.ENCODER, "position_offset": "padding_idx+1", "mlm_head": ("lm_head",)},
    "xlm-roberta": {"kind": ModelKind.ENCODER, "position_offset": "padding_idx+1", "mlm_head": ("lm_head",)},
    "camembert": {"kind": ModelKind.ENCODER, "position_offset": "padding_idx+1", "mlm_head": ("lm_head",)},
    "distilbert": {"kind": ModelKind.ENCODER,
                   "mlm_head": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")},
    "electra": {"kind": ModelKind.ENCODER, "mlm_head": ("generator_predictions", "generator_lm_head")},
    "deberta-v2": {"kind": ModelKind.ENCODER, "position_ids": "relative"},
    "t5": {"kind": ModelKind.SEQ2SEQ, "position_ids": "relative"},
    "mt5": {"kind": ModelKind.SEQ2SEQ, "position_ids": "relative"},
    "bart": {"kind": ModelKind.SEQ2SEQ, "position_ids": "implicit"},
    "mbart": {"kind": ModelKind.SEQ2SEQ, "position_ids": "implicit"},
}


@dataclass(frozen=True)
class ModelInfo:
    """Sizes and quirks of one loaded base model."""

    model_type: str
    kind: ModelKind
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    position_offset: int
    position_ids: str  # "absolute" | "relative" | "implicit"
    mlm_head: tuple[str, ...] | None = None  # encoders loaded with a masked-LM head: its modules, in order

    @property
    def has_mlm_head(self) -> bool:
        """Whether word scores can be read at a mask position (an encoder loaded with its MLM head)."""
        return self.mlm_head is not None

    @property
    def honours_left_padding(self) -> bool:
        """Whether the model gives the same row outputs when its inputs are left-padded."""
        return self.position_ids in ("absolute", "relative")


def _first_attr(config, names: tuple[str, ...], default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def kind_of(config) -> ModelKind:
    """The kind of a transformers config: known family first, then the config's own hints."""
    facts = FAMILY_FACTS.get(config.model_type)
    if facts is not None:
        return facts["kind"]
    if getattr(config, "is_encoder_decoder", False):
        return ModelKind.SEQ2SEQ
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in architectures) or getattr(config, "is_decoder", False):
        return ModelKind.CAUSAL
    if any(a.endswith(("ForMaskedLM", "Model")) for a in architectures):
        return ModelKind.ENCODER
    raise ModelError(
        f"model type {config.model_type!r} is not a known family and its config does not say whether it "
        "is a causal LM, an encoder or an encoder-decoder; pass kind='causal'|'encoder'|'seq2seq'"
    )


def describe(config, base_module, kind: ModelKind | None = None) -> ModelInfo:
    """Build the ModelInfo of a loaded model from its config and its forward signature."""
    kind = kind or kind_of(config)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first_attr(text_config, ("hidden_size", "d_model", "n_embd", "dim"))
    layers = _first_attr(text_config, ("num_hidden_layers", "num_layers", "n_layer", "n_layers"))
    heads = _first_attr(text_config, ("num_attention_heads", "num_heads", "n_head", "n_heads"))
    if hidden is None or layers is None or heads is None:
        raise ModelError(
            f"model type {config.model_type!r}: cannot read hidden size, layer count and head count from its config"
        )
    kv_heads = _first_attr(text_config, ("num_key_value_heads",), heads)
    head_dim = _first_attr(text_config, ("head_dim", "d_kv"), hidden // heads)
    facts = FAMILY_FACTS.get(config.model_type, {})
    offset = facts.get("position_offset", 0)
    if offset == "padding_idx+1":
        pad = getattr(text_config, "pad_token_id", None)
        offset = (1 if pad is None else int(pad)) + 1
    positions = facts.get("position_ids")
    if positions is None:
        accepts = "position_ids" in inspect.signature(base_module.forward).parameters
        positions = "absolute" if accepts else "implicit"
    mlm_head = facts.get("mlm_head") if kind is ModelKind.ENCODER else None
    if mlm_head and not all(isinstance(getattr(base_module, name, None), nn.Module) for name in mlm_head):
        mlm_head = None  # loaded as a bare encoder (AutoModel): no head to read words from
    return ModelInfo(
        model_type=config.model_type,
        kind=kind,
        hidden_size=int(hidden),
        num_layers=int(layers),
        num_heads=int(heads),
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        vocab_size=int(text_config.vocab_size),
        position_offset=int(offset),
        position_ids=positions,
        mlm_head=tuple(mlm_head) if mlm_head else None,
    )
