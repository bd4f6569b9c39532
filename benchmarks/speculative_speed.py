"""Speculative decoding speedup table, measured side by side in one run: each main alone vs main + each of its
drafts (and each `prompt_lookup` entry: draft-free), over several `num_assistant_tokens`, with acceptance rates
and tokens per main-model step.

    python benchmarks/speculative_speed.py [--params params.yaml] [--k 1 2 3 4 5] [--thresholds 0.3]
                                           [--max-new-tokens 64] [--device CPU] [--pair NAME ...]

Needs `dvc repro` to have built the pairs of params.yaml (models/pairs/<pair>/pairing.json; run from the pipeline
root). Refused pairs are listed and skipped. Each pair runs stages.families.llm.speculative_sweep on the pair's
prompts (validate.speculative, or the pair's own prompt set) at validate.inference_precision, main and draft both
on --device. Speedup = TPOT of the main alone / TPOT with the draft (> 1 means the draft helps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from stages.core.errors import BuildError
from stages.core.io import read_json
from stages.core.paths import pairing_dir
from stages.families.llm import speculative_settings, speculative_sweep
from stages.params import load_params
from stages.speculative import lookup_pairing, prompts_for


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="num_assistant_tokens values")
    ap.add_argument(
        "--thresholds", type=float, nargs="*", default=[], help="assistant_confidence_threshold values, swept after --k"
    )
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="CPU", help="device of the main and of the draft")
    ap.add_argument("--pair", nargs="+", default=None, help="only these pairs (default: every pair in params)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    entries = params.speculative_entries()
    if not entries:
        raise SystemExit(f"{args.params}: no pairs and no prompt_lookup entries")
    unknown = [p for p in args.pair or [] if p not in entries]
    if unknown:
        raise SystemExit(f"--pair: not in {args.params}: {', '.join(unknown)} (pairs: {', '.join(entries)})")
    config = {"INFERENCE_PRECISION_HINT": params.validate_.inference_precision}
    rows = []
    for name in args.pair or entries:
        lookup = name in params.prompt_lookup
        try:
            pairing = (
                lookup_pairing(params, name)
                if lookup
                else read_json(pairing_dir(name) / "pairing.json", f"pairing (run `dvc repro pair@{name}`)")
            )
        except BuildError as e:
            raise SystemExit(str(e)) from None
        if pairing["status"] != "paired":
            problems = pairing["tokenizer_check"]["problems"] + pairing.get("eagle3_check", {}).get("problems", [])
            print(f"{name}: {pairing['status']} ({problems[0]})")
            continue
        eagle3 = pairing.get("kind") == "eagle3"  # genai's EAGLE3 mode takes no confidence threshold
        ngrams = params.validate_.speculative.max_ngram_size if lookup else None
        run = speculative_sweep(
            Path(pairing["main"]["path"]),
            None if lookup else Path(pairing["draft"]["path"]),
            args.device,
            args.device,
            {**config, **params.validate_.speculative.plugin_config},
            prompts_for(params, name),
            args.max_new_tokens,
            speculative_settings(args.k, [] if lookup or eagle3 else args.thresholds, ngrams),
        )
        rows.append([name, "main alone", "-", "-", "1.00", f"{run['baseline']['tpot_ms']:.1f}", "1.00", "1.00", "-"])
        for s in run["sweep"]:
            setting = s.get("num_assistant_tokens") or f"confidence {s['assistant_confidence_threshold']}"
            rows.append(
                [
                    name,
                    "prompt lookup" if lookup else pairing["draft"]["model"] + (" (EAGLE3)" if eagle3 else ""),
                    setting,
                    number(s["acceptance_rate"], ".3f"),
                    number(s["tokens_per_step"], ".2f"),
                    f"{s['tpot_ms']:.1f}",
                    f"{s['tpot_speedup']:.2f}",
                    f"{s['throughput_ratio']:.2f}",
                    f"{s['output_match']:.2f}",
                ]
            )
    print(
        tabulate(
            rows,
            headers=[
                "pair",
                "draft",
                "num_assistant_tokens",
                "acceptance",
                "tokens/step",
                "TPOT ms",
                "TPOT speedup",
                "throughput ratio",
                "output match",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
    )


if __name__ == "__main__":
    main()
