"""Stage release: a model card per artifact (README.md with YAML front matter, in the style of the OpenVINO hub
cards) and release/manifest.json listing every artifact with its files' sha256, re-checked on disk.

    python -m stages.release                  (pipeline stage: writes release/)
    python -m stages.release --bundle DIR     (also assemble upload-ready folders: artifact files + card)

An artifact is released when the gate has no failing row for it and it was validated on at least one target
device (in dev mode a target device absent here is listed on the card; release mode's gate fails on it).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import jinja2
import yaml

from stages.common import (artifact_dir, atomic_dir, file_inventory, log, read_json, setup_logging,
                           validation_metrics_path, write_json, write_text)
from stages.families import get_family
from stages.gate import GATE_PATH
from stages.params import Params, load_stage_params, stage_parser
from stages.report import PERFORMANCE, fmt, recipe_label

RELEASE = Path("release")

CARD = jinja2.Template("""---
{{ front_matter }}---

# {{ name }}

{{ summary }}

## Source

- Base model: {{ base }}
- Revision: requested `{{ source.requested_revision or "-" }}`, resolved `{{ source.resolved_revision or "-" }}`
{%- if note %}
- Note: {{ note }}
{%- endif %}
- Licence of the source: {{ license or "not stated" }}

## Quantization parameters

Recipe `{{ variant }}` ({{ recipe }}), as read back from the IR's `rt_info`:
{% for ir, info in rt_info.items() %}
- `{{ ir }}`: {% for k, v in info.items() if k != "advanced_parameters" %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}
{%- endfor %}

Weight precisions (share of weights): {{ bitwidths }}. Size on disk: {{ "%.1f" | format(size_mb) }} MB.

## Validation

Release status: **{{ "released" if released else "withheld" }}** ({{ reason }}); gate mode `{{ gate_mode }}`.

| device | status | {{ metric_keys | join(" | ") }} |
|---|---|{% for _ in metric_keys %}---|{% endfor %}
{% for d in devices -%}
| {{ d.device }}{% if d.name %} ({{ d.name }}){% endif %} | {{ d.status }} | {{ d.cells | join(" | ") }} |
{% endfor %}
{%- for d in devices if d.reason %}
- {{ d.device }}: {{ d.reason }}
{%- endfor %}

Evaluation: {{ eval_info }}. Inference precision {{ precision }}.
Performance after one warm-up on fixed inputs; peak RSS of a fresh process.

## Software

- Exported with: {{ export_software }}
- Validated with: {{ runtime_software }}

## Running the model

```python
{{ usage }}
```

## Legal information

