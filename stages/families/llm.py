"""Causal LMs: perplexity from the stateful IR (the log-probability of each target token computed inside the
OpenVINO graph), greedy generations through openvino_genai.LLMPipeline; the source checkpoint in transformers fp32
on the same token windows and prompts."""

from __future__ import annotations

import functools
import operator
import time
from pathlib import Path

import numpy as np
from pydantic import Field
from tqdm import tqdm

from stages.core import metrics as m
from stages.core.errors import BuildError
from stages.core.io import read_json
from stages.core.paths import eval_text_path
from stages.core.schema import NPUSettings, Strict, device_kind
from stages.core.textdata import eval_text
from stages.families import register
from stages.families.base import AdapterRun, Comparison, Family, RunContext, Validation, register_adapters, worst


class LLMSettings(Strict):
    reference: str = "fp16"  # the variant others are compared with (besides the source checkpoint)
    eval_set: str
    context_length: int = Field(default=512, gt=1)
    max_tokens: int = Field(default=2048, gt=1)
    prompts: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(default=32, gt=0)


# ---------------------------------------------------------------- token windows
def hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def eval_windows(folder: Path, text: str, context_length: int, max_tokens: int) -> list[np.ndarray]:
    """Non-overlapping windows of the text's tokens, by the HF tokenizer in `folder` (the source's tokenizer: the
    artifact and the PyTorch reference score the same windows)."""
    ids = np.asarray(hf_tokenizer(folder)(text, add_special_tokens=False)["input_ids"][:max_tokens], dtype=np.int64)
    windows = [ids[i : i + context_length] for i in range(0, len(ids), context_length)]
    windows = [w for w in windows if len(w) > 1]
    if not windows:
        raise BuildError("eval text is shorter than two tokens")
    return windows


def ir_token_ids(artifact: Path, text: str) -> list[int]:
    """The text through the artifact's OpenVINO tokenizer IR (what deployments run)."""
    import openvino_genai as ov_genai

    return [int(i) for i in ov_genai.Tokenizer(str(artifact)).encode(text, add_special_tokens=False).input_ids.data[0]]


