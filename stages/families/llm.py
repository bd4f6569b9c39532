"""Causal LMs: perplexity from the stateful IR's logits, greedy generations through openvino_genai.LLMPipeline."""
from __future__ import annotations

import functools
import operator
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from tqdm import tqdm

from stages.families.base import AdapterRun, Family, Validation
from stages.params import LLMValidation, Params


def token_ids(artifact: Path, text: str) -> np.ndarray:
    """Tokenize with the artifact's own OpenVINO tokenizer IR: the one deployments use."""
    import openvino_genai as ov_genai

    tok = ov_genai.Tokenizer(str(artifact))
    return np.asarray(tok.encode(text, add_special_tokens=False).input_ids.data, dtype=np.int64)[0]


def window_nll(request, window: np.ndarray) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods over one window, in a single forward pass."""
    request.reset_state()
    n = len(window)
    inputs = {"input_ids": window[None, :], "attention_mask": np.ones((1, n), dtype=np.int64),
              "position_ids": np.arange(n, dtype=np.int64)[None, :], "beam_idx": np.zeros(1, dtype=np.int32)}
    logits = request.infer(inputs)["logits"][0, :-1]
    nll = logsumexp(logits, axis=-1) - logits[np.arange(n - 1), window[1:]]
    return float(nll.astype(np.float64).sum()), n - 1


def perplexity(artifact: Path, text: str, device: str, precision: str, context_length: int,
               max_tokens: int) -> dict:
    import openvino as ov

    ids = token_ids(artifact, text)[:max_tokens]
    if len(ids) < 2:
        raise ValueError("eval text is shorter than two tokens")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(artifact / "openvino_model.xml"), device,
                                  {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    total, count = 0.0, 0
    windows = [ids[i:i + context_length] for i in range(0, len(ids), context_length)]
    for w in tqdm([w for w in windows if len(w) > 1], desc=f"perplexity {artifact.name}", unit="window"):
        nll, n = window_nll(request, w)
        total += nll
        count += n
    return {"perplexity": float(np.exp(total / count)), "eval_tokens": int(count)}


def generate(artifact: Path, prompts: list[str], device: str, precision: str, max_new_tokens: int,
             adapters: list[AdapterRun] = ()) -> dict[str, list[dict]]:
    """Greedy replies (stopping at EOS), compared across variants: {"none": [...], <adapter>: [...]}. Every
    adapter is registered when the pipeline is built and chosen per generate() call (never fused)."""
    import openvino_genai as ov_genai

    registered = {"adapters": ov_genai.AdapterConfig([a.adapter() for a in adapters])} if adapters else {}
    pipe = ov_genai.LLMPipeline(str(artifact), device, INFERENCE_PRECISION_HINT=precision, **registered)
    choices = [("none", ov_genai.AdapterConfig() if adapters else None)] + [(a.name, a.config()) for a in adapters]
    replies = {}
    for label, adapter_config in choices:
        config = ov_genai.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
        if adapter_config is not None:
            config.adapters = adapter_config
        replies[label] = [{"prompt": p, "output": pipe.generate([p], config).texts[0]}
                          for p in tqdm(prompts, desc=f"generate {artifact.name} ({label})", unit="prompt")]
    return replies


def adapter_pipeline(artifact: Path, device: str, precision: str, adapters: list[AdapterRun]):
    """openvino_genai's continuous-batching pipeline with every adapter registered: the genai pipeline that
    returns prompt log-probabilities (echo=True, logprobs=1)."""
    import openvino_genai as ov_genai

    return ov_genai.ContinuousBatchingPipeline(
        str(artifact), ov_genai.SchedulerConfig(), device,
        {"adapters": ov_genai.AdapterConfig([a.adapter() for a in adapters]), "INFERENCE_PRECISION_HINT": precision})


def pipeline_perplexity(pipe, windows: list[np.ndarray], adapter_config, label: str = "") -> float:
    """Perplexity over token windows with one adapter choice (AdapterConfig() = none, or a blend)."""
    import openvino as ov
    import openvino_genai as ov_genai

    # a new adapter choice takes effect from the request after the one that sets it: prime with one token
    prime = ov_genai.GenerationConfig(max_new_tokens=1)
    prime.adapters = adapter_config
    pipe.generate([ov.Tensor(windows[0][None, :1])], [prime])
    total, count = 0.0, 0
    for window in tqdm(windows, desc=f"perplexity ({label})", unit="window"):
        config = ov_genai.GenerationConfig(max_new_tokens=1, echo=True, logprobs=1)
        config.adapters = adapter_config
        handle = pipe.add_request(0, ov.Tensor(window[None, :]), config)
        while pipe.has_non_finished_requests():
            pipe.step()
        logprobs = np.asarray(handle.read_all()[0].generated_log_probs[1:len(window)], dtype=np.float64)
        total, count = total - logprobs.sum(), count + len(window) - 1
    return float(np.exp(total / count))


def eval_windows(artifact: Path, text: str, context_length: int, max_tokens: int) -> list[np.ndarray]:
    ids = token_ids(artifact, text)[:max_tokens]
    return [w for w in (ids[i:i + context_length] for i in range(0, len(ids), context_length)) if len(w) > 1]


def adapter_perplexities(artifact: Path, text: str, device: str, precision: str, context_length: int,
                         max_tokens: int, adapters: list[AdapterRun]) -> dict[str, float]:
    """Perplexity with no adapter and with each one, switched per request, over the windows `perplexity` uses."""
    import openvino_genai as ov_genai

    windows = eval_windows(artifact, text, context_length, max_tokens)
    pipe = adapter_pipeline(artifact, device, precision, adapters)
    choices = [("none", ov_genai.AdapterConfig())] + [(a.name, a.config()) for a in adapters]
    return {label: pipeline_perplexity(pipe, windows, config, label) for label, config in choices}


def adapter_metrics(perplexities: dict[str, float], replies: dict[str, list[dict]],
                    adapters: list[AdapterRun]) -> dict[str, float]:
    """Per adapter: perplexity, its change vs no adapter (must not be ~0: the adapter is applied), the share of
    replies it changes, and the distance to the PEFT reference's perplexity (adapter stage, fp32 PyTorch)."""
    base = perplexities["none"]
    metrics = {"perplexity@none": base}
    for a in adapters:
        ppl = perplexities[a.name]
        metrics |= {f"perplexity@{a.name}": ppl, f"effect_pct@{a.name}": abs(ppl / base - 1) * 100,
                    f"changed_replies@{a.name}": float(np.mean([x["output"] != y["output"] for x, y in
                                                                zip(replies["none"], replies[a.name])]))}
        if "perplexity" in a.reference:
            metrics[f"peft_delta_pct@{a.name}"] = abs(ppl / a.reference["perplexity"] - 1) * 100
    return metrics


