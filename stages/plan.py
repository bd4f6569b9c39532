"""Stage plan: check params once, and write one small file per artifact and stage with everything that stage's result
depends on besides code: the recipe, the family's settings, and the content hashes of the inputs it reads.

    python -m stages.plan

    data/plan/export/<model>/<variant>.json     recipe, checkpoint (its fetch manifest), calibration text
    data/plan/validate/<model>/<variant>.json   targets, runtime options, family settings, eval inputs, adapters
    data/plan/reference/<model>.json            family settings and eval inputs, for the PyTorch source run

The per-artifact stages depend on their plan file, so editing one recipe, one family's settings or one speech set
re-runs exactly the stages that read it, while dvc.yaml stays one stage per kind (DVC cannot split the
`<model>/<variant>` names a stage iterates over into the keys it would otherwise depend on).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from stages.check_params import family_settings, load_checked_stage_params
from stages.core.errors import BuildError, run_stage
from stages.core.io import atomic_dir, sha256_file, write_json
from stages.core.paths import DATA, adapter_dir, calibration_path, plan_path, source_manifest_path, split_artifact
from stages.core.runtime import log, setup_logging
from stages.families import get_family
from stages.params import Params, stage_parser


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (path, sha256) list; a missing input is named."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file() and ".tmp-" not in q.name):
            h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
        return h.hexdigest()
    raise BuildError(
        f"{path}: input not built yet (the plan stage runs after evalsets, speechsets, fetch and "
        "adapter: `dvc repro plan`)"
    )


def inputs_hashes(params: Params, family_name: str, model: str) -> dict[str, str]:
    family = get_family(family_name)
    return {
        label: content_hash(p)
        for label, p in family.plan_inputs(family_settings(params, family_name), params, model).items()
    }


def export_plan(params: Params, artifact: str, role: str) -> dict:
    model, variant_name = split_artifact(artifact)
    spec, variant = params.spec(model), params.variants[variant_name]
    plan = {
        "artifact": artifact,
        "role": role,
        "family": spec.family,
        "recipe": variant.recipe(),
        "trust_remote_code": spec.trust_remote_code,
        "tokenizer_parity": spec.tokenizer_parity,
        "checkpoint": content_hash(source_manifest_path(model)),
    }
    if variant.dataset:
        plan["calibration"] = {variant.dataset: content_hash(calibration_path(variant.dataset))}
    return plan


def adapters_plan(params: Params, model: str) -> dict:
    return {
        name: {"alpha": a.alpha, "manifest": content_hash(adapter_dir(name) / "manifest.json")}
        for name, a in params.adapters_for(model).items()
    }


def validate_plan(params: Params, artifact: str) -> dict:
    model, variant_name = split_artifact(artifact)
    family, variant, common = params.family_of(model), params.variants[variant_name], params.validate_
    return {
        "artifact": artifact,
        "family": family,
        "targets": variant.targets,
        "npu": variant.npu.model_dump() if variant.npu else None,
        "common": common.model_dump(include={"inference_precision", "proxy_device", "emulate"}),
        "settings": family_settings(params, family).model_dump(),
        "inputs": inputs_hashes(params, family, model),
        "adapters": adapters_plan(params, model),
    }


def reference_plan(params: Params, model: str, built: set[str]) -> dict:
    """What the source run of a built main depends on; other models (drafts, scorers) get a plan saying so."""
    family = params.family_of(model)
    if model not in built:
        return {"model": model, "family": family, "built": False}
    return {
        "model": model,
        "family": family,
        "built": True,
        "settings": family_settings(params, family).model_dump(),
        "inputs": inputs_hashes(params, family, model),
        "checkpoint": content_hash(source_manifest_path(model)),
    }


def plans(params: Params) -> dict[Path, dict]:
    out = {}
    for role, artifacts in (("main", params.build), ("draft", params.drafts)):
        for artifact in artifacts:
            out[plan_path("export", artifact)] = export_plan(params, artifact, role)
    for artifact in params.build:
        out[plan_path("validate", artifact)] = validate_plan(params, artifact)
    built = {split_artifact(a)[0] for a in params.build}
    for model in params.models:  # dvc.yaml runs reference@<model> for every model entry
        out[plan_path("reference", model)] = reference_plan(params, model, built)
    return out


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    built = plans(load_checked_stage_params(args))  # every input is hashed before anything is written
    with atomic_dir(DATA / "plan") as tmp:
        for path, plan in built.items():
            write_json(tmp / path.relative_to(DATA / "plan"), plan)
    log.info("plan: %d files", len(built))


if __name__ == "__main__":
    run_stage(main)
