# The two front-door commands: `make demo` and `make test`. Both install what they need.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Extras installed into the venv; `cuda` is added when an NVIDIA GPU is present.
EXTRAS ?= dev$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,cuda)
DEMO_SCALE ?= small

.PHONY: install system-tools test demo lint clean

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if echo "$(EXTRAS)" | grep -q cuda; then \
	  $(PY) -m pip install -q -e . && \
	  MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
	    $(PY) -m pip install -q --no-build-isolation mamba-ssm; \
	fi
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

system-tools:
	@bash tools/check_system.sh

install: $(STAMP) system-tools

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(PY) -m cald_speech.demo --scale $(DEMO_SCALE)

clean:
	rm -rf results/demo data/demo
