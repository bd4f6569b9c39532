"""Stage gate: check every artifact's metrics against params thresholds and its family's reference variant.

    python -m stages.gate

Writes metrics/gate.json (also on failure, for CI to read) and exits non-zero on any breach or missing metric.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from typing import Optional

from tabulate import tabulate

from stages.common import METRICS, read_json, setup_logging, validation_metrics_path, validation_outputs_dir, \
    write_json
from stages.families import get_family
from stages.params import GateRule, Params, load_stage_params, stage_parser
from stages.speculative import pair_metrics_path

GATE_PATH = METRICS / "gate.json"


@dataclass
class Row:
    artifact: str
    device: str
    metric: str
    value: Optional[float]
    threshold: str
    reference: Optional[float]
    status: str  # pass | fail | not_validated
    note: str = ""


def load_record(model: str, variant: str) -> Optional[dict]:
    path = validation_metrics_path(model, variant)
    return read_json(path) if path.is_file() else None


def artifact_metrics(params: Params) -> dict[tuple[str, str], dict]:
    """Per (model, variant): the validation record; on its primary device, metrics relative to the reference
    variant's outputs are merged in."""
    result = {}
    for family_name, build in params.builds().items():
        family = get_family(family_name)
        for model in build.models:
            for variant in build.variants:
                record = load_record(model, variant) or {"status": "missing", "metrics": {}, "devices": {},
                                                         "reason": "no validation metrics file"}
                primary = record.get("device")
                if primary:
                    compared = family.compare(params, validation_outputs_dir(model, build.reference),
                                              validation_outputs_dir(model, variant))
                    record["metrics"] = {**record["metrics"], **compared}
                    record["devices"][primary]["metrics"] = record["metrics"]
                result[(model, variant)] = record | {"family": family_name, "reference": build.reference}
    return result


def check(rule: GateRule, value: Optional[float], ref: Optional[float]) -> tuple[bool, str, str]:
    """(passed, threshold text, note) for one rule on one value."""
    if value is None:
        return False, describe(rule), "metric missing"
    checks = []
    if rule.max is not None:
        checks.append((value <= rule.max, f"<= {rule.max:g}"))
    if rule.min is not None:
        checks.append((value >= rule.min, f">= {rule.min:g}"))
    for pct, sign in ((rule.max_increase_pct, 1), (rule.max_decrease_pct, -1)):
        if pct is None:
            continue
        text = f"{'+' if sign > 0 else '-'}{pct:g}% vs ref"
        if ref is None:
            return False, text, "reference metric missing"
        if ref == 0:
            return False, text, "reference is 0: a relative change is undefined (use an absolute rule)"
        change = sign * (value - ref) / abs(ref) * 100
        checks.append((change <= pct, f"{text} (is {sign * change:+.1f}%)"))
    for limit, sign in ((rule.max_increase, 1), (rule.max_decrease, -1)):
        if limit is None:
            continue
        text = f"{'+' if sign > 0 else '-'}{limit:g} vs ref"
        if ref is None:
            return False, text, "reference metric missing"
        checks.append((sign * (value - ref) <= limit, f"{text} (is {value - ref:+.4g})"))
    return all(ok for ok, _ in checks), ", ".join(t for _, t in checks), ""


def describe(rule: GateRule) -> str:
    parts = [f"<= {rule.max:g}" if rule.max is not None else "", f">= {rule.min:g}" if rule.min is not None else "",
             f"+{rule.max_increase_pct:g}% vs ref" if rule.max_increase_pct is not None else "",
             f"-{rule.max_decrease_pct:g}% vs ref" if rule.max_decrease_pct is not None else "",
             f"+{rule.max_increase:g} vs ref" if rule.max_increase is not None else "",
             f"-{rule.max_decrease:g} vs ref" if rule.max_decrease is not None else ""]
    return ", ".join(p for p in parts if p)


def unvalidated_row(name: str, device: str, record: dict, mode: str) -> Row:
    """dev mode reports an absent target device; release mode fails on it. A missing record always fails."""
    failing = mode == "release" or record["status"] == "missing"
    return Row(name, device, "*", None, f"mode={mode}", None, "fail" if failing else "not_validated",
               record.get("reason", ""))


