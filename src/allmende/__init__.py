"""Allmende: an open network that pools idle GPUs and CPUs into an inference service."""

import contextlib
import os
import sys

__version__ = "0.1.0"

# The deepest Python recursion a node allows. py_ecc (imported by eth-account) raises the
# interpreter's limit to 100,000 on import, deeper than the C stack holds: a request body of
# 100,000 `[` then overflowed it inside json.loads and killed the process with a segfault
# instead of a RecursionError. py_ecc is imported first here, so that whatever imports it
# later finds it loaded, and the limit is put back to one the stack holds (10,000 frames:
# json.loads raises RecursionError, which every node answers as a 400, on any thread).
MAX_RECURSION = 10_000
with contextlib.suppress(ImportError):  # the GPU calibration harness runs without the chain libraries
    import py_ecc  # noqa: F401  (only for its side effect on the recursion limit)
sys.setrecursionlimit(MAX_RECURSION)

# OpenMP threads (torch's runtime, which llama.cpp's ggml shares once torch has loaded it) sleep
# at a barrier instead of spinning, unless the environment sets a policy. libgomp reads this once,
# when it loads (with torch), so it is set here, before anything imports torch. Its default spins
# 300,000 times at every barrier and after every parallel region; ggml's threads meet at a
# barrier after each operation of the graph, hundreds per token, and on cores other processes
# share (the gateway, the provider's event loop, other nodes) a spinning thread burns the time
# slice that the thread it waits for needs. Measured on this 2-core machine at load 7-11
# (SmolLM2's F16 copy in llama.cpp, 2 threads, a bare llama_decode loop): one sequence 139-327 ms
# per token spinning against 24-44 passive, 16 sequences 56-109 against 6.2-8.9 ms per token;
# through `allmende up` with 1 and 16 streaming clients, 2 and 12 tokens/s against 42 and 131.
# (GOMP_SPINCOUNT=1000, a short spin, stayed 2-3 times slower than passive.)
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
