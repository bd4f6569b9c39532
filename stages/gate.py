"""Stage gate: check every artifact, on every target device, against the params rules: each rule compares with
`against` (the source checkpoint run in PyTorch, or a variant; default the family's reference variant).

    python -m stages.gate

No silent pass: a rule that matches no metric of a built family fails, naming it; an artifact that ran on a device
without any accuracy rule applying fails there; a metric that is missing, NaN or infinite fails; an absent target
device is reported in mode dev and fails in mode release, as does an emulated one. Writes metrics/gate.json (also on
failure, for CI to read), prints the table, exits 1 on any failure.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase

from tabulate import tabulate

from stages.check_params import family_settings, load_checked_stage_params
from stages.core import thresholds
from stages.core.devices import CPU_PATH
from stages.core.errors import run_stage
from stages.core.io import read_json, write_json
from stages.core.paths import (
    GATE_PATH,
    SOURCE,
    device_outputs_dir,
    pair_metrics_path,
    reference_path,
    source_outputs_dir,
    split_artifact,
    validation_path,
)
from stages.core.runtime import setup_logging
from stages.core.schema import GateRule
from stages.families import get_family
from stages.families.base import Comparison
from stages.params import SPECULATIVE, Params, stage_parser
from stages.runner import make_context

RAN = ("validated", "emulated")


@dataclass
class Row:
    artifact: str
    device: str
    level: str  # validated | emulated | not_validated | missing | - (rule coverage)
    metric: str
    against: str
    value: float | None
    threshold: str
    reference: float | None
    status: str  # pass | fail | not_validated
    note: str = ""


# ---------------------------------------------------------------- records and comparisons
def load_record(artifact: str) -> dict:
    path = validation_path(artifact)
    if not path.is_file():
        return {"status": "missing", "devices": {}, "reason": f"no validation record ({path})"}
    return read_json(path, "validation record")


def load_source(model: str) -> dict:
    path = reference_path(model)
    return (
        read_json(path, "source reference")
        if path.is_file()
        else {"status": "missing", "metrics": {}, "reason": f"no source reference ({path})"}
    )


def rules_for(params: Params, family: str) -> list[GateRule]:
    """The params rules that apply to a family; the family's default rules when params name none for it."""
    rules = [r for r in params.gate.rules if r.family in (None, family)]
    if not any(r.family == family for r in params.gate.rules):
        rules += [GateRule(family=family, **d) for d in get_family(family).default_rules]
    return rules


def against_name(rule: GateRule, reference_variant: str) -> str:
    return rule.against or reference_variant


def reference_device(records: dict, artifact: str, device: str) -> str | None:
    """The device of the compared variant's run: the same device when it ran there, else its primary device."""
    rec = records.get(artifact, {})
    if rec.get("devices", {}).get(device, {}).get("status") in RAN:
        return device
    return rec.get("device")


