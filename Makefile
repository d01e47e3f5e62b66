# One virtualenv, made on first use; every target goes through it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit test-integration lint fmt proto proto-check breaking bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the gateway, the REST shim and two sim models (REST :8080, gRPC :50051)
run: $(STAMP)
	$(BIN)/python -m devstack

## test: every test tier that runs without Docker
test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

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

## bench: sidecar direct vs gateway vs shim, at 1/10/100 streams (BENCH_ARGS=--quick)
bench: $(STAMP)
	$(BIN)/python -m bench.run_bench $(BENCH_ARGS)

## bench-limits: four gateway processes share one Redis; admitted tokens vs the tenant's limit
bench-limits: $(STAMP)
	$(BIN)/python -m bench.limits_accuracy $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
