"""Per-row key/value prefixes in every attention layer, carried by the forward pass that uses them.

Deep prompts (prefix tuning, P-tuning v2), compiled prompts (the keys/values of a prompt's fixed
start, computed once) and the decoding cache of running rows are all the same thing to attention:
keys and values that a row attends to before its own, one set per row. softprompt registers an
attention implementation with transformers' AttentionInterface that wraps the model's own (sdpa or
eager) and prepends them, extending the mask so row i sees only its own.

Nothing of a call lives on the shared model: what one forward pass adds to attention travels in an
`AttentionState` set around that call (`attention_state(...)`, a context variable, so each thread
and each call has its own). The only change to the model is made once: its attention
implementation becomes the prefix-aware wrapper of the one it had, which without a state is the
original function. Positions are untouched: deep prefixes have no position; compiled and cached
entries keep the positions they were computed at, and the rows that follow them are given theirs.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field

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

    def select(self, rows: torch.Tensor) -> "DeepBatch":
        """The prefixes of the given rows (repeats allowed: beams)."""
        return DeepBatch({s: kv[:, :, rows] for s, kv in self.kv.items()}, {s: v[rows] for s, v in self.valid.items()})


@dataclass
class SlotView:
    """The decoder-stack keys/values of running rows during one decoding step.

    Row b of the batch is slot b of the buffers; its new key/value (one token) is written at
    `write_at[b]`, and it attends to the buffer entries `valid[b]` (those written before and the new one).
    """

    keys: list[torch.Tensor]  # per layer (slots, kv_heads, capacity, head_dim)
    values: list[torch.Tensor]
    write_at: torch.Tensor  # (B,) long
    valid: torch.Tensor  # (B, width) bool
    rows: torch.Tensor  # (B,) arange: the slots written


@dataclass
class AttentionState:
    """What one forward pass adds to attention: per-row prefixes, a decoding cache, a capture."""

    deep: DeepBatch | None = None
    slots: SlotView | None = None  # decoder stack: attend to and append to these (one new token a row)
    capture: dict | None = field(default=None)  # filled: stack -> layer -> (keys, values) of this pass's own tokens


# The forward argument that carries a decoding step's slots: transformers passes extra forward
# arguments down to the attention function, and an argument (unlike a context variable) can be traced
# by torch.compile.
SLOTS_ARGUMENT = "softprompt_slots"

_STATE: ContextVar[AttentionState | None] = ContextVar("softprompt_attention_state", default=None)


@contextlib.contextmanager
def attention_state(state: AttentionState | None):
    """Scope a forward pass's attention state to the code inside (this thread and call only)."""
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def checkpoint_contexts():
    """For torch.utils.checkpoint's context_fn: a layer recomputed in the backward pass (possibly in
    another thread) sees the attention state its forward saw."""
    state = _STATE.get()
    return contextlib.nullcontext(), attention_state(state)


def carry_state_into_checkpoints(model: nn.Module) -> None:
    """Give each checkpointed layer of a model (however checkpointing was switched on) a checkpoint
    function that replays the attention state in recomputation. Idempotent and stateless: the state
    is read when each layer's forward runs."""
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or getattr(func, "_softprompt", False) or not getattr(module, "gradient_checkpointing", False):
            continue
        keywords = getattr(func, "keywords", {}) or {}
        if keywords.get("use_reentrant", True) is not False or "context_fn" in keywords:
            continue  # reentrant checkpoints take no context_fn (and drop gradients of outside prefixes anyway)
        wrapped = functools.partial(func, context_fn=checkpoint_contexts)
        wrapped._softprompt = True
        module._gradient_checkpointing_func = wrapped


def _is_attention(module: nn.Module) -> bool:
    if getattr(module, "layer_idx", None) is not None:
        return True
    # Families whose attention modules carry no layer_idx (DistilBERT): known by class name.
    return type(module).__name__.endswith("Attention") and any(isinstance(c, nn.Linear) for c in module.children())


def _tag_attention_modules(model: nn.Module, encoder: nn.Module | None, causal: bool, original: str) -> list[nn.Module]:
    """Mark each attention module (one with no attention module inside it) with its stack, layer and
    original implementation: static facts, the same for every call."""
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
        module._softprompt_original = _original_attention(module, original)
        module._softprompt_eager = original == "eager"
        module._softprompt_plain_sdpa = _is_plain_sdpa(module._softprompt_original)
        counters[stack] = counters.get(stack, 0) + 1
        found.append(module)
    return found


