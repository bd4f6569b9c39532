"""Stage release: a model card per artifact (README.md with YAML front matter, in the style of the OpenVINO hub
cards) and release/manifest.json listing every artifact with its files' sha256, re-checked on disk.

    python -m stages.release                  (pipeline stage: writes release/)
    python -m stages.release --bundle DIR     (also assemble upload-ready folders: artifact files + card)

An artifact is released when the gate has no failing row for it and it was validated on at least one target device
(in dev mode with gate.accept_emulated, an emulated target counts, labelled as such). A random-init stand-in is
never released. A draft is released when a pair using it was validated and passed the gate. Cards carry accuracy,
the rules applied and the worst examples; no timings (they depend on the host; the report has them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jinja2
import yaml

from stages.check_params import family_settings, load_checked_stage_params
from stages.core.errors import BuildError, run_stage
from stages.core.formatting import LEVELS, by_adapter, example_text, fmt, recipe_label
from stages.core.io import atomic_dir, file_inventory, read_json, read_yaml, write_json, write_text
from stages.core.paths import GATE_PATH, RELEASE, SOURCE, artifact_dir, reference_path, split_artifact, validation_path
from stages.core.runtime import log, setup_logging
from stages.core.schema import TinySource, Variant
from stages.core.tokenizers import describe_mismatch
from stages.families import get_family
from stages.params import Params, stage_parser

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
DRAFT_USAGE = """import openvino_genai as ov_genai

