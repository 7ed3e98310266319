"""The one inference path: one base model, its loaded prompts, requests from any thread.

An `Engine` owns a PromptedModel and a set of named prompts (tensors plus the task that reads their
rows). Requests (score a prepared item, generate from a row) are queued from any thread and run by
one worker thread in shared forward passes: each iteration runs one pass over newly admitted rows
(scoring rows of any prompt and method, and the prompts of new generation rows, within caps on rows
and tokens), then one decoding step for every running generation row, whichever request and prompt
it belongs to. Rows join between steps and leave the moment they finish (continuous batching).

Two halves, as in vLLM's v1 engine: the `Scheduler` (scheduler.py) decides which waiting requests
start, in order of age within the budgets, and moves every request to a final state; the `Runner`
(runner.py) executes passes and decoding steps. Whatever fails, every request ends: a failure ends
the requests it concerns, and an error the runner did not catch ends every request in flight.

Causal rows that begin with their prompt's fixed start are served from its compiled form (the
keys/values computed once per loaded prompt, core.compiled); replacing a prompt under the same
name drops them with the old entry. The engine imports no task code: a prompt's `task` is any
object with `class_logits(pm, hidden, batch, items, row_index)` (scoring) and its fixed start is
given by the caller.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..core import PromptedModel, PromptTensors
from ..core.compiled import CompiledPrompt, can_compile
from ..errors import DataError, SoftpromptError
from ..models import BaseModel, ModelKind
from .requests import GenerationHandle, GenerationResult, Request, RequestState
from .runner import NOT_COMPILED, Runner
from .sampling import SamplingParams
from .scheduler import EngineBusy, EngineClosed, Scheduler

__all__ = ["Engine", "EngineBusy", "EngineClosed", "EnginePrompt", "GenerationHandle", "GenerationResult",
           "RequestState", "generate_rows"]

log = logging.getLogger("softprompt.engine")


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
    compiled: object = NOT_COMPILED  # CompiledPrompt | None once computed (by the worker, at first use)
    meta: dict = field(default_factory=dict)
    # Contextual calibration (a classification task with calibrate on): the label probabilities this
    # prompt gives content-free inputs; every score it returns is divided by them.
    bias: torch.Tensor | None = None


class Engine:
    """A base model and its prompts, serving scoring and generation requests from any thread.

    max_batch_rows / max_batch_tokens cap one pass over new rows (tokens counted with padding);
    max_running caps the generation rows decoded together; max_queue caps requests waiting to start
    (0: no cap; past it, submit raises EngineBusy). Requests start in the order they were submitted
    (why, in scheduler.py).
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
        self._no_grad = torch.no_grad if sharded else torch.inference_mode
        self.prompts: dict[str, EnginePrompt] = {}
        self._prompts_lock = threading.Lock()  # the prompt table; the queue has the scheduler's lock
        self._serial = itertools.count()
        self._thread: threading.Thread | None = None
        self.stats = {"passes": 0, "steps": 0, "rows": 0, "tokens": 0, "generated": 0, "queue_high_water": 0}
        # registered with add_hook, never overwritten: several observers (metrics, logs, tests) can listen
        self._hooks: dict[str, list[Callable]] = {"pass": [], "admit": []}
        info = self.pm.info
        slot_path = info.kind is ModelKind.CAUSAL and info.position_ids == "absolute" and can_compile(self.pm)
        self.scheduler = Scheduler(self.max_batch_rows, self.max_batch_tokens, self.max_running, self.max_queue,
                                   self.stats)
        self.runner = Runner(self.pm, self.scheduler.finish, self._call_hooks, self.stats, slot_path=slot_path,
                             compile_prompts=self.compile_prompts, cuda_graphs=False if sharded else cuda_graphs,
                             compile_decoding=False if sharded else compile_decoding)
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
                log.exception("engine %s hook %r raised", event, fn)

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
        with self._prompts_lock:
            self.prompts[name] = entry
        return entry

    def remove_prompt(self, name: str) -> None:
        with self._prompts_lock:
            self.prompts.pop(name, None)

    def _entry(self, name: str | EnginePrompt) -> EnginePrompt:
        if isinstance(name, EnginePrompt):
            return name
        with self._prompts_lock:
            entry = self.prompts.get(name)
        if entry is None:
            raise DataError(f"unknown prompt {name!r} (loaded: {', '.join(sorted(self.prompts)) or 'none'})")
        return entry

    # ---- requests -------------------------------------------------------------------------------
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
            queued.append(Request(self._entry(name), rows, max(len(r) for r in rows), Future(), item=item))
        self._put(queued)
        return [request.future for request in queued]

    def submit_generate(self, name: str | EnginePrompt, row: Sequence[int], params: SamplingParams | None = None, *,
                        stream: bool = False, on_delta: Callable[[str], None] | None = None,
                        choice: int = 0) -> GenerationHandle:
        """Generate after a row of token ids (virtual slots negative); stream=True makes the handle
        iterable over the text as it is decoded. An on_delta (or stream consumer) that raises ends
        this request with its error, and no other."""
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
            queued.append(Request(entry, [row], len(row), handle.future, params=params, handle=handle, choice=choice))
            handles.append(handle)
        self._put(queued)
        return handles

    def _put(self, requests: list[Request]) -> None:
        self.scheduler.put(requests, self._start_worker)

    def _start_worker(self) -> None:
        """Called under the scheduler's lock: the worker starts with the first request."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="softprompt-engine", daemon=True)
            self._thread.start()

    def queue_depth(self) -> int:
        """Requests waiting to start."""
        return self.scheduler.depth()

    def running(self) -> int:
        """Generation rows being decoded."""
        return self.runner.running()

    def close(self, wait: bool = True) -> None:
        """Stop taking requests; with wait, finish those queued and running first."""
        self.scheduler.close()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the worker -----------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            with self._no_grad():
                while self.scheduler.wait_for_work(lambda: self.runner.running() > 0):
                    try:
                        self._iteration()
                    except Exception as exc:  # keep serving: what was in flight ends with the error
                        self._fail_running(exc)
        finally:  # the worker is leaving: nothing may be left waiting for it
            stopped = EngineClosed("the engine's worker stopped")
            self.runner.drop_all()
            self.scheduler.fail_running(stopped)
            self.scheduler.fail_waiting(stopped)

    def _iteration(self) -> None:
        runner = self.runner
        plan = self.scheduler.schedule(self.max_running - runner.running(), runner.slot_path)
        if self._hooks["admit"] and plan:
            now = time.monotonic()
            for request in plan.prefill + plan.cohort:
                self._call_hooks("admit", request.kind, now - request.submitted)
        runner.run(plan.prefill, plan.cohort)

    def _fail_running(self, exc: Exception) -> None:
        """An error the runner did not catch: every request in flight ends with it, the queue goes on."""
        if not isinstance(exc, SoftpromptError):
            exc = RuntimeError(f"engine error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        log.error("engine iteration failed; its requests end with the error: %s", exc)
        self.runner.drop_all()
        self.scheduler.fail_running(exc)

    # ---- kept for callers that look inside (tests, bench/generate.py) -----------------------------
    @property
    def _slots(self):
        return self.runner.slots

    def _compiled(self, entry: EnginePrompt) -> CompiledPrompt | None:
        return self.runner.compiled(entry)


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
