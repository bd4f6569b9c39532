"""Stage validate-speculative: run a paired main + draft (or prompt lookup) through openvino_genai.LLMPipeline on
their devices; record what does not depend on the host's speed in metrics/validate/pairs/<pair>.json.

    python -m stages.speculative --pair NAME            (accuracy: output match, acceptance; dvc.yaml)
    python -m stages.speculative --pair NAME --speed    (TPOT / throughput with and without; perf/dvc.yaml)

Headline metrics come from the sweep's best setting (highest acceptance with identical output for the accuracy
record, fastest for the speed record); the whole sweep is recorded beside them. A pair refused by the pair stage
is recorded as `refused` (with its diff); a missing device as `not_validated`; the speed record as `skipped` when
`validate.performance` is false.
"""

from __future__ import annotations

from pathlib import Path

from stages.check_params import load_checked_stage_params
from stages.core.errors import run_stage
from stages.core.io import read_json, write_json
from stages.core.paths import artifact_dir, pair_metrics_path, pair_performance_path, pairing_dir
from stages.core.runtime import available_devices, device_name, device_present, log, setup_logging
from stages.families.llm import speculative_settings, speculative_sweep
from stages.params import Params, stage_parser

ACCURACY = (
    "output_match",
    "acceptance_rate",
    "draft_share",
    "tokens_per_step",
    "accepted_tokens",
    "proposed_tokens",
    "mismatches",
)
SPEED = ("tpot_ms", "throughput_tok_s", "generated_tokens", "tpot_speedup", "throughput_ratio")


def prompts_for(params: Params, name: str) -> list[str]:
    from stages.core.textdata import read_prompts

    s, pair = params.validate_.speculative, params.speculative_entries()[name]
    return read_prompts(pair.prompts, f"prompt_sets.{pair.prompts}") if pair.prompts else s.prompts


def headline(sweep: list[dict], speed: bool) -> dict | None:
    """The best setting among those that keep the main's greedy output: fastest (speed) or most accepted
    (accuracy). None when no setting keeps it (speed); for accuracy, then the closest to the main's output, so the
    gate fails on its output_match."""
    matching = [s for s in sweep if s["output_match"] == 1.0]
    if speed:
        return max(matching, key=lambda s: s["tpot_speedup"]) if matching else None
    return max(matching or sweep, key=lambda s: (s["output_match"], s["acceptance_rate"] or s["draft_share"] or 0.0))


def setting_of(entry: dict) -> dict:
    return {
        k: entry[k] for k in ("num_assistant_tokens", "assistant_confidence_threshold", "max_ngram_size") if k in entry
    }


def lookup_pairing(params: Params, name: str) -> dict:
    """Prompt lookup as a pair whose "draft" is the prompt itself (no draft model, nothing to pair-check)."""
    entry = params.prompt_lookup[name]
    device = entry.main_device or params.variants[entry.main.split("/")[1]].target
    model, variant = entry.main.split("/")
    return {
        "status": "paired",
        "kind": "prompt-lookup",
        "expect": "compatible",
        "main": {"model": model, "variant": variant, "path": artifact_dir(entry.main).as_posix(), "device": device},
        "draft": {"model": "prompt-lookup", "variant": "-", "path": None, "device": device},
    }


def validate_pair(params: Params, name: str, speed: bool = False) -> dict:
    pairing = (
        lookup_pairing(params, name)
        if name in params.prompt_lookup
        else read_json(pairing_dir(name) / "pairing.json", f"pairing (run `dvc repro pair@{name}`)")
    )
    main, draft = pairing["main"], pairing["draft"]
    record = {
        "pair": name,
        "main": f"{main['model']}/{main['variant']}",
        "draft": "prompt-lookup" if draft["path"] is None else f"{draft['model']}/{draft['variant']}",
        "main_device": main["device"],
        "draft_device": draft["device"],
        "expect": pairing["expect"],
        "draft_kind": pairing.get("kind", "draft"),
        "metrics": {},
    }
    missing = [d for d in dict.fromkeys((main["device"], draft["device"])) if not device_present(d)]
    if pairing["status"] == "refused":
        record |= {
            "status": "refused",
            "reason": f"{'EAGLE3' if record['draft_kind'] == 'eagle3' else 'tokenizer'} check refused the draft",
            "problems": pairing["tokenizer_check"]["problems"] + pairing.get("eagle3_check", {}).get("problems", []),
        }
    elif speed and not params.validate_.performance:
        record |= {"status": "skipped", "reason": "validate.performance is false"}
    elif missing:
        record |= {
            "status": "not_validated",
            "reason": f"device {', '.join(missing)} not present on this host "
            f"(available: {', '.join(available_devices())})",
        }
    else:
        record |= run_sweep(params, name, main, draft, speed, eagle3=record["draft_kind"] == "eagle3")
    write_json((pair_performance_path if speed else pair_metrics_path)(name), record)
    log.info("pair %s: %s %s", name, record["status"], record["metrics"] or record.get("reason", ""))
    return record


def run_sweep(params: Params, name: str, main: dict, draft: dict, speed: bool, eagle3: bool = False) -> dict:
    s, precision = params.validate_.speculative, params.validate_.inference_precision
    lookup = draft["path"] is None
    thresholds = [] if eagle3 else s.assistant_confidence_thresholds  # genai's EAGLE3 mode takes no threshold
    settings = speculative_settings(s.num_assistant_tokens, thresholds, s.max_ngram_size if lookup else None)
    run = speculative_sweep(
        Path(main["path"]),
        None if lookup else Path(draft["path"]),
        main["device"],
        draft["device"],
        {"INFERENCE_PRECISION_HINT": precision, **s.plugin_config},
        prompts_for(params, name),
        s.max_new_tokens,
        settings,
    )
    keep = SPEED if speed else ACCURACY
    sweep = [{**setting_of(e), **{k: e[k] for k in keep}} for e in run["sweep"]]
    best = headline(run["sweep"], speed)
    if best is None:
        return {
            "status": "validated",
            "inference_precision": precision,
            "best_setting": None,
            "metrics": {},
            "reason": "no setting keeps the main's greedy output: no speed is reported for this pair",
            "sweep": sweep,
            "baseline": run["baseline"],
        }
    metrics = {k: best[k] for k in keep if k != "mismatches"}
    extra = (
        {
            "baseline": run["baseline"],
            "device_names": {d: device_name(d) for d in dict.fromkeys((main["device"], draft["device"]))},
        }
        if speed
        else {}
    )
    return {
        "status": "validated",
        "inference_precision": precision,
        "plugin_config": s.plugin_config,
        "best_setting": setting_of(best),
        "metrics": metrics,
        "sweep": sweep,
        "prompts": len(prompts_for(params, name)),
        **extra,
    }


def main(argv=None) -> None:
    ap = stage_parser(__doc__, pair=True)
    ap.add_argument("--speed", action="store_true", help="measure TPOT / throughput (perf/dvc.yaml)")
    args = ap.parse_args(argv)
    setup_logging()
    validate_pair(load_checked_stage_params(args), args.pair, args.speed)


if __name__ == "__main__":
    run_stage(main)
