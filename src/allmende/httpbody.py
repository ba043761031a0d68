"""Reading a request body within a size and a time limit — shared by the gateway and the
provider, which each turn the two failures into their own error shape."""

from __future__ import annotations

import asyncio

from starlette.requests import Request


class BodyTooLargeError(Exception):
    pass


class BodyTooSlowError(Exception):
    pass


async def read_limited(request: Request, max_body: int, timeout: float) -> bytes:
    """The raw body; BodyTooLargeError beyond `max_body` bytes, BodyTooSlowError after `timeout` s."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_body):
        raise BodyTooLargeError(f"request body larger than {max_body} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise BodyTooLargeError(f"request body larger than {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise BodyTooSlowError(f"request body not received within {timeout:.0f}s") from None
