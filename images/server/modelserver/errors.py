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
    "incomplete_generation": "server_error",
    "unauthorized": "authentication_error",
    "forbidden": "permission_error",
    "payload_too_large": "invalid_request_error",
    "not_found": "invalid_request_error",
    "timeout": "timeout_error",
    "unavailable": "server_error",
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


class OverloadedError(APIError):
    status, error_type = 429, "overloaded"

    def __init__(self, message: str = "server is at its concurrent request limit, retry later",
                 retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class GenerationError(APIError):
    status, error_type = 424, "generation"


class IncompleteGenerationError(APIError):
    status, error_type = 500, "incomplete_generation"


class UnauthorizedError(APIError):
    status, error_type = 401, "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(APIError):
    status, error_type = 403, "forbidden"


class PayloadTooLargeError(APIError):
    status, error_type = 413, "payload_too_large"


class NotFoundError(APIError):
    status, error_type = 404, "not_found"


class TimeoutError_(APIError):
    status, error_type = 504, "timeout"


class UnavailableError(APIError):
    status, error_type = 503, "unavailable"

    def __init__(self, message: str = "model is loading") -> None:
        super().__init__(message, headers={"Retry-After": "5"})


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def error_body(path: str, status: int, error_type: str, message: str,
               param: str | None = None) -> dict[str, Any]:
    if is_openai_path(path):
        return {"error": {
            "message": message, "type": _OPENAI_TYPES.get(error_type, "server_error"),
            "param": param, "code": error_type,
        }}
    return {"error": message, "error_type": error_type}


def stream_error_payload(path: str, err: APIError) -> dict[str, Any]:
    return error_body(path, err.status, err.error_type, err.message, err.param)


def error_response(path: str, err: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(path, err.status, err.error_type, err.message, err.param),
        status_code=err.status, headers=err.headers,
    )


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
        else:
            param = _loc_name(first.get("loc", ()))
            msg = f"invalid parameter `{param}`: {first.get('msg', 'invalid value')}"
        return error_response(request.url.path, ValidationError(msg, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "validation", 413: "payload_too_large"}.get(
            exc.status_code, "validation" if exc.status_code < 500 else "generation")
        return JSONResponse(
            error_body(request.url.path, exc.status_code, kind, str(exc.detail)),
            status_code=exc.status_code, headers=getattr(exc, "headers", None),
        )
