"""Regression gate: compare metrics/gate.json now with its state at a baseline git revision.

    python -m stages.regress [--baseline REV] [--params params.yaml]

Every artifact x device x metric of the baseline that a `regression.rules` entry covers must have changed by no
more than the rule allows (max_increase / max_increase_pct / max_decrease / max_decrease_pct; every covering rule
must hold). A metric the baseline has and the workspace lacks fails ("missing now"), unless its device is not
validated on this host (not_compared); metrics new since the baseline are listed as "new". The baseline defaults
to params `regression.baseline`. Writes metrics/regression.json and exits 1 on any failure.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase

from tabulate import tabulate

from stages.core import thresholds
from stages.core.errors import BuildError, run_stage
from stages.core.io import read_json, write_json
from stages.core.paths import GATE_PATH, REGRESSION_PATH
from stages.core.runtime import log, setup_logging
from stages.core.schema import RegressionRule
from stages.params import load_stage_params, stage_parser


@dataclass
class Row:
    artifact: str
    device: str
    metric: str
    old: float | None
    new: float | None
    change: str
    allowed: str
    status: str  # pass | fail | not_compared | new
    note: str = ""


# ---------------------------------------------------------------- reading both sides
def read_baseline(rev: str) -> dict:
    """metrics/gate.json at git revision `rev`, read by DVC's metrics machinery (what `dvc metrics diff` uses).

    `targets=[gate.json]` reads the file straight from the revision's git tree: it needs neither dvc.lock nor the
    gate stage to have run there (checked on dvc 3.67: a dvc.lock-free commit gives the same data), and does not
    depend on the baseline's dvc.yaml parsing. DVC drops nulls, lists (`rows`) and empty dicts from metrics files;
    the per-device metrics we compare survive."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo
    from dvc.scm import SCMError

    if rev == "workspace":
        raise BuildError("--baseline: 'workspace' is the current side; give a git revision, branch or tag")
    try:
        with Repo(".") as repo:
            shown = repo.metrics.show(targets=[str(GATE_PATH)], revs=[rev], on_error="return")
    except NotDvcRepoError:
        raise BuildError("not in a DVC project: run stages.regress from the pipeline's root") from None
    except SCMError as e:
        raise BuildError(f"baseline revision '{rev}' not found in git ({e})") from None
    except DvcException as e:
        raise BuildError(f"baseline revision '{rev}': cannot read {GATE_PATH}: {e}") from None
    return baseline_data(rev, shown)


def baseline_data(rev: str, shown: dict) -> dict:
    """The gate.json data out of Repo.metrics.show()'s {rev: {"data": {path: {"data" | "error"}}}}."""
    if rev not in shown:  # DVC skips a revision from before `dvc init`
        raise BuildError(f"baseline revision '{rev}' has no DVC project")
    result = shown[rev].get("data", {}).get(str(GATE_PATH)) or {"error": shown[rev].get("error")}
    if "data" not in result:
        error = result.get("error")
        why = "not committed there" if isinstance(error, FileNotFoundError) or error is None else error
        raise BuildError(f"baseline revision '{rev}' has no readable {GATE_PATH} ({why})")
    data = result["data"]
    artifacts = data.get("artifacts")
    if not isinstance(artifacts, dict) or any("family" not in a for a in artifacts.values()):
        raise BuildError(
            f"baseline revision '{rev}': {GATE_PATH} has no per-artifact family/device metrics "
            "(written by an older stages.gate); nothing to compare against"
        )
    return data


def read_current() -> dict:
    if not GATE_PATH.is_file():
        raise BuildError(f"{GATE_PATH} not found in the workspace: run `python -m stages.gate` first")
    data = read_json(GATE_PATH, "gate summary")
    if not isinstance(data.get("artifacts"), dict):
        raise BuildError(f"{GATE_PATH} in the workspace has no 'artifacts' section: rerun `python -m stages.gate`")
    return data


