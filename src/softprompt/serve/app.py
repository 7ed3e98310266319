"""The HTTP layer: FastAPI routes over the engine and the prompt registry; no model logic of its own.

Routes: OpenAI-compatible completions, chat completions (both with server-sent-event streaming) and
models; native classify, tag and prompt listing; admin routes to load and remove prompts (bearer
token; off without one); health, Prometheus metrics and a page to try the prompts. Every error is
OpenAI's error object with the right status. Requests of all routes feed the engine, which batches
them continuously; a full queue answers 429 with Retry-After, a client that goes away frees its rows.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from ..engine import EngineBusy, EngineClosed, SamplingParams
from ..errors import SoftpromptError
from ..tasks.conll import TokenExample
from ..tasks.readers import Example
from . import protocol as p
from .metrics import ServerMetrics
from .registry import PromptNotFound, PromptRegistry, ServedPrompt, prediction

access_log = logging.getLogger("softprompt.access")


@dataclass
class ServeSettings:
    """Limits and switches of one server."""

    max_tokens: int = 512  # new tokens per request at most
    timeout: float = 120.0  # seconds a request may take before it is cancelled (504)
    max_inputs: int = 256  # texts per classify/tag request, prompts x n per completion request
    admin_token: str | None = None  # bearer token of the admin routes; None: they are off
    retry_after: int = 1  # seconds, in the Retry-After header of a 429


class APIError(Exception):
    """An error to send in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def _error(status: int, message: str, type: str, param=None, code=None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or {})


