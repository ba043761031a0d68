"""The real chat model, loaded once per test session: its first load converts the GGUF
file (about a minute on a clean machine) into the cache every later load reuses."""

from __future__ import annotations

import os

import pytest

from allmende.engine import DEFAULT_CHAT_MODEL, Engine, load_engine


@pytest.fixture(scope="session")
def smollm2() -> Engine:
    return load_engine(DEFAULT_CHAT_MODEL)


# The llama.cpp engine's tests need llama-cpp-python, which `make install` does not build
# (source only; compiling llama.cpp takes 20-40 minutes on 2 cores): `make test-llamacpp`.
collect_ignore = [] if os.environ.get("ALLMENDE_LLAMACPP_TESTS") == "1" else ["test_llamacpp_native.py"]