def _is_plain_sdpa(function) -> bool:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return function is sdpa_attention_forward


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


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    """eager attention adds its mask to the scores: a boolean mask becomes 0 / a large negative number."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def softprompt_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """AttentionInterface entry: prepend this row's prefixes (or its decoding cache), then run the original."""
    stack = getattr(module, "_softprompt_stack", None)
    if stack is None:  # a module we never tagged (another model sharing the config object): plain sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        kwargs.pop(SLOTS_ARGUMENT, None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    slots = kwargs.pop(SLOTS_ARGUMENT, None)  # decoding steps pass their slots as an argument (traceable)
    if slots is not None and stack == "decoder":
        return _slot_attention(module, slots, module._softprompt_layer, query, key, value, *args, **kwargs)
    original = module._softprompt_original
    state = _STATE.get()
    if state is None:
        return original(module, query, key, value, attention_mask, *args, **kwargs)
    layer = module._softprompt_layer
    if state.capture is not None:
        state.capture.setdefault(stack, {})[layer] = (key.detach(), value.detach())
    if state.slots is not None and stack == "decoder":
        return _slot_attention(module, state.slots, layer, query, key, value, *args, **kwargs)
    deep = state.deep
    if deep is None or stack not in deep.kv:
        return original(module, query, key, value, attention_mask, *args, **kwargs)
    kv = deep.kv[stack][layer]  # (2, B, kv_heads, P, D)
    valid = deep.valid[stack]
    prefix_k = kv[0].to(key.dtype)
    prefix_v = kv[1].to(value.dtype)
    if prefix_k.shape[0] != key.shape[0]:  # e.g. beams: rows were repeated
        reps = key.shape[0] // prefix_k.shape[0]
        prefix_k, prefix_v = prefix_k.repeat_interleave(reps, 0), prefix_v.repeat_interleave(reps, 0)
        valid = valid.repeat_interleave(reps, 0)
    causal = bool(getattr(module, "is_causal", False)) and stack == "decoder"
    mask = _prefixed_mask(attention_mask, valid, query, key.shape[2], causal)
    if module._softprompt_eager and mask.dtype == torch.bool:
        mask = _additive(mask, query.dtype)
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5: relative bias for real keys only; prefixes get none
        pad = bias.new_zeros(*bias.shape[:-1], prefix_k.shape[2])
        kwargs["position_bias"] = torch.cat([pad, bias], dim=-1)
    kwargs["is_causal"] = False
    key = torch.cat([prefix_k, key], dim=2)
    value = torch.cat([prefix_v, value], dim=2)
    return original(module, query, key, value, mask, *args, **kwargs)


_PLAIN_SDPA_KWARGS = {"dropout", "scaling", "is_causal", "position_ids", "cache_position", "use_cache",
                      "output_attentions", "past_key_values", "cache", "position_embeddings"}


def _slot_attention(module, slots: SlotView, layer: int, query, key, value, *args, **kwargs):
    """One decoding step: write each row's new key/value into its slot, attend to the slot's valid entries."""
    keys, values = slots.keys[layer], slots.values[layer]
    # (B, kv_heads, 1, D) -> the entry write_at[b] of slot b, on the device without a host round trip
    keys[slots.rows, :, slots.write_at] = key[:, :, 0].to(keys.dtype)
    values[slots.rows, :, slots.write_at] = value[:, :, 0].to(values.dtype)
    width = slots.valid.shape[1]
    batch = key.shape[0]
    keys, values = keys[:batch, :, :width], values[:batch, :, :width]
    mask = slots.valid[:, None, None, :]
    if module._softprompt_plain_sdpa and set(kwargs) <= _PLAIN_SDPA_KWARGS and not args:
        # transformers' sdpa with nothing family-specific: one query a row, so the query heads that
        # share a key/value head go where query positions go, and keys/values are never repeated
        heads, groups = keys.shape[1], query.shape[1] // keys.shape[1]
        packed = query.reshape(batch, heads, groups, query.shape[-1])
        out = torch.nn.functional.scaled_dot_product_attention(
            packed, keys, values, attn_mask=mask, scale=kwargs.get("scaling"))
        return out.reshape(batch, heads * groups, 1, -1).transpose(1, 2), None
    if module._softprompt_eager:
        mask = _additive(mask, query.dtype)
    kwargs["is_causal"] = False
    return module._softprompt_original(module, query, keys, values, mask, *args, **kwargs)


_REGISTER_LOCK = threading.Lock()
_REGISTERED = False


def _register() -> None:
    """Register one prefix-aware implementation per original, each with the original's mask format."""
    global _REGISTERED
    with _REGISTER_LOCK:
        if _REGISTERED:
            return
        from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
        from transformers.modeling_utils import AttentionInterface

        masks = {"sdpa": sdpa_mask, "eager": eager_mask}
        for original, name in IMPLEMENTATIONS.items():
            AttentionInterface.register(name, softprompt_attention)
            AttentionMaskInterface.register(name, masks[original])
        _REGISTERED = True


def attention_implementation(model: nn.Module) -> str:
    """The attention implementation a model was loaded with (ours count as their original)."""
    name = getattr(model.config, "_attn_implementation", None) or "sdpa"
    for original, ours in IMPLEMENTATIONS.items():
        if name == ours:
            return original
    return name


class DeepPromptSupport:
    """The static facts of one model's prefix-aware attention: which modules, stacks and layers.

    Built once per model (under a lock); holds nothing about any call."""

    def __init__(self, model: nn.Module, encoder: nn.Module | None, causal: bool, family: str):
        original = attention_implementation(model)
        if original not in IMPLEMENTATIONS:
            raise ConfigError(
                f"model family {family!r} is loaded with attention implementation {original!r}, which cannot "
                "attend to per-row prompt prefixes; load it with attn_implementation='sdpa' or 'eager'"
            )
        _register()
        self.modules = _tag_attention_modules(model, encoder, causal, original)
        if not self.modules:
            raise ConfigError(
                f"model family {family!r}: deep prompts need attention modules that follow transformers' "
                "AttentionInterface; none were found in this model"
            )
        self.original_implementation = original
        configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
        for config in configs.values():
            config._attn_implementation_internal = IMPLEMENTATIONS[original]
        self.stacks = sorted({m._softprompt_stack for m in self.modules})


_SUPPORT_LOCK = threading.Lock()


def support_for(model: nn.Module, encoder: nn.Module | None, causal: bool, family: str) -> DeepPromptSupport:
    """The model's prefix-aware attention, switched on at first use (once, whichever thread asks first)."""
    support = getattr(model, "_softprompt_deep", None)
    if support is not None:
        return support
    with _SUPPORT_LOCK:
        support = getattr(model, "_softprompt_deep", None)
        if support is None:
            support = DeepPromptSupport(model, encoder, causal, family)
            object.__setattr__(model, "_softprompt_deep", support)
    return support
