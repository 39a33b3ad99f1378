# progemu — every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# WordNet for METEOR, tried once (`rm .venv/.wordnet-tried` or `make wordnet` to try again)
WORDNET_STAMP := $(VENV)/.wordnet-tried
TORCH_VERSION ?= 2.13.0
# DeepSpeed JIT-compiles its ops once; keep them inside the repository so later runs reuse them.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export PYTHONPATH := $(CURDIR):$(PYTHONPATH)
PYTEST_ARGS ?=

.PHONY: help install wordnet test lint clean pretrain finetune convert evaluate demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(STAMP) $(WORDNET_STAMP)  ## create .venv/ and install the package with its dev tools (idempotent)

# METEOR's WordNet from Debian's packages (no download from elsewhere): apt-get where it exists and we are root;
# otherwise a message, and METEOR is reported as unavailable.
WORDNET_PKGS := wordnet-base wordnet-sense-index
$(WORDNET_STAMP): | $(STAMP)
	@$(MAKE) --no-print-directory wordnet
	@touch $(WORDNET_STAMP)

wordnet:  ## install WordNet for METEOR (Debian's wordnet-base) into .venv/nltk_data
	@if ! test -f /usr/share/wordnet/index.sense && command -v apt-get >/dev/null 2>&1 && test "$$(id -u)" = 0; then \
	  echo "installing $(WORDNET_PKGS) (apt-get)"; \
	  apt-get install -y -q $(WORDNET_PKGS) >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(WORDNET_PKGS) >/dev/null 2>&1) || true; \
	fi
	@$(BIN)/python -m eval.wordnet || echo "WordNet not installed: METEOR will be reported as unavailable" \
	  "(as root: apt-get install $(WORDNET_PKGS); then make wordnet)"

# torch first, chosen by machine: a CUDA build where a GPU answers, a CPU build elsewhere (the CPU
# index when reachable, else whatever local wheel pip is configured with). The package's own torch
# range then admits the installed build, so pip never replaces it with a multi-GB download.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "installing torch $(TORCH_VERSION) (CUDA build)"; $(BIN)/pip install -q "torch==$(TORCH_VERSION)" 2>&1 | grep -v "is ignored: it is neither" || true; \
	  elif $(BIN)/python -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=3)" 2>/dev/null; then \
	    echo "installing torch $(TORCH_VERSION) (CPU build)"; \
	    $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu 2>&1 | grep -v "is ignored: it is neither" || true; \
	  else \
	    echo "installing torch $(TORCH_VERSION) (local wheel)"; $(BIN)/pip install -q "torch==$(TORCH_VERSION)" 2>&1 | grep -v "is ignored: it is neither" || true; \
	  fi; \
	fi
	@$(BIN)/pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import progemu, torch, transformers, deepspeed" 2>/dev/null || { echo "install failed"; exit 1; }
	@touch $(STAMP)

test: install  ## install what is missing, then run the tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install  ## ruff
	$(BIN)/ruff check progemu tokenizer train eval tests

clean:  ## remove generated runs and data (keeps .venv)
	rm -rf runs data outputs .pytest_cache

# Training (train/README.md). CONFIG= preset or YAML, NGPUS= ranks per node, NNODES=, HOSTFILE= (the venv's own
# deepspeed launcher), RESUME=1 continues the run folder's last checkpoint, ARGS= more run-config flags, DRY_RUN=1
# prints the commands without running them.
TRAIN_FLAGS = $(if $(CONFIG),--config $(CONFIG)) $(if $(NGPUS),--ngpus $(NGPUS)) $(if $(NNODES),--nnodes $(NNODES)) \
	$(if $(HOSTFILE),--hostfile $(HOSTFILE)) $(if $(filter 1 yes true,$(RESUME)),--resume) \
	$(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) $(if $(ARGS),-- $(ARGS))

pretrain: install  ## pretrain (tiny preset on SynthCXR; CONFIG= NGPUS= NNODES= HOSTFILE= RESUME=1 ARGS= DRY_RUN=1)
	$(BIN)/python -m train.launch pretrain $(TRAIN_FLAGS)

finetune: install  ## fine-tune (tiny preset from the embedded checkpoint; same variables as pretrain)
	$(BIN)/python -m train.launch finetune $(TRAIN_FLAGS)

convert: install  ## ZeRO checkpoint -> Hugging Face folder: make convert CKPT=runs/x/checkpoint-N OUT=runs/x/hf
	$(BIN)/python -m train.consolidate $(CKPT) $(OUT)

# Evaluation (eval/): MODEL= an HF model folder (generates first) or GENERATED= an existing `progemu generate`
# folder; DATA= ground truth (SynthCXR by default); evaluators are trained into runs/evaluators when missing.
EVAL_DATA ?= data/synthcxr-128
EVAL_OUT ?= runs/eval
MODEL ?= runs/finetune-tiny/final
# the project's own evaluators (trained there from EVAL_DATA when missing); add the standard networks with
# EVALUATORS=runs/evaluators,standard=weights (eval/README.md)
EVALUATORS ?= runs/evaluators
evaluate: install  ## evaluate: make evaluate [MODEL=dir | GENERATED=dir] [EVAL_DATA=dir] [EVAL_OUT=dir] [EVALUATORS=...]
	@test -f $(EVAL_DATA)/manifest.json || test -n "$(filter-out data/synthcxr-128,$(EVAL_DATA))" || \
	  nice -n 10 $(BIN)/progemu synth --out $(EVAL_DATA) --size 128 --pairs 2000
	$(BIN)/python -m eval.evaluate --data $(EVAL_DATA) --out $(EVAL_OUT) --evaluators $(EVALUATORS) \
	  $(if $(GENERATED),--generated $(GENERATED),--model $(MODEL))

demo: install  ## the whole pipeline offline on SynthCXR, ends with runs/demo/report.html (FROM_SCRATCH=1 trains it all)
	$(BIN)/python -m eval.demo $(if $(filter 1 yes true,$(FROM_SCRATCH)),--from-scratch)
