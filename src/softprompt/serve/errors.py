"""Errors in OpenAI's shape: APIError, the status and code each user error gets (by its type), and the
app's exception handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..engine import EngineBusy, EngineClosed
from ..errors import SoftpromptError
from ..tasks.generation import InputTooLong
from .registry import PromptNotFound


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
        return error_response(400, f"the body is not valid JSON ({first.get('msg', '')})", "invalid_request_error")
    message = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                        for e in errors[:5])
    return error_response(422, message, "invalid_request_error", where)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logging.getLogger("softprompt.serve").exception("unexpected error on %s", request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


def add_handlers(app: FastAPI) -> None:
    """Every error the app answers, in OpenAI's shape: APIError as it says, a body that fails validation
    422 (400 when it is not JSON), anything unexpected 500 (logged)."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
