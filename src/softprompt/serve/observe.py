"""Metrics and the access log of every HTTP request, as ASGI middleware."""

from __future__ import annotations

import json
import time


class Observe:
    """Metrics and one JSON access-log line per HTTP request, as plain ASGI middleware: streamed
    bodies pass through untouched (Starlette's BaseHTTPMiddleware re-wraps them through a task and a
    queue). Latency is to the response's first byte (what a stream's client waits for); the log line
    adds the whole response's time."""

    def __init__(self, app, metrics, log):
        self.app, self.metrics, self.log = app, metrics, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})  # request.state of the handlers: the prompt they served
        state["prompt"] = None
        answered: dict = {"status": 500, "seconds": None}  # an exception that escapes becomes a 500

        async def observed_send(message):
            if message["type"] == "http.response.start":
                answered.update(status=message["status"], seconds=time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            total = time.perf_counter() - started
            first = answered["seconds"] if answered["seconds"] is not None else total
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request(route, state.get("prompt"), answered["status"], first)
            client = scope.get("client")
            self.log.info(json.dumps({"ts": round(time.time(), 3), "method": scope.get("method"),
                                      "path": scope.get("path"), "status": answered["status"],
                                      "ms": round(1000 * first, 1), "total_ms": round(1000 * total, 1),
                                      "prompt": state.get("prompt"), "client": client[0] if client else None}))
