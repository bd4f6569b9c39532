"""Recipe search: the smallest artifact per model and target that meets an accuracy budget against the source.

    python -m stages.search run [--search NAME]    # `make search`: every search in search/params.yaml

A search (search/params.yaml) names a model, a target device, a budget against the source checkpoint in PyTorch
(metrics/reference/<model>.json: run the root pipeline's reference stage first) and a candidate space: a list of
option grids over the variant keys of params.yaml (weight_format, group_size, sym, ratio, awq, scale_estimation,
backup_precision, all_layers, dataset, num_samples, ...). A combination the schema refuses (e.g. an NPU recipe that
is not channel-wise symmetric int4) or whose group size divides no layer is no candidate.

Every candidate the search visits becomes a DVC stage (search/candidates.yaml, read by search/dvc.yaml; the stage is
stages/search_candidate.py): export + perplexity on validate.llm's windows, cached by DVC, so a candidate built once (here, or on a host sharing the
run-cache) is never exported again. Candidates that differ only in `ratio` form a chain whose size grows and
whose error shrinks as the ratio falls: the search bisects each chain for its smallest passing member (smallest
first) and prunes the rest unbuilt; a candidate whose twin layout (the same recipe but for the data-aware options)
was built no smaller than a passing candidate is pruned too.

Writes search/chosen/<name>.yaml (the chosen recipe as a variant to paste into params.yaml), metrics/search/<name>.json
(every candidate: recipe, size, metric, wall time, status, the runners-up) and metrics/search/<name>-pareto.svg;
metrics/plots/search-<name>.json is its DVC plot.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from stages.check_params import family_settings, load_checked
from stages.core.errors import BuildError, run_stage
from stages.core.io import read_json, read_yaml, write_json, write_text
from stages.core.paths import METRICS, checkpoint_dir
from stages.core.recipe import precheck_group_size
from stages.core.runtime import log, setup_logging
from stages.core.schema import Device, Strict, Variant
from stages.core.thresholds import bounds_of, check, describe
from stages.families import get_family
from stages.params import Params, format_errors
from stages.search_candidate import RESULTS, SEARCH, candidate_paths, load_candidates, save_candidates

SPEC_FILE = SEARCH / "params.yaml"


class Budget(Strict):
    """A bound on one of the family's validation metrics against the source checkpoint in PyTorch, in the gate's
    terms: `max_increase[_pct]` for a lower-is-better metric (perplexity, WER), `max_decrease[_pct]` for a
    higher-is-better one (CLIP score, retrieval top-1)."""

    metric: str = "perplexity"
    max_increase: float | None = Field(default=None, ge=0)
    max_increase_pct: float | None = Field(default=None, ge=0)
    max_decrease: float | None = Field(default=None, ge=0)
    max_decrease_pct: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def one_bound(self):
        if len(self.bounds()) != 1:
            raise ValueError("set exactly one of max_increase, max_increase_pct, max_decrease, max_decrease_pct")
        return self

    def bounds(self) -> dict[str, float]:
        return bounds_of(self)

    def lower_is_better(self) -> bool:
        return next(iter(self.bounds())).startswith("max_increase")

    def limit(self, source: float) -> float:
        """The metric value at the bound."""
        ((name, amount),) = self.bounds().items()
        change = amount * abs(source) / 100 if name.endswith("_pct") else amount
        return source + change if self.lower_is_better() else source - change

    def describe(self) -> str:
        return describe(self.bounds(), "source")


class Search(Strict):
    model: str  # a model in params.yaml's models (any family with a source reference)
    target: Device = "CPU"
    budget: Budget
    space: list[dict[str, list[Any]]] = Field(min_length=1)  # option grids; the union of their products


class SearchParams(Strict):
    searches: dict[str, Search] = Field(min_length=1)


# ---------------------------------------------------------------- candidates
def candidate_id(model: str, recipe: dict) -> str:
    key = json.dumps({"model": model, **recipe}, sort_keys=True)
    return "c-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def expand(name: str, search: Search, params: Params) -> tuple[list[dict], list[dict]]:
    """The space's valid candidates ({id, recipe, variant}) and the refused combinations (with the reason)."""
    key = f"searches.{name}.space"
    valid, refused, seen = [], [], set()
    for i, grid in enumerate(search.space):
        if unknown := sorted(set(grid) - set(Variant.model_fields) - {"target"}):
            raise BuildError(f"{key}.{i}.{unknown[0]}: not a variant option (see docs/params-reference.md)")
        if "targets" in grid or "target" in grid:
            raise BuildError(f"{key}.{i}: the target is the search's `target`, not a space option")
        for values in itertools.product(*grid.values()):
            recipe = dict(zip(grid, values, strict=True))
            if recipe.get("dataset") and recipe["dataset"] not in params.calibration:
                raise BuildError(f"{key}.{i}.dataset: unknown calibration set '{recipe['dataset']}'")
            try:
                variant = Variant.model_validate({**recipe, "targets": [search.target]})
            except ValidationError as e:
                cid = candidate_id(search.model, {**recipe, "target": search.target})
                refused.append({"id": cid, "recipe": recipe, "status": "invalid", "reason": format_errors(e, "")})
                continue
            recipe = variant.model_dump(exclude_defaults=True, exclude={"targets"})
            cid = candidate_id(search.model, {**recipe, "target": search.target})
            if cid not in seen:
                seen.add(cid)
                valid.append({"id": cid, "recipe": recipe, "variant": variant})
    return valid, refused


