"""Classification of single texts and text pairs: by verbalizer (causal LM, encoder-decoder, masked
LM) or head.

A verbalizer maps each label to one or more words; a label's score is the log-probability the
model gives its words where the answer slot is (several tokens per word handled): after the prompt
for a causal LM, from the decoder for an encoder-decoder, at mask tokens written at {mask} for an
encoder loaded with its masked-LM head. Other encoders get a linear head on a pooled state (the
head is trained with the prompt; the base stays frozen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Mapping, Sequence

import torch
from torch import nn

from ..configs import coerce_enum
from ..core import PromptBatch, PromptedModel
from ..errors import ConfigError, DataError
from ..models import ModelKind
from ..templates import TemplateRenderer, parse_template
from .kinds import TaskDefaults, register_task_kind, wants_dev_split, warn_if_cut_misses_labels
from .readers import sample_k_per_class, split_examples

CONTENT_FREE = ("N/A", "", "[MASK]")  # the content-free inputs of contextual calibration (Zhao et al., 2021)


class HeadKind(str, Enum):
    """How class scores are read from the model."""

    AUTO = "auto"  # verbalizer for causal LMs and encoder-decoders, linear head for encoders
    VERBALIZER = "verbalizer"
    LINEAR = "linear"


class Pooling(str, Enum):
    AUTO = "auto"  # first token ([CLS]) for encoders, last token for causal LMs
    FIRST = "first"
    LAST = "last"
    MEAN = "mean"


DEFAULT_TEMPLATES = {
    (ModelKind.CAUSAL, False): "{text}\nAnswer: {mask}",
    (ModelKind.CAUSAL, True): "{text}\nQuestion: {text_b}\nAnswer: {mask}",
    (ModelKind.SEQ2SEQ, False): "{text}",
    (ModelKind.SEQ2SEQ, True): "{text} {sep} {text_b}",
    (ModelKind.ENCODER, False): "{text}",
    (ModelKind.ENCODER, True): "{text} {sep} {text_b}",
}


@dataclass
class ClassificationConfig:
    """A classification task: template, labels and how they are scored."""

    template: str | None = None  # default depends on the model kind and on whether pairs are used
    labels: list[str] | None = None  # label set and order; default: verbalizer keys, else from training data
    verbalizer: dict[str, str | list[str]] | None = None  # label -> word(s); default: the label names
    head: HeadKind = HeadKind.AUTO
    pooling: Pooling = Pooling.AUTO  # for a linear head
    word_score: str = "sum"  # sum | mean: log-probabilities over a word's tokens
    max_length: int = 256  # tokens per row, prompt included; longer inputs are shortened
    pair: bool = False  # whether examples have a second text (text_b)
    chat: bool = False  # causal chat models: the text before {mask} is sent as the user's message
    # Contextual calibration at inference (predict, eval, serve, dev evaluations): each label's
    # probability divided by what the prompt gives content-free inputs (Zhao et al., 2021).
    calibrate: bool = False

    def __post_init__(self):
        coerce_enum(self, "head", HeadKind, "task")
        coerce_enum(self, "pooling", Pooling, "task")
        if self.word_score not in ("sum", "mean"):
            raise ConfigError(f"task.word_score={self.word_score!r} is not one of: sum, mean")
        if self.verbalizer is not None:
            if not isinstance(self.verbalizer, dict) or not self.verbalizer:
                raise ConfigError("task.verbalizer must map each label to a word or a list of words")
            self.verbalizer = {
                str(k): [v] if isinstance(v, str) else [str(w) for w in v] for k, v in self.verbalizer.items()
            }
            for label, words in self.verbalizer.items():
                if not words or any(not w.strip() for w in words):
                    raise ConfigError(f"task.verbalizer[{label!r}] has an empty word")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
            if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
                raise ConfigError(f"task.labels={self.labels!r} must name at least two distinct labels")
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ConfigError(f"task.max_length={self.max_length!r} must be a whole number >= 8")


def chat_wrapped(template, tokenizer, kind: ModelKind, history: Sequence[Mapping[str, str]] = ()):
    """The template with everything before {mask} as a user turn of the model's chat template and
    the answer slot where the assistant's reply starts; history (earlier user/assistant messages,
    e.g. few-shot demonstrations) goes before that turn."""
    from ..templates import Literal, Mask, Template

    if kind is not ModelKind.CAUSAL:
        raise ConfigError("task.chat=true applies to causal chat models only")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("task.chat=true but the tokenizer has no chat template")
    if not template.has_mask:
        raise ConfigError(f"task.chat=true needs {{mask}} in the template {template.source!r}")
    marker = "\u2063softprompt\u2063"
    rendered = tokenizer.apply_chat_template([*history, {"role": "user", "content": marker}],
                                             add_generation_prompt=True, tokenize=False)
    if rendered.count(marker) != 1:
        raise ConfigError("task.chat=true: the tokenizer's chat template does not place the user message once")
    before, after = rendered.split(marker)
    cut = next(i for i, p in enumerate(template.parts) if isinstance(p, Mask))
    user = list(template.parts[:cut])
    if user and isinstance(user[-1], Literal):  # the space before {mask} belongs to the user turn's end
        user[-1] = Literal(user[-1].text.rstrip())
    parts = (Literal(before), *user, Literal(after), Mask())
    return Template(f"chat({template.source})", tuple(p for p in parts if not (isinstance(p, Literal) and not p.text)))


@dataclass
class Item:
    """One example prepared for the model: its rows and how to read each label's score from them."""

    rows: list[tuple[int, ...]]
    label: int | None
    # per label: per word: list of (row number in this item, token id, tokens from the row's end)
    targets: list[list[list[tuple[int, int, int]]]] = field(default_factory=list)


