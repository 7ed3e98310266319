"""Errors in OpenAI's shape: APIError, the status and code each user error gets (by its type), and the
app's exception handlers, which give every non-2xx answer the same shape: routes' own errors, bodies
that fail validation or are not JSON at all (not UTF-8, nested too deeply, a form), and what Starlette
answers by itself (an unknown route, a method a route does not take)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..engine import EngineBusy, EngineClosed
from ..errors import SoftpromptError
from ..tasks.generation import InputTooLong
from .registry import PathRefused, PromptNotFound


class APIError(Exception):
    """An error to send in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


# (status, OpenAI error type, code) of each kind of user error; the first class that matches wins, and
# any other SoftpromptError is the request's fault: 400.
_BY_TYPE = (
    (EngineBusy, 429, "rate_limit_error", "queue_full"),
    (EngineClosed, 503, "server_error", "shutting_down"),
    (PromptNotFound, 404, "not_found_error", "model_not_found"),
    (PathRefused, 403, "permission_error", "path_not_allowed"),
    (InputTooLong, 400, "invalid_request_error", "context_length_exceeded"),
)


def refuse(exc: SoftpromptError, param: str | None = None, *, retry_after: int = 1, where: str = "") -> APIError:
    """The APIError a user error becomes; where prefixes the message (which input it was)."""
    status, type, code = next(((s, t, c) for cls, s, t, c in _BY_TYPE if isinstance(exc, cls)),
                              (400, "invalid_request_error", None))
    message = f"{where}: {exc}" if where else str(exc)
    if isinstance(exc, EngineBusy):
        return APIError(status, f"{message}; retry shortly", type, code=code, headers={"Retry-After": str(retry_after)})
    if isinstance(exc, EngineClosed):
        return APIError(status, message, type, code=code)
    return APIError(status, message, type, param, code)


def error_response(status: int, message: str, type: str, param=None, code=None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or {})


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        return error_response(400, f"the body is not valid JSON ({reason})", "invalid_request_error",
                              code="invalid_json")
    if tuple(first.get("loc", ())) == ("body",) and not _sent_json(request):
        # FastAPI validated the raw bytes of a form or text body against the model: say what is wrong
        return error_response(400, NOT_JSON, "invalid_request_error", code="invalid_content_type")
    message = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                        for e in errors[:5])
    return error_response(422, message, "invalid_request_error", where)


NOT_JSON = "the body must be a JSON object sent with 'Content-Type: application/json'"


def _sent_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    """What Starlette and FastAPI raise themselves: no route (404), a method the route does not take
    (405, with Allow), a body they could not parse (400, whose cause says why)."""
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return error_response(404, f"unknown route: {request.method} {request.url.path}", "invalid_request_error",
                              code="unknown_route", headers=headers)
    if exc.status_code == 405:
        allowed = headers.get("Allow") or headers.get("allow") or ""
        return error_response(405, f"{request.method} is not allowed on {request.url.path}"
                                   + (f" (allowed: {allowed})" if allowed else ""), "invalid_request_error",
                              code="method_not_allowed", headers=headers)
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read the body
        return error_response(400, _unreadable(exc.__cause__), "invalid_request_error", code="invalid_json")
    type = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return error_response(exc.status_code, str(exc.detail), type, headers=headers)


def _unreadable(cause: BaseException) -> str:
    """Why a body could not be parsed, in words that quote none of it."""
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not valid UTF-8 (JSON bodies are UTF-8 text)"
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply to read"
    return f"the body could not be read as JSON ({type(cause).__name__})"


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log = logging.getLogger("softprompt.serve")
    if isinstance(exc, RecursionError):  # a nested input too deep for some reader past the JSON parser
        log.warning("recursion limit on %s, answered 400", request.url.path, exc_info=exc)  # or a bug: keep it
        return error_response(400, _unreadable(exc), "invalid_request_error", code="invalid_json")
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


def add_handlers(app: FastAPI) -> None:
    """Every error the app answers, in OpenAI's shape: APIError as it says, a body that fails validation
    422 (400 when it is not JSON), Starlette's own errors with their status, anything unexpected 500 (logged)."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
