"""The test suite. Imported before any test module or conftest, so before torch or llama.cpp
load an OpenMP runtime: the suite's OpenMP threads spin 1,000 turns (about 25 us) at a barrier
before they sleep, not libgomp's 300,000 (about 7.5 ms), unless the environment sets a policy
or a spin count. libgomp reads them once, when it is loaded; ggml meets at a barrier after each
graph operation, torch after each parallel operation, and `make test` keeps two cores busy with
three workers and their nodes (load 8-18), where a spinning thread burns the slice of the thread
it waits for. The node processes the tests start inherit it. Measured on this 2-core machine
under load: tests/engine/test_llamacpp_native.py 62.0 s of CPU at libgomp's default, 45.0 s
passive; tests/stages/test_stage_engine.py 72.4 s at the default, 57.5-61.2 passive, 56.4-59.1
at 1,000 turns; the llama.cpp engine with 16 requests on the F16 copy at load 5-11, 22-39 ms of
CPU per token at the default, 4.7-5.6 at 1,000 turns. Nodes outside the tests keep libgomp's
default: with the machine to itself, the short spin made the gateway path at one client slower
(torch's threads asleep between a request's operations; see the README's figures)."""

import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
