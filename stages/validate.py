"""Stage validate: run one artifact through OpenVINO / openvino-genai on its target device and record metrics.

    python -m stages.validate --model NAME --variant NAME          (pipeline stage)
    python -m stages.validate --artifact DIR --device CPU --text FILE   (ad hoc: perplexity of any LLM IR, JSON out)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from stages.common import (artifact_dir, available_devices, device_present, log, read_json, setup_logging,
                           validation_metrics_path, validation_outputs_dir, write_json)
from stages.families import get_family
from stages.params import Params, load_params, load_stage_params, stage_parser


class ValidateError(SystemExit):
    pass


def measure(family, artifact: Path, device: str, params: Params, precision: str) -> dict:
    result = family.validate(artifact, device, params, precision)
    return {"device": device, "metrics": result.metrics, "info": result.info, "outputs": result.outputs}


def validate(params: Params, model: str, variant_name: str) -> dict:
    spec, variant = params.spec(model), params.variants[variant_name]
    family = get_family(spec.family)
    artifact = artifact_dir(model, variant_name)
    if not (artifact / "manifest.json").is_file():
        raise ValidateError(f"{artifact}: no exported artifact; run `dvc repro export-{spec.family}`")
    settings = params.validate_settings
    precision = settings.inference_precision
    manifest = read_json(artifact / "manifest.json")
    record = {"model": model, "variant": variant_name, "family": spec.family, "target_device": variant.target,
              "inference_precision": precision, "size_bytes": manifest["size_bytes"],
              "weight_bitwidths": manifest["weight_bitwidths"]}
    outputs: dict = {}
    if device_present(variant.target):
        run = measure(family, artifact, variant.target, params, precision)
        record |= {"status": "validated", "metrics": run["metrics"], "info": run["info"]}
        outputs = run["outputs"]
    else:
        reason = f"target device {variant.target} is not present on this machine (available: " \
                 f"{', '.join(available_devices())})"
        log.warning("%s/%s not validated: %s", model, variant_name, reason)
        record |= {"status": "not_validated", "reason": reason, "metrics": {}}
        proxy = settings.proxy_device
        if proxy and proxy != variant.target and device_present(proxy):
            run = measure(family, artifact, proxy, params, precision)
            record["proxy"] = {"device": proxy, "metrics": run["metrics"], "info": run["info"],
                               "note": f"measured on {proxy}, not on the target {variant.target}"}
            outputs = run["outputs"]
    write_json(validation_outputs_dir(model, variant_name) / "outputs.json", outputs)
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
