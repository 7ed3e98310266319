"""Soft-to-hard reading of a trained prompt: the nearest vocabulary tokens (cosine) of each virtual
token, and how the prompt scores when every virtual token is replaced by its nearest token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core import PromptedModel
from ..errors import ConfigError
from ..methods.prompt_tuning import PromptTuning, PromptTuningConfig
from ..tasks.readers import Example
from ..tasks.runner import Prepared, TaskPrompt, predict_logits


@dataclass
class VirtualTokenReading:
    """One virtual token: its nearest tokens, their cosine similarities, and its norm against the vocabulary's."""

    index: int
    tokens: list[str]
    token_ids: list[int]
    cosine: list[float]
    norm: float

    def to_dict(self) -> dict:
        return {"index": self.index, "tokens": self.tokens, "token_ids": self.token_ids,
                "cosine": [round(c, 4) for c in self.cosine], "norm": round(self.norm, 4)}


@dataclass
class PromptReading:
    """What a soft prompt reads as, and the scores of the soft prompt and of its projection."""

    tokens: list[VirtualTokenReading]
    projected_text: str  # the nearest token of every virtual token, in order
    vocabulary_norm: float  # mean norm of the vocabulary's embeddings, for scale
    soft_metrics: dict | None = None
    projected_metrics: dict | None = None

    def to_dict(self) -> dict:
        strip = (lambda m: None if m is None else {k: v for k, v in m.items() if k != "per_class"})
        return {"projected_text": self.projected_text, "vocabulary_norm": round(self.vocabulary_norm, 4),
                "soft": strip(self.soft_metrics), "projected": strip(self.projected_metrics),
                "virtual_tokens": [t.to_dict() for t in self.tokens]}

    def to_text(self) -> str:
        lines = [f"{'#':>3}  {'norm':>6}  nearest tokens (cosine)"]
        for t in self.tokens:
            near = "  ".join(f"{tok!r} {c:.2f}" for tok, c in zip(t.tokens, t.cosine))
            lines.append(f"{t.index:>3}  {t.norm:6.2f}  {near}")
        lines.append(f"projected prompt: {self.projected_text!r} (vocabulary mean norm {self.vocabulary_norm:.2f})")
        for name, metrics in (("soft prompt", self.soft_metrics), ("projected", self.projected_metrics)):
            if metrics:
                lines.append(f"{name:<12} accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}")
        return "\n".join(lines)


def nearest_tokens(prompt: torch.Tensor, embeddings: torch.Tensor, top_k: int = 5,
                   exclude: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities, token ids), each (n_virtual, top_k), of the vocabulary rows nearest each prompt row."""
    if prompt.shape[-1] != embeddings.shape[-1]:
        raise ConfigError(f"prompt width {prompt.shape[-1]} does not match the embedding width {embeddings.shape[-1]}")
    p = torch.nn.functional.normalize(prompt.float(), dim=-1)
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    sims = p @ e.T
    if exclude:
        sims[:, list(exclude)] = -2.0
    return torch.topk(sims, min(top_k, sims.shape[1]), dim=-1)


def inspect_prompt(unit: TaskPrompt, base, examples: Sequence[Example] = (), *, top_k: int = 5,
                   batch_size: int = 32, progress: bool = False) -> PromptReading:
    """Nearest tokens of each virtual token of a loaded prompt (prompt tuning, P-tuning); with
    labelled examples, the scores of the soft prompt and of the prompt made of the nearest tokens."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k={top_k!r} must be a whole number >= 1")
    tensors = unit.method.prompt_tensors() if unit.method is not None else None
    if tensors is None or tensors.input is None:
        raise ConfigError("this prompt has no virtual input tokens to read (deep prompts live inside the layers); "
                          "inspect reads prompt_tuning and ptuning prompts")
    prompt = tensors.input.detach()
    weight = base.input_embeddings().weight.detach()
    special = [i for i in (getattr(base.tokenizer, "all_special_ids", []) or []) if i < weight.shape[0]]
    sims, ids = nearest_tokens(prompt.to(weight.device), weight, top_k, special)
    readings = [
        VirtualTokenReading(i, [base.tokenizer.decode([t]) for t in ids[i].tolist()], ids[i].tolist(),
                            sims[i].tolist(), float(prompt[i].float().norm()))
        for i in range(prompt.shape[0])
    ]
    nearest = ids[:, 0]
    reading = PromptReading(readings, base.tokenizer.decode(nearest.tolist()),
                            float(weight.float().norm(dim=-1).mean()))
    if examples:
        task = unit.task
        projected = PromptTuning(PromptTuningConfig(num_virtual_tokens=prompt.shape[0], init="random"),
                                 prompt.shape[1], weight[nearest].float().cpu())
        pm = PromptedModel(base)
        for name, method in (("soft", unit.method), ("projected", projected.to(weight.device))):
            scoring = TaskPrompt(unit.key, method, task)
            items = [Prepared(unit.key, task.prepare(e)) for e in examples]
            outputs = predict_logits(pm, {unit.key: scoring}, items, batch_size, progress=progress)
            metrics = task.metrics(outputs, [p.item for p in items], examples)
            setattr(reading, f"{name}_metrics", metrics)
    return reading