class Evidence:
    """Every number the rules read: validation records, source references, and comparisons computed lazily."""

    def __init__(self, params: Params):
        self.params = params
        self.records = {a: load_record(a) for a in params.build}
        self.sources = {split_artifact(a)[0]: load_source(split_artifact(a)[0]) for a in params.build}
        self._comparisons: dict[tuple, tuple[Comparison, str]] = {}

    def reference_variant(self, artifact: str) -> str:
        return family_settings(self.params, self.params.family_of(artifact)).reference

    def compared(self, artifact: str, device: str, against: str) -> tuple[Comparison, str]:
        """(comparison of this run's outputs with `against`'s, the device `against` ran on)."""
        key = (artifact, device, against)
        if key not in self._comparisons:
            model, _ = split_artifact(artifact)
            family = get_family(self.params.family_of(artifact))
            if against == SOURCE:
                ref_dir, ref_device = source_outputs_dir(model), SOURCE
            elif against == CPU_PATH:
                ref_dir, ref_device = device_outputs_dir(artifact, f"{device}.{CPU_PATH}"), CPU_PATH
            else:
                ref_artifact = f"{model}/{against}"
                ref_device = reference_device(self.records, ref_artifact, device)
                ref_dir = device_outputs_dir(ref_artifact, ref_device) if ref_device else None
            result = Comparison({})
            if ref_dir is not None and (ref_dir / "outputs.json").is_file():
                ctx = make_context(self.params, family, model, adapters=[])
                result = family.compare(ref_dir, device_outputs_dir(artifact, device), ctx)
            self._comparisons[key] = (result, ref_device or "-")
        return self._comparisons[key]

    def against_value(self, artifact: str, device: str, against: str, metric: str) -> tuple[float | None, str]:
        """The compared run's own value of a metric (for relative bounds), and where it ran."""
        model, _ = split_artifact(artifact)
        if against == SOURCE:
            return self.sources[model].get("metrics", {}).get(metric), SOURCE
        if against == CPU_PATH:
            path = self.records[artifact]["devices"].get(device, {}).get(CPU_PATH, {})
            return path.get("metrics", {}).get(metric), CPU_PATH
        ref = f"{model}/{against}"
        ref_device = reference_device(self.records, ref, device)
        metrics = self.records.get(ref, {}).get("devices", {}).get(ref_device or "", {}).get("metrics", {})
        return metrics.get(metric), ref_device or "-"


# ---------------------------------------------------------------- rows
def device_note(device: str, ref_device: str, against: str) -> str:
    if ref_device in (device, SOURCE, CPU_PATH, "-"):
        return ""
    return f"{against} compared on {ref_device} ({against} did not run on {device})"


def rule_rows(ev: Evidence, artifact: str, device: str, level: str, rule: GateRule) -> list[Row]:
    family = get_family(ev.params.family_of(artifact))
    variant = split_artifact(artifact)[1]
    against = against_name(rule, ev.reference_variant(artifact))
    bounds = thresholds.bounds_of(rule)
    metrics = ev.records[artifact]["devices"][device].get("metrics", {})
    compares = thresholds.relative(bounds) or any(fnmatchcase(m, rule.metric) for m in family.comparison_metrics)
    if against == variant and compares:
        return []  # an artifact compared with itself proves nothing
    if against == CPU_PATH and CPU_PATH not in ev.records[artifact]["devices"][device]:
        return []  # only NPU targets also run their CPU path
    comparison, ref_device = ev.compared(artifact, device, against) if against != variant else (Comparison({}), "-")
    candidates = {**metrics, **comparison.metrics} if "*" in rule.metric or "?" in rule.metric else None
    names = sorted(m for m in candidates if fnmatchcase(m, rule.metric)) if candidates is not None else [rule.metric]
    rows = []
    for metric in names:
        is_comparison = metric in family.comparison_metrics
        value = comparison.metrics.get(metric) if is_comparison else metrics.get(metric)
        reference, where = (
            (None, ref_device)
            if is_comparison or not thresholds.relative(bounds)
            else ev.against_value(artifact, device, against, metric)
        )
        verdict = thresholds.check(bounds, value, reference, against)
        note = verdict.note or ("no outputs to compare with" if is_comparison and not comparison.metrics else "")
        note = "; ".join(n for n in (note, device_note(device, where, against)) if n)
        rows.append(
            Row(
                artifact,
                device,
                level,
                metric,
                against,
                value,
                verdict.threshold,
                reference,
                "pass" if verdict.ok else "fail",
                note,
            )
        )
    return rows


def absent_row(artifact: str, device: str, result: dict, mode: str) -> Row:
    """dev mode reports an absent target device; release mode fails on it. A missing record always fails."""
    failing = mode == "release" or result.get("status") == "missing"
    return Row(
        artifact,
        device,
        result.get("status", "missing"),
        "*",
        "-",
        None,
        f"mode={mode}",
        None,
        "fail" if failing else "not_validated",
        result.get("reason", ""),
    )


