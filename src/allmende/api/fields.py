"""Field checks shared by the translated APIs (`/v1/responses`, `/v1/messages`): both walk
nested items whose unknown fields and wrongly typed strings must be refused with the path of
the offending field as OpenAI's `param`."""

from __future__ import annotations

from typing import Any

from allmende.api.protocol import InvalidParameter


def known_fields(item: dict[str, Any], known: set[str], where: str) -> None:
    """Refuse a field of `item` (found at `where`) that is not in `known`."""
    for field in item:
        if field not in known:
            raise InvalidParameter(f"'{where}.{field}' is not a field here", f"{where}.{field}")


def string_field(item: dict[str, Any], field: str, where: str) -> str:
    """`item[field]`, which must be a string."""
    value = item.get(field)
    if not isinstance(value, str):
        raise InvalidParameter(f"'{where}.{field}' must be a string", f"{where}.{field}")
    return value
