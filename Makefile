# Two commands: `make demo` and `make test`. Each sets up .venv on its own.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch first: any other spec pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/reco demo $(DEMO_ARGS)

system-deps:
	bash deploy/system-deps.sh

test: $(STAMP) system-deps lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# Linter and type check (settings in pyproject.toml); `make test` runs them first.
lint: $(STAMP)
	$(BIN)/ruff check streamproc trainer serving tests
	$(BIN)/mypy streamproc trainer serving

clean:
	rm -rf $(VENV) build *.egg-info