def artifact_rows(ev: Evidence, artifact: str, rules: list[GateRule], mode: str) -> list[Row]:
    rec = ev.records[artifact]
    if rec["status"] == "missing":
        return [absent_row(artifact, "*", rec, mode)]
    family = get_family(rec["family"])
    variant = split_artifact(artifact)[1]
    rows = []
    for device, result in rec["devices"].items():
        level = result["status"]
        if level not in RAN:
            rows.append(absent_row(artifact, device, result, mode))
            continue
        device_rows = [
            r
            for rule in rules
            if not rule.variants or variant in rule.variants
            for r in rule_rows(ev, artifact, device, level, rule)
        ]
        if not any(fnmatchcase(r.metric, pattern) for r in device_rows for pattern in family.accuracy_metrics):
            device_rows.append(
                Row(
                    artifact,
                    device,
                    level,
                    "(accuracy)",
                    "-",
                    None,
                    "a rule on " + " / ".join(family.accuracy_metrics),
                    None,
                    "fail",
                    "no accuracy rule applies to this artifact on this device",
                )
            )
        if level == "emulated" and mode == "release":
            device_rows.append(
                Row(
                    artifact,
                    device,
                    level,
                    "*",
                    "-",
                    None,
                    "mode=release",
                    None,
                    "fail",
                    f"emulated ({result.get('emulation', {}).get('label', device)}): release mode "
                    "needs the real device",
                )
            )
        rows += device_rows
    return rows


def coverage_rows(params: Params, rows: list[Row], rules_by_family: dict[str, list[GateRule]]) -> list[Row]:
    """A rule that produced no row although its family has artifacts that ran fails, naming the rule."""
    out = []
    for family, rules in rules_by_family.items():
        for rule in rules:
            ran = [
                r
                for r in rows
                if params.family_of(r.artifact) == family
                and r.level in RAN
                and (not rule.variants or split_artifact(r.artifact)[1] in rule.variants)
            ]
            if ran and not any(fnmatchcase(r.metric, rule.metric) and r.metric != "(accuracy)" for r in ran):
                out.append(
                    Row(
                        f"rule:{family}",
                        "-",
                        "-",
                        rule.metric,
                        rule.against or "reference",
                        None,
                        thresholds.describe(thresholds.bounds_of(rule)),
                        None,
                        "fail",
                        "the rule matches no metric of any artifact that ran"
                        + (f" among variants {rule.variants}" if rule.variants else ""),
                    )
                )
    return out


def pair_rows(params: Params) -> tuple[list[Row], dict]:
    """Speculative pairs: a negative control must have been refused; a validated pair meets its rules."""
    rows, records = [], {}
    rules = [r for r in params.gate.rules if r.family == SPECULATIVE]
    for name, pair in params.speculative_entries().items():
        path = pair_metrics_path(name)
        rec = (
            read_json(path, "pair record")
            if path.is_file()
            else {"status": "missing", "metrics": {}, "reason": f"no speculative record ({path})"}
        )
        label = f"pair:{name}"
        device = "+".join(dict.fromkeys((rec.get("main_device") or "-", rec.get("draft_device") or "-")))
        records[label] = rec | {
            "family": SPECULATIVE,
            "device": device,
            "devices": {device: {"status": rec["status"], "metrics": rec.get("metrics", {})}},
        }
        if rec["status"] == "refused" or getattr(pair, "expect", "compatible") == "incompatible":
            refused = rec["status"] == "refused"
            ok = refused == (pair.expect == "incompatible")  # only pairs have a draft to refuse
            note = f"refused: {rec['problems'][0]}"[:160] if refused else "the check did not refuse this draft"
            rows.append(
                Row(
                    label,
                    device,
                    rec["status"],
                    "tokenizer_check",
                    "-",
                    None,
                    f"expect {pair.expect}",
                    None,
                    "pass" if ok else "fail",
                    note,
                )
            )
            continue
        if rec["status"] not in RAN:
            rows.append(absent_row(label, device, rec, params.gate.mode))
            continue
        for rule in rules:
            if rule.pairs and name not in rule.pairs:
                continue
            for metric in sorted(k for k in rec["metrics"] if fnmatchcase(k, rule.metric)) or [rule.metric]:
                verdict = thresholds.check(thresholds.bounds_of(rule), rec["metrics"].get(metric))
                rows.append(
                    Row(
                        label,
                        device,
                        rec["status"],
                        metric,
                        "-",
                        rec["metrics"].get(metric),
                        verdict.threshold,
                        None,
                        "pass" if verdict.ok else "fail",
                        verdict.note,
                    )
                )
    return rows, records