ERRORS = {status: {"model": p.ErrorResponse} for status in (400, 401, 404, 422, 429, 500, 503, 504)}
# completions stream as server-sent events when asked (stream: true)
STREAMING = {**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def create_app(registry: PromptRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving a registry's prompts; closing the app (lifespan end) drains the engine."""
    settings = settings or ServeSettings()
    engine = registry.engine
    metrics = ServerMetrics(registry)
    engine.add_hook("pass", metrics.on_pass)
    engine.add_hook("admit", metrics.on_admit)
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state["draining"] = True
        await asyncio.to_thread(engine.close, True)  # requests in flight finish first

    app = FastAPI(title="softprompt", version=_version(), lifespan=lifespan,
                  description="One base model, many prompts: OpenAI-compatible completions and native "
                              "classification and tagging. `model` names a loaded prompt.")

    # ---- errors ------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON ({first.get('msg', '')})", "invalid_request_error")
        message = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                            for e in errors[:5])
        return _error(422, message, "invalid_request_error", where)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logging.getLogger("softprompt.serve").exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}", "server_error")

    # ---- metrics and access log: _Observe, added around the routes -------------------------------
    app.add_middleware(_Observe, metrics=metrics, log=access_log)

    # ---- helpers ---------------------------------------------------------------------------------
    def served_for(request: Request, name: str, route: str) -> ServedPrompt:
        try:
            served = registry.get(name)
        except PromptNotFound as exc:
            raise APIError(404, str(exc), "not_found_error", "model", "model_not_found") from None
        request.state.prompt = served.name
        if route not in served.task.routes:
            raise APIError(400, f"prompt {name!r} is a {served.kind} prompt, which {route} does not serve "
                                f"(use {' or '.join(served.task.routes)})", param="model", code="wrong_task_kind")
        return served

    def user_error(exc: SoftpromptError) -> APIError:
        if isinstance(exc, EngineBusy):
            return APIError(429, f"{exc}; retry shortly", "rate_limit_error", code="queue_full",
                            headers={"Retry-After": str(settings.retry_after)})
        if isinstance(exc, EngineClosed):
            return APIError(503, str(exc), "server_error", code="shutting_down")
        return APIError(400, str(exc))

    waiting = {"requests": 0}

    async def wait(request: Request, futures, on_cancel) -> list:
        """The futures' results; cancels them when the client goes away or the request times out."""
        gathered = asyncio.gather(*[asyncio.wrap_future(f) for f in futures])
        deadline = time.monotonic() + settings.timeout
        waiting["requests"] += 1
        try:
            while True:
                # Each disconnect check costs the event loop a little; with hundreds of requests waiting,
                # checking each every 0.5 s took half a core from the model (500 clients, py-spy). So the
                # interval grows with the number waiting: 0.5 s alone, 3 s with 500 waiting.
                interval = min(5.0, 0.5 + waiting["requests"] / 200)
                done, _ = await asyncio.wait({gathered}, timeout=interval)
                if done:
                    return gathered.result()
                if await request.is_disconnected():
                    on_cancel()
                    raise APIError(499, "client closed the request", "client_closed")
                if time.monotonic() > deadline:
                    on_cancel()
                    raise APIError(504, f"the request took over {settings.timeout:g} s and was cancelled", "timeout")
        except SoftpromptError as exc:
            raise user_error(exc) from None
        finally:
            waiting["requests"] -= 1
            if not gathered.done():
                gathered.cancel()

    def sampling(body: p._Sampling, max_tokens: int | None) -> SamplingParams:
        refused = {"logprobs": body.logprobs, "presence_penalty": body.presence_penalty,
                   "frequency_penalty": body.frequency_penalty, "logit_bias": body.logit_bias}
        for name in ("echo", "suffix", "best_of"):
            value = getattr(body, name, None)
            refused[name] = value if value not in (False, 1) else None
        for name, value in refused.items():
            if value not in (None, 0, 0.0, False, {}):
                raise APIError(400, f"{name} is not supported by softprompt serve", param=name, code="unsupported")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop takes at most 4 non-empty strings", param="stop")
        tokens = max_tokens if max_tokens is not None else 16
        if tokens > settings.max_tokens:
            raise APIError(400, f"max_tokens={tokens} is over this server's limit of {settings.max_tokens}",
                           param="max_tokens")
        try:
            return SamplingParams(max_new_tokens=tokens, temperature=body.temperature, top_p=body.top_p,
                                  top_k=body.top_k, repetition_penalty=body.repetition_penalty, seed=body.seed,
                                  stop=tuple(stop))
        except SoftpromptError as exc:
            raise APIError(400, str(exc)) from None

    def rows_of(served: ServedPrompt, texts: list[str], params: SamplingParams) -> list[tuple[int, ...]]:
        rows = []
        for i, text in enumerate(texts):
            try:
                row = served.row(text)
            except SoftpromptError as exc:
                raise APIError(400, f"prompt[{i}]: {exc}" if len(texts) > 1 else str(exc), param="prompt",
                               code="context_length_exceeded" if "tokens" in str(exc) else None) from None
            limit = engine.max_positions
            if limit is not None and len(row) + params.max_new_tokens > limit:
                raise APIError(400, f"input of {len(row)} tokens plus max_tokens={params.max_new_tokens} is over the "
                                    f"model's {limit} positions", param="max_tokens", code="context_length_exceeded")
            rows.append(row)
        return rows

    async def generate(request: Request, served: ServedPrompt, texts: list[str], body: p._Sampling, params, chat: bool):
        n = body.n
        if len(texts) * n > settings.max_inputs:
            raise APIError(400, f"{len(texts)} prompts x n={n} is over this server's {settings.max_inputs}", param="n")
        rows = rows_of(served, texts, params)
        created, ident = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handles = []
        try:
            for t, row in enumerate(rows):
                for i in range(n):
                    index = t * n + i
                    on_delta = (lambda d, index=index: loop.call_soon_threadsafe(queue.put_nowait, (index, d))) \
                        if body.stream else None
                    handle = engine.submit_generate(served.entry, row, params, stream=False, on_delta=on_delta, choice=i)
                    handles.append(handle)
        except SoftpromptError as exc:
            for handle in handles:
                handle.cancel()
            raise user_error(exc) from None

        def cancel_all():
            for handle in handles:
                handle.cancel()

        usage = lambda results: p.Usage(  # noqa: E731
            prompt_tokens=sum(sum(1 for t in row if t >= 0) for row in rows) * n,
            completion_tokens=sum(len(r.token_ids) for r in results),
            total_tokens=sum(sum(1 for t in row if t >= 0) for row in rows) * n + sum(len(r.token_ids) for r in results))
        if not body.stream:
            results = await wait(request, [h.future for h in handles], cancel_all)
            metrics.generated(served.name, sum(len(r.token_ids) for r in results))
            if chat:
                choices = [p.ChatChoice(index=i, message=p.ChatResponseMessage(content=r.text),
                                        finish_reason=_finish(r.finish_reason)) for i, r in enumerate(results)]
                return p.ChatCompletionResponse(id=ident, created=created, model=served.name, choices=choices,
                                                usage=usage(results))
            choices = [p.CompletionChoice(index=i, text=r.text, finish_reason=_finish(r.finish_reason))
                       for i, r in enumerate(results)]
            return p.CompletionResponse(id=ident, created=created, model=served.name, choices=choices,
                                        usage=usage(results))
        for index, handle in enumerate(handles):
            handle.future.add_done_callback(
                lambda f, index=index: loop.call_soon_threadsafe(queue.put_nowait, (index, None)))

        def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
                choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
                kind = "chat.completion.chunk"
            else:
                choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
                kind = "text_completion"
            return "data: " + json.dumps({"id": ident, "object": kind, "created": created, "model": served.name,
                                          "choices": [choice]}) + "\n\n"

        async def events() -> AsyncIterator[str]:
            remaining = len(handles)
            deadline = time.monotonic() + settings.timeout
            try:
                if chat:
                    for index in range(len(handles)):
                        yield chunk(index, "", None, first=True)
                while remaining:
                    try:
                        index, delta = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        yield "data: " + json.dumps({"error": {"message": f"timed out after {settings.timeout:g} s",
                                                               "type": "timeout"}}) + "\n\n"
                        return
                    if delta is not None:
                        yield chunk(index, delta, None)
                        continue
                    remaining -= 1
                    try:
                        result = handles[index].future.result()
                    except SoftpromptError as exc:
                        yield "data: " + json.dumps({"error": {"message": str(exc), "type": "invalid_request_error"}}) + "\n\n"
                        continue
                    metrics.generated(served.name, len(result.token_ids))
                    yield chunk(index, None, _finish(result.finish_reason))
                yield "data: [DONE]\n\n"
            finally:
                cancel_all()  # the client went away (or we are done): free the rows

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ---- OpenAI-compatible routes --------------------------------------------------------------------
    @app.post("/v1/completions", response_model=p.CompletionResponse, responses=STREAMING, tags=["openai"])
    async def completions(body: p.CompletionRequest, request: Request):
        """Text after a prompt: `prompt` fills the named prompt's template."""
        served = served_for(request, body.model, "/v1/completions")
        texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not texts:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        return await generate(request, served, texts, body, sampling(body, body.max_tokens), chat=False)

    @app.post("/v1/chat/completions", response_model=p.ChatCompletionResponse, responses=STREAMING,
              tags=["openai"])
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        """The assistant's reply. The base model takes the whole conversation in its chat template; a
        task prompt takes the last user message as its input (`{text}` of its template)."""
        served = served_for(request, body.model, "/v1/chat/completions")
        text = _chat_text(served, body.messages)
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await generate(request, served, [text], body, sampling(body, limit), chat=True)

    @app.get("/v1/models", response_model=p.ModelList, tags=["openai"])
    async def models():
        now = int(time.time())
        return p.ModelList(data=[p.ModelCard(id=name, created=now) for name in registry.names()])

    # ---- native routes -------------------------------------------------------------------------------
    @app.post("/v1/classify", response_model=p.ClassifyResponse, responses=ERRORS, tags=["native"])
    async def classify(body: p.ClassifyRequest, request: Request):
        """The label of each text (or text pair) and every label's probability."""
        served = served_for(request, body.model, "/v1/classify")
        inputs = body.input if isinstance(body.input, list) else [body.input]
        if not inputs or len(inputs) > settings.max_inputs:
            raise APIError(400, f"input takes 1 to {settings.max_inputs} texts", param="input")
        items = []
        for i, value in enumerate(inputs):
            text, text_b = (value, None) if isinstance(value, str) else (value.text, value.text_b)
            if not text.strip():
                raise APIError(400, f"input[{i}] is empty", param="input")
            try:
                items.append(served.task.prepare(Example(text, text_b, None, f"input[{i}]")))
            except SoftpromptError as exc:
                raise APIError(400, str(exc), param="input") from None
        logits = await score(request, served, items)
        data = []
        for i, value in enumerate(logits):
            pred = prediction(served, value)
            data.append(p.Classification(index=i, label=pred.label, probabilities=pred.probabilities))
        return p.ClassifyResponse(model=served.name, data=data)

    @app.post("/v1/tag", response_model=p.TagResponse, responses=ERRORS, tags=["native"])
    async def tag(body: p.TagRequest, request: Request):
        """A tag for every word of each sentence (split on white space, or given as tokens)."""
        served = served_for(request, body.model, "/v1/tag")
        if isinstance(body.input, str):
            sentences = [body.input.split()]
        else:
            sentences = [s.split() if isinstance(s, str) else list(s) for s in body.input]
        if not sentences or len(sentences) > settings.max_inputs:
            raise APIError(400, f"input takes 1 to {settings.max_inputs} sentences", param="input")
        items = []
        for i, tokens in enumerate(sentences):
            if not tokens or any(not t.strip() or any(c.isspace() for c in t) for t in tokens):
                raise APIError(400, f"input[{i}] is empty or has a token with white space", param="input")
            try:
                items.append(served.task.prepare(TokenExample(tuple(tokens), None, f"input[{i}]")))
            except SoftpromptError as exc:
                raise APIError(400, str(exc), param="input") from None
        logits = await score(request, served, items)
        data = [p.Tagging(index=i, tokens=list(tokens), tags=served.task.decode(value, item))
                for i, (tokens, value, item) in enumerate(zip(sentences, logits, items))]
        return p.TagResponse(model=served.name, data=data)

    async def score(request: Request, served: ServedPrompt, items) -> list:
        futures = []
        try:
            for item in items:
                futures.append(engine.submit_score(served.entry, item))
        except SoftpromptError as exc:
            for future in futures:
                future.cancel()
            raise user_error(exc) from None
        return await wait(request, futures, lambda: [f.cancel() for f in futures])

    @app.get("/v1/prompts", response_model=p.PromptList, tags=["native"])
    async def prompts():
        """Every loaded prompt: method, task kind, labels, size and the metrics it was saved with."""
        return p.PromptList(base_model=registry.base.name, data=[p.PromptInfo(**s.describe()) for s in registry.all()])

    # ---- admin -------------------------------------------------------------------------------------
    def admin(request: Request) -> None:
        if settings.admin_token is None:
            raise APIError(404, "admin routes are off: start the server with an admin token to use them",
                           "not_found_error")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.admin_token}".encode()):
            raise APIError(401, "admin routes need 'Authorization: Bearer <token>'", "authentication_error")

    @app.post("/admin/prompts", response_model=p.PromptInfo, responses=ERRORS, tags=["admin"],
              dependencies=[Depends(admin)])
    async def load(body: p.LoadPromptRequest, request: Request):
        """Load a prompt (a file on the server, or a library reference) under a name; a file that fails
        its checks is refused and the prompts already served are untouched."""
        if (body.path is None) == (body.library is None):
            raise APIError(400, "give exactly one of path and library", param="path")
        request.state.prompt = None
        try:
            if body.path is not None:
                served = await asyncio.to_thread(registry.add_file, body.name, body.path)
            else:
                served = await asyncio.to_thread(registry.add_library, body.library, body.name)
        except SoftpromptError as exc:
            raise APIError(400, str(exc), param="path" if body.path else "library") from None
        metrics.prompts_changed()
        return p.PromptInfo(**served.describe())

    @app.delete("/admin/prompts/{name}", responses=ERRORS, tags=["admin"], dependencies=[Depends(admin)])
    async def unload(name: str):
        """Stop serving a prompt (requests already running finish with it)."""
        try:
            registry.remove(name)
        except PromptNotFound as exc:
            raise APIError(404, str(exc), "not_found_error", "name", "model_not_found") from None
        metrics.prompts_changed()
        return {"deleted": name}

    # ---- operations --------------------------------------------------------------------------------
    @app.get("/health", response_model=p.Health, tags=["operations"])
    async def health():
        return p.Health(status="draining" if state["draining"] else "ok", base_model=registry.base.name,
                        prompts=len(registry.names()), queue_depth=engine.queue_depth(), running_rows=engine.running())

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("softprompt.serve").joinpath("page.html").read_text(encoding="utf-8"))

    return app


class _Observe:
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


def _finish(reason: str) -> str | None:
    return {"stop": "stop", "length": "length"}.get(reason, "stop")


def _chat_text(served: ServedPrompt, messages: list[p.ChatMessage]) -> str:
    """The text a chat request gives the prompt's template.

    The base model served under its own name takes its input as written: the conversation in the
    tokenizer's chat template with the assistant's turn opened (role lines when it has none). A task
    prompt was trained on one input filling its template (wrapped in the chat template by the task
    itself when it says task.chat), so it takes the last user message; the chat template around it
    would be text it never saw in training."""
    if not served.is_base:
        users = [m.content for m in messages if m.role == "user"]
        if not users:
            raise APIError(400, f"prompt {served.name!r} takes the last user message as its input; the messages "
                                "have no user message", param="messages")
        return users[-1]
    tokenizer = served.task.tokenizer
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"


def _version() -> str:
    from .. import __version__

    return __version__
