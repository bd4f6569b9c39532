"""Metric arithmetic, in one place: perplexity, WER/CER, text similarity, embedding cosines, CLIP score,
SSIM/PSNR. Pure functions of their inputs; the families decide what to feed them."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.core.errors import BuildError

# Whisper's English spelling map (MIT, from the openai-whisper sdist); scripts/setup.sh puts it here.
SPELLING_MAP = Path(sys.prefix) / "share" / "whisper" / "english.json"


def perplexity(total_nll: float, tokens: int) -> float:
    """exp(mean negative log-likelihood per predicted token)."""
    if tokens <= 0:
        raise ValueError("perplexity needs at least one predicted token")
    return float(math.exp(total_nll / tokens))


def window_nll(logits: np.ndarray, window: Sequence[int]) -> float:
    """Sum over positions of -log p(next token) for one window, from its [T, V] logits (float64 log-softmax)."""
    from scipy.special import logsumexp

    logits = np.asarray(logits[:-1], dtype=np.float64)
    targets = np.asarray(window[1:])
    return float((logsumexp(logits, axis=-1) - logits[np.arange(len(targets)), targets]).sum())


@functools.lru_cache(maxsize=1)
def english_normalizer():
    """Whisper's English text normalizer (numbers, spelling variants, punctuation), as transformers ships it."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    if not SPELLING_MAP.is_file():
        raise BuildError(f"{SPELLING_MAP}: Whisper spelling map missing; run scripts/setup.sh")
    return EnglishTextNormalizer(json.loads(SPELLING_MAP.read_text()))


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus WER and CER after Whisper's normalization (so "four" and "4" are the same word)."""
    import jiwer

    norm = english_normalizer()
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def utterance_wer(reference: str, hypothesis: str) -> float:
    return error_rates([reference], [hypothesis])["wer"]


def text_similarity(a: str, b: str) -> float:
    """Normalised edit similarity in [0, 1] (rapidfuzz's ratio)."""
    from rapidfuzz import fuzz

    return fuzz.ratio(a, b) / 100.0


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


def retrieval_top1(queries: np.ndarray, documents: np.ndarray) -> float:
    """The share of queries whose most cosine-similar document is the one at their own index."""
    q = np.asarray(queries, dtype=np.float64)
    d = np.asarray(documents, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return float(np.mean(np.argmax(q @ d.T, axis=-1) == np.arange(len(q))))


def clip_score(image_embeds: np.ndarray, text_embeds: np.ndarray) -> float:
    """CLIP score as torchmetrics defines it: mean over pairs of 100 * max(cos(image, text), 0)."""
    return float(np.mean(100 * np.clip(cosines(image_embeds, text_embeds), 0, None)))


def mismatched(texts: list[str]) -> list[str] | None:
    """Each text replaced by the next distinct text (cyclically, in first-seen order), so no item keeps its own:
    the floor a matched score is compared with. None when there are fewer than two distinct texts."""
    distinct = list(dict.fromkeys(texts))
    if len(distinct) < 2:
        return None
    following = {t: distinct[(i + 1) % len(distinct)] for i, t in enumerate(distinct)}
    return [following[t] for t in texts]


def image_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """SSIM and PSNR of two RGB uint8 images of one size (PSNR of identical images reported as 100 dB)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if a.shape != b.shape:
        raise ValueError(f"images of different sizes {a.shape} and {b.shape}")
    return {
        "ssim": float(structural_similarity(a, b, channel_axis=-1, data_range=255)),
        "psnr": float(peak_signal_noise_ratio(a, b, data_range=255)) if not np.array_equal(a, b) else 100.0,
    }


def mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def share(flags) -> float:
    """The fraction of true values (NaN for none: a share of nothing is not a pass)."""
    return mean([bool(f) for f in flags])
