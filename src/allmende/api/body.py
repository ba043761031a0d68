"""Reading a request body within a size and a time limit — shared by the gateway, the
provider, the vault and the validator (BodyTooLarge → 413, BodyTooSlow → 408)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from allmende.core.errors import BodyTooLarge, BodyTooSlow


async def read_limited(request: Request, max_body: int, timeout: float) -> bytes:
    """The raw body; BodyTooLargeError beyond `max_body` bytes, BodyTooSlowError after `timeout` s."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_body):
        raise BodyTooLarge(f"request body larger than {max_body} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise BodyTooLarge(f"request body larger than {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        async with asyncio.timeout(timeout):  # in this task: no task made per request, as wait_for did
            return await read()
    except TimeoutError:
        raise BodyTooSlow(f"request body not received within {timeout:.0f}s") from None
