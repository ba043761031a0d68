#!/usr/bin/env bash
# The GPU rows of the benchmarks, on a machine with CUDA, torch and transformers (but perhaps
# none of the chain libraries: bench/verify_gpu.py stands in for them). Writes into $1:
#   verify_gpu.json   completions generated on the GPU (check them on a CPU with
#                     `python bench/verify_gpu.py --check FILE`), plus the harness run there
#   engine.json       bench/engine.py on allmende:tiny on the GPU
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUTDIR}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi -L
python3 bench/verify_gpu.py --generate "$out" --questions "${QUESTIONS:-16}" --harness 2>&1 | grep -v "Loading weights"
timeout "${ENGINE_TIMEOUT:-150}" python3 - "$out" <<'PY' 2>&1 | grep -v "Loading weights"
import runpy, sys
sys.path.insert(0, "bench")
import verify_gpu
verify_gpu.stub_missing_eth()
out = sys.argv[1]
sys.argv = ["engine.py", "--models", "allmende:tiny", "--json"]
import contextlib, io
buffer = io.StringIO()
with contextlib.redirect_stdout(buffer):
    runpy.run_path("bench/engine.py", run_name="__main__")
open(f"{out}/engine.json", "w").write(buffer.getvalue())
print(buffer.getvalue()[-2000:])
PY
# validation ÷ generation on that machine's (quiet) CPU, fp32
timeout 200 python3 - "$out" <<'PY' 2>&1 | grep -v "Loading weights"
import contextlib, io, runpy, sys
sys.path.insert(0, "bench")
import verify_gpu
verify_gpu.stub_missing_eth()
import torch
torch.cuda.is_available = lambda: False  # CPU rows only
out = sys.argv[1]
sys.argv = ["verify.py", "--no-attacks", "--questions", "4", "--json"]
buffer = io.StringIO()
with contextlib.redirect_stdout(buffer):
    runpy.run_path("bench/verify.py", run_name="__main__")
open(f"{out}/verify_cpu.json", "w").write(buffer.getvalue())
print(buffer.getvalue()[:400])
PY
