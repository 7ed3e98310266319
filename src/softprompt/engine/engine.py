"""The one inference path: one base model, its loaded prompts, requests from any thread.

An `Engine` owns a PromptedModel and a set of named prompts (tensors plus the task that reads their
rows). Requests (score a prepared item, generate from a row) are queued from any thread and run by
one worker thread in shared forward passes: each iteration runs one pass over newly admitted rows
(scoring rows of any prompt and method, and the prompts of new generation rows, within caps on rows
and tokens), then one decoding step for every running generation row, whichever request and prompt
it belongs to. Rows join between steps and leave the moment they finish (continuous batching).

Causal rows that begin with their prompt's fixed start are served from its compiled form (the
keys/values computed once per loaded prompt, core.compiled); replacing a prompt under the same
name drops them with the old entry. The engine imports no task code: a prompt's `task` is any
object with `class_logits(pm, hidden, batch, items, row_index)` (scoring) and its fixed start is
given by the caller.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from ..core import PromptedModel, PromptTensors
from ..core.compiled import CompiledPrompt, can_compile, compile_prompt
from ..errors import DataError, SoftpromptError
from ..models import BaseModel, ModelKind
from .decoding import Cohort, Row, SlotDecoder
from .sampling import BeamSearch, SamplingParams, choose, generator_for, process_logits


class EngineBusy(SoftpromptError):
    """The engine's queue is full: try again later."""


class EngineClosed(SoftpromptError):
    """The engine has stopped taking requests."""


_UNSET = object()


@dataclass(eq=False)
class EnginePrompt:
    """A loaded prompt: its tensors (None for a hard prompt), the task that reads its rows, and the
    fixed start its rows share (None: do not compile)."""

    name: str
    key: str  # unique per load, so a prompt replaced under the same name never mixes with the old one
    tensors: PromptTensors | None
    task: object | None = None
    fixed_start: tuple[int, ...] | None = None
    eos_id: int | None = None
    compiled: object = _UNSET  # CompiledPrompt | None once computed (by the worker, at first use)
    meta: dict = field(default_factory=dict)
    # Contextual calibration (a classification task with calibrate on): the label probabilities this
    # prompt gives content-free inputs; every score it returns is divided by them.
    bias: torch.Tensor | None = None


