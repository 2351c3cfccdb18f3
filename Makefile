# The two commands in the README: `make demo` and `make test`. Both create .venv when it is
# missing, install torch 2.13.0 first (an unpinned torch downloads a multi-GB CUDA build),
# then the project; both are safe to run again (pip skips what is already there).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean-venv llama-server

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	@echo "Installing vas-api with the local engine (the first llama-cpp-python build compiles for ~8.5 min)..."
	$(BIN)/pip install --quiet -e '.[local,dev,lora]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/vas demo

# llama.cpp's own server for the integration tests: built from source once per machine into
# ~/.cache/vas-api-build/llama-server/ (about 8-13 min on 2 cores); a no-op when it is there.
llama-server: $(STAMP)
	$(BIN)/python tools/llama_server.py

test: $(STAMP) llama-server
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check vas_api estimators tests benchmarks examples tools

clean-venv:
	rm -rf $(VENV)
