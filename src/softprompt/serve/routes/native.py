"""Native routes: classify texts, tag words, list the loaded prompts."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...errors import SoftpromptError
from ...tasks.conll import TokenExample
from ...tasks.readers import Example
from .. import protocol as p
from ..errors import APIError
from ..registry import ServedPrompt, prediction
from ..state import Registry, ServerState, State, served_for, wait_for
from . import ERRORS

router = APIRouter(tags=["native"])


@router.post("/v1/classify", response_model=p.ClassifyResponse, responses=ERRORS)
async def classify(body: p.ClassifyRequest, request: Request, state: State):
    """The label of each text (or text pair) and every label's probability."""
    served = served_for(request, state, body.model, "/v1/classify")
    inputs = body.input if isinstance(body.input, list) else [body.input]
    limit = state.settings.max_inputs
    if not inputs or len(inputs) > limit:
        raise APIError(400, f"input takes 1 to {limit} texts", param="input")
    items = []
    for i, value in enumerate(inputs):
        text, text_b = (value, None) if isinstance(value, str) else (value.text, value.text_b)
        if not text.strip():
            raise APIError(400, f"input[{i}] is empty", param="input")
        items.append(_prepare(state, served, Example(text, text_b, None, f"input[{i}]")))
    logits = await _score(request, state, served, items)
    data = []
    for i, value in enumerate(logits):
        pred = prediction(served, value)
        data.append(p.Classification(index=i, label=pred.label, probabilities=pred.probabilities))
    return p.ClassifyResponse(model=served.name, data=data)


@router.post("/v1/tag", response_model=p.TagResponse, responses=ERRORS)
async def tag(body: p.TagRequest, request: Request, state: State):
    """A tag for every word of each sentence (split on white space, or given as tokens)."""
    served = served_for(request, state, body.model, "/v1/tag")
    if isinstance(body.input, str):
        sentences = [body.input.split()]
    else:
        sentences = [s.split() if isinstance(s, str) else list(s) for s in body.input]
    limit = state.settings.max_inputs
    if not sentences or len(sentences) > limit:
        raise APIError(400, f"input takes 1 to {limit} sentences", param="input")
    items = []
    for i, tokens in enumerate(sentences):
        if not tokens or any(not t.strip() or any(c.isspace() for c in t) for t in tokens):
            raise APIError(400, f"input[{i}] is empty or has a token with white space", param="input")
        items.append(_prepare(state, served, TokenExample(tuple(tokens), None, f"input[{i}]")))
    logits = await _score(request, state, served, items)
    data = [p.Tagging(index=i, tokens=list(tokens), tags=served.task.decode(value, item))
            for i, (tokens, value, item) in enumerate(zip(sentences, logits, items))]
    return p.TagResponse(model=served.name, data=data)


@router.get("/v1/prompts", response_model=p.PromptList)
async def prompts(registry: Registry):
    """Every loaded prompt: method, task kind, labels, size and the metrics it was saved with."""
    return p.PromptList(base_model=registry.base.name, data=[p.PromptInfo(**s.describe()) for s in registry.all()])


def _prepare(state: ServerState, served: ServedPrompt, example):
    """The task's item for an input it takes whole: one over the prompt's task.max_length is refused
    (400 context_length_exceeded), never cut and answered as if whole."""
    try:
        return served.task.prepare_strict(example)
    except SoftpromptError as exc:
        raise state.refuse(exc, "input") from None


async def _score(request: Request, state: ServerState, served: ServedPrompt, items) -> list:
    """Each item's logits from the engine (all queued before any is awaited, so they share passes)."""
    futures = []
    try:
        for item in items:
            futures.append(state.engine.submit_score(served.entry, item))
    except SoftpromptError as exc:
        for future in futures:
            future.cancel()
        raise state.refuse(exc) from None
    return await wait_for(request, state, futures, lambda: [f.cancel() for f in futures])
