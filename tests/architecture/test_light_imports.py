"""Every `allmende` command starts a Python process, and the test suite starts hundreds of
them (CLI calls, gateways, `up` supervisors). torch and transformers take seconds of CPU to
import; only the processes that run a model (a provider's engines, a stage, a validator's
checker, a vault's training) may load them. A stage's routes once pulled both into every CLI
process (`provider.app` -> `provider.stage_app` -> torch, `engine.stages` -> transformers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "llama_cpp")


@pytest.mark.parametrize("module", ["allmende.cli", "allmende.gateway.app", "allmende.chain"])
def test_the_command_line_and_the_gateway_load_no_model_library(module: str) -> None:
    probe = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} loads {result.stdout.strip()}"