# ---------------------------------------------------------------- scoring in the graph
def scoring_model(model_xml: Path):
    """The stateful LLM IR with its logits output replaced by log p(label) per position: a `labels` input
    [batch, seq] and an output [batch, seq]. OpenVINO computes log-softmax + gather itself, so T numbers leave
    the graph instead of T x V logits (the slow part of scoring on CPU)."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(model_xml)
    result = next(r for r in model.get_results() if "logits" in r.output(0).get_names())
    logits = result.input_value(0)
    labels = ops.parameter([-1, -1], ov.Type.i64, name="labels")
    labels.output(0).set_names({"labels"})
    logp = ops.log_softmax(ops.convert(logits, ov.Type.f32), -1)
    picked = ops.squeeze(ops.gather_elements(logp, ops.unsqueeze(labels, -1), -1), ops.constant([-1]))
    picked.output(0).set_names({"token_logprobs"})
    result.input(0).replace_source_output(picked.output(0))
    model.add_parameters([labels])
    model.validate_nodes_and_infer_types()
    return model


def static_scoring_model(model_xml: Path, seq_len: int):
    """The scoring model for static-shape devices (NPU): stateless, an empty past (no KV cache inputs), reshaped to
    [1, seq_len]; windows are right-padded to seq_len (causal attention: real positions never see the padding)."""
    import openvino.opset13 as ops
    from openvino._offline_transformations import stateful_to_stateless_transformation

    model = scoring_model(model_xml)
    stateful_to_stateless_transformation(model)  # ReadValue/Assign -> past_key_values.* inputs, present.* outputs
    for p in list(model.get_parameters()):
        name = p.get_output_tensor(0).get_any_name()
        if name.startswith("past_key_values"):  # an empty past: [1, kv_heads, 0, head_dim]
            ps = p.get_partial_shape()
            shape = [
                1 if i == 0 else (0 if ps[i].is_dynamic else ps[i].get_length()) for i in range(ps.rank.get_length())
            ]
            p.output(0).replace(ops.constant(np.zeros(shape, p.get_element_type().to_dtype())).output(0))
            model.remove_parameter(p)
        elif name == "beam_idx":
            p.output(0).replace(ops.constant(np.zeros([1], np.int32)).output(0))
            model.remove_parameter(p)
    for r in list(model.get_results()):
        if "token_logprobs" not in r.output(0).get_names() and "logits" not in r.output(0).get_names():
            model.remove_result(r)  # the present.* outputs
    model.reshape({i.get_any_name(): [1, seq_len] for i in model.inputs})
    model.validate_nodes_and_infer_types()
    return model


def score_windows_static(artifact: Path, windows: list[np.ndarray], device: str, ctx: RunContext) -> list[float]:
    """Negative log-likelihood of each window's next tokens through a static-shape device's plugin (NPU)."""
    import openvino as ov

    seq_len = max(len(w) for w in windows)
    compiled = ov.Core().compile_model(
        static_scoring_model(artifact / "openvino_model.xml", seq_len), device, ctx.compile_config()
    )
    request = compiled.create_infer_request()
    nlls = []
    for w in tqdm(windows, desc=f"perplexity {artifact.name} on {device} (static)", unit="window"):
        k = len(w)
        feed = {
            "input_ids": np.zeros((1, seq_len), np.int64),
            "attention_mask": np.zeros((1, seq_len), np.int64),
            "position_ids": np.arange(seq_len, dtype=np.int64)[None],
            "labels": np.zeros((1, seq_len), np.int64),
        }
        feed["input_ids"][0, :k], feed["attention_mask"][0, :k], feed["labels"][0, : k - 1] = w, 1, w[1:]
        logp = request.infer(feed)[compiled.outputs[0]][0, : k - 1]
        nlls.append(float(-np.asarray(logp, dtype=np.float64).sum()))
    return nlls


def prompt_limit_probe(pipe, tokenizer, max_prompt_len: int) -> dict[str, float]:
    """The NPU pipeline compiles for MAX_PROMPT_LEN tokens: a longer prompt must raise a clear error (measured on
    genai 2026.4: it does, naming MAX_PROMPT_LEN), never be truncated silently or give garbage."""
    ids = tokenizer("word " * (max_prompt_len + 8), add_special_tokens=False)["input_ids"][: max_prompt_len + 1]
    import openvino as ov

    try:
        pipe.generate(ov.Tensor(np.asarray([ids], dtype=np.int64)), greedy(2))
    except RuntimeError as e:
        return {"prompt_limit_enforced": float("MAX_PROMPT_LEN" in str(e))}
    return {"prompt_limit_enforced": 0.0}


def check_npu_budget(artifact: Path, prompts: list[str], max_new_tokens: int, options: dict) -> None:
    """genai's NPU pipeline stops silently (finish reason NONE) once prompt + reply fill MAX_PROMPT_LEN +
    MIN_RESPONSE_LEN: refuse settings that could hit that, rather than validate truncated replies."""
    if "MAX_PROMPT_LEN" not in options:
        return
    tok = hf_tokenizer(artifact)
    longest = max(
        len(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True))
        if tok.chat_template
        else len(tok(p)["input_ids"])
        for p in prompts
    )
    budget = options["MAX_PROMPT_LEN"] + options["MIN_RESPONSE_LEN"]
    if longest > options["MAX_PROMPT_LEN"] or longest + max_new_tokens > budget:
        raise BuildError(
            f"{artifact}: a prompt of {longest} tokens + max_new_tokens {max_new_tokens} does not fit "
            f"the NPU pipeline's MAX_PROMPT_LEN {options['MAX_PROMPT_LEN']} / MIN_RESPONSE_LEN "
            f"{options['MIN_RESPONSE_LEN']} (raise variants.<variant>.npu.max_prompt_len / "
            "min_response_len)"
        )


def score_windows(artifact: Path, windows: list[np.ndarray], device: str, ctx: RunContext) -> list[float]:
    """Negative log-likelihood of each window's next tokens, one forward pass per window."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(scoring_model(artifact / "openvino_model.xml"), device, ctx.compile_config())
    request = compiled.create_infer_request()
    names = {i.get_any_name() for i in compiled.inputs}
    nlls = []
    for w in tqdm(windows, desc=f"perplexity {artifact.name} on {device}", unit="window"):
        request.reset_state()
        n = len(w)
        inputs = {
            "input_ids": w[None, :],
            "attention_mask": np.ones((1, n), dtype=np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None, :],
            "beam_idx": np.zeros(1, dtype=np.int32),
            "labels": np.concatenate([w[1:], [0]])[None, :],
        }
        logp = request.infer({k: v for k, v in inputs.items() if k in names})[compiled.outputs[0]][0, :-1]
        nlls.append(float(-np.asarray(logp, dtype=np.float64).sum()))
    return nlls


