"""Score hard prompts on labelled data: a template and a verbalizer, optionally with in-context
demonstrations and contextual calibration (Zhao et al. 2021, "Calibrate Before Use")."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ..core import PromptedModel
from ..errors import ConfigError, DataError
from ..models import BaseModel
from ..tasks.classification import (CONTENT_FREE, ClassificationConfig, ClassificationTask, calibrate, content_free_bias,
                                     content_free_examples)
from ..tasks.metrics import classification_metrics
from ..tasks.readers import Example
from ..tasks.runner import Prepared, TaskPrompt, predict_logits
from ..templates import parse_template

# Content-free inputs: strings that carry no sentiment, topic or entailment, so the class
# probabilities the prompt gives them show its bias. "[MASK]" becomes the tokenizer's mask token.


@dataclass
class HardPrompt:
    """A hard prompt for classification: a template, label words, and whether it goes through the
    model's chat template."""

    template: str
    verbalizer: dict[str, str | list[str]]
    chat: bool = False
    name: str = ""

    def __post_init__(self):
        parse_template(self.template)  # TemplateError names the column
        if not isinstance(self.verbalizer, Mapping) or len(self.verbalizer) < 2:
            raise ConfigError(f"verbalizer {self.verbalizer!r} must map at least two labels to words")
        # ClassificationConfig normalises words to lists and rejects empty ones.
        self.verbalizer = ClassificationConfig(verbalizer=dict(self.verbalizer)).verbalizer
        if not parse_template(self.template).has_mask:
            raise ConfigError(f"template {self.template!r} needs an answer slot {{mask}} for its label words")

    @property
    def labels(self) -> list[str]:
        return list(self.verbalizer)

    def describe(self) -> str:
        """A short name: the given one, else the template and the words."""
        if self.name:
            return self.name
        words = "/".join(w[0] for w in self.verbalizer.values())
        return f"{'chat ' if self.chat else ''}{self.template!r} [{words}]"

    def to_dict(self) -> dict:
        return {"name": self.describe(), "template": self.template, "verbalizer": self.verbalizer, "chat": self.chat}


def hard_task(base: BaseModel, prompt: HardPrompt, *, max_length: int = 256, word_score: str = "sum",
              demonstrations: Sequence[Example] = ()) -> ClassificationTask:
    """The classification task (no trainable parts) that scores a hard prompt's label words."""
    config = ClassificationConfig(template=prompt.template, labels=prompt.labels, verbalizer=prompt.verbalizer,
                                  head="verbalizer", word_score=word_score, max_length=max_length, chat=prompt.chat,
                                  pair="text_b" in parse_template(prompt.template).fields)
    return ClassificationTask(config, base, prompt.labels, demonstrations=demonstrations)


def check_labels(examples: Sequence[Example], labels: Sequence[str], what: str = "data") -> None:
    """DataError when an example's label has no label words."""
    known = set(labels)
    for example in examples:
        if example.label is None:
            raise DataError(f"{example.source or what}: no label; scoring a prompt needs labelled examples")
        if example.label not in known:
            raise DataError(f"{example.source or what}: label {example.label!r} has no verbalizer words "
                            f"(verbalizer labels: {', '.join(labels)})")


@torch.no_grad()
def label_scores(base: BaseModel, task: ClassificationTask, examples: Sequence[Example], *, batch_size: int = 32,
                 progress: bool = False) -> torch.Tensor:
    """(len(examples), n_labels) log-scores of each label's words (not normalised over labels)."""
    if not examples:
        raise DataError("no examples to score")
    unit = TaskPrompt("hard", None, task)
    unlabelled = [Example(e.text, e.text_b, None, e.source, e.fields) for e in examples]
    prepared = [Prepared("hard", task.prepare(e)) for e in unlabelled]
    pm = PromptedModel(base)
    return torch.stack(predict_logits(pm, {"hard": unit}, prepared, batch_size, "left", progress=progress))


