"""How numbers, recipes and verdicts read in the report and the model cards (one place for both)."""

from __future__ import annotations

from stages.core.schema import Variant

PERFORMANCE = {  # metric: (column title, number format)
    "load_s": ("load+compile s", ".2f"),
    "ttft_ms": ("TTFT ms", ".1f"),
    "tpot_ms": ("TPOT ms", ".2f"),
    "throughput_tok_s": ("tokens/s", ".1f"),
    "rtf": ("RTF", ".3f"),
    "image_s": ("s/image", ".3f"),
    "peak_rss_mb": ("peak RSS MB", ".0f"),
}
LEVELS = {
    "validated": "validated",
    "emulated": "emulated",
    "not_validated": "not validated",
    "proxy": "proxy",
    "missing": "missing",
}


def fmt(x, spec: str = ".4g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return format(x, spec)


def recipe_label(v: Variant) -> str:
    if v.weight_format == "fp16":
        return "fp16"
    parts = [v.weight_format, "sym" if v.sym else "asym"]
    if v.weight_format == "int4":
        parts.append("channel-wise" if v.group_size == -1 else f"g{v.group_size}")
        if v.ratio is not None and v.ratio < 1:
            parts.append(f"r{v.ratio:g}")
        parts += [n for n, on in (("awq", v.awq), ("se", v.scale_estimation)) if on]
    if v.dataset:  # data-aware (LLM) or hybrid (text-to-image) compression
        parts.append(f"calibrated on {v.dataset}")
    return " ".join(parts)


def gate_status(rows: list[dict], name: str) -> str:
    """FAIL, or which devices passed (and at which level) and which were not validated."""
    rows = [r for r in rows if r["artifact"] == name]
    failed = sorted({r["device"] for r in rows if r["status"] == "fail"})
    if failed:
        return f"FAIL ({', '.join(failed)})"
    passed = sorted(
        {f"{r['device']}{' emulated' if r['level'] == 'emulated' else ''}" for r in rows if r["status"] == "pass"}
    )
    absent = sorted({r["device"] for r in rows if r["status"] == "not_validated"})
    parts = [f"pass ({', '.join(passed)})"] if passed else []
    if absent:
        parts.append(f"not validated: {', '.join(absent)}")
    return "; ".join(parts) or "no rule"


def by_adapter(metrics: dict) -> dict[str, dict]:
    """`<metric>@<adapter>` metrics grouped per adapter choice, none first."""
    choices: dict[str, dict] = {}
    for name, value in metrics.items():
        metric, sep, choice = name.partition("@")
        if sep:
            choices.setdefault(choice, {})[metric] = value
    return {c: choices[c] for c in sorted(choices, key=lambda c: (c != "none", c))}


def example_text(x: dict) -> str:
    """One worst example as a line (a reply, a window, an utterance, an image, an answer)."""
    kind = x.get("kind")
    if kind == "reply":
        return f"prompt {x['prompt']!r}: {x['output'][:80]!r} vs {x['reference'][:80]!r} (similarity {x['similarity']:.2f})"
    if kind == "window":
        return f"window {x['index']} {x['text'][:60]!r}: NLL/token {x['nll_per_token_change']:+.3f}"
    if kind == "utterance":
        return (
            f"{x['set']}/{x['audio']}: {x['output'][:70]!r} vs {x['compared'][:70]!r} "
            f"(WER {x['wer_change']:+.2f} against the transcript)"
        )
    if kind == "image":
        return f"{x['prompt'][:50]!r} seed {x['seed']}: SSIM {x['ssim']:.3f}, PSNR {x['psnr']:.1f} dB"
    if kind == "answer":
        return f"{x['image']}: {x['question'][:40]!r} -> {x['output'][:50]!r} vs {x['compared'][:50]!r} ({x['similarity']:.2f})"
    return str(x)