@dataclass
class GenerationResult:
    """What one generation request produced."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token or stop string) | "length" | "cancelled"
    prompt_tokens: int
    score: float | None = None  # beam search: the summed log-probability of the tokens
    logits: torch.Tensor | None = None  # (T, V) step logits, when asked for


class GenerationHandle:
    """A generation in flight: its result, its text as it is decoded (when streamed), cancel()."""

    def __init__(self, stream: bool, on_delta: Callable[[str], None] | None = None):
        self.future: Future = Future()
        self.cancelled = threading.Event()
        self._queue: queue.Queue | None = queue.Queue() if stream else None
        self._on_delta = on_delta

    def result(self, timeout: float | None = None) -> GenerationResult:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        """Stop decoding this request (its rows leave at the next step); the result says 'cancelled'."""
        self.cancelled.set()

    def _emit(self, delta: str) -> None:
        if not delta:
            return
        if self._queue is not None:
            self._queue.put(delta)
        if self._on_delta is not None:
            self._on_delta(delta)

    def _close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)

    def __iter__(self) -> Iterator[str]:
        """The new text of each step as it is decoded; joined, it is the final text."""
        if self._queue is None:
            raise ValueError("this request was not submitted with stream=True")
        while True:
            delta = self._queue.get()
            if delta is None:
                self.future.result()  # raise the request's error, if it failed
                return
            yield delta


@dataclass(eq=False)
class _Request:
    entry: EnginePrompt
    rows: list[tuple[int, ...]]
    length: int
    future: Future
    item: object = None  # scoring: the prepared item
    params: SamplingParams | None = None  # generation
    handle: GenerationHandle | None = None
    choice: int = 0  # generation: which of n choices (offsets the seed)
    submitted: float = field(default_factory=time.monotonic)

    @property
    def cancelled(self) -> bool:
        if self.handle is not None:
            return self.handle.cancelled.is_set()
        return self.future.cancelled()  # a score request whose caller gave up


class _Generation:
    """One generation request being decoded: its rows (one, or one per beam) and its text so far."""

    def __init__(self, request: _Request, tokenizer, stop_ids: frozenset):
        self.request = request
        self.params = p = request.params
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.rows: list[Row] = []
        self.tokens: list[int] = []
        self.logits: list[torch.Tensor] = []
        self.seen = [t for t in request.rows[0] if t >= 0] if p.repetition_penalty != 1.0 else []
        self.generator = generator_for(p, request.choice)
        self.beam = BeamSearch(p.num_beams, p.max_new_tokens, p.length_penalty, stop_ids) if p.num_beams > 1 else None
        self.steps = 0
        self.finished: str | None = None
        self.emitted = 0
        self.watch_text = bool(p.stop) or request.handle._queue is not None or request.handle._on_delta is not None
        self.plain_greedy = not p.sampling and p.repetition_penalty == 1.0 and not p.return_logits

    def accept(self, token: int) -> None:
        """Take this step's token (greedy or sampled rows)."""
        self.steps += 1
        if token in self.stop_ids:
            self.finished = "stop"
            return
        self.tokens.append(token)
        if self.seen is not None and self.params.repetition_penalty != 1.0:
            self.seen.append(token)
        if self.watch_text:
            self._watch()
        if self.finished is None and len(self.tokens) >= self.params.max_new_tokens:
            self.finished = "length"

    def _text(self, tokens=None) -> str:
        if self.tokenizer is None:  # a model without a tokenizer (token ids in, token ids out)
            return ""
        return self.tokenizer.decode(self.tokens if tokens is None else tokens, skip_special_tokens=True)

    def _watch(self) -> None:
        """Stop strings and streaming: emit the text no stop string can still claim."""
        text = self._text()
        stops = self.params.stop
        for stop in stops:
            at = text.find(stop, max(0, self.emitted - len(stop)))
            if at >= 0:
                self.finished = "stop"
                return
        safe = len(text)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character
            safe = len(text.rstrip("\ufffd"))
        for stop in stops:  # hold back a tail that may be the start of a stop string
            for n in range(min(len(stop) - 1, safe), 0, -1):
                if text[safe - n:safe] == stop[:n]:
                    safe -= n
                    break
        if safe > self.emitted:
            self.request.handle._emit(text[self.emitted:safe])
            self.emitted = safe

    def result(self) -> GenerationResult:
        score = None
        tokens = self.tokens
        if self.beam is not None:
            tokens, score = self.beam.best()
        text = self._text(tokens)
        for stop in self.params.stop:
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
                self.finished = "stop"
        logits = torch.stack(self.logits) if self.logits else None
        return GenerationResult(text, list(tokens), self.finished or "length", len(self.request.rows[0]), score, logits)


