# The two entry points the README documents.
SHELL := /bin/bash
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup all repro regress test test-fast bench publish

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

# Share this host's build: artifacts + run history to the default DVC remote (see .dvc/config).
publish:
	$(VENV)/dvc push && $(VENV)/dvc push --run-cache

test: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	HF_HUB_OFFLINE=1 $(VENV)/python -m pytest -q --durations=12

# The edit-loop tier (after `make setup` once): params, gate, regression, fetch, tokenizer and input-error tests;
# no real weights, no dvc repro, no export. `make test` runs these and everything else.
test-fast:
	HF_HUB_OFFLINE=1 $(VENV)/python -m pytest -q -m "fast and not slow"

bench: setup
	$(VENV)/python benchmarks/llm_speed.py
	$(VENV)/python benchmarks/whisper_speed.py
	$(VENV)/python benchmarks/speculative_speed.py
