"""Text-to-image (Stable Diffusion 1.x/2.x, SDXL, LCM): openvino_genai.Text2ImagePipeline with fixed seeds over a
prompt file; CLIP score with transformers' CLIPModel; SSIM / PSNR of each image against the reference variant's
image for the same prompt and seed."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.common import checkpoint_dir, read_lines
from stages.families.base import AdapterRun, Family, Validation
from stages.params import Params, Text2ImageValidation


def cosines(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    img = image_embeds / np.linalg.norm(image_embeds, axis=-1, keepdims=True)
    txt = text_embeds / np.linalg.norm(text_embeds, axis=-1, keepdims=True)
    return np.sum(img * txt, axis=-1)


def clip_score(image_embeds: np.ndarray, text_embeds: np.ndarray) -> float:
    """CLIP score as torchmetrics defines it: mean over pairs of 100 * max(cos(image, text), 0)."""
    return float(np.mean(100 * np.clip(cosines(image_embeds, text_embeds), 0, None)))


class ClipScorer:
    """transformers' CLIPModel (torchmetrics' CLIPScore does not work with transformers 5)."""

    def __init__(self, path: Path):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(path).eval()
        self.processor = CLIPProcessor.from_pretrained(path)

    def embeddings(self, images: list, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        # transformers 5 returns model outputs here; the projected embedding is their pooler_output
        img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
        return img.float().numpy(), txt.float().numpy()

    def score(self, images: list, texts: list[str]) -> dict[str, float]:
        """The CLIP score, and the mean unclamped cosine (informative where the score clamps to 0, e.g. for a
        random-init scorer)."""
        embeds = self.embeddings(images, texts)
        return {"clip_score": clip_score(*embeds), "clip_cosine": float(np.mean(cosines(*embeds)))}


def contact_sheet(images: list, labels: list[str], columns: int = 4):
    """A grid of the images with their labels (PIL only: torchvision's make_grid is not installable here)."""
    from PIL import Image, ImageDraw

    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * (h + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * w, (i // columns) * (h + 14)
        sheet.paste(img, (x, y + 14))
        draw.text((x + 2, y + 1), label[: max(4, w // 6)], fill="black")
    return sheet


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_pipeline(artifact: Path, device: str, precision: str, adapters: list[AdapterRun]):
    import openvino_genai as ov_genai

    kwargs = {"adapters": ov_genai.AdapterConfig([a.adapter() for a in adapters])} if adapters else {}
    return ov_genai.Text2ImagePipeline(str(artifact), device, INFERENCE_PRECISION_HINT=precision, **kwargs)


def generate_image(pipe, prompt: str, seed: int, s: Text2ImageValidation, adapter_config=None):
    import openvino_genai as ov_genai
    from PIL import Image

    kwargs = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
    if adapter_config is not None:
        kwargs["adapters"] = adapter_config
    tensor = pipe.generate(prompt, width=s.width, height=s.height, num_inference_steps=s.num_inference_steps,
                           generator=ov_genai.TorchGenerator(seed), **kwargs)
    return Image.fromarray(np.array(tensor.data[0]))  # a copy: the tensor views a buffer the next call reuses


def image_similarity(a_png: Path, b_png: Path) -> dict[str, float]:
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (a_png, b_png))
    return {"ssim": float(structural_similarity(a, b, channel_axis=-1, data_range=255)),
            "psnr": float(peak_signal_noise_ratio(a, b, data_range=255)) if not np.array_equal(a, b) else 100.0}


class Text2ImageFamily(Family):
    name = "text2image"
    task = "text-to-image"
    library = "diffusers"
    latency_metric = "image_s"
    pipeline_tag = "text-to-image"
    calibration_chars = 160  # hybrid quantization calibrates on prompts: short samples
    usage = """import openvino_genai as ov_genai
from PIL import Image

pipe = ov_genai.Text2ImagePipeline("{path}", "{device}")
image = pipe.generate("a photo of a cat", width=512, height=512, num_inference_steps=20,
                      generator=ov_genai.TorchGenerator(42))
Image.fromarray(image.data[0]).save("cat.png")

# or with optimum-intel
from optimum.intel import OVDiffusionPipeline
pipe = OVDiffusionPipeline.from_pretrained("{path}")"""

    def settings(self, params: Params) -> Text2ImageValidation:
        return params.validate_settings.text2image

    def calibration_config(self, checkpoint: Path, samples: list[str]) -> dict:
        return {"dataset": samples}  # the pipeline tokenizes prompts itself

    def compressed_irs(self, artifact: Path) -> list[Path]:
        return sorted(artifact.glob("*/openvino_model.xml"))

    def report_metrics(self, params: Params) -> list[str]:
        return ["clip_score", "ssim_vs_reference", "psnr_vs_reference"]

    def prompts(self, params: Params) -> list[str]:
        return read_lines(self.settings(params).prompts, "validate.text2image.prompts", "prompt")

    def validate(self, artifact: Path, device: str, params: Params, precision: str,
                 adapters: list[AdapterRun] = ()) -> Validation:
        import openvino_genai as ov_genai

        s, prompts = self.settings(params), self.prompts(params)
        pipe = image_pipeline(artifact, device, precision, adapters)
        none = ov_genai.AdapterConfig() if adapters else None
        jobs = [(i, p, seed) for i, p in enumerate(prompts) for seed in s.seeds]
        images, files, records, seconds = [], {}, [], 0.0
        for i, prompt, seed in tqdm(jobs, desc=f"text2image {artifact.name}", unit="image"):
            start = time.perf_counter()
            images.append(generate_image(pipe, prompt, seed, s, none))
            seconds += time.perf_counter() - start
            name = f"images/p{i}_s{seed}.png"
            files[name] = png_bytes(images[-1])
            records.append({"prompt": prompt, "seed": seed, "file": name})
        scorer = ClipScorer(checkpoint_dir(s.clip_model))
        texts = [p for _, p, _ in jobs]
        metrics = {**scorer.score(images, texts), "images": len(images)}
        for a in adapters:
            adapted = [generate_image(pipe, p, seed, s, a.config()) for _, p, seed in jobs]
            changed = np.mean([not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(images, adapted)])
            metrics |= {f"{k}@{a.name}": v for k, v in scorer.score(adapted, texts).items()}
            metrics[f"changed_images@{a.name}"] = changed
        sheet = contact_sheet(images, [f"s{seed} {p}" for _, p, seed in jobs])
        return Validation(metrics=metrics, outputs={"images": records}, files=files, plot_image=png_bytes(sheet),
                          info={"prompts": len(prompts), "seeds": s.seeds, "size": f"{s.width}x{s.height}",
                                "steps": s.num_inference_steps, "clip_model": s.clip_model,
                                "adapters": [a.name for a in adapters]})

    def performance(self, artifact: Path, device: str, params: Params, precision: str) -> dict[str, float]:
        """Load + compile time, then seconds per image over the first prompt's seeds after one warm-up."""
        s, prompt = self.settings(params), self.prompts(params)[0]
        start = time.perf_counter()
        pipe = image_pipeline(artifact, device, precision, [])
        load_s = time.perf_counter() - start
        generate_image(pipe, prompt, s.seeds[0], s)
        start = time.perf_counter()
        for seed in s.seeds:
            generate_image(pipe, prompt, seed, s)
        return {"load_s": load_s, "image_s": (time.perf_counter() - start) / len(s.seeds)}

    def compare(self, params: Params, reference: Path, current: Path) -> dict[str, float]:
        ref, cur = self.outputs(reference).get("images", []), self.outputs(current).get("images", [])
        if not ref or [(r["prompt"], r["seed"]) for r in ref] != [(c["prompt"], c["seed"]) for c in cur]:
            return {}
        sims = [image_similarity(reference / r["file"], current / c["file"]) for r, c in zip(ref, cur)]
        return {"ssim_vs_reference": float(np.mean([x["ssim"] for x in sims])),
                "psnr_vs_reference": float(np.mean([x["psnr"] for x in sims]))}