# ---------------------------------------------------------------- summary
def gated_record(ev: Evidence, artifact: str, rules: list[GateRule]) -> dict:
    """An artifact's metrics per device, with every comparison the report and cards show (source and reference)."""
    rec, variant = ev.records[artifact], split_artifact(artifact)[1]
    against = list(dict.fromkeys([SOURCE, ev.reference_variant(artifact)] + [r.against for r in rules if r.against]))
    if any(CPU_PATH in r for r in rec.get("devices", {}).values()) and CPU_PATH not in against:
        against.append(CPU_PATH)
    devices = {}
    for device, result in rec.get("devices", {}).items():
        entry = {"status": result["status"], "metrics": result.get("metrics", {})}
        if result["status"] in RAN:
            compared = {
                a: ev.compared(artifact, device, a)
                for a in against
                if a != variant and (a != CPU_PATH or CPU_PATH in result)
            }
            entry["vs"] = {a: c.metrics for a, (c, _) in compared.items() if c.metrics}
            entry["worst"] = {a: c.worst for a, (c, _) in compared.items() if c.worst}
        devices[device] = entry
    return {
        "family": ev.params.family_of(artifact),
        "status": rec["status"],
        "device": rec.get("device"),
        "devices": devices,
    }


def evaluate(params: Params) -> tuple[list[Row], dict]:
    ev = Evidence(params)
    rules = {f: rules_for(params, f) for f in params.built_families()}
    rows = [r for a in params.build for r in artifact_rows(ev, a, rules[params.family_of(a)], params.gate.mode)]
    rows += coverage_rows(params, rows, rules)
    pairs, pair_records = pair_rows(params)
    artifacts = {a: gated_record(ev, a, rules[params.family_of(a)]) for a in params.build}
    sources = {
        f"{m}/{SOURCE}": {
            "family": rec.get("family"),
            "status": rec["status"],
            "devices": {SOURCE: {"status": rec["status"], "metrics": rec.get("metrics", {})}},
        }
        for m, rec in ev.sources.items()
    }
    return rows + pairs, {**sources, **artifacts, **pair_records}


def table(rows: list[Row], fmt: str = "simple") -> str:
    return tabulate(
        [
            [
                r.artifact,
                r.device,
                r.level,
                r.metric,
                r.against,
                "-" if r.value is None else f"{r.value:.4g}",
                r.threshold,
                "-" if r.reference is None else f"{r.reference:.4g}",
                r.status.upper(),
                r.note,
            ]
            for r in rows
        ],
        headers=["artifact", "device", "level", "metric", "vs", "value", "threshold", "reference", "status", "note"],
        tablefmt=fmt,
        disable_numparse=True,
    )


def summarize(params: Params, rows: list[Row], records: dict) -> dict:
    failed = [r for r in rows if r.status == "fail"]
    return {
        "mode": params.gate.mode,
        "accept_emulated": params.gate.accept_emulated,
        "passed": not failed,
        "counts": {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "not_validated")},
        "rows": [asdict(r) for r in rows],
        "artifacts": records,
    }


def main(argv=None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params = load_checked_stage_params(args)
    rows, records = evaluate(params)
    summary = summarize(params, rows, records)
    write_json(GATE_PATH, summary)
    print(table(rows))
    if not summary["passed"]:
        print(f"\nGATE FAILED: {summary['counts']['fail']} check(s) failed (mode={params.gate.mode})", file=sys.stderr)
        return 1
    print(f"\ngate passed (mode={params.gate.mode}): {summary['counts']}")
    return 0


if __name__ == "__main__":
    run_stage(main)
