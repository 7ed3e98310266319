"""AutoPrompt-style trigger search (Shin et al. 2020): real vocabulary tokens at the template's
[P] slots, improved one slot at a time. The gradient of the loss with respect to the trigger
embeddings ranks every vocabulary token by the first-order loss change of swapping it in
(HotFlip); the top candidates are tried on a batch and the best kept when it lowers the loss."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..configs import check_whole
from ..core import PromptedModel
from ..errors import ConfigError, DataError
from ..models import BaseModel
from ..tasks.classification import ClassificationConfig, ClassificationTask
from ..tasks.readers import Example
from ..tasks.runner import Prepared, TaskPrompt, class_logits
from ..templates import Field, Literal, Mask, Special, Virtual, parse_template
from .scoring import HardPrompt, PromptScore, check_labels, score_prompt


@dataclass
class AutoPromptConfig:
    """AutoPrompt settings."""

    template: str = "{text}[P*4] {mask}"  # [P] slots hold the trigger tokens
    init: str = "the"  # the triggers start as this text's tokens, repeated to the slot count
    iterations: int = 20
    candidates: int = 8  # top tokens by gradient tried per iteration
    batch_size: int = 16  # training examples per iteration (gradient and candidate loss)
    seed: int = 0
    chat: bool = False

    def __post_init__(self):
        for name, low, high in (("iterations", 1, 100000), ("candidates", 1, 10000), ("batch_size", 1, 4096)):
            check_whole(self, name, low, high, "autoprompt")
        template = parse_template(self.template)
        if not template.num_virtual:
            raise ConfigError(f"autoprompt.template={self.template!r} needs trigger slots, e.g. '{{text}} [P*4] {{mask}}'")
        if not template.has_mask:
            raise ConfigError(f"autoprompt.template={self.template!r} needs an answer slot {{mask}}")


class _Triggers(nn.Module):
    """Trigger token ids shown to the model as the prompt's input embeddings."""

    def __init__(self, embeddings: nn.Embedding, ids: list[int]):
        super().__init__()
        self.embeddings = embeddings
        self.ids = list(ids)
        self.override: torch.Tensor | None = None  # embeddings with grad, during the gradient step

    def prompt_tensors(self):
        from ..core import PromptTensors

        if self.override is not None:
            return PromptTensors(input=self.override)
        index = torch.tensor(self.ids, device=self.embeddings.weight.device)
        return PromptTensors(input=self.embeddings(index))


@dataclass
class AutoPromptResult:
    """The triggers found, the loss history, and the hard prompt they make (scored on dev when given)."""

    trigger_ids: list[int]
    trigger_tokens: list[str]
    prompt: HardPrompt
    losses: list[float]  # batch loss after each iteration (the first is the initial triggers')
    score: PromptScore | None = None


def _clean_vocabulary(tokenizer, vocab_size: int) -> torch.Tensor:
    """A mask of tokens usable as text triggers: not special, and decoding then encoding gives the
    token back alone (so the hard prompt written out reads the same ids)."""
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i in range(min(vocab_size, len(tokenizer))):
        if i in special:
            continue
        text = tokenizer.decode([i])
        if text.strip() and "{" not in text and "}" not in text and "[" not in text \
                and tokenizer(text, add_special_tokens=False).input_ids == [i]:
            ok[i] = True
    return ok


def _hard_template(template: str, tokens: Sequence[str]) -> str:
    """The template with its [P] slots replaced by the trigger tokens' text."""
    parsed = parse_template(template)
    out, k = [], 0
    for part in parsed.parts:
        if isinstance(part, Virtual):
            text = "".join(tokens[k:k + part.count])
            if out and out[-1][-1:].isspace() and text[:1] == " ":
                text = text[1:]  # the literal's space and the token's own: one is enough
            out.append(text)
            k += part.count
        else:
            if isinstance(part, Literal):
                out.append(part.text.replace("{", "{{").replace("}", "}}"))
            elif isinstance(part, Field):
                out.append("{" + part.name + "}")
            elif isinstance(part, Mask):
                out.append("{mask}")
            elif isinstance(part, Special):
                out.append("{" + part.name + "}")
    return "".join(out)


