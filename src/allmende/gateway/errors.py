"""Gateway errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every error leaves through `openai_error`; the status says what the client should do.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse

from allmende.api.client import Answer
from allmende.api.protocol import InvalidParameter
from allmende.api.wire import status_and_code
from allmende.core.errors import AllmendeError
from allmende.payer.errors import InsufficientFunds as InsufficientFunds  # a 402 insufficient_quota here

log = logging.getLogger("allmende.gateway")


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


class AmbiguousModel(GatewayError):
    status, type, code = 409, "invalid_request_error", "model_name_ambiguous"


class RouteNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "unknown_url"


class MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, message: str, param: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, param)
        self.retry_after = retry_after  # seconds, sent as the Retry-After header


class NoProvider(GatewayError):
    status, type, code = 503, "service_unavailable", "no_provider_available"

    def __init__(self, message: str, rejected: Answer | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected  # the last answer refused for its receipt: evidence for an audit


class BodyTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


def error_body(exc: GatewayError) -> dict[str, Any]:
    return {"error": {"message": str(exc), "type": exc.type, "param": exc.param, "code": exc.code}}


# OpenAI's error type for a status, for errors from the catalog that are not GatewayErrors
OPENAI_TYPES = {401: "authentication_error", 402: "insufficient_quota", 429: "rate_limit_error"}


def openai_error(exc: Exception) -> JSONResponse:
    """The catalog's status and code (core/errors.py) in OpenAI's shape; a 5xx that is not
    ours says only that serving failed (no internals leak)."""
    if not isinstance(exc, GatewayError):
        status, code = status_and_code(exc)
        if status >= 500:
            log.error("answered %d %s: %s", status, code, exc, exc_info=exc)
            if isinstance(exc, AllmendeError):
                exc = NoProvider(f"temporarily unable to serve: {exc}")
            else:
                exc = NoProvider("internal error while serving the request")
        else:
            wrapped = GatewayError(str(exc), exc.param if isinstance(exc, InvalidParameter) else None)
            wrapped.status, wrapped.code = status, code
            wrapped.type = OPENAI_TYPES.get(status, "invalid_request_error")
            exc = wrapped
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)