pipe = ov_genai.LLMPipeline("{main}", "{device}", draft_model=ov_genai.draft_model("{path}", "{device}"))
config = ov_genai.GenerationConfig(max_new_tokens=100, num_assistant_tokens=3)
print(pipe.generate("What is OpenVINO?", config))"""


def base_model(source: dict) -> tuple[str, str | None]:
    """(how to name the base model in text, its hub id for the front matter if it has one)."""
    src = source.get("source") or {}
    if src.get("type") == "hub":
        return f"[{src['repo_id']}](https://huggingface.co/{src['repo_id']})", src["repo_id"]
    if src.get("type") == "derived":
        how = f" and distilled from `{src.get('teacher') or src['base']}`" if src.get("distill") else ""
        return f"the first {src['keep_layers']} decoder layers of `{src['base']}`{how}", None
    where = src.get("path") or ", ".join(src.get("parts") or src.get("model_files") or []) or src.get("kind", "")
    return f"{src.get('type', 'local')} `{where}`", None


def rows_of(gate: dict, name: str) -> list[dict]:
    return [r for r in gate["rows"] if r["artifact"] == name]


def release_decision(params: Params, gate: dict, artifact: str, record: dict) -> tuple[bool, str]:
    failed = [r for r in rows_of(gate, artifact) if r["status"] == "fail"]
    if failed:
        return False, "gate failed: " + ", ".join(dict.fromkeys(f"{r['metric']} on {r['device']}" for r in failed))
    ran = {d: r["status"] for d, r in record["devices"].items()}
    validated = [d for d, s in ran.items() if s == "validated"]
    emulated = [d for d, s in ran.items() if s == "emulated"]
    if validated:
        decision = True, f"gate passed on {', '.join(validated)}"
    elif emulated and params.gate.mode == "dev" and params.gate.accept_emulated:
        decision = True, f"gate passed on {', '.join(emulated)} (emulated, accepted for this dev build)"
    elif emulated:
        decision = False, f"only emulated on {', '.join(emulated)} (not validated on a real target device)"
    else:
        decision = False, "not validated on any target device"
    source = params.spec(split_artifact(artifact)[0]).source
    if decision[0] and isinstance(source, TinySource):
        what = f"a model of the synthetic '{source.world}' world" if source.world else "a random-init stand-in"
        return False, decision[1] + f", but {what} is never released"
    return decision


def device_rows(record: dict, gated: dict, keys: list[str]) -> list[dict]:
    rows = []
    for device, r in record["devices"].items():
        g = gated.get("devices", {}).get(device, {})
        values = {
            **r.get("metrics", {}),
            **{f"{k} vs {a}": v for a, vs in g.get("vs", {}).items() for k, v in vs.items()},
        }
        level = LEVELS.get(r["status"], r["status"]) + (f" ({r['emulation']['label']})" if "emulation" in r else "")
        rows.append(
            {"device": device, "level": level, "reason": r.get("reason"), "cells": [fmt(values.get(k)) for k in keys]}
        )
    return rows


def card_keys(family, settings, gated: dict, reference_variant: str) -> list[str]:
    keys = [k for k in family.report_metrics(settings) if k not in family.comparison_metrics]
    keys += [
        f"{k} vs {a}"
        for a in (SOURCE, reference_variant)
        for k in family.comparison_metrics
        if any(k in d.get("vs", {}).get(a, {}) for d in gated.get("devices", {}).values())
    ]
    return keys


def drafts_of(params: Params, gate: dict, artifact: str) -> list[dict]:
    found = []
    for name, pair in params.speculative_entries().items():
        rec = gate["artifacts"].get(f"pair:{name}", {})
        if (
            pair.main == artifact
            and rec.get("status") == "validated"
            and not [r for r in rows_of(gate, f"pair:{name}") if r["status"] == "fail"]
        ):
            found.append(
                {
                    "pair": name,
                    "draft": getattr(pair, "draft", "prompt lookup"),
                    "output_match": fmt(rec["metrics"].get("output_match")),
                    "acceptance": fmt(rec["metrics"].get("acceptance_rate"), ".3f"),
                    "setting": ", ".join(f"{k}={v}" for k, v in (rec.get("best_setting") or {}).items()),
                }
            )
    return found


def main_context(params: Params, gate: dict, artifact: str) -> dict:
    """Card context and release decision of a main artifact, from its validation record and gate rows."""
    model, variant = split_artifact(artifact)
    family = get_family(params.family_of(model))
    settings = family_settings(params, family.name)
    record = read_json(validation_path(artifact), "validation record")
    gated = gate["artifacts"].get(artifact, {})
    released, reason = release_decision(params, gate, artifact, record)
    keys = card_keys(family, settings, gated, settings.reference)
    source = read_json(reference_path(model), "source reference") if reference_path(model).is_file() else {}
    worst = [example_text(x) for d in gated.get("devices", {}).values() for x in d.get("worst", {}).get(SOURCE, [])]
    infos = [r.get("info") for r in record["devices"].values() if r.get("info")]
    return {
        "released": released,
        "reason": reason,
        "pairs": [],
        "metric_keys": keys,
        "devices": device_rows(record, gated, keys),
        "source_metrics": ", ".join(f"{k} {fmt(v)}" for k, v in source.get("metrics", {}).items()) or "missing",
        "rules": [{**r, "value": fmt(r["value"])} for r in rows_of(gate, artifact)],
        "worst": list(dict.fromkeys(worst))[:5],
        "eval_info": infos[0] if infos else "not run",
        "precision": record.get("inference_precision"),
        "runtime_software": record.get("software", {}),
        "adapters": [
            {"name": c, "metrics": {k: fmt(v) for k, v in m.items()}}
            for c, m in by_adapter(
                gated.get("devices", {}).get(record.get("device") or "", {}).get("metrics", {})
            ).items()
        ],
        "adapters_device": record.get("device"),
        "drafts": drafts_of(params, gate, artifact),
        "validated_on": [d for d, r in record["devices"].items() if r["status"] in ("validated", "emulated")],
        "usage": family.usage.format(path=artifact.replace("/", "-"), device=params.variants[variant].target),
    }


def draft_context(params: Params, gate: dict, artifact: str) -> dict:
    """Card context and release decision of a draft: released when a pair using it was validated and passed."""
    rows, served = [], []
    for pair_name, pair in ((n, p) for n, p in params.pairs.items() if p.draft == artifact):
        rec = gate["artifacts"].get(f"pair:{pair_name}", {"status": "missing", "metrics": {}})
        m = rec.get("metrics", {})
        rows.append(
            {
                "name": pair_name,
                "main": pair.main,
                "devices": rec.get("device") or "-",
                "status": rec["status"],
                "output_match": fmt(m.get("output_match")),
                "acceptance": fmt(m.get("acceptance_rate"), ".3f"),
                "setting": ", ".join(f"{k}={v}" for k, v in (rec.get("best_setting") or {}).items()) or "-",
            }
        )
        if rec["status"] == "validated" and not [
            r for r in rows_of(gate, f"pair:{pair_name}") if r["status"] == "fail"
        ]:
            served.append((pair_name, pair, rec.get("device") or "CPU"))
    reason = (
        f"validated as the draft of {', '.join(p for p, _, _ in served)}"
        if served
        else "no validated pair uses it"
        + (f" ({', '.join(r['name'] + ': ' + r['status'] for r in rows)})" if rows else "")
    )
    device = served[0][2].split("+")[-1] if served else "CPU"
    main = served[0][1].main.replace("/", "-") if served else "<main>"
    return {
        "released": bool(served),
        "reason": reason,
        "validated_on": sorted({d for *_, d in served}),
        "pairs": rows,
        "metric_keys": [],
        "devices": [],
        "eval_info": "",
        "precision": "",
        "rules": [],
        "worst": [],
        "source_metrics": "",
        "runtime_software": {},
        "adapters": [],
        "adapters_device": None,
        "drafts": [],
        "usage": DRAFT_USAGE.format(main=main, path=artifact.replace("/", "-"), device=device),
    }


def parity_text(parity: dict) -> str:
    """The export's tokenizer parity as a card line: probes matched, and the first difference if any."""
    folders = (parity.get("folders") or {}).values()
    if not folders:
        return ""
    matching, probes = sum(f["matching"] for f in folders), sum(f["probes"] for f in folders)
    first = next((m for f in folders for m in f["mismatches"]), None)
    return f"{matching} of {probes} probes identical" + (
        f"; first difference: {describe_mismatch(first)}" if first else ""
    )


