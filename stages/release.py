"""Stage release: a model card per artifact (README.md with YAML front matter, in the style of the OpenVINO hub
cards) and release/manifest.json listing every artifact with its files' sha256, re-checked on disk.

    python -m stages.release                  (pipeline stage: writes release/)
    python -m stages.release --bundle DIR     (also assemble upload-ready folders: artifact files + card)

An artifact is released when the gate has no failing row for it and it was validated on at least one target
device (in dev mode a target device absent here is listed on the card; release mode's gate fails on it).
A draft is released when a pair using it was validated and passed the gate; its card shows the pairs.
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
from stages.params import Params, TinySource, load_stage_params, stage_parser
from stages.report import PERFORMANCE, by_adapter, fmt, recipe_label

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
{% if pairs %}
A draft for speculative decoding, validated through `openvino_genai.LLMPipeline(main, draft_model=...)`:
greedy output must equal the main alone's.

| pair | main | devices (main + draft) | status | output match | acceptance | TPOT speedup |
|---|---|---|---|---|---|---|
{% for p in pairs -%}
| {{ p.name }} | {{ p.main }} | {{ p.devices }} | {{ p.status }} | {{ p.output_match }} | {{ p.acceptance }} | {{ p.speedup }} |
{% endfor %}
{%- else %}
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
{%- if adapters %}

LoRA adapters validated with this artifact (applied at run time, never fused), on {{ adapters_device }}:
{% for a in adapters %}
- `{{ a.name }}`: {% for k, v in a.metrics.items() %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}
{%- endfor %}
{%- endif %}
{%- endif %}

## Software

- Exported with: {{ export_software }}
- Validated with: {{ runtime_versions }}

## Running the model

```python
{{ usage }}
```

## Legal information

The original model is distributed under the {{ license or "source's" }} licence; this artifact inherits it.
""", undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def base_model(source: dict) -> tuple[str, str | None]:
    """(how to name the base model in text, its hub id for the front matter if it has one)."""
    src = source.get("source") or {}
    if src.get("type") == "hub":
        return f"[{src['repo_id']}](https://huggingface.co/{src['repo_id']})", src["repo_id"]
    if src.get("type") == "derived":
        how = " and distilled from it" if src.get("distill") else ""
        return f"the first {src['keep_layers']} decoder layers of `{src['base']}`{how}", None
    where = src.get("path") or ", ".join(src.get("parts") or src.get("model_files") or [])
    return f"{src.get('type', 'local')} file `{where}`", None


DRAFT_USAGE = """import openvino_genai as ov_genai

pipe = ov_genai.LLMPipeline("{main}", "{device}", draft_model=ov_genai.draft_model("{path}", "{device}"))
config = ov_genai.GenerationConfig(max_new_tokens=100, num_assistant_tokens=3)
print(pipe.generate("What is OpenVINO?", config))"""


def failed_rows(gate: dict, name: str) -> list[dict]:
    return [r for r in gate["rows"] if r["artifact"] == name and r["status"] == "fail"]


def main_validation(params: Params, gate: dict, model: str, variant: str) -> dict:
    """Card context, release decision and devices of a main artifact, from its validation record."""
    name, family = f"{model}/{variant}", get_family(params.spec(model).family)
    record = read_json(validation_metrics_path(model, variant))
    validated = [d for d, r in record["devices"].items() if r["status"] == "validated"]
    failed = failed_rows(gate, name)
    released, reason = (False, "gate failed: " + ", ".join(f"{r['metric']} on {r['device']}" for r in failed)) \
        if failed else (False, "not validated on any target device") if not validated else \
        (True, f"gate passed on {', '.join(validated)}")
    if released and isinstance(params.spec(model).source, TinySource):
        released, reason = False, f"gate passed on {', '.join(validated)}, but a random-init stand-in is never released"
    gated = gate["artifacts"].get(name, {}).get("devices", {})  # with the metrics relative to the reference
    metrics = {d: {**r.get("metrics", {}), **gated.get(d, {}).get("metrics", {})} for d, r in record["devices"].items()}
    keys = family.report_metrics(params) + [k for k in PERFORMANCE if any(k in m for m in metrics.values())]
    infos = [r.get("info") for r in record["devices"].values() if r.get("info")]
    return {"released": released, "reason": reason, "validated_on": validated, "pairs": [],
            "metric_keys": [PERFORMANCE[k][0] if k in PERFORMANCE else k for k in keys],
            "devices": [{"device": d, "name": r.get("device_name"), "status": r["status"], "reason": r.get("reason"),
                         "cells": [fmt(metrics[d].get(k)) for k in keys]} for d, r in record["devices"].items()],
            "eval_info": infos[0] if infos else "not run", "precision": record.get("inference_precision"),
            "runtime_software": record.get("software", {}),
            "adapters": [{"name": c, "metrics": {k: fmt(v) for k, v in m.items()}}
                         for c, m in by_adapter(record.get("metrics", {})).items()], "adapters_device": record.get("device"),
            "usage": family.usage.format(path=name.replace("/", "-"), device=params.variants[variant].target)}


