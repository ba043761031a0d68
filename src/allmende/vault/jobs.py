"""The checks every vault job body goes through (the tabular templates in vault/service.py and
the LoRA rounds in vault/lora_service.py): fields, identifiers, ε, finiteness, and that the
body is the one the grantee signed."""

from __future__ import annotations

import json
import math
from typing import Any

from allmende.core.vault_requests import VaultRequest
from allmende.vault.errors import BadJob, VaultRequestRefused

MIN_EPSILON = 0.001  # the least ε a job may name (smaller ones round to no charge and to unbounded noise)


def canonical(result: dict[str, Any]) -> bytes:
    return json.dumps(result, sort_keys=True, separators=(",", ":")).encode()


def parse_epsilon(value: object, why: str) -> float:
    if value is None:
        raise BadJob(f"send 'epsilon' (the privacy cost this job may spend){': ' + why if why else ''}")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not MIN_EPSILON <= value <= 100:
        raise BadJob(f"'epsilon' must be a number in [{MIN_EPSILON}, 100]")
    return float(value)


def only_fields(body: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """Refuse fields a request cannot use: an ignored field is one a requester thinks was honoured."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise BadJob(f"{what} takes no field {shown} (it takes {', '.join(sorted(allowed))})")


def matches_request(request: VaultRequest, dataset_id: bytes, grant_id: int, run_id: int = 0) -> None:
    """The body's dataset, grant and run are those the grantee signed in the request."""
    if (request.dataset_id, request.grant_id, request.run_id) != (dataset_id, grant_id, run_id):
        raise VaultRequestRefused("the body's dataset, grant or run differ from those the request was signed for")


def job_header(body: dict[str, Any], request: VaultRequest | None) -> tuple[bytes, bytes, int]:
    """A job's dataset, job id and grant, each checked (BadJob names the first that is not
    valid), and the same as the grantee's signed request's where one came with it."""
    dataset_id = parse_bytes32(body.get("dataset_id"), "dataset_id")
    job_id = parse_bytes32(body.get("job_id"), "job_id")
    grant_id = body.get("grant_id")
    if not isinstance(grant_id, int) or isinstance(grant_id, bool) or grant_id <= 0:
        raise BadJob("'grant_id' must be a positive integer")
    if request is not None:
        matches_request(request, dataset_id, grant_id)
    return dataset_id, job_id, grant_id


def check_finite(value: object) -> None:
    """Raise BadJob if any number in a result is NaN or infinite (nothing is logged or released)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BadJob("the result is not finite (check the request's numbers); nothing was logged or charged")
    if isinstance(value, dict):
        for item in value.values():
            check_finite(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite(item)


def parse_bytes32(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadJob(f"'{name}' must be a 0x-prefixed 32-byte hex string")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise BadJob(f"'{name}' is not hex") from None
    if len(raw) != 32:
        raise BadJob(f"'{name}' must be 32 bytes")
    return raw


def round_check_fields(body: dict[str, Any]) -> tuple[int, int, int, float, float, bytes]:
    """A signed round check's grant, run, steps, noise, clipping norm and dataset (the tabular
    and the LoRA round checks take the same ones); BadJob names the first that is not valid."""
    grant, run, steps = body.get("grant_id"), body.get("run_id"), body.get("steps")
    for name, value in (("grant_id", grant), ("run_id", run), ("steps", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadJob(f"'{name}' must be a non-negative integer")
    noise, clip = body.get("noise"), body.get("clipping_norm")
    for name, value in (("noise", noise), ("clipping_norm", clip)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise BadJob(f"'{name}' must be a finite number")
    assert isinstance(grant, int) and isinstance(run, int) and isinstance(steps, int)
    assert isinstance(noise, (int, float)) and isinstance(clip, (int, float))
    return grant, run, steps, noise, clip, parse_bytes32(body.get("dataset_id"), "dataset_id")  # numbers as sent
