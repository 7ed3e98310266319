"""What a request is while the engine holds it: its state, its handle, and (generation) its decoding.

The scheduler moves a request through `RequestState` (waiting, running, then exactly one final
state); the runner fills a `Generation` token by token. A caller sees a Future (scoring) or a
`GenerationHandle` (generation), resolved once, when the request reaches its final state.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .sampling import BeamSearch, SamplingParams, generator_for


class RequestState(enum.Enum):
    """Where a request is: queued, in a pass or decoding, or done in one of three ways."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in (RequestState.FINISHED, RequestState.FAILED, RequestState.CANCELLED)


@dataclass
class GenerationResult:
    """What one generation request produced."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token or stop string) | "length" | "cancelled"
    prompt_tokens: int
    score: float | None = None  # beam search: the summed log-probability of the tokens
    logits: torch.Tensor | None = None  # (T, V) step logits, when asked for
    # when asked for (params.logprobs): per token of token_ids, its log-probability and the most
    # likely tokens' (token id, log-probability), most likely first
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None


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

    @property
    def streams(self) -> bool:
        return self._queue is not None or self._on_delta is not None

    def _emit(self, delta: str) -> None:
        """Hand new text to the consumer; an error of the caller's on_delta propagates to the engine,
        which fails this request alone."""
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
class Request:
    """One queued request: a prepared item to score, or a row to generate after."""

    entry: object  # the EnginePrompt it runs with
    rows: list[tuple[int, ...]]
    length: int
    future: Future
    item: object = None  # scoring: the prepared item
    params: SamplingParams | None = None  # generation
    handle: GenerationHandle | None = None
    choice: int = 0  # generation: which of n choices (offsets the seed)
    submitted: float = field(default_factory=time.monotonic)
    state: RequestState = RequestState.WAITING
    overtaken: int = 0  # passes that younger requests joined while it waited for decoding rows

    @property
    def generates(self) -> bool:
        return self.params is not None

    @property
    def kind(self) -> str:
        return "generate" if self.params is not None else "score"

    @property
    def slot_rows(self) -> int:
        """Decoding rows it holds once running (one per beam); scoring holds none."""
        return self.params.num_beams if self.params is not None else 0

    @property
    def cancelled(self) -> bool:
        if self.handle is not None:
            return self.handle.cancelled.is_set()
        return self.future.cancelled()  # a score request whose caller gave up


class Generation:
    """One generation request being decoded: its rows (one, or one per beam) and its text so far."""

    def __init__(self, request: Request, tokenizer, stop_ids: frozenset):
        self.request = request
        self.params = p = request.params
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.rows: list = []  # decoding.Row, one per beam
        self.tokens: list[int] = []
        self.logits: list[torch.Tensor] = []
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] | None = [] if p.logprobs is not None else None
        self.seen = [t for t in request.rows[0] if t >= 0] if p.repetition_penalty != 1.0 else []
        self.generator = generator_for(p, request.choice)
        self.beam = BeamSearch(p.num_beams, p.max_new_tokens, p.length_penalty, stop_ids) if p.num_beams > 1 else None
        self.steps = 0
        self.finished: str | None = None  # a finish reason, or "error" (then error says why)
        self.error: Exception | None = None
        self.emitted = 0
        self.watch_text = bool(p.stop) or request.handle.streams
        self.plain_greedy = not p.sampling and p.repetition_penalty == 1.0 and not p.return_logits

    @property
    def done(self) -> bool:
        return self.finished is not None or self.request.cancelled

    def accept(self, token: int, logprobs: tuple | None = None) -> None:
        """Take this step's token (greedy or sampled rows), with its log-probabilities when kept."""
        self.steps += 1
        if token in self.stop_ids:
            self.finished = "stop"
            return
        self.tokens.append(token)
        if logprobs is not None and self.logprobs is not None:  # one entry per kept token: the end token has none
            self.logprobs.append(logprobs)
        if self.params.repetition_penalty != 1.0:
            self.seen.append(token)
        if self.watch_text:
            self._watch()
        if self.finished is None and len(self.tokens) >= self.params.max_new_tokens:
            self.finished = "length"

    def deliver(self, text: str) -> None:
        """Stream text to the caller; a consumer that raises ends this generation alone, with its error."""
        try:
            self.request.handle._emit(text)
        except Exception as exc:
            self.finished, self.error = "error", exc

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
            self.deliver(text[self.emitted:safe])
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
        return GenerationResult(text, list(tokens), self.finished or "length", len(self.request.rows[0]), score, logits,
                                self.logprobs)