def window_records(folder: Path, windows: list[np.ndarray], nlls: list[float]) -> list[dict]:
    tok = hf_tokenizer(folder)
    return [
        {"index": i, "tokens": len(w) - 1, "nll": nll, "text": tok.decode(w[:24]).strip()[:100]}
        for i, (w, nll) in enumerate(zip(windows, nlls))
    ]


def perplexity_metrics(windows: list[np.ndarray], nlls: list[float]) -> dict[str, float]:
    count = sum(len(w) - 1 for w in windows)
    return {"perplexity": m.perplexity(sum(nlls), count), "eval_tokens": float(count)}


def perplexity(artifact: Path, text: str, device: str, precision: str, context_length: int, max_tokens: int) -> dict:
    """Perplexity of any LLM IR on any text (the ad hoc CLI)."""
    windows = eval_windows(artifact, text, context_length, max_tokens)
    return perplexity_metrics(windows, score_windows(artifact, windows, device, RunContext(None, precision)))


# ---------------------------------------------------------------- generation
def greedy(max_new_tokens: int, **extra):
    import openvino_genai as ov_genai

    return ov_genai.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, **extra)


def generate(
    artifact: Path,
    prompts: list[str],
    device: str,
    ctx: RunContext,
    max_new_tokens: int,
    adapters: list[AdapterRun] = (),
) -> tuple[dict[str, list[dict]], object]:
    """Greedy replies (stopping at EOS), compared across runs: ({"none": [...], <adapter>: [...]}, the pipeline).
    Every adapter is registered when the pipeline is built and chosen per generate() call (never fused)."""
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(artifact), device, **ctx.pipeline_config(), **register_adapters(adapters))
    choices = [("none", ov_genai.AdapterConfig() if adapters else None)] + [(a.name, a.config()) for a in adapters]
    replies = {}
    for label, adapter_config in choices:
        config = greedy(max_new_tokens)
        if adapter_config is not None:
            config.adapters = adapter_config
        replies[label] = [
            {"prompt": p, "output": pipe.generate([p], config).texts[0]}
            for p in tqdm(prompts, desc=f"generate {artifact.name} ({label})", unit="prompt")
        ]
    return replies, pipe


# ---------------------------------------------------------------- LoRA adapters
def adapter_pipeline(artifact: Path, device: str, ctx: RunContext, adapters: list[AdapterRun]):
    """openvino_genai's continuous-batching pipeline with every adapter registered: the genai pipeline that
    returns prompt log-probabilities (echo=True, logprobs=1)."""
    import openvino_genai as ov_genai

    return ov_genai.ContinuousBatchingPipeline(
        str(artifact), ov_genai.SchedulerConfig(), device, {**register_adapters(adapters), **ctx.pipeline_config()}
    )


def pipeline_perplexity(pipe, windows: list[np.ndarray], adapter_config, label: str = "") -> float:
    """Perplexity over token windows with one adapter choice (AdapterConfig() = none, or a blend)."""
    import openvino as ov

    # a new adapter choice takes effect from the request after the one that sets it: prime with one token
    prime = greedy(1)
    prime.adapters = adapter_config
    pipe.generate([ov.Tensor(windows[0][None, :1])], [prime])
    total, count = 0.0, 0
    for window in tqdm(windows, desc=f"perplexity ({label})", unit="window"):
        config = greedy(1, echo=True, logprobs=1)
        config.adapters = adapter_config
        handle = pipe.add_request(0, ov.Tensor(window[None, :]), config)
        while pipe.has_non_finished_requests():
            pipe.step()
        logprobs = np.asarray(handle.read_all()[0].generated_log_probs[1 : len(window)], dtype=np.float64)
        total, count = total - logprobs.sum(), count + len(window) - 1
    return m.perplexity(total, count)