SIZE_NEUTRAL = ("awq", "scale_estimation", "dataset", "num_samples")  # change the values, not which layers get int4


def size_layout(recipe: dict) -> str:
    """Candidates with the same layout have the same size (measured: 114,552,521 vs 522 bytes with and without
    AWQ), so a built one predicts its twins' size."""
    return json.dumps({k: v for k, v in recipe.items() if k not in SIZE_NEUTRAL}, sort_keys=True)


def chains(candidates: list[dict]) -> list[list[dict]]:
    """Candidates equal but for `ratio`, ordered smallest artifact first (highest int4 ratio first)."""
    groups: dict[str, list[dict]] = {}
    for c in candidates:
        rest = json.dumps({k: v for k, v in c["recipe"].items() if k != "ratio"}, sort_keys=True)
        groups.setdefault(rest, []).append(c)
    return [sorted(g, key=lambda c: -(c["recipe"].get("ratio") or 1.0)) for g in groups.values()]


def bisect_chain(chain: list[dict], passes) -> None:
    """The first passing member of a chain whose pass/fail is monotone (fail ... fail pass ... pass): the smallest
    first (it often passes, and then nothing larger is worth building), then bisection: O(log n) members
    measured, the others left unmeasured (pruned)."""
    if not chain or passes(chain[0]):
        return
    lo, hi = 1, len(chain)
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(chain[mid]):
            hi = mid
        else:
            lo = mid + 1


# ---------------------------------------------------------------- the search
def source_metric(model: str, metric: str) -> float:
    path = METRICS / "reference" / f"{model}.json"
    if not path.is_file():
        raise BuildError(f"{path}: no source reference for '{model}'; run `dvc repro reference@{model}` first")
    value = read_json(path, "reference metrics")["metrics"].get(metric)
    if not isinstance(value, (int, float)):
        raise BuildError(f"{path}: the source reference has no '{metric}'")
    return float(value)


def build_candidate(c: dict, model: str, target: str) -> dict:
    """Register the candidate as a stage and reproduce it (DVC restores it from its cache when it was built
    before); its record, with the wall time this took here."""
    candidates = load_candidates()
    candidates[c["id"]] = {"model": model, "target": target, "recipe": c["recipe"]}
    save_candidates(candidates)
    start = time.time()
    stage = f"search/dvc.yaml:candidate@{c['id']}"
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage], capture_output=True, text=True
    )
    seconds = round(time.time() - start, 1)
    if proc.returncode != 0:
        del candidates[c["id"]]  # a failing stage would break the next `dvc repro -P`
        save_candidates(candidates)
        errors = [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith(("error:", "ERROR"))]
        return {"status": "error", "reason": errors[0] if errors else f"dvc repro {stage} failed", "seconds": seconds}
    record = read_json(candidate_paths(c["id"])[1], "candidate metrics")
    cached = "Running stage" not in proc.stdout
    return {**record, "seconds": seconds, "cached": cached}


