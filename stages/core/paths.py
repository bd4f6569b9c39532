"""Where every stage reads and writes (relative to the pipeline root). Artifacts are named `<model>/<variant>`."""

from __future__ import annotations

import re
from pathlib import Path

MODELS = Path("models")
METRICS = Path("metrics")
OUTPUTS = Path("outputs")
DATA = Path("data")
REPORTS = Path("reports")
RELEASE = Path("release")

SOURCE = "source"  # the reference name of the source checkpoint run in PyTorch (outputs/<model>/source)


def split_artifact(name: str) -> tuple[str, str]:
    model, _, variant = name.partition("/")
    return model, variant


def checkpoint_dir(model: str) -> Path:
    return MODELS / model / "checkpoint"


def source_manifest_path(model: str) -> Path:
    """A copy of the fetch manifest outside the checkpoint: the plan stage hashes these instead of checkpoints."""
    return DATA / "sources" / f"{model}.json"


def artifact_dir(artifact: str) -> Path:
    return MODELS / artifact


def adapter_dir(name: str) -> Path:
    return MODELS / "adapters" / name


def pairing_dir(pair: str) -> Path:
    return MODELS / "pairs" / pair


def eval_text_path(name: str) -> Path:
    return DATA / "eval" / f"{name}.txt"


def calibration_path(name: str) -> Path:
    return DATA / "calibration" / f"{name}.txt"


def prompt_set_path(name: str) -> Path:
    return DATA / "prompts" / f"{name}.jsonl"


def speech_set_dir(name: str) -> Path:
    return DATA / "speech" / name


def plan_path(kind: str, name: str) -> Path:
    """data/plan/<kind>/<artifact or model>.json: everything a stage's result depends on besides code."""
    return DATA / "plan" / kind / f"{name}.json"


def device_folder(device: str) -> str:
    """A device string as a folder name (HETERO:CPU -> HETERO_CPU)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", device)


def outputs_dir(artifact: str) -> Path:
    return OUTPUTS / artifact


def device_outputs_dir(artifact: str, device: str) -> Path:
    return OUTPUTS / artifact / device_folder(device)


def source_outputs_dir(model: str) -> Path:
    return OUTPUTS / model / SOURCE


def validation_path(artifact: str) -> Path:
    return METRICS / "validate" / f"{artifact}.json"


def reference_path(model: str) -> Path:
    return METRICS / "reference" / f"{model}.json"


def performance_path(artifact: str) -> Path:
    return METRICS / "perf" / f"{artifact}.json"


def pair_metrics_path(pair: str) -> Path:
    return METRICS / "validate" / "pairs" / f"{pair}.json"


def pair_performance_path(pair: str) -> Path:
    return METRICS / "perf" / "pairs" / f"{pair}.json"


def plot_image_path(artifact: str) -> Path:
    """An artifact's image plot (e.g. a text-to-image contact sheet), declared as a DVC plot."""
    return METRICS / "images" / f"{artifact}.png"


GATE_PATH = METRICS / "gate.json"
REGRESSION_PATH = METRICS / "regression.json"
