"""Vision-language models (LLaVA, MiniCPM-V, ...): openvino_genai.VLMPipeline answers a question file about real
sample images; each variant's answers are compared with the reference variant's by a sentence-embedding model
(cosine similarity) and by exact match."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.common import checkpoint_dir, read_lines
from stages.families.base import AdapterRun, Family, Validation
from stages.params import Params, Variant, VLMValidation


class ImageError(SystemExit):
    pass


def load_image(spec: str) -> np.ndarray:
    """An RGB uint8 [H, W, 3] array: `skimage:<name>` (skimage.data), `matplotlib:<file>` (matplotlib's sample
    data) or a file path."""
    from PIL import Image

    kind, _, name = spec.partition(":")
    if kind == "skimage":
        from skimage import data

        if not callable(getattr(data, name, None)):
            raise ImageError(f"validate.vlm.images: skimage.data has no image '{name}'")
        image = Image.fromarray(getattr(data, name)())
    elif kind == "matplotlib":
        from matplotlib import cbook

        try:
            image = Image.open(cbook.get_sample_data(name))
        except (FileNotFoundError, ValueError):
            raise ImageError(f"validate.vlm.images: matplotlib has no sample image '{name}'") from None
    else:
        if not Path(spec).is_file():
            raise ImageError(f"validate.vlm.images: image file not found: {spec}")
        image = Image.open(spec)
    return np.asarray(image.convert("RGB"))


def write_preprocessor_config(artifact: Path) -> None:
    """transformers 5 saves the image processor inside processor_config.json only; VLMPipeline reads
    preprocessor_config.json."""
    if (artifact / "preprocessor_config.json").is_file() or not (artifact / "processor_config.json").is_file():
        return
    processor = json.loads((artifact / "processor_config.json").read_text())
    if "image_processor" in processor:
        (artifact / "preprocessor_config.json").write_text(json.dumps(processor["image_processor"], indent=2))


def vlm_pipeline(artifact: Path, device: str, precision: str):
    import openvino_genai as ov_genai

    return ov_genai.VLMPipeline(str(artifact), device, INFERENCE_PRECISION_HINT=precision)


class SentenceEmbedder:
    """A sentence-transformers model (e.g. all-MiniLM-L6-v2), normalised embeddings."""

    def __init__(self, path: Path):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, normalize_embeddings=True)


def cosine(a: list[float], b: list[float]) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class VLMFamily(Family):
    name = "vlm"
    task = "image-text-to-text"
    latency_metric = "tpot_ms"
    pipeline_tag = "image-text-to-text"
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

    def settings(self, params: Params) -> VLMValidation:
        return params.validate_settings.vlm

    def export(self, checkpoint: Path, variant: Variant, out: Path, calibration=None,
               trust_remote_code: bool = False) -> None:
        super().export(checkpoint, variant, out, calibration, trust_remote_code)
        write_preprocessor_config(out)

    def compressed_irs(self, artifact: Path) -> list[Path]:
        # optimum-intel applies the recipe to the language model; the embedding models get int8 by its design
        return [artifact / "openvino_language_model.xml"]

    def report_metrics(self, params: Params) -> list[str]:
        return ["answer_similarity", "answer_exact_match", "answers_nonempty"]

    def questions(self, params: Params) -> list[tuple[str, str]]:
        s = self.settings(params)
        questions = read_lines(s.questions, "validate.vlm.questions", "question")
        return [(image, q) for image in s.images for q in questions]

    def validate(self, artifact: Path, device: str, params: Params, precision: str,
                 adapters: list[AdapterRun] = ()) -> Validation:
        import openvino as ov

        s, jobs = self.settings(params), self.questions(params)
        images = {spec: ov.Tensor(load_image(spec)[None]) for spec in s.images}
        pipe = vlm_pipeline(artifact, device, precision)
        answers = []
        for spec, question in tqdm(jobs, desc=f"vlm {artifact.name}", unit="question"):
            text = pipe.generate(question, image=images[spec], max_new_tokens=s.max_new_tokens,
                                 do_sample=False).texts[0]
            answers.append({"image": spec, "question": question, "answer": text.strip()})
        # embedded here, so comparing with the reference (at the gate) needs no model
        embeddings = SentenceEmbedder(checkpoint_dir(s.embedding_model)).encode([a["answer"] for a in answers])
        for answer, embedding in zip(answers, embeddings):
            answer["embedding"] = [round(float(x), 6) for x in embedding]
        return Validation(metrics={"answers_nonempty": float(np.mean([bool(a["answer"]) for a in answers])),
                                   "questions": len(answers)},
                          outputs={"answers": answers},
                          info={"images": s.images, "questions": len(jobs) // len(s.images),
                                "embedding_model": s.embedding_model})

    def performance(self, artifact: Path, device: str, params: Params, precision: str) -> dict[str, float]:
        """Load + compile time, then TTFT / TPOT over the first image's questions, each generating exactly
        max_new_tokens (EOS ignored), after one warm-up."""
        import openvino as ov
        import openvino_genai as ov_genai

        s, jobs = self.settings(params), self.questions(params)
        image = ov.Tensor(load_image(s.images[0])[None])
        start = time.perf_counter()
        pipe = vlm_pipeline(artifact, device, precision)
        load_s = time.perf_counter() - start
        config = ov_genai.GenerationConfig(max_new_tokens=s.max_new_tokens, ignore_eos=True, do_sample=False)
        pipe.generate(jobs[0][1], image=image, generation_config=config)
        perf = [pipe.generate(q, image=image, generation_config=config).perf_metrics
                for spec, q in jobs if spec == s.images[0]]
        return {"load_s": load_s, "ttft_ms": float(np.mean([p.get_ttft().mean for p in perf])),
                "tpot_ms": float(np.mean([p.get_tpot().mean for p in perf])),
                "throughput_tok_s": float(np.mean([p.get_throughput().mean for p in perf]))}

    def compare(self, params: Params, reference: Path, current: Path) -> dict[str, float]:
        ref, cur = self.outputs(reference).get("answers", []), self.outputs(current).get("answers", [])
        if not ref or [(r["image"], r["question"]) for r in ref] != [(c["image"], c["question"]) for c in cur]:
            return {}
        return {"answer_similarity": float(np.mean([cosine(r["embedding"], c["embedding"]) for r, c in zip(ref, cur)])),
                "answer_exact_match": float(np.mean([r["answer"] == c["answer"] for r, c in zip(ref, cur)]))}
