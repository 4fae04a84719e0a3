# The two front-door commands: `make demo` and `make test`. Both install what they need.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Extras installed into the venv (`lm`: KenLM for beam search with an n-gram LM); `cuda`
# is added when an NVIDIA GPU is present.
EXTRAS ?= dev,lm$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,cuda)
# KenLM's estimator and binary converter (cald-lm build), compiled from its sdist.
LM_TOOLS := $(VENV)/bin/lmplz
DEMO_SCALE ?= small

.PHONY: install system-tools lm-tools test test-interp demo lint clean

# mamba-ssm's Mamba2 kernels are Triton: installed without compiling its CUDA extension
# (no nvcc, no download from GitHub), after the build requirements its setup.py imports.
MAMBA_SSM     ?= mamba-ssm==2.3.2.post1
MAMBA_BUILD   := "setuptools>=61" wheel packaging ninja
MAMBA_NOBUILD := MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
# The same install in a folder of its own, with the numpy Triton's CPU interpreter needs
# (1.26): the parity tests run the fused kernels there, without a GPU.
INTERP_SITE   := $(VENV)/triton-interp
INTERP_STAMP  := $(INTERP_SITE)/.installed-stamp

$(LM_TOOLS): tools/build_kenlm.sh
	bash tools/build_kenlm.sh $(VENV)/bin

$(STAMP): setup.py $(LM_TOOLS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(MAMBA_BUILD)
	@if echo "$(EXTRAS)" | grep -q cuda; then \
	  $(PY) -m pip install -q -e . && \
	  $(MAMBA_NOBUILD) $(PY) -m pip install -q --no-build-isolation --no-deps "$(MAMBA_SSM)"; \
	fi
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

$(INTERP_STAMP): $(STAMP) Makefile
	rm -rf $(INTERP_SITE)
	$(PY) -m pip install -q $(MAMBA_BUILD)
	$(MAMBA_NOBUILD) $(PY) -m pip install -q --no-build-isolation --no-deps \
	  --target $(INTERP_SITE) "$(MAMBA_SSM)" einops "numpy==1.26.4"
	@touch $(INTERP_STAMP)

system-tools:
	@bash tools/check_system.sh

lm-tools: $(LM_TOOLS)

install: $(STAMP) gpu-check system-tools

test: install $(INTERP_STAMP)
	$(PY) -m pytest -q
	@$(MAKE) --no-print-directory test-interp

# The fused Triton kernels on CPU under Triton's interpreter, against the PyTorch path.
test-interp: $(INTERP_STAMP)
	TRITON_INTERPRET=1 PYTHONPATH=$(abspath $(INTERP_SITE)) $(PY) -m pytest -q tests/interp

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(PY) -m cald_speech.demo --scale $(DEMO_SCALE)

clean:
	rm -rf results/demo data/demo

# With an NVIDIA GPU: stop when the installed torch cannot use it (the driver version
# and the command that installs a matching torch are printed).
.PHONY: gpu-check gpu-wheels
gpu-check: $(STAMP)
	@bash tools/check_gpu.sh $(PY)

# The wheels a GPU machine without network needs for tools/gpu_acceptance.sh.
gpu-wheels: $(STAMP)
	bash tools/gpu_wheels.sh

# The documentation site: the pages of docs/ and an API reference generated from the
# docstrings (mkdocs.yml), built offline with warnings as errors into build/site.
# `make test` builds it too, so a broken link or a docstring that does not render fails.
DOCS_STAMP := $(VENV)/.docs-stamp
.PHONY: docs
$(DOCS_STAMP): $(STAMP) setup.py
	$(PY) -m pip install -q -e '.[docs]'
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m mkdocs build --strict

test: docs
