"""Deep prompts: per-layer key/value prefixes that every attention layer attends to, per row.

Rather than feeding prefixes through each family's cache (whose layout differs per family and
which the encoder stacks of BERT-like models ignore), softprompt registers its own attention
implementation with transformers' AttentionInterface. It wraps the model's original one
(sdpa or eager): before attention, it prepends the current batch's prefix keys and values for
that layer and stack to the keys and values, and extends the mask so row i sees only its own
prefix (rows of one batch may have different tasks, methods and prefix lengths, or none).
Positions are untouched: prefixes have no position, and real tokens keep 0-based positions.
Cached generation stays exact, since the prefixes are prepended anew at every step and never
enter the cache.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

IMPLEMENTATIONS = {"sdpa": "softprompt_sdpa", "eager": "softprompt_eager"}
_CROSS_NAMES = ("encoder_attn", "encdecattention", "crossattention", "cross_attn")


@dataclass
class DeepBatch:
    """Prefix keys/values of one batch: per stack, (layers, 2, B, kv_heads, P, head_dim), and (B, P) validity."""

    kv: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]


def _is_attention(module: nn.Module) -> bool:
    if getattr(module, "layer_idx", None) is not None:
        return True
    # Families whose attention modules carry no layer_idx (DistilBERT): known by class name.
    return type(module).__name__.endswith("Attention") and any(isinstance(c, nn.Linear) for c in module.children())


def _tag_attention_modules(model: nn.Module, encoder: nn.Module | None, causal: bool) -> list[nn.Module]:
    """Mark each attention module (one with no attention module inside it) with its stack and layer."""
    encoder_ids = {id(m) for m in encoder.modules()} if encoder is not None else set()
    found, counters = [], {}
    for name, module in model.named_modules():
        if not _is_attention(module):
            continue
        if any(_is_attention(child) for child in module.modules() if child is not module):
            continue
        lowered = name.lower()
        if any(token in lowered for token in _CROSS_NAMES) or getattr(module, "is_cross_attention", False):
            stack = "cross"
        elif id(module) in encoder_ids or (encoder is None and not causal):
            stack = "encoder"
        else:
            stack = "decoder"
        index = getattr(module, "layer_idx", None)
        module._softprompt_stack = stack
        module._softprompt_layer = index if index is not None else counters.get(stack, 0)
        counters[stack] = counters.get(stack, 0) + 1
        found.append(module)
    return found


def _original_attention(module: nn.Module, name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        return getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    return ALL_ATTENTION_FUNCTIONS[name]


def _prefixed_mask(mask, valid, query, key_len, causal):
    """The attention mask for [prefix; keys]: a row sees its valid prefixes and what it saw before."""
    batch, _, q_len, _ = query.shape
    prefix = valid[:, None, None, :].expand(batch, 1, q_len, valid.shape[1])
    if mask is None:
        if causal and q_len > 1:
            offset = key_len - q_len
            rows = torch.arange(q_len, device=query.device)[:, None] + offset
            real = (rows >= torch.arange(key_len, device=query.device)[None, :]).view(1, 1, q_len, key_len)
        else:
            real = torch.ones(1, 1, q_len, key_len, dtype=torch.bool, device=query.device)
        real = real.expand(batch, 1, q_len, key_len)
        return torch.cat([prefix, real], dim=-1)
    if mask.dtype == torch.bool:
        return torch.cat([prefix.expand(mask.shape[0], mask.shape[1], q_len, -1), mask], dim=-1)
    # additive float mask: 0 where seen, a large negative number where not
    blocked = torch.finfo(mask.dtype).min
    prefix_add = torch.zeros(prefix.shape, dtype=mask.dtype, device=mask.device).masked_fill(~prefix, blocked)
    return torch.cat([prefix_add.expand(mask.shape[0], mask.shape[1], q_len, -1), mask], dim=-1)


def softprompt_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """AttentionInterface entry: prepend this layer's per-row prefixes, then run the original attention."""
    owner_ref = getattr(module, "_softprompt_owner", None)
    owner = owner_ref() if owner_ref is not None else None
    implementation = owner.original_implementation if owner else "sdpa"
    original = _original_attention(module, implementation)
    deep = owner.active_deep if owner is not None else None
    stack = getattr(module, "_softprompt_stack", None)
    if owner is not None and owner.capture is not None and stack is not None:
        # initialisation from real words: record this layer's keys/values of the probe text
        owner.capture.setdefault(stack, {})[module._softprompt_layer] = torch.stack([key[0], value[0]]).detach()
    if deep is None or stack not in deep.kv:
        return original(module, query, key, value, attention_mask, *args, **kwargs)
    kv = deep.kv[stack][module._softprompt_layer]  # (2, B, kv_heads, P, D)
    valid = deep.valid[stack]
    prefix_k = kv[0].to(key.dtype)
    prefix_v = kv[1].to(value.dtype)
    if prefix_k.shape[0] != key.shape[0]:  # e.g. beams: rows were repeated
        reps = key.shape[0] // prefix_k.shape[0]
        prefix_k, prefix_v = prefix_k.repeat_interleave(reps, 0), prefix_v.repeat_interleave(reps, 0)
        valid = valid.repeat_interleave(reps, 0)
    causal = bool(getattr(module, "is_causal", False)) and stack == "decoder"
    mask = _prefixed_mask(attention_mask, valid, query, key.shape[2], causal)
    if implementation == "eager" and mask.dtype == torch.bool:  # eager adds its mask to the scores
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, torch.finfo(query.dtype).min)
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5: relative bias for real keys only; prefixes get none
        pad = bias.new_zeros(*bias.shape[:-1], prefix_k.shape[2])
        kwargs["position_bias"] = torch.cat([pad, bias], dim=-1)
    kwargs["is_causal"] = False
    key = torch.cat([prefix_k, key], dim=2)
    value = torch.cat([prefix_v, value], dim=2)
    return original(module, query, key, value, mask, *args, **kwargs)


def _register() -> None:
    """Register one prefix-aware implementation per original, each with the original's mask format."""
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    masks = {"sdpa": sdpa_mask, "eager": eager_mask}
    for original, name in IMPLEMENTATIONS.items():
        AttentionInterface.register(name, softprompt_attention)
        AttentionMaskInterface.register(name, masks[original])


class DeepPromptSupport:
    """Switches one model to the prefix-aware attention and holds the batch's prefixes."""

    def __init__(self, model: nn.Module, encoder: nn.Module | None, causal: bool, family: str):
        _register()
        self.modules = _tag_attention_modules(model, encoder, causal)
        if not self.modules:
            raise ConfigError(
                f"model family {family!r}: deep prompts need attention modules that follow transformers' "
                "AttentionInterface; none were found in this model"
            )
        configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
        self.original_implementation = model.config._attn_implementation or "sdpa"
        if self.original_implementation not in ("sdpa", "eager"):
            self.original_implementation = "sdpa"
        for config in configs.values():
            config._attn_implementation_internal = IMPLEMENTATIONS[self.original_implementation]
        for module in self.modules:
            module._softprompt_owner = weakref.ref(self)
        self.active_deep: DeepBatch | None = None
        self.capture: dict | None = None
        self.stacks = sorted({m._softprompt_stack for m in self.modules})