def performance(artifact: Path, device: str, precision: str, prompts: list[str], new_tokens: int) -> dict:
    """Load + compile time, then TTFT / TPOT / throughput over the prompts after a warm-up, each generating
    exactly `new_tokens` (EOS ignored) so variants do the same work."""
    import openvino_genai as ov_genai

    start = time.perf_counter()
    pipe = ov_genai.LLMPipeline(str(artifact), device, INFERENCE_PRECISION_HINT=precision)
    load_s = time.perf_counter() - start
    config = ov_genai.GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True, do_sample=False)
    _, perf, _ = _generate_all(pipe, prompts, config, f"performance {artifact.name}")
    return {"load_s": load_s, "ttft_ms": float(perf.get_ttft().mean), **_timing(perf)}


def text_similarity(a: str, b: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(a, b) / 100.0


class LLMFamily(Family):
    name = "llm"
    task = "text-generation-with-past"
    latency_metric = "tpot_ms"
    pipeline_tag = "text-generation"
    usage = """import openvino_genai as ov_genai

pipe = ov_genai.LLMPipeline("{path}", "{device}")
print(pipe.generate("What is OpenVINO?", max_new_tokens=100))

# or with optimum-intel
from optimum.intel import OVModelForCausalLM
model = OVModelForCausalLM.from_pretrained("{path}")"""

    def report_metrics(self, params: Params) -> list[str]:
        return ["perplexity", "generation_similarity", "generation_exact_match"]

    def settings(self, params: Params) -> LLMValidation:
        return params.validate_settings.llm

    def validate(self, artifact: Path, device: str, params: Params, precision: str,
                 adapters: list[AdapterRun] = ()) -> Validation:
        from stages.evalsets import eval_text

        s, text = self.settings(params), eval_text(self.settings(params).eval_set)
        metrics = perplexity(artifact, text, device, precision, s.context_length, s.max_tokens)
        replies = generate(artifact, s.prompts, device, precision, s.max_new_tokens, adapters)
        outputs = {"generations": replies["none"]}
        if adapters:
            ppls = adapter_perplexities(artifact, text, device, precision, s.context_length, s.max_tokens, adapters)
            metrics |= adapter_metrics(ppls, replies, adapters)
            outputs["adapter_generations"] = {a.name: replies[a.name] for a in adapters}
        return Validation(metrics=metrics, outputs=outputs,
                          info={"eval_set": s.eval_set, "context_length": s.context_length,
                                "adapters": {a.name: {"alpha": a.alpha} for a in adapters}})

    def performance(self, artifact: Path, device: str, params: Params, precision: str) -> dict[str, float]:
        s = self.settings(params)
        return performance(artifact, device, precision, s.prompts, s.max_new_tokens)

    def compare(self, params: Params, reference: Path, current: Path) -> dict[str, float]:
        ref = [g["output"] for g in self.outputs(reference).get("generations", [])]
        cur = [g["output"] for g in self.outputs(current).get("generations", [])]
        if not ref or len(ref) != len(cur):
            return {}
        return {"generation_similarity": float(np.mean([text_similarity(a, b) for a, b in zip(ref, cur)])),
                "generation_exact_match": float(np.mean([a == b for a, b in zip(ref, cur)]))}


# ---------------------------------------------------------------- speculative decoding
def _generate_all(pipe, prompts: list[str], config, label: str) -> tuple[list[str], object, list]:
    """Greedy texts for every prompt, their summed perf metrics and any speculative-decoding metrics
    (after one warm-up call: compilation and caches are not what is being timed)."""
    pipe.generate([prompts[0]], config)
    results = [pipe.generate([prompt], config) for prompt in tqdm(prompts, desc=label, unit="prompt")]
    perf = functools.reduce(operator.add, (r.perf_metrics for r in results))
    return [r.texts[0] for r in results], perf, [r.extended_perf_metrics for r in results
                                                 if r.extended_perf_metrics is not None]


def _timing(perf) -> dict:
    return {"tpot_ms": float(perf.get_tpot().mean), "throughput_tok_s": float(perf.get_throughput().mean),
            "generated_tokens": int(perf.get_num_generated_tokens())}


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def speculative_sweep(main: Path, draft: Path, main_device: str, draft_device: str, precision: str,
                      prompts: list[str], max_new_tokens: int, num_assistant_tokens: list[int],
                      thresholds: list[float]) -> dict:
    """Main alone vs main + draft (openvino_genai.LLMPipeline(draft_model=...)) for each setting of the sweep:
    greedy outputs must be identical; acceptance = accepted / proposed draft tokens; TPOT and throughput ratios."""
    import openvino_genai as ov_genai

    greedy = dict(max_new_tokens=max_new_tokens, do_sample=False)
    alone = ov_genai.LLMPipeline(str(main), main_device, INFERENCE_PRECISION_HINT=precision)
    reference, perf, _ = _generate_all(alone, prompts, ov_genai.GenerationConfig(**greedy), "main alone")
    baseline = _timing(perf)
    del alone
    pipe = ov_genai.LLMPipeline(str(main), main_device, INFERENCE_PRECISION_HINT=precision,
                                draft_model=ov_genai.draft_model(str(draft), draft_device,
                                                                 INFERENCE_PRECISION_HINT=precision))
    settings = [{"num_assistant_tokens": k} for k in num_assistant_tokens] + \
               [{"assistant_confidence_threshold": t} for t in thresholds]
    sweep = []
    for setting in settings:
        label = ", ".join(f"{k}={v}" for k, v in setting.items())
        texts, perf, sd = _generate_all(pipe, prompts, ov_genai.GenerationConfig(**greedy, **setting), label)
        accepted = sum(m.get_num_accepted_tokens() for m in sd)
        proposed = sum(m.get_num_draft_tokens() for m in sd)
        timing = _timing(perf)
        sweep.append({
            **setting, **timing,
            "output_match": float(np.mean([a == b for a, b in zip(reference, texts)])),
            "mismatches": [{"prompt": p, "main_alone": a, "speculative": b,
                            "first_difference_at": _first_difference(a, b)}
                           for p, a, b in zip(prompts, reference, texts) if a != b],
            "accepted_tokens": int(accepted), "proposed_tokens": int(proposed),
            "acceptance_rate": accepted / proposed if proposed else None,
            "tpot_speedup": baseline["tpot_ms"] / timing["tpot_ms"],
            "throughput_ratio": timing["throughput_tok_s"] / baseline["throughput_tok_s"],
        })
    return {"baseline": baseline, "sweep": sweep, "reference_outputs": reference}
