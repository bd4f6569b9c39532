"""Stage candidate@<id> of search/dvc.yaml: export one recipe-search candidate into search/models/<id> and validate
it as its family validates any artifact (perplexity, WER, retrieval, ... on validate.<family>'s data), on the target
device or else the proxy device (metrics/search/candidates/<id>.json).

    python -m stages.search_candidate --id ID

Its own module, apart from the search strategy (stages/search.py), so that changing how the search walks the space
does not invalidate the candidates DVC has cached.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from stages.check_params import load_checked
from stages.core.errors import BuildError, run_stage
from stages.core.io import read_yaml, write_json, write_text
from stages.core.paths import METRICS
from stages.core.runtime import setup_logging
from stages.core.schema import Variant

SEARCH = Path("search")
CANDIDATES_FILE = SEARCH / "candidates.yaml"
RESULTS = METRICS / "search"


def load_candidates() -> dict:
    data = read_yaml(CANDIDATES_FILE) if CANDIDATES_FILE.is_file() else None
    return (data or {}).get("candidates") or {}


def save_candidates(candidates: dict) -> None:
    header = "# Written by `python -m stages.search run`: the candidates it visited (search/dvc.yaml builds each).\n"
    body = yaml.safe_dump({"candidates": dict(sorted(candidates.items()))}, sort_keys=True)
    write_text(CANDIDATES_FILE, header + body)


def candidate_paths(cid: str) -> tuple[Path, Path]:
    return SEARCH / "models" / cid, RESULTS / "candidates" / f"{cid}.json"


def measure_candidate(cid: str) -> None:
    from stages.export import export
    from stages.families import get_family
    from stages.runner import make_context

    entry = load_candidates().get(cid)
    if entry is None:
        raise BuildError(f"{CANDIDATES_FILE}: no candidate '{cid}'")
    params = load_checked()
    variant = Variant.model_validate({**entry["recipe"], "targets": [entry["target"]]})
    params = params.model_copy(update={"variants": {**params.variants, cid: variant}})
    out, record = candidate_paths(cid)
    manifest = export(params, f"{entry['model']}/{cid}", out)
    family = get_family(params.family_of(entry["model"]))
    device = measuring_device(entry["target"], params.validate_.proxy_device)
    options = family.device_options(device, variant, {})
    ctx = make_context(params, family, entry["model"], adapters=[], device_config=options)  # adapters: not searched
    metrics = family.validate(out, device, ctx).metrics
    write_json(
        record,
        {
            "id": cid,
            "model": entry["model"],
            "target": entry["target"],
            "recipe": entry["recipe"],
            "measured_on": device,
            "size_bytes": manifest["size_bytes"],
            "weight_bitwidths": manifest.get("weight_bitwidths"),
            "metrics": metrics,
        },
    )


def measuring_device(target: str, proxy: str) -> str:
    """The target when this host has it, else the proxy device (the CPU path of an NPU/GPU recipe)."""
    import openvino as ov

    return target if target.split(".")[0] in ov.Core().available_devices else proxy


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--id", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    measure_candidate(args.id)


if __name__ == "__main__":
    run_stage(main)