class Engine:
    """A base model and its prompts, serving scoring and generation requests from any thread.

    max_batch_rows / max_batch_tokens cap one pass over new rows (tokens counted with padding);
    max_running caps the generation rows decoded together; max_queue caps requests waiting to start
    (0: no cap; past it, submit raises EngineBusy).
    """

    def __init__(self, base: BaseModel | PromptedModel, *, max_batch_rows: int = 32, max_batch_tokens: int = 16384,
                 max_running: int = 64, max_queue: int = 0, compile_prompts: bool = True,
                 cuda_graphs: bool | None = None, compile_decoding: bool | None = None):
        self.pm = base if isinstance(base, PromptedModel) else PromptedModel(base)
        self.base = self.pm.base
        self.tokenizer = self.base.tokenizer
        self.max_batch_rows = max(1, int(max_batch_rows))
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        self.max_running = max(1, int(max_running))
        self.max_queue = int(max_queue)
        self.compile_prompts = compile_prompts and can_compile(self.pm)
        # A base sharded over processes gathers each block's weights in collectives: no graph captures
        # them, and no_grad, not inference_mode, since FSDP reuses its gather buffers for training.
        sharded = self.base.sharding is not None
        self._cuda_graphs = False if sharded else cuda_graphs
        self._compile_decoding = False if sharded else compile_decoding
        self._no_grad = torch.no_grad if sharded else torch.inference_mode
        self.prompts: dict[str, EnginePrompt] = {}
        self._serial = itertools.count()
        self._lock = threading.Condition()
        self._inbox: deque[_Request] = deque()
        self._waiting: deque[_Request] = deque()
        self._slots: SlotDecoder | None = None
        self._starting = 0  # generation rows between their first token and their slot (see _start_slots)
        self._cohorts: list[Cohort] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = {"passes": 0, "steps": 0, "rows": 0, "tokens": 0, "generated": 0}
        # registered with add_hook, never overwritten: several observers (metrics, logs, tests) can listen
        self._hooks: dict[str, list[Callable]] = {"pass": [], "admit": []}
        kind = self.pm.info.kind
        self._slot_path = kind is ModelKind.CAUSAL and self.pm.info.position_ids == "absolute" and can_compile(self.pm)
        limit = getattr(self.base.model.config, "max_position_embeddings", None)
        self.max_positions = int(limit) if isinstance(limit, int) and limit > 0 else None

    # ---- hooks ----------------------------------------------------------------------------------
    def add_hook(self, event: str, fn: Callable) -> Callable[[], None]:
        """Call fn on an event and give back a function that removes it: "pass" (kind, rows, tokens)
        after each pass, "admit" (kind, seconds waited) as a request starts. A hook that raises is
        logged and does not fail any request."""
        if event not in self._hooks:
            raise ValueError(f"unknown engine event {event!r}; events: {', '.join(self._hooks)}")
        self._hooks[event].append(fn)
        return lambda: self._hooks[event].remove(fn) if fn in self._hooks[event] else None

    def _call_hooks(self, event: str, *args) -> None:
        for fn in list(self._hooks[event]):
            try:
                fn(*args)
            except Exception:  # an observer's bug must not strand or fail requests
                logging.getLogger("softprompt.engine").exception("engine %s hook %r raised", event, fn)

    # ---- prompts --------------------------------------------------------------------------------
    def add_prompt(self, name: str, tensors: PromptTensors | None, task=None, *, fixed_start: Sequence[int] | None = None,
                   eos_id: int | None = None, meta: dict | None = None) -> EnginePrompt:
        """Load (or replace) a prompt under name; requests already running keep the one they started with."""
        if tensors is not None and tensors.deep:
            self.pm.deep_support()  # refuses, clearly, a model whose attention cannot take prefixes
        if tensors is not None:  # on the model's device once, not at every pass (they stay float32)
            device = self.base.device
            tensors = PromptTensors(
                input=tensors.input.detach().to(device) if tensors.input is not None else None,
                deep={s: t.detach().to(device) for s, t in tensors.deep.items()} if tensors.deep else None,
                position_shift=tensors.position_shift)
        entry = EnginePrompt(name, f"{name}#{next(self._serial)}", tensors, task,
                             tuple(fixed_start) if fixed_start is not None and self.compile_prompts else None,
                             eos_id if eos_id is not None else getattr(self.tokenizer, "eos_token_id", None),
                             meta=dict(meta or {}))
        if getattr(getattr(task, "config", None), "calibrate", False):
            # measured through this engine before the prompt is published, so no request sees it uncalibrated
            items = task.content_free_items()
            scores = torch.stack([f.result() for f in self.submit_scores([(entry, item) for item in items])])
            entry.bias = task.content_free_bias(scores)
        with self._lock:
            self.prompts[name] = entry
        return entry

    def remove_prompt(self, name: str) -> None:
        with self._lock:
            self.prompts.pop(name, None)

    def _entry(self, name: str | EnginePrompt) -> EnginePrompt:
        if isinstance(name, EnginePrompt):
            return name
        with self._lock:
            entry = self.prompts.get(name)
        if entry is None:
            raise DataError(f"unknown prompt {name!r} (loaded: {', '.join(sorted(self.prompts)) or 'none'})")
        return entry

    # ---- requests -------------------------------------------------------------------------------
    def submit_score(self, name: str | EnginePrompt, item) -> Future:
        """Class scores of a prepared item (its rows, read by the prompt's task): a Future of (n_labels,) logits."""
        return self.submit_scores([(name, item)])[0]

    def submit_scores(self, requests: Sequence[tuple[str | EnginePrompt, object]]) -> list[Future]:
        """submit_score for many (prompt, item) pairs queued at once: the passes they form, and so every
        result to the last bit, do not depend on how fast they were submitted."""
        queued = []
        for name, item in requests:
            rows = [tuple(r) for r in item.rows]
            queued.append(_Request(self._entry(name), rows, max(len(r) for r in rows), Future(), item=item))
        self._put(queued)
        return [request.future for request in queued]

    def submit_generate(self, name: str | EnginePrompt, row: Sequence[int], params: SamplingParams | None = None, *,
                        stream: bool = False, on_delta: Callable[[str], None] | None = None,
                        choice: int = 0) -> GenerationHandle:
        """Generate after a row of token ids (virtual slots negative); stream=True makes the handle
        iterable over the text as it is decoded."""
        return self.submit_generates([(name, row, params)], stream=stream, on_delta=on_delta, choice=choice)[0]

    def submit_generates(self, requests: Sequence[tuple[str | EnginePrompt, Sequence[int], SamplingParams | None]], *,
                         stream: bool = False, on_delta: Callable[[str], None] | None = None,
                         choice: int = 0) -> list[GenerationHandle]:
        """submit_generate for many (prompt, row, params) queued at once (their passes do not depend on
        how fast they were submitted)."""
        queued, handles = [], []
        for name, row, params in requests:
            entry = self._entry(name)
            params = params or SamplingParams()
            row = tuple(int(t) for t in row)
            if not row:
                raise DataError("generation needs at least one input token")
            if self.max_positions is not None and len(row) >= self.max_positions:
                raise DataError(f"input of {len(row)} tokens does not fit the model's {self.max_positions} positions")
            handle = GenerationHandle(stream, on_delta)
            queued.append(_Request(entry, [row], len(row), handle.future, params=params, handle=handle, choice=choice))
            handles.append(handle)
        self._put(queued)
        return handles

    def _put(self, requests: list[_Request]) -> None:
        with self._lock:
            if self._closing:
                raise EngineClosed("the engine is shutting down and takes no new requests")
            if self.max_queue and len(self._inbox) + len(self._waiting) + len(requests) > self.max_queue:
                raise EngineBusy(f"the queue is full ({self.max_queue} waiting requests)")
            self._inbox.extend(requests)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="softprompt-engine", daemon=True)
                self._thread.start()
            self._lock.notify()

    def queue_depth(self) -> int:
        with self._lock:
            return len(self._inbox) + len(self._waiting)

    def running(self) -> int:
        return self._starting + (len(self._slots) if self._slots else 0) + sum(len(c.owners) for c in self._cohorts)

    def close(self, wait: bool = True) -> None:
        """Stop taking requests; with wait, finish those queued and running first."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the worker -----------------------------------------------------------------------------
    def _busy(self) -> bool:
        return bool(self._waiting) or self.running() > 0

    def _loop(self) -> None:
        with self._no_grad():
            while True:
                with self._lock:
                    while not self._inbox and not self._busy():
                        if self._closing:
                            return
                        self._lock.wait()
                    self._waiting.extend(self._inbox)
                    self._inbox.clear()
                try:
                    self._iteration()
                except BaseException as exc:  # keep serving: fail what was in flight, with the error
                    self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        if not isinstance(exc, SoftpromptError):
            exc = RuntimeError(f"engine error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        stores = ([self._slots] if self._slots else []) + self._cohorts
        failed = {row.owner for store in stores for row in store.owners}
        for gen in failed:
            self._resolve(gen.request, exc=exc)
        for cohort in self._cohorts:
            cohort.close()
        self._cohorts = []
        if self._slots is not None:
            self._slots.drop(list(range(len(self._slots))))

    def _iteration(self) -> None:
        self._prefill()
        if self._slots is not None and len(self._slots):
            self._decode(self._slots, self._slots.step())
        for cohort in list(self._cohorts):
            if cohort.owners:
                self._decode(cohort, cohort.step())
            if not cohort.owners:
                cohort.close()
                self._cohorts.remove(cohort)

    def _compiled(self, entry: EnginePrompt) -> CompiledPrompt | None:
        if entry.compiled is _UNSET:
            entry.compiled = None
            if entry.fixed_start:
                entry.compiled = compile_prompt(self.pm, entry.key, entry.tensors, entry.fixed_start)
        return entry.compiled

    def _select(self) -> tuple[list[_Request], list[_Request]]:
        """Requests for the next pass (FIFO within the caps), and generation requests for a new cohort."""
        chosen, cohort = [], []
        rows = width = 0
        room = self.max_running - self.running()
        kept: deque[_Request] = deque()
        while self._waiting:
            request = self._waiting.popleft()
            if request.cancelled:
                self._resolve(request, cancelled=True)
                continue
            generate = request.params is not None
            beams = request.params.num_beams if generate else 0
            if generate and not self._slot_path:
                if beams <= room and len(cohort) + beams <= self.max_batch_rows:
                    cohort.append(request)
                    room -= beams
                else:
                    kept.append(request)
                continue
            n = len(request.rows)
            wide = max(width, request.length)
            fits = not chosen or (rows + n <= self.max_batch_rows and wide * (rows + n) <= self.max_batch_tokens)
            if not fits or (generate and beams > room):
                kept.append(request)
                if not fits:
                    break
                continue
            chosen.append(request)
            rows, width = rows + n, wide
            room -= beams
        if self._hooks["admit"]:
            now = time.monotonic()
            for request in chosen + cohort:
                self._call_hooks("admit", "generate" if request.params is not None else "score", now - request.submitted)
        kept.extend(self._waiting)
        self._waiting = kept
        return chosen, cohort

    def _prefill(self) -> None:
        chosen, cohort = self._select()
        if cohort:
            self._start_cohort(cohort)
        if not chosen:
            return
        rows, keys, offsets, prefixes, owners = [], [], [], [], []
        prompts = {}
        for request in chosen:
            entry = request.entry
            compiled = self._compiled(entry) if self.compile_prompts else None
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
        pm = self.pm
        try:
            batch = pm.collate(rows, keys, "left", offsets if any(offsets) else None)
            deep = pm.deep_batch(batch, prompts, prefixes if any(p is not None for p in prefixes) else None)
            generating = [i for i, r in enumerate(chosen) if r.params is not None]
            capture = {} if generating else None
            hidden = pm.encode(batch, prompts, capture=capture, deep=deep)
        except BaseException as exc:
            for request in chosen:
                self._resolve(request, exc=exc)
            return
        self.stats["passes"] += 1
        self.stats["rows"] += len(rows)
        self.stats["tokens"] += int(batch.attention_mask.sum())
        self._call_hooks("pass", "prefill", len(rows), int(batch.input_ids.numel()))
        scoring: dict[str, list[int]] = {}
        for i, request in enumerate(chosen):
            if request.params is None:
                scoring.setdefault(request.entry.key, []).append(i)
        for indices in scoring.values():
            task = chosen[indices[0]].entry.task
            try:
                logits = task.class_logits(pm, hidden, batch, [chosen[i].item for i in indices],
                                           [owners[i] for i in indices])
                bias = chosen[indices[0]].entry.bias
                if bias is not None:
                    logits = task.calibrated(logits, bias)
                for i, value in zip(indices, logits):
                    self._resolve(chosen[i], value=value.float().cpu())
            except BaseException as exc:
                for i in indices:
                    self._resolve(chosen[i], exc=exc)
        if generating:
            self._start_slots([chosen[i] for i in generating], [owners[i][0] for i in generating], batch, hidden,
                              capture, deep, rows, offsets)

    def _stop_ids(self, request: _Request) -> frozenset:
        ids = set(request.params.stop_token_ids)
        if not request.params.ignore_eos and request.entry.eos_id is not None:
            ids.add(request.entry.eos_id)
        return frozenset(ids)

    def _start_slots(self, requests, batch_rows, batch, hidden, capture, deep, rows, offsets) -> None:
        """New generation rows: their first token from the pass's logits, then their keys/values
        (prompt prefixes and input, padding dropped) into slots of the decoder."""
        # Their first token is streamed before they reach the slots: count them as running meanwhile,
        # so running() never reads 0 while a client already holds its first text.
        self._starting = sum(request.params.num_beams for request in requests)
        try:
            self._admit_slots(requests, batch_rows, batch, hidden, capture, deep, rows, offsets)
        finally:
            self._starting = 0

    def _admit_slots(self, requests, batch_rows, batch, hidden, capture, deep, rows, offsets) -> None:
        pm = self.pm
        index = torch.tensor(batch_rows, device=hidden.device)
        first = pm.lm_logits(hidden[index, batch.last_index[index]]).float()
        gens, new_rows, sources = [], [], []
        for j, request in enumerate(requests):
            gen = _Generation(request, self.tokenizer, self._stop_ids(request))
            count = request.params.num_beams
            gen.rows = [Row(gen) for _ in range(count)]
            gens.append(gen)
            new_rows.extend(gen.rows)
            sources.extend([j] * count)
        self._advance(new_rows, first[torch.tensor(sources, device=first.device)], store=None)
        for gen in gens:
            if gen.finished is not None or gen.request.cancelled:
                gen.finished = gen.finished or "cancelled"
                self._finish(gen)
        live = [(row, sources[i]) for i, row in enumerate(new_rows) if row.owner.finished is None]
        if not live:
            return
        width = batch.input_ids.shape[1]
        pref = deep.kv.get("decoder") if deep is not None else None
        n_pref = pref.shape[4] if pref is not None else 0
        pref_len = deep.valid["decoder"].sum(1).tolist() if pref is not None else None
        real = batch.attention_mask.sum(1).tolist()
        picks, lengths, positions, budget = [], [], [], 0
        for row, source in live:
            b = batch_rows[source]
            p = pref_len[b] if pref_len is not None else 0
            own = list(range(n_pref + width - real[b], n_pref + width))  # left padded: the last real[b] entries
            picks.append((b, list(range(p)) + own))
            lengths.append(p + real[b])
            shift = row.owner.request.entry.tensors.position_shift if row.owner.request.entry.tensors is not None else 0
            positions.append(offsets[b] + len(rows[b]) + shift)
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
        if self._slots is None:
            self._slots = SlotDecoder(pm, self._cuda_graphs, self._compile_decoding)
        self._slots.admit(kv, lengths, positions, [row for row, _ in live], budget)

    def _start_cohort(self, requests: list[_Request]) -> None:
        """Generation requests for families decoded with transformers' cache, as one cohort."""
        gens, rows, keys, prompts = [], [], [], {}
        for request in requests:
            gen = _Generation(request, self.tokenizer, self._stop_ids(request))
            gen.rows = [Row(gen) for _ in range(request.params.num_beams)]
            gens.append(gen)
            entry = request.entry
            if entry.tensors is not None:
                prompts[entry.key] = entry.tensors
            rows.extend([request.rows[0]] * len(gen.rows))
            keys.extend([entry.key if entry.tensors is not None else None] * len(gen.rows))
        try:
            batch = self.pm.collate(rows, keys, "left")
            cohort = Cohort(self.pm, batch, prompts, [row for gen in gens for row in gen.rows])
        except BaseException as exc:
            for request in requests:
                self._resolve(request, exc=exc)
            return
        self.stats["passes"] += 1
        self._cohorts.append(cohort)
        self._decode(cohort, cohort.first_logits)

    def _decode(self, store, logits: torch.Tensor) -> None:
        """Advance every row of a store by the step's logits; rows of finished requests leave."""
        self.stats["steps"] += 1
        self._call_hooks("pass", "decode", len(store.owners), len(store.owners))
        rows = list(store.owners)
        self._advance(rows, logits, store)
        done = {row.owner for row in rows if row.owner.finished is not None or row.owner.request.cancelled}
        if done:
            store.drop([row.index for row in rows if row.owner in done])
            for gen in done:
                if gen.finished is None:
                    gen.finished = "cancelled"
                self._finish(gen)

    def _advance(self, rows: list[Row], logits: torch.Tensor, store) -> None:
        """Each generation of these rows takes its next token (logits[i] is rows[i]'s)."""
        simple = [i for i, row in enumerate(rows) if row.owner.beam is None]
        if simple:
            part = logits if len(simple) == len(rows) else logits[torch.tensor(simple, device=logits.device)]
            gens = [rows[i].owner for i in simple]
            if all(g.plain_greedy for g in gens):  # nothing to process: the argmax, one read from the device
                tokens = part.argmax(-1).tolist()
            else:
                processed = process_logits(part, [g.params for g in gens], [g.seen for g in gens])
                tokens = choose(processed, [g.params for g in gens], [g.generator for g in gens])
            for j, (i, gen, token) in enumerate(zip(simple, gens, tokens)):
                if gen.params.return_logits:
                    gen.logits.append(part[j].float().cpu())
                gen.accept(token)
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

    def _finish(self, gen: _Generation) -> None:
        result = gen.result()
        handle = gen.request.handle
        if gen.watch_text and len(result.text) > gen.emitted:
            handle._emit(result.text[gen.emitted:])
        self._resolve(gen.request, value=result)

    def _resolve(self, request: _Request, *, value=None, exc: BaseException | None = None, cancelled: bool = False):
        if request.future.done():
            return
        if cancelled:
            value = GenerationResult("", [], "cancelled", request.length)
        try:
            if exc is not None:
                request.future.set_exception(exc)
            else:
                request.future.set_result(value)
        except InvalidStateError:  # the caller cancelled it a moment ago
            pass
        if request.handle is not None:
            request.handle._close()


def generate_rows(pm: BaseModel | PromptedModel, rows: Sequence[Sequence[int]], keys: Sequence[str | None],
                  prompts: dict[str, PromptTensors | torch.Tensor], params: SamplingParams | Sequence[SamplingParams],
                  **engine_options) -> list[GenerationResult]:
    """Generate after rows of token ids, row i with prompt keys[i] (None: no prompt), through a
    one-off engine: the core of `generate` for callers holding raw prompt tensors."""
    per_row = list(params) if isinstance(params, (list, tuple)) else [params] * len(rows)
    with Engine(pm, **engine_options) as engine:
        entries = {key: engine.add_prompt(key, value if isinstance(value, PromptTensors) else PromptTensors(input=value))
                   for key, value in prompts.items()}
        bare = engine.add_prompt("", None)
        handles = [engine.submit_generate(entries[key] if key is not None else bare, row, p)
                   for row, key, p in zip(rows, keys, per_row)]
        return [handle.result() for handle in handles]
