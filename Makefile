# The two entry points the README documents.
SHELL := /bin/bash
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup all repro test bench

setup:
	bash scripts/setup.sh

all: setup repro

repro:
	$(VENV)/dvc repro
	cat reports/summary.md

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/python -m pytest -q

bench: setup
	$(VENV)/python benchmarks/llm_speed.py
	$(VENV)/python benchmarks/whisper_speed.py
	$(VENV)/python benchmarks/speculative_speed.py
