"""Stage report: one Markdown summary of every artifact, and DVC plot data (accuracy vs size).

    python -m stages.report
"""
from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from stages.common import METRICS, artifact_dir, read_json, setup_logging, write_json, write_text
from stages.families import get_family
from stages.gate import GATE_PATH
from stages.params import Params, Variant, load_stage_params, stage_parser

REPORT_PATH = Path("reports") / "summary.md"
PLOTS_DIR = METRICS / "plots"


def recipe_label(v: Variant) -> str:
    if v.weight_format == "fp16":
        return "fp16"
    parts = [v.weight_format, "sym" if v.sym else "asym"]
    if v.weight_format == "int4":
        parts.append("channel-wise" if v.group_size == -1 else f"g{v.group_size}")
        if v.ratio is not None and v.ratio < 1:
            parts.append(f"r{v.ratio:g}")
        parts += [n for n, on in (("awq", v.awq), ("se", v.scale_estimation)) if on]
    return " ".join(parts)


def fmt(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec)


def gate_status(gate: dict, name: str) -> str:
    statuses = {r["status"] for r in gate["rows"] if r["artifact"] == name}
    return "FAIL" if "fail" in statuses else "NOT VALIDATED" if "not_validated" in statuses else \
        "pass" if statuses else "no rule"


def artifact_rows(params: Params, gate: dict) -> list[dict]:
    rows = []
    for family, build in params.builds().items():
        for model in build.models:
            for variant in build.variants:
                name = f"{model}/{variant}"
                record = read_json(METRICS / "validate" / model / f"{variant}.json")
                metrics = gate["artifacts"].get(name, {}).get("metrics", {})
                proxy = record.get("proxy")
                rows.append({
                    "artifact": name, "family": family, "target": params.variants[variant].target,
                    "recipe": recipe_label(params.variants[variant]),
                    "size_mb": read_json(artifact_dir(model, variant) / "manifest.json")["size_bytes"] / 1e6,
                    "status": record["status"], "gate": gate_status(gate, name), "metrics": metrics,
                    "proxy_metrics": proxy["metrics"] if proxy else {}, "proxy_device": proxy and proxy["device"],
                })
    return rows


def metric_cell(row: dict, key: str) -> str:
    if key in row["metrics"]:
        return fmt(row["metrics"][key])
    if key in row["proxy_metrics"]:
        return f"({fmt(row['proxy_metrics'][key])} on {row['proxy_device']})"
    return "-"


def family_table(rows: list[dict], keys: list[str]) -> str:
    return tabulate([[r["artifact"], r["recipe"], r["target"], f"{r['size_mb']:.1f}",
                      *[metric_cell(r, k) for k in keys], r["status"], r["gate"]] for r in rows],
                    headers=["artifact", "recipe", "target", "size MB", *keys, "validation", "gate"],
                    tablefmt="github")


def pair_section(params: Params, gate: dict) -> str:
    """Speculative decoding: one row per pair, then each validated pair's sweep and each refusal's diff."""
    rows, details = [], []
    for name in params.pairs:
        rec = gate["artifacts"].get(f"pair:{name}", {})
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


def markdown(tables: dict[str, str], gate: dict) -> str:
    notes = ["Values in parentheses were measured on a proxy device because the target device is absent; "
             "they are not a validation on the target.", f"Gate mode: {gate['mode']}; counts: {gate['counts']}."]
    body = "\n\n".join(f"## {family}\n\n{table}" for family, table in tables.items())
    return "# Artifact report\n\n" + body + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot_points(rows: list[dict], metric: str) -> list[dict]:
    points = []
    for r in rows:
        metrics = r["metrics"] or r["proxy_metrics"]
        if metric in metrics:
            points.append({"artifact": r["artifact"], "size_mb": round(r["size_mb"], 2), "metric": metric,
                           "value": metrics[metric], "measured_on": r["target"] if r["metrics"] else r["proxy_device"]})
    return points


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    gate = read_json(GATE_PATH)
    rows = artifact_rows(params, gate)
    tables = {}
    for family in params.builds():  # every family writes its plot file, possibly empty, as dvc.yaml declares
        keys = get_family(family).report_metrics(params)
        family_rows = [r for r in rows if r["family"] == family]
        write_json(PLOTS_DIR / f"{family}_accuracy_vs_size.json", plot_points(family_rows, keys[0]) if keys else [])
        if family_rows:
            tables[family] = family_table(family_rows, keys)
    if params.pairs:
        tables["speculative decoding"] = pair_section(params, gate)
    text = markdown(tables, gate)
    write_text(REPORT_PATH, text)
    print(text)


if __name__ == "__main__":
    main()