def run_search(name: str, search: Search, params: Params) -> dict:
    spec = params.spec(search.model)
    if spec is None:
        raise BuildError(f"searches.{name}.model: '{search.model}' is not a model of params.yaml")
    family = get_family(spec.family)
    known = family.validation_metrics(family_settings(params, family.name), params, search.model)
    if search.budget.metric not in known:
        raise BuildError(
            f"searches.{name}.budget.metric: '{search.budget.metric}' is not a validation metric of {spec.family} "
            f"model '{search.model}' (have: {', '.join(known)})"
        )
    if not (checkpoint_dir(search.model) / "manifest.json").is_file():
        raise BuildError(f"searches.{name}.model: no checkpoint; run `dvc repro fetch@{search.model}` first")
    source = source_metric(search.model, search.budget.metric)
    limit = search.budget.limit(source)
    candidates, refused = expand(name, search, params)
    for c in list(candidates):
        try:
            precheck_group_size(checkpoint_dir(search.model), c["variant"], c["id"])
        except BuildError as e:
            candidates.remove(c)
            refused.append({"id": c["id"], "recipe": c["recipe"], "status": "invalid", "reason": str(e)})
    results: dict[str, dict] = {}
    sizes: dict[str, int] = {}  # size_layout -> bytes of a built candidate with that layout
    best: list[int] = []  # sizes of the passing candidates
    start = time.time()

    def passes(c: dict) -> bool:
        row = {"id": c["id"], "recipe": c["recipe"]}
        predicted = sizes.get(size_layout(c["recipe"]))
        if predicted is not None and best and predicted >= min(best):
            reason = f"not smaller than a passing candidate ({predicted} >= {min(best)} bytes, by a built twin layout)"
            results[c["id"]] = {**row, "status": "pruned", "reason": reason}
            return True  # every larger member of its chain is not smaller either
        log.info("search %s: candidate %s %s", name, c["id"], c["recipe"])
        r = build_candidate(c, search.model, search.target)
        if not r.get("status"):
            verdict = check(search.budget.bounds(), r["metrics"].get(search.budget.metric), source)
            r["status"] = "passed" if verdict.ok else "failed"
            r |= {} if verdict.ok else {"reason": verdict.note}
        results[c["id"]] = {**row, **r}
        if "size_bytes" in r:
            sizes[size_layout(c["recipe"])] = r["size_bytes"]
            best.extend([r["size_bytes"]] if r["status"] == "passed" else [])
        return r["status"] == "passed"

    for chain in chains(candidates):
        bisect_chain(chain, passes)
    for c in candidates:
        pruned = {"status": "pruned", "reason": "bisection over ratio: a smaller member passed or a larger one failed"}
        results.setdefault(c["id"], {"id": c["id"], "recipe": c["recipe"], **pruned})
    return summarise(name, search, source, limit, list(results.values()) + refused, time.time() - start)


def summarise(name: str, search: Search, source: float, limit: float, rows: list[dict], seconds: float) -> dict:
    sign = 1 if search.budget.lower_is_better() else -1
    bound = f"{search.budget.metric} {'<=' if sign > 0 else '>='} {limit:.4g}"
    passed = sorted(
        (r for r in rows if r["status"] == "passed"),
        key=lambda r: (r["size_bytes"], sign * r["metrics"][search.budget.metric]),
    )
    built = [r for r in rows if "size_bytes" in r]
    return {
        "search": name,
        "model": search.model,
        "target": search.target,
        "budget": search.budget.model_dump(exclude_none=True)
        | {
            "source": source,
            "limit": limit,
            "bound": f"{bound} ({search.budget.describe()})",
        },
        "chosen": passed[0] if passed else None,
        "runners_up": passed[1:4],
        "verdict": "chosen" if passed else f"no candidate in the space meets {bound}",
        "candidates": len(rows),
        "built": sum(1 for r in built if not r.get("cached")),
        "restored_from_cache": sum(1 for r in built if r.get("cached")),
        "pruned": sum(1 for r in rows if r["status"] == "pruned"),
        "invalid": sum(1 for r in rows if r["status"] == "invalid"),
        "wall_seconds": round(seconds, 1),
        "rows": sorted(rows, key=lambda r: (r.get("size_bytes") is None, r.get("size_bytes") or 0)),
    }


