"""APE-style instruction search (Zhou et al. 2023, "Large Language Models Are Human-Level Prompt
Engineers"): the instruct model reads a few input-output pairs and proposes the instruction that
produced them; each proposal, put into a template, is scored on held-out training examples and the
best are scored on dev data."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..configs import check_whole
from ..errors import ConfigError, DataError
from ..models import BaseModel, ModelKind
from ..tasks.readers import Example
from .scoring import HardPrompt, PromptScore, check_labels, score_prompt

META_PROMPT = (
    "I gave a friend an instruction and some inputs. The friend read the instruction and wrote an output "
    "for every one of the inputs. Here are the input-output pairs:\n\n{pairs}\n\n"
    "What was the instruction? Answer with the instruction only."
)
ANSWER_START = "The instruction was to"


@dataclass
class APEConfig:
    """APE settings: how many proposals, from how many examples, scored how."""

    n_proposals: int = 8  # instructions generated (each from its own seeded draw of examples)
    n_pairs: int = 6  # input-output pairs shown per proposal
    max_new_tokens: int = 40
    temperature: float = 0.9  # sampling; 0 means greedy (then only the draw of pairs varies)
    top_p: float = 0.95
    score_examples: int = 200  # held-out training examples each proposal is scored on
    keep: int = 2  # proposals scored on dev data at the end
    seed: int = 0
    # Each instruction is written into these templates; "{instruction}" is replaced by its text.
    templates: list[dict] = field(default_factory=lambda: [
        {"template": "{instruction}\n\nInput: {text}\nOutput: {mask}", "chat": False},
        {"template": "{instruction}\n\n{text} {mask}", "chat": True},
    ])
    metric: str = "accuracy"  # accuracy | calibrated_accuracy: what selects

    def __post_init__(self):
        for name, low, high in (("n_proposals", 1, 1000), ("n_pairs", 1, 64), ("max_new_tokens", 4, 512),
                                ("score_examples", 2, 100000), ("keep", 1, 1000)):
            check_whole(self, name, low, high, "ape")
        if not self.templates:
            raise ConfigError("ape.templates is empty: give at least one template with {instruction}")
        for t in self.templates:
            if not isinstance(t, dict) or not all(k in str(t.get("template", "")) for k in ("{instruction}", "{mask}")):
                raise ConfigError(f"ape.templates entry {t!r} must be a mapping whose template contains "
                                  "{instruction} and {mask}")
        if self.metric not in ("accuracy", "calibrated_accuracy"):
            raise ConfigError(f"ape.metric={self.metric!r} is not one of: accuracy, calibrated_accuracy")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("ape.temperature must be >= 0 and ape.top_p in (0, 1]")


@dataclass
class APEResult:
    """Every proposal with its held-out score, and the kept ones scored on dev data."""

    proposals: list[str]
    scored: list[PromptScore]  # on held-out training examples
    final: list[PromptScore]  # the kept ones on dev (empty without dev data)

    @property
    def best(self) -> PromptScore:
        pool = self.final or self.scored
        return max(pool, key=lambda r: r.accuracy)


def clean_instruction(text: str) -> str:
    """The first sentence-like line of a generation, as template-safe text ({ } [ ] removed)."""
    text = text.strip().split("\n")[0].strip().strip('"').strip()
    text = re.sub(r"[{}\[\]]", "", text)
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text


def _meta_prompt(tokenizer, pairs: Sequence[tuple[str, str]]) -> str:
    body = META_PROMPT.format(pairs="\n\n".join(f"Input: {x}\nOutput: {y}" for x, y in pairs))
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": body}], add_generation_prompt=True,
                                                 tokenize=False)
        return rendered + ANSWER_START
    return f"{body}\n\n{ANSWER_START}"


@torch.no_grad()
def propose_instructions(base: BaseModel, examples: Sequence[Example], words: dict[str, str], config: APEConfig,
                         progress: bool = True) -> list[str]:
    """Distinct instructions the model proposes, each from a seeded draw of input-output pairs."""
    if base.info.kind is not ModelKind.CAUSAL:
        raise ConfigError("APE needs a causal (instruct) language model to write instructions")
    from tqdm.auto import tqdm

    rng = random.Random(config.seed)
    tokenizer = base.tokenizer
    out: list[str] = []
    for i in tqdm(range(config.n_proposals), desc="ape: propose", disable=None if progress else True, leave=False):
        pairs = [(e.text, words[e.label]) for e in rng.sample(list(examples), min(config.n_pairs, len(examples)))]
        ids = tokenizer(_meta_prompt(tokenizer, pairs), return_tensors="pt", add_special_tokens=False).input_ids
        torch.manual_seed(config.seed * 1000 + i)
        sample = config.temperature > 0
        generated = base.model.generate(
            ids.to(base.device), attention_mask=torch.ones_like(ids).to(base.device),
            max_new_tokens=config.max_new_tokens, do_sample=sample,
            **({"temperature": config.temperature, "top_p": config.top_p} if sample else {}),
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        text = clean_instruction(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
        if text and text not in out:
            out.append(text)
    if not out:
        raise DataError("APE: the model proposed no usable instruction (try more proposals or a higher temperature)")
    return out


def search_ape(base: BaseModel, train: Sequence[Example], verbalizer: dict[str, str | list[str]], *,
               dev: Sequence[Example] = (), config: APEConfig | None = None, calibration: bool = True,
               max_length: int = 256, batch_size: int = 32, progress: bool = True,
               log: Callable[[str], None] | None = None) -> APEResult:
    """Propose instructions from training pairs, score them on held-out training examples, then score
    the best `keep` on dev data (when given)."""
    config = config or APEConfig()
    words = {label: (w if isinstance(w, str) else w[0]) for label, w in verbalizer.items()}
    check_labels(train, list(words), "train")
    rng = random.Random(config.seed + 1)
    order = list(range(len(train)))
    rng.shuffle(order)
    n_score = min(config.score_examples, len(train) // 2)
    if n_score < 2:
        raise DataError(f"APE needs at least 4 training examples, got {len(train)}")
    held_out = [train[i] for i in sorted(order[:n_score])]
    pool = [train[i] for i in order[n_score:]]
    proposals = propose_instructions(base, pool, words, config, progress)
    if log:
        for p in proposals:
            log(f"ape proposal: {p}")
    scored: list[PromptScore] = []
    for instruction in proposals:
        for form in config.templates:
            template = form["template"].replace("{instruction}", instruction.replace("{", "{{").replace("}", "}}"))
            prompt = HardPrompt(template, dict(verbalizer), bool(form.get("chat", False)),
                                name=f"{'chat: ' if form.get('chat') else ''}APE {template!r}")
            result = score_prompt(base, prompt, held_out, calibration=calibration, max_length=max_length,
                                  batch_size=batch_size, progress=progress, source="ape")
            result.extra["instruction"] = instruction
            scored.append(result)
            if log:
                log(f"  {prompt.describe()}: held-out accuracy {100 * result.accuracy:.1f}")
    ranked = sorted(scored, key=lambda r: -r.score(config.metric if calibration else "accuracy"))
    final = []
    if dev:
        for r in ranked[: config.keep]:
            result = score_prompt(base, r.prompt, dev, calibration=calibration, max_length=max_length,
                                  batch_size=batch_size, progress=progress, source="ape")
            result.extra.update(instruction=r.extra["instruction"], held_out_accuracy=round(r.accuracy, 4))
            final.append(result)
    return APEResult(proposals, scored, final)
