"""Stage reference: run a built model's source checkpoint in PyTorch fp32 (transformers / diffusers) on exactly the
inputs validation uses: the ground truth every artifact, fp16 included, is compared with.

    python -m stages.reference --model NAME

Writes metrics/reference/<model>.json and outputs/<model>/source/. A model that is not a built main (a draft, a
scorer) gets a record saying so.
"""

from __future__ import annotations

from stages.check_params import load_checked_stage_params
from stages.core.determinism import deterministic_torch
from stages.core.errors import BuildError, run_stage
from stages.core.io import read_json, write_json
from stages.core.paths import SOURCE, checkpoint_dir, plan_path, reference_path, source_outputs_dir
from stages.core.runtime import REFERENCE_PACKAGES, log, setup_logging, software_versions
from stages.families import get_family
from stages.params import Params, stage_parser
from stages.runner import make_context, save_outputs


def reference(params: Params, model: str) -> dict:
    plan = read_json(plan_path("reference", model), "plan file (run `dvc repro plan`)")
    if not plan["built"]:
        record = {
            "model": model,
            "family": plan["family"],
            "status": "not_built",
            "reason": "not a main in build: no source reference is needed",
        }
        save_outputs(source_outputs_dir(model), None)
        write_json(reference_path(model), record)
        return record
    checkpoint = checkpoint_dir(model)
    if not (checkpoint / "manifest.json").is_file():
        raise BuildError(f"{checkpoint}: no checkpoint for '{model}'; run `dvc repro fetch@{model}`")
    family = get_family(plan["family"])
    deterministic_torch()
    ctx = make_context(params, family, model, precision="f32", adapters=[])
    log.info("source reference of %s (%s) in PyTorch fp32", model, family.name)
    run = family.reference(checkpoint, ctx)
    save_outputs(source_outputs_dir(model), run)
    record = {
        "model": model,
        "family": family.name,
        "status": "validated",
        "device": f"{SOURCE} (PyTorch CPU)",
        "metrics": run.metrics,
        "info": run.info,
        "software": software_versions(REFERENCE_PACKAGES),
    }
    write_json(reference_path(model), record)
    log.info("source %s: %s", model, run.metrics)
    return record


def main(argv=None) -> None:
    args = stage_parser(__doc__, model=True).parse_args(argv)
    setup_logging()
    reference(load_checked_stage_params(args), args.model)


if __name__ == "__main__":
    run_stage(main)
