"""What the routes share, as FastAPI dependencies: the server's settings and state (on app.state,
set by create_app), the registry and the engine; the prompt a request names; waiting for results
while the client may go away."""

from __future__ import annotations

import asyncio
import hmac
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Awaitable, Callable, Sequence

from fastapi import Depends, Request

from ..engine import Engine
from ..errors import SoftpromptError
from .errors import APIError, refuse
from .metrics import ServerMetrics
from .registry import PromptNotFound, PromptRegistry, ServedPrompt


@dataclass
class ServeSettings:
    """Limits and switches of one server."""

    max_tokens: int = 512  # new tokens per request at most
    timeout: float = 120.0  # seconds a request may take before it is cancelled (504)
    max_inputs: int = 256  # texts per classify/tag request, prompts x n per completion request
    admin_token: str | None = None  # bearer token of the admin routes; None: they are off
    retry_after: int = 1  # seconds, in the Retry-After header of a 429


@dataclass
class ServerState:
    """One server's shared state: what it serves, its limits, its metrics and how busy it is."""

    registry: PromptRegistry
    settings: ServeSettings
    metrics: ServerMetrics
    draining: bool = False  # the lifespan ended: requests in flight finish, /health says so
    waiting: int = 0  # requests awaiting their results (touched on the event loop only)
    load_roots: tuple[Path, ...] = ()  # where admin loads may read prompt files (registry.load_roots at start)
    # Set by a replica of a replicated server (serve/ray.py): an admin load or unload, made here first,
    # goes to every replica through it ({name: set entry, or None when unloaded}). None: one process.
    share_prompts: Callable[[dict], Awaitable[None]] | None = None

    @property
    def engine(self) -> Engine:
        return self.registry.engine

    def refuse(self, exc: SoftpromptError, param: str | None = None, where: str = "") -> APIError:
        """A user error as the APIError it becomes (with this server's Retry-After)."""
        return refuse(exc, param, retry_after=self.settings.retry_after, where=where)


def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]


def _registry(state: State) -> PromptRegistry:
    return state.registry


def _engine(state: State) -> Engine:
    return state.engine


def _settings(state: State) -> ServeSettings:
    return state.settings


# What a route that needs only one part of the state declares (FastAPI resolves each once per request).
Registry = Annotated[PromptRegistry, Depends(_registry)]
EngineDep = Annotated[Engine, Depends(_engine)]
Settings = Annotated[ServeSettings, Depends(_settings)]


def require_admin(request: Request, settings: Settings) -> None:
    """The admin routes' guard: off (404) without a server token, 401 without the right bearer token."""
    token = settings.admin_token
    if token is None:
        raise APIError(404, "admin routes are off: start the server with an admin token to use them",
                       "not_found_error")
    given = request.headers.get("authorization", "")  # read here, not declared: the schema has no header
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise APIError(401, "admin routes need 'Authorization: Bearer <token>'", "authentication_error")


def served_for(request: Request, state: ServerState, name: str, route: str) -> ServedPrompt:
    """The prompt a request names, if it serves this route (its task says which routes serve it)."""
    try:
        served = state.registry.get(name)
    except PromptNotFound as exc:
        raise state.refuse(exc, "model") from None
    request.state.prompt = served.name  # for the metrics and the access log
    if route not in served.task.routes:
        raise APIError(400, f"prompt {name!r} is a {served.kind} prompt, which {route} does not serve "
                            f"(use {' or '.join(served.task.routes)})", param="model", code="wrong_task_kind")
    return served


async def wait_for(request: Request, state: ServerState, futures: Sequence[Future],
                   on_cancel: Callable[[], None]) -> list:
    """The futures' results; cancels them when the client goes away (499) or the request times out (504)."""
    gathered = asyncio.gather(*[asyncio.wrap_future(f) for f in futures])
    deadline = time.monotonic() + state.settings.timeout
    state.waiting += 1
    try:
        while True:
            # Each disconnect check costs the event loop a little; with hundreds of requests waiting,
            # checking each every 0.5 s took half a core from the model (500 clients, py-spy). So the
            # interval grows with the number waiting: 0.5 s alone, 3 s with 500 waiting.
            interval = min(5.0, 0.5 + state.waiting / 200)
            done, _ = await asyncio.wait({gathered}, timeout=interval)
            if done:
                if gathered.exception() is not None:
                    on_cancel()  # one failed: the request fails whole, so the others stop decoding
                return gathered.result()
            if await request.is_disconnected():
                on_cancel()
                raise APIError(499, "client closed the request", "client_closed")
            if time.monotonic() > deadline:
                on_cancel()
                raise APIError(504, f"the request took over {state.settings.timeout:g} s and was cancelled", "timeout")
    except SoftpromptError as exc:
        raise state.refuse(exc) from None
    finally:
        state.waiting -= 1
        if not gathered.done():
            gathered.cancel()