def write_results(result: dict) -> None:
    name, metric = result["search"], result["budget"]["metric"]
    points = [
        {
            "id": r["id"],
            "size_mb": round(r["size_bytes"] / 1e6, 3),
            metric: r["metrics"].get(metric),
            "status": r["status"],
        }
        for r in result["rows"]
        if "size_bytes" in r and r["metrics"].get(metric) is not None
    ]
    write_json(RESULTS / f"{name}.json", result)
    write_json(METRICS / "plots" / f"search-{name}.json", points)
    write_text(RESULTS / f"{name}-pareto.svg", pareto_svg(points, result))
    chosen = SEARCH / "chosen" / f"{name}.yaml"
    if result["chosen"]:
        write_text(chosen, chosen_yaml(result))
    elif chosen.exists():
        chosen.unlink()


def chosen_yaml(result: dict) -> str:
    """The chosen recipe as a variant to paste into params.yaml, and the evidence the release card quotes."""
    metric, c = result["budget"]["metric"], result["chosen"]

    def brief(r):
        return {"recipe": r["recipe"], metric: r["metrics"][metric], "size_bytes": r["size_bytes"]}

    evidence = {
        "model": result["model"],
        "target": result["target"],
        "budget": result["budget"],
        "chosen": brief(c),
        "runners_up": [brief(r) for r in result["runners_up"]],
        **{k: result[k] for k in ("candidates", "pruned", "invalid")},  # not the build counts: they vary by host
    }
    head = f"# chosen by `make search` ({result['search']}): {metric} {c['metrics'][metric]:.4g}, bound {result['budget']['limit']:.4g}\n"
    variant = {**c["recipe"], "target": result["target"]}
    return head + yaml.safe_dump({"variants": {result["search"]: variant}, "search": evidence}, sort_keys=False)


def pareto_svg(points: list[dict], result: dict) -> str:
    """Size vs metric, every built candidate, the budget line, the choice marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["budget"]["metric"]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": result["search"]}):
        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
        for status, marker in (("passed", "o"), ("failed", "x")):
            mine = [p for p in points if p["status"] == status]
            ax.scatter([p["size_mb"] for p in mine], [p[metric] for p in mine], marker=marker, label=status)
        ax.axhline(result["budget"]["limit"], linestyle="--", color="grey", label="budget")
        if result["chosen"]:
            c = next(p for p in points if p["id"] == result["chosen"]["id"])
            ax.scatter([c["size_mb"]], [c[metric]], s=160, facecolors="none", edgecolors="red", label="chosen")
        ax.set(title=f"search {result['search']}", xlabel="artifact size (MB)", ylabel=result["budget"]["metric"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        buf = io.StringIO()
        fig.tight_layout()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    return buf.getvalue()


def load_searches(path: Path = SPEC_FILE) -> SearchParams:
    try:
        return SearchParams.model_validate(read_yaml(path) or {})
    except ValidationError as e:
        raise BuildError(format_errors(e, str(path))) from e


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the searches of search/params.yaml")
    run.add_argument("--search", help="one search (default: all)")
    args = ap.parse_args(argv)
    setup_logging()
    searches = load_searches().searches
    if args.search and args.search not in searches:
        raise BuildError(f"{SPEC_FILE}: no search '{args.search}' (have: {', '.join(searches)})")
    params = load_checked()
    failed = []
    for name, search in searches.items():
        if args.search in (None, name):
            result = run_search(name, search, params)
            write_results(result)
            log.info(
                "search %s: %s (%d candidates, %d built, %d restored, %d pruned, %d invalid, %.0f s)",
                name,
                result["verdict"],
                result["candidates"],
                result["built"],
                result["restored_from_cache"],
                result["pruned"],
                result["invalid"],
                result["wall_seconds"],
            )
            if not result["chosen"]:
                failed.append(name)
    if failed:
        raise BuildError(f"no candidate meets the budget of search(es) {', '.join(failed)}: see metrics/search/")
    return None


if __name__ == "__main__":
    run_stage(main)
