"""Turn a parsed template and one example into a row of token ids with virtual-token slots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..errors import DataError
from ..models import ModelKind
from .grammar import Field, Literal, Mask, Template


def virtual(k: int) -> int:
    """The row entry that stands for the k-th virtual token of the row's prompt (ids are >= 0)."""
    return -(k + 1)


_SPACES = " \t"


@dataclass(frozen=True)
class RenderedRow:
    """One example as model input: ids (virtual slots negative) and where the answer goes."""

    ids: tuple[int, ...]
    mask_index: int | None  # position of the mask token (masked LM), else None
    answer_space: bool  # the template had whitespace before {mask}: label words get a leading space


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a single text (e.g. [CLS] ... [SEP])."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False).input_ids
    full = tokenizer(probe, add_special_tokens=True).input_ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


class TemplateRenderer:
    """Renders examples through one template for one tokenizer and model kind."""

    def __init__(self, template: Template, tokenizer, kind: ModelKind, max_length: int = 256):
        self.template = template
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        lead, trail = _special_frame(tokenizer)
        self.lead = lead
        # A causal LM reads the answer right after the prompt: no end-of-sequence token before it.
        self.trail = [] if kind is ModelKind.CAUSAL else trail
        self._specials = {
            "sep": tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id,
            "cls": tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id,
            "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id,
        }

    def _pieces(self, values: Mapping[str, str], n_prefix: int):
        """Token pieces: lists of ids, virtual runs and the mask, in template order."""
        parts = list(self.template.parts)
        if self.kind is not ModelKind.ENCODER or not self.template.has_mask:
            # Causal and encoder-decoder models predict the answer after (or apart from) the input:
            # everything after the answer slot is not part of the input.
            cut = next((i for i, p in enumerate(parts) if isinstance(p, Mask)), None)
            if cut is not None:
                parts = parts[: cut + 1]
        pieces: list = []
        text: list[str] = []
        answer_space = False

        def flush():
            if text:
                pieces.append(("text", "".join(text)))
                text.clear()

        for part in parts:
            if isinstance(part, Literal):
                text.append(part.text)
            elif isinstance(part, Field):
                text.append(values[part.name])
            else:
                flush()
                pieces.append((type(part).__name__.lower(), part))
        flush()
        if pieces and pieces[-1][0] == "mask" and self.kind is not ModelKind.ENCODER:
            pieces.pop()
            if pieces and pieces[-1][0] == "text":
                # Spaces before {mask} become the word's leading space (" positive" is one token);
                # a line break stays in the prompt, as in a chat template's "assistant\n".
                stripped = pieces[-1][1].rstrip(_SPACES)
                answer_space = stripped != pieces[-1][1]
                pieces[-1] = ("text", stripped)
                if not stripped:
                    pieces.pop()
        elif self.kind is ModelKind.ENCODER:
            # The mask token stands for the word and the space before it ("It was {mask}."): a
            # byte-level BPE would otherwise spend a lone-space token there, and the label words get
            # their leading space (" great") as they would have in running text.
            at = next((i for i, (kind, _) in enumerate(pieces) if kind == "mask"), None)
            if at and pieces[at - 1][0] == "text":
                stripped = pieces[at - 1][1].rstrip(_SPACES)
                answer_space = stripped != pieces[at - 1][1]
                if stripped:
                    pieces[at - 1] = ("text", stripped)
                else:
                    pieces.pop(at - 1)
        ids: list[int] = list(self.lead) + [virtual(k) for k in range(n_prefix)]
        mask_index = None
        k = n_prefix
        for kind, value in pieces:
            if kind == "text":
                ids.extend(self.tokenizer(value, add_special_tokens=False).input_ids)
            elif kind == "virtual":
                ids.extend(virtual(k + j) for j in range(value.count))
                k += value.count
            elif kind == "special":
                token = self._specials[value.name]
                if token is None:
                    raise DataError(f"template uses {{{value.name}}} but the tokenizer has no such token")
                ids.append(token)
            elif kind == "mask":
                if self.tokenizer.mask_token_id is None:
                    raise DataError("template has {mask} inside the input but the tokenizer has no mask token")
                mask_index = len(ids)
                ids.append(self.tokenizer.mask_token_id)
        ids.extend(self.trail)
        return ids, mask_index, answer_space

    def render(self, values: Mapping[str, str], n_prefix: int = 0, reserve: int = 0, where: str = "") -> RenderedRow:
        """Render one example; input fields are shortened (longest first) to fit max_length - reserve."""
        missing = [name for name in self.template.fields if values.get(name) is None]
        if missing:
            have = ", ".join(sorted(k for k, v in values.items() if v is not None)) or "none"
            raise DataError(f"{where or 'example'}: template field {{{missing[0]}}} has no value (fields here: {have})")
        values = {name: str(values[name]) for name in self.template.fields}
        budget = self.max_length - reserve
        ids, mask_index, space = self._pieces(values, n_prefix)
        for _ in range(8):
            over = len(ids) - budget
            if over <= 0:
                break
            longest = max(values, key=lambda name: len(values[name]), default=None)
            tokens = self.tokenizer(values[longest], add_special_tokens=False).input_ids if longest else []
            if not tokens:
                raise DataError(
                    f"{where or 'example'}: the template alone is {len(ids)} tokens, over max_length={self.max_length}"
                )
            keep = max(0, len(tokens) - over - 1)
            values[longest] = self.tokenizer.decode(tokens[:keep]) if keep else ""
            ids, mask_index, space = self._pieces(values, n_prefix)
        if len(ids) > budget:
            raise DataError(f"{where or 'example'}: input does not fit max_length={self.max_length} even when shortened")
        return RenderedRow(tuple(ids), mask_index, space)
