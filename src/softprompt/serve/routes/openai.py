"""OpenAI-compatible routes: completions and chat completions (streamed when asked), and the models.

Every prompt that answers in text answers here: a prompt whose task decodes generates its text; a
classification prompt answers its predicted label (scored as /v1/classify scores it)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from ...errors import SoftpromptError
from ...tasks.readers import Example
from .. import protocol as p
from ..completions import answer_labels, check_count, complete
from ..errors import APIError
from ..registry import ServedPrompt
from ..state import Registry, ServerState, State, served_for
from . import STREAMING
from .native import _prepare, _score

router = APIRouter(tags=["openai"])


@router.post("/v1/completions", response_model=p.CompletionResponse, responses=STREAMING)
async def completions(body: p.CompletionRequest, request: Request, state: State):
    """Text after a prompt: `prompt` fills the named prompt's template (a classification prompt: its label)."""
    served = served_for(request, state, body.model, "/v1/completions")
    texts = body.texts()
    return await _answer(request, state, served, texts, body, "prompt", chat=False)


@router.post("/v1/chat/completions", response_model=p.ChatCompletionResponse, responses=STREAMING)
async def chat_completions(body: p.ChatCompletionRequest, request: Request, state: State):
    """The assistant's reply. The base model takes the whole conversation in its chat template; a
    task prompt takes the last user message as its input (`{text}` of its template)."""
    served = served_for(request, state, body.model, "/v1/chat/completions")
    try:
        text = served.task.chat_input(body.turns())
    except SoftpromptError as exc:
        raise state.refuse(exc, "messages") from None
    return await _answer(request, state, served, [text], body, "messages", chat=True)


async def _answer(request: Request, state: ServerState, served: ServedPrompt, texts: list[str],
                  body: p.CompletionRequest | p.ChatCompletionRequest, field: str, chat: bool):
    """Generated text from a task that decodes, else the label of a scored one (its task says which)."""
    params = body.to_sampling_params(state.settings.max_tokens)  # checked for every prompt, as OpenAI would
    check_count(state, texts, body.n)
    if served.task.decodes:
        return await complete(request, state, served, texts, body, params, chat=chat)
    items = []
    for i, text in enumerate(texts):
        where = f"{field}[{i}]" if len(texts) > 1 else field
        if not text.strip():
            raise APIError(400, f"{where} is empty", param=field)
        try:
            items.append(_prepare(state, served, Example(text, None, None, where)))
        except APIError as exc:
            exc.param = field  # /v1/classify's refusal names its `input`; here the text came in `field`
            raise
    logits = await _score(request, state, served, items)
    return answer_labels(state, served, items, logits, body, chat)


@router.get("/v1/models", response_model=p.ModelList)
async def models(registry: Registry):
    now = int(time.time())
    return p.ModelList(data=[p.ModelCard(id=name, created=now) for name in registry.names()])