SEARCH_CHOSEN = Path("search") / "chosen"


def search_evidence(model: str, variant_name: str, recipe: Variant) -> str | None:
    """When the variant is a recipe search's choice pasted unchanged (search/chosen/<name>.yaml): what the card says
    of the search (budget, the choice, the runners-up)."""
    path = SEARCH_CHOSEN / f"{variant_name}.yaml"
    if not path.is_file():
        return None
    data = read_yaml(path) or {}
    ev = data.get("search") or {}
    chosen = (data.get("variants") or {}).get(variant_name)
    if ev.get("model") != model or chosen is None or Variant.model_validate(chosen) != recipe:
        return None
    budget, metric = ev["budget"], ev["budget"]["metric"]

    def one(r):
        return f"{recipe_label(Variant.model_validate({**r['recipe'], 'target': ev['target']}))}: {metric} {fmt(r[metric])}, {r['size_bytes'] / 1e6:.1f} MB"

    lines = [
        f"Chosen by recipe search `{variant_name}` (`make search`): the smallest of {ev['candidates']} candidates "
        f"within the budget {budget['bound']}, the source checkpoint in PyTorch having {fmt(budget['source'])}; "
        f"this recipe: {one(ev['chosen'])}.",
        *(
            ["Runners-up (larger, also within budget):"] + [f"- {one(r)}" for r in ev["runners_up"]]
            if ev["runners_up"]
            else []
        ),
    ]
    return "\n".join(lines)