The original model is distributed under the {{ license or "source's" }} licence; this artifact inherits it.
""", undefined=jinja2.StrictUndefined, trim_blocks=False)


def base_model(source: dict) -> tuple[str, str | None]:
    """(how to name the base model in text, its hub id for the front matter if it has one)."""
    src = source.get("source") or {}
    if src.get("type") == "hub":
        return f"[{src['repo_id']}](https://huggingface.co/{src['repo_id']})", src["repo_id"]
    where = src.get("path") or ", ".join(src.get("parts") or src.get("model_files") or [])
    return f"{src.get('type', 'local')} file `{where}`", None


def decision(gate: dict, name: str, record: dict) -> tuple[bool, str]:
    failed = [r for r in gate["rows"] if r["artifact"] == name and r["status"] == "fail"]
    if failed:
        return False, "gate failed: " + ", ".join(f"{r['metric']} on {r['device']}" for r in failed)
    validated = [d for d, r in record.get("devices", {}).items() if r["status"] == "validated"]
    if not validated:
        return False, "not validated on any target device"
    return True, f"gate passed on {', '.join(validated)}"


def device_rows(record: dict, keys: list[str]) -> list[dict]:
    return [{"device": d, "name": r.get("device_name"), "status": r["status"], "reason": r.get("reason"),
             "cells": [fmt(r.get("metrics", {}).get(k)) for k in keys]} for d, r in record["devices"].items()]


def card(params: Params, gate: dict, model: str, variant: str) -> tuple[str, dict]:
    """The card text and the artifact's manifest entry."""
    name = f"{model}/{variant}"
    family = get_family(params.spec(model).family)
    manifest = read_json(artifact_dir(model, variant) / "manifest.json")
    record = read_json(validation_metrics_path(model, variant))
    released, reason = decision(gate, name, record)
    text_base, hub_id = base_model(manifest["source"])
    spec, recipe = params.spec(model), params.variants[variant]
    tags = ["openvino", "nncf", recipe.weight_format, *[t.lower() for t in recipe.targets]]
    front = {"license": spec.license or "other", **({"base_model": hub_id, "base_model_relation": "quantized"}
                                                     if hub_id else {}),
             "library_name": "openvino", "pipeline_tag": family.pipeline_tag, "tags": tags}
    measured = {k for r in record["devices"].values() for k in r.get("metrics", {})}
    keys = family.report_metrics(params) + [k for k in PERFORMANCE if k in measured]
    infos = [r.get("info") for r in record["devices"].values() if r.get("info")]
    text = CARD.render(
        front_matter=yaml.safe_dump(front, sort_keys=False), name=name, base=text_base, source=manifest["source"],
        summary=f"{text_base} converted to OpenVINO IR with weight format {recipe.weight_format} "
                f"for {', '.join(recipe.targets)}.",
        note=spec.note, license=spec.license, variant=variant, recipe=recipe_label(recipe),
        rt_info=manifest.get("rt_info", {}), bitwidths=manifest["weight_bitwidths"],
        size_mb=manifest["size_bytes"] / 1e6, released=released, reason=reason, gate_mode=gate["mode"],
        metric_keys=keys, devices=device_rows(record, keys), eval_info=infos[0] if infos else "not run",
        precision=record.get("inference_precision"),
        export_software=", ".join(f"{k} {v}" for k, v in manifest.get("software", {}).items()) or "not recorded",
        runtime_software=", ".join(f"{k} {v}" for k, v in record.get("software", {}).items()) or "not recorded",
        usage=family.usage.format(path=f"{model}-{variant}", device=recipe.target))
    entry = {"name": name, "family": family.name, "released": released, "reason": reason,
             "targets": recipe.targets, "validated_on": [d for d, r in record["devices"].items()
                                                         if r["status"] == "validated"],
             "path": artifact_dir(model, variant).as_posix(), "size_bytes": manifest["size_bytes"],
             "source": manifest["source"], "files": verified_files(model, variant, manifest)}
    return text, entry


def verified_files(model: str, variant: str, manifest: dict) -> list[dict]:
    """The artifact's files as they are on disk now; they must match the export manifest's inventory."""
    on_disk = file_inventory(artifact_dir(model, variant))
    if on_disk != manifest["files"]:
        changed = sorted({f["path"] for f in on_disk} ^ {f["path"] for f in manifest["files"]} |
                         {a["path"] for a, b in zip(on_disk, manifest["files"]) if a != b})
        raise SystemExit(f"{artifact_dir(model, variant)}: files differ from its export manifest ({changed[:5]}); "
                         "re-run `dvc repro` (or `dvc checkout`)")
    return on_disk


def release(params: Params) -> dict:
    gate = read_json(GATE_PATH)
    entries = []
    with atomic_dir(RELEASE) as tmp:
        for build in params.builds().values():
            for model in build.models:
                for variant in build.variants:
                    text, entry = card(params, gate, model, variant)
                    card_path = Path(model) / variant / "README.md"
                    write_text(tmp / card_path, text)
                    entries.append({**entry, "card": (RELEASE / card_path).as_posix()})
        manifest = {"gate_mode": gate["mode"], "gate_passed": gate["passed"],
                    "released": sum(e["released"] for e in entries), "withheld": sum(not e["released"] for e in entries),
                    "artifacts": entries}
        write_json(tmp / "manifest.json", manifest)
    log.info("release: %d artifact(s) released, %d withheld (cards and manifest in %s/)", manifest["released"],
             manifest["withheld"], RELEASE)
    return manifest


def bundle(manifest: dict, out: Path) -> None:
    """Upload-ready folders: each released artifact's files (hard links where possible) plus its card."""
    for entry in (e for e in manifest["artifacts"] if e["released"]):
        with atomic_dir(out / entry["name"].replace("/", "-")) as tmp:
            for f in entry["files"]:
                src, dst = Path(entry["path"]) / f["path"], tmp / f["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            shutil.copy2(entry["card"], tmp / "README.md")
        log.info("bundled %s", out / entry["name"].replace("/", "-"))


def main(argv=None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument("--bundle", type=Path)
    args = ap.parse_args(argv)
    setup_logging()
    manifest = release(load_stage_params(args))
    if args.bundle:
        bundle(manifest, args.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
