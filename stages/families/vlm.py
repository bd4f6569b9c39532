"""Vision-language models (LLaVA, MiniCPM-V, ...): openvino_genai.VLMPipeline answers a question file about sample
images; the source checkpoint answers the same questions in transformers fp32. Answers are embedded with a
sentence-embedding scorer (cosine similarity) and compared by exact match; where the true answers are known
(`answers`, e.g. the shapes world's), every run is also scored against them (answer_accuracy)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field
from tqdm import tqdm

from stages.core import metrics as m
from stages.core.errors import BuildError
from stages.core.images import load_image
from stages.core.paths import source_manifest_path
from stages.core.schema import Strict, Variant
from stages.core.textdata import check_prompt_ref, prompts_path, read_prompts
from stages.families import register
from stages.families.base import Comparison, Family, RunContext, Validation, check_scorer, worst


class VLMSettings(Strict):
    """A question set over images; answers compared via a sentence-embedding `scorer` model
    (e.g. sentence-transformers/all-MiniLM-L6-v2)."""

    reference: str = "fp16"
    images: list[str] = Field(min_length=1)  # skimage:<name>, matplotlib:<sample file> or a file path
    questions: str  # a `prompt_sets` name (a file or a `datasets` column) or a question file kept in the repo
    # the true answer of every (image, question), images outer, in the same order; scored as answer_accuracy
    answers: str | None = None
    embedding_model: str  # a `models` entry of family scorer
    max_new_tokens: int = Field(default=32, gt=0)


def write_preprocessor_config(artifact: Path) -> None:
    """transformers 5 saves the image processor inside processor_config.json only; VLMPipeline reads
    preprocessor_config.json."""
    if (artifact / "preprocessor_config.json").is_file() or not (artifact / "processor_config.json").is_file():
        return
    processor = json.loads((artifact / "processor_config.json").read_text())
    if "image_processor" in processor:
        (artifact / "preprocessor_config.json").write_text(json.dumps(processor["image_processor"], indent=2))


class SentenceEmbedder:
    """A sentence-transformers model (e.g. all-MiniLM-L6-v2), normalised embeddings."""

    def __init__(self, path: Path):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, normalize_embeddings=True)


class TorchVLM:
    """The source checkpoint through transformers (fp32, greedy), prompted as openvino-genai prompts it: the
    chat template over a user turn of the image then the question."""

    def __init__(self, checkpoint: Path):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def answer(self, image: np.ndarray, question: str, max_new_tokens: int) -> str:
        import torch
        from PIL import Image

        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = self.processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@register
class VLMFamily(Family):
    name = "vlm"
    Settings = VLMSettings
    task = "image-text-to-text"
    latency_metric = "tpot_ms"
    pipeline_tag = "image-text-to-text"
    accuracy_metrics = ("answer_accuracy", "answer_similarity", "answer_exact_match")
    comparison_metrics = ("answer_similarity", "answer_exact_match")
    default_rules = ({"metric": "answer_similarity", "against": "source", "min": 0.8},)
    usage = """import numpy as np
import openvino as ov
import openvino_genai as ov_genai
from PIL import Image

pipe = ov_genai.VLMPipeline("{path}", "{device}")
image = ov.Tensor(np.asarray(Image.open("photo.jpg").convert("RGB"))[None])
print(pipe.generate("What is in this image?", image=image, max_new_tokens=100).texts[0])

