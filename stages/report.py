"""Stage report: a Markdown summary and one self-contained HTML page of every artifact, and DVC plot data
(accuracy vs size and latency vs size, per family).

    python -m stages.report
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from tabulate import tabulate

from stages.common import METRICS, artifact_dir, read_json, setup_logging, validation_plot_path, write_json, write_text
from stages.families import get_family
from stages.gate import GATE_PATH
from stages.params import Params, TinySource, Variant, load_stage_params, stage_parser
from stages.speculative import pair_metrics_path

REPORT_PATH = Path("reports") / "summary.md"
HTML_PATH = Path("reports") / "index.html"
PLOTS_DIR = METRICS / "plots"
PERFORMANCE = {  # metric: (column title, number format)
    "load_s": ("load+compile s", ".2f"), "ttft_ms": ("TTFT ms", ".1f"), "tpot_ms": ("TPOT ms", ".2f"),
    "throughput_tok_s": ("tokens/s", ".1f"), "rtf": ("RTF", ".3f"), "image_s": ("s/image", ".3f"), "peak_rss_mb": ("peak RSS MB", ".0f")}


def recipe_label(v: Variant) -> str:
    if v.weight_format == "fp16":
        return "fp16"
    parts = [v.weight_format, "sym" if v.sym else "asym"]
    if v.weight_format == "int4":
        parts.append("channel-wise" if v.group_size == -1 else f"g{v.group_size}")
        if v.ratio is not None and v.ratio < 1:
            parts.append(f"r{v.ratio:g}")
        parts += [n for n, on in (("awq", v.awq), ("se", v.scale_estimation)) if on]
    if v.dataset:  # data-aware (LLM) or hybrid (text-to-image) compression
        parts.append(f"calibrated on {v.dataset}")
    return " ".join(parts)


def fmt(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec)


def gate_status(gate: dict, name: str) -> str:
    """FAIL, or which devices passed and which were not validated, e.g. "pass (CPU); not validated: GPU"."""
    rows = [r for r in gate["rows"] if r["artifact"] == name]
    by_status = {s: sorted({r["device"] for r in rows if r["status"] == s}) for s in ("fail", "pass", "not_validated")}
    if by_status["fail"]:
        return f"FAIL ({', '.join(by_status['fail'])})"
    parts = [f"pass ({', '.join(by_status['pass'])})"] if by_status["pass"] else []
    if by_status["not_validated"]:
        parts.append(f"NOT VALIDATED: {', '.join(by_status['not_validated'])}")
    return "; ".join(parts) or "no rule"


def artifact_rows(params: Params, gate: dict) -> list[dict]:
    rows = []
    for family, build in params.builds().items():
        for model in build.models:
            for variant in build.variants:
                name = f"{model}/{variant}"
                record = read_json(METRICS / "validate" / model / f"{variant}.json")
                proxy = record.get("proxy")
                rows.append({
                    "artifact": name, "family": family, "targets": record.get("targets", []), "model": model,
                    "variant": variant, "random_init": isinstance(params.spec(model).source, TinySource),
                    "recipe": recipe_label(params.variants[variant]),
                    "size_mb": read_json(artifact_dir(model, variant) / "manifest.json")["size_bytes"] / 1e6,
                    "status": record["status"], "gate": gate_status(gate, name),
                    "metrics": gate["artifacts"].get(name, {}).get("metrics", {}), "device": record.get("device"),
                    "devices": record.get("devices", {}),
                    "proxy_metrics": proxy["metrics"] if proxy else {}, "proxy_device": proxy and proxy["device"],
                })
    return rows


def metric_cell(row: dict, key: str) -> str:
    if key in row["metrics"]:
        return fmt(row["metrics"][key])
    if key in row["proxy_metrics"]:
        return f"({fmt(row['proxy_metrics'][key])} on {row['proxy_device']})"
    return "-"


def family_table(rows: list[dict], keys: list[str], tablefmt: str = "github") -> str:
    return tabulate([[r["artifact"] + (" (random-init)" if r["random_init"] else ""), r["recipe"], ", ".join(r["targets"]), f"{r['size_mb']:.1f}",
                      *[metric_cell(r, k) for k in keys], r["status"], r["gate"]] for r in rows],
                    headers=["artifact", "recipe", "targets", "size MB", *keys, "validation", "gate"],
                    tablefmt=tablefmt)


def performance_table(rows: list[dict], tablefmt: str = "github") -> str:
    """One row per artifact and target device (a proxy measurement in parentheses)."""
    measured = [(r["artifact"], d, res.get("metrics", {})) for r in rows for d, res in r["devices"].items()]
    measured += [(r["artifact"], f"({r['proxy_device']}, proxy)", r["proxy_metrics"]) for r in rows
                 if r["proxy_device"]]
    keys = [k for k in PERFORMANCE if any(k in m for _, _, m in measured)]
    return tabulate([[name, device, *[fmt(m.get(k), PERFORMANCE[k][1]) for k in keys]]
                     for name, device, m in measured],
                    headers=["artifact", "device", *[PERFORMANCE[k][0] for k in keys]], tablefmt=tablefmt,
                    disable_numparse=True)


def pair_section(params: Params, gate: dict) -> str:
    """Speculative decoding: one row per pair, then each validated pair's sweep and each refusal's diff."""
    rows, details = [], []
    for name in params.pairs:
        path = pair_metrics_path(name)
        rec = read_json(path) if path.is_file() else {}
        m = rec.get("metrics", {})
        rows.append([name, f"{rec.get('main', '-')} on {rec.get('main_device', '-')}",
                     f"{rec.get('draft', '-')} on {rec.get('draft_device', '-')}", rec.get("status", "missing"),
                     fmt(m.get("output_match")), fmt(m.get("acceptance_rate"), ".3f"),
                     fmt(m.get("tpot_ms_main"), ".1f"), fmt(m.get("tpot_ms_speculative"), ".1f"),
                     fmt(m.get("tpot_speedup"), ".2f"), gate_status(gate, f"pair:{name}")])
        if rec.get("status") == "refused":
            details.append(f"**{name}** refused by the tokenizer check:\n\n" +
                           "\n".join(f"- {p}" for p in rec.get("problems", [])))
        elif rec.get("sweep"):
            sweep = tabulate([[s.get("num_assistant_tokens", "-"), s.get("assistant_confidence_threshold", "-"),
                               fmt(s["output_match"]), fmt(s["acceptance_rate"], ".3f"), fmt(s["tpot_ms"], ".1f"),
                               fmt(s["tpot_speedup"], ".2f"), fmt(s["throughput_ratio"], ".2f")]
                              for s in rec["sweep"]],
                             headers=["num_assistant_tokens", "confidence threshold", "output match", "acceptance",
                                      "TPOT ms", "TPOT speedup", "throughput ratio"], tablefmt="github")
            details.append(f"**{name}** sweep (main alone: TPOT {rec['baseline']['tpot_ms']:.1f} ms):\n\n{sweep}")
    table = tabulate(rows, headers=["pair", "main", "draft", "status", "output match", "acceptance",
                                    "TPOT main ms", "TPOT with draft ms", "speedup", "gate"], tablefmt="github")
    return table + "\n\n" + "\n\n".join(details)


def by_adapter(metrics: dict) -> dict[str, dict]:
    """`<metric>@<adapter>` metrics grouped per adapter choice, none first."""
    choices: dict[str, dict] = {}
    for name, value in metrics.items():
        metric, sep, choice = name.partition("@")
        if sep:
            choices.setdefault(choice, {})[metric] = value
    return {c: choices[c] for c in sorted(choices, key=lambda c: (c != "none", c))}


def adapter_table(rows: list[dict], tablefmt: str = "github") -> str:
    """LoRA adapters: one row per artifact and adapter choice (none first)."""
    lines = [(r["artifact"], choice, m) for r in rows for choice, m in by_adapter(r["metrics"]).items()]
    if not lines:
        return ""
    keys = list(dict.fromkeys(k for _, _, m in lines for k in m))
    return tabulate([[a, c, *[fmt(m.get(k)) for k in keys]] for a, c, m in lines],
                    headers=["artifact", "adapter", *keys], tablefmt=tablefmt, disable_numparse=True)


ADAPTER_NOTE = ("Adapters are applied at run time (registered when the pipeline is built, chosen per generate "
                "call; never fused). effect_pct: |change of the metric| vs no adapter; peft_delta_pct: distance to "
                "the PEFT (fp32 PyTorch) reference at the same alpha.")


def contact_sheets(rows: list[dict]) -> dict[str, Path]:
    """Each artifact's image plot (text-to-image contact sheets), when validation wrote one."""
    sheets = {r["artifact"]: validation_plot_path(r["model"], r["variant"]) for r in rows}
    return {name: path for name, path in sheets.items() if path.is_file()}


