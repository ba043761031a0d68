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

# How long an OpenMP thread spins at a barrier before it sleeps: libgomp's default is 300,000
# turns (about 7.5 ms on this machine's cores, 25 ns a turn), at every barrier and after every
# parallel region. ggml's threads (llama.cpp shares torch's libgomp) meet at a barrier after
# each operation of a graph: when the other thread arrives within microseconds, as on idle
# cores, a short spin catches it as well as a long one; when the kernel has parked it (the
# node's own HTTP path, the gateway and the clients want the same cores), the waiter burns up
# to 7.5 ms of a core the parked thread needs. 1,000 turns (25 us) covers the first case and
# bounds the second. (The first is reasoning: the machine was never idle while this was
# measured.) Measured on this 2-core machine at load 5-11, the llama.cpp engine in process, 16
# requests at once on the F16 copy, one process per setting, interleaved, ms per decoded token
# wall / process CPU: libgomp's default 40-97 / 22-39 (5 runs), 10,000 turns 52-96 / 18-19,
# 3,000 15-16 / 8.5-8.7, 2,000 8.3-11.5 / 6.6-7.0, 1,000 6.7-9.7 / 4.7-5.6. Sleeping at once
# (OMP_WAIT_POLICY=passive) was tried and taken back: on idle cores it made llama.cpp 1.2-3x
# slower (a futex wake at every barrier). libgomp reads these when it loads (with torch), so
# they are set here, before anything imports torch; a policy or spin count the environment
# sets is kept, and OPENMP_DEFAULTS says what was set here.
GOMP_SPINS = "1000"
OPENMP_DEFAULTS: dict[str, str] = {}
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    OPENMP_DEFAULTS["GOMP_SPINCOUNT"] = os.environ["GOMP_SPINCOUNT"] = GOMP_SPINS
