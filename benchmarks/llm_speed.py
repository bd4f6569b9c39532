"""Score the same text with the fp16 OpenVINO IR and with the transformers fp32 model, in one run.

    python benchmarks/llm_speed.py [--model smollm2-135m] [--variant fp16] [--repeats 3]

Needs `dvc repro` to have built models/<model>/{checkpoint,<variant>} and data/eval. Prints tokens/s of each,
their ratio (goal: OpenVINO >= 2x) and the perplexity difference (goal: within 0.5 %).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from stages.common import artifact_dir, checkpoint_dir
from stages.evalsets import eval_text
from stages.families.llm import token_ids, window_nll
from stages.params import load_params


def windows(ids: np.ndarray, context: int) -> list[np.ndarray]:
    return [w for w in (ids[i:i + context] for i in range(0, len(ids), context)) if len(w) > 1]


def score_openvino(artifact, wins, precision: str, repeats: int) -> tuple[float, float]:
    import openvino as ov

    core = ov.Core()
    request = core.compile_model(core.read_model(artifact / "openvino_model.xml"), "CPU",
                                 {"INFERENCE_PRECISION_HINT": precision}).create_infer_request()
    window_nll(request, wins[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        results = [window_nll(request, w) for w in wins]
        best = min(best, time.perf_counter() - start)
    nll, n = map(sum, zip(*results))
    return n / best, float(np.exp(nll / n))


def score_transformers(checkpoint, wins, repeats: int) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def run():
        total, count = 0.0, 0
        with torch.inference_mode():
            for w in wins:
                ids = torch.from_numpy(w)[None, :]
                loss = model(input_ids=ids, labels=ids).loss  # mean NLL over len(w) - 1 targets
                total += float(loss) * (len(w) - 1)
                count += len(w) - 1
        return total, count

    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total, count = run()
        best = min(best, time.perf_counter() - start)
    return count / best, float(np.exp(total / count))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--variant", default="fp16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    s = load_params().validate_settings.llm
    artifact = artifact_dir(args.model, args.variant)
    ids = token_ids(artifact, eval_text(s.eval_set))[:s.max_tokens]
    wins = windows(ids, s.context_length)
    print(f"{len(ids)} tokens of '{s.eval_set}' in windows of {s.context_length}, best of {args.repeats}")
    rows = [("transformers fp32", *score_transformers(checkpoint_dir(args.model), wins, args.repeats))]
    for precision in ("f32", "bf16"):
        rows.append((f"OpenVINO {args.variant} IR, {precision} inference",
                     *score_openvino(artifact, wins, precision, args.repeats)))
    base_tps, base_ppl = rows[0][1], rows[0][2]
    print(f"{'engine':40s} {'tokens/s':>10s} {'speedup':>8s} {'perplexity':>11s} {'ppl diff':>9s}")
    for name, tps, ppl in rows:
        print(f"{name:40s} {tps:10.1f} {tps / base_tps:7.2f}x {ppl:11.3f} {100 * (ppl - base_ppl) / base_ppl:+8.2f}%")


if __name__ == "__main__":
    main()
