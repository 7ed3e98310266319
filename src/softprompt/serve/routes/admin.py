"""Admin routes (bearer token; off without one): load a prompt under a name, stop serving one. On
replicas (serve/ray.py) a change is checked on the replica that gets it, then made every replica's."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from ...errors import SoftpromptError
from .. import protocol as p
from ..errors import APIError
from ..registry import PromptNotFound, confined
from ..state import State, require_admin
from . import ERRORS

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])
LOAD_ERRORS = {**ERRORS, 403: {"model": p.ErrorResponse}}  # a path outside the prompt directories


@router.post("/admin/prompts", response_model=p.PromptInfo, responses=LOAD_ERRORS)
async def load(body: p.LoadPromptRequest, request: Request, state: State):
    """Load a prompt (a file on the server, or a library reference) under a name; a file that fails
    its checks is refused and the prompts already served are untouched. A file must lie under a
    directory the server loads prompts from (--prompt-dir; else those of its start-up prompt files,
    and the library), links resolved: any other path is refused with 403."""
    if (body.path is None) == (body.library is None):
        raise APIError(400, "give exactly one of path and library", param="path")
    request.state.prompt = None
    registry = state.registry
    try:
        if body.path is not None:
            path = confined(body.path, state.load_roots)
            served = await asyncio.to_thread(registry.add_file, body.name, path)
        else:
            served = await asyncio.to_thread(registry.add_library, body.library, body.name)
    except SoftpromptError as exc:
        raise state.refuse(exc, "path" if body.path is not None else "library") from None
    state.metrics.prompts_changed()
    if state.share_prompts is not None:  # checked here; now every replica's
        await state.share_prompts({body.name: {"path": str(path)} if body.path is not None else {"library": body.library}})
    return p.PromptInfo(**served.describe())


@router.delete("/admin/prompts/{name}", responses=ERRORS)
async def unload(name: str, state: State):
    """Stop serving a prompt (requests already running finish with it)."""
    try:
        state.registry.remove(name)
    except PromptNotFound as exc:
        raise state.refuse(exc, "name") from None
    state.metrics.prompts_changed()
    if state.share_prompts is not None:
        await state.share_prompts({name: None})
    return {"deleted": name}