@register_task_kind
class ClassificationTask(nn.Module, TaskDefaults):
    """Turns examples into rows and hidden states into class logits."""

    kind = "classification"
    Config = ClassificationConfig
    # the HTTP routes that serve it: the completion routes answer the predicted label as the text
    routes = ("/v1/classify", "/v1/completions", "/v1/chat/completions")
    view = "label"  # how the server's page shows a result: a label with its probabilities
    zero_shot = True  # label words (or a head's rows, mapped) carry over to another label set

    @classmethod
    def training_split(cls, train: list, dev: list, data, seed: int, where: str) -> tuple[list, list]:
        """A stratified dev split (every label keeps its share), then k examples per class when asked."""
        if wants_dev_split(train, dev, data):
            train, dev = split_examples(train, data.dev_fraction, seed)
        warn_if_cut_misses_labels(data.dev, "data.max_dev", data.max_dev, dev, {e.label for e in train})
        warn_if_cut_misses_labels(data.train, "data.max_train", data.max_train, train, {e.label for e in dev})
        if data.k_shot:
            train = sample_k_per_class(train, data.k_shot, seed)
        return train, dev

    @classmethod
    def with_calibration(cls, section: dict, calibrate: bool, where: str) -> dict:
        return {**section, "calibrate": bool(calibrate)}

    def set_class_weights(self, mode, items: Sequence[Item], where: str) -> None:
        self.class_weights = class_weight_tensor(mode, self.labels, [item.label for item in items])

    def chat_input(self, turns: Sequence[Mapping[str, str]]) -> str:
        """The text a chat conversation ({role, content} turns) classifies: its last user message (the
        prompt was trained on one input filling its template, not on a conversation)."""
        users = [t["content"] for t in turns if t["role"] == "user"]
        if not users:
            raise DataError("the prompt classifies the last user message; the messages have no user message")
        return users[-1]

    def reads_row_end(self) -> bool:
        """Verbalizer words and last-token pooling read a causal row at its end."""
        return self.info.kind is ModelKind.CAUSAL and (
            self.head_kind is HeadKind.VERBALIZER or self.config.pooling in (Pooling.AUTO, Pooling.LAST))

    def artifact_section(self) -> dict:
        return {**super().artifact_section(), "template": str(self.template)}  # demonstrations and chat included

    def __init__(self, config: ClassificationConfig, base, labels: Sequence[str], n_prefix: int = 0,
                 demonstrations: Sequence = ()):
        """demonstrations: labelled examples shown before each input (in-context few-shot), written
        through the same template with their label's first word in the answer slot."""
        super().__init__()
        self.config = config
        self.info = base.info
        self.tokenizer = base.tokenizer
        self.labels = list(labels)
        if len(self.labels) < 2:
            raise ConfigError(f"a classification task needs at least two labels, got {self.labels}")
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.n_prefix = n_prefix
        template = config.template or DEFAULT_TEMPLATES[(base.info.kind, config.pair)]
        self.template = parse_template(template)
        encoder = base.info.kind is ModelKind.ENCODER
        head = config.head
        if head is HeadKind.AUTO:
            # An encoder reads label words at {mask} when it has a masked-LM head to read them with.
            masked = encoder and base.info.has_mlm_head and self.template.has_mask
            head = HeadKind.LINEAR if encoder and not masked else HeadKind.VERBALIZER
        if head is HeadKind.VERBALIZER and encoder:
            if not base.info.has_mlm_head:
                raise ConfigError(
                    f"task.head='verbalizer' on the encoder {base.name!r} needs a masked-LM head, and this "
                    "checkpoint has none (its architectures do not include *ForMaskedLM; sentence-embedding "
                    "models such as minilm-l6 ship without one): use task.head='linear', or a checkpoint "
                    "saved with its MLM head (e.g. bert-base-uncased)"
                )
            if not self.template.has_mask:
                raise ConfigError(
                    f"template {template!r} needs an answer slot {{mask}} for a verbalizer on a masked LM, "
                    "e.g. '{text} It was {mask}.'"
                )
            if self.tokenizer.mask_token_id is None:
                raise ConfigError(f"the tokenizer of {base.name!r} has no mask token to write at {{mask}}")
        self.head_kind = head
        self.demonstrations: list = []
        if demonstrations:
            self.template, self.demonstrations = with_demonstrations(
                self.template, demonstrations, config, self.tokenizer, base.info.kind, self._first_words(labels)
            )
        elif config.chat:
            self.template = chat_wrapped(self.template, self.tokenizer, base.info.kind)
        if head is HeadKind.VERBALIZER and base.info.kind is ModelKind.CAUSAL and not self.template.has_mask:
            raise ConfigError(f"template {template!r} needs an answer slot {{mask}} for a verbalizer on a causal LM")
        if self.template.num_virtual:
            # Virtual tokens placed by the template (P-tuning): none go first, and the counts must agree.
            if self.template.num_virtual != n_prefix:
                raise ConfigError(
                    f"template {template!r} places {self.template.num_virtual} virtual tokens but the method has "
                    f"{n_prefix}; set method.num_virtual_tokens={self.template.num_virtual}"
                )
            self.n_prefix = 0
        self.renderer = TemplateRenderer(self.template, self.tokenizer, base.info.kind, config.max_length)
        self.verbalizer = config.verbalizer or {label: [label] for label in self.labels}
        unknown = [label for label in self.labels if label not in self.verbalizer]
        if head is HeadKind.VERBALIZER and unknown:
            raise ConfigError(f"task.verbalizer has no words for label(s) {unknown}")
        if head is HeadKind.LINEAR:
            self.head = nn.Linear(base.info.hidden_size, len(self.labels))
            self.dropout = nn.Dropout(0.1)
            self.word_tokens: list[list[list[int]]] = []
        else:
            self.head = None
            self.word_tokens = [[self._word_ids(w) for w in self.verbalizer[label]] for label in self.labels]

    def _first_words(self, labels: Sequence[str]) -> dict[str, str]:
        verbalizer = self.config.verbalizer or {}
        return {label: verbalizer.get(label, [label])[0] for label in labels}

    # ---- examples to rows -------------------------------------------------------------------
    def _word_ids(self, word: str) -> list[int]:
        # Whitespace before {mask} in the template belongs to the label word: " positive" is one
        # token where "positive" after a stripped space may be two.
        probe = self.renderer.render({name: "x" for name in self.template.fields}, self.n_prefix)
        text = (" " + word.strip()) if probe.answer_space else word
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise ConfigError(f"label word {word!r} has no tokens")
        return ids

    @property
    def label_words(self) -> list[str]:
        """The first word of each label, in label order (for prompt initialisation)."""
        return [self.verbalizer.get(label, [label])[0] for label in self.labels]

    def prepare(self, example, where: str = "") -> Item:
        """Rows and score positions for one example (label index None when unlabelled)."""
        values = template_values(example)
        label = None
        if example.label is not None:
            if example.label not in self.label_index:
                known = ", ".join(self.labels)
                raise DataError(f"{where or example.source}: unknown label {example.label!r} (labels: {known})")
            label = self.label_index[example.label]
        where = where or example.source
        if self.head_kind is HeadKind.LINEAR or self.info.kind is ModelKind.SEQ2SEQ:
            row = self.renderer.render(values, self.n_prefix, where=where)
            targets = [[[(0, t, j) for j, t in enumerate(ids)] for ids in words] for words in self.word_tokens]
            return Item([row.ids], label, targets)
        if self.info.kind is ModelKind.ENCODER:
            return self._prepare_masked(values, label, where)
        longest = max(len(ids) for words in self.word_tokens for ids in words)
        prefix = self.renderer.render(values, self.n_prefix, reserve=longest - 1, where=where).ids
        rows: list[tuple[int, ...]] = []
        targets = []
        for words in self.word_tokens:
            per_word = []
            for ids in words:
                row = prefix + tuple(ids[:-1])
                if row not in rows:
                    rows.append(row)
                r = rows.index(row)
                # token j is predicted by the hidden state at len(prefix) - 1 + j
                per_word.append([(r, t, len(row) - len(prefix) - j) for j, t in enumerate(ids)])
            targets.append(per_word)
        return Item(rows, label, targets)

    def prepare_strict(self, example, where: str = "") -> Item:
        """prepare's item for an input whose rows fit task.max_length whole; InputTooLong (with the
        token count and the limit) for one that prepare would shorten, as training does: a caller
        asking about this text should hear so, not get an answer about part of it."""
        from .generation import InputTooLong

        where = where or example.source
        whole = self._unbounded_renderer.render(template_values(example), self.n_prefix, where=where).ids
        scored_alone = self.head_kind is HeadKind.LINEAR or self.info.kind is ModelKind.SEQ2SEQ
        # a verbalizer's longest word takes its tokens but the last in the row (prepare's reserve)
        reserve = 0 if scored_alone else max(len(ids) for words in self.word_tokens for ids in words) - 1
        tokens, limit = len(whole) + reserve, self.config.max_length
        if tokens > limit:
            raise InputTooLong(f"{where or 'the input'} is {tokens} tokens with the template and answer, "
                               f"over the {limit} tokens the prompt takes (its task.max_length)", tokens, limit)
        return self.prepare(example, where)

    @cached_property
    def _unbounded_renderer(self) -> TemplateRenderer:
        return TemplateRenderer(self.template, self.tokenizer, self.info.kind, 10**9)  # shortens nothing

    def _prepare_masked(self, values, label, where) -> Item:
        """A masked LM scores a word of n tokens with n mask tokens at the slot (one row per length)."""
        longest = max(len(ids) for words in self.word_tokens for ids in words)
        row = self.renderer.render(values, self.n_prefix, reserve=longest - 1, where=where)
        ids, at, mask_id = row.ids, row.mask_index, self.tokenizer.mask_token_id
        rows: list[tuple[int, ...]] = []
        targets = []
        for words in self.word_tokens:
            per_word = []
            for word in words:
                masked = ids[:at] + (mask_id,) * len(word) + ids[at + 1:]
                if masked not in rows:
                    rows.append(masked)
                # token j is predicted at the j-th mask: position at + j from the row's first entry
                per_word.append([(rows.index(masked), t, at + j) for j, t in enumerate(word)])
            targets.append(per_word)
        return Item(rows, label, targets)

    # ---- hidden states to class logits -------------------------------------------------------
    def content_free_items(self, inputs: Sequence[str] = CONTENT_FREE) -> list[Item]:
        """The task's rows for content-free inputs: what contextual calibration scores to measure a
        prompt's bias."""
        return [self.prepare(e) for e in content_free_examples(self.template.fields, self.tokenizer, inputs)]

    @staticmethod
    def content_free_bias(scores: torch.Tensor) -> torch.Tensor:
        return content_free_bias(scores)

    @staticmethod
    def calibrated(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return calibrate(scores, bias)

    def class_logits(self, pm: PromptedModel, hidden: torch.Tensor, batch: PromptBatch, items: Sequence[Item],
                     row_index: Sequence[Sequence[int]]) -> torch.Tensor:
        """(len(items), n_labels) scores; row_index[i] lists the batch rows of items[i]."""
        if self.head_kind is HeadKind.LINEAR:
            return self._head_logits(hidden, batch, [rows[0] for rows in row_index])
        if self.info.kind is ModelKind.SEQ2SEQ:
            return self._decoder_logits(pm, hidden, batch, items, [rows[0] for rows in row_index])
        return self._causal_logits(pm, hidden, batch, items, row_index)

    def _head_logits(self, hidden, batch, rows):
        rows_t = torch.tensor(rows, device=hidden.device)
        pooling = self.config.pooling
        if pooling is Pooling.AUTO:
            pooling = Pooling.FIRST if self.info.kind is ModelKind.ENCODER else Pooling.LAST
        if pooling is Pooling.MEAN:
            mask = batch.attention_mask[rows_t].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden[rows_t] * mask).sum(1) / mask.sum(1)
        else:
            index = batch.first_index if pooling is Pooling.FIRST else batch.last_index
            pooled = hidden[rows_t, index[rows_t]]
        return self.head(self.dropout(pooled.float()))

    def _aggregate(self, token_logp: torch.Tensor, items: Sequence[Item], spans) -> torch.Tensor:
        """Label scores from per-token log-probs: sum (or mean) per word, mean probability over words."""
        scores = torch.empty(len(items), len(self.labels), device=token_logp.device)
        for i, item in enumerate(items):
            for c, words in enumerate(item.targets):
                word_scores = []
                for w in range(len(words)):
                    lo, hi = spans[i][c][w]
                    s = token_logp[lo:hi].sum()
                    word_scores.append(s / (hi - lo) if self.config.word_score == "mean" else s)
                stacked = torch.stack(word_scores)
                scores[i, c] = torch.logsumexp(stacked, 0) - math.log(len(word_scores))
        return scores

    def _causal_logits(self, pm, hidden, batch, items, row_index):
        """Word scores read where the words are predicted: after the prompt (causal LM) or at the
        mask tokens (masked LM)."""
        masked = self.info.kind is ModelKind.ENCODER
        # one host copy per batch, not one device read per row
        first, last = batch.first_index.tolist(), batch.last_index.tolist()
        positions: list[tuple[int, int]] = []
        tokens: list[int] = []
        spans = []
        for item, rows in zip(items, row_index):
            per_label = []
            for words in item.targets:
                per_word = []
                for word in words:
                    lo = len(tokens)
                    for r, token, where in word:
                        batch_row = rows[r]
                        if masked:  # where: from the row's first entry
                            positions.append((batch_row, first[batch_row] + where))
                        else:  # where: tokens back from the row's last entry
                            positions.append((batch_row, last[batch_row] - where))
                        tokens.append(token)
                    per_word.append((lo, len(tokens)))
                per_label.append(per_word)
            spans.append(per_label)
        unique = sorted(set(positions))
        where = {p: k for k, p in enumerate(unique)}
        index = torch.tensor(unique, device=hidden.device)
        logp = torch.log_softmax(pm.lm_logits(hidden[index[:, 0], index[:, 1]]).float(), dim=-1)
        picks = torch.tensor([where[p] for p in positions], device=hidden.device)
        token_logp = logp[picks, torch.tensor(tokens, device=hidden.device)]
        if all(len(ids) == 1 for words in self.word_tokens for ids in words):
            # Fast path: one token per word, vectorised.
            return self._aggregate_single(token_logp, len(items))
        return self._aggregate(token_logp, items, spans)

    def _aggregate_single(self, token_logp, n_items):
        counts = [len(words) for words in self.word_tokens]
        per_item = token_logp.view(n_items, sum(counts))
        chunks = torch.split(per_item, counts, dim=1)
        return torch.stack([torch.logsumexp(c, 1) - math.log(c.shape[1]) for c in chunks], 1)

    def _decoder_logits(self, pm, hidden, batch, items, rows):
        start = pm.decoder_start_id()
        sequences, owners, spans, tokens = [], [], [], []
        for i, (item, row) in enumerate(zip(items, rows)):
            per_label = []
            for words in self.word_tokens:
                per_word = []
                for ids in words:
                    sequences.append([start] + ids[:-1])
                    owners.append(row)
                    lo = len(tokens)
                    tokens.extend((len(sequences) - 1, j, t) for j, t in enumerate(ids))
                    per_word.append((lo, len(tokens)))
                per_label.append(per_word)
            spans.append(per_label)
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id or 0
        dec = torch.full((len(sequences), width), pad, dtype=torch.long, device=hidden.device)
        for k, s in enumerate(sequences):
            dec[k, : len(s)] = torch.tensor(s)
        owner = torch.tensor(owners, device=hidden.device)
        logits = pm.decoder_logits(hidden[owner], batch.attention_mask[owner], dec, rows=owner)
        logp = torch.log_softmax(logits.float(), dim=-1)
        seq_i, pos_i, tok_i = (torch.tensor(col, device=hidden.device) for col in zip(*tokens))
        token_logp = logp[seq_i, pos_i, tok_i]
        return self._aggregate(token_logp, items, spans)

    # ---- training and evaluation ---------------------------------------------------------------
    metric_names = ("accuracy", "macro_f1")

    def loss_count(self, items) -> int:
        """How many terms the batch loss averages over (one per example)."""
        return len(items)

    # Per-class loss weights (training.class_weights), set by training; None: every example counts once.
    # A plain attribute, not a buffer: it belongs to the run, not to the prompt or its checkpoints.
    class_weights: torch.Tensor | None = None

    def loss_sum(self, outputs, items) -> torch.Tensor:
        """Summed cross-entropy of the class logits against the gold labels (weighted per class
        when class_weights is set)."""
        logits = torch.stack(list(outputs)).float()
        target = torch.tensor([item.label for item in items], device=logits.device)
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return nn.functional.cross_entropy(logits, target, weight=weight, reduction="sum")

    def metrics(self, outputs, items, examples) -> dict:
        """Accuracy, macro-F1 and the per-class report."""
        from .metrics import classification_metrics

        pred = [self.labels[int(torch.argmax(o))] for o in outputs]
        gold = [self.labels[item.label] for item in items]
        return classification_metrics(gold, pred, self.labels)

    # ---- state that travels in an artifact ----------------------------------------------------
    def export(self) -> dict[str, torch.Tensor]:
        if self.head is None:
            return {}
        return {f"head.{k}": v.detach().to("cpu", torch.float32).clone() for k, v in self.head.state_dict().items()}

    def load_export(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if self.head is not None:
            self.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})


