"""The error catalog in core/errors.py's docstring is the truth: every row names a class
with that code and status, every error class of the package is in it, codes are stable
strings, and the one error_response answers with them."""

from __future__ import annotations

import importlib
import inspect
import json
import re

import pytest

import allmende.core.errors as catalog
from allmende.api.wire import error_response
from allmende.core.errors import AllmendeError
from tests.architecture.test_imports import MODULES

ROW = re.compile(r"^\s*[│├└─ ]*(\w+)(?: \(\w+\))?\s+(\S+)\s+(\S+)\s*(\S+)?\s*$")


def rows() -> list[tuple[str, str, str, str]]:
    found = []
    for line in (catalog.__doc__ or "").splitlines():
        match = ROW.match(line)
        if match is None or not match.group(1)[0].isupper():
            continue
        name, code, status, where = match.groups()
        if status.isdigit() or status == "(its)":
            found.append((name, code, status, where or "core.errors"))
    return found


def resolve(name: str, where: str) -> type:
    return getattr(importlib.import_module(f"allmende.{where}"), name)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "code", "status", "where"), rows(), ids=[r[0] for r in rows()])
def test_each_row_is_what_the_class_says(name: str, code: str, status: str, where: str) -> None:
    cls = resolve(name, where)
    assert issubclass(cls, AllmendeError)
    if status != "(its)":  # ProviderReplyError carries the provider's own code and status
        assert (cls.code, cls.status) == (code, int(status))


def test_every_error_class_is_in_the_catalog() -> None:
    listed = {name for name, *_ in rows()}
    missing = []
    for module in MODULES:
        if module.startswith(("allmende.testing", "allmende.cli", "allmende.__main__", "allmende.gateway")):
            continue  # test helpers, the CLI's own, and OpenAI's codes at the gateway
        for name, cls in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            if issubclass(cls, AllmendeError) and cls.__module__ == module and name not in listed:
                missing.append(f"{module}.{name}")
    assert missing == []


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (catalog.BodyTooSlow("slow"), 408, "body_too_slow"),
        (catalog.BodyTooLarge("big"), 413, "body_too_large"),
        (catalog.InvalidSignature("forged"), 400, "invalid_signature"),
        (RuntimeError("secret detail"), 500, "internal_error"),
    ],
    ids=["slow-body", "large-body", "bad-signature", "a-bug"],
)
def test_error_response_answers_with_the_catalog(exc: Exception, status: int, code: str) -> None:
    response = error_response(exc)
    body = json.loads(bytes(response.body))

    assert response.status_code == status and body["error"]["code"] == code
    assert "secret detail" not in body["error"]["message"]  # a bug leaks no internals
