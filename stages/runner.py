"""How stages run a family: the RunContext built from params (settings, adapters, scorers, device options), and
where a run's outputs go. Shared by validate, reference, measure and the gate; imports no stage module."""

from __future__ import annotations

from pathlib import Path

from stages.check_params import family_settings
from stages.core.io import atomic_dir, read_json, write_bytes, write_json
from stages.core.paths import adapter_dir, checkpoint_dir
from stages.families.base import AdapterRun, Family, RunContext, Validation

CONTACT_SHEET = "contact_sheet.png"


def adapter_runs(params, model: str) -> list[AdapterRun]:
    """The model's LoRA adapters as the adapter stage prepared them."""
    runs = []
    for name in params.adapters_for(model):
        manifest = read_json(adapter_dir(name) / "manifest.json", f"adapter '{name}' (run `dvc repro adapter@{name}`)")
        runs.append(
            AdapterRun(name, adapter_dir(name) / manifest["file"], manifest["alpha"], manifest.get("reference", {}))
        )
    return runs


def scorer_dirs(params) -> dict[str, Path]:
    return {name: checkpoint_dir(name) for name, spec in params.models.items() if spec.family == "scorer"}


def make_context(
    params,
    family: Family,
    model: str,
    precision: str | None = None,
    adapters: list[AdapterRun] | None = None,
    device_config: dict | None = None,
) -> RunContext:
    return RunContext(
        family_settings(params, family.name),
        precision or params.validate_.inference_precision,
        model=model,
        adapters=adapter_runs(params, model) if adapters is None else adapters,
        device_config=device_config or {},
        scorers=scorer_dirs(params),
    )


def save_outputs(folder: Path, run: Validation | None) -> None:
    """outputs.json and any files (images, a contact sheet) replace the folder as a whole."""
    with atomic_dir(folder) as tmp:
        write_outputs(tmp, run)


def write_outputs(folder: Path, run: Validation | None) -> None:
    write_json(folder / "outputs.json", run.outputs if run else {})
    for rel, data in (run.files if run else {}).items():
        write_bytes(folder / rel, data)
    if run and run.plot_image:
        write_bytes(folder / CONTACT_SHEET, run.plot_image)
