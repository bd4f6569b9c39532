"""Stage export: export + compress one model variant into models/<model>/<variant> (an openvino-genai folder).

    python -m stages.export --model NAME --variant NAME
"""
from __future__ import annotations

import shutil
from pathlib import Path

from stages.common import EXPORT_PACKAGES, artifact_dir, checkpoint_dir, dir_size, file_inventory, log, read_json, \
    setup_logging, software_versions, write_json
from stages.evalsets import calibration_samples
from stages.families import get_family
from stages.params import Params, load_stage_params, stage_parser
from stages.recipe_checks import postcheck, precheck_group_size


class ExportError(SystemExit):
    pass


def is_prebuilt(checkpoint: Path) -> bool:
    """A checkpoint that already is an OpenVINO IR (e.g. Intel's FastDraft repos on the hub)."""
    return (checkpoint / "openvino_model.xml").is_file()


def copy_prebuilt(checkpoint: Path, out: Path, task: str) -> None:
    """Use a pre-exported IR as is (no re-export); add tokenizer IRs when the repo lacks them."""
    for p in sorted(checkpoint.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            dest = out / p.relative_to(checkpoint)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    if not (out / "openvino_tokenizer.xml").is_file():
        from optimum.exporters.openvino.convert import export_tokenizer
        from transformers import AutoTokenizer

        export_tokenizer(AutoTokenizer.from_pretrained(out), out, task=task)


def export(params: Params, model: str, variant_name: str) -> dict:
    from stages.common import atomic_dir

    spec, variant = params.spec(model), params.variants[variant_name]
    family = get_family(spec.family)
    checkpoint = checkpoint_dir(model)
    if not (checkpoint / "manifest.json").is_file():
        raise ExportError(f"{checkpoint}: no fetched checkpoint for '{model}'; run `dvc repro fetch@{model}`")
    prebuilt = is_prebuilt(checkpoint)
    if not prebuilt:
        precheck_group_size(checkpoint, variant, variant_name)
    calibration = calibration_samples(variant.dataset, family.calibration_chars) \
        if variant.dataset and not prebuilt else None
    with atomic_dir(artifact_dir(model, variant_name)) as tmp:
        if prebuilt:
            log.info("%s is a pre-exported OpenVINO IR: checking it against variant %s", model, variant_name)
            copy_prebuilt(checkpoint, tmp, family.task)
        else:
            log.info("exporting %s / %s (%s)", model, variant_name, variant.model_dump(exclude_defaults=True))
            family.export(checkpoint, variant, tmp, calibration, spec.trust_remote_code)
        checked = postcheck(family.compressed_irs(tmp), variant, variant_name)
        source = read_json(checkpoint / "manifest.json")
        manifest = {
            "model": model, "variant": variant_name, "family": spec.family, "targets": variant.targets,
            "recipe": variant.model_dump(exclude={"targets"}), "prebuilt": prebuilt, **checked,
            "source": {k: source.get(k) for k in ("source", "requested_revision", "resolved_revision", "license")},
            "software": software_versions(EXPORT_PACKAGES),
            "size_bytes": dir_size(tmp), "files": file_inventory(tmp),
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("exported %s/%s: %.1f MB, weights %s", model, variant_name, manifest["size_bytes"] / 1e6,
             manifest["weight_bitwidths"])
    return manifest


def main(argv=None) -> None:
    args = stage_parser(__doc__, model=True, variant=True).parse_args(argv)
    setup_logging()
    export(load_stage_params(args), args.model, args.variant)


if __name__ == "__main__":
    main()
