"""The test suite. Imported before any test module or conftest, so before torch or llama.cpp
load an OpenMP runtime: the suite runs OpenMP threads with OMP_WAIT_POLICY=passive unless the
environment sets a policy. libgomp reads the policy once, when it is loaded; its default spins
300,000 times at every barrier (ggml meets at one after each graph operation, torch after each
parallel operation), and `make test` keeps two cores busy with three workers and their nodes
(load 8-18), where a spinning thread burns the slice of the thread it waits for. The node
processes the tests start inherit it. Measured alone on this 2-core machine at load 9-12
(CPU of the whole process tree): tests/engine/test_llamacpp_native.py 62.0 s of CPU (198 s
wall) with the default policy, 45.0 s (72 s wall) passive. Nodes outside the tests keep
libgomp's default (see allmende.engine.llamacpp)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