def adapter_perplexities(artifact: Path, windows: list[np.ndarray], device: str, ctx: RunContext) -> dict[str, float]:
    """Perplexity with no adapter and with each one, switched per request, over the windows validation scores."""
    import openvino_genai as ov_genai

    pipe = adapter_pipeline(artifact, device, ctx, ctx.adapters)
    choices = [("none", ov_genai.AdapterConfig())] + [(a.name, a.config()) for a in ctx.adapters]
    return {label: pipeline_perplexity(pipe, windows, config, label) for label, config in choices}


def adapter_metrics(
    perplexities: dict[str, float], replies: dict[str, list[dict]], adapters: list[AdapterRun]
) -> dict[str, float]:
    """Per adapter: perplexity, its change vs no adapter (must not be ~0: the adapter is applied), the share of
    replies it changes, and the distance to the PEFT reference's perplexity (adapter stage, fp32 PyTorch)."""
    base = perplexities["none"]
    metrics = {"perplexity@none": base}
    for a in adapters:
        ppl = perplexities[a.name]
        metrics |= {
            f"perplexity@{a.name}": ppl,
            f"effect_pct@{a.name}": abs(ppl / base - 1) * 100,
            f"changed_replies@{a.name}": m.share(
                x["output"] != y["output"] for x, y in zip(replies["none"], replies[a.name])
            ),
        }
        if "perplexity" in a.reference:
            metrics[f"peft_delta_pct@{a.name}"] = abs(ppl / a.reference["perplexity"] - 1) * 100
    return metrics


