"""Errors as types with an HTTP status, rendered in the shape of the route's API:
TGI's `{"error", "error_type"}` outside /v1, OpenAI's error object under /v1."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# TGI error_type → OpenAI error type
_OPENAI_TYPES = {
    "validation": "invalid_request_error",
    "overloaded": "rate_limit_error",
    "generation": "server_error",
    "unauthorized": "authentication_error",
    "forbidden": "permission_error",
    "payload_too_large": "invalid_request_error",
    "not_found": "invalid_request_error",
    "timeout": "timeout_error",
    "unavailable": "server_error",
    "upstream": "server_error",
}


class APIError(Exception):
    status = 500
    error_type = "generation"

    def __init__(self, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class ValidationError(APIError):
    status, error_type = 422, "validation"


def refuse_unsupported(set_values: dict[str, bool]) -> None:
    """A 422 naming the first parameter that is set (True) although this server does not
    implement it: refused, never accepted and ignored."""
    for name, is_set in set_values.items():
        if is_set:
            raise ValidationError(f"`{name}` is not supported by this server", param=name)


class BadRequestError(APIError):
    """A request that is malformed below the body (e.g. its Content-Length)."""
    status, error_type = 400, "validation"


class OverloadedError(APIError):
    status, error_type = 429, "overloaded"

    def __init__(self, message: str = "server is at its concurrent request limit, retry later",
                 retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class GenerationError(APIError):
    status, error_type = 424, "generation"


class UnauthorizedError(APIError):
    status, error_type = 401, "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(APIError):
    status, error_type = 403, "forbidden"

    def __init__(self, message: str = "client address not allowed") -> None:
        super().__init__(message)


class PayloadTooLargeError(APIError):
    status, error_type = 413, "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over the limit of {limit} bytes")


class NotFoundError(APIError):
    status, error_type = 404, "not_found"


class RequestTimeoutError(APIError):
    status, error_type = 504, "timeout"


class UnavailableError(APIError):
    status, error_type = 503, "unavailable"

    def __init__(self, message: str = "model is loading") -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class BadGatewayError(APIError):
    """The gateway's upstream engine broke off or answered nonsense (`modelserver
    gateway`)."""
    status, error_type = 502, "upstream"


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def error_body(path: str, err: APIError) -> dict[str, Any]:
    if is_openai_path(path):
        return {"error": {
            "message": err.message, "type": _OPENAI_TYPES.get(err.error_type, "server_error"),
            "param": err.param, "code": err.error_type,
        }}
    return {"error": err.message, "error_type": err.error_type}


def error_response(path: str, err: APIError) -> JSONResponse:
    """The one renderer of errors: exception handlers and the access middleware use it
    (a JSONResponse is an ASGI app, so the middleware sends it without FastAPI)."""
    return JSONResponse(error_body(path, err), status_code=err.status, headers=err.headers)


def from_http_exception(exc: StarletteHTTPException) -> APIError:
    """Starlette's and FastAPI's own errors (404 route, 405 method…) as a typed error."""
    err = APIError(str(exc.detail), headers=dict(getattr(exc, "headers", None) or {}))
    err.status = exc.status_code
    err.error_type = {404: "not_found", 405: "validation", 413: "payload_too_large"}.get(
        exc.status_code, "validation" if exc.status_code < 500 else "generation")
    return err


def _loc_name(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install(app: Any) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            msg, param = f"malformed JSON body: {first.get('msg', '')}", None
        elif first.get("type") == "extra_forbidden":
            param = _loc_name(first.get("loc", ()))
            msg = f"unknown parameter `{param}`: this server does not support it"
        else:
            param = _loc_name(first.get("loc", ()))
            msg = f"invalid parameter `{param}`: {first.get('msg', 'invalid value')}"
        return error_response(request.url.path, ValidationError(msg, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, from_http_exception(exc))
