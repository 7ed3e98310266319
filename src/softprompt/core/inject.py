"""Prompt injection into a frozen base model, per row.

The base model never changes. Each forward pass receives a PromptBatch and a mapping from prompt
key to that prompt's tensors: virtual-token embeddings (n_k, d) that row i reads into its virtual
slots, and per-layer key/value prefixes that row i's attention sees (core.deep). Everything
downstream (heads, verbalizers, losses, decoding) reads the hidden states or logits this returns.
Whatever one call needs travels with it (arguments and a context-scoped attention state): one
PromptedModel, or many over one base model, serve any number of threads at once.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from ..errors import ModelError
from ..models import BaseModel, ModelKind
from .batch import PromptBatch, collate
from .deep import (SLOTS_ARGUMENT, AttentionState, DeepBatch, DeepPromptSupport, SlotView, attention_state,
                   carry_state_into_checkpoints, support_for)


@dataclass
class PromptTensors:
    """What one prompt injects: virtual-token embeddings and/or per-layer key/value prefixes."""

    input: torch.Tensor | None = None  # (n_virtual, hidden)
    deep: dict[str, torch.Tensor] | None = None  # stack -> (layers, 2, kv_heads, prefix_len, head_dim)
    # Where the row's positions start. 0: prefixes take no positions. PEFT's prefix tuning counts its
    # prefix as positions (real tokens start at prefix_len), so its imported prompts set this.
    position_shift: int = 0


PromptLike = Union[torch.Tensor, PromptTensors]


def _as_prompt(value: PromptLike) -> PromptTensors:
    return value if isinstance(value, PromptTensors) else PromptTensors(input=value)


class PromptedModel(nn.Module):
    """A frozen base model that takes per-row input prompts."""

    def __init__(self, base: BaseModel):
        super().__init__()
        self.base = base
        self.model = base.model  # registered so .to(device) moves it; it stays frozen

    @property
    def info(self):
        return self.base.info

    def collate(self, rows: Sequence[Sequence[int]], row_keys: Sequence[str | None], padding_side: str = "left",
                offsets: Sequence[int] | None = None) -> PromptBatch:
        """Batch rows, falling back to right padding for families whose positions ignore padding;
        offsets[i]: where row i's positions start (after compiled entries)."""
        side = padding_side if self.info.honours_left_padding else "right"
        pad_id = getattr(self.base.tokenizer, "pad_token_id", None)
        return collate(rows, row_keys, pad_id if pad_id is not None else 0, side, offsets).to(self.base.device)

    def embed(self, batch: PromptBatch, prompts: Mapping[str, PromptLike]) -> torch.Tensor:
        """Input embeddings with each row's virtual slots filled from that row's prompt."""
        embeddings = self.base.input_embeddings()(batch.input_ids)
        if not batch.has_virtual:
            return embeddings
        prompts = {k: _as_prompt(v) for k, v in prompts.items()}
        missing = [key for key in batch.prompt_keys if key not in prompts]
        if missing:
            raise KeyError(f"no prompt for {missing}")
        empty = embeddings.new_zeros(0, embeddings.shape[-1])
        # A deep-only prompt has no input table; its rows have no virtual slots (checked below).
        tables = [prompts[key].input if prompts[key].input is not None else empty for key in batch.prompt_keys]
        lengths = torch.tensor([t.shape[0] for t in tables], device=embeddings.device)
        offsets = torch.cumsum(lengths, 0) - lengths
        table = torch.cat(tables, 0).to(device=embeddings.device, dtype=embeddings.dtype)
        is_virtual = batch.virtual_slot >= 0
        row_offsets = offsets[batch.row_prompt.clamp(min=0)].unsqueeze(1)
        row_lengths = lengths[batch.row_prompt.clamp(min=0)].unsqueeze(1)
        if bool((is_virtual & (batch.virtual_slot >= row_lengths)).any()):
            raise ValueError("a row asks for more virtual tokens than its prompt has")
        flat = (row_offsets + batch.virtual_slot).clamp(min=0)
        return torch.where(is_virtual.unsqueeze(-1), table[flat], embeddings)

    def _position_ids(self, batch: PromptBatch, prompts: Mapping[str, PromptTensors] | None = None):
        shift = self._position_shift(batch, prompts)
        if self.info.position_ids != "absolute":
            if self.info.position_ids == "implicit" and not isinstance(shift, int):
                raise ModelError(f"{self.info.model_type} takes no position ids, so a prompt's position_shift cannot apply")
            return None  # relative positions: a shift changes nothing
        return batch.position_ids + self.info.position_offset + shift

    def _position_shift(self, batch: PromptBatch, prompts: Mapping[str, PromptTensors] | None) -> torch.Tensor | int:
        """Per row (B, 1), where its prompt starts its positions; 0 when no prompt of the batch shifts."""
        shifts = [getattr((prompts or {}).get(key), "position_shift", 0) for key in batch.prompt_keys]
        if not any(shifts):
            return 0
        table = torch.tensor(shifts + [0], device=batch.position_ids.device)  # row_prompt -1 reads the 0
        return table[batch.row_prompt].unsqueeze(1)

    # ---- deep prompts --------------------------------------------------------------------------
    def deep_support(self) -> DeepPromptSupport:
        """The model's prefix-aware attention (switched on at first use, once per model)."""
        encoder = self.model.get_encoder() if self.info.kind is ModelKind.SEQ2SEQ else None
        return support_for(self.model, encoder, self.info.kind is ModelKind.CAUSAL, self.info.model_type)

    def deep_batch(self, batch: PromptBatch, prompts: Mapping[str, PromptTensors],
                   row_prefixes: Sequence[Mapping[str, torch.Tensor] | None] | None = None) -> DeepBatch | None:
        """Each row's prefixes padded to the batch's longest, with a validity mask; None without any.

        row_prefixes[i], when given, replaces row i's prompt prefixes (a compiled prompt: its deep
        prefixes followed by the keys/values of its fixed start)."""
        def prefixes_of(i: int, key: str | None):
            if row_prefixes is not None and row_prefixes[i] is not None:
                return row_prefixes[i]
            prompt = prompts.get(key) if key is not None else None
            return prompt.deep if prompt is not None else None

        keys = [batch.prompt_keys[r] if r >= 0 else None for r in batch.row_prompt.tolist()]
        per_row = [prefixes_of(i, key) for i, key in enumerate(keys)]
        if not any(per_row):
            return None
        support = self.deep_support()
        device, dtype = self.base.device, self.base.dtype
        kv, valid = {}, {}
        for stack in support.stacks:
            # one device and dtype for the batch (compiled prefixes are the model's, prompts float32)
            tensors = [p[stack].to(device=device, dtype=dtype) if p and stack in p else None for p in per_row]
            present = [t for t in tensors if t is not None]
            if not present:
                continue
            longest = max(t.shape[3] for t in present)
            layers, _, heads, _, dim = present[0].shape
            zeros = present[0].new_zeros(layers, 2, heads, longest, dim)
            mask = torch.zeros(len(tensors), longest, dtype=torch.bool)
            padded = []
            for i, t in enumerate(tensors):
                if t is None:
                    padded.append(zeros)
                    continue
                n = t.shape[3]
                padded.append(torch.nn.functional.pad(t, (0, 0, 0, longest - n)) if n < longest else t)
                mask[i, :n] = True
            kv[stack] = torch.stack(padded, dim=2).to(device)  # (layers, 2, B, heads, P, D)
            valid[stack] = mask.to(device)
        return DeepBatch(kv, valid)

    @torch.no_grad()
    def capture_kv(self, token_ids: Sequence[int], prompts: Mapping[str, PromptLike] | None = None,
                   key: str | None = None) -> dict[str, torch.Tensor]:
        """Per-stack keys/values (layers, 2, kv_heads, T, head_dim) that the model computes for one row
        (e.g. to initialise prefixes from real words, as Li & Liang found matters)."""
        self.deep_support()
        batch = self.collate([list(token_ids)], [key], padding_side="right")
        captured: dict = {}
        hidden = self.encode(batch, prompts or {}, capture=captured)
        if self.info.kind is ModelKind.SEQ2SEQ:
            with attention_state(AttentionState(capture=captured)):
                dec = torch.tensor([list(token_ids)], device=self.base.device)
                self.model(encoder_outputs=(hidden,), attention_mask=batch.attention_mask, decoder_input_ids=dec,
                           use_cache=False)
        return {
            stack: torch.stack([torch.stack([k[0], v[0]]) for k, v in (layers[i] for i in sorted(layers))])
            .to("cpu", torch.float32)
            for stack, layers in captured.items()
        }

    def encode(self, batch: PromptBatch, prompts: Mapping[str, PromptLike],
               row_prefixes: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
               capture: dict | None = None, deep: DeepBatch | None = None) -> torch.Tensor:
        """Last hidden states (B, L, d) of the decoder stack (causal), encoder (encoder, seq2seq).

        row_prefixes: per row, compiled prefixes that replace its prompt's (see deep_batch); capture:
        a dict filled with each attention layer's own keys/values of this pass (stack -> layer -> (k, v));
        deep: the batch's prefixes when the caller built them already."""
        prompts = {k: _as_prompt(v) for k, v in prompts.items()}
        if deep is None:
            deep = self.deep_batch(batch, prompts, row_prefixes)
        if capture is not None:
            self.deep_support()
        if deep is not None and _checkpointing(self.model):
            carry_state_into_checkpoints(self.model)
        embeds = self.embed(batch, prompts)
        kwargs = {"inputs_embeds": embeds, "attention_mask": batch.attention_mask}
        positions = self._position_ids(batch, prompts)
        kind = self.info.kind
        with attention_state(AttentionState(deep=deep, capture=capture)):
            if kind is ModelKind.CAUSAL:
                if positions is not None:
                    kwargs["position_ids"] = positions
                out = self.model.base_model(**kwargs, use_cache=False)
            elif kind is ModelKind.ENCODER:
                if positions is not None:
                    kwargs["position_ids"] = positions
                # base_model is the bare encoder both for AutoModel and for a masked-LM model (its head
                # is applied by lm_logits, only where a word is read).
                out = self.model.base_model(**kwargs)
            else:
                out = self.model.get_encoder()(**kwargs)
        _ENCODED.set(deep)
        return out.last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of selected hidden states (computed only where asked)."""
        if self.info.kind is ModelKind.ENCODER:
            if not self.info.mlm_head:
                raise ModelError(f"{self.base.name} was loaded without a masked-LM head: no word scores to read")
            for name in self.info.mlm_head:
                hidden = getattr(self.model, name)(hidden)
            return hidden
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def decoder_logits(
        self,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        rows: torch.Tensor | None = None,
        deep: DeepBatch | None = None,
    ) -> torch.Tensor:
        """Decoder vocabulary logits (B, T, V) of an encoder-decoder given encoder states; rows maps
        each decoder row to its encoder-batch row, whose prefixes it takes (deep: those of the encoder
        batch; by default the batch this thread encoded last)."""
        deep = deep if deep is not None else _ENCODED.get()
        if deep is not None and rows is not None:
            deep = deep.select(rows)
        with attention_state(AttentionState(deep=deep)):
            out = self.model(
                encoder_outputs=(encoder_hidden,),
                attention_mask=encoder_mask,
                decoder_input_ids=decoder_input_ids,
                use_cache=False,
            )
        return out.logits

    @torch.no_grad()
    def slot_step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: SlotView) -> torch.Tensor:
        """One decoding step of a causal LM whose rows keep their keys/values in slots: the next-token
        logits (B, V) after each row's token (B,) at its position (B,), its new key/value written to its slot."""
        # a 2-D mask of ones (the real mask comes from the slots): with none, transformers would look
        # for packed sequences in the position ids, reading them back to the host every step
        ones = torch.ones(tokens.shape[0], 1, dtype=torch.long, device=tokens.device)
        kwargs = {"input_ids": tokens[:, None], "attention_mask": ones, "use_cache": False, SLOTS_ARGUMENT: slots}
        if self.info.position_ids == "absolute":
            kwargs["position_ids"] = positions[:, None] + self.info.position_offset
        out = self.model.base_model(**kwargs)
        return self.lm_logits(out.last_hidden_state[:, -1])

    def decoder_start_id(self) -> int:
        config = self.model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = config.pad_token_id
        return int(start)


def _checkpointing(model) -> bool:
    """Whether activation checkpointing is on (transformers renamed the flag; read the current name)."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


# The prefixes of the batch this thread (or task) encoded last, for decoder_logits of encoder-decoders.
_ENCODED: ContextVar[DeepBatch | None] = ContextVar("softprompt_encoded_batch", default=None)
