# The two commands in the README: `make demo` and `make test`. Both create .venv when it is
# missing, install torch 2.13.0 first (an unpinned torch downloads a multi-GB CUDA build),
# then the project; both are safe to run again (pip skips what is already there).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# llama-cpp-python is an sdist that compiles llama.cpp. Its default -march=native build uses
# Intel AMX kernels on CPUs that have them, and those crash (SIGSEGV in ggml_backend_amx_mul_mat,
# on the first prompt longer than one token) where the kernel or sandbox does not grant AMX
# state: measured on this machine's Xeon with amx_int8. So the wheel is built once per machine
# for x86-64-v3 (AVX2, FMA, F16C: every x86-64 CPU since about 2015) into a cache outside the
# repo, and installed from there; a fresh clone reuses it. Delete the folder to rebuild.
LLAMA_CPP_VERSION := 0.3.36
BUILD_CACHE ?= $(HOME)/.cache/vas-api-build
WHEELS := $(BUILD_CACHE)/wheels
LLAMA_WHEEL_STAMP := $(WHEELS)/.llama-cpp-python-$(LLAMA_CPP_VERSION)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX512=OFF -DLLAVA_BUILD=OFF

.PHONY: demo test lint setup clean-venv llama-server chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(LLAMA_WHEEL_STAMP): | $(BIN)/python
	@echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) for x86-64-v3 (once per machine, ~5-9 min on 2 cores)..."
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(WHEELS) \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

# Re-install only when pyproject.toml or this file changes.
$(STAMP): pyproject.toml Makefile $(LLAMA_WHEEL_STAMP) | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps --force-reinstall \
		$(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	@echo "Installing vas-api with the local engine..."
	$(BIN)/pip install --quiet --find-links $(WHEELS) -e '.[local,dev,lora,serve]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/vas demo

# llama.cpp's own server for the integration tests: built from source once per machine into
# ~/.cache/vas-api-build/llama-server/ (about 8-13 min on 2 cores); a no-op when it is there.
llama-server: $(STAMP)
	$(BIN)/python tools/llama_server.py

# The playground test drives a real headless browser. No browser build can be downloaded here
# (`playwright install` fetches one), so playwright runs Debian's chromium: installed by apt when
# /usr/bin/chromium is missing and we are root, otherwise a message says what to run (and the
# target fails, since the test would fail anyway: tests run for real, not skipped).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian's chromium for the playground test..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else \
			echo "The playground test needs chromium: run 'sudo apt-get install -y chromium chromium-driver'"; \
			exit 1; \
		fi; \
	fi

test: $(STAMP) llama-server chromium
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check vas_api estimators tests benchmarks examples tools

clean-venv:
	rm -rf $(VENV)
