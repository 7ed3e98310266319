"""Completions and chat completions in flight: the input rows a request asks for, submitted to the
engine as one generation per prompt and choice, answered whole or streamed as server-sent events
(typed chunks, an error event for a choice that failed, `[DONE]` at the end)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..engine import GenerationHandle, GenerationResult, SamplingParams
from ..errors import SoftpromptError
from . import protocol as p
from .errors import APIError
from .registry import ServedPrompt
from .state import ServerState, wait_for


def input_rows(state: ServerState, served: ServedPrompt, texts: list[str],
               params: SamplingParams) -> list[tuple[int, ...]]:
    """Each text's input row; 400 when one does not fit the prompt, or the model's positions with max_tokens."""
    rows = []
    limit = state.engine.max_positions
    for i, text in enumerate(texts):
        try:
            row = served.task.prompt_row(text)
        except SoftpromptError as exc:
            raise state.refuse(exc, "prompt", where=f"prompt[{i}]" if len(texts) > 1 else "") from None
        if limit is not None and len(row) + params.max_new_tokens > limit:
            raise APIError(400, f"input of {len(row)} tokens plus max_tokens={params.max_new_tokens} is over the "
                                f"model's {limit} positions", param="max_tokens", code="context_length_exceeded")
        rows.append(row)
    return rows


@dataclass
class Completion:
    """One request's generations: choice i of text t is handles[t * n + i]."""

    state: ServerState
    served: ServedPrompt
    rows: list[tuple[int, ...]]
    n: int
    chat: bool
    created: int = field(default_factory=lambda: int(time.time()))
    handles: list[GenerationHandle] = field(default_factory=list)

    def __post_init__(self):
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]

    def submit(self, params: SamplingParams, on_delta=None) -> None:
        """Queue every generation; on_delta(index) gives choice index's streaming callback (None: not streamed)."""
        try:
            for t, row in enumerate(self.rows):
                for i in range(self.n):
                    callback = on_delta(t * self.n + i) if on_delta is not None else None
                    self.handles.append(self.state.engine.submit_generate(
                        self.served.entry, row, params, stream=False, on_delta=callback, choice=i))
        except SoftpromptError as exc:
            self.cancel()
            raise self.state.refuse(exc) from None

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    def generated(self, results: list[GenerationResult]) -> None:
        self.state.metrics.generated(self.served.name, sum(len(r.token_ids) for r in results))

    def response(self, results: list[GenerationResult]) -> p.CompletionResponse | p.ChatCompletionResponse:
        prompt_tokens = sum(sum(1 for t in row if t >= 0) for row in self.rows) * self.n  # virtual slots are < 0
        completion_tokens = sum(len(r.token_ids) for r in results)
        usage = p.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens)
        if self.chat:
            choices = [p.ChatChoice(index=i, message=p.ChatResponseMessage(content=r.text),
                                    finish_reason=finish_reason(r)) for i, r in enumerate(results)]
            return p.ChatCompletionResponse(id=self.id, created=self.created, model=self.served.name, choices=choices,
                                            usage=usage)
        choices = [p.CompletionChoice(index=i, text=r.text, finish_reason=finish_reason(r))
                   for i, r in enumerate(results)]
        return p.CompletionResponse(id=self.id, created=self.created, model=self.served.name, choices=choices,
                                    usage=usage)

    def chunk(self, index: int, text: str | None, finish: str | None = None, first: bool = False) -> str:
        """One server-sent event of choice index: new text, or (finish given) its end."""
        if self.chat:
            delta = p.ChatDelta(role="assistant", content=text or "") if first else p.ChatDelta(content=text or None)
            choice = p.ChatStreamChoice(index=index, delta=delta, finish_reason=finish)
            event = p.ChatCompletionChunk(id=self.id, created=self.created, model=self.served.name, choices=[choice])
        else:
            choice = p.CompletionStreamChoice(index=index, text=text or "", finish_reason=finish)
            event = p.CompletionChunk(id=self.id, created=self.created, model=self.served.name, choices=[choice])
        return f"data: {event.model_dump_json()}\n\n"


def finish_reason(result: GenerationResult) -> str:
    return {"stop": "stop", "length": "length"}.get(result.finish_reason, "stop")


def error_event(message: str, type: str) -> str:
    body = p.ErrorResponse(error=p.ErrorBody(message=message, type=type))
    return f"data: {body.model_dump_json(exclude_none=True)}\n\n"  # message and type, as before


async def complete(request: Request, state: ServerState, served: ServedPrompt, texts: list[str],
                   body: p.CompletionRequest | p.ChatCompletionRequest, params: SamplingParams, chat: bool):
    """The response to a completion request: the whole texts, or (body.stream) a stream of events."""
    n, limit = body.n, state.settings.max_inputs
    if len(texts) * n > limit:
        raise APIError(400, f"{len(texts)} prompts x n={n} is over this server's {limit}", param="n")
    completion = Completion(state, served, input_rows(state, served, texts, params), n, chat)
    if not body.stream:
        completion.submit(params)
        results = await wait_for(request, state, [h.future for h in completion.handles], completion.cancel)
        completion.generated(results)
        return completion.response(results)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()  # (index, new text), or (index, None) when that choice is done
    completion.submit(params, on_delta=lambda index: lambda delta: loop.call_soon_threadsafe(
        queue.put_nowait, (index, delta)))
    for index, handle in enumerate(completion.handles):
        handle.future.add_done_callback(
            lambda f, index=index: loop.call_soon_threadsafe(queue.put_nowait, (index, None)))
    return StreamingResponse(_events(completion, queue), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _events(completion: Completion, queue: asyncio.Queue) -> AsyncIterator[str]:
    """The stream: each choice's text as it is decoded, its end (or an error event), then [DONE]."""
    timeout = completion.state.settings.timeout
    remaining = len(completion.handles)
    deadline = time.monotonic() + timeout
    try:
        if completion.chat:
            for index in range(len(completion.handles)):
                yield completion.chunk(index, "", first=True)
        while remaining:
            try:
                index, delta = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                yield error_event(f"timed out after {timeout:g} s", "timeout")
                return
            if delta is not None:
                yield completion.chunk(index, delta)
                continue
            remaining -= 1
            try:
                result = completion.handles[index].future.result()
            except SoftpromptError as exc:
                yield error_event(str(exc), "invalid_request_error")
                continue
            except Exception as exc:  # the engine failed this choice: say so, as a whole request would get a 500
                logging.getLogger("softprompt.serve").error("generation failed in a stream: %r", exc)
                yield error_event(f"internal error: {type(exc).__name__}", "server_error")
                continue
            completion.generated([result])
            yield completion.chunk(index, None, finish_reason(result))
        yield "data: [DONE]\n\n"
    finally:
        completion.cancel()  # the client went away (or we are done): free the rows
