"""Stage validate: run one artifact through openvino-genai on each of its target devices and record accuracy.

    python -m stages.validate --artifact MODEL/VARIANT               (pipeline stage)
    python -m stages.validate --ir DIR --device CPU --text FILE      (ad hoc: perplexity of any LLM IR, JSON out)

Per target device, one of three levels: `validated` (the device is here), `emulated` (the target's own software
path with its compute on another device, e.g. openvino-genai's NPU pipeline through NPUW on CPU: never a pass on
the real device), `not_validated` (with the reason). With `validate.proxy_device` set and no target run at all,
the artifact is also measured there and labelled as a proxy. Outputs (generations, hypotheses, images) are saved
per device in outputs/<model>/<variant>/<device>/. Timings are not measured here: perf/dvc.yaml does that.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stages.check_params import family_settings, load_checked_stage_params
from stages.core.devices import CPU_PATH, EXACT_CPU, emulation, run_level
from stages.core.errors import BuildError, run_stage
from stages.core.io import atomic_dir, read_json, write_json
from stages.core.paths import artifact_dir, device_folder, outputs_dir, plan_path, split_artifact, validation_path
from stages.core.recipe import read_model
from stages.core.runtime import (
    RUNTIME_PACKAGES,
    available_devices,
    device_present,
    log,
    setup_logging,
    software_versions,
)
from stages.core.schema import device_kind
from stages.families import get_family
from stages.families.base import RunContext, Validation
from stages.params import Params, load_params, stage_parser
from stages.runner import adapter_runs, make_context, write_outputs

PROXY = "proxy"


def check_artifact(artifact: str, family) -> dict:
    """The exported folder must be complete: its manifest and every compressed IR readable."""
    folder = artifact_dir(artifact)
    manifest = read_json(folder / "manifest.json", f"export manifest (run `dvc repro export@{artifact}`)")
    for xml in family.compressed_irs(folder):
        if not xml.with_suffix(".bin").is_file():
            raise BuildError(f"{xml.with_suffix('.bin')}: IR weights missing (re-run `dvc repro export@{artifact}`)")
        read_model(xml)
    return manifest


def run_on(family, artifact: str, device: str, level: str, ctx: RunContext) -> tuple[dict, Validation]:
    log.info("%s on %s (%s)", artifact, device, level)
    run = family.validate(artifact_dir(artifact), device, ctx)
    return {"status": level, "metrics": run.metrics, "info": run.info}, run


def validate(params: Params, artifact: str) -> dict:
    model, variant_name = split_artifact(artifact)
    family = get_family(params.family_of(model))
    variant, common = params.variants[variant_name], params.validate_
    read_json(plan_path("validate", artifact), "plan file (run `dvc repro plan`)")
    manifest = check_artifact(artifact, family)
    adapters = adapter_runs(params, model)
    devices, runs = {}, {}
    for device in variant.targets:
        level, run_device, options, reason = run_level(device, common.emulate)
        if level == "not_validated":
            devices[device] = {"status": level, "reason": reason}
            log.warning("%s not validated on %s: %s", artifact, device, reason)
            continue
        ctx = make_context(
            params, family, model, adapters=adapters, device_config=family.device_options(run_device, variant, options)
        )
        ctx.compile_options = options if level == "emulated" else None
        devices[device], runs[device] = run_on(family, artifact, run_device, level, ctx)
        if level == "emulated":
            devices[device]["emulation"] = emulation(device)
        if device_kind(device) == "NPU" and device_present("CPU"):  # the same artifact through the CPU plugin
            cpu = make_context(params, family, model, adapters=[], device_config=dict(EXACT_CPU))
            cpu.compile_options = dict(EXACT_CPU)
            devices[device][CPU_PATH], runs[f"{device}.{CPU_PATH}"] = run_on(family, artifact, "CPU", CPU_PATH, cpu)
    ran = [d for d in variant.targets if devices[d]["status"] in ("validated", "emulated")]
    record = {
        "artifact": artifact,
        "model": model,
        "variant": variant_name,
        "family": family.name,
        "targets": variant.targets,
        "inference_precision": common.inference_precision,
        "software": software_versions(RUNTIME_PACKAGES),
        "size_bytes": manifest["size_bytes"],
        "weight_bitwidths": manifest["weight_bitwidths"],
        "status": artifact_status(devices),
        "device": ran[0] if ran else None,
        "devices": devices,
    }
    proxy = common.proxy_device
    if not ran and proxy and proxy not in variant.targets and device_present(proxy):
        ctx = make_context(params, family, model, adapters=adapters)
        result, runs[PROXY] = run_on(family, artifact, proxy, "proxy", ctx)
        record["proxy"] = {**result, "device": proxy, "note": f"measured on {proxy}, not on a target device"}
    with atomic_dir(outputs_dir(artifact)) as tmp:
        for device, run in runs.items():
            (tmp / device_folder(device)).mkdir()
            write_outputs(tmp / device_folder(device), run)
    write_json(validation_path(artifact), record)
    log.info(
        "%s: %s %s",
        artifact,
        record["status"],
        {d: r.get("metrics") for d, r in devices.items() if "metrics" in r} or record.get("proxy", {}),
    )
    return record


def artifact_status(devices: dict) -> str:
    levels = [r["status"] for r in devices.values()]
    if all(s == "validated" for s in levels):
        return "validated"
    if "validated" in levels:
        return "partial"
    return "emulated" if "emulated" in levels else "not_validated"


def adhoc(ir: Path, device: str, text_file: Path, params_path: str) -> dict:
    """Score any LLM IR on any text file; context settings come from params.yaml when it is there."""
    from stages.families.llm import perplexity

    if not (ir / "openvino_model.xml").is_file():
        raise BuildError(f"--ir: {ir} has no openvino_model.xml")
    if not text_file.is_file():
        raise BuildError(f"--text: {text_file} not found")
    if not device_present(device):
        return {
            "artifact": str(ir),
            "device": device,
            "status": "not_validated",
            "reason": f"device {device} not present (available: {', '.join(available_devices())})",
        }
    context_length, max_tokens, precision = 512, 2048, "f32"
    if Path(params_path).is_file():
        p = load_params(params_path)
        if family_settings(p, "llm") is not None:
            context_length, max_tokens = family_settings(p, "llm").context_length, family_settings(p, "llm").max_tokens
        precision = p.validate_.inference_precision
    ppl = perplexity(ir, text_file.read_text(), device, precision, context_length, max_tokens)
    return {
        "artifact": str(ir),
        "device": device,
        "status": "validated",
        "inference_precision": precision,
        "metrics": ppl,
    }


def main(argv=None) -> None:
    ap = stage_parser(__doc__, artifact="optional")
    ap.add_argument("--ir", type=Path, help="ad hoc: an LLM IR folder to score")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--text", type=Path)
    args = ap.parse_args(argv)
    setup_logging()
    if args.ir:
        if not args.text:
            raise BuildError("--text: required with --ir")
        json.dump(adhoc(args.ir, args.device, args.text, args.params), sys.stdout, indent=2)
        print()
        return
    if not args.artifact:
        raise BuildError("give --artifact MODEL/VARIANT (pipeline) or --ir DIR --text FILE (ad hoc)")
    validate(load_checked_stage_params(args), args.artifact)


if __name__ == "__main__":
    run_stage(main)
