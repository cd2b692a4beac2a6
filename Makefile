# The two quick-start commands: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-compiled test-pythons compiled pure lint docs bench bench-fast bench-cost bench-bodies bench-secure bench-latency bench-idle bench-sim clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trustp2p needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench,docs,fast]'
	touch $@ $(VENV)/.installed-run

demo: $(VENV)/.installed-run
	$(BIN)/trustp2p demo --nodes 5 --duration 20

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The API reference and the pages in docs/, warnings as errors.
docs: $(VENV)/.installed-test
	$(BIN)/mkdocs build --strict --quiet

test: lint docs
	$(BIN)/pytest
	$(BIN)/pytest -m slow
	$(MAKE) test-compiled
	$(MAKE) test-pythons

# The fast suite again on each newer Python this machine has, pure Python, each in its
# own venv (.venv-3.12, ...): python3.12 on PATH, or pyenv's 3.12; a Python not found is
# said and skipped. PYTHONS lists the versions.
PYTHONS ?= 3.12 3.13
test-pythons:
	@for v in $(PYTHONS); do \
		py=python$$v; $$py -c '' 2>/dev/null || py=$$(pyenv prefix $$v 2>/dev/null)/bin/python$$v; \
		$$py -c '' 2>/dev/null || { echo "test-pythons: no Python $$v here: not tested on it"; continue; }; \
		echo "test-pythons: the fast suite on $$($$py --version)"; \
		[ -x .venv-$$v/bin/python ] || $$py -m venv .venv-$$v || exit 1; \
		.venv-$$v/bin/python -m pip install -q -e '.[test,bench,docs,fast]' || exit 1; \
		.venv-$$v/bin/pytest || exit 1; \
	done

# The compiled build (setup.py): the hot modules compiled by mypyc, built in a copy of the
# sources (build/compiled) so that this checkout stays as it is; then the fast suite on it.
# It needs a C compiler and Python's headers, and says so if they are missing.
test-compiled: $(VENV)/.installed-test
	@$(BIN)/python -c 'import os, shutil, sys, sysconfig; cc = shutil.which(os.environ.get("CC", "cc")); h = os.path.join(sysconfig.get_paths()["include"], "Python.h"); sys.exit(0 if cc and os.path.exists(h) else "test-compiled: needs a C compiler (cc) and Python.h (python3-dev)")'
	rm -rf build/compiled && mkdir -p build/compiled
	cp -r src setup.py pyproject.toml README.md LICENSE build/compiled/
	find build/compiled/src -name '*.so' -delete
	cd build/compiled && TRUSTP2P_COMPILE=1 $(CURDIR)/$(BIN)/python setup.py -q build_ext --inplace
	PYTHONPATH=build/compiled/src $(BIN)/python -c 'import sys, trustp2p; print(trustp2p.build_name()); sys.exit(not trustp2p.compiled_modules())'
	PYTHONPATH=build/compiled/src $(BIN)/pytest

# The compiled build in place, for this checkout's benchmarks and `trustp2p` command
# (`trustp2p --version` names the build); `make pure` goes back to pure Python.
compiled: $(VENV)/.installed-test
	find src -name '*.so' -delete; rm -rf build/lib.* build/temp.*  # none dropped lingers
	TRUSTP2P_COMPILE=1 $(BIN)/python setup.py -q build_ext --inplace
	$(BIN)/trustp2p --version

pure:
	find src -name '*.so' -delete

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/request_response.py

# The fast path: uvloop + the picows driver against a raw uvloop TCP echo (BENCHMARKS.md).
bench-fast: $(VENV)/.installed-test
	$(BIN)/python benchmarks/fast_path.py

# 5,000 idle peers: trustp2p's heartbeat against websockets' keepalive (BENCHMARKS.md).
bench-idle: $(VENV)/.installed-test
	$(BIN)/python benchmarks/idle.py

# Issue 11, goal 1: trustp2p tcp:// minus a raw asyncio TCP echo, CPU us per round trip.
bench-cost: $(VENV)/.installed-test
	$(BIN)/python benchmarks/framework_cost.py

# Issue 11, goal 3: 10 KiB and 256 KiB bodies, pipelined, against bare websockets' MB/s:
# JSON bodies, then the same bytes as a binary payload (wire field 7).
bench-bodies: $(VENV)/.installed-test
	for size in 10240 262144; do \
		$(BIN)/python benchmarks/request_response.py --impls baseline,ours --no-rss --body-size $$size && \
		$(BIN)/python benchmarks/request_response.py --impls baseline,ours --no-rss --body-size $$size --payload || exit 1; \
	done

# Issue 11, goal 4: secure against plain, connection set-ups and round trips.
bench-secure: $(VENV)/.installed-test
	$(BIN)/python benchmarks/handshake.py --part e2e
	$(BIN)/python benchmarks/request_response.py --impls ours,secure --no-rss

# Issue 11, goal 5: p90 of a sequential request under 5,000 requests/s of other load.
bench-latency: $(VENV)/.installed-test
	$(BIN)/python benchmarks/latency_load.py

# Issue 11, goal 7: the in-process simulation at 300 and 1,000 nodes (p50 coverage,
# peak RSS and wall time are in its report).
bench-sim: $(VENV)/.installed-run
	$(BIN)/python -m trustp2p simulate --nodes 300
	$(BIN)/python -m trustp2p simulate --nodes 1000 --messages 100

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
