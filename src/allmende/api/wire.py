"""How errors leave a node's HTTP API: the one `error_response` the provider, the vault and
the validator use (the gateway renders the same status and code in OpenAI's shape).

`{"error": {"code": ..., "message": ...}}` (and `param` where an error names the request
parameter at fault) with the status from the error catalog
(core/errors.py). Anything that is not an AllmendeError is a bug: a 500 whose message
says only "internal error" (no internals leak), logged with its traceback, as is every
other 5xx.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from allmende.core.errors import AllmendeError

log = logging.getLogger("allmende.api.wire")


def status_and_code(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, AllmendeError):
        return exc.status, exc.code
    return 500, "internal_error"


def error_response(exc: BaseException, logger: logging.Logger | None = None) -> JSONResponse:
    status, code = status_and_code(exc)
    message = str(exc) if isinstance(exc, AllmendeError) else "internal error"
    if status >= 500:
        (logger or log).error("answered %d %s: %s", status, code, exc, exc_info=exc)
    error = {"code": code, "message": message}
    param = getattr(exc, "param", None)  # the request parameter at fault (InvalidParameter's), as OpenAI names it
    if isinstance(exc, AllmendeError) and isinstance(param, str):
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status)
