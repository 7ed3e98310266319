"""Input-prompt injection into a frozen base model, per row.

The base model never changes. Each forward pass receives a PromptBatch and a mapping from prompt
key to that prompt's virtual-token embeddings (n_k, d); row i reads its virtual slots from its own
prompt. Everything downstream (heads, verbalizers, losses) reads the hidden states this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from ..errors import ModelError
from ..models import BaseModel, ModelKind
from .batch import PromptBatch, collate
from .deep import DeepBatch, DeepPromptSupport


@dataclass
class PromptTensors:
    """What one prompt injects: virtual-token embeddings and/or per-layer key/value prefixes."""

    input: torch.Tensor | None = None  # (n_virtual, hidden)
    deep: dict[str, torch.Tensor] | None = None  # stack -> (layers, 2, kv_heads, prefix_len, head_dim)


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

    def collate(self, rows: Sequence[Sequence[int]], row_keys: Sequence[str | None], padding_side: str = "left") -> PromptBatch:
        """Batch rows, falling back to right padding for families whose positions ignore padding."""
        side = padding_side if self.info.honours_left_padding else "right"
        pad_id = self.base.tokenizer.pad_token_id
        return collate(rows, row_keys, pad_id if pad_id is not None else 0, side).to(self.base.device)

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

    def _position_ids(self, batch: PromptBatch) -> torch.Tensor | None:
        if self.info.position_ids != "absolute":
            return None
        return batch.position_ids + self.info.position_offset

    # ---- deep prompts --------------------------------------------------------------------------
    _deep_support: DeepPromptSupport | None = None

    def deep_support(self) -> DeepPromptSupport:
        """The model's prefix-aware attention, switched on at first use."""
        if self._deep_support is None:
            support = getattr(self.model, "_softprompt_deep", None)
            if support is None:
                encoder = self.model.get_encoder() if self.info.kind is ModelKind.SEQ2SEQ else None
                support = DeepPromptSupport(self.model, encoder, self.info.kind is ModelKind.CAUSAL, self.info.model_type)
                object.__setattr__(self.model, "_softprompt_deep", support)
            self._deep_support = support
        return self._deep_support

    def _deep_batch(self, batch: PromptBatch, prompts: Mapping[str, PromptTensors]) -> DeepBatch | None:
        """Each row's prefixes padded to the batch's longest, with a validity mask; None without any."""
        deep_keys = [k for k in batch.prompt_keys if k in prompts and prompts[k].deep]
        if not deep_keys:
            return None
        support = self.deep_support()
        device = self.base.device
        rows = batch.row_prompt.tolist()
        kv, valid = {}, {}
        for stack in support.stacks:
            tensors = {k: prompts[k].deep[stack] for k in deep_keys if stack in prompts[k].deep}
            if not tensors:
                continue
            longest = max(t.shape[3] for t in tensors.values())
            sample = next(iter(tensors.values()))
            layers, _, heads, _, dim = sample.shape
            zeros = sample.new_zeros(layers, 2, heads, longest, dim)
            per_row, mask = [], torch.zeros(len(rows), longest, dtype=torch.bool, device=device)
            for i, r in enumerate(rows):
                key = batch.prompt_keys[r] if r >= 0 else None
                t = tensors.get(key)
                if t is None:
                    per_row.append(zeros)
                    continue
                n = t.shape[3]
                per_row.append(torch.nn.functional.pad(t, (0, 0, 0, longest - n)) if n < longest else t)
                mask[i, :n] = True
            kv[stack] = torch.stack(per_row, dim=2).to(device)  # (layers, 2, B, heads, P, D)
            valid[stack] = mask
        return DeepBatch(kv, valid)

    @torch.no_grad()
    def capture_kv(self, token_ids: Sequence[int]) -> dict[str, torch.Tensor]:
        """Per-stack keys/values (layers, 2, kv_heads, T, head_dim) that the model computes for tokens
        (used to initialise prefixes from real words, as Li & Liang found matters)."""
        support = self.deep_support()
        support.active_deep, support.capture = None, {}
        try:
            batch = self.collate([list(token_ids)], [None], padding_side="right")
            hidden = self.encode(batch, {})
            if self.info.kind is ModelKind.SEQ2SEQ:
                dec = torch.tensor([list(token_ids)], device=self.base.device)
                self.decoder_logits(hidden, batch.attention_mask, dec)
            captured = support.capture
        finally:
            support.capture = None
        return {
            stack: torch.stack([layers[i] for i in sorted(layers)]).to("cpu", torch.float32)
            for stack, layers in captured.items()
        }

    _batch_deep: DeepBatch | None = None  # the prefixes of the last encoded batch, by its rows

    def _activate(self, deep: DeepBatch | None) -> None:
        self._batch_deep = deep
        # The support lives on the model, shared by every PromptedModel over it: a batch without
        # prefixes must clear what another wrapper's last batch left there.
        if deep is not None or getattr(self.model, "_softprompt_deep", None) is not None:
            self.deep_support().active_deep = deep

    def encode(self, batch: PromptBatch, prompts: Mapping[str, PromptLike]) -> torch.Tensor:
        """Last hidden states (B, L, d) of the decoder stack (causal), encoder (encoder, seq2seq)."""
        prompts = {k: _as_prompt(v) for k, v in prompts.items()}
        self._activate(self._deep_batch(batch, prompts))
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
            # base_model is the bare encoder both for AutoModel and for a masked-LM model (its head
            # is applied by lm_logits, only where a word is read).
            out = self.model.base_model(**kwargs)
        else:
            out = self.model.get_encoder()(**kwargs)
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
    ) -> torch.Tensor:
        """Decoder vocabulary logits (B, T, V) of an encoder-decoder given encoder states; rows maps
        each decoder row to its encoder-batch row (for its deep prompts)."""
        deep = self._batch_deep
        if self._deep_support is not None:
            if deep is not None and rows is not None:
                deep = DeepBatch({s: kv[:, :, rows] for s, kv in deep.kv.items()}, {s: v[rows] for s, v in deep.valid.items()})
            self._deep_support.active_deep = deep
        out = self.model(
            encoder_outputs=(encoder_hidden,),
            attention_mask=encoder_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        return out.logits

    def _steps(self, batch: PromptBatch, prompts: Mapping[str, PromptTensors]):
        """Cached decoding as a generator: yields each step's next-token logits (B, V) and is sent
        (tokens (B,), order (B,) or None): the token each row appends, and which row each row
        continues from (beam search), so the cache, masks and prefixes follow their rows."""
        from transformers import DynamicCache, EncoderDecoderCache

        deep = self._deep_batch(batch, prompts)
        self._activate(deep)
        rows = batch.input_ids.shape[0]

        def follow(order):
            nonlocal deep
            if deep is not None:
                deep = DeepBatch({s: kv[:, :, order] for s, kv in deep.kv.items()},
                                 {s: v[order] for s, v in deep.valid.items()})
                self._activate(deep)

        if self.info.kind is ModelKind.CAUSAL:
            if batch.padding_side != "left" and rows > 1:
                raise ValueError("generation with a causal LM needs a left-padded batch")
            mask = batch.attention_mask
            positions = self._position_ids(batch)
            kwargs = {"inputs_embeds": self.embed(batch, prompts), "attention_mask": mask}
            if positions is not None:
                kwargs["position_ids"] = positions
            cache = DynamicCache()
            next_position = batch.position_ids[:, -1:] + 1
            while True:
                out = self.model.base_model(**kwargs, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                token, order = yield self.lm_logits(out.last_hidden_state[:, -1]).float()
                if order is not None:
                    cache.reorder_cache(order)
                    mask, next_position = mask[order], next_position[order]
                    follow(order)
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                kwargs = {"inputs_embeds": self.base.input_embeddings()(token[:, None]), "attention_mask": mask}
                if positions is not None:
                    kwargs["position_ids"] = next_position + self.info.position_offset
                next_position = next_position + 1
        else:
            encoder_hidden = self.encode(batch, prompts)
            encoder_mask = batch.attention_mask
            self._activate(deep)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            step = torch.full((rows, 1), self.decoder_start_id(), dtype=torch.long, device=batch.input_ids.device)
            while True:
                out = self.model(encoder_outputs=(encoder_hidden,), attention_mask=encoder_mask,
                                 decoder_input_ids=step, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                token, order = yield out.logits[:, -1].float()
                if order is not None:
                    cache.reorder_cache(order)
                    encoder_hidden, encoder_mask = encoder_hidden[order], encoder_mask[order]
                    follow(order)
                step = token[:, None]

    @torch.no_grad()
    def generate(self, batch: PromptBatch, prompts: Mapping[str, PromptLike], max_new_tokens: int,
                 eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding with a key/value cache: (new tokens (B, T), their step logits (B, T, V)).

        Rows keep their own prompts at every step: input prompts were part of the first pass and so of
        the cache; deep prefixes are prepended by the attention at each step and never cached.
        Causal rows must be left-padded, so every row continues at the last column.
        """
        steps = self._steps(batch, {k: _as_prompt(v) for k, v in prompts.items()})
        done = torch.zeros(len(batch), dtype=torch.bool, device=batch.input_ids.device)
        tokens, step_logits = [], []
        logits = next(steps)
        for t in range(max_new_tokens):
            token = logits.argmax(-1)
            if eos_id is not None:
                token = torch.where(done, torch.full_like(token, eos_id), token)
                done = done | (token == eos_id)
            tokens.append(token)
            step_logits.append(logits)
            if t + 1 == max_new_tokens or bool(done.all()):
                break
            logits = steps.send((token, None))
        steps.close()
        return torch.stack(tokens, 1), torch.stack(step_logits, 1)

    @torch.no_grad()
    def beam_search(self, batch: PromptBatch, prompts: Mapping[str, PromptLike], max_new_tokens: int,
                    num_beams: int = 4, eos_id: int | None = None,
                    length_penalty: float = 1.0) -> list[tuple[list[int], float]]:
        """Beam search with a key/value cache, each row with its own prompts: per row, the best
        sequence of new tokens (without the end token) and its summed log-probability.

        Finished hypotheses are ranked by score / length ** length_penalty; a row stops once it has
        num_beams finished hypotheses and no live beam can still beat the worst of them.
        """
        rows, k = len(batch), num_beams
        expanded = batch.select(torch.arange(rows, device=batch.input_ids.device).repeat_interleave(k))
        steps = self._steps(expanded, {key: _as_prompt(v) for key, v in prompts.items()})
        logits = next(steps)
        scores = torch.full((rows, k), float("-inf"), device=logits.device)
        scores[:, 0] = 0.0  # the k copies of a row start as one beam
        sequences: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(rows)]
        finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(rows)]  # (ranked, sum, tokens)
        done = [False] * rows

        def ranked(total: float, length: int) -> float:
            return total / max(length, 1) ** length_penalty

        for t in range(max_new_tokens):
            logp = torch.log_softmax(logits, -1)
            vocab = logp.shape[-1]
            total = (scores[:, :, None] + logp.view(rows, k, vocab)).view(rows, k * vocab)
            best, index = total.topk(min(2 * k, k * vocab), dim=-1)
            order, token = [], []
            new_scores = torch.full_like(scores, float("-inf"))
            new_sequences = []
            for r in range(rows):
                kept = []
                for value, flat in zip(best[r].tolist(), index[r].tolist()):
                    beam, word = divmod(flat, vocab)
                    if value == float("-inf") or len(kept) == k:
                        break
                    if done[r]:
                        kept.append((beam, word, value))
                        continue
                    if eos_id is not None and word == eos_id:
                        finished[r].append((ranked(value, t + 1), value, sequences[r][beam]))
                        continue
                    kept.append((beam, word, value))
                while len(kept) < k:  # fewer live candidates than beams: pad with dead copies
                    kept.append((kept[0][0] if kept else 0, eos_id or 0, float("-inf")))
                new_sequences.append([sequences[r][b] + [w] for b, w, _ in kept])
                for j, (b, w, v) in enumerate(kept):
                    order.append(r * k + b)
                    token.append(w)
                    new_scores[r, j] = v
                if not done[r] and len(finished[r]) >= k:
                    worst = sorted(f[0] for f in finished[r])[-k]
                    live = max(v for _, _, v in kept)
                    # log-probabilities only fall, so a live beam's best possible ranked score is now
                    done[r] = live == float("-inf") or ranked(live, t + 1 if length_penalty <= 0 else max_new_tokens) <= worst
            sequences, scores = new_sequences, new_scores
            if all(done) or t + 1 == max_new_tokens:
                break
            device = logits.device
            logits = steps.send((torch.tensor(token, device=device), torch.tensor(order, device=device)))
        steps.close()
        out = []
        for r in range(rows):
            pool = list(finished[r])
            for j in range(k):
                if scores[r, j] > float("-inf"):
                    pool.append((ranked(float(scores[r, j]), len(sequences[r][j])), float(scores[r, j]), sequences[r][j]))
            _, total, tokens = max(pool, key=lambda f: f[0])
            out.append((tokens, total))
        return out

    def decoder_start_id(self) -> int:
        config = self.model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = config.pad_token_id
        return int(start)
