"""What paying a provider can fail with, beyond the chain's own errors."""

from __future__ import annotations

from allmende.core.errors import AllmendeError


class InsufficientFunds(AllmendeError):
    """The payer cannot fund a channel or a budget for the request (at the gateway: OpenAI's
    402 insufficient_quota)."""

    code = "insufficient_quota"
    status = 402
