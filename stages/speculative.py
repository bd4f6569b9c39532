"""Stage validate-speculative: run a paired main + draft through openvino_genai.LLMPipeline(draft_model=...) on
their devices and write metrics/validate/pairs/<pair>.json.

    python -m stages.speculative --pair NAME

Headline metrics come from the first `num_assistant_tokens` setting; the whole sweep is recorded beside them.
A pair refused by the pair stage is recorded as `refused` (with its diff); a missing device as `not_validated`.
"""
from __future__ import annotations

from pathlib import Path

from stages.common import METRICS, available_devices, device_present, log, read_json, setup_logging, write_json
from stages.families.llm import speculative_sweep
from stages.pair import pairing_dir
from stages.params import Params, load_stage_params, stage_parser

HEADLINE = ("output_match", "acceptance_rate", "tpot_speedup", "throughput_ratio")


class SpeculativeError(SystemExit):
    pass


def pair_metrics_path(pair: str) -> Path:
    return METRICS / "validate" / "pairs" / f"{pair}.json"


def validate_pair(params: Params, name: str) -> dict:
    path = pairing_dir(name) / "pairing.json"
    if not path.is_file():
        raise SpeculativeError(f"{path}: pair '{name}' not checked; run `dvc repro pair@{name}`")
    pairing = read_json(path)
    main, draft = pairing["main"], pairing["draft"]
    record = {"pair": name, "main": f"{main['model']}/{main['variant']}", "draft": f"{draft['model']}/{draft['variant']}",
              "main_device": main["device"], "draft_device": draft["device"], "expect": pairing["expect"],
              "metrics": {}}
    missing = [d for d in {main["device"], draft["device"]} if not device_present(d)]
    if pairing["status"] == "refused":
        record |= {"status": "refused", "reason": "tokenizer check refused the draft",
                   "problems": pairing["tokenizer_check"]["problems"]}
    elif missing:
        record |= {"status": "not_validated", "reason": f"device {', '.join(missing)} not present on this machine "
                                                        f"(available: {', '.join(available_devices())})"}
    else:
        s = params.validate_settings.speculative
        precision = params.validate_settings.inference_precision
        run = speculative_sweep(Path(main["path"]), Path(draft["path"]), main["device"], draft["device"], precision,
                                s.prompts, s.max_new_tokens, s.num_assistant_tokens,
                                s.assistant_confidence_thresholds)
        headline = run["sweep"][0]
        record |= {"status": "validated", "inference_precision": precision,
                   "metrics": {**{k: headline[k] for k in HEADLINE},
                               "tpot_ms_main": run["baseline"]["tpot_ms"], "tpot_ms_speculative": headline["tpot_ms"],
                               "num_assistant_tokens": headline["num_assistant_tokens"]},
                   "baseline": run["baseline"], "sweep": run["sweep"]}
    write_json(pair_metrics_path(name), record)
    log.info("pair %s: %s %s", name, record["status"], record["metrics"] or record.get("reason", ""))
    return record


def main(argv=None) -> None:
    args = stage_parser(__doc__, pair=True).parse_args(argv)
    setup_logging()
    validate_pair(load_stage_params(args), args.pair)


if __name__ == "__main__":
    main()
