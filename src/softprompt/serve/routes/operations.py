"""Operations: health, Prometheus metrics, and the page to try the prompts."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from .. import protocol as p
from ..state import EngineDep, Registry, State

router = APIRouter()


@router.get("/health", response_model=p.Health, tags=["operations"])
async def health(state: State, registry: Registry, engine: EngineDep):
    return p.Health(status="draining" if state.draining else "ok", base_model=registry.base.name,
                    prompts=len(registry.names()), queue_depth=engine.queue_depth(), running_rows=engine.running())


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
async def prometheus(state: State):
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse(resources.files("softprompt.serve").joinpath("page.html").read_text(encoding="utf-8"))
