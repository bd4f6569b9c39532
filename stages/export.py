"""Stage export: export + compress one artifact into models/<model>/<variant> (an openvino-genai folder).

    python -m stages.export --artifact MODEL/VARIANT

Before export: NPU recipes are channel-wise symmetric int4 (schema), a group size must divide every compressed
layer's input channels. After: the recipe NNCF recorded in each compressed IR must match the request, and every
OpenVINO tokenizer IR must encode the parity probes exactly like the HF tokenizer beside it (a model entry with
`tokenizer_parity: record` exports anyway and leaves it to the gate). Output lands in a temporary folder, renamed
only when complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stages.check_params import load_checked_stage_params
from stages.core.errors import BuildError, run_stage
from stages.core.io import atomic_dir, dir_size, file_inventory, read_json, write_json
from stages.core.paths import artifact_dir, checkpoint_dir, split_artifact
from stages.core.recipe import postcheck, precheck_group_size
from stages.core.runtime import EXPORT_PACKAGES, log, setup_logging, software_versions
from stages.core.textdata import calibration_samples
from stages.core.tokenizers import describe_mismatch, fix_digit_split_conversion, parity
from stages.families import get_family
from stages.params import Params, stage_parser

SOURCE_KEYS = ("source", "requested_revision", "resolved_revision", "license", "inputs", "random_init", "note")


def is_prebuilt(checkpoint: Path) -> bool:
    """A checkpoint that already is an OpenVINO IR (e.g. Intel's FastDraft repos on the hub)."""
    return (checkpoint / "openvino_model.xml").is_file()


def copy_prebuilt(checkpoint: Path, out: Path, task: str) -> None:
    """Use a pre-exported IR as is (no re-export); add tokenizer IRs when the repo lacks them."""
    for p in sorted(checkpoint.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            dest = out / p.relative_to(checkpoint)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    if not (out / "openvino_tokenizer.xml").is_file():
        from optimum.exporters.openvino.convert import export_tokenizer
        from transformers import AutoTokenizer

        fix_digit_split_conversion()
        export_tokenizer(AutoTokenizer.from_pretrained(out), out, task=task)


def check_tokenizers(root: Path, folders: list[Path], mode: str, artifact: str) -> dict:
    """Parity of every tokenizer IR with its HF tokenizer; refuse the artifact on a mismatch unless `record`."""
    results = {f.relative_to(root).as_posix(): parity(f) for f in folders}
    found = [(name, x) for name, r in results.items() for x in r.mismatches]
    if found and mode == "error":
        name, first = found[0]
        raise BuildError(
            f"{artifact}: the OpenVINO tokenizer IR{'' if name == '.' else f' in {name}/'} differs "
            f"from the HF tokenizer on {len(found)} probe(s); first: {describe_mismatch(first)} "
            f"(set models.{artifact.split('/')[0]}.tokenizer_parity: record to export anyway)"
        )
    if not results:
        return {}
    summaries = {name: r.summary() for name, r in results.items()}
    return {"share": min(s["share"] for s in summaries.values()), "folders": summaries}


def export(params: Params, artifact: str, out: Path | None = None) -> dict:
    """Export one artifact into `out` (default: models/<model>/<variant>); returns its manifest."""
    model, variant_name = split_artifact(artifact)
    spec, variant = params.spec(model), params.variants[variant_name]
    family = get_family(spec.family)
    checkpoint = checkpoint_dir(model)
    if not (checkpoint / "manifest.json").is_file():
        stage = f"derive-draft@{model}" if model in params.derived_drafts else f"fetch@{model}"
        raise BuildError(f"{checkpoint}: no checkpoint for '{model}'; run `dvc repro {stage}`")
    prebuilt = is_prebuilt(checkpoint)
    if not prebuilt:
        precheck_group_size(checkpoint, variant, variant_name)
    calibration = (
        calibration_samples(variant.dataset, family.calibration_chars) if variant.dataset and not prebuilt else None
    )
    with atomic_dir(out or artifact_dir(artifact)) as tmp:
        if prebuilt:
            log.info("%s is a pre-exported OpenVINO IR: checking it against variant %s", model, variant_name)
            copy_prebuilt(checkpoint, tmp, family.task)
        else:
            log.info("exporting %s (%s)", artifact, variant.model_dump(exclude_defaults=True))
            family.export(checkpoint, variant, tmp, calibration, spec.trust_remote_code)
        checked = postcheck(family.compressed_irs(tmp), variant, variant_name)
        tokenizer = check_tokenizers(tmp, family.tokenizer_folders(tmp), spec.tokenizer_parity, artifact)
        source = read_json(checkpoint / "manifest.json", "checkpoint manifest")
        manifest = {
            "artifact": artifact,
            "model": model,
            "variant": variant_name,
            "family": spec.family,
            "targets": variant.targets,
            "recipe": variant.recipe(),
            "prebuilt": prebuilt,
            **checked,
            "tokenizer_parity": tokenizer,
            "source": {k: source.get(k) for k in SOURCE_KEYS if k in source},
            "software": software_versions(EXPORT_PACKAGES),
            "size_bytes": dir_size(tmp),
            "files": file_inventory(tmp),
        }
        write_json(tmp / "manifest.json", manifest)
    log.info(
        "exported %s: %.1f MB, weights %s, tokenizer parity %s",
        artifact,
        manifest["size_bytes"] / 1e6,
        manifest["weight_bitwidths"],
        tokenizer.get("share", "-"),
    )
    return manifest


def main(argv=None) -> None:
    args = stage_parser(__doc__, artifact=True).parse_args(argv)
    setup_logging()
    export(load_checked_stage_params(args), args.artifact)


if __name__ == "__main__":
    run_stage(main)
