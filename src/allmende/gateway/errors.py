"""Gateway errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every error leaves through `openai_error`; the status says what the client should do.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from allmende.core.errors import AllmendeError


class GatewayError(AllmendeError):
    status = 400
    type = "invalid_request_error"
    code: str = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidRequest(GatewayError):
    pass


class Unauthorized(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class InsufficientFunds(GatewayError):
    status, type, code = 402, "insufficient_quota", "insufficient_quota"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class NoProvider(GatewayError):
    status, type, code = 503, "service_unavailable", "no_provider_available"


class BodyTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


def error_body(exc: GatewayError) -> dict[str, Any]:
    return {"error": {"message": str(exc), "type": exc.type, "param": exc.param, "code": exc.code}}


def openai_error(exc: Exception) -> JSONResponse:
    if not isinstance(exc, GatewayError):
        if isinstance(exc, AllmendeError) and isinstance(exc, ValueError):
            exc = InvalidRequest(str(exc))
        elif isinstance(exc, AllmendeError):
            exc = NoProvider(f"temporarily unable to serve: {exc}")
        else:
            exc = NoProvider("internal error while serving the request")
    return JSONResponse(error_body(exc), status_code=exc.status)
