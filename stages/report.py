"""Stage report (perf/dvc.yaml): reports/summary.md and one self-contained reports/index.html, both rendered from
jinja2 templates: the verdict first (gate, released / withheld and why, what failed where), then per family the
source row and every artifact, the examples that moved most, speculative pairs, performance per device, plots
(labelled model/variant), contact sheets (source beside artifact) and the build's wall time per stage. Also the DVC
plot data in metrics/plots/ (`dvc plots show`).

    python -m stages.report
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import jinja2
from markupsafe import Markup

from stages.check_params import family_settings, load_checked_stage_params
from stages.core.errors import TIMINGS_ENV, run_stage
from stages.core.formatting import LEVELS, PERFORMANCE, by_adapter, example_text, fmt, gate_status, recipe_label
from stages.core.io import read_json, write_json, write_text
from stages.core.paths import (
    GATE_PATH,
    METRICS,
    RELEASE,
    REPORTS,
    SOURCE,
    artifact_dir,
    device_outputs_dir,
    pair_metrics_path,
    pair_performance_path,
    performance_path,
    reference_path,
    source_outputs_dir,
    split_artifact,
)
from stages.core.runtime import setup_logging
from stages.core.schema import TinySource, Variant
from stages.families import get_family
from stages.params import Params, stage_parser
from stages.runner import CONTACT_SHEET

SUMMARY_PATH, HTML_PATH = REPORTS / "summary.md", REPORTS / "index.html"
PLOTS_DIR = METRICS / "plots"
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)
NOTES = [
    "Levels: validated = on the target device; emulated = the target's software path with its compute on "
    "another device (e.g. openvino-genai's NPU pipeline through NPUW on CPU), never a pass on the device; "
    "proxy = measured on another device because no target could run it (not gated).",
    "vs source: against the checkpoint run in PyTorch fp32 on the same inputs; vs <variant>: against that "
    "variant on the same device (or its primary device, said in the gate note).",
    "Performance: after one warm-up, on fixed inputs, in a fresh process (peak RSS is that process's).",
    "(random-init): a tiny model built in code because no such weights exist offline; its metrics exercise the "
    "pipeline and say nothing about a real model's accuracy.",
    "(shapes world): a tiny model trained here on synthetic captioned shapes (stages/core/shapes.py); its metrics "
    "can fail, but only say how well it learned that world.",
]


def optional_json(path: Path) -> dict:
    return read_json(path) if Path(path).is_file() else {}


def verdict(gate: dict, release: dict) -> dict:
    failed = [r for r in gate["rows"] if r["status"] == "fail"]
    return {
        "passed": gate["passed"],
        "mode": gate["mode"],
        "counts": gate["counts"],
        "failed": [{**r, "value": fmt(r["value"])} for r in failed],
        "released": [a for a in release.get("artifacts", []) if a["released"]],
        "withheld": [a for a in release.get("artifacts", []) if not a["released"]],
    }


def family_section(params: Params, gate: dict, family_name: str) -> dict:
    family = get_family(family_name)
    settings = family_settings(params, family_name)
    shown = family.report_metrics(settings)
    direct = [k for k in shown if k not in family.comparison_metrics]
    compared = [f"{k} vs {a}" for a in (SOURCE, settings.reference) for k in family.comparison_metrics if k in shown]
    rows = []
    for model in params.models_of(family_name):
        source = optional_json(reference_path(model))
        rows.append(
            {
                "name": f"{model}/{SOURCE}",
                "recipe": "PyTorch fp32",
                "targets": "-",
                "size": "-",
                "device": "PyTorch CPU",
                "level": LEVELS.get(source.get("status"), "missing"),
                "cells": [fmt(source.get("metrics", {}).get(k)) for k in direct] + ["-"] * len(compared),
                "gate": "reference",
                "random_init": False,
                "world": None,
            }
        )
        for artifact in (a for a in params.artifacts_of(family_name) if split_artifact(a)[0] == model):
            rows += artifact_rows(params, gate, artifact, direct, compared)
    return {
        "name": family_name,
        "columns": direct + compared,
        "rows": rows,
        "worst": worst_examples(params, gate, family_name),
    }


def artifact_rows(params: Params, gate: dict, artifact: str, direct: list[str], compared: list[str]) -> list[dict]:
    model, variant = split_artifact(artifact)
    gated = gate["artifacts"].get(artifact, {})
    manifest = optional_json(artifact_dir(artifact) / "manifest.json")
    recipe = params.variants[variant]
    base = {
        "recipe": recipe_label(recipe),
        "targets": ", ".join(recipe.targets),
        "size": fmt(manifest.get("size_bytes", 0) / 1e6, ".1f"),
        "gate": gate_status(gate["rows"], artifact),
        "random_init": isinstance(source := params.spec(model).source, TinySource) and not source.world,
        "world": getattr(source, "world", None),
    }
    rows = []
    for device, d in gated.get("devices", {}).items():
        values = {
            **d.get("metrics", {}),
            **{f"{k} vs {a}": v for a, vs in d.get("vs", {}).items() for k, v in vs.items()},
        }
        rows.append(
            {
                **base,
                "name": artifact,
                "device": device,
                "level": LEVELS.get(d["status"], d["status"]),
                "cells": [fmt(values.get(k)) for k in direct + compared],
            }
        )
    return rows


def worst_examples(params: Params, gate: dict, family_name: str) -> list[dict]:
    out = []
    for artifact in params.artifacts_of(family_name):
        for device, d in gate["artifacts"].get(artifact, {}).get("devices", {}).items():
            examples = [example_text(x) for x in d.get("worst", {}).get(SOURCE, [])]
            if examples:
                out.append({"artifact": artifact, "device": device, "examples": examples[:3]})
    return out


def adapter_rows(params: Params, gate: dict) -> list[dict]:
    rows = []
    for artifact in params.build:
        for device, d in gate["artifacts"].get(artifact, {}).get("devices", {}).items():
            for choice, m in by_adapter(d.get("metrics", {})).items():
                rows.append(
                    {
                        "artifact": artifact,
                        "device": device,
                        "adapter": choice,
                        "metrics": {k: fmt(v) for k, v in m.items()},
                    }
                )
    return rows


def performance_rows(params: Params) -> list[dict]:
    rows = []
    for artifact in params.build:
        for device, d in optional_json(performance_path(artifact)).get("devices", {}).items():
            rows.append(
                {
                    "artifact": artifact,
                    "device": f"{device} ({d['level']})",
                    "hardware": d["hardware"],
                    "cells": {k: fmt(d["metrics"].get(k), PERFORMANCE[k][1]) for k in PERFORMANCE},
                }
            )
    keys = [k for k in PERFORMANCE if any(r["cells"][k] != "-" for r in rows)]
    return [{**r, "cells": [r["cells"][k] for k in keys]} for r in rows], [PERFORMANCE[k][0] for k in keys]


def pair_rows(params: Params, gate: dict) -> list[dict]:
    rows = []
    for name in params.speculative_entries():
        acc, speed = optional_json(pair_metrics_path(name)), optional_json(pair_performance_path(name))
        m, s = acc.get("metrics", {}), speed.get("metrics", {})
        rows.append(
            {
                "name": name,
                "main": f"{acc.get('main', '-')} on {acc.get('main_device', '-')}",
                "draft": f"{acc.get('draft', '-')} on {acc.get('draft_device', '-')}",
                "status": acc.get("status", "missing"),
                "output_match": fmt(m.get("output_match")),
                "acceptance": fmt(m.get("acceptance_rate"), ".3f"),
                "tokens_per_step": fmt(m.get("tokens_per_step"), ".2f"),
                "setting": ", ".join(f"{k}={v}" for k, v in (acc.get("best_setting") or {}).items()) or "-",
                "tpot_main": fmt(speed.get("baseline", {}).get("tpot_ms"), ".1f"),
                "speedup": fmt(s.get("tpot_speedup"), ".2f"),
                "speed_setting": ", ".join(f"{k}={v}" for k, v in (speed.get("best_setting") or {}).items())
                or speed.get("reason", "-"),
                "gate": gate_status(gate["rows"], f"pair:{name}"),
                "problems": acc.get("problems", []),
                "sweep": speed.get("sweep") or acc.get("sweep", []),
            }
        )
    return rows


def plot_points(params: Params, gate: dict, family_name: str, metric: str, perf: bool) -> list[dict]:
    points = []
    for artifact in params.artifacts_of(family_name):
        manifest = optional_json(artifact_dir(artifact) / "manifest.json")
        devices = (
            optional_json(performance_path(artifact)).get("devices", {})
            if perf
            else gate["artifacts"].get(artifact, {}).get("devices", {})
        )
        for device, d in devices.items():
            if metric in d.get("metrics", {}) and isinstance(d["metrics"][metric], (int, float)):
                points.append(
                    {
                        "family": family_name,
                        "artifact": artifact,
                        "device": device,
                        "label": f"{artifact} ({device})",
                        "metric": metric,
                        "size_mb": round(manifest.get("size_bytes", 0) / 1e6, 2),
                        "value": d["metrics"][metric],
                    }
                )
    return points


def plot_svg(points: list[dict], title: str) -> Markup:
    """A scatter of value vs size, each point labelled model/variant (device), as inline SVG whose labels stay text
    (searchable, and readable by the browser test); deterministic (no date, fixed ids) so the page only changes
    when the numbers do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": title}):
        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
        for p in points:
            ax.scatter(p["size_mb"], p["value"])
            ax.annotate(p["label"], (p["size_mb"], p["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(title=title, xlabel="artifact size (MB)", ylabel=points[0]["metric"])
        ax.grid(alpha=0.3)
        buf = io.StringIO()
        fig.tight_layout()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buf.getvalue()
    return Markup(svg[svg.index("<svg") :])  # inline: without the XML declaration and DOCTYPE


def plots(params: Params, gate: dict) -> list[dict]:
    figures, data = [], {"accuracy": [], "latency": []}
    for family_name in params.built_families():
        family = get_family(family_name)
        accuracy = family.report_metrics(family_settings(params, family_name))[0]
        for kind, metric, perf in (("accuracy", accuracy, False), ("latency", family.latency_metric, True)):
            points = plot_points(params, gate, family_name, metric, perf)
            data[kind] += points
            if points:
                title = f"{family_name}: {metric} vs size"
                figures.append(
                    {"family": family_name, "metric": metric, "title": title, "svg": plot_svg(points, title)}
                )
    for kind, points in data.items():
        write_json(PLOTS_DIR / f"{kind}_vs_size.json", points)
    return figures


def contact_sheets(params: Params, gate: dict) -> list[dict]:
    """Per artifact with images: the source's contact sheet beside the artifact's (same prompts and seeds)."""
    sheets = []
    for artifact in params.build:
        model = split_artifact(artifact)[0]
        for device in gate["artifacts"].get(artifact, {}).get("devices", {}):
            path = device_outputs_dir(artifact, device) / CONTACT_SHEET
            if path.is_file():
                source = source_outputs_dir(model) / CONTACT_SHEET
                sheets.append(
                    {
                        "artifact": artifact,
                        "device": device,
                        "png": b64(path),
                        "source_png": b64(source) if source.is_file() else None,
                        "path": path.as_posix(),
                        "source_path": source.as_posix(),
                    }
                )
    return sheets


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def stage_times() -> list[dict]:
    """Wall time per stage of the last runs (the stage wrapper appends them to the timing log)."""
    path = Path(os.environ.get(TIMINGS_ENV, ".ovbuild/timings.jsonl"))
    last: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            last[entry["stage"]] = entry
    rows = sorted(last.values(), key=lambda e: -e["seconds"])
    return [{**e, "minutes": f"{e['seconds'] / 60:.1f}"} for e in rows]


def searches() -> list[dict]:
    """The recipe searches run here (`make search`): choice, counts and the Pareto plot."""
    rows = []
    for path in sorted((METRICS / "search").glob("*.json")):
        result = read_json(path, "search result")
        chosen, metric = result.get("chosen"), result["budget"]["metric"]
        svg = path.with_name(f"{path.stem}-pareto.svg")
        rows.append(
            {
                **result,
                "limit": fmt(result["budget"]["limit"]),
                "choice": f"{recipe_label(Variant.model_validate({**chosen['recipe'], 'target': result['target']}))}: "
                f"{metric} {fmt(chosen['metrics'][metric])}, {chosen['size_bytes'] / 1e6:.1f} MB"
                if chosen
                else result["verdict"],
                "svg": Markup(svg.read_text()[svg.read_text().index("<svg") :]) if svg.is_file() else None,
            }
        )
    return rows


def context(params: Params) -> dict:
    gate = read_json(GATE_PATH, "gate summary (run `dvc repro gate`)")
    release = optional_json(RELEASE / "manifest.json")
    perf, perf_columns = performance_rows(params)
    return {
        "verdict": verdict(gate, release),
        "families": [family_section(params, gate, f) for f in params.built_families()],
        "adapters": adapter_rows(params, gate),
        "pairs": pair_rows(params, gate),
        "performance": perf,
        "performance_columns": perf_columns,
        "plots": plots(params, gate),
        "searches": searches(),
        "sheets": contact_sheets(params, gate),
        "times": stage_times(),
        "notes": NOTES,
    }


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    ctx = context(load_checked_stage_params(args))
    markdown = TEMPLATES.get_template("report.md.j2").render(**ctx)
    write_text(SUMMARY_PATH, markdown)
    write_text(HTML_PATH, TEMPLATES.get_template("report.html.j2").render(**ctx))
    print(markdown)


if __name__ == "__main__":
    run_stage(main)