def numbers(device: dict | None) -> dict[str, float]:
    """A device's metrics and its comparisons (named "<metric> vs <against>", e.g. "ssim vs source")."""
    device = device or {}
    flat = dict(device.get("metrics") or {})
    for against, compared in (device.get("vs") or {}).items():
        flat |= {f"{k} vs {against}": v for k, v in (compared or {}).items()}
    return {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def unvalidated_reasons(gate: dict) -> dict[tuple[str, str], str]:
    """(artifact, device) -> why the gate reported it not_validated (its row note)."""
    return {
        (r.get("artifact"), r.get("device")): r.get("note", "")
        for r in gate.get("rows") or []
        if r.get("status") == "not_validated"
    }


# ---------------------------------------------------------------- rules
def applicable(rules: list[RegressionRule], name: str, family: str | None, metric: str) -> list[RegressionRule]:
    return [
        r
        for r in rules
        if (r.family is None or r.family == family)
        and (r.artifacts is None or any(fnmatchcase(name, p) for p in r.artifacts))
        and fnmatchcase(metric, r.metric)
    ]


def allowed_text(rules: list[RegressionRule]) -> str:
    return ", ".join(dict.fromkeys(thresholds.describe(thresholds.bounds_of(r), "baseline") for r in rules))


def breaches(rules: list[RegressionRule], old: float, new: float) -> list[str]:
    """What each covering rule's bounds say about old -> new (the gate's arithmetic: thresholds.check)."""
    found = []
    for rule in rules:
        verdict = thresholds.check(thresholds.bounds_of(rule), new, old, "baseline")
        if not verdict.ok:
            found.append(verdict.note or verdict.threshold)
    return list(dict.fromkeys(found))


def change_text(old: float, delta: float) -> str:
    return f"{delta:+.4g} ({thresholds.percent(old, delta):+.1f}%)" if old else f"{delta:+.4g}"


# ---------------------------------------------------------------- rows
def metric_row(
    name: str,
    device: str,
    metric: str,
    old: float | None,
    new: float | None,
    status: str,
    rules: list[RegressionRule],
    reason: str,
) -> Row:
    """One covered metric; `status` is the device's state now (validated, not_validated, refused, gone ...)."""
    row = Row(name, device, metric, old, new, "-", allowed_text(rules), "")
    if old is None:
        row.status, row.note = "new", "not in the baseline"
    elif new is not None:
        broken = breaches(rules, old, new)
        row.change, row.status, row.note = change_text(old, new - old), "fail" if broken else "pass", "; ".join(broken)
    elif status == "not_validated":
        row.status, row.note = "not_compared", reason or f"{device} not validated on this host"
    else:
        row.status, row.note = "fail", f"missing now ({'metric absent' if status == 'validated' else status})"
    return row


def device_rows(
    name: str,
    family: str | None,
    device: str,
    old_dev: dict | None,
    new_dev: dict,
    rules: list[RegressionRule],
    reason: str,
) -> list[Row]:
    old_metrics = numbers(old_dev)
    status = new_dev.get("status", "unknown")
    new_metrics = numbers(new_dev) if status in ("validated", "emulated") else {}
    rows = []
    for metric in dict.fromkeys([*old_metrics, *new_metrics]):
        covering = applicable(rules, name, family, metric)
        if covering:
            rows.append(
                metric_row(
                    name, device, metric, old_metrics.get(metric), new_metrics.get(metric), status, covering, reason
                )
            )
    return rows


def artifact_rows(
    name: str, old: dict | None, new: dict | None, rules: list[RegressionRule], reasons: dict
) -> list[Row]:
    family = (old or new).get("family")
    old_devices, new_devices = (old or {}).get("devices") or {}, (new or {}).get("devices") or {}
    rows = []
    for device in dict.fromkeys([*old_devices, *new_devices]):
        gone = {
            "status": "artifact gone" if new is None else f"no {device} result, artifact {new.get('status', 'unknown')}"
        }
        rows += device_rows(
            name,
            family,
            device,
            old_devices.get(device),
            new_devices.get(device, gone),
            rules,
            reasons.get((name, device), ""),
        )
    return rows


def evaluate(baseline: dict, current: dict, rules: list[RegressionRule]) -> list[Row]:
    old, new = baseline["artifacts"], current["artifacts"]
    reasons = unvalidated_reasons(current)
    rows = []
    for name in dict.fromkeys([*old, *new]):
        rows += artifact_rows(name, old.get(name), new.get(name), rules, reasons)
    return rows + coverage_rows(rules, {**old, **new}, rows)


def coverage_rows(rules: list[RegressionRule], artifacts: dict, rows: list[Row]) -> list[Row]:
    """No silent pass: a rule for a family that has artifacts but that covers no metric of any fails, named."""
    families = {a.get("family") for a in artifacts.values()}
    out = []
    for i, rule in enumerate(rules):
        if rule.family is not None and rule.family not in families:
            continue
        if not any(applicable([rule], r.artifact, artifacts[r.artifact].get("family"), r.metric) for r in rows):
            out.append(
                Row(
                    f"rule:{rule.family or '*'}",
                    "-",
                    rule.metric,
                    None,
                    None,
                    "-",
                    allowed_text([rule]),
                    "fail",
                    f"regression.rules.{i} matches no metric of any artifact (baseline or now)",
                )
            )
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table(rows: list[Row], tablefmt: str = "simple") -> str:
    return tabulate(
        [
            [r.artifact, r.device, r.metric, fmt(r.old), fmt(r.new), r.change, r.allowed, r.status.upper(), r.note]
            for r in rows
        ],
        headers=["artifact", "device", "metric", "old", "new", "change", "allowed", "status", "note"],
        tablefmt=tablefmt,
        disable_numparse=True,
    )


def main(argv=None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument(
        "--baseline", help="git revision, branch or tag to compare with (default: params regression.baseline)"
    )
    args = ap.parse_args(argv)
    setup_logging()
    settings = load_stage_params(args).regression
    rev = args.baseline or settings.baseline
    if not settings.rules:
        log.warning("params regression.rules is empty: no metric is compared")
    rows = evaluate(read_baseline(rev), read_current(), settings.rules)
    failed = [r for r in rows if r.status == "fail"]
    write_json(REGRESSION_PATH, {"baseline": rev, "passed": not failed, "rows": [asdict(r) for r in rows]})
    print(table(rows) if rows else f"no metric in {GATE_PATH} is covered by regression.rules")
    if failed:
        print(f"\nREGRESSION: {len(failed)} metric(s) worse than allowed vs {rev}", file=sys.stderr)
        return 1
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "not_compared", "new")}
    print(f"\nno regression vs {rev}: {counts}")
    return 0


if __name__ == "__main__":
    run_stage(main)
