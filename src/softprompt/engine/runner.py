"""The half of the engine that executes: passes over new rows, decoding steps, and the tokens they give.

The runner decides nothing about who goes next (the scheduler does); it runs a `Plan` and reports
every request's end through `finish`. A failure ends the requests it concerns and no others: a
prompt that fails to compile, its own request; a pass that fails, the requests in that pass; new
rows that cannot get decoding slots (out of memory), those requests; a decoding step that fails,
the rows of that store; a streaming consumer that raises, its own generation.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core import PromptedModel
from ..core.compiled import CompiledPrompt, compile_prompt
from .decoding import Cohort, Row, SlotDecoder
from .requests import Generation, Request
from .sampling import choose, process_logits, token_logprobs

NOT_COMPILED = object()  # an EnginePrompt's compiled form before its first use


class Runner:
    """Runs passes and decoding steps for one PromptedModel; `finish(request, value=|exc=)` ends requests."""

    def __init__(self, pm: PromptedModel, finish: Callable, hooks: Callable, stats: dict, *, slot_path: bool,
                 compile_prompts: bool, cuda_graphs: bool | None, compile_decoding: bool | None):
        self.pm = pm
        self.tokenizer = pm.base.tokenizer
        self.finish = finish
        self.hooks = hooks
        self.stats = stats
        self.slot_path = slot_path
        self.compile_prompts = compile_prompts
        self.cuda_graphs = cuda_graphs
        self.compile_decoding = compile_decoding
        self.slots: SlotDecoder | None = None
        self.cohorts: list[Cohort] = []
        self.starting = 0  # generation rows between their first token and their slot (see _start_slots)

    def running(self) -> int:
        return self.starting + (len(self.slots) if self.slots else 0) + sum(len(c.owners) for c in self.cohorts)

    def run(self, prefill: list[Request], cohort: list[Request]) -> None:
        """One iteration: a pass over new rows, then one decoding step of every store."""
        if cohort:
            self._start_cohort(cohort)
        if prefill:
            self._prefill(prefill)
        if self.slots is not None and len(self.slots):
            self._step(self.slots)
        for store in list(self.cohorts):
            if store.owners:
                self._step(store)
            if not store.owners:
                store.close()
                self.cohorts.remove(store)

    def drop_all(self) -> None:
        """Forget every decoding row (their requests are failed by the caller)."""
        for store in self.cohorts:
            store.close()
        self.cohorts = []
        if self.slots is not None:
            self.slots.drop(list(range(len(self.slots))))
        self.starting = 0

    def compiled(self, entry) -> CompiledPrompt | None:
        """The prompt's compiled fixed start, computed at its first use (None: nothing to compile)."""
        if entry.compiled is NOT_COMPILED:
            compiled = None
            if entry.fixed_start:  # if this raises, the next request tries again
                compiled = compile_prompt(self.pm, entry.key, entry.tensors, entry.fixed_start)
            entry.compiled = compiled
        return entry.compiled

    # ---- the pass over new rows -----------------------------------------------------------------
    def _layout(self, requests: list[Request]):
        """Each request's rows for the pass (a compiled start cut off), and the requests that go in:
        one whose prompt fails to compile ends with that error, alone."""
        rows, keys, offsets, prefixes, owners, prompts, kept = [], [], [], [], [], {}, []
        for request in requests:
            entry = request.entry
            try:
                compiled = self.compiled(entry) if self.compile_prompts else None
            except Exception as exc:
                self.finish(request, exc=exc)
                continue
            if entry.tensors is not None:
                prompts[entry.key] = entry.tensors
            start = len(rows)
            for row in request.rows:
                cut = compiled is not None and compiled.applies_to(row)
                rows.append(row[compiled.length:] if cut else row)
                offsets.append(compiled.length if cut else 0)
                prefixes.append(compiled.prefixes if cut else None)
                keys.append(entry.key if entry.tensors is not None else None)
            owners.append(list(range(start, len(rows))))
            kept.append(request)
        return kept, rows, keys, offsets, prefixes, owners, prompts

    def _prefill(self, requests: list[Request]) -> None:
        chosen, rows, keys, offsets, prefixes, owners, prompts = self._layout(requests)
        if not chosen:
            return
        pm = self.pm
        generating = [i for i, r in enumerate(chosen) if r.generates]
        try:
            batch = pm.collate(rows, keys, "left", offsets if any(offsets) else None)
            deep = pm.deep_batch(batch, prompts, prefixes if any(p is not None for p in prefixes) else None)
            capture = {} if generating else None
            hidden = pm.encode(batch, prompts, capture=capture, deep=deep)
        except Exception as exc:  # the pass failed: every request in it, and only those
            for request in chosen:
                self.finish(request, exc=exc)
            return
        self.stats["passes"] += 1
        self.stats["rows"] += len(rows)
        self.stats["tokens"] += int(batch.attention_mask.sum())
        self.hooks("pass", "prefill", len(rows), int(batch.input_ids.numel()))
        self._score(chosen, owners, batch, hidden)
        if generating:
            new = [chosen[i] for i in generating]
            try:
                self._start_slots(new, [owners[i][0] for i in generating], batch, hidden, capture, deep, rows, offsets)
            except Exception as exc:  # e.g. out of memory growing the slots: these rows belong to no store yet
                for request in new:
                    self.finish(request, exc=exc)

    def _score(self, chosen: list[Request], owners, batch, hidden) -> None:
        """Class scores of the pass's scoring requests, read by each prompt's task."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(chosen):
            if not request.generates:
                groups.setdefault(request.entry.key, []).append(i)
        for indices in groups.values():
            entry = chosen[indices[0]].entry
            try:
                logits = entry.task.class_logits(self.pm, hidden, batch, [chosen[i].item for i in indices],
                                                 [owners[i] for i in indices])
                if entry.bias is not None:
                    logits = entry.task.calibrated(logits, entry.bias)
                values = [value.float().cpu() for value in logits]
            except Exception as exc:
                for i in indices:
                    self.finish(chosen[i], exc=exc)
                continue
            for i, value in zip(indices, values):
                self.finish(chosen[i], value=value)

    # ---- new generation rows --------------------------------------------------------------------
    def _generation(self, request: Request) -> Generation:
        ids = set(request.params.stop_token_ids)
        if not request.params.ignore_eos and request.entry.eos_id is not None:
            ids.add(request.entry.eos_id)
        gen = Generation(request, self.tokenizer, frozenset(ids))
        gen.rows = [Row(gen) for _ in range(request.params.num_beams)]
        return gen

    def _start_slots(self, requests, batch_rows, batch, hidden, capture, deep, rows, offsets) -> None:
        """New generation rows: their first token from the pass's logits, then their keys/values
        (prompt prefixes and input, padding dropped) into slots of the decoder."""
        # Their first token is streamed before they reach the slots: count them as running meanwhile,
        # so running() never reads 0 while a client already holds its first text.
        self.starting = sum(request.params.num_beams for request in requests)
        try:
            index = torch.tensor(batch_rows, device=hidden.device)
            first = self.pm.lm_logits(hidden[index, batch.last_index[index]]).float()
            gens = [self._generation(request) for request in requests]
            new_rows = [row for gen in gens for row in gen.rows]
            sources = [j for j, gen in enumerate(gens) for _ in gen.rows]
            self._advance(new_rows, first[torch.tensor(sources, device=first.device)], store=None)
            for gen in gens:
                if gen.done:
                    self._finish(gen)
            live = [(row, batch_rows[sources[i]]) for i, row in enumerate(new_rows) if not row.owner.done]
            if live:
                self._admit_slots(live, batch, hidden, capture, deep, rows, offsets)
        finally:
            self.starting = 0

    def _admit_slots(self, live, batch, hidden, capture, deep, rows, offsets) -> None:
        """Copy the live rows' keys/values out of the pass (padding dropped) into decoder slots."""
        width = batch.input_ids.shape[1]
        pref = deep.kv.get("decoder") if deep is not None else None
        n_pref = pref.shape[4] if pref is not None else 0
        pref_len = deep.valid["decoder"].sum(1).tolist() if pref is not None else None
        real = batch.attention_mask.sum(1).tolist()
        picks, lengths, positions, budget = [], [], [], 0
        for row, b in live:
            p = pref_len[b] if pref_len is not None else 0
            own = list(range(n_pref + width - real[b], n_pref + width))  # left padded: the last real[b] entries
            picks.append((b, list(range(p)) + own))
            lengths.append(p + real[b])
            tensors = row.owner.request.entry.tensors
            positions.append(offsets[b] + len(rows[b]) + (tensors.position_shift if tensors is not None else 0))
            budget = max(budget, row.owner.params.max_new_tokens)
        longest = max(len(p) for _, p in picks)
        gather = torch.tensor([p + [0] * (longest - len(p)) for _, p in picks], device=hidden.device)
        sel = torch.tensor([b for b, _ in picks], device=hidden.device)
        kv = []
        layers = capture["decoder"]
        for layer in sorted(layers):
            k, v = layers[layer]
            parts_k, parts_v = [k[sel]], [v[sel]]
            if pref is not None:
                parts_k.insert(0, pref[layer, 0][sel].to(k.dtype))
                parts_v.insert(0, pref[layer, 1][sel].to(v.dtype))
            both = (torch.cat(parts_k, 2), torch.cat(parts_v, 2))
            heads, dim = k.shape[1], k.shape[3]
            at = gather[:, None, :, None].expand(len(picks), heads, longest, dim)
            kv.append((both[0].gather(2, at), both[1].gather(2, at)))
        if self.slots is None:
            self.slots = SlotDecoder(self.pm, self.cuda_graphs, self.compile_decoding)
        self.slots.admit(kv, lengths, positions, [row for row, _ in live], budget)

    def _start_cohort(self, requests: list[Request]) -> None:
        """Generation requests for families decoded with transformers' cache, as one cohort."""
        gens = [self._generation(request) for request in requests]
        rows, keys, prompts = [], [], {}
        for gen in gens:
            entry = gen.request.entry
            if entry.tensors is not None:
                prompts[entry.key] = entry.tensors
            rows.extend([gen.request.rows[0]] * len(gen.rows))
            keys.extend([entry.key if entry.tensors is not None else None] * len(gen.rows))
        try:
            batch = self.pm.collate(rows, keys, "left")
            cohort = Cohort(self.pm, batch, prompts, [row for gen in gens for row in gen.rows])
        except Exception as exc:
            for request in requests:
                self.finish(request, exc=exc)
            return
        self.stats["passes"] += 1
        self.cohorts.append(cohort)
        self._decode(cohort, cohort.first_logits)

    # ---- decoding ---------------------------------------------------------------------------------
    def _step(self, store) -> None:
        """One decoding step of a store; if it fails, its rows' requests end with the error."""
        try:
            logits = store.step()
        except Exception as exc:
            gens = {row.owner for row in store.owners}
            store.drop(list(range(len(store.owners))))
            for gen in gens:
                self.finish(gen.request, exc=exc)
            return
        self._decode(store, logits)

    def _decode(self, store, logits: torch.Tensor) -> None:
        """Advance every row of a store by the step's logits; rows of finished requests leave."""
        self.stats["steps"] += 1
        self.hooks("pass", "decode", len(store.owners), len(store.owners))
        rows = list(store.owners)
        self._advance(rows, logits, store)
        done = {row.owner for row in rows if row.owner.done}
        if done:
            store.drop([row.index for row in rows if row.owner in done])
            for gen in done:
                self._finish(gen)

    def _advance(self, rows: list[Row], logits: torch.Tensor, store) -> None:
        """Each generation of these rows takes its next token (logits[i] is rows[i]'s)."""
        simple = [i for i, row in enumerate(rows) if row.owner.beam is None]
        if simple:
            part = logits if len(simple) == len(rows) else logits[torch.tensor(simple, device=logits.device)]
            gens = [rows[i].owner for i in simple]
            asked = [j for j, gen in enumerate(gens) if gen.params.logprobs is not None]
            # the raw logits of rows that keep log-probabilities, copied: processing changes part in place
            raw = part[torch.tensor(asked, device=part.device)] if asked else None
            if all(g.plain_greedy for g in gens):  # nothing to process: the argmax, one read from the device
                tokens = part.argmax(-1).tolist()
            else:
                processed = process_logits(part, [g.params for g in gens], [g.seen for g in gens])
                tokens = choose(processed, [g.params for g in gens], [g.generator for g in gens])
            kept = {}
            if asked:  # the model's own distribution, as OpenAI reports it (before temperature and filtering)
                kept = dict(zip(asked, token_logprobs(raw, [tokens[j] for j in asked],
                                                      [gens[j].params.logprobs for j in asked])))
            for j, (i, gen, token) in enumerate(zip(simple, gens, tokens)):
                if gen.params.return_logits:
                    gen.logits.append(part[j].float().cpu())
                gen.accept(token, kept.get(j))
                rows[i].token = token
                self.stats["generated"] += 1
        position = {row: i for i, row in enumerate(rows)}
        for gen in dict.fromkeys(row.owner for row in rows if row.owner.beam is not None):
            index = [position[row] for row in gen.rows]
            part = logits[torch.tensor(index, device=logits.device)]
            processed = process_logits(part, [gen.params] * len(index), [gen.seen] * len(index))
            tokens, parents = gen.beam.advance(processed, gen.steps)
            gen.steps += 1
            if store is not None:
                store.reorder([row.index for row in gen.rows], parents)
            for row, token in zip(gen.rows, tokens):
                row.token = token
            self.stats["generated"] += len(tokens)
            if gen.beam.done:
                gen.finished = "stop" if gen.beam.finished else "length"

    def _finish(self, gen: Generation) -> None:
        """End a generation whose rows have left: with its error, or its result (the text's tail
        streamed first; finish reason "cancelled", with the text so far, if its caller cancelled it)."""
        cancelled = gen.finished is None
        if cancelled:
            gen.finished = "cancelled"
        if gen.error is None:
            result = gen.result()
            if gen.watch_text and len(result.text) > gen.emitted:
                gen.deliver(result.text[gen.emitted:])
        if gen.error is not None:
            self.finish(gen.request, exc=gen.error)
        else:
            self.finish(gen.request, value=result, cancelled=cancelled)
