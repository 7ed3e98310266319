"""Where running generation rows keep their state between decoding steps.

Two stores, one contract (`owners`, `step`, `reorder`, `drop`), so the engine advances rows the same
way whatever holds them:

- `SlotDecoder` (causal LMs that take position ids): each row owns a slot of per-layer key/value
  buffers holding its prompt prefixes, its input and what it generated. Rows of any request join
  between steps and leave as soon as they finish; one step runs every slot in one forward pass,
  writing each row's new key/value into its slot on the device. On CUDA a step of each batch size
  is captured once as a CUDA graph over static buffers and replayed.
- `Cohort` (encoder-decoders and other families): the rows admitted together decode with
  transformers' own cache, each row keeping its prompt prefixes; rows leave by reindexing it.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Mapping

import torch

from ..core import PromptBatch, PromptedModel, PromptTensors
from ..core.deep import AttentionState, DeepBatch, SlotView, attention_state
from ..models import ModelKind


@dataclass(eq=False)
class Row:
    """One decoding row: where it lives in its store, and the token it feeds next."""

    owner: object  # the generation it belongs to
    index: int = -1  # slot (SlotDecoder) or row (Cohort), kept current by the store
    token: int = 0


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class SlotDecoder:
    """Running rows of a causal LM, one slot each, decoded together one token a step."""

    def __init__(self, pm: PromptedModel, cuda_graphs: bool | None = None, compile: bool | None = None):
        info = pm.info
        self.pm = pm
        self.device, self.dtype = pm.base.device, pm.base.dtype
        self.shape = (info.num_kv_heads, info.head_dim)
        self.layers = info.num_layers
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.capacity = (0, 0)  # (slots, entries per slot)
        self.owners: list[Row] = []
        self.lengths: list[int] = []  # entries written per slot
        self.positions: list[int] = []  # position of each slot's next token
        self.graphs_enabled = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        # compiling costs minutes on a CPU, once per batch size: there it is asked for, on CUDA the default
        self.compile_enabled = self.graphs_enabled if compile is None else bool(compile)
        self._graphs: dict[int, tuple] = {}
        pm.deep_support()

    def __len__(self) -> int:
        return len(self.owners)

    def _ensure(self, slots: int, entries: int) -> None:
        """Grow the buffers (copying what they hold) to at least slots x entries."""
        have_slots, have_entries = self.capacity
        if slots <= have_slots and entries <= have_entries:
            return
        step = 256 if self.device.type == "cuda" else 64
        new = (max(have_slots, _round_up(slots, 8), 2 * have_slots if slots > have_slots else 0),
               max(have_entries, _round_up(entries, step)))
        heads, dim = self.shape
        # every buffer is allocated before any is swapped in: out of memory halfway leaves the running
        # rows' buffers as they were (the engine fails only the rows that asked for room)
        grown = [[torch.zeros(new[0], heads, new[1], dim, dtype=self.dtype, device=self.device)
                  for _ in range(self.layers)] for _ in (self.keys, self.values)]
        for store, fresh in zip((self.keys, self.values), grown):
            for layer, buffer in enumerate(fresh):
                if layer < len(store):
                    old = store[layer]
                    buffer[: old.shape[0], :, : old.shape[2]] = old
            store[:] = fresh
        self.capacity = new
        self._graphs.clear()  # captured against the old buffers

    def admit(self, kv: list[tuple[torch.Tensor, torch.Tensor]], lengths: list[int], positions: list[int],
              rows: list[Row], budget: int) -> None:
        """New rows: per layer their keys/values (n, kv_heads, T, D), entries written per row, the
        position of each row's next token, and how many more entries they may need (budget)."""
        start = len(self.owners)
        n = len(rows)
        width = kv[0][0].shape[2]
        self._ensure(start + n, max(lengths) + budget + 1)
        for layer, (k, v) in enumerate(kv):
            self.keys[layer][start:start + n, :, :width] = k.to(self.dtype)
            self.values[layer][start:start + n, :, :width] = v.to(self.dtype)
        for j, row in enumerate(rows):
            row.index = start + j
        self.owners.extend(rows)
        self.lengths.extend(lengths)
        self.positions.extend(positions)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Next-token logits (slots, V) after feeding each slot's row its token."""
        count = len(self.owners)
        width = max(self.lengths) + 1
        self._ensure(count, width)
        tokens = [row.token for row in self.owners]
        if self.graphs_enabled or self.compile_enabled:
            logits = self._static_step(count, tokens)
        else:
            tokens, positions, write_at = torch.tensor([tokens, self.positions, self.lengths]).to(self.device)
            valid = torch.arange(width, device=self.device)[None, :] <= write_at[:, None]
            view = SlotView(self.keys, self.values, write_at, valid, torch.arange(count, device=self.device))
            logits = self.pm.slot_step(tokens, positions, view)
        self.lengths = [n + 1 for n in self.lengths]
        self.positions = [p + 1 for p in self.positions]
        return logits

    def _static_step(self, count: int, tokens: list[int]) -> torch.Tensor:
        """A step over static shapes: the next power-of-two batch size and the buffers' whole length, so
        torch.compile (inductor fuses the many small kernels of a step) compiles it once per batch size,
        and on CUDA it is captured as a graph and replayed. Slots past count are scratch (free slots)
        that the step writes and nobody reads."""
        bucket = 1 << (count - 1).bit_length()
        self._ensure(bucket, 1)
        ready = self._graphs.get(bucket)
        if ready is None:
            statics = {
                "tokens": torch.zeros(bucket, dtype=torch.long, device=self.device),
                "positions": torch.zeros(bucket, dtype=torch.long, device=self.device),
                "write_at": torch.zeros(bucket, dtype=torch.long, device=self.device),
                "span": torch.arange(self.capacity[1], device=self.device),
                "rows": torch.arange(bucket, device=self.device),
            }
        else:
            run, statics, graph, out = ready
        pad = [0] * (bucket - count)
        inputs = torch.tensor([tokens + pad, self.positions + pad, self.lengths + pad]).to(self.device, non_blocking=True)
        statics["tokens"].copy_(inputs[0])
        statics["positions"].copy_(inputs[1])
        statics["write_at"].copy_(inputs[2])

        def eager():
            valid = statics["span"][None, :] <= statics["write_at"][:, None]
            view = SlotView(self.keys, self.values, statics["write_at"], valid, statics["rows"])
            return self.pm.slot_step(statics["tokens"], statics["positions"], view)

        if ready is None:
            run, graph, out = eager, None, None
            if self.compile_enabled:
                try:  # compiled at its first call, here (outside any capture); this call is the step itself
                    compiled = torch.compile(eager, dynamic=False)
                    out = compiled()
                    run = compiled
                except Exception as exc:
                    warnings.warn(f"torch.compile of the decoding step failed ({type(exc).__name__}: {exc}); "
                                  "decoding without it", RuntimeWarning, stacklevel=2)
                    self.compile_enabled = False
            if self.graphs_enabled:
                try:
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):  # warm-up runs compute this very step: the same writes
                        run()
                    torch.cuda.current_stream().wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        out = run()
                except Exception as exc:  # a family whose forward syncs with the host cannot be captured
                    warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding without "
                                  "graphs", RuntimeWarning, stacklevel=2)
                    self.graphs_enabled = False
                    graph = None
            if self.graphs_enabled or self.compile_enabled:
                self._graphs[bucket] = (run, statics, graph, out)
            if graph is not None:
                graph.replay()
                return out[:count]
            return (out if out is not None else run())[:count]
        if graph is not None:
            graph.replay()
            return out[:count]
        return run()[:count]

    def reorder(self, indices: list[int], parents: list[int]) -> None:
        """Slots indices[j] continue from slot indices[parents[j]] (beam search)."""
        if parents == list(range(len(parents))):
            return
        src = torch.tensor([indices[p] for p in parents], device=self.device)
        dst = torch.tensor(indices, device=self.device)
        width = max(self.lengths[i] for i in indices)
        for store in (self.keys, self.values):
            for buffer in store:
                buffer[dst, :, :width] = buffer[src, :, :width]
        lengths = [self.lengths[indices[p]] for p in parents]
        positions = [self.positions[indices[p]] for p in parents]
        for j, i in enumerate(indices):
            self.lengths[i], self.positions[i] = lengths[j], positions[j]

    def drop(self, indices: list[int]) -> None:
        """Free slots: the last running slots move into the holes, so running rows stay 0..n-1."""
        for i in sorted(set(indices), reverse=True):
            last = len(self.owners) - 1
            if i != last:
                width = self.lengths[last]
                for store in (self.keys, self.values):
                    for buffer in store:
                        buffer[i, :, :width] = buffer[last, :, :width]
                self.owners[i] = self.owners[last]
                self.owners[i].index = i
                self.lengths[i], self.positions[i] = self.lengths[last], self.positions[last]
            self.owners.pop()
            self.lengths.pop()
            self.positions.pop()