def template_values(example) -> dict:
    """The values an example gives its template's fields: its named fields, text and text_b."""
    values = dict(example.fields) if getattr(example, "fields", None) else {}
    values.setdefault("text", example.text)
    if example.text_b is not None:
        values.setdefault("text_b", example.text_b)
    return values


def content_free_examples(fields: Sequence[str], tokenizer, inputs: Sequence[str] = CONTENT_FREE) -> list:
    """Examples whose every field is a content-free input ("N/A", "", or the tokenizer's mask token
    for "[MASK]")."""
    from .readers import Example

    if not inputs:
        raise ConfigError("calibration needs at least one content-free input")
    mask = getattr(tokenizer, "mask_token", None)
    examples = []
    for text in inputs:
        text = mask if text == "[MASK]" and mask else text
        values = {name: text for name in fields}
        examples.append(Example(text=text, text_b=text if "text_b" in values else None, source="content-free",
                                fields=values))
    return examples


def content_free_bias(scores: torch.Tensor) -> torch.Tensor:
    """A prompt's bias: the mean label probabilities of its content-free inputs' scores (n, labels)."""
    probs = torch.softmax(scores.float(), dim=-1).mean(0)
    return probs / probs.sum()


def calibrate(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Label scores corrected by the content-free bias: p(y|x) / p_cf(y), in log space (the diagonal
    W = diag(p_cf)^-1, b = 0 of Zhao et al.), renormalised over labels."""
    logp = torch.log_softmax(scores.float(), dim=-1) - torch.log(bias.clamp(min=1e-12)).to(scores.device)
    return torch.log_softmax(logp, dim=-1)


def class_weight_tensor(spec: str | Mapping[str, float] | None, labels: Sequence[str],
                        train_labels: Sequence[int]) -> torch.Tensor | None:
    """The loss weight of each label (in label order) that training.class_weights asks for, or None.

    'balanced' gives n / (n_classes * count) as scikit-learn's class_weight='balanced' does, so the
    weights average 1 over the training examples and the loss keeps its scale; a mapping gives each
    named label its weight (labels left out weigh 1)."""
    if spec is None or spec == "none":
        return None
    if spec == "balanced":
        counts = torch.bincount(torch.tensor(list(train_labels), dtype=torch.long), minlength=len(labels)).float()
        missing = [labels[i] for i in range(len(labels)) if counts[i] == 0]
        if missing:
            raise ConfigError(f"training.class_weights='balanced': the training data has no example of label(s) "
                              f"{missing}; give explicit weights instead")
        return len(train_labels) / (len(labels) * counts)
    unknown = sorted(set(spec) - set(labels))
    if unknown:
        raise ConfigError(f"training.class_weights names label(s) {unknown} that the task does not have "
                          f"(labels: {', '.join(labels)})")
    return torch.tensor([float(spec.get(label, 1.0)) for label in labels])


def with_demonstrations(template, demonstrations: Sequence, config: ClassificationConfig, tokenizer,
                        kind: ModelKind, words: Mapping[str, str]):
    """(template with the demonstrations before the input, the demonstrations kept).

    Each demonstration is the template filled with its fields and its label's first word. Plain
    models get them as text before the input, one blank line apart; with task.chat, each becomes a
    user turn and an assistant reply. Demonstrations are dropped from the end until they take at
    most half of max_length (at most max_length - 128 tokens when that is more), so the input has room.
    """
    from ..templates import Literal, filled_text

    if not template.has_mask:
        raise ConfigError(f"template {template.source!r} needs an answer slot {{mask}} for demonstrations")
    budget = max(config.max_length // 2, config.max_length - 128)
    kept = list(demonstrations)
    while kept:
        turns = []
        for example in kept:
            if example.label is None or example.label not in words:
                raise DataError(f"{example.source or 'demonstration'}: demonstration label {example.label!r} "
                                f"is not one of the task's labels ({', '.join(words)})")
            values = dict(example.fields) if getattr(example, "fields", None) else {}
            values.setdefault("text", example.text)
            if example.text_b is not None:
                values.setdefault("text_b", example.text_b)
            turns.append(filled_text(template, values, words[example.label], tokenizer))
        if config.chat:
            history = []
            for before, answer in turns:
                history += [{"role": "user", "content": before.rstrip()}, {"role": "assistant", "content": answer.strip()}]
            wrapped = chat_wrapped(template, tokenizer, kind, history)
            size = len(tokenizer(wrapped.parts[0].text, add_special_tokens=False).input_ids)
        else:
            block = "".join(before + answer + "\n\n" for before, answer in turns)
            wrapped = type(template)(f"demos+{template.source}", (Literal(block), *template.parts))
            size = len(tokenizer(block, add_special_tokens=False).input_ids)
        if size <= budget:
            return wrapped, kept
        kept.pop()
    return (chat_wrapped(template, tokenizer, kind) if config.chat else template), kept
