"""What the deep-prompt methods share: shapes, initialisation from real words, validation."""

from __future__ import annotations

from enum import Enum

import torch

from ..errors import ArtifactError, ConfigError


class DeepInit(str, Enum):
    """How per-layer prefixes start."""

    RANDOM = "random"  # small noise at the scale of the model's own keys and values
    WORDS = "words"  # the keys/values the model computes for real words (init_text or label words)


def validate_deep_config(config) -> None:
    """Checks shared by the deep-prompt methods' configs."""
    from ..configs import check_whole, coerce_enum

    coerce_enum(config, "init", DeepInit, "method")
    check_whole(config, "prefix_length", 1, 1024, "method")
    check_whole(config, "position_shift", 0, 1 << 16, "method")


def deep_stacks(base, cross_attention: bool = False) -> list[str]:
    """Which attention stacks get prefixes: the decoder (causal), the encoder, or encoder and decoder
    (and cross-attention when asked) for encoder-decoders."""
    kind = base.info.kind.value
    if kind == "causal":
        return ["decoder"]
    if kind == "encoder":
        return ["encoder"]
    return ["encoder", "decoder"] + (["cross"] if cross_attention else [])


def prefix_shape(base, length: int) -> tuple[int, ...]:
    info = base.info
    return (info.num_layers, 2, info.num_kv_heads, length, info.head_dim)


def word_activations(base, stacks: list[str], length: int, text: str) -> dict[str, torch.Tensor]:
    """Keys/values of `text`'s tokens in every layer, repeated or cut to `length` positions."""
    from ..core import PromptedModel

    ids = base.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError(f"method.init_text={text!r} has no tokens")
    reps = -(-length // len(ids))
    captured = PromptedModel(base).capture_kv((ids * reps)[: max(length, 1)])
    out = {}
    for stack in stacks:
        source = captured.get(stack if stack != "cross" else "decoder")
        if source is None:
            raise ConfigError(f"could not read {stack} activations to initialise prefixes")
        out[stack] = source[:, :, :, :length].contiguous()
    return out


def random_prefixes(base, stacks: list[str], length: int, seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Noise at a fraction of the scale of real activations, so a fresh prefix does not swamp the model."""
    generator = torch.Generator().manual_seed(seed)
    reference = word_activations(base, stacks, 8, "the a of and to in is")
    return {
        stack: torch.randn(prefix_shape(base, length), generator=generator) * reference[stack].std() * scale
        for stack in stacks
    }


def check_deep_tensors(tensors: dict[str, torch.Tensor], base, where: str = "artifact") -> None:
    """Refuse prefixes whose layer/head/width layout does not fit the base model."""
    info = base.info
    for name, t in tensors.items():
        if not name.startswith("deep."):
            continue
        expected = (info.num_layers, 2, info.num_kv_heads, info.head_dim)
        got = (t.shape[0], t.shape[1], t.shape[2], t.shape[4]) if t.dim() == 5 else tuple(t.shape)
        if got != expected:
            raise ArtifactError(
                f"{where}: prefix {name!r} has layout (layers, 2, kv_heads, _, head_dim)={got}, "
                f"but {base.name!r} needs {expected}"
            )