# or with optimum-intel
from optimum.intel import OVModelForVisualCausalLM
model = OVModelForVisualCausalLM.from_pretrained("{path}")"""

    def check_params(self, settings: VLMSettings, params, key: str) -> None:
        check_scorer(params, settings.embedding_model, f"{key}.embedding_model")
        check_prompt_ref(settings.questions, params.prompt_sets, f"{key}.questions")
        if settings.answers:
            check_prompt_ref(settings.answers, params.prompt_sets, f"{key}.answers")

    def validation_metrics(self, settings, params, model: str) -> list[str]:
        return ["answers_nonempty", "questions"] + (["answer_accuracy"] if settings.answers else [])

    def plan_inputs(self, settings: VLMSettings, params, model: str) -> dict[str, Path]:
        files = {
            "questions": prompts_path(settings.questions),
            **({"answers": prompts_path(settings.answers)} if settings.answers else {}),
            f"scorer:{settings.embedding_model}": source_manifest_path(settings.embedding_model),
        }
        return files | {f"image:{spec}": Path(spec) for spec in settings.images if ":" not in spec}

    def report_metrics(self, settings) -> list[str]:
        return ["answer_accuracy", "answer_similarity", "answer_exact_match", "answers_nonempty"]

    def device_options(self, device: str, variant, emulation: dict) -> dict:
        """VLMPipeline drives NPUW itself on the NPU (the language model; vision and embeddings stay on CPU)."""
        return {k: emulation[k] for k in ("NPUW_DEVICES", "DYNAMIC_QUANTIZATION_GROUP_SIZE") if k in emulation}

    def export(
        self, checkpoint: Path, variant: Variant, out: Path, calibration=None, trust_remote_code: bool = False
    ) -> None:
        super().export(checkpoint, variant, out, calibration, trust_remote_code)
        write_preprocessor_config(out)

    def compressed_irs(self, artifact: Path) -> list[Path]:
        # optimum-intel applies the recipe to the language model; the embedding models get int8 by its design
        return [artifact / "openvino_language_model.xml"]

    def jobs(self, s: VLMSettings) -> list[tuple[str, str]]:
        questions = read_prompts(s.questions, "validate.vlm.questions", "question")
        return [(image, q) for image in s.images for q in questions]

    def true_answers(self, s: VLMSettings, jobs: list[tuple[str, str]]) -> list[str] | None:
        if not s.answers:
            return None
        truth = read_prompts(s.answers, "validate.vlm.answers", "answer")
        if len(truth) != len(jobs):
            raise BuildError(
                f"validate.vlm.answers: {prompts_path(s.answers)} has {len(truth)} answers for {len(jobs)} "
                f"(image, question) pairs ({len(s.images)} images x {len(jobs) // len(s.images)} questions)"
            )
        return truth

    def _answer_all(self, answer, ctx: RunContext, label: str) -> Validation:
        s: VLMSettings = ctx.settings
        jobs = self.jobs(s)
        truth = self.true_answers(s, jobs)
        images = {spec: load_image(spec) for spec in s.images}
        answers = [
            {"image": spec, "question": q, "answer": answer(images[spec], q).strip()}
            for spec, q in tqdm(jobs, desc=f"vlm ({label})", unit="question")
        ]
        # embedded here, so comparing two runs (at the gate) needs no model
        embeddings = SentenceEmbedder(ctx.scorers[s.embedding_model]).encode([a["answer"] for a in answers])
        for a, e in zip(answers, embeddings):
            a["embedding"] = [round(float(x), 6) for x in e]
        metrics = {"answers_nonempty": m.share(a["answer"] for a in answers), "questions": float(len(answers))}
        if truth:
            for a, t in zip(answers, truth):
                a["expected"] = t
            metrics["answer_accuracy"] = m.share(a["answer"].lower() == a["expected"].lower() for a in answers)
        return Validation(
            metrics=metrics,
            outputs={"answers": answers},
            info={"images": s.images, "questions": len(jobs) // len(s.images), "embedding_model": s.embedding_model},
        )

    def validate(self, artifact: Path, device: str, ctx: RunContext) -> Validation:
        import openvino as ov
        import openvino_genai as ov_genai

        pipe = ov_genai.VLMPipeline(str(artifact), device, **ctx.pipeline_config())
        max_new = ctx.settings.max_new_tokens
        return self._answer_all(
            lambda image, q: pipe.generate(
                q, image=ov.Tensor(image[None]), max_new_tokens=max_new, do_sample=False
            ).texts[0],
            ctx,
            artifact.name,
        )

    def reference(self, checkpoint: Path, ctx: RunContext) -> Validation:
        torch_vlm = TorchVLM(checkpoint)
        run = self._answer_all(
            lambda image, q: torch_vlm.answer(image, q, ctx.settings.max_new_tokens), ctx, "PyTorch fp32"
        )
        run.info["how"] = "transformers AutoModelForImageTextToText, fp32 PyTorch on CPU, greedy"
        return run

    def compare(self, reference: Path, current: Path, ctx: RunContext) -> Comparison:
        ref, cur = self.outputs(reference).get("answers", []), self.outputs(current).get("answers", [])
        if not ref or [(r["image"], r["question"]) for r in ref] != [(c["image"], c["question"]) for c in cur]:
            return Comparison({})
        sims = [
            {
                "kind": "answer",
                "image": c["image"],
                "question": c["question"],
                "compared": r["answer"],
                "output": c["answer"],
                "similarity": float(m.cosines([r["embedding"]], [c["embedding"]])[0]),
            }
            for r, c in zip(ref, cur)
        ]
        return Comparison(
            {
                "answer_similarity": m.mean(x["similarity"] for x in sims),
                "answer_exact_match": m.share(x["compared"] == x["output"] for x in sims),
            },
            worst([x for x in sims if x["compared"] != x["output"]], "similarity"),
        )

    def performance(self, artifact: Path, device: str, ctx: RunContext) -> dict[str, float]:
        """Load + compile time, then TTFT / TPOT over the first image's questions, each generating exactly
        max_new_tokens (EOS ignored), after one warm-up."""
        import openvino as ov
        import openvino_genai as ov_genai

        s: VLMSettings = ctx.settings
        jobs = self.jobs(s)
        image = ov.Tensor(load_image(s.images[0])[None])
        start = time.perf_counter()
        pipe = ov_genai.VLMPipeline(str(artifact), device, **ctx.pipeline_config())
        load_s = time.perf_counter() - start
        config = ov_genai.GenerationConfig(max_new_tokens=s.max_new_tokens, ignore_eos=True, do_sample=False)
        pipe.generate(jobs[0][1], image=image, generation_config=config)
        perf = [
            pipe.generate(q, image=image, generation_config=config).perf_metrics
            for spec, q in jobs
            if spec == s.images[0]
        ]
        return {
            "load_s": load_s,
            "ttft_ms": m.mean(p.get_ttft().mean for p in perf),
            "tpot_ms": m.mean(p.get_tpot().mean for p in perf),
            "throughput_tok_s": m.mean(p.get_throughput().mean for p in perf),
        }
