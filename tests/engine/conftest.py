"""The real chat model, loaded once per test session: its first load converts the GGUF
file (about a minute on a clean machine) into the cache every later load reuses."""

from __future__ import annotations

import pytest

from allmende.engine import DEFAULT_CHAT_MODEL, Engine, load_engine


@pytest.fixture(scope="session")
def smollm2() -> Engine:
    return load_engine(DEFAULT_CHAT_MODEL)
