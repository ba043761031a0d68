"""Allmende: an open network that pools idle GPUs and CPUs into an inference service."""

import contextlib
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