def draft_validation(params: Params, gate: dict, name: str) -> dict:
    """Card context and release decision of a draft: released when a pair using it was validated and passed."""
    rows, served = [], []
    for pair_name, pair in ((n, p) for n, p in params.pairs.items() if p.draft == name):
        rec = gate["artifacts"].get(f"pair:{pair_name}", {"status": "missing", "metrics": {}})
        m = rec["metrics"]
        rows.append({"name": pair_name, "main": pair.main, "devices": rec.get("device") or "-",
                     "status": rec["status"], "output_match": fmt(m.get("output_match")),
                     "acceptance": fmt(m.get("acceptance_rate"), ".3f"), "speedup": fmt(m.get("tpot_speedup"), ".2f")})
        if rec["status"] == "validated" and not failed_rows(gate, f"pair:{pair_name}"):
            served.append((pair_name, pair, rec.get("device") or "CPU"))
    reason = f"validated as the draft of {', '.join(p for p, _, _ in served)}" if served else \
        "no validated pair uses it" + (f" ({', '.join(r['name'] + ': ' + r['status'] for r in rows)})" if rows else "")
    device = served[0][2].split("+")[-1] if served else "CPU"
    main = served[0][1].main.replace("/", "-") if served else "<main>"
    return {"released": bool(served), "reason": reason, "validated_on": sorted({d for *_, d in served}),
            "pairs": rows, "metric_keys": [], "devices": [], "eval_info": "", "precision": "",
            "runtime_software": {}, "adapters": [], "adapters_device": None, "usage": DRAFT_USAGE.format(main=main, path=name.replace("/", "-"),
                                                                 device=device)}


def card(params: Params, gate: dict, model: str, variant: str, role: str = "main") -> tuple[str, dict]:
    """The card text and the artifact's manifest entry; `role` is main (an llm/whisper build) or draft."""
    name = f"{model}/{variant}"
    spec, recipe = params.spec(model), params.variants[variant]
    family = get_family(spec.family)
    manifest = read_json(artifact_dir(model, variant) / "manifest.json")
    ctx = main_validation(params, gate, model, variant) if role == "main" else draft_validation(params, gate, name)
    text_base, hub_id = base_model(manifest["source"])
    tags = ["openvino", "nncf", recipe.weight_format, *[t.lower() for t in recipe.targets]] + \
        (["speculative-decoding", "draft"] if role == "draft" else [])
    front = {"license": spec.license or "other", **({"base_model": hub_id, "base_model_relation": "quantized"}
                                                     if hub_id else {}),
             "library_name": "openvino", "pipeline_tag": family.pipeline_tag, "tags": tags}
    text = CARD.render(
        **ctx, front_matter=yaml.safe_dump(front, sort_keys=False), name=name, base=text_base,
        source=manifest["source"], summary=f"OpenVINO IR of {text_base}, weights compressed to "
                                           f"{recipe.weight_format} for {', '.join(recipe.targets)}.",
        note=spec.note, license=spec.license, variant=variant, recipe=recipe_label(recipe),
        rt_info=manifest.get("rt_info", {}), bitwidths=manifest["weight_bitwidths"],
        size_mb=manifest["size_bytes"] / 1e6, gate_mode=gate["mode"],
        export_software=versions(manifest.get("software", {})), runtime_versions=versions(ctx["runtime_software"]))
    entry = {"name": name, "family": family.name, "role": role, "released": ctx["released"],
             "reason": ctx["reason"], "targets": recipe.targets, "validated_on": ctx["validated_on"],
             "path": artifact_dir(model, variant).as_posix(), "size_bytes": manifest["size_bytes"],
             "source": manifest["source"], "files": verified_files(model, variant, manifest)}
    return text, entry


def versions(packages: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in packages.items()) or "not recorded"


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
    artifacts = [(m, v, "main") for b in params.builds().values() for m in b.models for v in b.variants] + \
        [(m, v, "draft") for m in params.drafts.models for v in params.drafts.variants]
    with atomic_dir(RELEASE) as tmp:
        for model, variant, role in artifacts:
            text, entry = card(params, gate, model, variant, role)
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
