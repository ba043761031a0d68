"""Errors the provider API answers with: a stable code, an HTTP status, a clear message.

Every error leaves in one place (`app.error_response`) as
`{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

from allmende.core.errors import AllmendeError


class ProviderError(AllmendeError):
    status = 400
    code = "bad_request"


class BadRequest(ProviderError):
    pass


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
