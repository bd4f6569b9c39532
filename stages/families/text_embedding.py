"""Text embeddings (all-MiniLM, BGE, E5, ...): openvino_genai.TextEmbeddingPipeline embeds passages cut from an
eval text and a fragment of each (its query); the source checkpoint embeds the same texts through
sentence-transformers (fp32 PyTorch). Scored on its own by retrieval (does each fragment find its passage among
all?), and against the source by cosine per text."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, StrictBool

from stages.core import metrics as m
from stages.core.errors import BuildError
from stages.core.paths import eval_text_path
from stages.core.schema import Strict
from stages.core.textdata import eval_text
from stages.families import register
from stages.families.base import Comparison, Family, RunContext, Validation, worst

POOLING_MODES = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "last_token": "pooling_mode_lasttoken",
}  # sentence-transformers' 1_Pooling/config.json keys


class TextEmbeddingSettings(Strict):
    """Query/passage pairs cut from an eval text set (a fragment of each window queries the window)."""

    reference: str = "fp16"
    eval_set: str
    pairs: int = Field(default=32, gt=1)
    words_per_pair: int = Field(default=60, ge=8)
    pooling: Literal["mean", "cls", "last_token"] = "mean"  # must match the checkpoint's own pooling
    normalize: StrictBool = True
    max_length: int = Field(default=256, gt=0)  # tokens; longer texts are truncated


def query_passage_pairs(text: str, count: int, words_per_pair: int) -> list[tuple[str, str]]:
    """Consecutive windows of `words_per_pair` words (at most `count`): each window is a passage, and its second
    quarter is its query. Any running text gives pairs whose answer is known (a fragment finds its passage)."""
    words = text.split()
    quarter = words_per_pair // 4
    return [
        (" ".join(words[i + quarter : i + 2 * quarter]), " ".join(words[i : i + words_per_pair]))
        for i in range(0, len(words) - words_per_pair + 1, words_per_pair)
    ][:count]


def checkpoint_pooling(checkpoint: Path) -> str | None:
    """The pooling a sentence-transformers checkpoint declares (None when it declares none)."""
    config = checkpoint / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    declared = json.loads(config.read_text())
    return next((mode for mode, key in POOLING_MODES.items() if declared.get(key)), None)


def genai_pipeline(artifact: Path, device: str, ctx: RunContext):
    import openvino_genai as ov_genai

    s: TextEmbeddingSettings = ctx.settings
    config = ov_genai.TextEmbeddingPipeline.Config()
    config.pooling_type = getattr(ov_genai.TextEmbeddingPipeline.PoolingType, s.pooling.upper())
    config.normalize = s.normalize
    config.max_length = s.max_length
    return ov_genai.TextEmbeddingPipeline(str(artifact), device, config, **ctx.pipeline_config())


@register
class TextEmbeddingFamily(Family):
    name = "text-embedding"
    Settings = TextEmbeddingSettings
    task = "feature-extraction"
    latency_metric = "ms_per_text"
    pipeline_tag = "sentence-similarity"
    accuracy_metrics = ("retrieval_top1", "embedding_cosine*")
    comparison_metrics = ("embedding_cosine", "embedding_cosine_min")
    default_rules = ({"metric": "embedding_cosine_min", "against": "source", "min": 0.95},)
    usage = """import openvino_genai as ov_genai

config = ov_genai.TextEmbeddingPipeline.Config()
config.pooling_type = ov_genai.TextEmbeddingPipeline.PoolingType.MEAN  # the model's own pooling
config.normalize = True
pipe = ov_genai.TextEmbeddingPipeline("{path}", "{device}", config)
vectors = pipe.embed_documents(["first passage", "second passage"])

