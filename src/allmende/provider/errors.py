"""Errors the provider API answers with: a stable code, an HTTP status, a clear message.

Every error leaves in one place (`app.error_response`) as
`{"error": {"code": ..., "message": ...}}`, with `param` where the error names the request
parameter at fault.
"""

from __future__ import annotations

from allmende.api.protocol import InvalidParameter
from allmende.core.errors import AllmendeError, InvalidInput
from allmende.engine.base import EngineError

GENERIC_CODES = ("invalid_input", "engine_error")  # a cause with one of these leaves as `bad_request`


class ProviderError(AllmendeError):
    status = 400
    code = "bad_request"


class BadRequest(ProviderError):
    """A request the provider will not serve. `param` names the request parameter at fault
    (the gateway passes it on as OpenAI's `param`); `code` replaces the generic one where
    the cause has its own (`context_length_exceeded`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code

    @classmethod
    def of(cls, exc: InvalidInput) -> BadRequest:
        """The refusal of a request the protocol or the engine found invalid: its message, the
        parameter it names and its code, unless that is a generic one."""
        param = exc.param if isinstance(exc, InvalidParameter | EngineError) else None
        return cls(str(exc), param, None if exc.code in GENERIC_CODES else exc.code)


class UnknownModelError(ProviderError):
    status = 404
    code = "unknown_model"


class ReplayedRequest(ProviderError):
    status = 409
    code = "replayed_request"


class PayerNotAuthenticated(ProviderError):
    """The request is not signed by the payer of the channel it wants to spend."""

    status = 401
    code = "payer_not_authenticated"


class BadVoucher(ProviderError):
    status = 402
    code = "bad_voucher"


class PaymentRequired(ProviderError):
    status = 402
    code = "payment_required"


class Overloaded(ProviderError):
    status = 429
    code = "overloaded"


class TooLarge(ProviderError):
    status = 413
    code = "body_too_large"
