"""Text-to-image (Stable Diffusion 1.x/2.x, SDXL, LCM): openvino_genai.Text2ImagePipeline with fixed seeds over a
prompt file, CLIP score with transformers' CLIPModel; the source pipeline in diffusers fp32 with the same seeds;
SSIM / PSNR of each image against the compared run's image for the same prompt and seed."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from pydantic import Field
from tqdm import tqdm

from stages.core import metrics as m
from stages.core.errors import user_input
from stages.core.paths import source_manifest_path
from stages.core.schema import Strict, device_kind
from stages.core.textdata import check_prompt_ref, prompts_path, read_prompts
from stages.families import register
from stages.families.base import Comparison, Family, RunContext, Validation, check_scorer, register_adapters, worst


class Text2ImageSettings(Strict):
    """Fixed seeds over a prompt set; CLIP score with a `scorer` model (e.g. openai/clip-vit-base-patch16)."""

    reference: str = "fp16"
    prompts: str  # a `prompt_sets` name (a file or a `datasets` column) or a prompt file kept in the repo
    clip_model: str  # a `models` entry of family scorer
    seeds: list[int] = Field(default=[0], min_length=1)
    width: int = Field(default=512, gt=0)
    height: int = Field(default=512, gt=0)
    num_inference_steps: int = Field(default=20, gt=0)
    guidance_scale: float | None = Field(default=None, ge=0)  # None: the pipeline's own default


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
        return {"clip_score": m.clip_score(*embeds), "clip_cosine": m.mean(m.cosines(*embeds))}


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


def image_pipeline(artifact: Path, device: str, ctx: RunContext, adapters=()):
    """On a static-shape device (NPU) the pipeline is reshaped to the validation size before it compiles."""
    import openvino_genai as ov_genai

    if device_kind(device) != "NPU":
        return ov_genai.Text2ImagePipeline(
            str(artifact), device, **ctx.pipeline_config(), **register_adapters(adapters)
        )
    s: Text2ImageSettings = ctx.settings
    pipe = ov_genai.Text2ImagePipeline(str(artifact))
    guidance = s.guidance_scale if s.guidance_scale is not None else pipe.get_generation_config().guidance_scale
    pipe.reshape(1, s.height, s.width, guidance)
    pipe.compile(device, **ctx.pipeline_config(), **register_adapters(adapters))
    return pipe


def generate_image(pipe, prompt: str, seed: int, s: Text2ImageSettings, adapter_config=None):
    import openvino_genai as ov_genai
    from PIL import Image

    kwargs = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
    if adapter_config is not None:
        kwargs["adapters"] = adapter_config
    tensor = pipe.generate(
        prompt,
        width=s.width,
        height=s.height,
        num_inference_steps=s.num_inference_steps,
        generator=ov_genai.TorchGenerator(seed),
        **kwargs,
    )
    return Image.fromarray(np.array(tensor.data[0]))  # a copy: the tensor views a buffer the next call reuses


def diffusers_image(pipe, prompt: str, seed: int, s: Text2ImageSettings):
    """The same prompt and seed through diffusers (torch.Generator(seed) draws the latents genai's TorchGenerator
    reproduces)."""
    import torch

    kwargs = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
    with torch.no_grad():
        return pipe(
            prompt,
            width=s.width,
            height=s.height,
            num_inference_steps=s.num_inference_steps,
            generator=torch.Generator("cpu").manual_seed(seed),
            **kwargs,
        ).images[0]


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with user_input(f"image {path}"):
        return np.asarray(Image.open(path).convert("RGB"))


@register
class Text2ImageFamily(Family):
    name = "text2image"
    Settings = Text2ImageSettings
    task = "text-to-image"
    library = "diffusers"
    latency_metric = "image_s"
    pipeline_tag = "text-to-image"
    adapter_families = True
    calibration_chars = 160  # hybrid quantization calibrates on prompts: short samples
    accuracy_metrics = ("clip_score", "ssim", "psnr")
    comparison_metrics = ("ssim", "psnr")
    default_rules = ({"metric": "ssim", "against": "source", "min": 0.9},)
    usage = """import openvino_genai as ov_genai
from PIL import Image

pipe = ov_genai.Text2ImagePipeline("{path}", "{device}")
image = pipe.generate("a photo of a cat", width=512, height=512, num_inference_steps=20,
                      generator=ov_genai.TorchGenerator(42))
Image.fromarray(image.data[0]).save("cat.png")

