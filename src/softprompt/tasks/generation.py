"""Text-to-text generation with prompts on causal LMs and encoder-decoders: trained with the
log-likelihood of the target tokens, evaluated by greedy decoding against every reference of an
input (BLEU through sacrebleu, ROUGE-L through rouge-score)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..engine import SamplingParams
from ..errors import ConfigError, DataError
from ..models import ModelKind
from ..templates import TemplateRenderer, parse_template
from .kinds import Prediction, TaskDefaults, register_task_kind

DEFAULT_TEMPLATES = {ModelKind.CAUSAL: "{text}\nOutput: {mask}", ModelKind.SEQ2SEQ: "{text}"}


@dataclass
class GenerationConfig:
    """A generation task: how inputs are written and how long inputs and outputs may be."""

    template: str | None = None  # causal: the output follows {mask}; encoder-decoder: the encoder input
    max_length: int = 256  # input tokens, prompt included
    max_target_length: int = 64  # target tokens kept for training
    max_new_tokens: int = 64  # tokens generated at evaluation and prediction
    num_beams: int = 1  # 1: greedy decoding; more: beam search
    length_penalty: float = 1.0  # beam search ranks finished outputs by log-probability / length ** this

    def __post_init__(self):
        for name, low in (("max_length", 8), ("max_target_length", 1), ("max_new_tokens", 1), ("num_beams", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"task.{name}={value!r} must be a whole number >= {low}")


@dataclass
class GenItem:
    rows: list[tuple[int, ...]]
    prefix: tuple[int, ...]  # the input row (causal: without the target)
    targets: list[int]  # target tokens then end-of-sequence
    label: None = None


@register_task_kind
class GenerationTask(nn.Module, TaskDefaults):
    """Turns (input, target) pairs into rows and scores targets; generates at evaluation."""

    kind = "generation"
    Config = GenerationConfig
    decodes = True  # its rows are generated from, and evaluated on the generated text
    labelled = False  # its targets are free text, not labels
    routes = ("/v1/completions", "/v1/chat/completions")  # the HTTP routes that serve it
    view = "text"  # how the server's page shows a result: the generated text
    metric_names = ("bleu", "rougeL")

    def __init__(self, config: GenerationConfig, base, labels: Sequence[str] = (), n_prefix: int = 0):
        super().__init__()
        if base.info.kind is ModelKind.ENCODER:
            raise ConfigError("task.kind='generation' needs a causal LM or an encoder-decoder, not an encoder")
        self.config = config
        self.info = base.info
        self.tokenizer = base.tokenizer
        self.eos_id = next((i for i in (base.tokenizer.eos_token_id, getattr(base.model.config, "eos_token_id", None),
                                        base.tokenizer.sep_token_id) if isinstance(i, int)), None)
        if self.eos_id is None:
            raise ConfigError("generation needs a tokenizer with an end-of-sequence token")
        self.labels: list[str] = []
        self.label_words: list[str] = []
        self.template = parse_template(config.template or DEFAULT_TEMPLATES[base.info.kind])
        if base.info.kind is ModelKind.CAUSAL and not self.template.has_mask:
            raise ConfigError(f"template {self.template.source!r} needs {{mask}} where the output starts")
        self.n_prefix = 0 if self.template.num_virtual else n_prefix
        self.renderer = TemplateRenderer(self.template, self.tokenizer, base.info.kind, config.max_length)
        self.answer_space = self.renderer.render({n: "x" for n in self.template.fields}, self.n_prefix).answer_space

    def _values(self, example) -> dict:
        values = dict(example.fields) if getattr(example, "fields", None) else {}
        values.setdefault("text", example.text)
        if example.text_b is not None:
            values.setdefault("text_b", example.text_b)
        return values

    def prepare(self, example, where: str = "") -> GenItem:
        where = where or example.source
        prefix = self.renderer.render(self._values(example), self.n_prefix, where=where).ids
        targets: list[int] = []
        if example.label is not None:
            text = (" " + example.label.strip()) if self.answer_space else example.label
            targets = self.tokenizer(text, add_special_tokens=False).input_ids[: self.config.max_target_length]
            targets = targets + [self.eos_id]
        if self.info.kind is ModelKind.CAUSAL and targets:
            return GenItem([prefix + tuple(targets[:-1])], prefix, targets)
        return GenItem([prefix], prefix, targets)

    def reads_row_end(self) -> bool:
        """A causal row is decoded from its last position on; an encoder-decoder reads it whole."""
        return self.info.kind is ModelKind.CAUSAL

    def sampling(self, **overrides) -> SamplingParams:
        """The task's decoding settings (max_new_tokens, beams, length penalty), with overrides, as
        engine sampling parameters (greedy unless temperature > 0)."""
        config = self.config
        return SamplingParams(**{"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams,
                                 "length_penalty": config.length_penalty, **overrides})

    def prediction(self, output: str, item, example) -> Prediction:
        return Prediction(output, {}, example.text, example.source)

    def class_logits(self, pm, hidden, batch, items, row_index) -> list[torch.Tensor]:
        """Per item, the log-probabilities of its target tokens (teacher forcing)."""
        out = []
        if self.info.kind is ModelKind.CAUSAL:
            ends = batch.last_index.tolist()  # one host copy per batch, not one device read per row
            for item, rows in zip(items, row_index):
                r = rows[0]
                m = len(item.targets)
                last = ends[r]
                logits = pm.lm_logits(hidden[r, last - m + 1 : last + 1]).float()
                logp = torch.log_softmax(logits, -1)
                out.append(logp[torch.arange(m), torch.tensor(item.targets, device=logp.device)])
            return out
        start = pm.decoder_start_id()
        width = max(len(item.targets) for item in items)
        pad = self.tokenizer.pad_token_id or 0
        owner = torch.tensor([rows[0] for rows in row_index], device=hidden.device)
        dec = torch.full((len(items), width), pad, dtype=torch.long, device=hidden.device)
        for k, item in enumerate(items):
            seq = [start] + item.targets[:-1]
            dec[k, : len(seq)] = torch.tensor(seq)
        logp = torch.log_softmax(pm.decoder_logits(hidden[owner], batch.attention_mask[owner], dec, rows=owner).float(), -1)
        for k, item in enumerate(items):
            m = len(item.targets)
            out.append(logp[k, torch.arange(m), torch.tensor(item.targets, device=logp.device)])
        return out

    def loss_count(self, items) -> int:
        return sum(len(item.targets) for item in items)

    def loss_sum(self, outputs, items) -> torch.Tensor:
        return -torch.cat(list(outputs)).sum()

    # ---- generation and its scores ---------------------------------------------------------------
    def generate(self, pm, unit, prefixes: Sequence[tuple[int, ...]], batch_size: int = 16) -> list[str]:
        """Greedy outputs for input rows, decoded to text (batched by length)."""
        from .runner import Prepared, generate_texts

        return generate_texts(pm, {unit.key: unit}, [Prepared(unit.key, GenItem([], p, [])) for p in prefixes],
                              batch_size)

    def evaluate(self, pm, unit, prepared, examples, batch_size: int = 16, padding_side: str = "left",
                 spread=None) -> dict:
        """BLEU and ROUGE-L of greedy outputs; inputs that repeat are scored once against all their references.

        spread: data-parallel processes (training.distributed.Processes) that decode a share of the
        inputs each and gather the outputs (None: this process decodes them all)."""
        import sacrebleu
        from rouge_score import rouge_scorer

        groups: dict[tuple, list[str]] = {}
        prefix_of: dict[tuple, tuple] = {}
        for p, e in zip(prepared, examples):
            key = p.item.prefix
            groups.setdefault(key, []).append(e.label or "")
            prefix_of[key] = p.item.prefix
        keys = list(groups)
        if spread is not None and spread.active:
            outputs = spread.gather_texts(self.generate(pm, unit, [prefix_of[k] for k in spread.shard(keys)], batch_size))
        else:
            outputs = self.generate(pm, unit, [prefix_of[k] for k in keys], batch_size)
        refs = [groups[k] for k in keys]
        most = max(len(r) for r in refs)
        # Repeating a reference changes neither clipped n-gram counts nor the closest reference length.
        streams = [[r[j % len(r)] for r in refs] for j in range(most)]
        bleu = sacrebleu.corpus_bleu(outputs, streams).score
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rouge = sum(scorer.score_multi(r, o)["rougeL"].fmeasure for r, o in zip(refs, outputs)) / len(outputs)
        return {"bleu": bleu, "rougeL": 100 * rouge, "n": len(outputs)}

    def export(self) -> dict[str, torch.Tensor]:
        return {}

    def load_export(self, tensors) -> None:
        return None

    # ---- serving: the input row of one request -------------------------------------------------
    # The base model served under its own name takes a conversation in its chat template; a trained
    # prompt takes the one input its template was trained on (for_base sets this).
    takes_conversation = False

    @classmethod
    def for_base(cls, base) -> "GenerationTask":
        """The base model's own task, no prompt: its input as written (causal LMs and encoder-decoders),
        up to the model's positions (8192 at most)."""
        limit = getattr(base.model.config, "max_position_embeddings", None) or 2048
        template = "{text}{mask}" if base.info.kind is ModelKind.CAUSAL else "{text}"
        task = cls(GenerationConfig(template=template, max_length=int(min(limit, 8192))), base, [], 0)
        task.takes_conversation = True
        return task

    def prompt_row(self, text: str, text_b: str | None = None) -> tuple[int, ...]:
        """The input row for a text; InputTooLong when it does not fit max_length with the template
        (prepare would shorten it, as training does, but a caller asking for this text should know)."""
        values = {"text": text, **({"text_b": text_b} if text_b is not None else {})}
        whole = TemplateRenderer(self.template, self.tokenizer, self.info.kind, 10**9).render(
            values, self.n_prefix, where="input").ids
        if len(whole) > self.config.max_length:
            raise InputTooLong(f"input of {len(whole)} tokens (with the template) is over the {self.config.max_length} "
                               "tokens the prompt takes (its task.max_length)", len(whole), self.config.max_length)
        return whole

    def chat_input(self, turns: Sequence[dict]) -> str:
        """The text a chat conversation ({role, content} turns) gives the template.

        A trained prompt saw one input filling its template, so it takes the last user message (the
        chat template around it would be text it never saw); the base model's own task takes the whole
        conversation in the tokenizer's chat template with the assistant's turn opened (role lines when
        it has none)."""
        if not self.takes_conversation:
            users = [t["content"] for t in turns if t["role"] == "user"]
            if not users:
                raise DataError("the prompt takes the last user message as its input; "
                                "the messages have no user message")
            return users[-1]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(turns), add_generation_prompt=True, tokenize=False)
        return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"


class InputTooLong(DataError):
    """An input longer than a prompt or the model takes (the server answers context_length_exceeded)."""

    def __init__(self, message: str, tokens: int, limit: int):
        super().__init__(message)
        self.tokens, self.limit = tokens, limit