NOTES = ["Values in parentheses were measured on a proxy device because no target device is present; they are "
         "not a validation on the target.",
         "Performance: after one warm-up, on fixed inputs (LLM: every prompt generates exactly max_new_tokens; "
         "Whisper: the first utterances of the first speech set); peak RSS of a fresh process running it.",
         "(random-init): a tiny model built in code because no such weights exist offline; its metrics exercise the "
         "pipeline and say nothing about a real model's accuracy."]


def markdown(sections: dict[str, str], gate: dict) -> str:
    notes = NOTES + [f"Gate mode: {gate['mode']}; counts: {gate['counts']}."]
    body = "\n\n".join(f"## {title}\n\n{text}" for title, text in sections.items())
    return "# Artifact report\n\n" + body + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot_points(rows: list[dict], metric: str) -> list[dict]:
    points = []
    for r in rows:
        metrics = r["metrics"] or r["proxy_metrics"]
        if metric in metrics:
            points.append({"artifact": r["artifact"], "size_mb": round(r["size_mb"], 2), "metric": metric,
                           "value": metrics[metric], "measured_on": r["device"] or r["proxy_device"]})
    return points


def plot_png(points: list[dict], title: str) -> str:
    """A scatter of value vs size, as a base64 PNG for the HTML page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for p in points:
        ax.scatter(p["size_mb"], p["value"])
        ax.annotate(p["artifact"].split("/", 1)[1] if "/" in p["artifact"] else p["artifact"],
                    (p["size_mb"], p["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(title=title, xlabel="artifact size (MB)", ylabel=points[0]["metric"] if points else "")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figures_html(images: dict[str, str]) -> str:
    return "".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{png}"><figcaption>'
                   f"{html.escape(t)}</figcaption></figure>" for t, png in images.items())


def html_page(sections: dict[str, str], images: dict[str, str], gate: dict) -> str:
    figures = figures_html(images)
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in NOTES + [f"Gate mode: {gate['mode']}; "
                                                                   f"counts: {gate['counts']}."])
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}figure{display:inline-block;margin:0 1em 1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Artifact report</title><style>{style}"
            f"</style></head><body><h1>Artifact report</h1><div>{figures}</div>{body}<ul>{notes}</ul></body></html>")


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    gate = read_json(GATE_PATH)
    rows = artifact_rows(params, gate)
    md, web, images = {}, {}, {}
    for family_name in params.builds():  # every family writes its plot files, possibly empty, as dvc.yaml declares
        family = get_family(family_name)
        keys = family.report_metrics(params)
        family_rows = [r for r in rows if r["family"] == family_name]
        for kind, metric in (("accuracy", keys[0] if keys else None), ("latency", family.latency_metric)):
            points = plot_points(family_rows, metric) if metric else []
            write_json(PLOTS_DIR / f"{family_name}_{kind}_vs_size.json", points)
            if points:
                images[f"{family_name}: {metric} vs size"] = plot_png(points, f"{family_name} {kind} vs size")
        if family_rows:
            md[family_name], web[family_name] = family_table(family_rows, keys), family_table(family_rows, keys, "html")
            md[f"{family_name} performance"] = performance_table(family_rows)
            web[f"{family_name} performance"] = performance_table(family_rows, "html")
            if adapters := adapter_table(family_rows):
                md[f"{family_name} adapters"] = adapters + "\n\n" + ADAPTER_NOTE
                web[f"{family_name} adapters"] = adapter_table(family_rows, "html") + f"<p>{ADAPTER_NOTE}</p>"
            if sheets := contact_sheets(family_rows):
                md[f"{family_name} contact sheets"] = "\n\n".join(
                    f"![{name}](../{path.as_posix()})" for name, path in sheets.items())
                web[f"{family_name} contact sheets"] = figures_html(
                    {name: base64.b64encode(path.read_bytes()).decode() for name, path in sheets.items()})
    if params.pairs:
        md["speculative decoding"] = pair_section(params, gate)
        web["speculative decoding"] = f"<pre>{html.escape(md['speculative decoding'])}</pre>"
    text = markdown(md, gate)
    write_text(REPORT_PATH, text)
    write_text(HTML_PATH, html_page(web, images, gate))
    print(text)


if __name__ == "__main__":
    main()