# or with optimum-intel
from optimum.intel import OVDiffusionPipeline
pipe = OVDiffusionPipeline.from_pretrained("{path}")"""

    def check_params(self, settings: Text2ImageSettings, params, key: str) -> None:
        check_scorer(params, settings.clip_model, f"{key}.clip_model")
        check_prompt_ref(settings.prompts, params.prompt_sets, f"{key}.prompts")

    def validation_metrics(self, settings, params, model: str) -> list[str]:
        names = ["clip_score", "clip_cosine", "images"]
        for a in params.adapters_for(model):
            names += [f"clip_score@{a}", f"clip_cosine@{a}", f"changed_images@{a}"]
        return names

    def plan_inputs(self, settings: Text2ImageSettings, params, model: str) -> dict[str, Path]:
        return {
            "prompts": prompts_path(settings.prompts),
            f"scorer:{settings.clip_model}": source_manifest_path(settings.clip_model),
        }

    def report_metrics(self, settings) -> list[str]:
        return ["clip_score", "ssim", "psnr"]

    def calibration_config(self, checkpoint: Path, samples: list[str]) -> dict:
        return {"dataset": samples}  # the pipeline tokenizes prompts itself

    def compressed_irs(self, artifact: Path) -> list[Path]:
        return sorted(artifact.glob("*/openvino_model.xml"))

    def tokenizer_folders(self, artifact: Path) -> list[Path]:
        return [d for d in sorted(artifact.glob("tokenizer*")) if (d / "openvino_tokenizer.xml").is_file()]

    def prompts(self, s: Text2ImageSettings) -> list[str]:
        return read_prompts(s.prompts, "validate.text2image.prompts", "prompt")

    def _render(self, make_image, ctx: RunContext, label: str, adapters=()) -> Validation:
        s: Text2ImageSettings = ctx.settings
        prompts = self.prompts(s)
        jobs = [(i, p, seed) for i, p in enumerate(prompts) for seed in s.seeds]
        images, files, records = [], {}, []
        for i, prompt, seed in tqdm(jobs, desc=f"text2image ({label})", unit="image"):
            images.append(make_image(prompt, seed, None))
            name = f"images/p{i}_s{seed}.png"
            files[name] = png_bytes(images[-1])
            records.append({"prompt": prompt, "seed": seed, "file": name})
        scorer = ClipScorer(ctx.scorers[s.clip_model])
        texts = [p for _, p, _ in jobs]
        metrics = {**scorer.score(images, texts), "images": float(len(images))}
        for a in adapters:
            adapted = [make_image(p, seed, a.config()) for _, p, seed in jobs]
            changed = m.share(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(images, adapted))
            metrics |= {f"{k}@{a.name}": v for k, v in scorer.score(adapted, texts).items()}
            metrics[f"changed_images@{a.name}"] = changed
        sheet = contact_sheet(images, [f"s{seed} {p}" for _, p, seed in jobs])
        return Validation(
            metrics=metrics,
            outputs={"images": records},
            files=files,
            plot_image=png_bytes(sheet),
            info={
                "prompts": len(prompts),
                "seeds": s.seeds,
                "size": f"{s.width}x{s.height}",
                "steps": s.num_inference_steps,
                "clip_model": s.clip_model,
                "adapters": [a.name for a in adapters],
            },
        )

    def validate(self, artifact: Path, device: str, ctx: RunContext) -> Validation:
        import openvino_genai as ov_genai

        pipe = image_pipeline(artifact, device, ctx, ctx.adapters)
        none = ov_genai.AdapterConfig() if ctx.adapters else None
        return self._render(
            lambda p, seed, adapter: generate_image(pipe, p, seed, ctx.settings, adapter or none),
            ctx,
            artifact.name,
            ctx.adapters,
        )

    def reference(self, checkpoint: Path, ctx: RunContext) -> Validation:
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(checkpoint, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        run = self._render(lambda p, seed, _: diffusers_image(pipe, p, seed, ctx.settings), ctx, "diffusers fp32")
        run.info["how"] = f"diffusers {type(pipe).__name__}, fp32 PyTorch on CPU, torch.Generator(seed)"
        return run

    def compare(self, reference: Path, current: Path, ctx: RunContext) -> Comparison:
        ref, cur = self.outputs(reference).get("images", []), self.outputs(current).get("images", [])
        if not ref or [(r["prompt"], r["seed"]) for r in ref] != [(c["prompt"], c["seed"]) for c in cur]:
            return Comparison({})
        sims = [
            {
                "kind": "image",
                "prompt": c["prompt"],
                "seed": c["seed"],
                "file": c["file"],
                **m.image_similarity(load_image(reference / r["file"]), load_image(current / c["file"])),
            }
            for r, c in zip(ref, cur)
        ]
        return Comparison(
            {"ssim": m.mean(x["ssim"] for x in sims), "psnr": m.mean(x["psnr"] for x in sims)}, worst(sims, "ssim")
        )

    def performance(self, artifact: Path, device: str, ctx: RunContext) -> dict[str, float]:
        """Load + compile time, then seconds per image over the first prompt's seeds after one warm-up."""
        s: Text2ImageSettings = ctx.settings
        prompt = self.prompts(s)[0]
        start = time.perf_counter()
        pipe = image_pipeline(artifact, device, ctx)
        load_s = time.perf_counter() - start
        generate_image(pipe, prompt, s.seeds[0], s)
        start = time.perf_counter()
        for seed in s.seeds:
            generate_image(pipe, prompt, seed, s)
        return {"load_s": load_s, "image_s": (time.perf_counter() - start) / len(s.seeds)}