# ---------------------------------------------------------------- PyTorch reference
def torch_model(checkpoint: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def torch_window_nlls(model, windows: list[np.ndarray]) -> list[float]:
    import torch

    nlls = []
    with torch.no_grad():
        for w in tqdm(windows, desc="perplexity (PyTorch fp32)", unit="window"):
            ids = torch.from_numpy(w)[None]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            nlls.append(float(-logp[torch.arange(len(w) - 1), ids[0, 1:]].sum()))
    return nlls


def torch_replies(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Greedy replies as openvino-genai makes them: the chat template applied to the prompt as a user turn, then
    decoding until EOS or max_new_tokens, special tokens skipped."""
    import torch

    replies = []
    for prompt in tqdm(prompts, desc="generate (PyTorch fp32)", unit="prompt"):
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        replies.append({"prompt": prompt, "output": tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)})
    return replies


def compare_replies(ref: list[dict], cur: list[dict]) -> tuple[dict[str, float], list[dict]]:
    if not ref or [r["prompt"] for r in ref] != [c["prompt"] for c in cur]:
        return {}, []
    sims = [
        {
            "prompt": r["prompt"],
            "reference": r["output"],
            "output": c["output"],
            "similarity": m.text_similarity(r["output"], c["output"]),
        }
        for r, c in zip(ref, cur)
    ]
    return (
        {
            "generation_similarity": m.mean(s["similarity"] for s in sims),
            "generation_exact_match": m.share(s["reference"] == s["output"] for s in sims),
        },
        [{"kind": "reply", **s} for s in worst([s for s in sims if s["similarity"] < 1], "similarity")],
    )


def compare_windows(ref: list[dict], cur: list[dict]) -> list[dict]:
    if not ref or [r["tokens"] for r in ref] != [c["tokens"] for c in cur]:
        return []
    moved = [
        {
            "kind": "window",
            "index": c["index"],
            "text": c["text"],
            "nll_per_token_change": (c["nll"] - r["nll"]) / c["tokens"],
        }
        for r, c in zip(ref, cur)
    ]
    return worst([x for x in moved if x["nll_per_token_change"] > 1e-3], "nll_per_token_change", reverse=True)


@register
class LLMFamily(Family):
    name = "llm"
    Settings = LLMSettings
    task = "text-generation-with-past"
    latency_metric = "tpot_ms"
    pipeline_tag = "text-generation"
    adapter_families = True
    accuracy_metrics = ("perplexity", "generation_similarity", "generation_exact_match")
    comparison_metrics = ("generation_similarity", "generation_exact_match")
    default_rules = (
        {"metric": "perplexity", "against": "source", "max_increase_pct": 5},
        {"metric": "tokenizer_parity", "min": 1.0},
    )
    usage = """import openvino_genai as ov_genai

pipe = ov_genai.LLMPipeline("{path}", "{device}")
print(pipe.generate("What is OpenVINO?", max_new_tokens=100))

# or with optimum-intel
from optimum.intel import OVModelForCausalLM
model = OVModelForCausalLM.from_pretrained("{path}")"""

    def check_params(self, settings: LLMSettings, params, key: str) -> None:
        if settings.eval_set not in params.eval_sets:
            raise ValueError(f"{key}.eval_set: unknown eval set '{settings.eval_set}'")

    def validation_metrics(self, settings: LLMSettings, params, model: str) -> list[str]:
        names = ["perplexity", "eval_tokens", "eval_tokenizer_match", "tokenizer_parity", "prompt_limit_enforced"]
        adapters = params.adapters_for(model)
        if adapters:
            names.append("perplexity@none")
        for a in adapters:
            names += [f"perplexity@{a}", f"effect_pct@{a}", f"changed_replies@{a}", f"peft_delta_pct@{a}"]
        return names

    def plan_inputs(self, settings: LLMSettings, params, model: str) -> dict[str, Path]:
        return {f"eval_set:{settings.eval_set}": eval_text_path(settings.eval_set)}

    def report_metrics(self, settings) -> list[str]:
        return ["perplexity", "generation_similarity", "generation_exact_match", "tokenizer_parity"]

    def device_options(self, device: str, variant, emulation: dict) -> dict:
        """NPU: the static-shape pipeline's prompt and response budgets (and hints); emulated, NPUW's partitions
        on the CPU (LLMPipeline drives NPUW itself, so only its device list is given)."""
        if device_kind(device) != "NPU":
            return dict(emulation)
        npu = variant.npu or NPUSettings()
        options = {"MAX_PROMPT_LEN": npu.max_prompt_len, "MIN_RESPONSE_LEN": npu.min_response_len}
        options |= {k: v for k, v in (("GENERATE_HINT", npu.generate_hint), ("PREFILL_HINT", npu.prefill_hint)) if v}
        if emulation:
            options |= {k: emulation[k] for k in ("NPUW_DEVICES", "DYNAMIC_QUANTIZATION_GROUP_SIZE") if k in emulation}
        return options

    def validate(self, artifact: Path, device: str, ctx: RunContext) -> Validation:
        s: LLMSettings = ctx.settings
        npu = device_kind(device) == "NPU"
        if npu:
            check_npu_budget(artifact, s.prompts, s.max_new_tokens, ctx.device_config)
        text = eval_text(s.eval_set)
        windows = eval_windows(artifact, text, s.context_length, s.max_tokens)
        # the NPU compiles static shapes only: its own scoring graph, through the NPU plugin (NPUW when emulated)
        nlls = (score_windows_static if npu else score_windows)(artifact, windows, device, ctx)
        hf_ids = [int(t) for w in windows for t in w]
        ir_ids = ir_token_ids(artifact, text)[: len(hf_ids)]
        metrics = {
            **perplexity_metrics(windows, nlls),
            "eval_tokenizer_match": float(ir_ids == hf_ids),
            **tokenizer_parity_metric(artifact),
        }
        adapters = [] if npu else ctx.adapters  # genai's NPU pipeline takes no LoRA adapters here
        replies, pipe = generate(artifact, s.prompts, device, ctx, s.max_new_tokens, adapters)
        if npu:
            metrics |= prompt_limit_probe(pipe, hf_tokenizer(artifact), ctx.device_config["MAX_PROMPT_LEN"])
        outputs = {"generations": replies["none"], "windows": window_records(artifact, windows, nlls)}
        if adapters:
            metrics |= adapter_metrics(adapter_perplexities(artifact, windows, device, ctx), replies, ctx.adapters)
            outputs["adapter_generations"] = {a.name: replies[a.name] for a in ctx.adapters}
        return Validation(
            metrics=metrics,
            outputs=outputs,
            info={
                "eval_set": s.eval_set,
                "context_length": s.context_length,
                "windows": len(windows),
                "tokenized_by": "the artifact's HF tokenizer (= source)",
                "scoring": "static [1, context_length] graph" if npu else "stateful graph",
                "device_options": {k: v for k, v in ctx.device_config.items()},
                "adapters": {a.name: {"alpha": a.alpha} for a in ctx.adapters},
            },
        )

    def reference(self, checkpoint: Path, ctx: RunContext) -> Validation:
        s: LLMSettings = ctx.settings
        windows = eval_windows(checkpoint, eval_text(s.eval_set), s.context_length, s.max_tokens)
        model = torch_model(checkpoint)
        nlls = torch_window_nlls(model, windows)
        replies = torch_replies(model, hf_tokenizer(checkpoint), s.prompts, s.max_new_tokens)
        return Validation(
            metrics=perplexity_metrics(windows, nlls),
            outputs={"generations": replies, "windows": window_records(checkpoint, windows, nlls)},
            info={
                "eval_set": s.eval_set,
                "context_length": s.context_length,
                "windows": len(windows),
                "how": "transformers AutoModelForCausalLM, fp32 PyTorch on CPU, greedy",
            },
        )

    def compare(self, reference: Path, current: Path, ctx: RunContext) -> Comparison:
        ref, cur = self.outputs(reference), self.outputs(current)
        metrics, worst_replies = compare_replies(ref.get("generations", []), cur.get("generations", []))
        return Comparison(metrics, worst_replies + compare_windows(ref.get("windows", []), cur.get("windows", [])))

    def performance(self, artifact: Path, device: str, ctx: RunContext) -> dict[str, float]:
        s: LLMSettings = ctx.settings
        return performance(artifact, device, ctx, s.prompts, s.max_new_tokens)


def tokenizer_parity_metric(artifact: Path) -> dict[str, float]:
    """The share of probes the tokenizer IR encodes (and decodes) like the HF tokenizer, as export measured it."""
    parity = read_json(artifact / "manifest.json").get("tokenizer_parity") or {}
    return {"tokenizer_parity": parity["share"]} if "share" in parity else {}


def performance(artifact: Path, device: str, ctx: RunContext, prompts: list[str], new_tokens: int) -> dict:
    """Load + compile time, then TTFT / TPOT / throughput over the prompts after a warm-up, each generating
    exactly `new_tokens` (EOS ignored) so variants do the same work."""
    import openvino_genai as ov_genai

    start = time.perf_counter()
    pipe = ov_genai.LLMPipeline(str(artifact), device, **ctx.pipeline_config())
    load_s = time.perf_counter() - start
    _, perf, _ = generate_all(pipe, prompts, greedy(new_tokens, ignore_eos=True), f"performance {artifact.name}")
    return {"load_s": load_s, "ttft_ms": float(perf.get_ttft().mean), **timing(perf)}


# ---------------------------------------------------------------- speculative decoding
def generate_all(pipe, prompts: list[str], config, label: str) -> tuple[list[str], object, list]:
    """Greedy texts for every prompt, their summed perf metrics and any speculative-decoding metrics
    (after one warm-up call: compilation and caches are not what is being timed)."""
    pipe.generate([prompts[0]], config)
    results = [pipe.generate([prompt], config) for prompt in tqdm(prompts, desc=label, unit="prompt")]
    perf = functools.reduce(operator.add, (r.perf_metrics for r in results))
    return (
        [r.texts[0] for r in results],
        perf,
        [r.extended_perf_metrics for r in results if r.extended_perf_metrics is not None],
    )


def timing(perf) -> dict:
    return {
        "tpot_ms": float(perf.get_tpot().mean),
        "throughput_tok_s": float(perf.get_throughput().mean),
        "generated_tokens": int(perf.get_num_generated_tokens()),
    }


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def speculative_settings(
    num_assistant_tokens: list[int], thresholds: list[float], max_ngram_size: list[int] | None = None
) -> list[dict]:
    """The sweep: prompt lookup over (max_ngram_size x num_assistant_tokens), a draft over num_assistant_tokens
    then confidence thresholds."""
    if max_ngram_size:
        return [{"max_ngram_size": n, "num_assistant_tokens": k} for n in max_ngram_size for k in num_assistant_tokens]
    return [{"num_assistant_tokens": k} for k in num_assistant_tokens] + [
        {"assistant_confidence_threshold": t} for t in thresholds
    ]


def speculative_pipeline(main: Path, draft: Path | None, main_device: str, draft_device: str, config: dict):
    """LLMPipeline with a draft model, or with prompt lookup (draft-free: n-grams of the prompt are the proposal)."""
    import openvino_genai as ov_genai

    if draft is None:
        return ov_genai.LLMPipeline(str(main), main_device, prompt_lookup=True, **config)
    return ov_genai.LLMPipeline(
        str(main), main_device, **config, draft_model=ov_genai.draft_model(str(draft), draft_device, **config)
    )


def proposal_counts(perf, sd: list, generated: int) -> tuple[int, int | None]:
    """Accepted and proposed tokens. A draft model's counters come with each result; prompt lookup leaves them
    empty, but each of its main-model steps emits the main's own token plus the accepted proposals (raw
    m_batch_sizes: tokens per step), so accepted = generated - steps; what it proposed is not reported (None)."""
    if sd:
        return sum(x.get_num_accepted_tokens() for x in sd), sum(x.get_num_draft_tokens() for x in sd)
    return generated - len(perf.raw_metrics.m_batch_sizes), None


def speculative_sweep(
    main: Path,
    draft: Path | None,
    main_device: str,
    draft_device: str,
    config: dict,
    prompts: list[str],
    max_new_tokens: int,
    settings: list[dict],
) -> dict:
    """Main alone vs main + draft (or prompt lookup) for each setting of the sweep: greedy outputs must be
    identical; acceptance = accepted / proposed draft tokens; TPOT and throughput ratios."""
    import openvino_genai as ov_genai

    alone = ov_genai.LLMPipeline(str(main), main_device, **config)
    reference, perf, _ = generate_all(alone, prompts, greedy(max_new_tokens), "main alone")
    baseline = timing(perf)
    del alone
    pipe = speculative_pipeline(main, draft, main_device, draft_device, config)
    sweep = []
    for setting in settings:
        label = ", ".join(f"{k}={v}" for k, v in setting.items())
        texts, perf, sd = generate_all(pipe, prompts, greedy(max_new_tokens, **setting), label)
        t = timing(perf)
        accepted, proposed = proposal_counts(perf, sd, t["generated_tokens"])
        sweep.append(
            {
                **setting,
                **t,
                "output_match": m.share(a == b for a, b in zip(reference, texts)),
                "mismatches": [
                    {"prompt": p, "main_alone": a, "speculative": b, "first_difference_at": first_difference(a, b)}
                    for p, a, b in zip(prompts, reference, texts)
                    if a != b
                ],
                "accepted_tokens": int(accepted),
                "proposed_tokens": None if proposed is None else int(proposed),
                "acceptance_rate": accepted / proposed if proposed else None,
                "draft_share": accepted / t["generated_tokens"] if t["generated_tokens"] else None,
                # accepted proposals + the main's own token per verification step
                "tokens_per_step": t["generated_tokens"] / (t["generated_tokens"] - accepted)
                if t["generated_tokens"] > accepted
                else None,
                "tpot_speedup": baseline["tpot_ms"] / t["tpot_ms"],
                "throughput_ratio": t["throughput_tok_s"] / baseline["throughput_tok_s"],
            }
        )
    return {"baseline": baseline, "sweep": sweep, "reference_outputs": reference}
