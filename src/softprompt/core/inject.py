"""Input-prompt injection into a frozen base model, per row.

The base model never changes. Each forward pass receives a PromptBatch and a mapping from prompt
key to that prompt's virtual-token embeddings (n_k, d); row i reads its virtual slots from its own
prompt. Everything downstream (heads, verbalizers, losses) reads the hidden states this returns.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..models import BaseModel, ModelKind
from .batch import PromptBatch, collate


class PromptedModel(nn.Module):
    """A frozen base model that takes per-row input prompts."""

    def __init__(self, base: BaseModel):
        super().__init__()
        self.base = base
        self.model = base.model  # registered so .to(device) moves it; it stays frozen

    @property
    def info(self):
        return self.base.info

    def collate(self, rows: Sequence[Sequence[int]], row_keys: Sequence[str | None], padding_side: str = "left") -> PromptBatch:
        """Batch rows, falling back to right padding for families whose positions ignore padding."""
        side = padding_side if self.info.honours_left_padding else "right"
        pad_id = self.base.tokenizer.pad_token_id
        return collate(rows, row_keys, pad_id if pad_id is not None else 0, side).to(self.base.device)

    def embed(self, batch: PromptBatch, prompts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Input embeddings with each row's virtual slots filled from that row's prompt."""
        embeddings = self.base.input_embeddings()(batch.input_ids)
        if not batch.has_virtual:
            return embeddings
        missing = [key for key in batch.prompt_keys if key not in prompts]
        if missing:
            raise KeyError(f"no input prompt for {missing}")
        tables = [prompts[key] for key in batch.prompt_keys]
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

    def _position_ids(self, batch: PromptBatch) -> torch.Tensor | None:
        if self.info.position_ids != "absolute":
            return None
        return batch.position_ids + self.info.position_offset

    def encode(self, batch: PromptBatch, prompts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states (B, L, d) of the decoder stack (causal), encoder (encoder, seq2seq)."""
        embeds = self.embed(batch, prompts)
        kwargs = {"inputs_embeds": embeds, "attention_mask": batch.attention_mask}
        positions = self._position_ids(batch)
        kind = self.info.kind
        if kind is ModelKind.CAUSAL:
            if positions is not None:
                kwargs["position_ids"] = positions
            out = self.model.base_model(**kwargs, use_cache=False)
        elif kind is ModelKind.ENCODER:
            if positions is not None:
                kwargs["position_ids"] = positions
            out = self.model(**kwargs)
        else:
            out = self.model.get_encoder()(**kwargs)
        return out.last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of selected hidden states (computed only where asked)."""
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
    ) -> torch.Tensor:
        """Decoder vocabulary logits (B, T, V) of an encoder-decoder given encoder states."""
        out = self.model(
            encoder_outputs=(encoder_hidden,),
            attention_mask=encoder_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        return out.logits

    def decoder_start_id(self) -> int:
        config = self.model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = config.pad_token_id
        return int(start)
