# make install: .venv with the torch pair that timm works with here, then the package (editable) + extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test test-fast gpu-check demo ablation lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[dev,crf,examples]"
	touch $(STAMP)

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# Every CUDA measurement of docs/benchmarks.md in one run (< 8 min on one GPU): the CUDA tests
# (pytest -m cuda), then the benchmarks; one JSON line each, also in runs/gpu-check/. Without CUDA it says
# so and exits 0. GPU_CHECK_ARGS=--dry-run starts every command without running it (tested in CI).
GPU_CHECK_ARGS ?=
gpu-check: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff check mcc tests benchmarks examples
	$(BIN)/ruff format --check mcc tests benchmarks examples

# MCC ablations on CPU (docs/ablation.md): makes the pretrained stand-in once, then 11 arms x 3 seeds,
# two runs at a time; resumable. Results in runs/ablation/.
ablation: install
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python examples/ablate.py --jobs 2

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/masked_views.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
