"""Speculative decoding speedup table, measured side by side in one run: each main alone vs main + each of its
drafts, over several `num_assistant_tokens`, with acceptance rates.

    python benchmarks/speculative_speed.py [--k 1 2 3 4 5] [--max-new-tokens 64] [--device CPU]

Needs `dvc repro` to have built the pairs of params.yaml (models/pairs/<pair>/pairing.json). Refused pairs are
listed and skipped. Speedup = TPOT of the main alone / TPOT with the draft (> 1 means the draft helps).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from stages.common import read_json
from stages.families.llm import speculative_sweep
from stages.pair import pairing_dir
from stages.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="num_assistant_tokens values")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default="CPU")
    args = ap.parse_args()
    params = load_params()
    settings = params.validate_settings
    rows = []
    for name in params.pairs:
        pairing = read_json(pairing_dir(name) / "pairing.json")
        if pairing["status"] != "paired":
            print(f"{name}: {pairing['status']} ({pairing['tokenizer_check']['problems'][0]})")
            continue
        run = speculative_sweep(Path(pairing["main"]["path"]), Path(pairing["draft"]["path"]), args.device,
                                args.device, settings.inference_precision, settings.speculative.prompts,
                                args.max_new_tokens, args.k, [])
        rows.append([name, "main alone", "-", "-", f"{run['baseline']['tpot_ms']:.1f}", "1.00", "1.00", "-"])
        for s in run["sweep"]:
            rows.append([name, pairing["draft"]["model"], s["num_assistant_tokens"], f"{s['acceptance_rate']:.3f}",
                         f"{s['tpot_ms']:.1f}", f"{s['tpot_speedup']:.2f}", f"{s['throughput_ratio']:.2f}",
                         f"{s['output_match']:.2f}"])
    print(tabulate(rows, headers=["pair", "draft", "num_assistant_tokens", "acceptance", "TPOT ms", "TPOT speedup",
                                  "throughput ratio", "output match"], tablefmt="github"))


if __name__ == "__main__":
    main()