def search_autoprompt(base: BaseModel, train: Sequence[Example], verbalizer: dict[str, str | list[str]], *,
                      dev: Sequence[Example] = (), config: AutoPromptConfig | None = None, max_length: int = 256,
                      calibration: bool = True, batch_size: int = 32, progress: bool = True,
                      log: Callable[[str], None] | None = None) -> AutoPromptResult:
    """Search trigger tokens for the template's [P] slots on training examples; score the written-out
    hard prompt on dev data when given."""
    config = config or AutoPromptConfig()
    labels = list(verbalizer)
    check_labels(train, labels, "train")
    if len(train) < 2:
        raise DataError("AutoPrompt needs at least two training examples")
    template = parse_template(config.template)
    n = template.num_virtual
    task_config = ClassificationConfig(template=config.template, labels=labels, verbalizer=dict(verbalizer),
                                       head="verbalizer", max_length=max_length, chat=config.chat)
    task = ClassificationTask(task_config, base, labels, n_prefix=n)
    embeddings = base.input_embeddings()
    init = base.tokenizer(" " + config.init.strip(), add_special_tokens=False).input_ids
    if not init:
        raise ConfigError(f"autoprompt.init={config.init!r} has no tokens")
    triggers = _Triggers(embeddings, (init * n)[:n])
    unit = TaskPrompt("autoprompt", triggers, task)
    pm = PromptedModel(base)
    allowed = _clean_vocabulary(base.tokenizer, embeddings.weight.shape[0]).to(embeddings.weight.device)
    rng = random.Random(config.seed)
    prepared = [Prepared("autoprompt", task.prepare(e)) for e in train]

    def batch_loss(items: Sequence[Prepared]) -> torch.Tensor:
        logits = torch.stack(class_logits(pm, {"autoprompt": unit}, items))
        target = torch.tensor([p.item.label for p in items], device=logits.device)
        return nn.functional.cross_entropy(logits.float(), target)

    from tqdm.auto import tqdm

    losses: list[float] = []
    weight = embeddings.weight.detach()
    for step in tqdm(range(config.iterations), desc="autoprompt", disable=None if progress else True, leave=False):
        items = rng.sample(prepared, min(config.batch_size, len(prepared)))
        current = embeddings(torch.tensor(triggers.ids, device=weight.device)).detach().clone().requires_grad_(True)
        triggers.override = current
        loss = batch_loss(items)
        (grad,) = torch.autograd.grad(loss, current)
        triggers.override = None
        if step == 0:
            losses.append(float(loss.detach()))
        slot = step % n
        # First-order loss change of putting token w at the slot: (e_w - e_current) . grad
        change = weight.float() @ grad[slot].float()
        change[~allowed] = float("inf")
        change[triggers.ids[slot]] = float("inf")
        options = torch.topk(-change, config.candidates).indices.tolist()
        best_loss, best_token = float(loss.detach()), None
        with torch.no_grad():
            for token in options:
                saved = triggers.ids[slot]
                triggers.ids[slot] = token
                value = float(batch_loss(items))
                triggers.ids[slot] = saved
                if value < best_loss:
                    best_loss, best_token = value, token
        if best_token is not None:
            triggers.ids[slot] = best_token
        losses.append(best_loss)
        if log:
            log(f"autoprompt step {step + 1}: slot {slot}, loss {best_loss:.4f}, triggers "
                f"{[base.tokenizer.decode([t]) for t in triggers.ids]}")
    tokens = [base.tokenizer.decode([t]) for t in triggers.ids]
    hard = HardPrompt(_hard_template(config.template, tokens), dict(verbalizer), config.chat)
    hard.name = f"{'chat: ' if config.chat else ''}AutoPrompt {hard.template!r}"
    result = AutoPromptResult(list(triggers.ids), tokens, hard, losses)
    if dev:
        result.score = score_prompt(base, hard, dev, calibration=calibration, max_length=max_length,
                                    batch_size=batch_size, progress=progress, source="autoprompt")
        result.score.extra.update(trigger_ids=result.trigger_ids, trigger_tokens=tokens,
                                  initial_loss=round(losses[0], 4), final_loss=round(losses[-1], 4))
    return result
