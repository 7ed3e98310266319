"""The HTTP layer: FastAPI routes over the engine and the prompt registry; no model logic of its own.

Routes (serve/routes/): OpenAI-compatible completions, chat completions (both with server-sent-event
streaming) and models; native classify, tag and prompt listing; admin routes to load and remove
prompts (bearer token; off without one); health, Prometheus metrics and a page to try the prompts.
Every error is OpenAI's error object with the right status (serve/errors.py). Requests of all routes
feed the engine, which batches them continuously; a full queue answers 429 with Retry-After, a client
that goes away frees its rows. Routes get the server's state (registry, engine, settings, metrics)
through dependencies (serve/state.py).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .errors import add_handlers
from .metrics import ServerMetrics
from .observe import Observe
from .registry import PromptRegistry
from .routes import routers
from .state import ServerState, ServeSettings

access_log = logging.getLogger("softprompt.access")


def create_app(registry: PromptRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving a registry's prompts; closing the app (lifespan end) drains the engine."""
    state = ServerState(registry, settings or ServeSettings(), ServerMetrics(registry),
                        load_roots=tuple(registry.load_roots()))  # taken now: files served at start-up
    engine = registry.engine
    engine.add_hook("pass", state.metrics.on_pass)
    engine.add_hook("admit", state.metrics.on_admit)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.draining = True
        await asyncio.to_thread(engine.close, True)  # requests in flight finish first

    app = FastAPI(title="softprompt", version=_version(), lifespan=lifespan,
                  description="One base model, many prompts: OpenAI-compatible completions and native "
                              "classification and tagging. `model` names a loaded prompt.")
    app.state.server = state
    add_handlers(app)
    app.add_middleware(Observe, metrics=state.metrics, log=access_log)  # metrics and the access log
    for router in routers():
        app.include_router(router)
    return app


def _version() -> str:
    from .. import __version__

    return __version__