def content_free_probs(base: BaseModel, task: ClassificationTask, inputs: Sequence[str] = CONTENT_FREE) -> torch.Tensor:
    """The label probabilities a prompt gives content-free inputs, averaged: its bias, (n_labels,)."""
    return content_free_bias(label_scores(base, task, content_free_examples(task.template.fields, base.tokenizer, inputs)))


@dataclass
class PromptScore:
    """How one hard prompt does on labelled data, with and without calibration."""

    prompt: HardPrompt
    accuracy: float
    macro_f1: float
    calibrated_accuracy: float | None = None
    calibrated_macro_f1: float | None = None
    content_free: list[float] | None = None  # label probabilities of content-free inputs (the bias)
    n_examples: int = 0
    n_demonstrations: int = 0
    seconds: float = 0.0
    source: str = "hand"  # hand | ape | autoprompt | soft-to-hard
    extra: dict = field(default_factory=dict)

    def score(self, metric: str) -> float:
        value = getattr(self, metric)
        if value is None:
            raise ConfigError(f"metric {metric!r} was not computed (calibration is off)")
        return float(value)

    @classmethod
    def from_dict(cls, data: Mapping) -> "PromptScore":
        """A score read back from to_dict's output (saved reports)."""
        known = ("template", "verbalizer", "chat", "name", "source", "accuracy", "macro_f1", "calibrated_accuracy",
                 "calibrated_macro_f1", "content_free", "n_examples", "n_demonstrations", "seconds")
        prompt = HardPrompt(data["template"], data["verbalizer"], bool(data.get("chat", False)), data.get("name", ""))
        return cls(prompt, data["accuracy"], data["macro_f1"], data.get("calibrated_accuracy"),
                   data.get("calibrated_macro_f1"), data.get("content_free"), data.get("n_examples", 0),
                   data.get("n_demonstrations", 0), data.get("seconds", 0.0), data.get("source", "hand"),
                   {k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        out = {**self.prompt.to_dict(), "source": self.source}
        for name in ("accuracy", "macro_f1", "calibrated_accuracy", "calibrated_macro_f1"):
            value = getattr(self, name)
            out[name] = None if value is None else round(float(value), 4)
        out.update(content_free=None if self.content_free is None else [round(p, 4) for p in self.content_free],
                   n_examples=self.n_examples, n_demonstrations=self.n_demonstrations, seconds=round(self.seconds, 1))
        out.update(self.extra)
        return out


def _metrics(scores: torch.Tensor, examples: Sequence[Example], labels: Sequence[str]) -> dict:
    pred = [labels[int(i)] for i in scores.argmax(-1)]
    return classification_metrics([e.label for e in examples], pred, labels)


def score_prompt(base: BaseModel, prompt: HardPrompt, examples: Sequence[Example], *, calibration: bool = True,
                 demonstrations: Sequence[Example] = (), max_length: int = 256, word_score: str = "sum",
                 batch_size: int = 32, progress: bool = False, content_free: Sequence[str] = CONTENT_FREE,
                 source: str = "hand") -> PromptScore:
    """Accuracy and macro-F1 of a hard prompt on labelled examples, raw and calibrated."""
    started = time.perf_counter()
    check_labels(examples, prompt.labels)
    task = hard_task(base, prompt, max_length=max_length, word_score=word_score, demonstrations=demonstrations)
    scores = label_scores(base, task, examples, batch_size=batch_size, progress=progress)
    raw = _metrics(scores, examples, prompt.labels)
    result = PromptScore(prompt, raw["accuracy"], raw["macro_f1"], n_examples=len(examples),
                         n_demonstrations=len(task.demonstrations), source=source)
    if calibration:
        bias = content_free_probs(base, task, content_free)
        fixed = _metrics(calibrate(scores, bias), examples, prompt.labels)
        result.calibrated_accuracy, result.calibrated_macro_f1 = fixed["accuracy"], fixed["macro_f1"]
        result.content_free = [float(p) for p in bias]
    result.seconds = time.perf_counter() - started
    return result


def entropy_bits(probs: Sequence[float]) -> float:
    """Entropy of a distribution in bits (1.0 for a uniform two-label bias)."""
    return -sum(p * math.log2(p) for p in probs if p > 0)
