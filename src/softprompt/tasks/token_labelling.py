"""Token labelling (NER-style BIO tags) with a linear head on each word's first sub-token, as in
P-tuning v2; scored at the span level with seqeval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..models import ModelKind
from ..templates.render import _special_frame
from ..core.batch import virtual
from .conll import TokenExample, read_token_examples
from .kinds import Prediction, TaskDefaults, register_task_kind
from .readers import Example


@dataclass
class TokenLabellingConfig:
    """A token-labelling task: the tag set and the row length."""

    labels: list[str] | None = None  # tag set in order; default: every tag of the training data
    max_length: int = 256  # tokens per row, prompt included; words past it are tagged 'O'

    def __post_init__(self):
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ConfigError(f"task.max_length={self.max_length!r} must be a whole number >= 8")


@dataclass
class TokenItem:
    rows: list[tuple[int, ...]]
    positions: list[int]  # row index of each kept word's first sub-token
    tags: list[int] | None  # gold tag index per kept word
    n_words: int  # words in the sentence (kept or not)
    source: str = ""


@register_task_kind
class TokenLabellingTask(nn.Module, TaskDefaults):
    """Turns sentences into rows and hidden states into per-word tag logits."""

    kind = "token_labelling"
    Config = TokenLabellingConfig
    routes = ("/v1/tag",)  # the HTTP routes that serve it
    view = "tags"  # how the server's page shows a result: a tag per word
    metric_names = ("f1", "precision", "recall", "accuracy")

    def __init__(self, config: TokenLabellingConfig, base, labels: Sequence[str], n_prefix: int = 0):
        super().__init__()
        if base.info.kind is not ModelKind.ENCODER:
            raise ConfigError("task.kind='token_labelling' needs an encoder model (e.g. minilm-l6, BERT, RoBERTa)")
        if not getattr(base.tokenizer, "is_fast", False):
            raise ConfigError("token labelling needs a fast tokenizer (to map sub-tokens to words)")
        self.config = config
        self.tokenizer = base.tokenizer
        self.labels = list(labels)
        self.label_index = {t: i for i, t in enumerate(self.labels)}
        self.outside = self.label_index.get("O", 0)
        self.n_prefix = n_prefix
        self.head = nn.Linear(base.info.hidden_size, len(self.labels))
        self.dropout = nn.Dropout(0.1)
        self.lead, self.trail = _special_frame(self.tokenizer)
        self.template = "{tokens}"

    @classmethod
    def read(cls, path: str, data, *, require_label: bool = True, limit: int | None = None) -> list:
        """Sentences of token-tag lines (CoNLL)."""
        return read_token_examples(path, require_tags=require_label, limit=limit)

    @classmethod
    def unlabelled(cls, value, source: str) -> TokenExample:
        """An input as an untagged sentence (split at whitespace); DataError when empty."""
        if isinstance(value, TokenExample):
            return TokenExample(value.tokens, None, value.source or source)
        text = value.text if isinstance(value, Example) else str(value)
        if not text.split():
            raise DataError(f"{source}: empty text")
        return TokenExample(tuple(text.split()), None, source)

    @classmethod
    def labels_in(cls, examples) -> list[str]:
        """Every tag of the training sentences, 'O' first, then by entity type."""
        tags = sorted({t for e in examples for t in (e.tags or ())}, key=lambda t: (t != "O", t.split("-")[-1], t))
        if not tags:
            raise DataError("the training data has no tags")
        return tags

    def prediction(self, output: torch.Tensor, item: TokenItem, example) -> Prediction:
        tags = self.decode(output, item)
        return Prediction(" ".join(tags), {}, " ".join(example.tokens), example.source, tags)

    @property
    def label_words(self) -> list[str]:
        return [t.split("-")[-1] for t in self.labels]

    def prepare(self, example, where: str = "") -> TokenItem:
        """One sentence as a row: specials, the prompt's virtual tokens, then the words' sub-tokens."""
        where = where or example.source
        encoded = self.tokenizer(list(example.tokens), is_split_into_words=True, add_special_tokens=False)
        word_ids = encoded.word_ids()
        budget = self.config.max_length - len(self.lead) - len(self.trail) - self.n_prefix
        if budget < 1:
            raise DataError(f"{where}: max_length={self.config.max_length} leaves no room for words")
        ids = encoded.input_ids[:budget]
        offset = len(self.lead) + self.n_prefix
        positions, seen = [], set()
        for i, w in enumerate(word_ids[:budget]):
            if w is not None and w not in seen:
                seen.add(w)
                positions.append(offset + i)
        row = tuple(self.lead) + tuple(virtual(k) for k in range(self.n_prefix)) + tuple(ids) + tuple(self.trail)
        tags = None
        if example.tags is not None:
            unknown = [t for t in example.tags if t not in self.label_index]
            if unknown:
                raise DataError(f"{where}: unknown tag {unknown[0]!r} (tags: {', '.join(self.labels)})")
            tags = [self.label_index[t] for t in example.tags[: len(positions)]]
        return TokenItem([row], positions, tags, len(example.tokens), where)

    def prepare_strict(self, example, where: str = "") -> TokenItem:
        """prepare's item for a sentence whose sub-tokens all fit task.max_length; InputTooLong (with the
        token count and the limit) for one whose last words prepare would cut and tag 'O' unread."""
        from .generation import InputTooLong

        where = where or example.source
        words = self.tokenizer(list(example.tokens), is_split_into_words=True, add_special_tokens=False).input_ids
        tokens, limit = len(self.lead) + self.n_prefix + len(words) + len(self.trail), self.config.max_length
        if tokens > limit:
            raise InputTooLong(f"{where or 'the input'} is {tokens} tokens with the prompt and special tokens, "
                               f"over the {limit} tokens the prompt takes (its task.max_length)", tokens, limit)
        return self.prepare(example, where)

    def class_logits(self, pm, hidden, batch, items, row_index) -> list[torch.Tensor]:
        """Per item, (kept words, tags) logits read at each word's first sub-token."""
        starts = batch.first_index.tolist()  # one host copy per batch, not one device read per row
        rows = [rows[0] for rows in row_index]
        flat = torch.tensor([(r, starts[r] + p) for r, item in zip(rows, items) for p in item.positions],
                            device=hidden.device).view(-1, 2)
        logits = self.head(self.dropout(hidden[flat[:, 0], flat[:, 1]].float()))  # one head call for the batch
        return list(torch.split(logits, [len(item.positions) for item in items]))

    # ---- training and evaluation ---------------------------------------------------------------
    def loss_count(self, items) -> int:
        return sum(len(item.tags) for item in items)

    def loss_sum(self, outputs, items) -> torch.Tensor:
        logits = torch.cat(list(outputs))
        target = torch.tensor([t for item in items for t in item.tags], device=logits.device)
        return nn.functional.cross_entropy(logits, target, reduction="sum")

    def decode(self, logits: torch.Tensor, item: TokenItem) -> list[str]:
        tags = [self.labels[i] for i in logits.argmax(-1).tolist()]
        return tags + ["O"] * (item.n_words - len(tags))

    def metrics(self, outputs, items, examples) -> dict:
        from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

        pred = [self.decode(o, item) for o, item in zip(outputs, items)]
        gold = [list(e.tags) for e in examples]
        correct = sum(p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs))
        total = sum(len(g) for g in gold)
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
        per_class = {k: {m: float(v[m]) for m in ("precision", "recall", "f1-score", "support")}
                     for k, v in report.items() if k not in ("micro avg", "macro avg", "weighted avg")}
        return {
            "f1": float(f1_score(gold, pred, zero_division=0)),
            "precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0)),
            "accuracy": correct / total if total else 0.0,
            "n": len(gold),
            "per_class": per_class,
        }

    def export(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v.detach().to("cpu", torch.float32).clone() for k, v in self.head.state_dict().items()}

    def load_export(self, tensors) -> None:
        self.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