# or with optimum-intel (pool the last_hidden_state yourself)
from optimum.intel import OVModelForFeatureExtraction
model = OVModelForFeatureExtraction.from_pretrained("{path}")"""

    def check_params(self, settings: TextEmbeddingSettings, params, key: str) -> None:
        if settings.eval_set not in params.eval_sets:
            raise ValueError(f"{key}.eval_set: unknown eval set '{settings.eval_set}'")

    def validation_metrics(self, settings, params, model: str) -> list[str]:
        return ["retrieval_top1", "pairs"]

    def plan_inputs(self, settings: TextEmbeddingSettings, params, model: str) -> dict[str, Path]:
        return {f"eval_set:{settings.eval_set}": eval_text_path(settings.eval_set)}

    def report_metrics(self, settings) -> list[str]:
        return ["embedding_cosine_min", "embedding_cosine", "retrieval_top1"]

    def _embed_all(self, embed, s: TextEmbeddingSettings) -> Validation:
        pairs = query_passage_pairs(eval_text(s.eval_set), s.pairs, s.words_per_pair)
        if len(pairs) < 2:
            raise BuildError(
                f"validate.text-embedding.eval_set: '{s.eval_set}' gives {len(pairs)} window(s) of "
                f"{s.words_per_pair} words; at least 2 are needed"
            )
        queries = np.asarray(embed([q for q, _ in pairs]))
        passages = np.asarray(embed([p for _, p in pairs]))
        texts = [
            {"kind": kind, "text": text, "embedding": [round(float(x), 6) for x in vector]}
            for kind, column, vectors in (("query", 0, queries), ("passage", 1, passages))
            for text, vector in zip([p[column] for p in pairs], vectors)
        ]
        return Validation(
            metrics={"retrieval_top1": m.retrieval_top1(queries, passages), "pairs": float(len(pairs))},
            outputs={"texts": texts},
            info={
                "eval_set": s.eval_set,
                "pairs": len(pairs),
                "pooling": s.pooling,
                "normalize": s.normalize,
                "dimensions": int(queries.shape[-1]),
            },
        )

    def validate(self, artifact: Path, device: str, ctx: RunContext) -> Validation:
        pipe = genai_pipeline(artifact, device, ctx)
        return self._embed_all(pipe.embed_documents, ctx.settings)

    def reference(self, checkpoint: Path, ctx: RunContext) -> Validation:
        from sentence_transformers import SentenceTransformer

        s: TextEmbeddingSettings = ctx.settings
        declared = checkpoint_pooling(checkpoint)
        if declared not in (None, s.pooling):
            raise BuildError(
                f"validate.text-embedding.pooling: '{s.pooling}', but {ctx.model} declares "
                f"'{declared}' pooling (1_Pooling/config.json)"
            )
        model = SentenceTransformer(str(checkpoint), device="cpu")
        model.max_seq_length = s.max_length
        run = self._embed_all(lambda texts: model.encode(texts, normalize_embeddings=s.normalize), s)
        run.info["how"] = "sentence-transformers SentenceTransformer, fp32 PyTorch on CPU"
        return run

    def compare(self, reference: Path, current: Path, ctx: RunContext) -> Comparison:
        ref, cur = self.outputs(reference).get("texts", []), self.outputs(current).get("texts", [])
        if not ref or [r["text"] for r in ref] != [c["text"] for c in cur]:
            return Comparison({})
        sims = m.cosines([r["embedding"] for r in ref], [c["embedding"] for c in cur])
        rows = [{"kind": r["kind"], "text": r["text"][:120], "cosine": float(c)} for r, c in zip(ref, sims)]
        return Comparison(
            {"embedding_cosine": m.mean(sims), "embedding_cosine_min": float(np.min(sims))}, worst(rows, "cosine")
        )

    def performance(self, artifact: Path, device: str, ctx: RunContext) -> dict[str, float]:
        """Load + compile time, then milliseconds per text embedding every passage once, after a warm-up."""
        s: TextEmbeddingSettings = ctx.settings
        passages = [p for _, p in query_passage_pairs(eval_text(s.eval_set), s.pairs, s.words_per_pair)]
        start = time.perf_counter()
        pipe = genai_pipeline(artifact, device, ctx)
        load_s = time.perf_counter() - start
        pipe.embed_documents(passages[:2])
        start = time.perf_counter()
        for passage in passages:
            pipe.embed_documents([passage])
        return {"load_s": load_s, "ms_per_text": 1000 * (time.perf_counter() - start) / len(passages)}
