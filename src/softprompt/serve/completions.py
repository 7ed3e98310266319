"""Completions and chat completions in flight: the input rows a request asks for, submitted to the
engine as one generation per prompt and choice, answered whole or streamed as server-sent events
(typed chunks, an error event for a choice that failed, the usage when asked, `[DONE]` at the end);
a classification prompt's answer is its predicted label. Log-probabilities, when asked, in OpenAI's
shape of each route."""

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
from .registry import ServedPrompt, prediction
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


# One token of an answer: its text, its log-probability and the most likely tokens' (text, log-probability).
Step = tuple[str, float, list[tuple[str, float]]]


@dataclass
class Answer:
    """One choice: its text, why it ended, its tokens' log-probabilities (when asked) and how many
    tokens it generated."""

    text: str
    finish: str
    steps: list[Step] | None = None
    tokens: int = 0


@dataclass
class Completion:
    """One request's choices: for generation, choice i of text t is handles[t * n + i]."""

    state: ServerState
    served: ServedPrompt
    prompt_tokens: int
    chat: bool
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    handles: list[GenerationHandle] = field(default_factory=list)

    def __post_init__(self):
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]

    def submit(self, rows: list[tuple[int, ...]], n: int, params: SamplingParams, on_delta=None) -> None:
        """Queue n generations of each row; on_delta(index) gives choice index's streaming callback (None:
        not streamed)."""
        try:
            for t, row in enumerate(rows):
                for i in range(n):
                    callback = on_delta(t * n + i) if on_delta is not None else None
                    self.handles.append(self.state.engine.submit_generate(
                        self.served.entry, row, params, stream=False, on_delta=callback, choice=i))
        except SoftpromptError as exc:
            self.cancel()
            raise self.state.refuse(exc) from None

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    def generated(self, result: GenerationResult) -> Answer:
        """A generation's answer (its metrics counted)."""
        self.state.metrics.generated(self.served.name, len(result.token_ids))
        steps = None
        if result.logprobs is not None:
            steps = token_steps(self.state.registry.base.tokenizer, result.token_ids, result.logprobs, result.text)
        return Answer(result.text, finish_reason(result), steps, len(result.token_ids))

    def usage(self, answers: list[Answer]) -> p.Usage:
        completion_tokens = sum(a.tokens for a in answers)
        return p.Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion_tokens,
                       total_tokens=self.prompt_tokens + completion_tokens)

    def logprobs(self, steps: list[Step] | None, offset: int = 0):
        """Steps in the route's logprobs shape (None when none were asked)."""
        if steps is None:
            return None
        if self.chat:
            return p.ChatLogprobs(content=[p.TokenLogprob(
                token=text, logprob=logprob, bytes=list(text.encode()),
                top_logprobs=[p.TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in top])
                for text, logprob, top in steps])
        offsets, tops = [], []
        for text, logprob, top in steps:
            offsets.append(offset)
            offset += len(text)
            listed: dict[str, float] = {}
            for token, value in [*top, (text, logprob)]:  # most likely first, then the chosen token, as OpenAI lists
                listed.setdefault(token, value)  # tokens of the same text: the likeliest's
            tops.append(listed)
        return p.CompletionLogprobs(tokens=[s[0] for s in steps], token_logprobs=[s[1] for s in steps],
                                    top_logprobs=tops, text_offset=offsets)

    def response(self, answers: list[Answer]) -> p.CompletionResponse | p.ChatCompletionResponse:
        usage = self.usage(answers)
        if self.chat:
            choices = [p.ChatChoice(index=i, message=p.ChatResponseMessage(content=a.text), finish_reason=a.finish,
                                    logprobs=self.logprobs(a.steps)) for i, a in enumerate(answers)]
            return p.ChatCompletionResponse(id=self.id, created=self.created, model=self.served.name, choices=choices,
                                            usage=usage)
        choices = [p.CompletionChoice(index=i, text=a.text, finish_reason=a.finish, logprobs=self.logprobs(a.steps))
                   for i, a in enumerate(answers)]
        return p.CompletionResponse(id=self.id, created=self.created, model=self.served.name, choices=choices,
                                    usage=usage)

    def chunk(self, index: int, text: str | None, finish: str | None = None, first: bool = False,
              steps: list[Step] | None = None) -> str:
        """One server-sent event of choice index: new text (with its tokens' log-probabilities), or its end."""
        logprobs = self.logprobs(steps)
        if self.chat:
            delta = p.ChatDelta(role="assistant", content=text or "") if first else p.ChatDelta(content=text or None)
            choice = p.ChatStreamChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
            return self._event(p.ChatCompletionChunk, [choice])
        choice = p.CompletionStreamChoice(index=index, text=text or "", finish_reason=finish, logprobs=logprobs)
        return self._event(p.CompletionChunk, [choice])

    def usage_chunk(self, answers: list[Answer]) -> str:
        """The last event when the client asked for the usage: no choices, the usage (OpenAI's shape)."""
        return self._event(p.ChatCompletionChunk if self.chat else p.CompletionChunk, [], self.usage(answers))

    def _event(self, model, choices: list, usage: p.Usage | None = None) -> str:
        event = model(id=self.id, created=self.created, model=self.served.name, choices=choices, usage=usage)
        return f"data: {event.model_dump_json()}\n\n"


