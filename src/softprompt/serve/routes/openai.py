"""OpenAI-compatible routes: completions and chat completions (streamed when asked), and the models."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from ...errors import SoftpromptError
from .. import protocol as p
from ..completions import complete
from ..state import Registry, State, served_for
from . import STREAMING

router = APIRouter(tags=["openai"])


@router.post("/v1/completions", response_model=p.CompletionResponse, responses=STREAMING)
async def completions(body: p.CompletionRequest, request: Request, state: State):
    """Text after a prompt: `prompt` fills the named prompt's template."""
    served = served_for(request, state, body.model, "/v1/completions")
    texts = body.texts()
    return await complete(request, state, served, texts, body, body.to_sampling_params(state.settings.max_tokens),
                          chat=False)


@router.post("/v1/chat/completions", response_model=p.ChatCompletionResponse, responses=STREAMING)
async def chat_completions(body: p.ChatCompletionRequest, request: Request, state: State):
    """The assistant's reply. The base model takes the whole conversation in its chat template; a
    task prompt takes the last user message as its input (`{text}` of its template)."""
    served = served_for(request, state, body.model, "/v1/chat/completions")
    try:
        text = served.task.chat_input(body.turns())
    except SoftpromptError as exc:
        raise state.refuse(exc, "messages") from None
    return await complete(request, state, served, [text], body, body.to_sampling_params(state.settings.max_tokens),
                          chat=True)


@router.get("/v1/models", response_model=p.ModelList)
async def models(registry: Registry):
    now = int(time.time())
    return p.ModelList(data=[p.ModelCard(id=name, created=now) for name in registry.names()])