def pair_rows(params: Params) -> tuple[list[Row], dict]:
    """Speculative pairs: a negative control must have been refused; a validated pair meets its rules."""
    rows, records = [], {}
    for name, pair in params.pairs.items():
        path = pair_metrics_path(name)
        rec = read_json(path) if path.is_file() else {"status": "missing", "metrics": {},
                                                       "reason": "no speculative metrics file"}
        label = f"pair:{name}"
        device = "+".join(dict.fromkeys((rec.get("main_device") or "-", rec.get("draft_device") or "-")))
        records[label] = rec | {"family": "speculative", "device": device,
                                "devices": {device: {"status": rec["status"], "metrics": rec["metrics"]}}}
        if rec["status"] == "refused":
            expected = pair.expect == "incompatible"
            rows.append(Row(label, device, "tokenizer_check", None, f"expect {pair.expect}", None,
                            "pass" if expected else "fail", f"refused: {rec['problems'][0]}"[:160]))
            continue
        if pair.expect == "incompatible":
            rows.append(Row(label, device, "tokenizer_check", None, "expect incompatible", None, "fail",
                            "the check did not refuse this draft"))
            continue
        if rec["status"] != "validated":
            rows.append(unvalidated_row(label, device, rec, params.gate.mode))
            continue
        for rule in params.gate.rules:
            if rule.family == "speculative" and (not rule.pairs or name in rule.pairs):
                ok, threshold, note = check(rule, rec["metrics"].get(rule.metric), None)
                rows.append(Row(label, device, rule.metric, rec["metrics"].get(rule.metric), threshold, None,
                                "pass" if ok else "fail", note))
    return rows, records


def artifact_rows(name: str, rec: dict, ref: dict, rules: list[GateRule], mode: str) -> list[Row]:
    """Every rule on every validated target device; one row per target device that was not validated."""
    if rec["status"] == "missing":
        return [unvalidated_row(name, "*", rec, mode)]
    rows = []
    variant = name.split("/")[1]
    for device, result in rec["devices"].items():
        if result["status"] != "validated":
            rows.append(unvalidated_row(name, device, result, mode))
            continue
        ref_metrics = ref.get("devices", {}).get(device, {}).get("metrics") or ref.get("metrics", {})
        for rule in rules:
            if (rule.family and rule.family != rec["family"]) or (rule.variants and variant not in rule.variants):
                continue
            for metric in rule_metrics(rule, result["metrics"]):
                value, reference = result["metrics"].get(metric), ref_metrics.get(metric)
                ok, threshold, note = check(rule, value, reference)
                rows.append(Row(name, device, metric, value, threshold, reference, "pass" if ok else "fail", note))
    return rows


def rule_metrics(rule: GateRule, metrics: dict) -> list[str]:
    """The metric a rule names, or every metric its pattern matches (e.g. `perplexity@*`: one per adapter; an
    artifact without adapters has none to check)."""
    if not any(c in rule.metric for c in "*?["):
        return [rule.metric]
    return sorted(m for m in metrics if fnmatch(m, rule.metric))


def evaluate(params: Params) -> tuple[list[Row], dict]:
    records = artifact_metrics(params)
    rows = []
    for (model, variant), rec in records.items():
        ref = records.get((model, rec["reference"]), {})
        rows += artifact_rows(f"{model}/{variant}", rec, ref, params.gate.rules, params.gate.mode)
    pairs, pair_records = pair_rows(params)
    return rows + pairs, {**{f"{m}/{v}": r for (m, v), r in records.items()}, **pair_records}


def table(rows: list[Row], fmt: str = "simple") -> str:
    return tabulate([[r.artifact, r.device, r.metric, "-" if r.value is None else f"{r.value:.4g}", r.threshold,
                      "-" if r.reference is None else f"{r.reference:.4g}", r.status.upper(), r.note]
                     for r in rows],
                    headers=["artifact", "device", "metric", "value", "threshold", "reference", "status", "note"],
                    tablefmt=fmt)


def main(argv=None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    rows, records = evaluate(params)
    failed = [r for r in rows if r.status == "fail"]
    summary = {
        "mode": params.gate.mode, "passed": not failed,
        "counts": {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "not_validated")},
        "rows": [asdict(r) for r in rows],
        "artifacts": {name: {"family": rec["family"], "status": rec["status"], "device": rec.get("device"),
                             "metrics": rec["metrics"],
                             "devices": {d: {"status": r["status"], "metrics": r.get("metrics", {})}
                                         for d, r in rec.get("devices", {}).items()}}
                      for name, rec in records.items()},
    }
    write_json(GATE_PATH, summary)
    print(table(rows))
    if failed:
        print(f"\nGATE FAILED: {len(failed)} check(s) failed (mode={params.gate.mode})", file=sys.stderr)
        return 1
    print(f"\ngate passed (mode={params.gate.mode}): {summary['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