def token_steps(tokenizer, token_ids: list[int], logprobs, text: str) -> list[Step]:
    """Each generated token's text, log-probability and most likely alternatives, up to the answer's
    text (a stop string cuts the text after the tokens that made it)."""
    steps, length = [], 0
    for i, (token, (logprob, top)) in enumerate(zip(token_ids, logprobs)):
        if length >= len(text) and i:
            break
        context = token_ids[max(0, i - 4):i]  # a few tokens before: leading spaces come out as in the text
        before = _decode(tokenizer, context)
        piece = _piece(tokenizer, context, before, token)
        steps.append((piece, logprob, [(_piece(tokenizer, context, before, t, named=True), lp) for t, lp in top]))
        length += len(piece)
    return steps


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else ""


def _piece(tokenizer, context: list[int], before: str, token: int, named: bool = False) -> str:
    """What token adds to the text after context (decoded as before); named: a token that adds no text
    (an end token among the alternatives) by its name, so the client sees which it was."""
    whole = _decode(tokenizer, context + [token])
    same = next((i for i, (a, b) in enumerate(zip(before, whole)) if a != b), min(len(before), len(whole)))
    if named and same == len(whole) and tokenizer is not None:
        return str(tokenizer.convert_ids_to_tokens(token))
    return whole[same:]


def label_answer(served: ServedPrompt, logits, asked: bool) -> Answer:
    """A classification prompt's answer: its predicted label (as /v1/classify names it) as the text and,
    when asked, the label's log-probability with every label's (most likely first)."""
    import torch

    label = prediction(served, logits).label
    if not asked:
        return Answer(label, "stop")
    logp = dict(zip(served.labels, torch.log_softmax(logits.float(), -1).tolist()))
    every = sorted(logp.items(), key=lambda item: -item[1])
    return Answer(label, "stop", [(label, logp[label], every)])


def finish_reason(result: GenerationResult) -> str:
    return {"stop": "stop", "length": "length"}.get(result.finish_reason, "stop")


def error_event(message: str, type: str) -> str:
    body = p.ErrorResponse(error=p.ErrorBody(message=message, type=type))
    return f"data: {body.model_dump_json(exclude_none=True)}\n\n"  # message and type, as before


def check_count(state: ServerState, texts: list[str], n: int) -> None:
    """400 when a request asks for more choices (texts x n) than the server takes in one request."""
    limit = state.settings.max_inputs
    if len(texts) * n > limit:
        raise APIError(400, f"{len(texts)} prompts x n={n} is over this server's {limit}", param="n")


async def complete(request: Request, state: ServerState, served: ServedPrompt, texts: list[str],
                   body: p.CompletionRequest | p.ChatCompletionRequest, params: SamplingParams, chat: bool):
    """The response to a completion request (its count checked by the caller): the whole texts, or (body.stream) a
    stream of events."""
    rows = input_rows(state, served, texts, params)
    prompt_tokens = sum(sum(1 for t in row if t >= 0) for row in rows) * body.n  # virtual slots are < 0
    completion = Completion(state, served, prompt_tokens, chat, body.include_usage)
    if not body.stream:
        completion.submit(rows, body.n, params)
        results = await wait_for(request, state, [h.future for h in completion.handles], completion.cancel)
        return completion.response([completion.generated(r) for r in results])
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()  # (index, new text), or (index, None) when that choice is done
    completion.submit(rows, body.n, params, on_delta=lambda index: lambda delta: loop.call_soon_threadsafe(
        queue.put_nowait, (index, delta)))
    for index, handle in enumerate(completion.handles):
        handle.future.add_done_callback(
            lambda f, index=index: loop.call_soon_threadsafe(queue.put_nowait, (index, None)))
    return _stream(_events(completion, queue))


def answer_labels(state: ServerState, served: ServedPrompt, items: list, logits: list,
                  body: p.CompletionRequest | p.ChatCompletionRequest, chat: bool):
    """A classification prompt's completion: each text's predicted label as the text of its n choices
    (the same label: it is read, not sampled), whole or as a stream (the label, then the end)."""
    prompt_tokens = sum(1 for item in items for row in item.rows for t in row if t >= 0)
    completion = Completion(state, served, prompt_tokens, chat, body.include_usage)
    asked = body.top_logprobs_asked() is not None
    answers = [label_answer(served, value, asked) for value in logits for _ in range(body.n)]
    if not body.stream:
        return completion.response(answers)

    async def events() -> AsyncIterator[str]:
        for index, answer in enumerate(answers):
            yield completion.chunk(index, answer.text, first=chat, steps=answer.steps)
            yield completion.chunk(index, None, answer.finish)
        if completion.include_usage:
            yield completion.usage_chunk(answers)
        yield "data: [DONE]\n\n"

    return _stream(events())


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(completion: Completion, queue: asyncio.Queue) -> AsyncIterator[str]:
    """The stream: each choice's text as it is decoded, its end (with its tokens' log-probabilities when
    asked), or an error event; the usage when asked; then [DONE]."""
    timeout = completion.state.settings.timeout
    remaining = len(completion.handles)
    deadline = time.monotonic() + timeout
    answers = []
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
            answers.append(completion.generated(result))
            # the text went out as it was decoded; its tokens' log-probabilities come with its end
            yield completion.chunk(index, None, answers[-1].finish, steps=answers[-1].steps)
        if completion.include_usage:
            yield completion.usage_chunk(answers)
        yield "data: [DONE]\n\n"
    finally:
        completion.cancel()  # the client went away (or we are done): free the rows