def card(params: Params, gate: dict, artifact: str, role: str) -> tuple[str, dict]:
    """The card text and the artifact's manifest entry; `role` is main (in build) or draft."""
    model, variant = split_artifact(artifact)
    spec, recipe = params.spec(model), params.variants[variant]
    family = get_family(spec.family)
    manifest = read_json(artifact_dir(artifact) / "manifest.json", "export manifest")
    ctx = main_context(params, gate, artifact) if role == "main" else draft_context(params, gate, artifact)
    text_base, hub_id = base_model(manifest["source"])
    tags = ["openvino", "nncf", recipe.weight_format, *[t.lower() for t in recipe.targets]] + (
        ["speculative-decoding", "draft"] if role == "draft" else []
    )
    front = {
        "license": spec.license or "other",
        **({"base_model": hub_id, "base_model_relation": "quantized"} if hub_id else {}),
        "library_name": "openvino",
        "pipeline_tag": family.pipeline_tag,
        "tags": tags,
    }
    parity = manifest.get("tokenizer_parity") or {}
    text = TEMPLATES.get_template("card.md.j2").render(
        **ctx,
        front_matter=yaml.safe_dump(front, sort_keys=False),
        name=artifact,
        base=text_base,
        source=manifest["source"],
        summary=f"OpenVINO IR of {text_base}, weights compressed to "
        f"{recipe.weight_format} for {', '.join(recipe.targets)}.",
        note=spec.note,
        license=spec.license,
        variant=variant,
        recipe=recipe_label(recipe),
        search=search_evidence(model, variant, recipe),
        rt_info=manifest.get("rt_info", {}),
        bitwidths=manifest["weight_bitwidths"],
        size_mb=manifest["size_bytes"] / 1e6,
        gate_mode=gate["mode"],
        tokenizer=parity_text(parity),
        npu=recipe.npu.model_dump() if recipe.npu else None,
        export_software=versions(manifest.get("software", {})),
        runtime_versions=versions(ctx["runtime_software"]),
    )
    entry = {
        "name": artifact,
        "family": family.name,
        "role": role,
        "released": ctx["released"],
        "reason": ctx["reason"],
        "targets": recipe.targets,
        "validated_on": ctx["validated_on"],
        "path": artifact_dir(artifact).as_posix(),
        "size_bytes": manifest["size_bytes"],
        "source": manifest["source"],
        "files": verified_files(artifact, manifest),
    }
    return text, entry


def versions(packages: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in packages.items()) or "not recorded"


def verified_files(artifact: str, manifest: dict) -> list[dict]:
    """The artifact's files as they are on disk now; they must match the export manifest's inventory."""
    on_disk = file_inventory(artifact_dir(artifact))
    if on_disk != manifest["files"]:
        changed = sorted(
            {f["path"] for f in on_disk} ^ {f["path"] for f in manifest["files"]}
            | {a["path"] for a, b in zip(on_disk, manifest["files"]) if a != b}
        )
        raise BuildError(
            f"{artifact_dir(artifact)}: files differ from its export manifest ({changed[:5]}); "
            "re-run `dvc repro` (or `dvc checkout`)"
        )
    return on_disk


def release(params: Params) -> dict:
    gate = read_json(GATE_PATH, "gate summary (run `dvc repro gate`)")
    entries = []
    with atomic_dir(RELEASE) as tmp:
        for artifact, role in [(a, "main") for a in params.build] + [(a, "draft") for a in params.drafts]:
            text, entry = card(params, gate, artifact, role)
            card_path = Path(artifact) / "README.md"
            write_text(tmp / card_path, text)
            entries.append({**entry, "card": (RELEASE / card_path).as_posix()})
        manifest = {
            "gate_mode": gate["mode"],
            "gate_passed": gate["passed"],
            "released": sum(e["released"] for e in entries),
            "withheld": sum(not e["released"] for e in entries),
            "artifacts": entries,
        }
        write_json(tmp / "manifest.json", manifest)
    log.info(
        "release: %d artifact(s) released, %d withheld (cards and manifest in %s/)",
        manifest["released"],
        manifest["withheld"],
        RELEASE,
    )
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
    manifest = release(load_checked_stage_params(args))
    if args.bundle:
        bundle(manifest, args.bundle)
    return 0


if __name__ == "__main__":
    run_stage(main)
