"""The server's routes, one router per group: OpenAI-compatible, native, admin, operations."""

from __future__ import annotations

from .. import protocol as p

ERRORS = {status: {"model": p.ErrorResponse} for status in (400, 401, 404, 422, 429, 500, 503, 504)}
# completions stream as server-sent events when asked (stream: true)
STREAMING = {**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def routers():
    """Every router, in the order their routes are listed in the schema."""
    from . import admin, native, openai, operations

    return [openai.router, native.router, admin.router, operations.router]