def _cache_argument(model) -> str:
    """transformers renamed the forward argument past_key_values to cache (5.2x); take whichever it has."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class Cohort:
    """Rows admitted together, decoded with transformers' cache; they leave by reindexing it."""

    def __init__(self, pm: PromptedModel, batch: PromptBatch, prompts: Mapping[str, PromptTensors], rows: list[Row]):
        self.pm = pm
        self.owners = list(rows)
        for i, row in enumerate(self.owners):
            row.index = i
        self._order: list[int] | None = None
        self._steps = self._generate(batch, prompts)
        self.first_logits = next(self._steps)

    def step(self) -> torch.Tensor:
        order = self._order
        self._order = None
        tokens = torch.tensor([row.token for row in self.owners], device=self.pm.base.device)
        return self._steps.send((tokens, None if order is None else torch.tensor(order, device=tokens.device)))

    def _pending(self) -> list[int]:
        if self._order is None:
            self._order = list(range(len(self.owners)))
        return self._order

    def reorder(self, indices: list[int], parents: list[int]) -> None:
        order = self._pending()
        sources = [order[indices[p]] for p in parents]
        for i, source in zip(indices, sources):
            order[i] = source

    def drop(self, indices: list[int]) -> None:
        order = self._pending()
        for i in sorted(set(indices), reverse=True):
            order.pop(i)
            self.owners.pop(i)
        for i, row in enumerate(self.owners):
            row.index = i

    def close(self) -> None:
        self._steps.close()

    def _generate(self, batch: PromptBatch, prompts: Mapping[str, PromptTensors]):
        """Cached decoding as a generator: yields each step's next-token logits (B, V) and is sent
        (tokens (B,), order (B,) or None): which earlier row each row continues from (beams, rows that
        left), then the token each row appends; the cache, masks and prefixes follow their rows."""
        from transformers import DynamicCache, EncoderDecoderCache

        pm = self.pm
        deep = pm.deep_batch(batch, prompts)
        rows = batch.input_ids.shape[0]

        def call(**kwargs):
            with attention_state(AttentionState(deep=deep)):
                return kwargs.pop("fn")(**kwargs)

        def follow(order):
            nonlocal deep, rows
            rows = len(order)
            if deep is not None:
                deep = deep.select(order)

        if pm.info.kind is ModelKind.CAUSAL:
            body = pm.model.base_model
            name = _cache_argument(body)
            if batch.padding_side != "left" and rows > 1:
                raise ValueError("generation with a causal LM needs a left-padded batch")
            mask = batch.attention_mask
            positions = pm._position_ids(batch, prompts)
            kwargs = {"inputs_embeds": pm.embed(batch, prompts), "attention_mask": mask}
            if positions is not None:
                kwargs["position_ids"] = positions
            cache = DynamicCache()
            next_position = positions[:, -1:] + 1 if positions is not None else None
            while True:
                out = call(fn=body, **kwargs, **{name: cache}, use_cache=True)
                token, order = yield pm.lm_logits(out.last_hidden_state[:, -1]).float()
                if order is not None:
                    cache.reorder_cache(order)
                    mask = mask[order]
                    next_position = next_position[order] if next_position is not None else None
                    follow(order)
                mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
                kwargs = {"inputs_embeds": pm.base.input_embeddings()(token[:, None]), "attention_mask": mask}
                if next_position is not None:
                    kwargs["position_ids"] = next_position
                    next_position = next_position + 1
        else:
            name = _cache_argument(pm.model)
            encoder_hidden = pm.encode(batch, prompts, deep=deep)
            encoder_mask = batch.attention_mask
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            step = torch.full((rows, 1), pm.decoder_start_id(), dtype=torch.long, device=batch.input_ids.device)
            while True:
                out = call(fn=pm.model, encoder_outputs=(encoder_hidden,), attention_mask=encoder_mask,
                           decoder_input_ids=step, **{name: cache}, use_cache=True)
                token, order = yield out.logits[:, -1].float()
                if order is not None:
                    cache.reorder_cache(order)
                    encoder_hidden, encoder_mask = encoder_hidden[order], encoder_mask[order]
                    follow(order)
                step = token[:, None]


def deep_of(batch: DeepBatch | None, stack: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One stack's (layers, 2, B, kv_heads, P, D) prefixes and (B, P) validity, if the batch has them."""
    if batch is None or stack not in batch.kv:
        return None
    return batch.kv[stack], batch.valid[stack]
