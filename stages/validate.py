"""Stage validate: run one artifact through OpenVINO / openvino-genai on its target device and record metrics.

    python -m stages.validate --model NAME --variant NAME          (pipeline stage)
    python -m stages.validate --artifact DIR --device CPU --text FILE   (ad hoc: perplexity of any LLM IR, JSON out)
"""
from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from stages.common import (RUNTIME_PACKAGES, adapter_dir, artifact_dir, atomic_dir, available_devices, device_names,
                           device_present, log, read_json, setup_logging, software_versions, validation_metrics_path,
                           validation_outputs_dir, validation_plot_path, write_bytes, write_json)
from stages.families import get_family
from stages.families.base import AdapterRun, Validation
from stages.params import Params, load_params, load_stage_params, stage_parser


class ValidateError(SystemExit):
    pass


def _performance_child(family_name: str, artifact: str, device: str, params: Params, precision: str) -> dict:
    import resource

    result = get_family(family_name).performance(Path(artifact), device, params, precision)
    return {**result, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def performance(family_name: str, artifact: Path, device: str, params: Params, precision: str) -> dict:
    """The family's fixed, warmed-up workload in a fresh process, so the peak RSS is this artifact's alone
    (the process's whole footprint: runtime, compiled model and the pipeline's buffers)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_performance_child, family_name, str(artifact), device, params, precision).result()


def measure(family, artifact: Path, device: str, params: Params, precision: str,
            adapters: list[AdapterRun]) -> tuple[dict, Validation]:
    """Accuracy (and performance, when enabled) of one artifact on one device: (device result, what it saved)."""
    result = family.validate(artifact, device, params, precision, adapters)
    metrics = dict(result.metrics)
    if params.validate_settings.performance:
        metrics |= performance(family.name, artifact, device, params, precision)
    return {"status": "validated", "metrics": metrics, "info": result.info}, result


def adapter_runs(params: Params, model: str) -> list[AdapterRun]:
    """The model's LoRA adapters as the adapter stage prepared them."""
    runs = []
    for name in params.adapters_for(model):
        manifest_path = adapter_dir(name) / "manifest.json"
        if not manifest_path.is_file():
            raise ValidateError(f"{manifest_path}: adapter '{name}' not prepared; run `dvc repro adapter@{name}`")
        manifest = read_json(manifest_path)
        runs.append(AdapterRun(name, adapter_dir(name) / manifest["file"], manifest["alpha"],
                               manifest.get("reference", {})))
    return runs


def save_outputs(model: str, variant: str, saved: Validation | None) -> None:
    """outputs.json and any files (images) replace the artifact's outputs folder as a whole."""
    with atomic_dir(validation_outputs_dir(model, variant)) as tmp:
        write_json(tmp / "outputs.json", saved.outputs if saved else {})
        for rel, data in (saved.files if saved else {}).items():
            write_bytes(tmp / rel, data)
    if saved and saved.plot_image:
        write_bytes(validation_plot_path(model, variant), saved.plot_image)


def absent(device: str) -> dict:
    return {"status": "not_validated",
            "reason": f"device {device} is not present on this host (available: "
                      f"{', '.join(available_devices()) or 'none'})"}


def validate(params: Params, model: str, variant_name: str) -> dict:
    """Validate on every target device present; record per-device results, the first validated one as primary."""
    spec, variant = params.spec(model), params.variants[variant_name]
    family = get_family(spec.family)
    artifact = artifact_dir(model, variant_name)
    if not (artifact / "manifest.json").is_file():
        raise ValidateError(f"{artifact}: no exported artifact; run `dvc repro export-{spec.family}`")
    settings = params.validate_settings
    precision = settings.inference_precision
    manifest = read_json(artifact / "manifest.json")
    names = device_names()
    adapters = adapter_runs(params, model)
    devices, saved = {}, None
    for device in variant.targets:
        if device not in names:
            devices[device] = absent(device)
            log.warning("%s/%s not validated on %s: %s", model, variant_name, device, devices[device]["reason"])
            continue
        devices[device], device_saved = measure(family, artifact, device, params, precision, adapters)
        devices[device]["device_name"] = names[device]
        saved = saved or device_saved
    validated = [d for d in variant.targets if devices[d]["status"] == "validated"]
    record = {"model": model, "variant": variant_name, "family": spec.family, "targets": variant.targets,
              "inference_precision": precision, "software": software_versions(RUNTIME_PACKAGES),
              "size_bytes": manifest["size_bytes"],
              "weight_bitwidths": manifest["weight_bitwidths"],
              "status": "not_validated" if not validated else
              "validated" if len(validated) == len(variant.targets) else "partial",
              "device": validated[0] if validated else None,
              "metrics": devices[validated[0]]["metrics"] if validated else {},
              "devices": devices}
    if not validated:
        record["reason"] = "; ".join(f"{d}: {r['reason']}" for d, r in devices.items())
        proxy = settings.proxy_device
        if proxy and proxy not in variant.targets and proxy in names:
            run, saved = measure(family, artifact, proxy, params, precision, adapters)
            record["proxy"] = {"device": proxy, "device_name": names[proxy], "metrics": run["metrics"],
                               "info": run["info"], "note": f"measured on {proxy}, not on a target device"}
    save_outputs(model, variant_name, saved)
    write_json(validation_metrics_path(model, variant_name), record)
    log.info("%s/%s: %s %s", model, variant_name, record["status"], record["metrics"] or record.get("proxy", {}))
    return record


def adhoc(artifact: Path, device: str, text_file: Path, params_path: str) -> dict:
    """Score any LLM IR on any text file; context settings come from params.yaml when it is there."""
    from stages.families.llm import perplexity

    if not (artifact / "openvino_model.xml").is_file():
        raise ValidateError(f"--artifact: {artifact} has no openvino_model.xml")
    if not text_file.is_file():
        raise ValidateError(f"--text: {text_file} not found")
    if not device_present(device):
        return {"artifact": str(artifact), "device": device, "status": "not_validated",
                "reason": f"device {device} not present (available: {', '.join(available_devices())})"}
    context, max_tokens, precision = 512, 2048, "f32"
    if Path(params_path).is_file():
        p = load_params(params_path)
        context, max_tokens = p.validate_settings.llm.context_length, p.validate_settings.llm.max_tokens
        precision = p.validate_settings.inference_precision
    ppl = perplexity(artifact, text_file.read_text(), device, precision, context, max_tokens)
    return {"artifact": str(artifact), "device": device, "status": "validated", "inference_precision": precision,
            "metrics": ppl}


def main(argv=None) -> None:
    ap = stage_parser(__doc__, model="optional", variant="optional")
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--text", type=Path)
    args = ap.parse_args(argv)
    setup_logging()
    if args.artifact:
        if not args.text:
            raise ValidateError("--text: required with --artifact")
        json.dump(adhoc(args.artifact, args.device, args.text, args.params), sys.stdout, indent=2)
        print()
        return
    if not (args.model and args.variant):
        raise ValidateError("give --model and --variant (pipeline) or --artifact and --text (ad hoc)")
    validate(load_stage_params(args), args.model, args.variant)


if __name__ == "__main__":
    main()
